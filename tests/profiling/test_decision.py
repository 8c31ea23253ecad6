"""The objective="performance" decision with a fake timer (nothing is timed): a region is
kept low exactly when its measured time, boundary casts included, is lower; a losing
component keeps the allow ops that win alone; unknown is FP32; a cache hit costs no
timer call; a profile file replaces the timer. Plus objective="accuracy" painting."""
import textwrap

import pytest

from mixprec.ir import dump, parse
from mixprec.ir.pins import pin_of
from mixprec.passes import build_pipeline
from mixprec.profiling import Measurement, Profile, ProfileSession, TimingCache

PIPELINE = ("infer-dtypes,mark-shape-subgraphs,pin-input-norms,apply-overrides,profile-precision,assign-precision,"
            "insert-casts,fold-casts,convert-constants,keep-io-types")

MLP = """
graph main(%x: f32[4,8]) -> (%out: f32[4,8]) {
  const %w1: f32[8,8]
  const %w2: f32[8,8]
  %m1: f32[4,8] = MatMul(%x, %w1) {tag="m1"}
  %r: f32[4,8] = Relu(%m1) {tag="r"}
  %m2: f32[4,8] = MatMul(%r, %w2) {tag="m2"}
  %out: f32[4,8] = Softmax(%m2) {axis=1}
  return %out
}
"""


class FakeTimer:
    """Times from tables: a region's FP32 time is the sum of its nodes' ``fp32`` costs
    (by their ``tag`` attribute), its low time the sum of their ``low`` costs plus
    ``cast_ms`` per Cast node in the low twin (so boundary casts count)."""
    framework = "generic"

    def __init__(self, fp32, low, cast_ms=0.0, fail=False):
        self.fp32, self.low, self.cast_ms, self.fail = fp32, low, cast_ms, fail
        self.calls = []

    def version(self):
        return "fake-1"

    def capture(self, names):
        raise AssertionError("static float inputs need no capture")

    def time(self, fp32, low, inputs, policy):
        tags = [n.attrs["tag"] for n in fp32.iter_nodes()]
        self.calls.append(tags)
        if self.fail:
            raise RuntimeError("no kernel")
        assert [tuple(i.shape) for i in inputs] == [tuple(v.shape) for v in fp32.inputs]
        casts = sum(1 for n in low.iter_nodes() if n.op == "Cast")
        return Measurement(sum(self.fp32[t] for t in tags), sum(self.low[t] for t in tags) + casts * self.cast_ms, 7)


def convert(session, text=MLP, objective="performance"):
    graph = parse(textwrap.dedent(text))
    for value in graph.constants.values():  # data for the twin's weights
        import numpy as np
        value.data = np.ones(value.shape, np.float32)
    build_pipeline(PIPELINE, precision="bf16", objective=objective, session=session).run(graph)
    return graph


def precisions(graph):
    return {n.name: n.meta["precision"] for n in graph.iter_nodes() if n.op != "Cast"}


@pytest.mark.parametrize("low, expected", [(0.99, "bf16"), (1.0, "f32"), (1.01, "f32")])
def test_component_kept_low_exactly_when_measured_faster(low, expected):
    # the whole chain m1-r-m2 is one component; its FP32 time is 1.0 ms
    timer = FakeTimer({"m1": 0.5, "r": 0.0, "m2": 0.5}, {"m1": low / 2, "r": 0.0, "m2": low / 2})
    graph = convert(ProfileSession("generic", "bf16", timer=timer))
    assert timer.calls[0] == ["m1", "r", "m2"]
    assert {precisions(graph)[n] for n in ("m1", "r", "m2")} == {expected}
    if expected == "f32":
        pin = pin_of(next(n for n in graph.nodes if n.name == "m1"))
        assert pin is not None and pin.source == "profile"
        assert "FP32 1 ms" in pin.reason and "with casts" in pin.reason
        assert "pin=profile" in dump(graph)


def test_boundary_casts_count_in_the_low_time():
    # compute alone is faster in bf16 (0.8 vs 1.0 ms), but the twin has two boundary casts of 0.15 ms each
    fp32, low = {"m1": 0.5, "r": 0.0, "m2": 0.5}, {"m1": 0.4, "r": 0.0, "m2": 0.4}
    cheap = FakeTimer(fp32, low, cast_ms=0.05)
    assert precisions(convert(ProfileSession("generic", "bf16", timer=cheap)))["m1"] == "bf16"
    dear = FakeTimer(fp32, low, cast_ms=0.15)
    session = ProfileSession("generic", "bf16", timer=dear)
    graph = convert(session)
    assert precisions(graph)["m1"] == "f32"
    component = session.records[0]
    assert component.fp32_ms == pytest.approx(1.0) and component.low_ms == pytest.approx(1.1)


def test_losing_component_keeps_the_allow_ops_that_win_alone():
    # whole component: 2.0 vs 2.5 (loses); m1 alone 1.0 vs 0.5 + casts 0.2 (wins); m2 alone 1.0 vs 2.0 (loses)
    timer = FakeTimer({"m1": 1.0, "r": 0.0, "m2": 1.0}, {"m1": 0.5, "r": 0.0, "m2": 2.0}, cast_ms=0.1)
    session = ProfileSession("generic", "bf16", timer=timer)
    graph = convert(session)
    assert timer.calls == [["m1", "r", "m2"], ["m1"], ["m2"]]
    assert precisions(graph) == {"m1": "bf16", "r": "f32", "m2": "f32", "out": "f32"}
    assert [(r.kind, r.decision) for r in session.records] == [("component", "f32"), ("single", "bf16"),
                                                               ("single", "f32")]
    text = dump(graph)
    assert "%m1.f32: f32[4,8] = Cast(%m1) {to=f32}" in text  # m1 runs alone in bf16, with its casts


def test_unmeasurable_region_stays_fp32():
    timer = FakeTimer({"m1": 1.0, "r": 0.0, "m2": 1.0}, {"m1": 0.1, "r": 0.0, "m2": 0.1}, fail=True)
    session = ProfileSession("generic", "bf16", timer=timer)
    graph = convert(session)
    assert set(precisions(graph).values()) == {"f32"}
    assert session.records[0].source == "unknown" and "RuntimeError: no kernel" in session.records[0].why


def test_no_runtime_to_measure_on_keeps_everything_fp32():
    session = ProfileSession("generic", "bf16", unavailable="this runtime has no bf16 kernels")
    graph = convert(session)
    assert set(precisions(graph).values()) == {"f32"}
    assert all("this runtime has no bf16 kernels" in pin_of(n).reason for n in graph.iter_nodes()
               if n.name in ("m1", "r", "m2"))


def test_cache_hit_makes_no_timer_call(tmp_path):
    tables = ({"m1": 1.0, "r": 0.0, "m2": 1.0}, {"m1": 0.2, "r": 0.0, "m2": 0.2})
    first = FakeTimer(*tables)
    cache = TimingCache("machine", "generic", "fake-1", root=tmp_path)
    one = convert(ProfileSession("generic", "bf16", timer=first, cache=cache))
    assert len(first.calls) == 1 and len(list(cache.directory.iterdir())) == 1
    second = FakeTimer(*tables)
    session = ProfileSession("generic", "bf16", timer=second, cache=TimingCache("machine", "generic", "fake-1",
                                                                                root=tmp_path))
    two = convert(session)
    assert second.calls == [] and session.timer_calls == 0
    assert session.records[0].source == "cache" and session.records[0].low_ms == pytest.approx(0.4)
    assert dump(one) == dump(two)
    # another machine (or framework version) shares nothing
    other = FakeTimer(*tables)
    convert(ProfileSession("generic", "bf16", timer=other, cache=TimingCache("machine2", "generic", "fake-1",
                                                                             root=tmp_path)))
    assert len(other.calls) == 1


def test_same_structure_in_another_model_hits_the_cache(tmp_path):
    tables = ({"m1": 1.0, "r": 0.0, "m2": 1.0}, {"m1": 0.2, "r": 0.0, "m2": 0.2})
    convert(ProfileSession("generic", "bf16", timer=FakeTimer(*tables), cache=TimingCache("m", "g", "1", tmp_path)))
    renamed = MLP.replace("%m1", "%first").replace("%w1", "%weights.a").replace("%x", "%input")
    timer = FakeTimer(*tables)
    convert(ProfileSession("generic", "bf16", timer=timer, cache=TimingCache("m", "g", "1", tmp_path)), renamed)
    assert timer.calls == []
    wider = MLP.replace("4,8", "16,8")  # other shapes: measured again
    timer = FakeTimer(*tables)
    convert(ProfileSession("generic", "bf16", timer=timer, cache=TimingCache("m", "g", "1", tmp_path)), wider)
    assert len(timer.calls) == 1


def test_profile_file_round_trip_replaces_the_timer(tmp_path):
    timer = FakeTimer({"m1": 1.0, "r": 0.0, "m2": 1.0}, {"m1": 2.0, "r": 0.0, "m2": 0.1}, cast_ms=0.01)
    measured = ProfileSession("generic", "bf16", timer=timer, exhaustive=True)
    reference = convert(measured)
    profile = Profile({"cpu": "Test CPU", "flags": ["avx512_bf16"]}, "generic", "fake-1", dict(measured.used),
                      {"fp32_ms": 2.5})
    path = tmp_path / "machine.json"
    profile.save(path)
    loaded = Profile.load(path)
    assert loaded.machine == profile.machine and loaded.model == {"fp32_ms": 2.5}
    assert {k: v.to_dict() for k, v in loaded.entries.items()} == {k: v.to_dict() for k, v in profile.entries.items()}
    assert len(loaded.entries) == 3  # exhaustive: the component and both allow ops
    session = ProfileSession("generic", "bf16", profile=loaded)
    graph = convert(session)
    assert dump(graph) == dump(reference).replace("reps, measured)", "reps, profile)")
    assert precisions(graph)["m2"] == "bf16" and precisions(graph)["m1"] == "f32"
    assert {r.source for r in session.records} == {"profile"}
    # an entry missing from the profile is unknown: FP32, nothing timed
    del loaded.entries[session.records[0].signature]
    del loaded.entries[session.records[2].signature]
    partial = ProfileSession("generic", "bf16", profile=loaded)
    assert set(precisions(convert(partial)).values()) == {"f32"}
    assert "missing from the profile file" in partial.records[0].why


def test_accuracy_objective_keeps_only_allow_ops_low():
    graph = convert(None, objective="accuracy")
    assert precisions(graph) == {"m1": "bf16", "r": "f32", "m2": "bf16", "out": "f32"}
    relu = next(n for n in graph.iter_nodes() if n.name == "r")
    assert pin_of(relu).source == "policy-rule" and "objective=accuracy" in pin_of(relu).reason


def test_memory_objective_is_todays_conversion():
    graph = convert(None, objective="memory")
    assert precisions(graph) == {"m1": "bf16", "r": "bf16", "m2": "bf16", "out": "f32"}


def test_inputs_that_cannot_be_captured_leave_the_region_unknown():
    from mixprec.errors import SampleInputError

    class NoSample(FakeTimer):
        def capture(self, names):
            raise SampleInputError("the FP32 model does not run on 3 generated sample input(s)")
    timer = NoSample({"m1": 1.0, "r": 0.0, "m2": 1.0}, {"m1": 0.1, "r": 0.0, "m2": 0.1})
    session = ProfileSession("generic", "bf16", timer=timer)
    graph = convert(session, MLP.replace("4,8", "batch,8"))  # a symbolic dim: the values must be captured
    assert set(precisions(graph).values()) == {"f32"} and timer.calls == []
    assert "could not be captured" in session.records[0].why
