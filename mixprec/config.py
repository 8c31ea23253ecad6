"""MixedPrecisionConfig: the options of ``mix_precision.fit``, in Intel Neural Compressor's
spelling where INC has one (``precisions``, ``excluded_precisions``, ``op_type_dict``,
``op_name_dict``, ``backend``, ``device``) plus mixprec's own.

Invariants: unknown fields raise ConfigError at construction (with a did-you-mean), and
every value is checked there, so a config that constructs is one ``fit`` can use."""
from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from typing import Any

from mixprec.errors import ConfigError

logger = logging.getLogger(__name__)

_PRECISIONS = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16"}
_TARGETS = ("spec", "onnxruntime")


@dataclass
class AccuracyCriterion:
    """How much accuracy the converted model may lose against the FP32 one: ``relative``
    (a fraction of the baseline) or ``absolute`` (in the metric's units)."""
    higher_is_better: bool = True
    criterion: str = "relative"
    tolerable_loss: float = 0.01

    def __post_init__(self) -> None:
        if self.criterion not in ("relative", "absolute"):
            raise ConfigError(f"AccuracyCriterion.criterion must be 'relative' or 'absolute', not {self.criterion!r}")
        if not float(self.tolerable_loss) >= 0:
            raise ConfigError(f"AccuracyCriterion.tolerable_loss must be >= 0, not {self.tolerable_loss!r}")

    def meets(self, baseline: float, accuracy: float) -> bool:
        loss = (baseline - accuracy) if self.higher_is_better else (accuracy - baseline)
        allowed = self.tolerable_loss * abs(baseline) if self.criterion == "relative" else self.tolerable_loss
        return loss <= allowed + 1e-12


@dataclass
class TuningCriterion:
    """Budget of the accuracy-driven fallback search: at most ``max_trials`` converted
    candidates evaluated, and (when > 0) at most ``timeout`` seconds."""
    max_trials: int = 100
    timeout: float = 0.0

    def __post_init__(self) -> None:
        if int(self.max_trials) < 1:
            raise ConfigError(f"TuningCriterion.max_trials must be >= 1, not {self.max_trials!r}")


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
    min_cosine: float = 0.99
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
      ``check_runtime``: ONNX only, ``"auto"`` (onnxruntime, on an exact emulation of
      the low-precision rounding where it has no kernel) or ``"reference"``
      (onnx.reference.ReferenceEvaluator, slow);
    - ``inputs`` / ``outputs``: for graphs (TensorFlow GraphDef/.pb), the tensor names
      to treat as the graph's inputs and outputs (INC's spelling);
    - ``accuracy_criterion`` / ``tuning_criterion``: used when ``fit`` gets an evaluation
      function: ops fall back to FP32 until the criterion holds, within the budget.
    """

    def __init__(self, **kwargs: Any) -> None:
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
        wanted = [self.precisions] if isinstance(self.precisions, str) else list(self.precisions)
        for p in wanted + list(self.excluded_precisions):
            if str(p).lower() not in _PRECISIONS and str(p).lower() not in ("fp32", "float32"):
                raise ConfigError(f"unknown precision {p!r}; use 'bf16' or 'fp16'")
        if self.device.lower() != "cpu":
            raise ConfigError(f"device {self.device!r} is not supported; mixprec converts for device='cpu'")
        if self.target not in _TARGETS:
            raise ConfigError(f"target must be one of {_TARGETS}, not {self.target!r}")
        if not isinstance(self.accuracy_criterion, AccuracyCriterion):
            raise ConfigError("accuracy_criterion must be a mixprec.config.AccuracyCriterion")
        if not isinstance(self.tuning_criterion, TuningCriterion):
            raise ConfigError("tuning_criterion must be a mixprec.config.TuningCriterion")
        if not 0.0 < float(self.min_cosine) <= 1.0:
            raise ConfigError(f"min_cosine must be in (0, 1], not {self.min_cosine!r}")
        for name, table in (("op_type_dict", self.op_type_dict), ("op_name_dict", self.op_name_dict)):
            if not isinstance(table, dict):
                raise ConfigError(f"{name} must be a dict like {{'Conv': {{'activation': {{'dtype': ['fp32']}}}}}}")
            for key, spec in table.items():
                _override_precision(name, key, spec)
        self.precision  # noqa: B018 - raises when every precision is excluded

    @property
    def precision(self) -> str:
        """The one low precision to convert to (``bf16`` or ``fp16``)."""
        wanted = [self.precisions] if isinstance(self.precisions, str) else list(self.precisions)
        excluded = {_PRECISIONS.get(str(p).lower(), str(p).lower()) for p in self.excluded_precisions}
        for p in wanted:
            short = _PRECISIONS.get(str(p).lower())
            if short and short not in excluded:
                return short
        raise ConfigError(f"no precision left to convert to: precisions={self.precisions!r}, "
                          f"excluded_precisions={self.excluded_precisions!r}")

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
