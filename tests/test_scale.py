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
from mixprec.ir.dtypes import DType  # noqa: E402
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


# ------------------------------------------------- per-node work that is cached ---
def _bf16_chain(nodes: int):
    """An ONNX IR model of ``nodes`` bf16 Adds and Relus (two signatures), opset 17."""
    from mixprec.ir.graph import Model

    b = GraphBuilder(framework="onnx")
    x = b.input("x", "bf16", (1, HIDDEN))
    for i in range(nodes // 2):
        x = b.op("Relu", b.op("Add", x, x, out=f"a{i}"), out=f"r{i}")
    b.output(x)
    return Model(b.graph, {"opset_import": {"": 17}})


def test_opset_legality_asks_each_schema_once_per_distinct_signature(monkeypatch):
    from mixprec.backends import onnx as backend

    calls = []
    real = backend._accepts

    def counting(schema, inputs, outputs):
        calls.append((schema.name, schema.since_version))
        return real(schema, inputs, outputs)
    monkeypatch.setattr(backend, "_accepts", counting)
    counts = []
    for nodes in (20, 2000):
        backend._legality.cache_clear()
        calls.clear()
        proto, notes = backend.emit_legal(_bf16_chain(nodes))
        assert len(proto.graph.node) == nodes
        counts.append(len(calls))
    # two signatures (Add and Relu on bf16): the same schema questions at 20 and at 2000 nodes
    assert counts[0] == counts[1] and 0 < counts[1] <= 2 * 8, counts
    assert len(set(calls)) == len(calls), "a schema was asked twice about one signature"


def test_opset_legality_answers_follow_the_node_types():
    from mixprec.backends import onnx as backend

    model = _bf16_chain(4)
    # bf16 Add and Relu are legal from opset 13 (their schemas of opsets 7 and 6 reject bf16)
    needed, reason = backend.required_opset(model.graph, 12)
    assert needed == 13 and "on bf16 needs opset 13" in reason
    assert backend.illegal_nodes(model.graph, 12) == model.graph.nodes
    assert backend._lowest_opset_for(model.graph.nodes[0], 12) == 13
    model.graph.nodes[1].outputs[0].dtype = DType.FLOAT32  # a Relu writing f32 from bf16: no schema binds it
    assert backend._lowest_opset_for(model.graph.nodes[1], 12) is None
    # the answers follow the changed types (the Add reading that f32 and writing bf16 is illegal too)
    assert backend.required_opset(model.graph, 17) == (17, "")
    assert backend.illegal_nodes(model.graph, 17) == model.graph.nodes[1:3]


def test_all_graphs_reads_only_the_nodes_that_hold_subgraphs(monkeypatch):
    from mixprec.ir import parse
    from mixprec.ir.verify import verify
    from mixprec.errors import IRError
    from mixprec.ir.graph import Node

    from tests.ir.test_clone import NESTED
    graph = parse(NESTED)
    visited = []
    iter_nodes = Graph.iter_nodes

    def counted(self):
        for node in iter_nodes(self):
            visited.append(node)
            yield node
    monkeypatch.setattr(Graph, "iter_nodes", counted)
    names = [g.name for g in graph.all_graphs()]
    assert names == ["main", "else_b", "then_b"]
    visited.clear()
    for _ in range(5):
        assert [g.name for g in graph.all_graphs()] == names
    assert visited == [], "all_graphs walked node lists again"
    monkeypatch.undo()
    if_node = graph.nodes[1]
    graph.replace_output(if_node.outputs[0], graph.nodes[0].outputs[0])
    graph.remove(if_node)
    assert [g.name for g in graph.all_graphs()] == ["main"]
    # a nested graph set after its node was added is refused by verify, not silently missed
    late = Node("Identity", [graph.nodes[0].outputs[0]], [Value("late", graph.nodes[0].outputs[0].dtype)])
    graph.append(late)
    late.attrs["body"] = Graph("body", "onnx", graph)
    with pytest.raises(IRError, match="set after the node was added"):
        verify(graph)


def test_cast_specs_are_looked_up_once_per_registered_framework(monkeypatch):
    import mixprec.frameworks as registry
    from mixprec.ir import cast

    cast._SPECS.pop("onnx", None)
    cast.forget_cast_ops()
    looked = []
    real = registry.frameworks

    def counting():
        looked.append(1)
        return real()
    monkeypatch.setattr(registry, "frameworks", counting)
    graph = _bf16_chain(200).graph
    assert not any(cast.is_cast(n) for n in graph.iter_nodes())
    assert len(looked) == 1
    assert cast.cast_spec("no-such-framework") is cast.GENERIC_CAST and "no-such-framework" not in cast._SPECS


def test_the_report_json_is_the_report_dict_with_one_line_per_node():
    import json

    from mixprec.report import Report

    report = Report.from_graph(_bf16_chain(6).graph, "bf16")
    report.notes.append('a "quoted" note')
    text = report.to_json()
    assert json.loads(text) == report.to_dict()
    node_lines = [line for line in text.splitlines() if line.startswith('    {"category": ')]
    assert len(node_lines) == 6
    data = report.to_dict()
    data["nodes"][0]["name"] = "changed"
    assert report.nodes[0].name != "changed"  # to_dict is a copy
    assert json.loads(Report("onnx", "bf16").to_json())["nodes"] == []


def test_the_streamed_save_shows_a_weights_bar(tmp_path):
    from mixprec.backends import onnx as backend

    weights = [numpy_helper.from_array(np.full((64, 64), i, np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("Add", ["x", f"w{i}"], [f"y{i}"]) for i in range(3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [64, 64]) for i in range(3)],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    stream = io.StringIO()
    try:
        assert progress.configure(True, stream=stream)
        backend.save(model, tmp_path / "m.onnx", external_data=True)
    finally:
        progress.configure(False)
    text = stream.getvalue()
    assert "weights" in text and "3/3 tensors" in text and "48.0k" in text, text
    assert (tmp_path / "m.onnx.data").stat().st_size >= 3 * 64 * 64 * 4


def test_a_file_without_external_data_is_listed_without_parsing_it(tmp_path, monkeypatch):
    """The input-file listing (output-path safety) parses the model only when its bytes
    name a ``location``: a 100k-node file without external data costs no second parse."""
    plain, external = tmp_path / "plain.onnx", tmp_path / "ext.onnx"
    onnx.save(layered_model(2), str(plain))
    model = layered_model(2)
    onnx.save(model, str(external), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    parsed: list[str] = []
    read_file = runtime.frontend.read_file
    monkeypatch.setattr(runtime.frontend, "read_file", lambda path, *a: parsed.append(path.name) or read_file(path, *a))
    runtime._external_locations.cache_clear()
    assert runtime._external_files(plain) == []
    assert parsed == []
    assert runtime._external_files(external) == [tmp_path / "ext.data"]
    assert parsed == ["ext.onnx"]


def test_a_model_already_in_bf16_is_refused_and_one_with_float32_left_is_not():
    from mixprec.errors import UnsupportedModelError
    from mixprec.mix_precision import _refuse_converted

    for dtype, refused in (("bf16", True), ("f32", False), ("i64", False)):
        b = GraphBuilder(framework="generic")
        b.output(b.op("Relu", b.input("x", dtype, (2,)), out="y"))
        if refused:
            with pytest.raises(UnsupportedModelError, match="already in bf16"):
                _refuse_converted(b.graph, "bf16")
        else:
            _refuse_converted(b.graph, "bf16")
