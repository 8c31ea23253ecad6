"""The timer protocol and the measurement loop the frameworks' timers share.

A framework's timer (mixprec/runtimes/<fw>_timing.py) turns a region's two standalone
graphs into callables of its own runtime and hands them to :func:`measure_pair`, which
runs them interleaved (A B, then B A, so that drift and cache warmth hit both alike),
takes the median of each and stops as soon as the answer is stable, or at the time cap.
Decisions compare the two medians; nothing here imports a framework."""
from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

from mixprec.errors import MixprecError
from mixprec.ir.graph import Graph, Model

logger = logging.getLogger(__name__)


class TimingUnavailable(MixprecError):
    """A region (or the sample values it needs) could not be run by the timer."""


@dataclass(frozen=True)
class TimingPolicy:
    """``min_reps``..``max_reps`` interleaved pairs after ``warmup`` calls of each, at
    most ``max_seconds`` per pair of callables (``min_reps`` are always run). One
    repetition runs a callable enough times back to back to last ``min_sample_s``, so
    microsecond regions are not lost in the clock's noise. Stable: the median ratio's
    95% interval is within ``tolerance`` or excludes 1."""
    min_reps: int = 5
    max_reps: int = 60
    max_seconds: float = 2.0
    warmup: int = 2
    min_sample_s: float = 0.002
    tolerance: float = 0.02


def policy_from_env() -> TimingPolicy:
    """The default policy, with ``MIXPREC_PROFILE_SECONDS`` (seconds per region, > 0) as
    its time cap when set."""
    text = os.environ.get("MIXPREC_PROFILE_SECONDS")
    if not text:
        return TimingPolicy()
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        from mixprec.errors import ConfigError
        raise ConfigError(f"MIXPREC_PROFILE_SECONDS={text!r}: give the seconds each region may be timed, e.g. 0.5")
    return TimingPolicy(max_seconds=seconds)


@dataclass
class Measurement:
    """Medians of one region (or model) in FP32 and low precision, in milliseconds."""
    fp32_ms: float
    low_ms: float
    reps: int
    spread: float = 0.0  # half-width of the median ratio's 95% interval
    path: str = ""  # the kernel path the timer chose for the low twin, when it tried several
    notes: list[str] = field(default_factory=list)

    @property
    def faster(self) -> bool:
        """The low-precision twin, casts included, is strictly faster."""
        return self.low_ms < self.fp32_ms

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.low_ms if self.low_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        try:
            return cls(float(data["fp32_ms"]), float(data["low_ms"]), int(data["reps"]),
                       float(data.get("spread", 0.0)), str(data.get("path", "")), list(data.get("notes", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a measurement: {exc}") from None


class RegionTimer(Protocol):
    """What a framework's timer provides (mixprec.runtimes.torch_timing.TorchTimer)."""
    framework: str

    def version(self) -> str:
        """The runtime's version (part of every cache key)."""

    def capture(self, names: Sequence[str]) -> dict[str, Any]:
        """The FP32 model's values named ``names`` on the sample inputs (objects with a
        ``shape``, or python scalars); TimingUnavailable when it cannot run the model."""

    def time(self, fp32: Graph, low: Graph, inputs: Sequence[Any], policy: TimingPolicy) -> Measurement:
        """Both standalone graphs on ``inputs`` (one per graph input), interleaved."""


class FrameworkTimer:
    """What every framework's timer shares, knowing no framework: the model it times
    (``original`` and ``loaded``, its FP32 IR), the sample inputs the output check uses
    (the first the FP32 model runs on, made once), and the FP32 IR re-rooted on chosen
    values for ``capture``. A subclass sets ``framework`` and provides ``version``,
    ``capture``, ``time`` and ``time_models`` (RegionTimer)."""
    framework = ""

    def __init__(self, adapter: Any, original: Any, loaded: Model, config: Any) -> None:
        self._adapter = adapter
        self._original = original
        self._loaded = loaded
        self._config = config
        self._sample: Any = None
        self._native: tuple[Any, Any] | None = None  # (model, its native form)

    def native(self, original: Any) -> Any:
        """``original`` in its framework's own runnable form (``adapter.native``), made once
        per model and reused by every whole-model timing."""
        if self._native is None or self._native[0] is not original:
            self._native = (original, self._adapter.native(original))
        return self._native[1]

    def sample_inputs(self) -> Any:
        if self._sample is None:
            from mixprec.mix_precision import reference_run  # fit's own choice of inputs
            self._sample, _ = reference_run(self._adapter, self._original, self._loaded, self._config)
        return self._sample

    def _with_outputs(self, names: Sequence[str]) -> Model:
        """A clone of the FP32 IR whose graph outputs are the values ``names``;
        TimingUnavailable when one is not in it."""
        model = self._loaded.clone()
        values = {v.name: v for v in model.graph.values()}
        missing = [n for n in names if n not in values]
        if missing:
            raise TimingUnavailable(f"no values named {missing[:3]} in the FP32 model")
        model.graph.outputs = [values[n] for n in names]
        return model


#: the whole model is timed a little longer than one region
MODEL_POLICY = TimingPolicy(min_reps=5, max_reps=30, max_seconds=4.0, min_sample_s=0.0)


def model_policy(policy: TimingPolicy) -> TimingPolicy:
    """The policy for timing a whole model: MODEL_POLICY, or ``policy`` when it allows more time."""
    return MODEL_POLICY if policy.max_seconds <= MODEL_POLICY.max_seconds else policy


def _calibrate(run: Callable[[], Any], min_sample_s: float) -> int:
    """How many back-to-back calls make one sample of at least ``min_sample_s``."""
    started = time.perf_counter()
    run()
    once = time.perf_counter() - started
    return max(1, min(1000, math.ceil(min_sample_s / once))) if once > 0 else 1000


def _sample(run: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - started) / calls


def ratio_spread(ratios: Sequence[float]) -> float:
    """Half-width of an approximate 95% interval of the median (McGill's notch, 1.57 IQR / sqrt n)."""
    if len(ratios) < 4:
        return math.inf
    q = statistics.quantiles(ratios, n=4)
    return 1.57 * (q[2] - q[0]) / math.sqrt(len(ratios))


def measure_pair(fp32: Callable[[], Any], low: Callable[[], Any], policy: TimingPolicy = TimingPolicy(),
                 clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Interleaved medians of ``fp32`` and ``low`` (see the module docstring)."""
    for _ in range(policy.warmup):
        fp32()
        low()
    calls = max(_calibrate(fp32, policy.min_sample_s), _calibrate(low, policy.min_sample_s))
    a: list[float] = []
    b: list[float] = []
    started = clock()
    spread = math.inf
    while len(a) < policy.max_reps:
        if len(a) % 2 == 0:
            a.append(_sample(fp32, calls))
            b.append(_sample(low, calls))
        else:
            b.append(_sample(low, calls))
            a.append(_sample(fp32, calls))
        if len(a) < policy.min_reps:
            continue
        ratios = [y / x for x, y in zip(a, b) if x > 0]
        spread = ratio_spread(ratios)
        median = statistics.median(ratios) if ratios else 1.0
        if spread <= policy.tolerance * median or abs(median - 1.0) > 2 * spread:
            break
        if clock() - started > policy.max_seconds:
            break
    return Measurement(statistics.median(a) * 1e3, statistics.median(b) * 1e3, len(a),
                       spread if math.isfinite(spread) else 0.0)
