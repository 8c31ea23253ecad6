"""Error types. Every error mixprec raises on bad input is a MixprecError whose message
says what went wrong and what to do; the CLI prints that message and exits non-zero."""
from __future__ import annotations


class MixprecError(Exception):
    """Base class of every error mixprec raises on purpose."""


class IRError(MixprecError):
    """The IR breaks one of its invariants (see mixprec.ir.verify)."""


class ParseError(MixprecError):
    """IR text that cannot be parsed; the message gives the line."""


class PassError(MixprecError):
    """A pass failed or left the IR broken; the message names the pass."""


class PipelineError(MixprecError):
    """A pipeline specification names an unknown pass or option."""


class PolicyError(MixprecError):
    """A precision policy file is malformed (unknown key, op in two lists, ...)."""


class ConfigError(MixprecError):
    """A MixedPrecisionConfig or command-line option is wrong."""


class ModelLoadError(MixprecError):
    """A model file or object cannot be read (missing, truncated, wrong format)."""


class UnsupportedModelError(MixprecError):
    """The model uses something mixprec cannot convert (op, dtype, construct)."""


class ConversionError(MixprecError):
    """A converted model failed its framework's validation or its numeric check."""


class MissingDependencyError(MixprecError):
    """An optional framework needed for this model is not installed."""


class OutputCheckUnavailable(MixprecError):
    """No available runtime can run the converted model to compare its outputs (for ONNX:
    onnxruntime has no kernel and the reference evaluator fails on the model)."""
