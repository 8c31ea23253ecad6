"""Error types. Every error mixprec raises on bad input is a MixprecError whose message
says what went wrong and what to do; the CLI prints that message and exits non-zero.

The kinds a caller can tell apart (and the CLI's exit status for each):

- a bad input model: ``ModelLoadError`` (cannot be read, or would need pickle code run;
  ``UntrustedPickleError``) and ``UnsupportedModelError`` (read, but not convertible): 2;
- a bad option: ``ConfigError`` (and ``PipelineError``, ``PolicyError``); a bad output
  path is ``OutputPathError``, a ConfigError: 2;
- a failed output check: ``AccuracyCheckError`` (a ConversionError): 4;
- anything else that is not a MixprecError is a bug in mixprec: 3."""
from __future__ import annotations


class MixprecError(Exception):
    """Base class of every error mixprec raises on purpose."""


class IRError(MixprecError):
    """The IR breaks one of its invariants (see mixprec.ir.verify)."""


class ParseError(MixprecError):
    """IR text that cannot be parsed; the message gives the line."""


class PassError(MixprecError):
    """A pass failed or left the IR broken; the message names the pass."""


class PreconditionError(PassError):
    """A pass was run on a graph it cannot work on (its ``requires`` failed), e.g.
    insert-casts before any pass decided the precisions; the message names the pass."""


class PostconditionError(PassError):
    """A pass left the graph without what it guarantees (its ``ensures`` failed)."""


class PipelineError(MixprecError):
    """A pipeline specification names an unknown pass or option."""


class PolicyError(MixprecError):
    """A precision policy file is malformed (unknown key, op in two lists, ...)."""


class ConfigError(MixprecError):
    """A MixedPrecisionConfig or command-line option is wrong."""


class OutputPathError(ConfigError):
    """An output path (``-o``, ``--report``, ``--dump-dir``) cannot or must not be written:
    it is, holds or lies inside a file the input model reads, it is not a regular file (a
    device, FIFO, symlink) or a directory mixprec wrote, or its directory is missing or
    read-only. Raised before any work starts."""


class ModelLoadError(MixprecError):
    """A model file or object cannot be read (missing, truncated, wrong format)."""


class UntrustedPickleError(ModelLoadError):
    """Loading the model would unpickle data, which can run arbitrary code (a ``.pt2``
    whose weights, constants or sample inputs are pickles); pass ``trust_pickle=True``
    (CLI ``--trust-pickle``) for a model from a trusted source."""


class UnsupportedModelError(MixprecError):
    """The model uses something mixprec cannot convert (op, dtype, construct)."""


class ConversionError(MixprecError):
    """A converted model failed its framework's validation or its numeric check."""


class ModelRunError(ConversionError):
    """A runtime loaded the model and then failed running it on the given inputs (most
    often a shape the model cannot take); another runtime would reject them too."""


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
