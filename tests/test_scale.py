"""Scale (issue 12, whole-process time): the output check of a large graph runs in
onnxruntime, in segments and with graph optimizations off, never in the reference
evaluator; onnx.checker's full check runs once per convert; the pass pipeline visits a
node a bounded number of times (linear work); progress bars appear when asked for and
only then. Nothing here is timed (bench/scale.py measures)."""
from __future__ import annotations

import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the scale tests need onnx")
pytest.importorskip("onnxruntime", reason="the scale tests need onnxruntime")
pytest.importorskip("ml_dtypes", reason="bf16 arrays need ml_dtypes")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import mixprec.runtimes.onnx as runtime  # noqa: E402
from mixprec import MixedPrecisionConfig, mix_precision, progress  # noqa: E402
from mixprec.ir import GraphBuilder  # noqa: E402
from mixprec.ir.graph import Graph, Value  # noqa: E402
from mixprec.passes import DEFAULT_PIPELINE, build_pipeline  # noqa: E402
from mixprec.passes.pipeline import split_items  # noqa: E402
from mixprec.runtimes import onnx_segments  # noqa: E402

HIDDEN, SEQ = 8, 4


def layered_model(layers: int, seed: int = 0) -> "onnx.ModelProto":
    """A transformer-like chain (13 nodes a layer): MatMul/Add, a head split and merge
    (Reshape/Transpose), Softmax, an MLP with Relu, a residual Add and a
    LayerNormalization; small weights, opset 17."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([1, SEQ, 2, HIDDEN // 2], np.int64), "heads"),
             numpy_helper.from_array(np.array([1, SEQ, HIDDEN], np.int64), "flat"),
             numpy_helper.from_array(np.ones(HIDDEN, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "shift")]
    nodes, x = [], "x"

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    for i in range(layers):
        p = f"l{i}."
        for k in ("w1", "w2"):
            inits.append(numpy_helper.from_array(
                (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32), p + k))
        inits.append(numpy_helper.from_array((rng.standard_normal(HIDDEN) * 0.1).astype(np.float32), p + "b"))
        h = node("MatMul", [x, p + "w1"], p + "mm1")
        h = node("Add", [h, p + "b"], p + "b1")
        h = node("Reshape", [h, "heads"], p + "split")
        h = node("Transpose", [h], p + "t1", perm=[0, 2, 1, 3])
        h = node("Softmax", [h], p + "probs", axis=-1)
        h = node("Transpose", [h], p + "t2", perm=[0, 2, 1, 3])
        h = node("Reshape", [h, "flat"], p + "merge")
        h = node("Relu", [h], p + "act")
        h = node("MatMul", [h, p + "w2"], p + "mm2")
        h = node("Add", [h, p + "b"], p + "b2")
        h = node("Add", [h, x], p + "res")
        h = node("LayerNormalization", [h, "scale", "shift"], p + "ln", axis=-1)
        x = node("Identity", [h], p + "out")
    graph = helper.make_graph(nodes, "layered", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, SEQ, HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, SEQ, HIDDEN)).astype(np.float32)}


@pytest.fixture
def small_segments(monkeypatch):
    """Graphs of more than 40 nodes count as large (segmented, optimizations off)."""
    monkeypatch.setattr(onnx_segments, "SEGMENT_NODES", 40)
    for key in runtime.STATS:
        monkeypatch.setitem(runtime.STATS, key, 0)


# --------------------------------------------------------------- the output check ---
def test_a_large_graphs_check_runs_in_onnxruntime_segments_not_the_reference_evaluator(small_segments):
    result = mix_precision.fit(layered_model(20), config=MixedPrecisionConfig())
    assert result.report.checks and result.report.failed_check is None, result.report.notes
    assert min(c.cosine for c in result.report.checks) > 0.99
    assert runtime.STATS["reference_runs"] == 0
    assert runtime.STATS["segmented_runs"] == 2  # the FP32 run and the emulated run
    assert runtime.STATS["sessions"] >= 2 * (260 // 40)
    assert any("exact float32 emulation" in n for n in result.report.notes)


def test_a_segmented_run_computes_exactly_the_whole_runs_values(small_segments):
    model = layered_model(12)
    whole = runtime._run_whole(model, _feeds(), "CPUExecutionProvider", optimize=False)
    segmented = runtime.run_onnxruntime(model, _feeds())
    assert runtime.STATS["segmented_runs"] == 1 and runtime.STATS["sessions"] == 1 + 4
    np.testing.assert_array_equal(segmented[0], whole[0])


def test_the_emulation_run_in_segments_equals_it_run_whole(small_segments):
    """A cut between an emulation's Cast(to=bf16) and its Cast back to float32 would make
    onnxruntime return a bf16 value numpy cannot hold: cuts move past such pairs."""
    converted = mix_precision.fit(layered_model(8), config=MixedPrecisionConfig(check_outputs=False)).model
    emulated = runtime.emulate_in_float(converted)
    segments = onnx_segments.plan(emulated.graph)
    assert segments is not None and len(segments) >= 3
    typed = {vi.name for vi in emulated.graph.value_info} | {vi.name for vi in emulated.graph.output}
    assert all(name in typed for s in segments for name in s.outputs), "a cut crosses an untyped value"
    (segmented,) = runtime.run_emulated(converted, _feeds())
    (whole,) = runtime._run_whole(emulated, _feeds(), "CPUExecutionProvider", optimize=False)
    np.testing.assert_array_equal(segmented, whole)


def test_a_subgraph_reading_an_outer_value_across_a_cut_gets_it_fed(small_segments):
    """An If branch reads ``v``, made 50 nodes earlier, from the outer scope: the If's
    segment must take ``v`` as an input although no node input names it."""
    nodes = [helper.make_node("Relu", ["x"], ["v"])]
    prev = "v"
    for i in range(50):
        nodes.append(helper.make_node("Neg", [prev], [f"n{i}"]))
        prev = f"n{i}"
    branch = lambda op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["v", prev], ["r"])], op, [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])])
    nodes.append(helper.make_node("ReduceSum", [prev], ["s"], keepdims=0))
    nodes.append(helper.make_node("Greater", ["s", "zero"], ["cond"]))
    nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=branch("Add"), else_branch=branch("Sub")))
    graph = helper.make_graph(nodes, "outer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    segments = onnx_segments.plan(model.graph)
    assert segments is not None and "v" in segments[-1].inputs
    feeds = {"x": np.array([1.5, -2.0], np.float32)}
    np.testing.assert_array_equal(runtime.run_onnxruntime(model, feeds)[0],
                                  runtime._run_whole(model, feeds, "CPUExecutionProvider", optimize=False)[0])


def test_a_large_fp32_model_onnxruntime_cannot_run_skips_the_check_instead_of_the_reference_evaluator(
        monkeypatch, small_segments):
    from mixprec.errors import ConversionError

    monkeypatch.setattr(runtime, "REFERENCE_MAX_NODES", 100)
    real = runtime.run_onnxruntime

    def fp32_fails(proto, feeds, *args):
        if not runtime.low_precision_dtypes(proto):
            raise ConversionError("onnxruntime cannot load the model: boom")
        return real(proto, feeds, *args)
    monkeypatch.setattr(runtime, "run_onnxruntime", fp32_fails)
    result = mix_precision.fit(layered_model(20), config=MixedPrecisionConfig())
    assert result.report.failed_check is None and not result.report.checks
    assert runtime.STATS["reference_runs"] == 0
    assert any("output check skipped" in n and "reference evaluator would take minutes" in n
               for n in result.report.notes), result.report.notes


def test_onnx_checker_full_check_runs_once_per_convert(monkeypatch):
    calls: list[bool] = []
    real = onnx.checker.check_model

    def counting(model, full_check=False, *args, **kwargs):
        calls.append(bool(full_check))
        return real(model, full_check, *args, **kwargs)
    monkeypatch.setattr(onnx.checker, "check_model", counting)
    result = mix_precision.fit(layered_model(3), config=MixedPrecisionConfig())
    assert result.report.checks
    assert calls.count(True) == 1, calls


# ------------------------------------------------------------------ pass pipeline ---
def _ir_layers(layers: int) -> Graph:
    b = GraphBuilder(framework="generic")
    x = b.input("x", "f32", (1, SEQ, HIDDEN))
    shape = b.const("shape", np.array([1, SEQ, HIDDEN], np.int64))
    for i in range(layers):
        w = b.const(f"w{i}", dtype="f32", shape=(HIDDEN, HIDDEN))
        h = b.op("MatMul", x, w, out=f"mm{i}")
        h = b.op("Add", h, x, out=f"add{i}")
        h = b.op("Reshape", h, shape, out=f"r{i}", shape=(1, SEQ, HIDDEN))
        h = b.op("Softmax", h, attrs={"axis": -1}, out=f"sm{i}")
        x = b.op("Relu", h, out=f"relu{i}")
    b.output(x)
    return b.graph


def _visits(layers: int, monkeypatch) -> tuple[int, int]:
    """(nodes yielded by Graph.iter_nodes, Value.uses calls) over the default pipeline."""
    counts = [0, 0]
    iter_nodes, uses = Graph.iter_nodes, Value.uses

    def counted_iter(self):
        for node in iter_nodes(self):
            counts[0] += 1
            yield node

    def counted_uses(self):
        counts[1] += 1
        return uses(self)
    graph = _ir_layers(layers)
    with monkeypatch.context() as m:
        m.setattr(Graph, "iter_nodes", counted_iter)
        m.setattr(Value, "uses", counted_uses)
        build_pipeline(DEFAULT_PIPELINE).run(graph)
    return counts[0], counts[1]


def test_the_default_pipeline_visits_each_node_a_bounded_number_of_times(monkeypatch):
    small_nodes, small_uses = _visits(40, monkeypatch)
    big_nodes, big_uses = _visits(400, monkeypatch)
    assert big_nodes <= 11 * small_nodes, (small_nodes, big_nodes)  # 10x the nodes: linear work is ~10x
    assert big_uses <= 11 * small_uses, (small_uses, big_uses)


# -------------------------------------------------------------------- progress ---
def test_progress_bars_appear_with_progress_and_not_without(tmp_path, capsys):
    from mixprec.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(layered_model(3), str(path))
    assert main(["convert", str(path), "-o", str(tmp_path / "a.onnx"), "--progress"]) == 0
    err = capsys.readouterr().err
    for stage in ("load", "passes", "emit", "check: FP32 model", "check: converted model", "write"):
        assert f"{stage}:" in err, (stage, err)
    passes = len(split_items(DEFAULT_PIPELINE))
    assert f"{passes}/{passes}" in err and "keep-io-types" in err  # the pass bar counts the default pipeline
    assert main(["convert", str(path), "-o", str(tmp_path / "b.onnx")]) == 0  # stderr is no terminal here
    assert "passes:" not in capsys.readouterr().err
    assert main(["-q", "convert", str(path), "-o", str(tmp_path / "c.onnx"), "--progress"]) == 0
    assert "passes:" not in capsys.readouterr().err
    assert not progress.enabled()  # the command's bars end with it


def test_the_bytes_bar_counts_bytes_and_tensors():
    stream = io.StringIO()
    try:
        assert progress.configure(True, stream=stream)
        with progress.bytes("weights", total_bytes=3 * 1024 * 1024, tensors=3) as bar:
            for _ in range(3):
                bar.update(1024 * 1024)
    finally:
        progress.configure(False)
    text = stream.getvalue()
    assert "weights" in text and "3/3 tensors" in text and "3.00M" in text, text
    with progress.bytes("weights", total_bytes=10, tensors=1) as bar:  # off: a no-op that still counts
        bar.update(10)
    assert bar.count == 1
