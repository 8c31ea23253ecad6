"""objective="performance" on MXNet's own runtime (mixprec.runtimes.mxnet_timing): regions of
Gluon blocks and saved symbol/params pairs are timed as SymbolBlocks in FP32 and BF16, the
report shows them with their decisions, a second conversion is served by the cache (whose
key holds the mxnet version and the thread settings), ``mixprec profile`` writes a profile
that ``convert --profile`` uses without timing anything, and a low twin with an op that has
no verified bf16 kernel is never run (TimingUnavailable: the region stays FP32). Timing
results are never asserted, only that they were measured and acted on consistently; one
test drives the MXNet path with a fake timer to pin a mixed decision down exactly."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mixprec.dialects.mxnet import import_mxnet
from mixprec.errors import MissingDependencyError

try:
    mx = import_mxnet()  # patches numpy's removed np.bool first, which a bare import of mxnet 1.9.1 needs
except MissingDependencyError as exc:
    pytest.skip(f"needs mxnet 1.9.1: {exc}", allow_module_level=True)

from mixprec import frameworks, mix_precision  # noqa: E402
from mixprec.cli import main as cli_main  # noqa: E402
from mixprec.config import MixedPrecisionConfig  # noqa: E402
from mixprec.ir import dump  # noqa: E402
from mixprec.profiling import Measurement, ProfileSession, TimingPolicy, TimingUnavailable  # noqa: E402
from mixprec.profiling.regions import extract  # noqa: E402
from mixprec.profiling.session import make_session  # noqa: E402
from mixprec.runtimes.mxnet import MxnetAdapter  # noqa: E402
from mixprec.runtimes.mxnet_timing import MXNetTimer, thread_setting  # noqa: E402
from tests import mxnet_models as mm  # noqa: E402
from tests.profiling.test_end_to_end import _checks, _consistent  # noqa: E402
from tests.test_mxnet_end_to_end import FRESH_PROCESS, _cosine  # noqa: E402

nn = mx.gluon.nn
QUICK = TimingPolicy(min_reps=5, max_reps=8, max_seconds=0.2)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MIXPREC_PROFILE_SECONDS", "0.3")
    return tmp_path / "cache"


def wide_mlp(d: int = 256, hidden: int = 1024, seed: int = 0):
    """Dense(d->hidden, relu) -> Dense(hidden->d) at batch 1: memory-bound GEMVs."""
    rng = np.random.RandomState(seed)
    mx.random.seed(seed)
    net = nn.HybridSequential(prefix="mlp_")
    with net.name_scope():
        net.add(nn.Dense(hidden, in_units=d, activation="relu"), nn.Dense(d, in_units=hidden))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net, mx.nd.array(rng.normal(size=(1, d)).astype(np.float32))


def _run(block, x) -> np.ndarray:
    with mx.autograd.predict_mode():
        return block(x).asnumpy()


def _timer(block, x):
    adapter = MxnetAdapter()
    config = MixedPrecisionConfig(example_inputs=(x,), objective="performance")
    loaded = adapter.load(block, config)
    return MXNetTimer(adapter, block, loaded, config), loaded


# ------------------------------------------------------------------ real runtime ---
@pytest.mark.mxnet_onednn_bf16
@pytest.mark.parametrize("name", ["wide_mlp", "cnn"])
def test_block_converted_for_performance_is_measured_and_consistent(name, cache_dir):
    block, x = wide_mlp() if name == "wide_mlp" else mm.cnn()
    config = MixedPrecisionConfig(example_inputs=(x,), objective="performance")
    first = mix_precision.fit(block, config=config)
    assert _checks(first)[0]["cosine"] > 0.99
    profile = _consistent(first)  # every region's fp32_ms, low_ms > 0 and its decision in the IR
    assert profile["framework"] == "mxnet" and profile["source"] == "measured on this machine"
    measured = [r for r in profile["regions"] if r["source"] == "measured"]
    assert measured and all(r["decision"] in ("bf16", "f32") and r["fp32_ms"] > 0 and r["low_ms"] > 0
                            for r in measured)
    ops = "FullyConnected" if name == "wide_mlp" else "Convolution"
    assert any(ops in r["label"] for r in profile["regions"])
    assert profile["latency"]["fp32_ms"] > 0 and profile["latency"]["measured_ms"] > 0
    assert profile["timer_calls"] >= 2  # the component (and its allow ops if it lost), plus the model
    entries = list(cache_dir.glob("timings/*/*.json"))
    assert entries and all("mxnet-1.9.1" in p.parent.name for p in entries)
    shutil.rmtree(cache_dir / "conversions", ignore_errors=True)  # the timing cache alone (FP32 returned: none)
    again = mix_precision.fit(block, config=config)
    assert again.report.profile["timer_calls"] == 0  # regions and the whole-model latency from the cache
    assert {r["source"] for r in again.report.profile["regions"]} == {"cache"}
    assert again.report.profile["latency"] == profile["latency"]
    assert _cosine(_run(again.model, x), _run(block, x)) > 0.99


def test_saved_performance_model_reloads_without_mixprec(tmp_path):
    block, x = wide_mlp()
    converted = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,), objective="performance"))
    prefix = tmp_path / "mlp_perf"
    converted.save(prefix)
    nodes = json.loads((tmp_path / "mlp_perf-symbol.json").read_text())["nodes"]
    low = any(n.meta.get("precision") == "bf16" for n in converted.ir.graph.iter_nodes())
    assert any(n["op"] == "amp_cast" for n in nodes) is low  # what was decided is what was written
    fresh = np.random.RandomState(7).normal(size=x.shape).astype(np.float32)
    np.save(tmp_path / "x.npy", fresh)
    script = tmp_path / "reload.py"
    script.write_text(FRESH_PROCESS)
    proc = subprocess.run([sys.executable, "-I", str(script), str(prefix), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = np.load(tmp_path / "out.npz")["imported"]
    reference = _run(block, mx.nd.array(fresh))
    assert _cosine(reloaded, reference) >= MixedPrecisionConfig().min_cosine
    np.testing.assert_allclose(reloaded, reference, atol=0.05 * float(np.abs(reference).max()))


@pytest.mark.mxnet_onednn_bf16
def test_cli_profile_then_convert_with_the_profile(tmp_path, capsys):
    block, x = wide_mlp(seed=1)
    symbol_file, _ = mm.export(block, x, str(tmp_path / "mlp"))
    machine_file = tmp_path / "machine.json"
    assert cli_main(["profile", symbol_file, "-o", str(machine_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    data = json.loads(machine_file.read_text())
    assert data["format"] == "mixprec-profile" and data["framework"] == "mxnet"
    assert data["framework_version"].startswith("1.9.1-") and thread_setting() in data["framework_version"]
    assert len(data["entries"]) == 3  # the component and each FullyConnected alone
    assert all(e["fp32_ms"] > 0 and e["low_ms"] > 0 for e in data["entries"].values())
    report = tmp_path / "report.json"
    assert cli_main(["convert", symbol_file, "-o", str(tmp_path / "out"), "--profile", str(machine_file),
                     "--report", str(report)]) == 0
    assert "nothing was timed on this machine" in capsys.readouterr().out
    converted = json.loads(report.read_text())
    assert converted["profile"]["timer_calls"] == 0 and converted["profile"]["source"] == "profile file"
    assert {r["source"] for r in converted["profile"]["regions"]} == {"profile"}
    reloaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "out-symbol.json"), ["data"],
                                            str(tmp_path / "out-0000.params"))
    assert _cosine(_run(reloaded, x), _run(block, x)) > 0.99


# ------------------------------------------------------------------ the timer itself ---
def test_version_key_holds_the_mxnet_version_and_thread_settings(monkeypatch, tmp_path):
    block, x = wide_mlp(d=8, hidden=16)
    timer, _ = _timer(block, x)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plain = timer.version()
    assert plain.startswith(f"{mx.__version__}-onednn-cpus")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MXNET_CPU_WORKER_NTHREADS", "3")
    assert timer.version() != plain and "OMP_NUM_THREADS=1" in timer.version()
    assert "MXNET_CPU_WORKER_NTHREADS=3" in timer.version()
    session = make_session(MxnetAdapter(), block, timer._loaded, MixedPrecisionConfig(example_inputs=(x,),
                                                                                       objective="performance"))
    assert isinstance(session.timer, MXNetTimer) and "OMP_NUM_THREADS_1" in session.cache.directory.name
    assert frameworks.frameworks()["mxnet"].timer == "mixprec.runtimes.mxnet_timing:MXNetTimer"


@pytest.mark.mxnet_onednn_bf16
def test_time_measures_both_twins_and_capture_returns_fp32_values():
    block, x = mm.cnn()
    timer, loaded = _timer(block, x)
    graph = loaded.graph
    conv = next(n for n in graph.iter_nodes() if n.op == "Convolution")
    region = extract(graph, [conv.name], "bf16", "mxnet", "single")
    assert "amp_cast" in dump(region.low) and "bf16" in dump(region.low)
    inputs = [np.asarray(timer.capture([name])[name]) for name in region.inputs]
    assert [a.shape for a in inputs] == [tuple(v.shape) for v in region.fp32.inputs]
    measured = timer.time(region.fp32, region.low, inputs, QUICK)
    assert measured.fp32_ms > 0 and measured.low_ms > 0 and measured.reps >= QUICK.min_reps
    output = graph.outputs[0].name
    captured = timer.capture([output, graph.inputs[0].name])
    np.testing.assert_allclose(captured[output], _run(block, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(captured[graph.inputs[0].name], x.asnumpy())
    with pytest.raises(TimingUnavailable, match="no values named"):
        timer.capture(["no_such_value"])


def _symbol_region(symbol, shape):
    """A loaded IR of ``symbol`` (one input ``data`` of ``shape``, random parameters) and
    its timer."""
    rng = np.random.RandomState(0)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=shape)
    args = {n: mx.nd.array(rng.normal(size=s).astype(np.float32))
            for n, s in zip(symbol.list_arguments(), arg_shapes) if n != "data"}
    aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, size=s).astype(np.float32))
           for n, s in zip(symbol.list_auxiliary_states(), aux_shapes)}
    x = mx.nd.array(rng.normal(size=shape).astype(np.float32))
    adapter = MxnetAdapter()
    config = MixedPrecisionConfig(example_inputs=(x,), objective="performance")
    loaded = adapter.load((symbol, args, aux), config)
    return MXNetTimer(adapter, (symbol, args, aux), loaded, config), loaded


@pytest.mark.mxnet_onednn_bf16
@pytest.mark.parametrize("make, op, why", [
    (lambda d: mx.sym.transpose(mx.sym.FullyConnected(d, num_hidden=8, name="fc"), name="t"), "transpose",
     "has no bf16 kernel for transpose"),  # measured to corrupt the heap: must never run
    (lambda d: mx.sym.dot(mx.sym.FullyConnected(d, num_hidden=8, name="fc"), mx.sym.var("w", shape=(8, 4)),
                          name="t"), "dot", "has no bf16 kernel for dot"),  # raises "Unknown type enum 12"
    (lambda d: mx.sym.arccos(mx.sym.FullyConnected(d, num_hidden=8, name="fc"), name="t"), "arccos",
     "no bf16 kernel for arccos was verified"),  # never measured: not run either
])
def test_a_low_twin_without_a_verified_kernel_is_not_run(make, op, why):
    timer, loaded = _symbol_region(make(mx.sym.var("data")), (2, 8))
    graph = loaded.graph
    names = [n.name for n in graph.iter_nodes()]
    assert op in {n.op for n in graph.iter_nodes()}
    region = extract(graph, names, "bf16", "mxnet", "component")
    fp32 = [np.random.default_rng(0).standard_normal(v.shape).astype(np.float32) for v in region.fp32.inputs]
    with pytest.raises(TimingUnavailable, match=why):
        timer.time(region.fp32, region.low, fp32, QUICK)
    session = ProfileSession("mxnet", "bf16", "mxnet", timer=timer, timing=QUICK)
    pins = session.decide(graph, names, {n.name for n in graph.iter_nodes() if n.op == "FullyConnected"})
    component = session.records[0]
    assert component.source == "unknown" and why in component.why and component.decision == "f32"
    assert set(pins) >= {n.name for n in graph.iter_nodes() if n.op == op}  # stays FP32


@pytest.mark.mxnet_onednn_bf16
def test_a_region_mxnet_rejects_is_timing_unavailable():
    timer, loaded = _symbol_region(mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=8, name="fc"), (2, 8))
    region = extract(loaded.graph, ["fc"], "bf16", "mxnet", "single")
    next(region.fp32.iter_nodes()).attrs["num_hidden"] = "5"  # the weight holds 8 rows: MXNet's shape check fails
    inputs = [np.ones((2, 8), np.float32)]
    with pytest.raises(TimingUnavailable, match="MXNet cannot run the region"):
        timer.time(region.fp32, region.low, inputs, QUICK)


# ------------------------------------------------------------- fake timer decision ---
class FakeConvTimer(MXNetTimer):
    """The real MXNet timer with made-up times: a Convolution alone is 2x faster low, any
    other region (the whole component included) 2x slower; the whole converted model is
    reported faster, so the guard keeps the conversion."""
    calls: list[list[str]] = []

    def time(self, fp32, low, inputs, policy):
        ops = [n.op for n in fp32.iter_nodes()]
        FakeConvTimer.calls.append(ops)
        return Measurement(1.0, 0.5 if ops == ["Convolution"] else 2.0, 7)

    def time_models(self, original, converted, policy):
        return Measurement(1.0, 0.9, 7)


@pytest.mark.mxnet_onednn_bf16
def test_fake_timer_keeps_exactly_the_winning_convolutions_low(monkeypatch):
    record = frameworks.frameworks()["mxnet"]
    monkeypatch.setitem(frameworks.frameworks(), "mxnet",
                        dataclasses.replace(record, timer=f"{__name__}:FakeConvTimer"))
    FakeConvTimer.calls = []
    block, x = mm.cnn()
    converted = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,), objective="performance"))
    assert FakeConvTimer.calls[0][0] == "Convolution" and len(FakeConvTimer.calls[0]) > 1  # the component first
    assert sorted(c for c in FakeConvTimer.calls[1:]) == [["Convolution"], ["Convolution"], ["FullyConnected"]]
    precisions = {n.op: set() for n in converted.ir.graph.iter_nodes()}
    for node in converted.ir.graph.iter_nodes():
        precisions[node.op].add(node.meta.get("precision"))
    assert precisions["Convolution"] == {"bf16"}
    assert precisions["FullyConnected"] == {"f32"} and precisions["BatchNorm"] == {"f32"}
    text = dump(converted.ir.graph)
    assert "pin=profile" in text
    regions = converted.report.profile["regions"]
    assert [r["decision"] for r in regions if r["kind"] == "single" and "Convolution" in r["label"]] == ["bf16"] * 2
    assert converted.report.profile.get("returned") is None
    assert _cosine(_run(converted.model, x), _run(block, x)) > 0.99


@pytest.mark.mxnet_onednn_bf16
def test_regions_of_a_symbol_with_guessed_shapes_are_timed_at_the_sample_shapes(tmp_path):
    """The regression: a -symbol.json without shapes gets its input shape guessed from the
    weights (1x3x32x32 in the IR) while the sample inputs come from the ladder
    (1x3x224x224); the regions were synthesized and timed at 32x32. Now every region
    input is captured from the FP32 model run on the sample inputs."""
    block, x = mm.cnn()
    symbol_file, _ = mm.export(block, x, str(tmp_path / "cnn"))
    loaded = MxnetAdapter().load(symbol_file, MixedPrecisionConfig())
    assert [tuple(v.shape) for v in loaded.graph.inputs] == [(1, 3, 32, 32)]  # the guess
    machine_file = tmp_path / "machine.json"
    assert cli_main(["profile", symbol_file, "-o", str(machine_file)]) == 0
    captured = json.loads(machine_file.read_text())["model"]["shapes"]["values"]
    assert captured["data"] == [1, 3, 224, 224], captured
