"""Digits-trained models with planted sensitive nodes, for the tuning and error-budget
tests: ``(h + 4096) - 4096`` between layers is exact in FP32 but rounds ``h`` to multiples
of 32 in BF16 (8 bits of mantissa), so each planted Add alone wrecks the accuracy. The
innocent Adds (biases) are the same op type.

The deep MLPs are trained cheaply: hidden layers are near-identity (``relu(W h + b)`` with
``W = I + noise``, positive inputs), the classifier on top is a softmax regression fitted
with numpy on scikit-learn's bundled digits (no download)."""
from __future__ import annotations

import functools
from typing import Any
from dataclasses import dataclass

import numpy as np

PLANT = 4096.0


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def _softmax_regression(features: np.ndarray, labels: np.ndarray, steps: int = 300) -> tuple[np.ndarray, np.ndarray]:
    w = np.zeros((features.shape[1], 10), np.float64)
    b = np.zeros(10, np.float64)
    onehot = np.eye(10)[labels]
    for _ in range(steps):
        logits = features @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / len(features)
        w -= 2.0 * features.T @ grad
        b -= 2.0 * grad.sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)


def mlp_weights(layers: int, seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Hidden (W, b) pairs of a ``layers``-deep 64-wide MLP and the trained classifier."""
    rng = np.random.default_rng(seed)
    # the product of the layers stays near identity at any depth (entries within ~0.01), and
    # the biases add up to at most 0.2: BF16's rounding alone barely moves the decisions
    noise, bias = 0.01 / np.sqrt(max(layers, 1)), 0.2 / max(layers, 10)
    hidden = [((np.eye(64) + rng.normal(0, noise, (64, 64))).astype(np.float32),
               rng.uniform(0.0, bias, 64).astype(np.float32)) for _ in range(layers)]
    x, y, _, _ = digits()
    h = x.astype(np.float64)
    for w, b in hidden:
        h = np.maximum(h @ w + b, 0)
    return hidden, _softmax_regression(h.astype(np.float32), y)


@dataclass
class Block:
    """One hidden layer: ``relu(dense/conv(h) + b)`` (+ ``h`` when ``residual``), then
    ``(h + 4096) - 4096`` when ``planted``. Dense ``w`` is [in, out]; conv ``w`` is
    [out, in, 3, 3] (stride 1, padding 1) on 8x8 images."""
    kind: str
    w: np.ndarray
    b: np.ndarray
    residual: bool = False
    planted: bool = False


@dataclass
class Spec:
    """A framework-neutral digits model: the blocks, then a trained classifier ``(wc, bc)``
    on the flattened features (NCHW order for conv models). Input ``x: [N, 64]``; conv
    models view it as one 8x8 channel."""
    name: str
    blocks: list[Block]
    head: tuple[np.ndarray, np.ndarray]

    @property
    def image(self) -> bool:
        return any(block.kind == "conv" for block in self.blocks)

    @property
    def channels(self) -> int:
        return self.blocks[-1].w.shape[0]


def _conv(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A 3x3 convolution with padding 1, NCHW, in numpy (to fit the classifier)."""
    padded = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((h.shape[0], w.shape[0]) + h.shape[2:])
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nihw,oi->nohw", padded[:, :, dy:dy + h.shape[2], dx:dx + h.shape[3]], w[:, :, dy, dx])
    return out


def _features(blocks: list[Block], x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    if any(block.kind == "conv" for block in blocks):
        h = h.reshape(-1, 1, 8, 8)
    for block in blocks:
        out = _conv(h, block.w) + block.b.reshape(1, -1, 1, 1) if block.kind == "conv" else h @ block.w + block.b
        out = np.maximum(out, 0)
        h = h + out if block.residual else out
    return h.reshape(len(x), -1).astype(np.float32)


def _with_head(name: str, blocks: list[Block], planted: list[int]) -> Spec:
    for i in planted:
        blocks[i].planted = True
    x, y, _, _ = digits()
    return Spec(name, blocks, _softmax_regression(_features(blocks, x), y))


def mlp_spec(layers: int, planted: list[int], residual: bool = False, seed: int = 0) -> Spec:
    """The near-identity MLP of :func:`mlp_weights` (residual: each block adds half of its
    deviation from identity to the stream)."""
    hidden, _ = mlp_weights(layers, seed)
    if residual:  # keep the residual stream's scale: halve each block's contribution
        hidden = [((w - np.eye(64, dtype=np.float32)) * 0.5, b * 0.5) for w, b in hidden]
    return _with_head(f"{'residual_' if residual else ''}mlp{layers}",
                      [Block("dense", w, b, residual) for w, b in hidden], planted)


def cnn_spec(blocks: int, planted: list[int], channels: int = 8, seed: int = 0) -> Spec:
    """``blocks`` 3x3 conv layers of ``channels`` channels, near-identity at the centre tap
    (each channel a slightly different copy of the image), bias Add, ReLU."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(blocks):
        inputs = 1 if i == 0 else channels
        w = rng.normal(0, 0.05, (channels, inputs, 3, 3))
        w[:, :, 1, 1] += np.ones((channels, 1)) if i == 0 else np.eye(channels)
        layers.append(Block("conv", w.astype(np.float32), rng.uniform(0.0, 0.02, channels).astype(np.float32)))
    return _with_head(f"cnn{blocks}", layers, planted)


def onnx_mlp(layers: int, planted: list[int], residual: bool = False, seed: int = 0):
    """An ONNX MLP: per layer MatMul -> Add(bias) -> Relu (+ the input, when ``residual``),
    with ``(h + 4096) - 4096`` after each layer in ``planted``. Input ``x: [N, 64]``."""
    return onnx_model(mlp_spec(layers, planted, residual, seed))


def onnx_model(spec: Spec):
    """``spec`` as an ONNX model (opset 17; Conv models opset 22, for BF16 Conv): per block
    MatMul or Conv ``mm{i}``, bias Add ``ba{i}``, Relu ``r{i}``, residual Add ``res{i}``,
    planted Add ``up{i}`` and Sub ``down{i}``; the classifier MatMul ``mmc``, Add ``logits``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(np.array([PLANT], np.float32), "plant")]
    h = "x"
    if spec.image:
        inits.append(numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "image_shape"))
        nodes.append(helper.make_node("Reshape", ["x", "image_shape"], ["image"], name="image"))
        h = "image"
    for i, block in enumerate(spec.blocks):
        bias = block.b.reshape(1, -1, 1, 1) if block.kind == "conv" else block.b
        inits += [numpy_helper.from_array(block.w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes.append(helper.make_node("Conv", [h, f"w{i}"], [f"mm{i}"], name=f"mm{i}", pads=[1, 1, 1, 1])
                     if block.kind == "conv" else helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"], name=f"mm{i}"))
        nodes += [helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"ba{i}"], name=f"ba{i}"),
                  helper.make_node("Relu", [f"ba{i}"], [f"r{i}"], name=f"r{i}")]
        out = f"r{i}"
        if block.residual:
            nodes.append(helper.make_node("Add", [h, out], [f"res{i}"], name=f"res{i}"))
            out = f"res{i}"
        if block.planted:
            nodes += [helper.make_node("Add", [out, "plant"], [f"up{i}"], name=f"up{i}"),
                      helper.make_node("Sub", [f"up{i}", "plant"], [f"down{i}"], name=f"down{i}")]
            out = f"down{i}"
        h = out
    wc, bc = spec.head
    if spec.image:
        nodes.append(helper.make_node("Flatten", [h], ["flat"], name="flat"))
        h = "flat"
    inits += [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(bc, "bc")]
    nodes += [helper.make_node("MatMul", [h, "wc"], ["mmc"], name="mmc"),
              helper.make_node("Add", ["mmc", "bc"], ["logits"], name="logits")]
    graph = helper.make_graph(nodes, f"digits_{spec.name}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22 if spec.image else 17)])
    onnx.checker.check_model(model)
    return model


def onnx_top1(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an FP32 or BF16 ONNX model (BF16 through mixprec's exact
    float emulation in onnxruntime, since onnxruntime's CPU provider has no BF16 kernels)."""
    from mixprec.runtimes.onnx import emulate_in_float, run_onnxruntime
    from mixprec.ir.dtypes import DType
    runnable = emulate_in_float(model, DType.BFLOAT16)
    logits = run_onnxruntime(runnable, {"x": x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == y))


def torch_mlp(layers: int, planted: list[int], seed: int = 0):
    """The same MLP as a torch module (Linear -> ReLU, the planted ``(h + 4096) - 4096``)."""
    import torch

    hidden, (wc, bc) = mlp_weights(layers, seed)

    class PlantedMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lins = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in hidden)
            for lin, (w, b) in zip(self.lins, hidden):
                lin.weight.data = torch.tensor(w.T.copy())
                lin.bias.data = torch.tensor(b)
            self.head = torch.nn.Linear(64, 10)
            self.head.weight.data = torch.tensor(wc.T.copy())
            self.head.bias.data = torch.tensor(bc)

        def forward(self, x):
            for i, lin in enumerate(self.lins):
                x = torch.relu(lin(x))
                if i in planted:
                    x = (x + PLANT) - PLANT
            return self.head(x)
    return PlantedMLP().eval()


def torch_model(spec: Spec):
    """``spec`` as a torch module with explicit ops: ``h @ w + b`` (or ``conv2d(h, w) + b``),
    ``relu``, the residual ``+`` and the planted ``(h + 4096) - 4096``, so that every Add is
    ``aten.add.Tensor``."""
    import torch

    class DigitsModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = torch.nn.ParameterList(torch.nn.Parameter(torch.tensor(b.w), requires_grad=False)
                                                  for b in spec.blocks)
            self.biases = torch.nn.ParameterList(
                torch.nn.Parameter(torch.tensor(b.b.reshape(1, -1, 1, 1) if b.kind == "conv" else b.b),
                                   requires_grad=False) for b in spec.blocks)
            self.wc = torch.nn.Parameter(torch.tensor(spec.head[0]), requires_grad=False)
            self.bc = torch.nn.Parameter(torch.tensor(spec.head[1]), requires_grad=False)

        def forward(self, x):
            h = x.reshape(-1, 1, 8, 8) if spec.image else x
            for block, w, b in zip(spec.blocks, self.weights, self.biases):
                out = torch.nn.functional.conv2d(h, w, padding=1) if block.kind == "conv" else h @ w
                out = torch.relu(out + b)
                h = h + out if block.residual else out
                if block.planted:
                    h = (h + PLANT) - PLANT
            return h.flatten(1) @ self.wc + self.bc
    return DigitsModel().eval()


def tf_model(spec: Spec):
    """``spec`` as a ``tf.function`` (input ``[None, 64]``) with explicit ops: MatMul (or
    NHWC Conv2D) then AddV2 for the bias, Relu, the residual AddV2 and the planted AddV2 and
    Sub, so that every Add is ``AddV2``."""
    import tensorflow as tf

    weights = [tf.constant(b.w.transpose(2, 3, 1, 0) if b.kind == "conv" else b.w) for b in spec.blocks]
    biases = [tf.constant(b.b) for b in spec.blocks]
    wc, bc = spec.head
    if spec.image:  # the head reads NCHW-flattened features; TF flattens NHWC
        wc = wc.reshape(spec.channels, 8, 8, 10).transpose(1, 2, 0, 3).reshape(-1, 10)
    wc, bc = tf.constant(wc), tf.constant(bc)

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32)])
    def digits_model(x):
        h = tf.reshape(x, [-1, 8, 8, 1]) if spec.image else x
        for block, w, b in zip(spec.blocks, weights, biases):
            out = tf.nn.conv2d(h, w, 1, "SAME") if block.kind == "conv" else tf.matmul(h, w)
            out = tf.nn.relu(tf.add(out, b))
            h = tf.add(h, out) if block.residual else out
            if block.planted:
                h = tf.subtract(tf.add(h, PLANT), PLANT)
        return tf.add(tf.matmul(tf.reshape(h, [-1, wc.shape[0]]), wc), bc)
    return digits_model


def mxnet_model(spec: Spec):
    """``spec`` as a Gluon HybridBlock (parameters set, not hybridized): FullyConnected or
    Convolution without bias, ``broadcast_add`` of the bias, ``relu``, the residual and the
    planted ``broadcast_add``/``broadcast_sub``, so that every Add is ``broadcast_add``."""
    from mixprec.frontends.mxnet import mx

    class DigitsModel(mx.gluon.HybridBlock):
        def __init__(self) -> None:
            super().__init__(prefix=f"{spec.name}_")
            self.arrays = {"plant": np.array([PLANT], np.float32), "wc": spec.head[0].T.copy(), "bc": spec.head[1]}
            for i, block in enumerate(spec.blocks):
                self.arrays[f"w{i}"] = block.w if block.kind == "conv" else block.w.T.copy()
                self.arrays[f"b{i}"] = block.b.reshape(1, -1, 1, 1) if block.kind == "conv" else block.b.reshape(1, -1)
            with self.name_scope():
                for name, value in self.arrays.items():  # an attribute registers it for hybrid_forward
                    setattr(self, name, self.params.get(name, shape=value.shape, grad_req="null"))

        def hybrid_forward(self, F, x, **p):
            h = F.reshape(x, shape=(-1, 1, 8, 8)) if spec.image else x
            for i, block in enumerate(spec.blocks):
                w = p[f"w{i}"]
                out = (F.Convolution(h, w, kernel=(3, 3), pad=(1, 1), num_filter=block.w.shape[0], no_bias=True)
                       if block.kind == "conv" else F.FullyConnected(h, w, num_hidden=block.w.shape[1], no_bias=True))
                out = F.relu(F.broadcast_add(out, p[f"b{i}"]))
                h = F.broadcast_add(h, out) if block.residual else out
                if block.planted:
                    h = F.broadcast_sub(F.broadcast_add(h, p["plant"]), p["plant"])
            h = F.flatten(h) if spec.image else h
            return F.broadcast_add(F.FullyConnected(h, p["wc"], num_hidden=10, no_bias=True), p["bc"])

    net = DigitsModel()
    net.initialize()
    for name, value in net.arrays.items():
        getattr(net, name).set_data(mx.nd.array(value))
    return net


@dataclass
class Framework:
    """How the tuning tests build, configure and score a digits model in one framework:
    ``build(spec)`` the native FP32 model, ``config(model)`` the fit() keywords it needs
    (example inputs), ``top1(model)`` the test-set accuracy of an FP32 or converted model,
    ``fingerprint(converted)`` bytes that differ when two converted models compute differently
    (their graph text, casts and dtypes included)."""
    name: str
    build: Any
    config: Any
    top1: Any
    fingerprint: Any


def _logits(out: Any) -> np.ndarray:
    """The first output of a model call (a tensor, or a list/tuple of them) as numpy."""
    while isinstance(out, (list, tuple)):
        out = out[0]
    for method in ("asnumpy", "numpy"):
        if hasattr(out, method):
            out = getattr(out, method)()
            break
    return np.asarray(out, dtype=np.float32)


def _accuracy(logits: Any) -> float:
    return float(np.mean(np.argmax(_logits(logits), axis=1) == digits()[3]))


def _torch_top1(module: Any) -> float:
    import torch
    with torch.no_grad():
        return _accuracy(module(torch.tensor(digits()[2])).float())


def _mxnet_top1(block: Any) -> float:
    from mixprec.frontends.mxnet import mx
    out = block(mx.nd.array(digits()[2]))
    out = out[0] if isinstance(out, (list, tuple)) else out
    return _accuracy(out.astype("float32"))


def _torch_config(_: Any) -> dict:
    import torch
    return {"example_inputs": (torch.tensor(digits()[2][:4]),), "dynamic_batch": True}


def _mxnet_config(_: Any) -> dict:
    from mixprec.frontends.mxnet import mx
    return {"example_inputs": (mx.nd.array(digits()[2][:4]),)}


def _torch_fingerprint(module: Any) -> bytes:
    dtypes = sorted((name, str(t.dtype)) for name, t in [*module.named_parameters(), *module.named_buffers()])
    return (module.graph_module.code + repr(dtypes)).encode()


def _mxnet_fingerprint(block: Any) -> bytes:
    dtypes = sorted((name, str(p.dtype)) for name, p in block.collect_params().items())
    return (block._cached_graph[1].tojson(remove_amp_cast=False) + repr(dtypes)).encode()


FRAMEWORKS = {
    "onnx": Framework("onnx", onnx_model, lambda _: {}, lambda m: onnx_top1(m, *digits()[2:]),
                      lambda m: m.SerializeToString()),
    "torch": Framework("torch", torch_model, _torch_config, _torch_top1, _torch_fingerprint),
    "tensorflow": Framework("tensorflow", tf_model, lambda _: {}, lambda f: _accuracy(f(digits()[2])),
                            lambda g: g.graph_def.SerializeToString()),
    "mxnet": Framework("mxnet", mxnet_model, _mxnet_config, _mxnet_top1, _mxnet_fingerprint),
}
