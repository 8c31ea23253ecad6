"""ONNX backend: load -> emit identity, opset upgrades for bf16, validate, save, and the
onnxruntime helpers (kernel probes, runners, sample inputs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX backend needs the onnx package")
ort = pytest.importorskip("onnxruntime", reason="the ONNX backend tests run models in onnxruntime")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bf16 data needs ml_dtypes")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnx_models  # noqa: E402

import mixprec.backends.onnx as backend  # noqa: E402
import mixprec.runtimes.onnx_probes as runtime  # noqa: E402
from mixprec.backends.onnx import emit, required_opset, save, validate  # noqa: E402
from mixprec.runtimes.onnx import candidate_feeds, run_onnxruntime, run_reference  # noqa: E402
from mixprec.runtimes.onnx_probes import missing_kernels  # noqa: E402
from mixprec.errors import ConfigError, ConversionError  # noqa: E402
from mixprec.frontends.onnx import load  # noqa: E402
from mixprec.ir import DType, Graph, GraphBuilder, Model, verify  # noqa: E402
from mixprec.ir.cast import make_cast  # noqa: E402


def _same_outputs(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want.dtype == got.dtype and want.shape == got.shape
        if want.dtype.kind in "fc":
            assert np.array_equal(want, got, equal_nan=True), np.abs(want - got).max()
        else:
            assert np.array_equal(want, got)


def _structure(graph: "onnx.GraphProto") -> list:
    """Nodes (Constant nodes first, as the backend writes them) with their names,
    operands and attributes, recursively; value_info and tensor names are left out."""
    def attr(a):
        if a.type == onnx.AttributeProto.GRAPH:
            return (a.name, _structure(a.g))
        if a.type == onnx.AttributeProto.GRAPHS:
            return (a.name, [_structure(g) for g in a.graphs])
        if a.type == onnx.AttributeProto.TENSOR:
            data = onnx.numpy_helper.to_array(a.t)
            return (a.name, a.t.data_type, data.tolist() if data.dtype == object else data.tobytes())
        copy = onnx.AttributeProto()
        copy.CopyFrom(a)
        return (a.name, copy.SerializeToString(deterministic=True))
    nodes = sorted(graph.node, key=lambda n: n.op_type != "Constant")
    return [(n.op_type, n.domain, n.name, list(n.input), list(n.output), [attr(a) for a in n.attribute])
            for n in nodes]


@pytest.fixture(scope="module", params=sorted(onnx_models.MODELS))
def round_trip(request):
    name = request.param
    proto = onnx_models.MODELS[name]()
    return name, proto, emit(load(proto))


# ---------------------------------------------------------------- identity ---
def test_emitted_model_passes_full_check(round_trip):
    _, _, emitted = round_trip
    validate(emitted)
    onnx.checker.check_model(emitted, full_check=True)


def test_onnxruntime_outputs_are_bit_identical(round_trip):
    name, proto, emitted = round_trip
    feeds = onnx_models.feeds(name, proto)
    _same_outputs(run_onnxruntime(proto, feeds), run_onnxruntime(emitted, feeds))


def test_structure_and_model_fields_survive(round_trip):
    _, proto, emitted = round_trip
    assert _structure(emitted.graph) == _structure(proto.graph)
    assert [(o.domain, o.version) for o in emitted.opset_import] == [(o.domain, o.version) for o in proto.opset_import]
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(emitted, field) == getattr(proto, field), field
    assert list(emitted.metadata_props) == list(proto.metadata_props)
    assert [vi.name for vi in emitted.graph.input] == [vi.name for vi in proto.graph.input]
    assert [vi.name for vi in emitted.graph.output] == [vi.name for vi in proto.graph.output]
    assert sorted(t.name for t in emitted.graph.initializer) == sorted(t.name for t in proto.graph.initializer)
    for want in proto.graph.initializer:
        got = next(t for t in emitted.graph.initializer if t.name == want.name)
        assert got.data_type == want.data_type and list(got.dims) == list(want.dims)
        assert onnx.numpy_helper.to_array(got).tobytes() == onnx.numpy_helper.to_array(want).tobytes()


def test_intermediate_values_are_typed(round_trip):
    _, _, emitted = round_trip
    typed = {vi.name for vi in emitted.graph.value_info} | {vi.name for vi in emitted.graph.output}
    for node in emitted.graph.node:
        for out in node.output:
            if out:
                assert out in typed, out


def test_control_flow_details_survive():
    proto = onnx_models.control_flow()
    emitted = emit(load(proto))
    assert [f.SerializeToString() for f in emitted.functions] == [f.SerializeToString() for f in proto.functions]
    assert emitted.graph.doc_string == "graph with control flow"
    assert emitted.graph.input[1].name == "bias"  # the initializer-backed input, in its place
    lstm = next(n for n in emitted.graph.node if n.op_type == "LSTM")
    assert list(lstm.output) == ["", "lstm_h"]
    casts = [n for n in emitted.graph.node if n.op_type == "Cast"]
    assert [c.name for c in casts] == ["", "cast_back"]
    assert [c.attribute[0].i for c in casts] == [onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT]
    assert casts[1].doc_string == "cast back to float"
    sparse = next(n for n in emitted.graph.node if n.name == "sparse_const")
    assert sparse.attribute[0].type == onnx.AttributeProto.SPARSE_TENSOR
    loop = next(n for n in emitted.graph.node if n.op_type == "Loop")
    assert list(loop.input) == ["trip", "", "x"]


def test_shadowed_names_are_restored():
    proto = onnx_models.shadowing()
    emitted = emit(load(proto))
    then_branch = emitted.graph.node[0].attribute[1].g
    assert then_branch.name == "then_branch" and list(then_branch.output[0].name) == list("t")
    assert emitted.graph.output[0].name == "t"


# ------------------------------------------------------------------ bf16 ---
def _retype(graph: Graph, ops: set[str], dtype: DType = DType.BFLOAT16) -> int:
    """Run every ``ops`` node of ``graph`` in ``dtype``: cast its float inputs in, its
    outputs back to f32 for their readers. Returns how many nodes changed."""
    changed = 0
    for node in graph.nodes:
        if node.op not in ops:
            continue
        changed += 1
        for index, value in enumerate(node.inputs):
            if value is not None and value.dtype == DType.FLOAT32:
                cast = make_cast(graph, value, dtype)
                graph.insert_before(node, cast)
                node.set_input(index, cast.outputs[0])
        for out in node.outputs:
            if out.dtype != DType.FLOAT32:
                continue
            readers = out.uses()
            out.dtype = dtype
            back = make_cast(graph, out, DType.FLOAT32)
            graph.insert_after(node, back)
            for reader, index in readers:
                reader.set_input(index, back.outputs[0])
            if out in graph.outputs:
                graph.replace_output(out, back.outputs[0])
    return changed


@pytest.fixture(scope="module")
def bf16_cnn():
    proto = onnx_models.torch_cnn()
    model = load(proto)
    assert _retype(model.graph, {"Conv", "MaxPool", "Relu"}) == 5
    verify(model.graph)
    return proto, model


def test_bf16_conv_raises_the_opset(bf16_cnn):
    proto, model = bf16_cnn
    needed, reason = required_opset(model.graph, 17)
    assert needed == 22 and "bf16" in reason
    emitted = emit(model)
    assert {o.domain: o.version for o in emitted.opset_import}[""] == 22
    assert emitted.ir_version >= 10
    validate(emitted)
    conv = next(n for n in emitted.graph.node if n.op_type == "Conv")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in emitted.graph.value_info}
    assert types[conv.output[0]] == onnx.TensorProto.BFLOAT16
    weights = {t.name: t for t in emitted.graph.initializer}
    assert weights[conv.input[1].rsplit(".", 1)[0]].data_type == onnx.TensorProto.FLOAT


def test_bf16_model_runs_in_the_reference_evaluator(bf16_cnn):
    proto, model = bf16_cnn
    emitted = emit(model)
    feeds = onnx_models.feeds("torch_cnn", proto)
    (want,) = run_onnxruntime(proto, feeds)
    (got,) = run_reference(emitted, feeds)
    assert got.dtype == np.float32 and got.shape == want.shape
    error = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < error < 0.05  # bf16 keeps ~3 significant digits, and it is not fp32 any more


def test_bf16_constants_are_stored_as_bfloat16():
    model = load(onnx_models.matmul_model())
    weight = model.graph.constants["w"]
    weight.data = weight.data.astype(ml_dtypes.bfloat16)
    weight.dtype = DType.BFLOAT16
    matmul = next(n for n in model.graph.iter_nodes() if n.op == "MatMul")
    cast = make_cast(model.graph, matmul.inputs[0], DType.BFLOAT16)
    model.graph.insert_before(matmul, cast)
    matmul.set_input(0, cast.outputs[0])
    matmul.outputs[0].dtype = DType.BFLOAT16
    add = next(n for n in model.graph.iter_nodes() if n.op == "Add")
    back = make_cast(model.graph, matmul.outputs[0], DType.FLOAT32)
    model.graph.insert_after(matmul, back)
    add.set_input(0, back.outputs[0])
    verify(model.graph)
    emitted = emit(model)
    assert {o.domain: o.version for o in emitted.opset_import}[""] == 17  # bf16 MatMul is fine at 13+
    validate(emitted)
    tensor = next(t for t in emitted.graph.initializer if t.name == "w")
    assert tensor.data_type == onnx.TensorProto.BFLOAT16
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), weight.data)
    feeds = onnx_models.generated_feeds(emitted, batch=3)
    (out,) = run_reference(emitted, feeds)
    assert out.shape == (3, 8)


def test_forced_opset_below_what_bf16_needs(bf16_cnn):
    _, model = bf16_cnn
    with pytest.raises(ConversionError, match="opset >= 22"):
        emit(model, opset=21)


def test_forced_opset_converts_control_flow_and_sparse():
    proto = onnx_models.control_flow()
    emitted = emit(load(proto), opset=22)
    validate(emitted)
    assert {o.domain: o.version for o in emitted.opset_import} == {"": 22, "local.fn": 1}
    assert len(emitted.functions) == 1 and emitted.producer_name == "mixprec-tests"
    sparse = next(n for n in emitted.graph.node if n.name == "sparse_const")
    assert sparse.attribute[0].type == onnx.AttributeProto.SPARSE_TENSOR
    feeds = onnx_models.feeds("control_flow", proto)
    _same_outputs(run_onnxruntime(proto, feeds), run_onnxruntime(emitted, feeds))


def test_opset_conversion_of_a_large_model_keeps_data(monkeypatch):
    """Large models go through the converter without their tensor data."""
    proto = onnx_models.torch_cnn()
    model = load(proto)
    monkeypatch.setattr(backend, "LARGE_MODEL_BYTES", 1)
    emitted = emit(model, opset=22)
    monkeypatch.undo()
    validate(emitted)
    feeds = onnx_models.feeds("torch_cnn", proto)
    _same_outputs(run_onnxruntime(proto, feeds), run_onnxruntime(emitted, feeds))


def test_hand_built_graph_without_meta():
    b = GraphBuilder("tiny", framework="onnx")
    x = b.input("x", DType.BFLOAT16, (1, 2, 4, 4))
    w = b.const("w", np.ones((2, 2, 1, 1), np.float32), dtype=DType.BFLOAT16)
    b.output(b.op("Conv", x, w, attrs={"kernel_shape": [1, 1], "group": 1}, out="y"))
    emitted = emit(Model(b.graph))
    assert {o.domain: o.version for o in emitted.opset_import} == {"": backend.DEFAULT_OPSET}
    validate(emitted)
    feeds = {"x": np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4).astype(ml_dtypes.bfloat16)}
    (out,) = run_reference(emitted, feeds)
    assert out.dtype == ml_dtypes.bfloat16 and out.shape == (1, 2, 4, 4)


def test_empty_list_attributes_keep_their_type():
    node = onnx.helper.make_node("Op", ["x"], ["y"], domain="test.ops")
    for name, kind in (("floats", "FLOATS"), ("ints", "INTS"), ("strings", "STRINGS")):
        node.attribute.append(onnx.helper.make_attribute(name, [], attr_type=getattr(onnx.AttributeProto, kind)))
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("test.ops", 1)])
    model = load(proto)
    assert model.graph.nodes[0].attrs == {"floats": [], "ints": [], "strings": []}
    emitted = emit(model)
    assert [(a.name, a.type) for a in emitted.graph.node[0].attribute] == \
        [(a.name, a.type) for a in proto.graph.node[0].attribute]


def test_emit_rejects_other_frameworks():
    with pytest.raises(ConfigError, match="torch"):
        emit(Model(Graph("g", framework="torch")))


def test_constant_without_data_is_an_error():
    b = GraphBuilder("g", framework="onnx")
    x = b.input("x", DType.FLOAT32, (2,))
    c = b.const("c", dtype=DType.FLOAT32, shape=(2,))
    b.output(b.op("Add", x, c))
    with pytest.raises(ConversionError, match="no data"):
        emit(Model(b.graph))


def test_validate_reports_the_checker_message():
    proto = onnx_models.matmul_model()
    proto.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ConversionError, match="NoSuchOp"):
        validate(proto)


# ------------------------------------------------------------------ save ---
def test_save_is_atomic_and_round_trips(tmp_path):
    proto = onnx_models.torch_cnn()
    emitted = emit(load(proto))
    path = save(emitted, tmp_path / "out" / "model.onnx")
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    again = onnx.load(str(path))
    assert again.SerializeToString() == emitted.SerializeToString()


def test_save_refuses_to_overwrite_the_input(tmp_path):
    source = tmp_path / "in.onnx"
    onnx.save_model(onnx_models.matmul_model(), str(source))
    before = source.read_bytes()
    emitted = emit(load(source))
    with pytest.raises(ConfigError, match="overwrite"):
        save(emitted, tmp_path / "." / "in.onnx", input_path=source)
    assert source.read_bytes() == before


@pytest.mark.parametrize("how", ["flag", "threshold"])
def test_save_with_external_data(tmp_path, monkeypatch, how):
    proto = onnx_models.torch_cnn()
    emitted = emit(load(proto))
    before = emitted.SerializeToString()
    if how == "flag":
        path = save(emitted, tmp_path / "big.onnx", external_data=True)
    else:
        monkeypatch.setattr(backend, "EXTERNAL_DATA_THRESHOLD", 1)
        path = save(emitted, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert emitted.SerializeToString() == before  # the caller's proto is unchanged
    reloaded = load(path)
    feeds = onnx_models.feeds("torch_cnn", proto)
    _same_outputs(run_onnxruntime(proto, feeds), run_onnxruntime(emit(reloaded), feeds))
    onnx.checker.check_model(str(path), full_check=True)


def test_validate_large_model_from_file(monkeypatch):
    emitted = emit(load(onnx_models.torch_cnn()))
    monkeypatch.setattr(backend, "LARGE_MODEL_BYTES", 1)
    calls = []
    real = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, **k: calls.append(m) or real(m, **k))
    validate(emitted)
    assert calls and isinstance(calls[0], str)


# -------------------------------------------------------------- onnxruntime ---
@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


PROBED = [("", "MatMul"), ("", "Conv"), ("", "Gemm"), ("", "Add"), ("", "Relu"), ("", "MaxPool"),
          ("", "Identity"), ("", "If"), ("", "Loop"), ("", "ConstantOfShape"), ("", "Resize"),
          ("", "Where"), ("", "Cast", {"to": DType.FLOAT32})]


def test_missing_kernels_bf16_vs_float(cache_dir):
    bf16 = missing_kernels(PROBED, DType.BFLOAT16)
    assert {"MatMul", "Conv", "Gemm", "Add", "Relu", "MaxPool"} <= bf16
    assert not {"Identity", "If", "Loop", "Cast"} & bf16
    assert missing_kernels(PROBED, DType.FLOAT32) == set()
    assert "MatMul" not in missing_kernels([("", "MatMul")], DType.FLOAT16)


def test_unprobeable_ops_count_as_missing(cache_dir):
    ops = [("", "NoSuchOp"), ("com.example", "Custom"), ("", "Einsum", {"equation": "ij->ji"})]
    assert missing_kernels(ops, DType.FLOAT32) == {"NoSuchOp", "com.example::Custom"}


def test_missing_kernels_cache(cache_dir, monkeypatch):
    missing_kernels([("", "MatMul"), ("", "Identity")], DType.BFLOAT16)
    path = cache_dir / "ort_kernels.json"
    data = json.loads(path.read_text())
    (bucket,) = [k for k in data if k.startswith(f"{ort.__version__}|CPUExecutionProvider|bf16|")]
    assert data[bucket] == {"MatMul": True, "Identity": False}
    monkeypatch.setattr(runtime, "_probe", lambda *a, **k: pytest.fail("probed again instead of using the cache"))
    assert missing_kernels([("", "MatMul"), ("", "Identity")], DType.BFLOAT16) == {"MatMul"}
    assert not list(cache_dir.glob("*.tmp"))


def test_corrupt_cache_is_replaced(cache_dir):
    cache_dir.mkdir(parents=True)
    (cache_dir / "ort_kernels.json").write_text("{not json")
    assert missing_kernels([("", "Conv")], DType.BFLOAT16) == {"Conv"}
    assert json.loads((cache_dir / "ort_kernels.json").read_text())


def test_unknown_provider(cache_dir):
    with pytest.raises(ConfigError, match="not available"):
        missing_kernels([("", "MatMul")], DType.FLOAT32, provider="NoSuchExecutionProvider")


def test_candidate_feeds():
    proto = onnx_models.torch_transformer()
    feeds = onnx_models.generated_feeds(proto, batch=3)
    assert feeds["x"].shape == (3, 6, 16) and feeds["x"].dtype == np.float32
    assert feeds["pad"].dtype == np.bool_ and feeds["pad"].shape == (3, 6)
    again = next(candidate_feeds(load(proto), {"x": [3, 6, 16], "pad": [3, 6]}))
    assert set(again) == {"x", "pad"}
    np.testing.assert_array_equal(again["x"], feeds["x"])
    cf = next(candidate_feeds(load(onnx_models.control_flow())))
    assert set(cf) == {"x", "cond", "trip", "seq"}  # the initializer-backed input is left out
    assert isinstance(cf["cond"], np.ndarray) and cf["cond"].shape == () and cf["cond"].dtype == np.bool_
    assert isinstance(cf["trip"], np.ndarray) and cf["trip"].dtype == np.int64 and 0 <= cf["trip"] < 2
    run_onnxruntime(onnx_models.control_flow(), cf)
    b = GraphBuilder("g", framework="onnx")
    b.input("h", DType.BFLOAT16, ("n", 2))
    assert next(candidate_feeds(Model(b.graph)))["h"].dtype == ml_dtypes.bfloat16


def test_run_onnxruntime_errors_are_conversion_errors(bf16_cnn):
    proto, model = bf16_cnn
    with pytest.raises(ConversionError, match="NOT_IMPLEMENTED"):  # no bf16 Conv kernel on CPU
        run_onnxruntime(emit(model), onnx_models.feeds("torch_cnn", proto))
    with pytest.raises(ConversionError, match="failed running"):
        run_onnxruntime(proto, {"image": np.zeros((1, 2), np.float32)})


def test_graphs_attribute_round_trip():
    proto = onnx_models.graphs_attribute()
    emitted = emit(load(proto))
    validate(emitted)
    assert _structure(emitted.graph) == _structure(proto.graph)
    assert emitted.graph.node[0].attribute[0].type == onnx.AttributeProto.GRAPHS


@pytest.mark.parametrize("value", [3, -7, 2 ** 40, 1.5, float("nan"), "abc", "ünï", DType.BFLOAT16, [0, 2, 1, 3],
                                   [1.0, 2.5]])
def test_plain_attributes_are_written_as_onnx_helper_writes_them(value):
    """The emitter writes plain attributes in place (50k of a 100k-node graph): byte for
    byte what onnx.helper.make_attribute makes; anything else goes through the helper."""
    from onnx import helper

    from mixprec.backends.onnx import _attr_value, _fill_plain_attr
    node = onnx.NodeProto()
    assert _fill_plain_attr(node.attribute, "a", value)
    assert node.attribute[0].SerializeToString() == helper.make_attribute("a", _attr_value(value)).SerializeToString()
    for other in ([True, 1], [1, 2.0], True, [], b"x", np.int64(3)):
        assert not _fill_plain_attr(onnx.NodeProto().attribute, "a", other)
