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


class SampleInputError(MixprecError):
    """No sample input could be made or found that the FP32 model runs on with finite
    outputs; the message names ``--input-shape`` / ``--sample-inputs``. ``fit`` turns it
    into a note (the check is skipped, the conversion still returned)."""


class AccuracyCheckError(ConversionError):
    """The converted model's outputs are too far from the FP32 model's on the sample
    inputs (cosine below ``min_cosine``). ``converted`` is the ConvertedModel (so a caller
    can still save or inspect it) and ``report`` its report."""

    def __init__(self, message: str, converted: object = None, report: object = None) -> None:
        super().__init__(message)
        self.converted = converted
        self.report = report
