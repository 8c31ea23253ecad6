"""A model whose BF16 error is diffuse, like MobileNet's or ResNet-50's: no single node is
to blame, every conv adds a little. A deep CNN of depthwise + pointwise convs with seeded
random (He) weights and BatchNorm statistics calibrated on a seeded batch (so that every
layer's activations are normalized, as in a trained network), ending in a classifier and
Softmax. Built in ONNX with onnx.helper and calibrated in onnxruntime."""
from __future__ import annotations

import functools

import numpy as np


def _bn(prefix: str, x: str, channels: int, inits: list) -> tuple[list, str]:
    from onnx import helper, numpy_helper
    names = [f"{prefix}.{k}" for k in ("scale", "bias", "mean", "var")]
    values = [np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels)]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in zip(names, values)]
    return [helper.make_node("BatchNormalization", [x, *names], [f"{prefix}.out"], name=prefix)], f"{prefix}.out"


def _conv(prefix: str, x: str, cin: int, cout: int, kernel: int, group: int, rng, inits: list) -> tuple[list, str]:
    from onnx import helper, numpy_helper
    w = rng.standard_normal((cout, cin // group, kernel, kernel)) * np.sqrt(2.0 / (cin // group * kernel * kernel))
    inits.append(numpy_helper.from_array(w.astype(np.float32), f"{prefix}.w"))
    node = helper.make_node("Conv", [x, f"{prefix}.w"], [f"{prefix}.out"], name=prefix, group=group,
                            kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4)
    return [node], f"{prefix}.out"


def classifier_model(nodes: list, inits: list, x: str, weight: np.ndarray, side: int, name: str):
    """The ONNX model (IR 8, opset 17) of ``nodes`` on input x[1, 3, side, side] ending in
    global pool, Flatten, Gemm by ``weight`` ([channels, classes], zero bias) and Softmax
    (output ``probs``); ``inits`` are the initializers ``nodes`` read."""
    from onnx import TensorProto, helper, numpy_helper
    classes = weight.shape[1]
    inits = inits + [numpy_helper.from_array(weight.astype(np.float32), "fc.w"),
                     numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b")]
    nodes = nodes + [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
                     helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
                     helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc"),
                     helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@functools.lru_cache(maxsize=None)
def depthwise_cnn(blocks: int = 12, channels: int = 24, side: int = 32, seed: int = 0):
    """The model (onnx.ModelProto): stem conv, ``blocks`` x (depthwise 3x3, BN, Relu,
    pointwise 1x1, BN, Relu), global pool, Gemm to 10 classes, Softmax; BN calibrated."""
    from onnx import helper
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes, x = _conv("stem", "x", 3, channels, 3, 1, rng, inits)
    bns = []
    for i in range(blocks):
        for kind, kernel, group in (("dw", 3, channels), ("pw", 1, 1)):
            conv, x = _conv(f"b{i}.{kind}", x, channels, channels, kernel, group, rng, inits)
            bn, x = _bn(f"b{i}.{kind}.bn", x, channels, inits)
            bns.append(bn[0].name)
            nodes += conv + bn + [helper.make_node("Relu", [x], [f"b{i}.{kind}.relu"], name=f"b{i}.{kind}.relu")]
            x = f"b{i}.{kind}.relu"
    w = rng.standard_normal((channels, 10)) * np.sqrt(2.0 / channels)
    model = classifier_model(nodes, inits, x, w, side, "diffuse")
    _calibrate(model, bns, rng.standard_normal((8, 3, side, side)).astype(np.float32))
    return model


def _calibrate(model, bns: list[str], batch: np.ndarray) -> None:
    """Set each BatchNormalization's mean/var to its input's statistics on ``batch``, in
    order (each calibrated layer changes what the next one sees), running the chain of
    Conv / BatchNormalization / Relu in numpy."""
    from onnx import numpy_helper
    inits = {t.name: t for t in model.graph.initializer}
    values = {"x": batch.astype(np.float64)}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "BatchNormalization", "Relu"):
            break
        x = values[node.input[0]]
        if node.op_type == "Conv":
            group = next(a.i for a in node.attribute if a.name == "group")
            values[node.output[0]] = _conv_numpy(x, numpy_helper.to_array(inits[node.input[1]]), group)
        elif node.op_type == "Relu":
            values[node.output[0]] = np.maximum(x, 0.0)
        else:
            mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)) + 1e-5
            for name, stat in ((node.input[3], mean), (node.input[4], var)):
                inits[name].CopyFrom(numpy_helper.from_array(stat.astype(np.float32), name))
            values[node.output[0]] = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)


def _conv_numpy(x: np.ndarray, w: np.ndarray, group: int) -> np.ndarray:
    """NCHW convolution, stride 1, 'same' padding, for 1x1 kernels and depthwise/dense 3x3."""
    k = w.shape[-1]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    height, width = x.shape[2:]
    out = np.zeros((x.shape[0], w.shape[0], height, width))
    for i in range(k):
        for j in range(k):
            patch = padded[:, :, i:i + height, j:j + width]
            if group == 1:
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
            else:  # depthwise: one input channel per output channel
                out += patch * w[None, :, 0, i, j, None, None]
    return out
