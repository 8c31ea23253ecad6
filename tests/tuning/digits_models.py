"""Digits-trained models with planted sensitive nodes, for the tuning and error-budget
tests: ``(h + 4096) - 4096`` between layers is exact in FP32 but rounds ``h`` to multiples
of 32 in BF16 (8 bits of mantissa), so each planted Add alone wrecks the accuracy. The
innocent Adds (biases) are the same op type.

The deep MLPs are trained cheaply: hidden layers are near-identity (``relu(W h + b)`` with
``W = I + noise``, positive inputs), the classifier on top is a softmax regression fitted
with numpy on scikit-learn's bundled digits (no download)."""
from __future__ import annotations

import functools

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
    noise = 0.06 / np.sqrt(max(layers, 1))  # keeps the product of the layers near identity at any depth
    hidden = [((np.eye(64) + rng.normal(0, noise, (64, 64))).astype(np.float32),
               rng.uniform(0.0, 0.02, 64).astype(np.float32)) for _ in range(layers)]
    x, y, _, _ = digits()
    h = x.astype(np.float64)
    for w, b in hidden:
        h = np.maximum(h @ w + b, 0)
    return hidden, _softmax_regression(h.astype(np.float32), y)


def onnx_mlp(layers: int, planted: list[int], residual: bool = False, seed: int = 0):
    """An ONNX MLP: per layer MatMul -> Add(bias) -> Relu (+ the input, when ``residual``),
    with ``(h + 4096) - 4096`` after each layer in ``planted``. Input ``x: [N, 64]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden, (wc, bc) = mlp_weights(layers, seed)
    if residual:  # keep the residual stream's scale: halve each block's contribution
        hidden = [((w - np.eye(64, dtype=np.float32)) * 0.5, b * 0.5) for w, b in hidden]
    nodes, inits = [], [numpy_helper.from_array(np.array([PLANT], np.float32), "plant")]
    h = "x"
    for i, (w, b) in enumerate(hidden):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"ba{i}"], name=f"ba{i}"),
                  helper.make_node("Relu", [f"ba{i}"], [f"r{i}"], name=f"r{i}")]
        out = f"r{i}"
        if residual:
            nodes.append(helper.make_node("Add", [h, out], [f"res{i}"], name=f"res{i}"))
            out = f"res{i}"
        if i in planted:
            nodes += [helper.make_node("Add", [out, "plant"], [f"up{i}"], name=f"up{i}"),
                      helper.make_node("Sub", [f"up{i}", "plant"], [f"down{i}"], name=f"down{i}")]
            out = f"down{i}"
        h = out
    inits += [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(bc, "bc")]
    nodes += [helper.make_node("MatMul", [h, "wc"], ["mmc"], name="mmc"),
              helper.make_node("Add", ["mmc", "bc"], ["logits"], name="logits")]
    graph = helper.make_graph(nodes, "digits_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
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
