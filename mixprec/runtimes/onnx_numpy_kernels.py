"""Direct numpy kernels for the ops that make up most of a very large graph (matmuls,
elementwise arithmetic, data movement, softmax, layer norm), for ``onnx_numpy.NumpyRunner``.

Why: onnx.reference's kernel of a node costs about 10 us a call in argument checks and
output fixing, on tensors that take well under a microsecond to compute; these cost one
numpy call. Each computes what the ONNX operator specifies, as onnx.reference does, for
the attributes and inputs it accepts; ``kernel`` answers None for any other form of the
node (another opset's semantics, an attribute it does not handle, several outputs) and
the runner uses the reference kernel for it. A kernel that meets an input type it does not
compute (an integer Div, a Cast to an integer) calls the reference kernel it was given.

Invariant: a kernel returns the node's one output as a numpy array or numpy scalar (the
runner makes scalars 0-d arrays) and never writes into its inputs."""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper

from mixprec.ir.dtypes import DType

logger = logging.getLogger(__name__)

Kernel = Callable[..., Any]
#: a node's attributes (name -> value), its default-domain opset and the reference kernel's
#: run (which returns a tuple of outputs) -> the kernel, or None where it does not apply
_Factory = Callable[[dict[str, Any], int, Callable[..., tuple]], "Kernel | None"]

#: the float types a Cast computes here, as numpy types
_FLOAT_TARGETS = {onnx.TensorProto.FLOAT: np.dtype(np.float32), onnx.TensorProto.DOUBLE: np.dtype(np.float64),
                  onnx.TensorProto.FLOAT16: np.dtype(np.float16),
                  onnx.TensorProto.BFLOAT16: DType.BFLOAT16.to_numpy()}


def kernel(node: onnx.NodeProto, opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    """The direct kernel of ``node`` (one named output, default domain) under ``opset``, or None."""
    factory = _FACTORIES.get(node.op_type)
    if factory is None or node.domain not in ("", "ai.onnx") or len(node.output) != 1 or not node.output[0]:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return factory(attrs, opset, reference)


def _plain(function: Kernel) -> _Factory:
    """An op with no attributes computed by ``function`` itself."""
    return lambda attrs, opset, reference: None if attrs else function


def _float_only(function: Kernel) -> _Factory:
    """``function`` on float inputs, the reference kernel on others."""
    def factory(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
        if attrs:
            return None

        def run(a: np.ndarray, *rest: np.ndarray) -> Any:
            if a.dtype.kind == "f":
                return function(a, *rest)
            return reference(a, *rest)[0]
        return run
    return factory


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.power(a, b).astype(a.dtype, copy=False)  # of the base's type, whatever the exponent's


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))


def _transpose(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    if set(attrs) - {"perm"}:
        return None
    perm = tuple(attrs["perm"]) if "perm" in attrs else None
    return lambda x: np.transpose(x, perm)


def _reshape(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    if set(attrs) - {"allowzero"} or opset < 5:
        return None
    allowzero = bool(attrs.get("allowzero", 0))

    def run(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
        dims = [int(d) for d in shape]
        if not allowzero:  # a 0 copies the input's dim there
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return np.reshape(x, dims)
    return run


def _softmax(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    if set(attrs) - {"axis"} or opset < 13:  # before 13: over the input flattened to 2-D
        return None
    axis = int(attrs.get("axis", -1))

    def run(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    return run


def _layer_norm(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    if set(attrs) - {"axis", "epsilon", "stash_type"} or attrs.get("stash_type", 1) != 1:
        return None
    axis = int(attrs.get("axis", -1))
    epsilon = float(attrs.get("epsilon", 1e-5))

    def run(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        if x.dtype != np.float32:
            return reference(*([x, scale] if bias is None else [x, scale, bias]))[0]
        axes = tuple(range(axis % x.ndim, x.ndim))
        centered = x - x.mean(axis=axes, keepdims=True)
        variance = (centered * centered).mean(axis=axes, keepdims=True)
        y = centered / np.sqrt(variance + np.float32(epsilon)) * scale
        return y if bias is None else y + bias
    return run


def _cast(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    target = _FLOAT_TARGETS.get(attrs.get("to"))
    if target is None or set(attrs) - {"to", "saturate"}:
        return None

    def run(x: np.ndarray) -> np.ndarray:
        if x.dtype.kind == "f" or x.dtype == target:  # float to float: round to nearest even
            return x.astype(target)
        return reference(x)[0]
    return run


def _gather(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    if set(attrs) - {"axis"}:
        return None
    axis = int(attrs.get("axis", 0))
    return lambda data, indices: np.take(data, indices, axis=axis)  # negative indices count from the end


def _concat(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    if set(attrs) != {"axis"}:
        return None
    axis = int(attrs["axis"])
    return lambda *xs: np.concatenate(xs, axis=axis)


def _unsqueeze(attrs: dict[str, Any], opset: int, reference: Callable[..., tuple]) -> Kernel | None:
    if attrs or opset < 13:  # before 13 the axes are an attribute
        return None
    return lambda x, axes: np.expand_dims(x, tuple(int(a) for a in axes))  # axes of the output's rank


_FACTORIES: dict[str, _Factory] = {
    "Add": _plain(np.add), "Sub": _plain(np.subtract), "Mul": _plain(np.multiply), "MatMul": _plain(np.matmul),
    "Div": _float_only(np.divide), "Pow": _float_only(_pow), "Tanh": _float_only(np.tanh),
    "Exp": _float_only(np.exp), "Sqrt": _float_only(np.sqrt), "Sigmoid": _float_only(_sigmoid),
    "Neg": _plain(np.negative), "Abs": _plain(np.abs), "Relu": _plain(_relu), "Identity": _plain(lambda x: x),
    "Where": _plain(np.where), "Transpose": _transpose, "Reshape": _reshape, "Softmax": _softmax,
    "LayerNormalization": _layer_norm, "Cast": _cast, "Gather": _gather, "Concat": _concat,
    "Unsqueeze": _unsqueeze,
}
