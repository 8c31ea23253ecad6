"""ONNX frontend: lowering, IR invariants, text round trip, metadata, bad inputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX frontend needs the onnx package")
from onnx import numpy_helper  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnx_models  # noqa: E402

from mixprec.errors import ModelLoadError  # noqa: E402
from mixprec.dialects.onnx import ONNX_META, RawAttribute, dtype_from_onnx  # noqa: E402
from mixprec.frontends.onnx import load  # noqa: E402
from mixprec.ir import DType, Graph, dump, parse, verify  # noqa: E402


@pytest.fixture(scope="module", params=sorted(onnx_models.MODELS))
def loaded(request):
    proto = onnx_models.MODELS[request.param]()
    return request.param, proto, load(proto)


@pytest.fixture(scope="module")
def control_flow():
    return load(onnx_models.control_flow())


def _node(graph: Graph, name: str):
    matches = [n for n in graph.all_nodes() if n.name == name]
    assert len(matches) == 1, f"{name}: {matches}"
    return matches[0]


# ---------------------------------------------------------------- every model ---
def test_loaded_model_verifies(loaded):
    _, proto, model = loaded
    verify(model.graph)
    assert model.framework == "onnx"
    assert all(g.framework == "onnx" for g in model.graph.all_graphs())
    assert model.meta["opset_import"][""] == proto.opset_import[0].version
    assert model.meta["ir_version"] == proto.ir_version


def test_text_round_trip(loaded):
    _, _, model = loaded
    text = dump(model.graph)
    assert dump(parse(text)) == text


def test_node_count_and_ops_match(loaded):
    _, proto, model = loaded
    onnx_ops = sorted(n.op_type for n in proto.graph.node if n.op_type != "Constant")
    ir_ops = sorted(n.op for n in model.graph.iter_nodes() if n.op != "Constant")
    assert ir_ops == onnx_ops


def test_initializers_become_constants_with_exact_data(loaded):
    _, proto, model = loaded
    for tensor in proto.graph.initializer:
        const = model.graph.constants[tensor.name]
        expected = numpy_helper.to_array(tensor)
        assert const.dtype == dtype_from_onnx(tensor.data_type)
        assert const.shape == tuple(tensor.dims)
        np.testing.assert_array_equal(const.data, expected)


def test_every_value_is_typed(loaded):
    """Shape inference (or the model) types every node output except omitted ones."""
    _, _, model = loaded
    renamed, raw_types = model.meta[ONNX_META]["renamed"], model.meta[ONNX_META]["types"]
    for graph in model.graph.all_graphs():
        for node in graph.iter_nodes():
            for value in node.outputs:
                if renamed.get(value.name) == "":
                    continue
                assert value.dtype != DType.UNKNOWN or value.name in raw_types, (node, value)


def test_input_proto_is_not_modified():
    proto = onnx_models.torch_cnn()
    before = proto.SerializeToString()
    load(proto)
    assert proto.SerializeToString() == before


# ----------------------------------------------------------------- torch models ---
def test_cnn_values():
    model = load(onnx_models.torch_cnn())
    (image,) = model.graph.inputs
    assert (image.name, image.dtype, image.shape) == ("image", DType.FLOAT32, ("batch", 3, 16, 16))
    (logits,) = model.graph.outputs
    assert logits.dtype == DType.FLOAT32 and logits.shape == ("batch", 10)
    ops = [n.op for n in model.graph.iter_nodes()]
    for op in ("Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Gemm"):
        assert op in ops
    conv = next(n for n in model.graph.iter_nodes() if n.op == "Conv")
    assert conv.attrs["kernel_shape"] == [3, 3] and conv.attrs["pads"] == [1, 1, 1, 1]
    assert conv.inputs[1].is_constant and conv.inputs[1].shape == (8, 3, 3, 3)
    bn = next(n for n in model.graph.iter_nodes() if n.op == "BatchNormalization")
    assert isinstance(bn.attrs["epsilon"], float) and abs(bn.attrs["epsilon"] - 1e-5) < 1e-9


def test_transformer_constants_lifted_and_mask_kept():
    proto = onnx_models.torch_transformer()
    model = load(proto)
    assert not any(n.op == "Constant" for n in model.graph.iter_nodes())
    lifted = model.meta[ONNX_META]["graphs"][""]["constant_nodes"]
    n_constant_nodes = sum(n.op_type == "Constant" for n in proto.graph.node)
    assert len(lifted) == n_constant_nodes
    masks = [c.data for c in model.graph.constants.values()
             if c.data is not None and c.dtype == DType.FLOAT32 and np.isinf(c.data).any()]
    assert masks, "the causal -inf mask must survive as a constant"
    assert np.isneginf(masks[0]).sum() == 15
    pad = model.graph.inputs[1]
    assert pad.dtype == DType.BOOL and pad.shape == ("batch", 6)


def test_shape_chain_is_typed_int64():
    model = load(onnx_models.torch_shape_resize())
    ops = [n.op for n in model.graph.iter_nodes()]
    for op in ("Resize", "Shape", "Gather", "Concat", "Reshape"):
        assert op in ops
    shape = next(n for n in model.graph.iter_nodes() if n.op == "Shape")
    assert shape.outputs[0].dtype == DType.INT64
    resize = next(n for n in model.graph.iter_nodes() if n.op == "Resize")
    assert resize.attrs["mode"] == "nearest"


def test_tf2onnx_model():
    model = load(onnx_models.tf_cnn())
    assert model.meta["producer_name"] == "tf2onnx"
    assert model.meta["opset_import"].get("ai.onnx.ml") == 2
    assert [v.name for v in model.graph.inputs] == ["image"]
    assert model.graph.inputs[0].shape[1:] == (8, 8, 3)
    assert "Conv" in [n.op for n in model.graph.iter_nodes()]


# ---------------------------------------------------------------- control flow ---
def test_model_meta(control_flow):
    meta = control_flow.meta
    assert meta["opset_import"] == {"": 17, "local.fn": 1}
    assert meta["ir_version"] == 8
    assert (meta["producer_name"], meta["producer_version"]) == ("mixprec-tests", "1.0")
    assert meta["domain"] == "org.mixprec.tests" and meta["model_version"] == 7
    assert meta["doc_string"] == "hand-built control flow model"
    assert meta["metadata_props"] == {"author": "mixprec", "purpose": "round trip"}
    assert [f.name for f in meta["functions"]] == ["Double"]
    assert meta[ONNX_META]["graphs"][""]["shell"].doc_string == "graph with control flow"


def test_initializer_that_is_an_input(control_flow):
    graph = control_flow.graph
    assert "bias" in graph.constants
    assert "bias" not in [v.name for v in graph.inputs]
    (entry,) = control_flow.meta[ONNX_META]["graphs"][""]["initializer_inputs"]
    assert entry[0] == 1 and entry[1] == "bias" and entry[2].name == "bias"


def test_subgraphs_read_outer_values(control_flow):
    graph = control_flow.graph
    branch = _node(graph, "branch")
    then_g, else_g = branch.attrs["then_branch"], branch.attrs["else_branch"]
    assert isinstance(then_g, Graph) and isinstance(else_g, Graph)
    assert then_g.parent is graph and then_g.name == "then_branch"
    x, bias = graph.inputs[0], graph.constants["bias"]
    then_add, body_add = _node(graph, "then_add"), _node(graph, "body_add")
    assert then_add.inputs == (x, bias)
    assert body_add.inputs[1] is bias
    readers = {(n.name, i) for n, i in bias.uses()}
    assert {("then_add", 1), ("body_add", 1)} <= readers
    assert "else_scale" in else_g.constants and "then_k" in then_g.constants
    assert then_g.constants["then_k"].data == np.float32(2.0)


def test_loop_body(control_flow):
    loop = _node(control_flow.graph, "loop")
    assert loop.inputs[1] is None
    body = loop.attrs["body"]
    assert [v.name for v in body.inputs] == ["iter", "cond_in", "acc"]
    assert [v.dtype for v in body.inputs] == [DType.INT64, DType.BOOL, DType.FLOAT32]
    assert [v.name for v in body.outputs] == ["cond_out", "acc_out", "scan_out"]
    assert loop.outputs[1].shape == ("trip_count", 2, 3)


def test_attribute_kinds(control_flow):
    graph = control_flow.graph
    assert _node(graph, "transpose").attrs["perm"] == [1, 0]
    gemm = _node(graph, "gemm").attrs
    assert gemm["alpha"] == 0.5 and isinstance(gemm["alpha"], float)
    lstm = _node(graph, "lstm").attrs
    assert lstm["hidden_size"] == 2 and lstm["direction"] == "forward"
    assert lstm["activations"] == ["Sigmoid", "Tanh", "Tanh"]
    fill = _node(graph, "fill").attrs["value"]
    assert isinstance(fill, np.ndarray) and fill.dtype == np.float32 and fill.tolist() == [0.25]
    sparse = _node(graph, "sparse_const").attrs["sparse_value"]
    assert isinstance(sparse, RawAttribute)
    assert sparse.proto.type == onnx.AttributeProto.SPARSE_TENSOR
    assert "SPARSE_TENSOR" in repr(sparse)


def test_cast_targets_are_dtypes(control_flow):
    casts = [n for n in control_flow.graph.iter_nodes() if n.op == "Cast"]
    assert [c.attrs["to"] for c in casts] == [DType.FLOAT16, DType.FLOAT32]
    assert casts[0].outputs[0].dtype == DType.FLOAT16
    # the first cast has no name in the file: it gets the IR default and remembers it
    assert casts[0].name == "half" and casts[0].meta["onnx"]["unnamed"]
    assert casts[1].meta["onnx"]["shell"].doc_string == "cast back to float"


def test_omitted_output_gets_a_placeholder(control_flow):
    lstm = _node(control_flow.graph, "lstm")
    placeholder = lstm.outputs[0]
    assert placeholder.name != "" and placeholder.num_uses == 0
    assert control_flow.meta[ONNX_META]["renamed"][placeholder.name] == ""
    assert lstm.outputs[1].name == "lstm_h"


def test_function_call_node(control_flow):
    call = _node(control_flow.graph, "call_double")
    assert (call.domain, call.op, call.qualified_op) == ("local.fn", "Double", "local.fn::Double")


def test_shadowed_name_is_renamed():
    model = load(onnx_models.shadowing())
    verify(model.graph)
    then_g = _node(model.graph, "if").attrs["then_branch"]
    inner = then_g.outputs[0]
    assert inner.name != "t"
    assert model.graph.outputs[0].name == "t"
    assert model.meta[ONNX_META]["renamed"] == {inner.name: "t"}


def test_exotic_types():
    import ml_dtypes

    model = load(onnx_models.exotic_types())
    graph, raw_types = model.graph, model.meta[ONNX_META]["types"]
    seq = _node(graph, "make_seq").outputs[0]
    assert seq.dtype == DType.UNKNOWN and raw_types[seq.name].WhichOneof("value") == "sequence_type"
    assert raw_types[_node(graph, "wrap").outputs[0].name].WhichOneof("value") == "optional_type"
    empty = _node(graph, "empty").attrs["type"]
    assert isinstance(empty, RawAttribute) and empty.proto.type == onnx.AttributeProto.TYPE_PROTO
    q8 = graph.constants["q8"]
    assert q8.dtype == DType.UNKNOWN and q8.data.dtype == ml_dtypes.float8_e4m3fnuz
    assert graph.constants["q4"].dtype == DType.INT4 and graph.constants["q4"].data.tolist() == [1, 2, -3]
    assert graph.constants["half"].dtype == DType.BFLOAT16
    words = graph.constants["words"]
    assert words.dtype == DType.STRING and words.data.tolist() == ["a", "b\u00e9"]


# ------------------------------------------------------------------ files ---
def test_load_from_path_with_external_data(tmp_path):
    path = onnx_models.external_data_model(tmp_path)
    model = load(path)
    verify(model.graph)
    reference = onnx.load(str(path))  # loads the external data
    for tensor in reference.graph.initializer:
        np.testing.assert_array_equal(model.graph.constants[tensor.name].data, numpy_helper.to_array(tensor))
    assert model.graph.constants["w"].shape == (64, 32)


def test_load_large_model_path(tmp_path, monkeypatch):
    """Past LARGE_MODEL_BYTES the frontend neither serializes the proto nor checks it in
    memory: path-based shape inference and checking."""
    import mixprec.frontends.onnx as frontend

    path = tmp_path / "m.onnx"
    onnx.save_model(onnx_models.torch_cnn(), str(path))
    monkeypatch.setattr(frontend, "LARGE_MODEL_BYTES", 1)
    calls = []
    real = onnx.shape_inference.infer_shapes_path
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: pytest.fail("serialized in memory"))
    model = load(path)
    verify(model.graph)
    assert calls
    relu = next(n for n in model.graph.iter_nodes() if n.op == "Relu")
    assert relu.outputs[0].dtype == DType.FLOAT32


def test_external_data_missing_gives_load_error(tmp_path):
    path = onnx_models.external_data_model(tmp_path)
    (tmp_path / "external.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        load(path)


@pytest.mark.parametrize("make", ["missing", "directory", "text", "truncated", "empty"])
def test_bad_files(tmp_path, make):
    if make == "missing":
        path = tmp_path / "nope.onnx"
    elif make == "directory":
        path = tmp_path
    elif make == "text":
        path = tmp_path / "readme.onnx"
        path.write_text("this is not a model, just some text\n" * 20)
    else:
        path = tmp_path / "cut.onnx"
        data = onnx_models.torch_cnn().SerializeToString()
        path.write_bytes(data[: len(data) // 2] if make == "truncated" else b"")
    with pytest.raises(ModelLoadError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message
    error = info.value  # no chained protobuf traceback
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_truncated_graph_reference_gives_load_error():
    proto = onnx_models.torch_cnn()
    del proto.graph.node[0]  # what a file cut at a node boundary looks like
    with pytest.raises(ModelLoadError, match="defines"):
        load(proto)


def test_wrong_argument_type():
    with pytest.raises(ModelLoadError, match="ModelProto"):
        load(42)


def test_shape_inference_failure_only_warns(caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("inference exploded")
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    model = load(onnx_models.matmul_model())
    verify(model.graph)
    assert "inference exploded" in caplog.text


def test_import_mixprec_does_not_import_onnx():
    code = "import sys, mixprec, mixprec.ir; print('onnx' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "False"


def test_graphs_attribute():
    model = load(onnx_models.graphs_attribute())
    verify(model.graph)
    text = dump(model.graph)
    assert dump(parse(text)) == text
    multi = _node(model.graph, "multi")
    bodies = multi.attrs["bodies"]
    assert [type(g) for g in bodies] == [Graph, Graph] and [g.name for g in bodies] == ["body_relu", "body_neg"]
    x = model.graph.inputs[0]
    assert {(n.name, i) for n, i in x.uses()} == {("multi", 0), ("inner_relu", 0), ("inner_neg", 0)}
    assert list(multi.subgraphs()) == bodies


# ------------------------------------------- malformed and hostile models (issue 8) ---
from mixprec.errors import UnsupportedModelError  # noqa: E402


M = onnx_models  # the hostile variants of matmul_model


@pytest.mark.parametrize("mutate, error, message", [
    (M.short_raw_data, ModelLoadError, "initializer 'w' of graph 'matmul' declares dims [16, 8] (128 FLOAT "
                                       "elements, 512 bytes) but its raw_data holds 10 bytes"),
    (M.huge_dims(False), ModelLoadError, "declares dims [10000000000] (10000000000 elements) but holds only 0 values"),
    (M.huge_dims(True), ModelLoadError, "(10000000000 FLOAT elements, 40000000000 bytes) but its raw_data holds"),
    (M.huge_constant, ModelLoadError, "attribute 'value' of node 'big' (Constant) in graph 'matmul' declares dims "
                                      "[10000000000]"),
    (M.element_type(0), ModelLoadError, "initializer 'w' of graph 'matmul' has element type UNDEFINED"),
    (M.element_type(999), ModelLoadError, "has element type 999, which is not a defined ONNX tensor type"),
    (M.negative_dim, ModelLoadError, "has a negative dimension (-16)"),
    (M.sparse_initializer([1, 99], [8]), ModelLoadError,
     "sparse initializer 'b' of graph 'matmul': a sparse index lies outside"),
    (M.sparse_initializer([-1, 2], [8]), ModelLoadError, "a sparse index lies outside its dims [8]"),
    (M.sparse_initializer([1, 2], [10**10]), UnsupportedModelError, "more than 1024 MiB dense"),
    (M.sparse_constant, ModelLoadError, "attribute 'sparse_value' of node 'sc' (Constant)"),
    (M.undeclared_domain, ModelLoadError, "node 'add' (Add) uses op-set domain 'com.example', which the model's "
                                          "opset_import does not declare"),
])
def test_malformed_tensors_and_nodes_are_clear_errors(mutate, error, message, tmp_path):
    proto = onnx_models.matmul_model()
    mutate(proto)
    before = proto.SerializeToString()
    with pytest.raises(error) as info:
        load(proto)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert proto.SerializeToString() == before
    path = tmp_path / "bad.onnx"
    path.write_bytes(before)
    with pytest.raises(error, match="re-export|store it dense"):
        load(path)
    assert path.read_bytes() == before


def test_node_name_that_is_not_utf8(tmp_path):
    proto = onnx_models.matmul_model()
    proto.graph.node[0].name = "matmXl"
    path = tmp_path / "names.onnx"
    data = proto.SerializeToString().replace(b"matmXl", b"matm\xffl")
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match=r"node 'matm\ufffdl' \(MatMul\): its name b'matm\\xffl' is not UTF-8"):
        load(path)
    assert path.read_bytes() == data


def _external_entry(path, key, value):
    proto = onnx.load(str(path), load_external_data=False)
    entries = proto.graph.initializer[0].external_data
    for entry in entries:
        if entry.key == key:
            entry.value = value
            break
    else:
        entries.add(key=key, value=value)
    onnx.save(proto, str(path))


@pytest.mark.parametrize("key, value, message", [
    ("offset", "999999", "its external data ends at byte 1008191 but external.onnx.data has 8320 bytes"),
    ("length", "999999", "its external data ends at byte 999999"),
    ("length", "16", "declares dims [64, 32] (8192 bytes) but its external data in external.onnx.data holds 16"),
    ("offset", "-5", "its external data offset '-5' is not a non-negative whole number"),
    ("length", "-8", "its external data length '-8' is not a non-negative whole number"),
    ("offset", "abc", "its external data offset 'abc' is not a non-negative whole number"),
])
def test_bad_external_data_entries(tmp_path, key, value, message):
    path = onnx_models.external_data_model(tmp_path)
    _external_entry(path, key, value)
    files = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ModelLoadError) as info:
        load(path)
    assert message in str(info.value) and "initializer 'w'" in str(info.value)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_in_memory_model_with_external_data_needs_base_dir(tmp_path, monkeypatch):
    """A same-named data file in the current directory is never read silently."""
    folder = tmp_path / "model"
    path = onnx_models.external_data_model(folder)
    proto = onnx.load(str(path), load_external_data=False)
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "external.onnx.data").write_bytes((folder / "external.onnx.data").read_bytes())
    monkeypatch.chdir(decoy)
    with pytest.raises(ModelLoadError, match="pass base_dir=.*onnx.load_external_data_for_model"):
        load(proto)
    model = load(proto, base_dir=folder)
    np.testing.assert_array_equal(model.graph.constants["w"].data,
                                  numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]))


def test_subgraphs_nested_too_deep_in_memory():
    """Built in place: protobuf refuses to copy or parse a message nested this deep, but
    a program can still build one in memory."""
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "main", [], []),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    graph = proto.graph
    for level in range(80):
        node = graph.node.add(op_type="If", input=["c"], output=[f"y{level}"])
        attr = node.attribute.add(name="then_branch", type=onnx.AttributeProto.GRAPH)
        graph = attr.g
        graph.name = f"b{level}"
    with pytest.raises(ModelLoadError, match="nested more than 64 levels deep"):
        load(proto)


def test_negative_dim_value_becomes_unknown():
    proto = onnx_models.matmul_model()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    model = load(proto)
    verify(model.graph)
    assert model.graph.inputs[0].shape == (None, 16)


def test_custom_domain_op_loads_when_declared():
    proto = onnx_models.matmul_model()
    proto.graph.node[1].domain = "com.example"
    proto.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    model = load(proto)
    verify(model.graph)
    assert [n.qualified_op for n in model.graph.iter_nodes()] == ["MatMul", "com.example::Add"]


def test_large_graphs_check_structure_in_the_background_with_the_same_errors(tmp_path, monkeypatch, caplog):
    """From background.LARGE_GRAPH_NODES nodes the structure walk and onnx.checker run in a
    forked child beside shape inference and lowering: the same ModelLoadError for each
    malformed model (the nesting depth checked first, here), the checker's warning logged once."""
    import sys
    import threading

    from mixprec import background
    if not sys.platform.startswith("linux"):
        pytest.skip("background jobs fork on Linux only")
    monkeypatch.setattr(background, "LARGE_GRAPH_NODES", 0)
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # threads other tests' frameworks left running
    started = []
    real = background.start
    monkeypatch.setattr(background, "start", lambda fn, what: started.append(what) or real(fn, what))
    proto = onnx_models.matmul_model()
    proto.graph.node[0].name = "matmXl"
    path = tmp_path / "names.onnx"
    path.write_bytes(proto.SerializeToString().replace(b"matmXl", b"matm\xffl"))
    with pytest.raises(ModelLoadError, match=r"node 'matm\ufffdl' \(MatMul\): its name b'matm\\xffl' is not UTF-8"):
        load(path)
    undeclared = onnx_models.matmul_model()
    onnx_models.undeclared_domain(undeclared)
    with pytest.raises(ModelLoadError, match="uses op-set domain 'com.example'"):
        load(undeclared)
    assert len(started) == 2
    deep = onnx.helper.make_model(onnx.helper.make_graph([], "main", [], []),
                                  opset_imports=[onnx.helper.make_opsetid("", 17)])
    graph = deep.graph
    for level in range(80):
        node = graph.node.add(op_type="If", input=["c"], output=[f"y{level}"])
        graph = node.attribute.add(name="then_branch", type=onnx.AttributeProto.GRAPH).g
    with pytest.raises(ModelLoadError, match="nested more than 64 levels deep"):
        load(deep)
    assert len(started) == 2  # refused before any child
    flawed = onnx_models.matmul_model()
    flawed.graph.node[0].input.append("")  # MatMul takes two inputs: onnx.checker complains, mixprec converts
    with caplog.at_level("WARNING", logger="mixprec.frontends.onnx"):
        model = load(flawed)
    assert len(started) == 3 and model.graph.nodes[0].op == "MatMul"
    assert [r.getMessage() for r in caplog.records if "onnx.checker" in r.getMessage()] == [
        next(r.getMessage() for r in caplog.records if "does not pass onnx.checker" in r.getMessage())]


def _lowered(path_or_proto):
    """What a load gives: the IR text, the re-emitted model's bytes and its lossy types."""
    from mixprec.backends import onnx as backend
    model = load(path_or_proto)
    return dump(model.graph), backend.resolved(backend.emit(model)).SerializeToString(), \
        sorted(model.meta[ONNX_META]["types"])


@pytest.mark.parametrize("name", ["generated", "declared", "minilm-l6-onnx", "gpt2-onnx-ts", "zoo-resnet50"])
def test_large_graphs_infer_shapes_in_the_background_to_the_same_ir(tmp_path, monkeypatch, name):
    """From background.LARGE_GRAPH_NODES nodes a graph without subgraphs is shape-inferred
    in the forked child while the parent lowers it with its declared types, then typed
    from the child's answer: the same IR, meta and re-emitted model as inferring here."""
    import threading

    from bench.onnx_peers import big_graph
    from mixprec import background
    from tests.corpus import registry
    if not sys.platform.startswith("linux"):
        pytest.skip("background jobs fork on Linux only")
    if name in ("generated", "declared"):
        proto = big_graph(300)
        if name == "declared":  # some values declared, one of them with a symbolic dim and one wrongly
            declared = [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, ["batch", None])
                        for node in proto.graph.node[:40:3]]
            declared[1].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
            proto.graph.value_info.extend(declared)
        path = tmp_path / "model.onnx"
        path.write_bytes(proto.SerializeToString())
    else:
        entry = next(e for e in registry.ENTRIES if e.name == name)
        missing = registry.missing_modules(entry)
        if missing:
            pytest.skip(f"{name} needs {', '.join(missing)} (pip install -r requirements.txt)")
        path = registry.build(entry) / entry.model_file
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # threads other tests' frameworks left running
    here = _lowered(path)
    monkeypatch.setattr(background, "LARGE_GRAPH_NODES", 0)
    started = []
    real = background.start
    monkeypatch.setattr(background, "start", lambda fn, what: started.append(what) or real(fn, what))
    assert _lowered(path) == here
    assert started == ["shape inference, structure check and onnx.checker of the input"]


def test_a_failed_background_shape_inference_keeps_the_declared_types(tmp_path, monkeypatch, caplog):
    import threading

    from bench.onnx_peers import big_graph
    from mixprec import background
    if not sys.platform.startswith("linux"):
        pytest.skip("background jobs fork on Linux only")
    proto = big_graph(300)
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info(proto.graph.node[0].output[0],
                                                                     onnx.TensorProto.FLOAT, [8, 16]))
    monkeypatch.setattr(threading, "active_count", lambda: 1)

    def broken(*args, **kwargs):
        raise RuntimeError("inference broke")
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    with caplog.at_level("WARNING", logger="mixprec.frontends.onnx"):
        here = _lowered(proto)
        monkeypatch.setattr(background, "LARGE_GRAPH_NODES", 0)
        assert _lowered(proto) == here
    assert [r.getMessage() for r in caplog.records if "shape inference failed" in r.getMessage()] == [
        "ONNX shape inference failed (inference broke); using the types the model declares"] * 2
    assert "f32[8,16]" in here[0]


@pytest.mark.parametrize("where", ["node", "input"])
def test_a_name_defined_twice_in_the_main_graph_is_refused(where):
    proto = onnx_models.matmul_model()
    if where == "node":
        proto.graph.node[1].output[0] = proto.graph.node[0].output[0]
    else:
        proto.graph.node[0].output[0] = proto.graph.input[0].name
    name = proto.graph.node[0].output[0]
    with pytest.raises(ModelLoadError, match=rf"value '{name}' is defined twice in graph .*not in SSA form"):
        load(proto)
