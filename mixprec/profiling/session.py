"""The ``objective="performance"`` decision: measure each region (cache, portable profile
or the framework's timer) and keep it low only where that is faster, casts included.

Rules (the tests in tests/profiling hold them):

- a component stays low exactly when its measured low-precision time, boundary casts
  included, is lower than its FP32 time;
- when a component loses, each of its allow ops is measured alone (with its own casts)
  and stays low exactly when that is lower; every other node of the component is pinned
  FP32 (source ``profile``, the measured numbers in the reason);
- a region that cannot be measured (no timer for the framework, a region the timer
  cannot run, an entry missing from a given profile file) is unknown and stays FP32, so
  the result is never slower than FP32 by anything measured;
- with a profile file nothing is timed locally (the machine converting is often not the
  one deploying); its missing entries are unknown;
- a cache hit costs no timer call."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from mixprec import machine
from mixprec.fileio import first_line
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Value
from mixprec.profiling.cache import Profile, TimingCache
from mixprec.profiling.regions import Region, extract
from mixprec.profiling.timing import Measurement, TimingPolicy, TimingUnavailable, policy_from_env

logger = logging.getLogger(__name__)

OBJECTIVES = ("memory", "performance", "accuracy")


@dataclass
class RegionRecord:
    """One measured (or unmeasurable) region and what was decided for it."""
    kind: str
    label: str
    nodes: int
    first: str
    decision: str  # the low precision or "f32"
    source: str  # measured | cache | profile | unknown
    fp32_ms: float | None = None
    low_ms: float | None = None
    reps: int = 0
    signature: str = ""
    why: str = ""

    @property
    def saving_ms(self) -> float:
        if self.fp32_ms is None or self.low_ms is None or self.decision == "f32":
            return 0.0
        return self.fp32_ms - self.low_ms


class ProfileSession:
    """Measurements for one conversion (and its tuning trials, which reuse them)."""

    def __init__(self, framework: str, precision: str, policy: str | None = None, timer: Any = None,
                 cache: TimingCache | None = None, profile: Profile | None = None, unavailable: str | None = None,
                 timing: TimingPolicy = TimingPolicy(), exhaustive: bool = False) -> None:
        self.framework = framework
        self.precision = precision
        self.policy = policy
        self.timer = timer
        self.cache = cache
        self.profile = profile
        self.unavailable = unavailable
        self.timing = timing
        self.exhaustive = exhaustive  # also measure the singles of components that win (mixprec profile)
        self.records: list[RegionRecord] = []
        self.used: dict[str, Measurement] = {}
        self.timer_calls = 0
        self.latency: dict[str, Any] = {}
        self._captured: dict[str, Any] = {}  # value name -> its value on the sample inputs
        self._shapes: dict[str, tuple[int, ...]] = {}  # value name -> its concrete shape there
        self._needed: list[str] = []  # the values the regions read that must be captured
        self._capture_error: str | None = None
        self._static_holds: bool | None = None  # the IR's static shapes are the sample inputs' (see _static)
        self._model_text: str | None = None
        self.loaded: Any = None  # the FP32 IR model (whole-model latency keys)
        self.seconds = 0.0  # wall time spent profiling (deciding regions, the model's latency), all runs
        self._clocking = False

    @contextlib.contextmanager
    def clock(self) -> Iterator[None]:
        """Adds the wall time of the block to ``seconds`` (nested blocks count once)."""
        if self._clocking:
            yield
            return
        self._clocking = True
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started
            self._clocking = False

    def __repr__(self) -> str:  # passes print their options
        return f"ProfileSession({self.framework}, {self.precision})"

    # ---- the decision ---------------------------------------------------------------
    def start_run(self) -> None:
        """A new pipeline run: the records describe the latest one only."""
        self.records = []

    def decide(self, graph: Graph, component: Sequence[str], allow: set[str]) -> dict[str, str]:
        """FP32 pins (node -> reason) for one low-precision component of ``graph`` (the
        FP32 graph the pipeline is converting); see the module docstring."""
        region = extract(graph, component, self.precision, self.policy, "component")
        measured, record = self._measure(region, graph)
        winners: list[str] = []
        if len(component) > 1 and (self.exhaustive or measured is None or not measured.faster):
            self.prepare(graph, [[name] for name in component if name in allow])
            for name in component:
                if name in allow:
                    single, single_record = self._measure(extract(graph, [name], self.precision, self.policy,
                                                                  "single"), graph)
                    if single is not None and single.faster:
                        winners.append(name)
                    if measured is not None and measured.faster:
                        single_record.decision = "f32"
                        single_record.why = "inside a component kept low as a whole"
        if measured is not None and measured.faster:
            return {}
        return {name: record.why for name in component if name not in winners}

    def _measure(self, region: Region, graph: Graph) -> tuple[Measurement | None, RegionRecord]:
        record = RegionRecord(region.kind, region.label(), len(region.nodes), region.nodes[0], "f32", "unknown")
        self.records.append(record)
        measured, record.source, why = self._lookup(region, graph, record)
        if measured is None:
            record.why = f"{region.label()} not measured ({why}): kept FP32"
            return None, record
        record.fp32_ms, record.low_ms, record.reps = measured.fp32_ms, measured.low_ms, measured.reps
        verdict = "faster" if measured.faster else "not faster"
        record.decision = self.precision if measured.faster else "f32"
        record.why = (f"{region.label()}: FP32 {measured.fp32_ms:.4g} ms, {self.precision.upper()} "
                      f"{measured.low_ms:.4g} ms with casts ({measured.reps} reps, {record.source}): {verdict}")
        return measured, record

    def _lookup(self, region: Region, graph: Graph, record: RegionRecord) -> tuple[Measurement | None, str, str]:
        """(measurement or None, source, why not)."""
        if region.untimeable:
            return None, "unknown", region.untimeable
        try:
            shapes, inputs = self._inputs(region, graph)
        except TimingUnavailable as exc:
            return None, "unknown", first_line(exc)
        signature = region.signature(shapes)
        record.signature = signature
        if self.profile is not None:
            found = self.profile.entries.get(signature)
            if found is None:
                return None, "unknown", "missing from the profile file"
            self.used[signature] = found
            return found, "profile", ""
        found = self.cache.get(signature) if self.cache is not None else None
        if found is not None:
            self.used[signature] = found
            return found, "cache", ""
        if self.timer is None:
            return None, "unknown", self.unavailable or f"no {self.framework} timer"
        try:
            values = inputs()
        except TimingUnavailable as exc:
            return None, "unknown", first_line(exc)
        self.timer_calls += 1
        try:
            found = self.timer.time(region.fp32, region.low, values, self.timing)
        except Exception as exc:  # a region the runtime cannot run: unknown, never a failed conversion
            logger.info("cannot time %s: %s", region.label(), first_line(exc))
            return None, "unknown", f"the timer failed: {type(exc).__name__}: {first_line(exc, 160)}"
        if self.cache is not None:
            self.cache.put(signature, found)
        self.used[signature] = found
        return found, "measured", ""

    def prepare(self, graph: Graph, regions: Sequence[Sequence[str]]) -> None:
        """Before ``regions`` (lists of node names) are decided: the concrete shapes of
        the values flowing into them that cannot be synthesized (dynamic shapes, integer
        inputs), from the cache (keyed by the FP32 model and the sample shapes) or from ONE
        captured run of the FP32 model for all of them, whose values then serve every
        region timed. So a conversion whose regions are all cached runs no capture."""
        nodes = {n.name: n for n in graph.iter_nodes()}
        needed = []
        for region in regions:
            inside = set(region)
            for name in region:
                needed.extend(v.name for v in nodes[name].inputs if v is not None and not v.is_constant
                              and not self._static(v, graph) and (v.producer is None or v.producer.name not in inside))
        self._needed = list(dict.fromkeys(self._needed + needed))
        missing = [n for n in dict.fromkeys(needed) if n not in self._shapes]
        if not missing:
            return
        key = self._shapes_key()
        cached = (self.cache.get_data(key) or {}) if self.cache is not None and key is not None else {}
        if self.profile is not None:  # the shapes the profiled machine captured, for the same model
            given = self.profile.model.get("shapes") or {}
            cached = dict(given.get("values") or {}) if given.get("model") == self.model_hash() else {}
        self._shapes.update({n: tuple(int(d) for d in cached[n]) for n in missing if isinstance(cached.get(n), list)})
        missing = [n for n in missing if n not in self._shapes]
        if not missing:
            return
        self._capture(missing)
        if self.cache is not None and key is not None and not self._capture_error:
            cached.update({n: list(s) for n, s in self._shapes.items()})
            self.cache.put_data(key, cached)

    def _capture(self, names: Sequence[str]) -> None:
        """One run of the FP32 model capturing ``names`` (values and shapes); a failure is
        remembered and makes the regions that need them unknown."""
        names = [n for n in names if n not in self._captured]
        if not names or self._capture_error:
            return
        if self.timer is None:
            self._capture_error = "its inputs have dynamic shapes and there is no timer to capture them"
            return
        try:
            self._captured.update(self.timer.capture(names))
        except TimingUnavailable as exc:
            self._capture_error = first_line(exc, 200)
        except Exception as exc:  # no sample input fits (SampleInputError), a model that rejects the probe
            self._capture_error = f"its input values could not be captured: {first_line(exc, 160)}"
        self._shapes.update({n: tuple(getattr(self._captured[n], "shape", ())) for n in names if n in self._captured})

    def _shapes_key(self) -> str | None:
        """The cache key of the captured shapes: the FP32 model's text and the sample
        input shapes (None when the timer cannot say them). Shapes that depend on the
        weights' values (none in the models mixprec converts) would need them too."""
        if self.timer is None or not hasattr(self.timer, "sample_shapes"):
            return None
        try:
            shapes = repr(self.timer.sample_shapes())
        except Exception as exc:  # no sample input fits: nothing to key
            logger.info("no sample shapes for the shape cache: %s", first_line(exc))
            return None
        import hashlib
        text = "\n".join(["mixprec-shapes 1", self.model_text(), shapes])
        return "shapes-" + hashlib.sha256(text.encode()).hexdigest()[:32]

    def shape_table(self) -> dict[str, Any]:
        """The concrete shapes captured so far, with the hash of the model they belong to
        (what ``mixprec profile`` writes, so that a model with dynamic shapes converts
        from the profile on a machine that runs nothing)."""
        return {"model": self.model_hash(), "values": {n: list(s) for n, s in sorted(self._shapes.items())}}

    def model_hash(self) -> str:
        """A hash of the FP32 IR's text (what a profile file's captured shapes belong to)."""
        import hashlib
        return hashlib.sha256(self.model_text().encode()).hexdigest()[:32]

    def model_text(self) -> str:
        """The FP32 IR's text (computed once)."""
        if self._model_text is None:
            from mixprec.ir.text import dump
            self._model_text = dump(self.loaded.graph) if self.loaded is not None else ""
        return self._model_text

    def _static(self, value: Value, graph: Graph) -> bool:
        """``value`` can be synthesized at its IR shape: a static float tensor, and the IR's
        static shapes are those of the sample inputs the model runs on. A frontend may
        state shapes that the sample inputs do not have (an MXNet symbol's input shape
        guessed from its weights, 1x3x32x32, where the sample ladder ran 224x224); then
        every region input is captured, never synthesized at a shape the model does not
        see."""
        if not _synthesizable(value):
            return False
        if self._static_holds is None:
            self._static_holds = True
            declared = _input_shapes(graph.root)
            if declared is not None and self.timer is not None and hasattr(self.timer, "sample_shapes"):
                try:
                    sample = [tuple(int(d) for d in s) for s in self.timer.sample_shapes()]
                except Exception as exc:  # no sample inputs: nothing to compare, regions are skipped anyway
                    logger.info("no sample shapes to compare with the IR's: %s", first_line(exc))
                else:
                    self._static_holds = sample == declared
                    if not self._static_holds:
                        logger.info("the sample inputs' shapes %s are not the IR's %s: region inputs are captured",
                                    sample, declared)
        return self._static_holds

    def _inputs(self, region: Region, graph: Graph) -> tuple[list[tuple[int, ...]], Any]:
        """The concrete input shapes and a thunk making the input values: synthesized for
        static float tensors, the FP32 model's own values (captured, see :meth:`prepare`)
        otherwise."""
        values = {v.name: v for v in graph.values()}
        dynamic = [name for name in region.inputs if not self._static(values[name], graph)]
        if any(name not in self._shapes for name in dynamic):
            self.prepare(graph, [region.nodes])
        if any(name not in self._shapes for name in dynamic):
            raise TimingUnavailable(self._capture_error or "its input values could not be captured")
        shapes = [self._shapes[n] if n in self._shapes else tuple(values[n].shape) for n in region.inputs]

        def make() -> list[Any]:
            self._capture([n for n in self._needed if n not in self._captured])
            if any(n not in self._captured for n in dynamic):
                raise TimingUnavailable(self._capture_error or "its input values could not be captured")
            return [self._captured[n] if n in self._captured else synthesize(values[n]) for n in region.inputs]
        return shapes, make

    # ---- what the report shows --------------------------------------------------------
    def summary(self, objective: str) -> dict[str, Any]:
        source = ("profile file" if self.profile is not None else "unavailable" if self.unavailable
                  else "measured on this machine")
        out = {"objective": objective, "source": source, "framework": self.framework,
               "machine": (self.profile.machine.get("summary") if self.profile is not None else None)
               or machine.summary_line(),
               "timer_calls": self.timer_calls, "seconds": round(self.seconds, 4),
               "regions": [asdict(r) for r in self.records],
               "latency": dict(self.latency)}
        if self.unavailable:
            out["unavailable"] = self.unavailable
        return out

    def predicted_ms(self, fp32_ms: float) -> float:
        return fp32_ms - sum(r.saving_ms for r in self.records)


def _synthesizable(value: Value) -> bool:
    return value.dtype.is_float and value.shape is not None and all(isinstance(d, int) for d in value.shape)


def _input_shapes(graph: Graph) -> list[tuple[int, ...]] | None:
    """The graph inputs' shapes when all are static, else None."""
    shapes = []
    for value in graph.inputs:
        if value.shape is None or not all(isinstance(d, int) for d in value.shape):
            return None
        shapes.append(tuple(value.shape))
    return shapes


def synthesize(value: Value, seed: int = 0) -> np.ndarray:
    """Values of a static float tensor for timing (standard normal)."""
    rng = np.random.default_rng(seed)
    dtype = value.dtype if value.dtype in (DType.FLOAT32, DType.FLOAT64, DType.FLOAT16) else DType.FLOAT32
    return rng.standard_normal(value.shape).astype(dtype.to_numpy())


# ---- how fit drives it ---------------------------------------------------------------
_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mixprec_profile_session", default=None)


@contextlib.contextmanager
def scope(exhaustive: bool = False) -> Iterator[dict]:
    """Holds the session of one ``fit`` call (an enclosing scope is reused, so that
    ``mixprec profile`` reads the session its ``fit`` made)."""
    held = _ACTIVE.get()
    if held is not None:
        yield held
        return
    holder: dict[str, Any] = {"exhaustive": exhaustive}
    token = _ACTIVE.set(holder)
    try:
        yield holder
    finally:
        _ACTIVE.reset(token)


def exhaustive() -> bool:
    """Whether this fit measures every region for ``mixprec profile`` (which must time,
    so the conversion cache is not used)."""
    held = _ACTIVE.get()
    return bool(held and held.get("exhaustive"))


def current() -> ProfileSession | None:
    held = _ACTIVE.get()
    return held.get("session") if held is not None else None


def begin(adapter: Any, original: Any, loaded: Any, config: Any) -> ProfileSession | None:
    """Log the machine line; for ``objective="performance"`` make the session of this
    conversion (timer, cache or profile file) and hold it in the active scope."""
    logger.info("machine: %s", machine.summary_line())
    held = _ACTIVE.get()
    if config.objective != "performance":
        return None
    started = time.perf_counter()
    session = make_session(adapter, original, loaded, config, exhaustive=exhaustive())
    session.seconds += time.perf_counter() - started
    session.loaded = loaded
    if held is not None:
        held["session"] = session
    return session


def make_session(adapter: Any, original: Any, loaded: Any, config: Any, exhaustive: bool = False) -> ProfileSession:
    """The session of one conversion: the framework record (mixprec.frameworks) names its
    timer and, for a runtime with no fast low-precision kernels, why nothing is timed."""
    from mixprec import frameworks
    framework = adapter.name
    record = frameworks.get(framework)
    precision, policy = config.precision, config.policy
    if record.low_precision_note:
        return ProfileSession(framework, precision, policy,
                              unavailable=record.low_precision_note.replace("{p}", precision.upper()))
    profile = Profile.load(config.profile) if config.profile is not None else None
    if profile is not None and profile.framework != framework:
        from mixprec.errors import ConfigError
        raise ConfigError(f"profile {config.profile} was measured with {profile.framework}, but the model is a "
                          f"{framework} model; profile it with `mixprec profile MODEL -o FILE`")
    timer = None
    if record.timer and profile is None:
        timer = record.load_timer()(adapter, original, loaded, config)
    if timer is None and profile is None:
        return ProfileSession(framework, precision, policy, unavailable=f"mixprec has no {framework} timer yet: "
                              "nothing can be measured, so the model stays FP32 (unknown -> FP32)")
    cache = TimingCache(machine.fingerprint_key(), framework, timer.version()) \
        if timer is not None and config.cache else None
    return ProfileSession(framework, precision, policy, timer=timer, cache=cache, profile=profile,
                          timing=policy_from_env(), exhaustive=exhaustive)


def extend_pipeline(spec: str, config: Any) -> tuple[str, dict[str, Any]]:
    """The pipeline with ``profile-precision`` before assign-precision when the objective
    asks for it, and the options that pass takes (given to build_pipeline as defaults)."""
    if config.objective == "memory":
        return spec, {}
    from mixprec.passes.pipeline import split_items
    items = split_items(spec)
    names = [item.split("{")[0].strip() for item in items]
    if "profile-precision" in names:
        position = None
    elif "assign-precision" in names:
        position = names.index("assign-precision")
    else:
        logger.warning("objective=%r needs assign-precision in the pipeline; the pipeline has none", config.objective)
        return spec, {}
    session = current()
    if session is None and config.objective == "performance":
        logger.warning("objective='performance' measures while converting (fit, `mixprec convert`); this pipeline "
                       "run paints as objective='memory'")
        return spec, {}
    if position is not None:
        items.insert(position, "profile-precision")
    if session is not None:
        session.start_run()
    return ",".join(items), {"objective": config.objective, "session": session}


def annotate(report: Any, config: Any) -> None:
    """Put the latest run's regions into ``report.profile`` (and the note for a runtime
    with no fast kernels)."""
    session = current()
    if config.objective == "accuracy":
        report.profile = {"objective": "accuracy", "regions": []}
        return
    if session is None or config.objective != "performance":
        return
    report.profile = session.summary(config.objective)
    if session.unavailable and session.unavailable not in report.notes:
        report.notes.append(session.unavailable)
    elif session.profile is not None:
        missing = sum(1 for r in session.records if r.source == "unknown")
        report.notes.append(f"objective='performance' used the measurements of profile {config.profile} "
                            f"({session.profile.machine.get('cpu', '?')}); nothing was timed on this machine"
                            + (f"; {missing} region(s) missing from it stayed FP32" if missing else ""))


def finish(adapter: Any, original: Any, result: Any, config: Any) -> Any:
    """The model's latency against FP32: measured on this machine (the timer's
    ``time_models``; a cached measurement of the same conversion is reused), predicted
    from the regions (FP32 latency minus what each kept region saved); both go into
    ``report.profile["latency"]``. Returns ``result``, or the FP32 model as given in its
    place (mixprec.profiling.guard) when the converted model measured slower than it
    beyond noise, or when nothing was converted (the emitted FP32 graph can only tie or
    lose: it runs without the original's fused kernels)."""
    session = current()
    report = result.report
    if session is None or config.objective != "performance" or report.profile is None:
        return result
    latency = report.profile.setdefault("latency", {})
    measured = None
    if session.profile is not None:
        fp32_ms = session.profile.model.get("fp32_ms")
        if fp32_ms:
            latency.update(fp32_ms=fp32_ms, predicted_ms=session.predicted_ms(float(fp32_ms)), measured_ms=None)
    else:
        with session.clock():
            measured = _model_latency(session, original, result)
        report.profile["seconds"] = round(session.seconds, 4)
    if measured is not None:
        latency.update(fp32_ms=measured.fp32_ms, measured_ms=measured.low_ms, reps=measured.reps,
                       spread=measured.spread, predicted_ms=session.predicted_ms(measured.fp32_ms))
        session.latency = dict(latency)
    from mixprec.profiling import guard
    if guard.nothing_low(result, config.precision) or (measured is not None and guard.slower_than_fp32(measured)):
        return guard.fp32_result(result, adapter, original, session.loaded.clone(), config, measured)
    return result


def _model_latency(session: ProfileSession, original: Any, result: Any) -> Measurement | None:
    """The whole converted model against the FP32 model: from the cache, or timed (and
    cached); None (with a note) when it cannot be measured."""
    if session.timer is None or not hasattr(session.timer, "time_models"):
        return None
    report = result.report
    key = _model_signature(session, result.ir)
    measured = session.cache.get(key) if session.cache is not None else None
    if measured is not None:
        return measured
    from mixprec.profiling import guard
    try:
        measured = session.timer.time_models(original, result.model, session.timing)
        session.timer_calls += 1
        if guard.ambiguous(measured):  # slower by its median but noisy: measure again before deciding
            measured = guard.pooled(measured, session.timer.time_models(original, result.model, session.timing))
            session.timer_calls += 1
    except Exception as exc:  # latency is information, never a failed conversion
        report.notes.append(f"model latency not measured: {type(exc).__name__}: {first_line(exc, 160)}")
        return None
    report.profile["timer_calls"] = session.timer_calls
    if session.cache is not None:
        session.cache.put(key, measured)
    return measured


def _model_signature(session: ProfileSession, converted: Any) -> str:
    """The cache key of a whole-model latency: the FP32 graph's text, every converted
    node's precision (not the reasons, which name where measurements came from) and the
    sample shapes."""
    import hashlib
    shapes = repr(session.timer.sample_shapes()) if hasattr(session.timer, "sample_shapes") else ""
    decisions = "\n".join(f"{n.name} {n.op} {n.meta.get('precision')}" for n in converted.graph.all_nodes())
    text = "\n".join(["mixprec-model 2", session.model_text(), decisions, shapes])
    return "model-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def profile_model(model: Any, config: Any, output: str) -> tuple[Any, Profile]:
    """``mixprec profile``: convert ``model`` with objective='performance', measuring
    every region (and every allow op alone), and write the measurements with this
    machine's fingerprint to ``output``."""
    import dataclasses

    from mixprec.mix_precision import fit
    config = dataclasses.replace(config, objective="performance", profile=None)
    with scope(exhaustive=True) as held:
        result = fit(model, config=config)
        session = held.get("session")
    if session is None or session.unavailable:
        from mixprec.errors import ConfigError
        raise ConfigError(session.unavailable if session is not None else "nothing to profile")
    fp = machine.fingerprint()
    fp["summary"] = machine.summary_line()
    version = session.timer.version() if session.timer is not None else ""
    latency = (result.report.profile or {}).get("latency", {})
    profile = Profile(fp, session.framework, version, dict(session.used),
                      {"fp32_ms": latency.get("fp32_ms"), "regions": len(session.records),
                       "shapes": session.shape_table()})
    profile.save(output)
    return result, profile
