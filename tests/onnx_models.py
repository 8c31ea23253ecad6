"""Small ONNX test models, built on the fly (no downloads).

Every builder returns a fresh ``onnx.ModelProto`` (callers may mutate it) plus, through
``feeds(name)``, deterministic inputs for it. Exported models are built once per process
(cached serialized) so that a test session stays fast. Builders that need torch or
tf2onnx raise ``pytest.skip`` when the package is missing.
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the onnx package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SEED = 0
BATCH = 2


def _cached(builder: Callable[[], bytes]) -> Callable[[], "onnx.ModelProto"]:
    """Build once, hand out a fresh copy each call."""
    once = functools.lru_cache(maxsize=1)(builder)

    @functools.wraps(builder)
    def fresh() -> "onnx.ModelProto":
        return onnx.load_from_string(once())
    return fresh


def _torch_export(module, args, input_names, output_names, dynamic_axes, opset: int = 17) -> bytes:
    torch = pytest.importorskip("torch", reason="the exported test models need torch")
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # no torch.no_grad(): it switches on fused fast paths
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------- torch ---
@_cached
def torch_cnn() -> bytes:
    """Conv/BatchNormalization/Relu/MaxPool, a residual Add, GlobalAveragePool, Gemm;
    opset 17, dynamic batch. Input ``image`` [batch,3,16,16], output ``logits``."""
    torch = pytest.importorskip("torch", reason="the exported test models need torch")
    nn = torch.nn
    torch.manual_seed(SEED)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = self.stem(x)
            y = y + self.block(y)
            return self.fc(torch.flatten(self.pool(y), 1))

    net = Net()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so BN matters
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return _torch_export(net, (torch.randn(1, 3, 16, 16),), ["image"], ["logits"],
                         {"image": {0: "batch"}, "logits": {0: "batch"}})


@_cached
def torch_transformer() -> bytes:
    """nn.TransformerEncoderLayer with a causal -inf mask constant and a key padding mask
    input; inputs ``x`` [batch,6,16] float and ``pad`` [batch,6] bool."""
    torch = pytest.importorskip("torch", reason="the exported test models need torch")
    torch.manual_seed(SEED)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.register_buffer("causal", torch.triu(torch.full((6, 6), float("-inf")), 1))

        def forward(self, x, pad):
            return self.layer(x, src_mask=self.causal, src_key_padding_mask=pad)

    pad = torch.zeros(1, 6, dtype=torch.bool)
    return _torch_export(Encoder(), (torch.randn(1, 6, 16), pad), ["x", "pad"], ["y"],
                         {"x": {0: "batch"}, "pad": {0: "batch"}, "y": {0: "batch"}})


@_cached
def torch_shape_resize() -> bytes:
    """Resize (nearest, scale 2) then a Shape->Gather->Unsqueeze->Concat->Reshape chain
    (``view(batch, -1)``) and a Linear; input ``x`` [batch,4,4,4]."""
    torch = pytest.importorskip("torch", reason="the exported test models need torch")
    torch.manual_seed(SEED)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            y = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            return self.fc(y.reshape(y.shape[0], -1))

    return _torch_export(Net(), (torch.randn(1, 4, 4, 4),), ["x"], ["y"], {"x": {0: "batch"}, "y": {0: "batch"}})


# ------------------------------------------------------------------------ tf2onnx ---
@_cached
def tf_cnn() -> bytes:
    """A Keras CNN (Conv2D/BatchNormalization/ReLU/MaxPooling2D/GlobalAveragePooling2D/
    Dense+softmax) converted by tf2onnx at opset 17; input ``image`` [batch,8,8,3]."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow", reason="the tf2onnx test model needs tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx", reason="the tf2onnx test model needs tf2onnx")
    keras = pytest.importorskip("keras", reason="the tf2onnx test model needs keras")
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((8, 8, 3), name="image")
    y = keras.layers.Conv2D(4, 3, padding="same")(inp)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.MaxPooling2D(2)(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(5, activation="softmax")(y)
    model = keras.Model(inp, y)
    spec = [tf.TensorSpec([None, 8, 8, 3], tf.float32, name="image")]
    fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    return proto.SerializeToString()


# -------------------------------------------------------------------------- by hand ---
def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@_cached
def control_flow() -> bytes:
    """Opset 17, built with onnx.helper. Exercises:
    - ``If`` whose branches read the outer ``x`` and ``bias`` (then) or a subgraph
      initializer (else), the then branch holding a Constant node;
    - ``Loop`` whose body reads the outer ``bias`` and has a scan output;
    - ``bias``: an initializer that is also a graph input (position 1);
    - a model-local function ``local.fn::Double`` called by a node;
    - ``LSTM`` whose first (optional) output is omitted (``""``);
    - attributes of every kind: INT, INTS, FLOAT, STRING, TENSOR (ConstantOfShape),
      GRAPH, and a SPARSE_TENSOR Constant;
    - Cast to FLOAT16 and back, a node without a name, doc strings, metadata.
    """
    rng = np.random.default_rng(SEED)
    f32 = TensorProto.FLOAT
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["then_k"], value=numpy_helper.from_array(np.float32(2.0))),
         helper.make_node("Add", ["x", "bias"], ["then_sum"], name="then_add"),
         helper.make_node("Mul", ["then_sum", "then_k"], ["then_out"], name="then_mul")],
        "then_branch", [], [helper.make_tensor_value_info("then_out", f32, [2, 3])])
    else_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "else_scale"], ["else_out"], name="else_mul")],
        "else_branch", [], [helper.make_tensor_value_info("else_out", f32, [2, 3])],
        initializer=[numpy_helper.from_array(np.full(3, -1.5, np.float32), "else_scale")])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("Add", ["acc", "bias"], ["acc_out"], name="body_add"),
         helper.make_node("Identity", ["acc_out"], ["scan_out"], name="body_scan")],
        "loop_body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", f32, [2, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f32, [2, 3]),
         helper.make_tensor_value_info("scan_out", f32, [2, 3])])
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "sp_values"),
                                       numpy_helper.from_array(np.array([1, 4], np.int64), "sp_indices"), [2, 3])
    nodes = [
        helper.make_node("If", ["cond"], ["if_out"], name="branch", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Loop", ["trip", "", "x"], ["loop_acc", "loop_scan"], name="loop", body=body),
        helper.make_node("Double", ["x"], ["doubled"], name="call_double", domain="local.fn"),
        helper.make_node("LSTM", ["seq", "lstm_w", "lstm_r"], ["", "lstm_h"], name="lstm", hidden_size=2,
                         direction="forward", activations=["Sigmoid", "Tanh", "Tanh"]),
        helper.make_node("Transpose", ["x"], ["xt"], name="transpose", perm=[1, 0]),
        helper.make_node("Gemm", ["x", "xt"], ["gram"], name="gemm", alpha=0.5, beta=1.0),
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("ConstantOfShape", ["x_shape"], ["filled"], name="fill",
                         value=numpy_helper.from_array(np.array([0.25], np.float32))),
        helper.make_node("Constant", [], ["sparse_c"], name="sparse_const", sparse_value=sparse),
        helper.make_node("Add", ["filled", "sparse_c"], ["filled_sp"], name="add_sparse"),
        helper.make_node("Cast", ["filled_sp"], ["half"], to=TensorProto.FLOAT16),  # unnamed node
        helper.make_node("Cast", ["half"], ["back"], name="cast_back", to=TensorProto.FLOAT,
                         doc_string="cast back to float"),
    ]
    graph = helper.make_graph(
        nodes, "control_flow",
        [helper.make_tensor_value_info("x", f32, [2, 3]),
         helper.make_tensor_value_info("bias", f32, [3]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("trip", TensorProto.INT64, []),
         helper.make_tensor_value_info("seq", f32, [2, 1, 3])],
        [helper.make_tensor_value_info(n, f32, shape) for n, shape in
         (("if_out", [2, 3]), ("loop_acc", [2, 3]), ("loop_scan", ["trip_count", 2, 3]), ("doubled", [2, 3]),
          ("lstm_h", [1, 1, 2]), ("gram", [2, 2]), ("back", [2, 3]))],
        initializer=[numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "bias"),
                     numpy_helper.from_array(_f32(rng, 1, 8, 3), "lstm_w"),
                     numpy_helper.from_array(_f32(rng, 1, 8, 2), "lstm_r")],
        doc_string="graph with control flow")
    double = helper.make_function(
        "local.fn", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local.fn", 1)],
                              functions=[double], producer_name="mixprec-tests", producer_version="1.0",
                              doc_string="hand-built control flow model", domain="org.mixprec.tests",
                              model_version=7)
    model.ir_version = 8
    helper.set_model_props(model, {"author": "mixprec", "purpose": "round trip"})
    return model.SerializeToString()


@_cached
def shadowing() -> bytes:
    """An If whose then branch re-defines ``t``, a name the main graph also defines
    (after the If): the IR must rename one of them and the backend restore it."""
    f32 = TensorProto.FLOAT
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="then_relu")], "then_branch", [],
                                   [helper.make_tensor_value_info("t", f32, [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="else_neg")], "else_branch", [],
                                   [helper.make_tensor_value_info("e", f32, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["r"], name="if", then_branch=then_graph, else_branch=else_graph),
         helper.make_node("Abs", ["r"], ["t"], name="abs")],
        "shadowing",
        [helper.make_tensor_value_info("x", f32, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("t", f32, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@_cached
def exotic_types() -> bytes:
    """Opset 21: sequence and optional values, a TYPE_PROTO attribute, a string Constant,
    initializers of types the IR lacks (float8e4m3fnuz) or holds through ml_dtypes
    (int4, bfloat16)."""
    import ml_dtypes

    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("SequenceConstruct", ["x", "x"], ["seq"], name="make_seq"),
        helper.make_node("SequenceAt", ["seq", "one"], ["picked"], name="seq_at"),
        helper.make_node("Optional", ["x"], ["opt"], name="wrap"),
        helper.make_node("OptionalGetElement", ["opt"], ["got"], name="unwrap"),
        helper.make_node("Optional", [], ["nothing"], name="empty", type=helper.make_tensor_type_proto(f32, [2])),
        helper.make_node("OptionalHasElement", ["nothing"], ["has"], name="has"),
        helper.make_node("DequantizeLinear", ["q8", "scale"], ["deq8"], name="deq8"),
        helper.make_node("DequantizeLinear", ["q4", "scale"], ["deq4"], name="deq4"),
        helper.make_node("Cast", ["half"], ["half32"], name="widen", to=f32),
        helper.make_node("Constant", [], ["words"], name="words",
                         value=numpy_helper.from_array(np.array(["a", "b\u00e9"], dtype=object))),
        helper.make_node("Identity", ["words"], ["words_out"], name="words_id"),
    ]
    outputs = [("picked", f32, [2]), ("got", f32, [2]), ("has", TensorProto.BOOL, []), ("deq8", f32, [3]),
               ("deq4", f32, [3]), ("half32", f32, [2]), ("words_out", TensorProto.STRING, [2])]
    graph = helper.make_graph(
        nodes, "exotic", [helper.make_tensor_value_info("x", f32, [2])],
        [helper.make_tensor_value_info(*out) for out in outputs],
        initializer=[numpy_helper.from_array(np.array(1, np.int64), "one"),
                     numpy_helper.from_array(np.array([1, 2, -3], dtype=ml_dtypes.float8_e4m3fnuz), "q8"),
                     numpy_helper.from_array(np.array([1, 2, -3], dtype=ml_dtypes.int4), "q4"),
                     numpy_helper.from_array(np.float32(0.5), "scale"),
                     numpy_helper.from_array(np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def matmul_model(rows: int = 16, cols: int = 8) -> "onnx.ModelProto":
    """``y = x @ w + b`` (MatMul, Add), opset 17, input ``x`` [batch,rows]."""
    rng = np.random.default_rng(SEED)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
         helper.make_node("Add", ["xw", "b"], ["y"], name="add")],
        "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        initializer=[numpy_helper.from_array(_f32(rng, rows, cols), "w"),
                     numpy_helper.from_array(_f32(rng, cols), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def external_data_model(directory: Path) -> Path:
    """``matmul_model`` saved at ``directory/external.onnx`` with every tensor in
    ``external.onnx.data``; returns the model path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "external.onnx"
    onnx.save_model(matmul_model(64, 32), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.onnx.data", size_threshold=0)
    return path


#: name -> builder of every round-trip model (names are test ids)
MODELS: dict[str, Callable[[], "onnx.ModelProto"]] = {
    "torch_cnn": torch_cnn,
    "torch_transformer": torch_transformer,
    "torch_shape_resize": torch_shape_resize,
    "tf_cnn": tf_cnn,
    "control_flow": control_flow,
    "shadowing": shadowing,
    "exotic_types": exotic_types,
    "matmul": matmul_model,
}


def feeds(name: str, proto: "onnx.ModelProto") -> dict[str, np.ndarray]:
    """Deterministic inputs for model ``name`` (batch 2 where the batch is dynamic)."""
    rng = np.random.default_rng(SEED)
    if name == "control_flow":
        return {"x": _f32(rng, 2, 3), "cond": np.array(True), "trip": np.array(3, np.int64),
                "seq": _f32(rng, 2, 1, 3)}
    if name == "shadowing":
        return {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(True)}
    if name == "torch_transformer":
        pad = np.zeros((BATCH, 6), dtype=bool)
        pad[1, 4:] = True
        return {"x": _f32(rng, BATCH, 6, 16), "pad": pad}
    return generated_feeds(proto)


def generated_feeds(proto: "onnx.ModelProto", batch: int = BATCH) -> dict[str, np.ndarray]:
    """The output check's first generated sample inputs for ``proto``
    (``mixprec.runtimes.onnx.candidate_feeds``), with ``batch`` on every dynamic
    leading dim."""
    from mixprec.runtimes.onnx import candidate_feeds, input_specs
    from mixprec.frontends.onnx import load

    model = load(proto)
    first = next(candidate_feeds(model))
    shapes = {s.name: (batch, *first[s.name].shape[1:]) for s in input_specs(model)
              if s.shape and not isinstance(s.shape[0], int)}
    return next(candidate_feeds(model, shapes))


def graphs_attribute() -> "onnx.ModelProto":
    """A custom-domain node ``test.ops::Multi`` with a GRAPHS attribute whose two graphs
    read the outer ``x`` (the checker skips unknown domains; nothing can run it)."""
    f32 = TensorProto.FLOAT
    bodies = [helper.make_graph([helper.make_node(op, ["x"], [f"{op.lower()}_y"], name=f"inner_{op.lower()}")],
                                f"body_{op.lower()}", [], [helper.make_tensor_value_info(f"{op.lower()}_y", f32, [2])])
              for op in ("Relu", "Neg")]
    node = helper.make_node("Multi", ["x"], ["y"], name="multi", domain="test.ops")
    node.attribute.append(helper.make_attribute("bodies", bodies))
    graph = helper.make_graph([node], "graphs_attr", [helper.make_tensor_value_info("x", f32, [2])],
                              [helper.make_tensor_value_info("y", f32, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.ops", 1)])
    model.ir_version = 8
    return model


# ---------------------------------------------------- shapes real exporters produce ---
def _conv(rng: np.random.Generator, name: str, x: str, cin: int, cout: int, inits: list, stride: int = 1,
          k: int = 3, scale: float = 1.0) -> "onnx.NodeProto":
    """A Conv node reading ``x`` (He-scaled weights times ``scale``), weights in ``inits``."""
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32) * np.float32(scale * np.sqrt(2.0 / (cin * k * k)))
    inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(_f32(rng, cout) / 10, f"{name}.b")]
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, pads=[k // 2] * 4,
                            strides=[stride, stride])


def negative_dim_model() -> "onnx.ModelProto":
    """``y = x @ w``, input ``x`` declared ``[-1, 8]`` (``dim_value: -1``, as PaddlePaddle
    exports write an unknown dim), opset 17."""
    model = matmul_model(8, 4)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    return model


def detector_model(stride: int = 32) -> "onnx.ModelProto":
    """A YOLO-style detector: input ``images`` [batch,3,H,W] (dynamic H/W); Conv stride-2
    stages down to ``stride``, the last feature map upsampled x2 (Resize) and concatenated
    with the one before, so H and W must be multiples of ``stride`` (H=W=1 fails in
    Concat). Outputs ``boxes`` [batch,6,H/(stride/2),W/(stride/2)]. Opset 17."""
    rng = np.random.default_rng(SEED)
    inits: list = []
    nodes, x, cin = [], "images", 3
    stages = int(np.log2(stride))
    for i in range(stages):
        cout = 8 * (i + 1)
        nodes += [_conv(rng, f"down{i}", x, cin, cout, inits, stride=2),
                  helper.make_node("Relu", [f"down{i}"], [f"act{i}"], name=f"act{i}")]
        x, cin = f"act{i}", cout
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up.scales"))
    nodes += [helper.make_node("Resize", [x, "", "up.scales"], ["up"], name="up", mode="nearest"),
              helper.make_node("Concat", ["up", f"act{stages - 2}"], ["fused"], name="fuse", axis=1),
              _conv(rng, "head", "fused", cin + 8 * (stages - 1), 6, inits, k=1)]
    nodes[-1].output[0] = "boxes"
    graph = helper.make_graph(nodes, "detector",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 6, "out_h", "out_w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def text_line_model() -> "onnx.ModelProto":
    """A text-line recognizer's corner, as PaddleOCR exports write it: input ``x``
    [batch,3,h,w] (dynamic h/w), Conv -> Relu, then a Reshape to [batch, 8, 1024] whose
    target is computed from the feature map's shape (a Slice ending at ``rank - 2``), so
    shape inference leaves the Reshape's output of unknown rank and only h*w = 1024 runs
    (32x32; onnxruntime and the reference evaluator reject 224x224), then MatMul to
    ``y`` [batch,8,16]. Opset 17."""
    rng = np.random.default_rng(SEED)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "conv.w"),
             numpy_helper.from_array((rng.standard_normal((1024, 16)) * 0.05).astype(np.float32), "fc.w")]

    def const(name: str, values: list[int]) -> "onnx.NodeProto":
        return helper.make_node("Constant", [], [name], name=name,
                                value=numpy_helper.from_array(np.array(values, np.int64), name))
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"], name="act"),
             helper.make_node("Shape", ["act"], ["act.shape"], name="act.shape"),
             const("starts", [0]), const("two", [2]), const("rest", [1024]),
             helper.make_node("Shape", ["act.shape"], ["rank"], name="rank"),
             helper.make_node("Sub", ["rank", "two"], ["stop"], name="stop"),
             helper.make_node("Slice", ["act.shape", "starts", "stop"], ["lead"], name="lead"),
             helper.make_node("Concat", ["lead", "rest"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["act", "target"], ["flat"], name="flat"),
             helper.make_node("MatMul", ["flat", "fc.w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "text_line",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def bn_opset12_model() -> "onnx.ModelProto":
    """Conv -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten -> Gemm at
    opset 12, where BatchNormalization has one type parameter for X, scale, B, mean and
    var. Input ``x`` [batch,3,16,16], output ``logits``; calibrated running statistics."""
    rng = np.random.default_rng(SEED)
    inits: list = []
    nodes = [_conv(rng, "conv", "x", 3, 8, inits)]
    inits += [numpy_helper.from_array((1 + _f32(rng, 8) / 10), "bn.scale"),
              numpy_helper.from_array(_f32(rng, 8) / 10, "bn.bias"),
              numpy_helper.from_array(_f32(rng, 8) / 10, "bn.mean"),
              numpy_helper.from_array((1 + np.abs(_f32(rng, 8))), "bn.var"),
              numpy_helper.from_array(_f32(rng, 4, 8), "fc.w"), numpy_helper.from_array(_f32(rng, 4), "fc.b")]
    nodes += [helper.make_node("BatchNormalization", ["conv", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"],
                               name="bn", epsilon=1e-5),
              helper.make_node("Relu", ["bn"], ["relu"], name="relu"),
              helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "bn12", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    return model


def deep_residual_model(blocks: int = 158, channels: int = 8, side: int = 8) -> "onnx.ModelProto":
    """A deep residual CNN: a stem Conv, then ``blocks`` blocks ``x + Conv(Relu(Conv(x)))``,
    then GlobalAveragePool and Gemm. Input ``x`` [1,3,side,side], output ``logits``
    [1,10]. Activations grow along the residual path to ~1e3-1e5, where one bf16 ulp is
    large, as in deep real networks. Opset 17."""
    rng = np.random.default_rng(SEED)
    inits: list = []
    nodes = [_conv(rng, "stem", "x", 3, channels, inits)]
    x = "stem"
    for i in range(blocks):
        nodes += [_conv(rng, f"b{i}.c1", x, channels, channels, inits, scale=0.5),
                  helper.make_node("Relu", [f"b{i}.c1"], [f"b{i}.r"], name=f"b{i}.relu"),
                  _conv(rng, f"b{i}.c2", f"b{i}.r", channels, channels, inits, scale=0.5),
                  helper.make_node("Add", [x, f"b{i}.c2"], [f"b{i}.out"], name=f"b{i}.add")]
        x = f"b{i}.out"
    inits += [numpy_helper.from_array(_f32(rng, 10, channels), "fc.w"), numpy_helper.from_array(_f32(rng, 10), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "deep_residual",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ------------------------------------- hostile variants of matmul_model (issue 8) ---
# Each mutates a fresh ``matmul_model()`` in place (or returns such a mutator); the frontend
# tests assert the exact error, the robustness tests the CLI contract.


def matmul_weight(proto):
    """The MatMul weight initializer 'w' of matmul_model (16x8 float)."""
    return next(t for t in proto.graph.initializer if t.name == "w")


def short_raw_data(proto):
    w = matmul_weight(proto)
    data = numpy_helper.to_array(w).tobytes()
    w.ClearField("float_data")
    w.raw_data = data[:10]


def huge_dims(keep_data):
    def mutate(proto):
        w = matmul_weight(proto)
        del w.dims[:]
        w.dims.extend([10**10])
        if not keep_data:
            w.ClearField("raw_data")
            w.ClearField("float_data")
    return mutate


def huge_constant(proto):
    huge = onnx.TensorProto(name="cv", data_type=onnx.TensorProto.FLOAT, dims=[10**10])
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["cv"], name="big", value=huge))
    proto.graph.node[1].input[1] = "cv"


def element_type(value):
    def mutate(proto):
        matmul_weight(proto).data_type = value
    return mutate


def negative_dim(proto):
    w = matmul_weight(proto)
    w.dims[0] = -16


def sparse_initializer(indices, dims):
    def mutate(proto):
        del proto.graph.initializer[1]  # b
        values = numpy_helper.from_array(np.ones(len(indices), np.float32), "b")
        proto.graph.sparse_initializer.append(helper.make_sparse_tensor(
            values, numpy_helper.from_array(np.array(indices, np.int64), "b_idx"), dims))
    return mutate


def sparse_constant(proto):
    values = numpy_helper.from_array(np.ones(2, np.float32), "sv")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([1, 50], np.int64)), [8])
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["sb"], name="sc", sparse_value=sparse))
    proto.graph.node[2].input[1] = "sb"


def undeclared_domain(proto):
    proto.graph.node[1].domain = "com.example"
