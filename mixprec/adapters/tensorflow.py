"""TensorFlow adapter: Keras 3 models, tf.functions / ConcreteFunctions, SavedModel
directories, ``.keras`` files and frozen ``.pb`` GraphDefs.

The converted model is a :class:`mixprec.backends.tensorflow.GraphModel` (a frozen
GraphDef that calls like a function); emitting validates it by importing it into TF.
``save`` writes a ``.pb`` GraphDef, or a SavedModel directory for a path without suffix.

Runtime capability: an op whose float type attribute (``T``, ...) has no CPU kernel
registered for the target dtype stays FP32 (probed in TF's kernel registry; ops with no
CPU kernel at all are left to the policy, they are rewritten by grappler)."""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from mixprec.adapters.base import Adapter, RuntimeLimits
from mixprec.backends import tensorflow as backend
from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConfigError
from mixprec.frontends import tensorflow as frontend
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Node
from mixprec.passes.common import graph_policy, target_dtype
from mixprec.passes.policies import Policy

logger = logging.getLogger(__name__)

BATCH = 2          # unknown dim 0 of generated sample inputs
OTHER_DIM = 8      # any other unknown dim
INT_HIGH = 4       # generated integer inputs lie in [0, INT_HIGH)


class TensorflowAdapter(Adapter):
    name = "tensorflow"

    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        return frontend.load(model, input_signature=_signature(model, config.example_inputs))

    def runtime_limits(self, ir_model: Model, config: MixedPrecisionConfig) -> RuntimeLimits:
        target = frontend.tf_dtype(target_dtype(config.precision)).as_datatype_enum
        policy = graph_policy(ir_model.graph, config.policy)
        ops = set()
        for node in ir_model.graph.all_nodes():
            attrs = lowerable_type_attrs(node, policy)
            if attrs and not has_cpu_kernel(node.op, attrs, target):
                ops.add(node.op)
        return RuntimeLimits(sorted(ops), {}, "TensorFlow (CPU kernels)")

    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        return backend.graph_model(ir_model).load()

    def native(self, model: Any) -> Any:
        if not isinstance(model, (str, os.PathLike)):
            return model
        path = os.fspath(model)
        if os.path.isdir(path):
            return _SavedModelSignature(tf.saved_model.load(path))
        if path.lower().endswith(".keras"):
            import keras
            return keras.models.load_model(path, compile=False)
        source = frontend.graph_def_source(frontend.read_graph_def(path))
        ir_model = frontend.lower(source)
        return backend.graph_model(ir_model, source.graph_def)

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        if config.sample_inputs is not None:
            return config.sample_inputs
        return make_sample_inputs(ir_model)

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        native = self.native(original)
        if isinstance(native, backend.GraphModel):
            return to_numpy(native(*_ordered(inputs, native.input_keys)))
        if frontend.is_keras(native):
            if isinstance(inputs, dict):
                return to_numpy(native(inputs, training=False))
            arrays = _input_list(inputs)
            nested = isinstance(native.input, (list, tuple, dict))
            structure = tf.nest.pack_sequence_as(native.input, arrays) if nested else arrays[0]
            return to_numpy(native(structure, training=False))
        signature = getattr(native, "structured_input_signature", None)
        keys = sorted(signature[1]) if signature is not None and not signature[0] else []
        return to_numpy(_call_function(native, _ordered(inputs, keys)))

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        return to_numpy(converted(*_ordered(inputs, converted.input_keys)))

    def output_names(self, ir_model: Model) -> list[str]:
        keys = ir_model.meta.get(frontend.TF_META, {}).get("output_keys") or []
        return list(keys) if len(keys) == len(ir_model.graph.outputs) else [v.name for v in ir_model.graph.outputs]

    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        backend.save(converted, path, input_path=input_path)


# --------------------------------------------------------------------- helpers ---
class _SavedModelSignature:
    """A SavedModel's serving_default signature, holding the loaded object (whose
    variables the signature reads) alive."""

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded
        self.function = loaded.signatures["serving_default"]
        self.structured_input_signature = self.function.structured_input_signature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


def _signature(model: Any, example_inputs: Any) -> list[tf.TensorSpec] | None:
    """TensorSpecs from example inputs (batch dim None), for tf.functions without a
    signature; None when there are no example inputs or the model is a path."""
    if example_inputs is None or isinstance(model, (str, os.PathLike)):
        return None
    arrays = _input_list(example_inputs)
    return [tf.TensorSpec((None,) + tuple(np.shape(a))[1:], tf.convert_to_tensor(a).dtype) for a in arrays]


def _input_list(inputs: Any) -> list[Any]:
    """A single array, a sequence of arrays, or a dict (values in insertion order)."""
    if isinstance(inputs, dict):
        return list(inputs.values())
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    return [inputs]


def _call_function(function: Any, arrays: Sequence[Any]) -> Any:
    """Call a tf.function / ConcreteFunction positionally, or by keyword when it is a
    signature function that takes keyword arguments only."""
    signature = getattr(function, "structured_input_signature", None)
    if signature is not None:
        args, kwargs = signature
        if kwargs and not args:
            return function(**dict(zip(sorted(kwargs), [tf.convert_to_tensor(a) for a in arrays])))
    return function(*[tf.convert_to_tensor(a) for a in arrays])


def _ordered(inputs: Any, keys: Sequence[str]) -> list[Any]:
    """Inputs as a list in ``keys`` order (a dict keyed by them), else as given."""
    if isinstance(inputs, dict) and set(keys) <= set(inputs):
        return [inputs[k] for k in keys]
    return _input_list(inputs)


def to_numpy(outputs: Any) -> list[np.ndarray]:
    """Flattened outputs (dicts in sorted key order) as numpy arrays; bf16/f16 -> float32."""
    out = []
    for item in tf.nest.flatten(outputs):
        array = item.numpy() if hasattr(item, "numpy") else np.asarray(item)
        if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
            array = array.astype(np.float32)
        out.append(array)
    return out


def make_sample_inputs(ir_model: Model, seed: int = 0) -> list[np.ndarray]:
    """One array per graph input: float standard normal, ints in [0, INT_HIGH), bools
    random; unknown dims are BATCH (dim 0) or OTHER_DIM."""
    rng = np.random.default_rng(seed)
    arrays = []
    for value in ir_model.graph.inputs:
        if value.shape is None:
            raise ConfigError(f"input {value.name} has unknown rank; pass sample_inputs")
        shape = tuple(d if isinstance(d, int) and d >= 0 else (BATCH if i == 0 else OTHER_DIM)
                      for i, d in enumerate(value.shape))
        arrays.append(_random(rng, value.dtype, shape, value.name))
    return arrays


def _random(rng: np.random.Generator, dtype: DType, shape: tuple, name: str) -> np.ndarray:
    if dtype.is_float:
        return rng.standard_normal(shape).astype(np.float32).astype(dtype.to_numpy())
    if dtype == DType.BOOL:
        return rng.random(shape) < 0.5
    if dtype in (DType.INT8, DType.INT16, DType.INT32, DType.INT64, DType.UINT8, DType.UINT16, DType.UINT32,
                 DType.UINT64):
        return rng.integers(0, INT_HIGH, shape).astype(dtype.to_numpy())
    raise ConfigError(f"cannot generate sample data for input {name} of type {dtype.value}; pass sample_inputs")


def lowerable_type_attrs(node: Node, policy: Policy) -> tuple[str, ...]:
    """The type attributes that lowering the node would turn from float32 to the target:
    those bound to a float32 input the policy does not pin, and those bound only to
    float32 outputs (sorted names; none for casts and ops without an OpDef)."""
    definition = frontend.op_def(node.op)
    if definition is None or node.op == frontend.CAST_OP:
        return ()
    found: set[str] = set()
    for arg, positions in frontend.arg_ranges(definition.input_arg, node.attrs):
        if arg.type_attr and any(i < len(node.inputs) and node.inputs[i] is not None
                                 and node.inputs[i].dtype == DType.FLOAT32
                                 and not policy.is_pinned(node.qualified_op, i) for i in positions):
            found.add(arg.type_attr)
    bound = {arg.type_attr for arg in definition.input_arg}
    for arg, positions in frontend.arg_ranges(definition.output_arg, node.attrs):
        if arg.type_attr and arg.type_attr not in bound and \
                any(i < len(node.outputs) and node.outputs[i].dtype == DType.FLOAT32 for i in positions):
            found.add(arg.type_attr)
    return tuple(sorted(found))


@functools.lru_cache(maxsize=None)
def has_cpu_kernel(op: str, type_attrs: tuple[str, ...], dtype: int) -> bool:
    """True when some CPU kernel of ``op`` accepts ``dtype`` for every attribute in
    ``type_attrs`` (an attribute without a constraint accepts any type). Ops with no CPU
    kernel registered at all count as capable: grappler rewrites them (fused ops)."""
    from tensorflow.python.framework import kernels
    try:
        kernel_list = kernels.get_registered_kernels_for_op(op)
    except Exception:  # noqa: BLE001 - unknown op names (function calls)
        return True
    cpu = [k for k in kernel_list.kernel if k.device_type == "CPU"]
    if not cpu:
        return True
    for kernel in cpu:
        constraints = {c.name: set(c.allowed_values.list.type) for c in kernel.constraint}
        if all(attr not in constraints or dtype in constraints[attr] for attr in type_attrs):
            return True
    return False


__all__ = ["TensorflowAdapter", "make_sample_inputs", "has_cpu_kernel", "to_numpy"]
