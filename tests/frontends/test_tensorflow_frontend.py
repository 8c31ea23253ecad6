"""TensorFlow frontend and backend without passes: every supported source (Keras model,
tf.function, ConcreteFunction, SavedModel directory, .keras file, .pb GraphDef) lowers
to a verified IR whose text round-trips; emitting it gives back the same GraphDef node
for node and bit-identical outputs; attributes, control inputs and library functions
survive; bad inputs are ModelLoadErrors."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="the TensorFlow frontend tests need tensorflow")

from mixprec.backends import tensorflow as backend  # noqa: E402
from mixprec.dialects import tensorflow as dialect  # noqa: E402
from mixprec.errors import ModelLoadError, UnsupportedModelError  # noqa: E402
from mixprec.frontends import tensorflow as frontend  # noqa: E402
from mixprec.ir import DType, dump, parse, verify  # noqa: E402
from mixprec.ir.cast import cast_target, is_cast  # noqa: E402
from tests import tf_models  # noqa: E402

MODELS = {
    "cnn": (tf_models.make_cnn, lambda: [tf_models.images(2)]),
    "transformer": (tf_models.make_transformer, lambda: [tf_models.tokens(2)]),
    "control_flow": (tf_models.make_control_flow, lambda: [tf_models.tokens(1)[0]]),
}


@pytest.fixture(scope="module")
def models() -> dict:
    """Each test model built once: name -> (model, inputs)."""
    return {name: (make(), data()) for name, (make, data) in MODELS.items()}


def _frozen(model) -> backend.GraphModel:
    """The model's frozen GraphDef as TF froze it, callable (the no-mixprec reference)."""
    source = frontend.read_source(model)
    tf_graph = frontend.import_graph(source.graph_def)
    dtypes = [tf_graph.get_tensor_by_name(name).dtype for name in source.inputs]
    return backend.GraphModel(source.graph_def, source.inputs, source.outputs, source.input_keys,
                              source.output_keys, dtypes, [None] * len(dtypes))


def _numpy(tensors) -> list[np.ndarray]:
    return [t.numpy() for t in tensors]


# ------------------------------------------------------------------------ loading ---
@pytest.mark.parametrize("name", list(MODELS))
def test_load_verifies_and_text_round_trips(models, name):
    model, _ = models[name]
    ir_model = frontend.load(model)
    graph = ir_model.graph
    verify(graph)
    assert graph.framework == "tensorflow"
    assert graph.inputs and graph.outputs and graph.constants
    assert all(v.dtype != DType.UNKNOWN for v in graph.inputs + graph.outputs)
    text = dump(graph)
    assert dump(parse(text)) == text


def test_keras_cnn_lowering(models):
    """Placeholders are inputs with a None batch dim, Consts are named constants, node
    attributes are python values, control inputs are kept as an attribute."""
    ir_model = frontend.load(models["cnn"][0])
    graph = ir_model.graph
    (inp,) = graph.inputs
    assert inp.name == "image" and inp.dtype == DType.FLOAT32 and inp.shape == (None,) + tf_models.IMAGE
    convs = [n for n in graph.nodes if n.op == "Conv2D"]
    assert len(convs) == 2
    conv = convs[0]
    assert "T" not in conv.attrs and conv.attrs["padding"] == "SAME"  # T follows the values' dtypes
    assert conv.attrs["strides"] == [1, 1, 1, 1] and conv.outputs[0].shape[1:] == (16, 16, 16)
    assert conv.name == conv.outputs[0].name
    kernel = conv.inputs[1]  # the frozen variable; its Identity(ReadVariableOp) was folded
    assert kernel.is_constant and kernel.data.shape == (3, 3, 3, 16) and kernel.dtype == DType.FLOAT32
    output = graph.outputs[0].producer
    assert output.op == "Identity" and output.attrs[frontend.CONTROL_INPUTS] == ["NoOp"]
    meta = ir_model.meta["tensorflow"]
    assert meta["output_keys"] == ["output_0"] and meta["source"] == "keras"


def test_cast_is_canonical():
    """A tf.cast becomes Cast{SrcT, DstT: DType, Truncate}, which the IR helpers read."""
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def f(x):
        return tf.cast(tf.cast(x, tf.float16) * 2.0, tf.float32)

    graph = frontend.load(f).graph
    casts = [n for n in graph.nodes if n.op == "Cast"]
    assert len(casts) == 2 and all(is_cast(n) for n in casts)
    assert [cast_target(n) for n in casts] == [DType.FLOAT16, DType.FLOAT32]
    assert casts[0].attrs == {"SrcT": DType.FLOAT32, "DstT": DType.FLOAT16, "Truncate": False}


def test_control_flow_functions_are_subgraphs(models):
    """While/If bodies are IR subgraphs of their node, named ``<node>>``<attr>``, their
    values prefixed so names stay unique; meta maps each to its library function."""
    ir_model = frontend.load(models["control_flow"][0])
    ops = {n.op: n for n in ir_model.graph.nodes}
    assert {"While", "StatelessIf"} <= set(ops)
    library = tf.compat.v1.GraphDef().library
    library.ParseFromString(ir_model.meta["tensorflow"]["library"])
    names = {f.signature.name for f in library.function}
    functions = ir_model.meta["tensorflow"]["functions"]
    body, branch = ops["While"].attrs["body"], ops["StatelessIf"].attrs["then_branch"]
    assert body.name == "while>body" and functions[body.name] in names and functions[branch.name] in names
    assert {n.op for n in body.nodes} >= {"MatMul", "Tanh"}
    assert all(v.name.startswith("while>body>") for v in body.values())
    assert len(body.inputs) == len(ops["While"].inputs) == len(body.outputs)
    assert ir_model.meta["tensorflow"]["output_keys"] == ["mean", "out"]


def test_tf_function_and_concrete_function(models):
    function = models["control_flow"][0]

    def text(model) -> str:  # each freeze numbers the loop functions afresh
        return re.sub(r"frozen_\d+", "frozen_N", dump(frontend.load(model).graph))

    assert text(function) == text(function.get_concrete_function())

    @tf.function
    def unsigned(x):
        return x * 2.0

    ir_model = frontend.load(unsigned, input_signature=[tf.TensorSpec([2, 2], tf.float32)])
    assert ir_model.graph.inputs[0].shape == (2, 2)


def test_pb_file_outputs_in_order(models, tmp_path):
    """A .pb's outputs are its sink nodes, in the order the backend writes them."""
    ir_model = frontend.load(models["control_flow"][0])
    path = tmp_path / "cf.pb"
    backend.save(backend.graph_model(ir_model), path)
    again = frontend.load(path)
    assert [v.name for v in again.graph.outputs] == [v.name for v in ir_model.graph.outputs]
    assert [v.name for v in again.graph.inputs] == ["x"]
    picked = frontend.load(path, outputs=["Identity_1"])
    assert [v.name for v in picked.graph.outputs] == ["Identity_1"]


def test_saved_model_and_keras_file(models, tmp_path):
    model, (images,) = models["cnn"]
    model.export(str(tmp_path / "sm"), verbose=False)
    ir_model = frontend.load(tmp_path / "sm")
    assert ir_model.meta["tensorflow"]["source"] == "saved_model"
    got = backend.graph_model(ir_model)(images)[0].numpy()
    np.testing.assert_allclose(got, model(images).numpy(), rtol=1e-5, atol=1e-6)

    model.save(tmp_path / "cnn.keras")
    ir_keras = frontend.load(tmp_path / "cnn.keras")
    assert ir_keras.meta["tensorflow"]["source"] == "keras_file"
    assert len(ir_keras.graph) == len(frontend.load(model).graph)


# ----------------------------------------------------------------------- emitting ---
@pytest.mark.parametrize("name", list(MODELS))
def test_emit_without_passes_is_identity(models, name):
    """Same nodes, inputs, attributes and constant values; functions only renamed."""
    model, _ = models[name]
    source = frontend.read_source(model)
    emitted = backend.emit(frontend.lower(source))
    original = {n.name: n for n in source.graph_def.node}
    assert set(original) == {n.name for n in emitted.node}
    assert len(emitted.library.function) == len(source.graph_def.library.function)
    for node in emitted.node:
        before = original[node.name]
        if node.op == "Const":
            assert node.attr["dtype"] == before.attr["dtype"]
            np.testing.assert_array_equal(tf.make_ndarray(node.attr["value"].tensor),
                                          tf.make_ndarray(before.attr["value"].tensor))
            continue
        for key, value in node.attr.items():
            if value.HasField("func"):
                assert value.func.name.startswith(before.attr[key].func.name + "_mp")
                value.func.name = before.attr[key].func.name
        assert node == before, node.name


@pytest.mark.parametrize("name", list(MODELS))
def test_emit_without_passes_gives_bit_identical_outputs(models, name):
    model, inputs = models[name]
    reference = _numpy(_frozen(model)(*inputs))
    emitted = backend.graph_model(frontend.load(model))
    got = _numpy(emitted(*inputs))
    assert len(got) == len(reference)
    for a, b in zip(got, reference):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_graph_model_call_by_key(models):
    model, (x,) = models["control_flow"]
    emitted = backend.graph_model(frontend.load(model))
    assert emitted.input_keys == ["x"] and emitted.output_keys == ["mean", "out"]
    by_key = _numpy(emitted(x=x))
    for a, b in zip(by_key, _numpy(emitted(x))):
        np.testing.assert_array_equal(a, b)


def test_attribute_values_round_trip():
    """Each AttrValue kind converts to python and back unchanged."""
    from tensorflow.core.framework import attr_value_pb2
    shape = tf.TensorShape([None, 3]).as_proto()
    values = [
        attr_value_pb2.AttrValue(s=b"SAME"), attr_value_pb2.AttrValue(i=-3), attr_value_pb2.AttrValue(f=0.5),
        attr_value_pb2.AttrValue(b=True), attr_value_pb2.AttrValue(type=tf.bfloat16.as_datatype_enum),
        attr_value_pb2.AttrValue(shape=shape), attr_value_pb2.AttrValue(shape=tf.TensorShape(None).as_proto()),
        attr_value_pb2.AttrValue(tensor=tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3))),
        attr_value_pb2.AttrValue(func=attr_value_pb2.NameAttrList(name="body")),
        attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(i=[1, 2])),
        attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(type=[1, 3])),
        attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(shape=[shape])),
        attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(s=[b"a", b"\xff"])),
        attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue()),
        attr_value_pb2.AttrValue(type=tf.resource.as_datatype_enum),
        attr_value_pb2.AttrValue(placeholder="T"),
    ]
    for value in values:
        python = dialect.attr_to_python(value)
        back = backend.python_to_attr(python, dialect.attr_kind(value))
        if value.HasField("tensor"):
            np.testing.assert_array_equal(tf.make_ndarray(back.tensor), tf.make_ndarray(value.tensor))
        else:
            assert back == value, (value, python)
    assert isinstance(dialect.attr_to_python(values[-1]), dialect.RawAttr)
    assert dialect.attr_to_python(values[4]) == DType.BFLOAT16
    assert dialect.attr_to_python(values[5]) == [-1, 3] and dialect.attr_to_python(values[6]) is None
    assert dialect.attr_to_python(values[12]) == ["a", b"\xff"]


def test_attribute_kinds_are_inferred_without_an_op_def():
    """Attributes no OpDef declares (underscore attributes of nodes a pass made) are
    written by their python type."""
    assert backend.python_to_attr(True, None).b is True
    assert backend.python_to_attr(3, None).i == 3
    assert backend.python_to_attr([DType.FLOAT32], None).list.type == [tf.float32.as_datatype_enum]
    assert backend.python_to_attr([[-1, 2]], None).list.shape[0] == tf.TensorShape([None, 2]).as_proto()
    assert backend.python_to_attr("x", None).s == b"x"


# --------------------------------------------------------------------- bad inputs ---
def test_bad_files_are_model_load_errors(tmp_path, models):
    with pytest.raises(ModelLoadError, match="no such file"):
        frontend.load(tmp_path / "missing.pb")
    text = tmp_path / "text.pb"
    text.write_text("this is not a graph\n" * 10)
    with pytest.raises(ModelLoadError):
        frontend.load(text)
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no nodes"):
        frontend.load(empty)
    good = backend.emit(frontend.load(models["cnn"][0])).SerializeToString()
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError):
        frontend.load(truncated)
    (tmp_path / "not_a_saved_model").mkdir()
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        frontend.load(tmp_path / "not_a_saved_model")
    with pytest.raises(UnsupportedModelError):
        frontend.load(object())


def test_v1_control_flow_cycle_is_unsupported(models):
    """A graph lowered to v1 control flow (NextIteration -> Merge cycles) is refused."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    concrete = models["control_flow"][0].get_concrete_function()
    lowered = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    assert any(n.op == "NextIteration" for n in lowered.node)
    with pytest.raises(UnsupportedModelError, match="v1 control flow"):
        frontend.load(lowered)
