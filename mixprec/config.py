"""MixedPrecisionConfig: the options of ``mix_precision.fit``, in Intel Neural Compressor's
spelling where INC has one (``precisions``, ``excluded_precisions``, ``op_type_dict``,
``op_name_dict``, ``backend``, ``device``) plus mixprec's own.

Invariants: unknown fields raise ConfigError at construction (with a did-you-mean), and
every value is checked there, so a config that constructs is one ``fit`` can use."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import logging
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from mixprec.errors import ConfigError

logger = logging.getLogger(__name__)

_PRECISIONS = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16"}
_TARGETS = ("spec", "onnxruntime")
#: Intel Neural Compressor's ``backend`` names; mixprec accepts them for compatibility
#: and converts the same way for each (the model's own framework decides)
BACKENDS = ("default", "itex", "ipex", "onnxrt_trt_ep", "onnxrt_cuda_ep", "onnxrt_dnnl_ep", "onnxrt_dml_ep")
CHECK_RUNTIMES = ("auto", "reference")
#: what the conversion optimizes (mixprec.profiling): the most low precision the policy
#: allows, low precision only where measured faster, or only on allow ops the error budget clears
OBJECTIVES = ("memory", "performance", "accuracy")

#: whether readers may unpickle data (which can run arbitrary code) in the current
#: conversion; ``fit`` and the CLI set it from ``trust_pickle`` for the readers they call
TRUST_PICKLE: contextvars.ContextVar[bool] = contextvars.ContextVar("mixprec_trust_pickle", default=False)


@contextlib.contextmanager
def pickle_trust(trusted: bool):
    """Within the block, readers unpickle only when ``trusted`` (see TRUST_PICKLE)."""
    token = TRUST_PICKLE.set(bool(trusted))
    try:
        yield
    finally:
        TRUST_PICKLE.reset(token)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def _is_real(value: Any) -> bool:
    """A real number that is not a bool (numpy scalars included)."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


@dataclass
class AccuracyCriterion:
    """How much accuracy the converted model may lose against the FP32 one: ``relative``
    (a fraction of the baseline) or ``absolute`` (in the metric's units)."""
    higher_is_better: bool = True
    criterion: str = "relative"
    tolerable_loss: float = 0.01

    def __post_init__(self) -> None:
        if not _is_bool(self.higher_is_better):
            raise ConfigError(f"AccuracyCriterion.higher_is_better must be True or False, not {self.higher_is_better!r}")
        if self.criterion not in ("relative", "absolute"):
            raise ConfigError(f"AccuracyCriterion.criterion must be 'relative' or 'absolute', not {self.criterion!r}")
        if not _is_real(self.tolerable_loss) or not float(self.tolerable_loss) >= 0:
            raise ConfigError(f"AccuracyCriterion.tolerable_loss must be a number >= 0 (e.g. 0.01), "
                              f"not {self.tolerable_loss!r}")

    def meets(self, baseline: float, accuracy: float) -> bool:
        loss = (baseline - accuracy) if self.higher_is_better else (accuracy - baseline)
        allowed = self.tolerable_loss * abs(baseline) if self.criterion == "relative" else self.tolerable_loss
        return loss <= allowed + 1e-12


@dataclass
class TuningCriterion:
    """Budget of the accuracy-driven fallback search: at most ``max_trials`` converted
    candidates evaluated, and (when > 0) at most ``timeout`` seconds. ``workers`` > 1 runs
    the evaluations of a search round in parallel as Ray tasks (``pip install mixprec[ray]``;
    see mixprec.tuning.parallel): the same trials and result as ``workers=1``."""
    max_trials: int = 100
    timeout: float = 0.0
    workers: int = 1

    def __post_init__(self) -> None:
        if not _is_int(self.max_trials) or self.max_trials < 1:
            raise ConfigError(f"TuningCriterion.max_trials must be a whole number >= 1, not {self.max_trials!r}")
        if not _is_real(self.timeout) or not float(self.timeout) >= 0:
            raise ConfigError(f"TuningCriterion.timeout must be a number of seconds >= 0 (0: no limit), "
                              f"not {self.timeout!r}")
        if not _is_int(self.workers) or self.workers < 1:
            raise ConfigError(f"TuningCriterion.workers must be a whole number >= 1 (1: no Ray), not {self.workers!r}")


@dataclass
class _Options:
    precisions: str | list[str] = "bf16"
    excluded_precisions: list[str] = field(default_factory=list)
    op_type_dict: dict[str, Any] = field(default_factory=dict)
    op_name_dict: dict[str, Any] = field(default_factory=dict)
    backend: str = "default"
    device: str = "cpu"
    target: str = "spec"
    keep_io_types: bool = True
    policy: str | None = None
    pipeline: str | None = None
    dump_dir: str | None = None
    example_inputs: Any = None
    dynamic_batch: bool = False
    fallback_fx: bool = False
    sample_inputs: Any = None
    input_shapes: dict[str, Any] | None = None
    inputs: list[str] | None = None
    outputs: list[str] | None = None
    check_outputs: bool = True
    check_runtime: str = "auto"
    external_data: bool = False
    min_cosine: float = 0.999
    max_flip_rate: float | None = None
    error_budget: bool = True
    trust_pickle: bool = False
    objective: str = "memory"
    profile: str | None = None
    cache: bool = True
    accuracy_criterion: AccuracyCriterion = field(default_factory=AccuracyCriterion)
    tuning_criterion: TuningCriterion = field(default_factory=TuningCriterion)


class MixedPrecisionConfig(_Options):
    """Options (keyword-only):

    - ``precisions``: ``"bf16"`` (default) or ``"fp16"``, or a list of them (the first one
      not in ``excluded_precisions`` is used);
    - ``op_type_dict`` / ``op_name_dict``: INC form, e.g. ``{"Softmax": {"activation":
      {"dtype": ["fp32"]}}}``; the dtype list's first entry decides (``fp32`` keeps the op
      or node in FP32, ``bf16``/``fp16`` forces it low). Node names may be module paths
      (``encoder.layer.3``) or globs;
    - ``backend`` / ``device``: as in INC; mixprec converts for ``cpu``;
    - ``target``: ``"spec"`` (everything the format allows) or ``"onnxruntime"`` (keep in
      FP32 what the installed onnxruntime cannot run in the target dtype);
    - ``keep_io_types``: graph inputs and outputs keep FP32 (default True);
    - ``policy``: a policy file replacing the built-in one; ``pipeline``: a pipeline
      string replacing the default; ``dump_dir``: write the IR after each pass there;
    - ``example_inputs``: inputs to trace a torch module with (tuple or dict);
      ``dynamic_batch``: make dim 0 of every torch input dynamic (example batch >= 2);
      ``fallback_fx``: when torch.export cannot capture the module, trace it on the
      example inputs instead (control flow specialized to them);
    - ``sample_inputs``: inputs for the FP32-vs-converted output check (generated from the
      input types when not given); ``input_shapes``: ``{input name: dims}`` for the
      generated ones (unknown dims are otherwise resolved from the model or a ladder of
      conventional sizes); ``check_outputs``, ``min_cosine``: that check;
      ``max_flip_rate``: also at most this fraction of task decisions flipped (top-1 of
      logits, 0.5-threshold of probability maps); ``error_budget`` (default True): when
      the check misses them, the nodes most to blame fall back to FP32 until it holds
      (verified on held-out inputs); False only reports the miss (AccuracyCheckError);
      ``check_runtime``: ONNX only, ``"auto"`` (onnxruntime, on an exact emulation of
      the low-precision rounding where it has no kernel) or ``"reference"``
      (onnx.reference.ReferenceEvaluator, slow); ``external_data``: ONNX only, save the
      tensors in ``OUT.data`` beside the model even when it is under 2 GB (above, always);
    - ``inputs`` / ``outputs``: for graphs (TensorFlow GraphDef/.pb), the tensor names
      to treat as the graph's inputs and outputs (INC's spelling);
    - ``trust_pickle``: let readers unpickle data, which can run arbitrary code (a
      ``.pt2`` whose weights, constants or sample inputs are pickles); only for models
      from a trusted source (default False: such a model is refused);
    - ``objective``: ``"memory"`` (default: the most low precision the policy allows,
      the smallest model), ``"performance"`` (low precision only on regions measured
      faster, casts included, on this machine's runtime of the model's framework, or on
      the machine ``profile`` was measured on; ONNX stays FP32: onnxruntime's CPU
      provider has no BF16 kernels) or ``"accuracy"`` (only allow ops low, each kept
      only if the error budget clears it); ``profile``: a file written by ``mixprec
      profile`` whose measurements replace local timing (objective ``"performance"``);
      ``cache`` (default True): objective ``"performance"`` reads and writes the cache
      directory (``$MIXPREC_CACHE_DIR``, default ``~/.cache/mixprec``): measurements, so
      that nothing is timed twice, and whole conversions, so that converting the same
      model again with the same options costs a fingerprint (mixprec.conversion_cache);
      False: neither is read nor written;
    - ``accuracy_criterion`` / ``tuning_criterion``: used when ``fit`` gets an evaluation
      function: ops fall back to FP32 until the criterion holds, within the budget.
    """

    def __init__(self, **kwargs: Any) -> None:
        if "precision" in kwargs:  # INC 2.x docs' spelling of ``precisions``
            alias = kwargs.pop("precision")
            if "precisions" in kwargs and kwargs["precisions"] != alias:
                raise ConfigError(f"precision={alias!r} and precisions={kwargs['precisions']!r} disagree; "
                                  "give one of them")
            kwargs["precisions"] = alias
        names = [f.name for f in dataclasses.fields(_Options)]
        for key in kwargs:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                raise ConfigError(f"MixedPrecisionConfig has no option {key!r}"
                                  + (f"; did you mean {hint[0]!r}?" if hint else f"; options: {', '.join(names)}"))
        super().__init__(**kwargs)
        self._check()

    # ---- validation ---------------------------------------------------------------------
    def _check(self) -> None:
        """Check every field's type and range (ConfigError naming the field); normalizes
        tuples to lists and an ``.npz`` path in ``sample_inputs`` to its arrays."""
        self._check_precisions()
        if not isinstance(self.device, str) or self.device.lower() != "cpu":
            raise ConfigError(f"device {self.device!r} is not supported; mixprec converts for device='cpu'")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)} (INC's names), not {self.backend!r}")
        if self.target not in _TARGETS:
            raise ConfigError(f"target must be one of {_TARGETS}, not {self.target!r}")
        self._check_objective()
        if self.check_runtime not in CHECK_RUNTIMES:
            raise ConfigError(f"check_runtime must be one of {CHECK_RUNTIMES}, not {self.check_runtime!r}")
        for name in ("keep_io_types", "dynamic_batch", "fallback_fx", "check_outputs", "error_budget", "trust_pickle",
                     "cache", "external_data"):
            if not _is_bool(getattr(self, name)):
                raise ConfigError(f"{name} must be True or False, not {getattr(self, name)!r}")
        for name in ("policy", "dump_dir"):
            value = getattr(self, name)
            if value is not None and (not _is_path(value) or not os.fspath(value)):
                raise ConfigError(f"{name} must be a path (str or os.PathLike), not {value!r}")
        if self.pipeline is not None and (not isinstance(self.pipeline, str) or not self.pipeline.strip()):
            raise ConfigError(f"pipeline must be a pipeline string such as 'infer-dtypes,assign-precision,"
                              f"insert-casts', not {self.pipeline!r}")
        if not isinstance(self.accuracy_criterion, AccuracyCriterion):
            raise ConfigError("accuracy_criterion must be a mixprec.config.AccuracyCriterion")
        if not isinstance(self.tuning_criterion, TuningCriterion):
            raise ConfigError("tuning_criterion must be a mixprec.config.TuningCriterion")
        if not _is_real(self.min_cosine) or not 0.0 < float(self.min_cosine) <= 1.0:
            raise ConfigError(f"min_cosine must be a number in (0, 1], not {self.min_cosine!r}")
        if self.max_flip_rate is not None and (not _is_real(self.max_flip_rate)
                                               or not 0.0 <= float(self.max_flip_rate) < 1.0):
            raise ConfigError(f"max_flip_rate must be None or a number in [0, 1), not {self.max_flip_rate!r}")
        for name, table in (("op_type_dict", self.op_type_dict), ("op_name_dict", self.op_name_dict)):
            if not isinstance(table, dict):
                raise ConfigError(f"{name} must be a dict like {{'Conv': {{'activation': {{'dtype': ['fp32']}}}}}}")
            for key, spec in table.items():
                _override_precision(name, key, spec)
        self.inputs = _names("inputs", self.inputs)
        self.outputs = _names("outputs", self.outputs)
        self.input_shapes = _input_shapes(self.input_shapes)
        self.sample_inputs = _sample_inputs(self.sample_inputs)

    def _check_objective(self) -> None:
        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            hint = difflib.get_close_matches(str(self.objective), OBJECTIVES, n=1)
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}"
                              + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if self.profile is not None:
            if not _is_path(self.profile) or not os.fspath(self.profile):
                raise ConfigError(f"profile must be the path of a file written by `mixprec profile`, not "
                                  f"{self.profile!r}")
            if self.objective != "performance":
                raise ConfigError(f"profile= holds timings for objective='performance', but objective is "
                                  f"{self.objective!r}; set objective='performance' (CLI: --objective performance)")
            self.profile = os.fspath(self.profile)
            if not os.path.isfile(self.profile):
                raise ConfigError(f"profile {self.profile}: no such file; write one with `mixprec profile MODEL -o "
                                  f"{os.path.basename(self.profile)}` on the machine the model will run on")

    def _check_precisions(self) -> None:
        for name in ("precisions", "excluded_precisions"):
            value = getattr(self, name)
            ok = isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value))
            if not ok or (name == "precisions" and not value):
                raise ConfigError(f"{name} must be 'bf16' or 'fp16' or a list of them, not {value!r}")
        wanted = [self.precisions] if isinstance(self.precisions, str) else list(self.precisions)
        excluded = [self.excluded_precisions] if isinstance(self.excluded_precisions, str) \
            else list(self.excluded_precisions)
        for p in wanted + excluded:
            if p.lower() not in _PRECISIONS and p.lower() not in ("fp32", "float32"):
                raise ConfigError(f"unknown precision {p!r}; use 'bf16' or 'fp16'")
        self.excluded_precisions = excluded
        self.precision  # noqa: B018 - raises when every precision is excluded

    @property
    def precision(self) -> str:
        """The one low precision to convert to (``bf16`` or ``fp16``). Setting it (INC
        2.x's ``precision=`` spelling) sets ``precisions``."""
        wanted = [self.precisions] if isinstance(self.precisions, str) else list(self.precisions)
        excluded = {_PRECISIONS.get(str(p).lower(), str(p).lower()) for p in self.excluded_precisions}
        for p in wanted:
            short = _PRECISIONS.get(str(p).lower())
            if short and short not in excluded:
                return short
        raise ConfigError(f"no precision left to convert to: precisions={self.precisions!r}, "
                          f"excluded_precisions={self.excluded_precisions!r}")

    @precision.setter
    def precision(self, value: str) -> None:
        previous = self.precisions
        self.precisions = value
        try:
            self._check_precisions()
        except ConfigError:
            self.precisions = previous
            raise

    def overrides(self) -> dict[str, list[str]]:
        """The INC-style dicts as apply-overrides options."""
        out: dict[str, list[str]] = {"fp32_ops": [], "lp_ops": [], "fp32_nodes": [], "lp_nodes": []}
        for name, table, kind in (("op_type_dict", self.op_type_dict, "ops"), ("op_name_dict", self.op_name_dict, "nodes")):
            for key, spec in table.items():
                target = _override_precision(name, key, spec)
                out[("fp32_" if target == "fp32" else "lp_") + kind].append(key)
        return out


def _override_precision(name: str, key: str, spec: Any) -> str:
    """'fp32' or 'lp' for one INC-style entry; ConfigError when malformed."""
    example = f"{name}={{{key!r}: {{'activation': {{'dtype': ['fp32']}}}}}}"
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{name}[{key!r}] must be a dict like {example}")
    dtypes = []
    for part, inner in spec.items():
        if part not in ("activation", "weight"):
            raise ConfigError(f"{name}[{key!r}] has unknown key {part!r}; use 'activation' and/or 'weight'")
        dtype = inner.get("dtype") if isinstance(inner, dict) else None
        if isinstance(dtype, str):
            dtype = [dtype]
        if not dtype:
            raise ConfigError(f"{name}[{key!r}][{part!r}] needs a 'dtype' list, e.g. {example}")
        dtypes.append(str(dtype[0]).lower())
    if all(d in ("fp32", "float32") for d in dtypes):
        return "fp32"
    if all(d in _PRECISIONS for d in dtypes):
        return "lp"
    raise ConfigError(f"{name}[{key!r}] asks for dtypes {dtypes}; use 'fp32', 'bf16' or 'fp16' (the same for "
                      "activation and weight)")


def _names(field_name: str, value: Any) -> list[str] | None:
    """``inputs`` / ``outputs``: None or a list of tensor names."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{field_name} must be a list of tensor names such as ['input:0'], not {value!r}")
    return list(value)


def _input_shapes(value: Any) -> dict[str, list[int]] | list[int] | None:
    """``input_shapes``: None, ``{input name: dims}``, or (for a model with one input)
    bare dims; every dim a whole number >= 1."""
    if value is None:
        return None
    example = "{'image': [1, 3, 224, 224]}"
    if isinstance(value, (list, tuple)):
        return _dims("input_shapes", value, example)
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"input_shapes must be a dict of input name -> dims such as {example}, not {value!r}")
    out = {}
    for name, dims in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"input_shapes keys must be input names (str), not {name!r}")
        out[name] = _dims(f"input_shapes[{name!r}]", dims, example)
    return out


def _dims(where: str, dims: Any, example: str) -> list[int]:
    """Dims of one input: whole numbers >= 1; [] is a scalar (0-d input)."""
    if not isinstance(dims, (list, tuple)) or not all(_is_int(d) and d >= 1 for d in dims):
        raise ConfigError(f"{where} must be a list of whole numbers >= 1 such as [1, 3, 224, 224], or [] for a "
                          f"scalar (input_shapes={example}), not {dims!r}")
    return [int(d) for d in dims]


def _sample_inputs(value: Any) -> Any:
    """``sample_inputs``: None, a dict of input name -> array, a tuple/list of arrays, or
    the path of an ``.npz`` file (loaded here into a dict, without pickle)."""
    if value is None:
        return None
    if _is_path(value):
        return load_npz(value)
    if isinstance(value, dict):
        for name, array in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"sample_inputs keys must be input names (str), not {name!r}")
            _check_array(f"sample_inputs[{name!r}]", array)
        return value
    if isinstance(value, (tuple, list)) or _is_array(value):
        for index, array in enumerate([value] if _is_array(value) else value):
            _check_array(f"sample_inputs[{index}]", array)
        return value
    raise ConfigError(f"sample_inputs must be a dict of input name -> array, a tuple/list of arrays, or an .npz "
                      f"file path, not {type(value).__name__}")


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type)


def _check_array(where: str, array: Any) -> None:
    """An array of numbers or bools: anything with shape and dtype (numpy, torch, TF,
    MXNet), a (nested) list of numbers, a number or None (an optional argument), or a
    tuple/list/dict of those (a framework's structured input)."""
    if _is_array(array) or array is None or _is_real(array) or _is_bool(array):
        return
    if isinstance(array, dict):
        for key, item in array.items():
            _check_array(f"{where}[{key!r}]", item)
        return
    if isinstance(array, (list, tuple)) and any(_is_array(x) or isinstance(x, (list, tuple, dict)) for x in array):
        for index, item in enumerate(array):
            _check_array(f"{where}[{index}]", item)
        return
    import numpy as np
    try:
        kind = np.asarray(array).dtype.kind
    except (TypeError, ValueError):
        kind = "O"
    if kind not in "biufc":
        raise ConfigError(f"{where} must be an array of numbers, not {type(array).__name__} {array!r:.60}")


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """The arrays of an ``.npz`` file as {name: array}, read with allow_pickle=False
    (ConfigError when the file is missing, not an .npz, or holds object arrays)."""
    import zipfile

    import numpy as np
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ConfigError(f"sample inputs {path}: give an .npz file (numpy.savez(path, name=array, ...))")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ConfigError(f"sample inputs {path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"sample inputs {path}: not a readable .npz file of numeric arrays ({text})") from None
    if not arrays:
        raise ConfigError(f"sample inputs {path}: the file holds no arrays")
    return arrays
