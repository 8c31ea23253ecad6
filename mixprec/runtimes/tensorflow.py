"""TensorFlow adapter: Keras 3 models, tf.functions / ConcreteFunctions, SavedModel
directories, ``.keras`` files and frozen ``.pb`` GraphDefs.

The converted model is a :class:`mixprec.backends.tensorflow.GraphModel` (a frozen
GraphDef that calls like a function); emitting validates it by importing it into TF.
``save`` writes a ``.pb`` GraphDef, or a SavedModel directory for a path without suffix.
``config.inputs`` / ``config.outputs`` choose a GraphDef's interface (for the conversion
and the FP32 reference run alike). Output-check inputs come from
``mixprec.sample_inputs.shape_ladder`` (unknown image sides 224, 320, 640, 32); an FP32
run whose outputs are empty or at the float32 limit rejects its sample.

Runtime capability: an op whose float type attribute (``T``, ...) has no CPU kernel
registered for the target dtype stays FP32 (probed in TF's kernel registry; ops with no
CPU kernel at all are left to the policy, they are rewritten by grappler)."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from mixprec.runtimes.base import Adapter, RuntimeLimits, load_once_per_fit
from mixprec.runtimes.fingerprint import Fingerprint, Unfingerprintable
from mixprec.backends import tensorflow as backend
from mixprec.config import MixedPrecisionConfig
from mixprec.dialects import tensorflow as dialect
from mixprec.errors import OutputPathError, SampleInputError
from mixprec.frontends import tensorflow as frontend
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Node
from mixprec.passes.common import graph_policy, target_dtype
from mixprec.passes.policies import Policy
from mixprec.sample_inputs import SEED, InputSpec, input_bytes_limit, make_arrays, shape_ladder

logger = logging.getLogger(__name__)

class TensorflowAdapter(Adapter):
    name = "tensorflow"

    def __init__(self) -> None:
        #: config.inputs / config.outputs of the model being converted: the interface of
        #: a GraphDef, which the FP32 reference run must use too
        self._graph_io: tuple[list[str] | None, list[str] | None] = (None, None)

    def bind(self, config: MixedPrecisionConfig) -> None:
        self._graph_io = (config.inputs, config.outputs)

    def fingerprint(self, model: Any, digest: Fingerprint) -> None:
        """A GraphDef by its bytes; a Keras model by its architecture (``to_json``, or
        each layer's config), its layers' code and plain attributes, and its weights."""
        if isinstance(model, graph_pb2.GraphDef):
            digest.plain(model.SerializeToString(deterministic=True), "the GraphDef")
            return
        if not frontend.is_keras(model):
            raise Unfingerprintable(f"a {type(model).__qualname__} is not fingerprinted (only Keras models, GraphDefs "
                                    "and model files are); save it as a SavedModel and convert the directory")
        fingerprint_keras(model, digest)

    def hash_value(self, digest: Fingerprint, value: Any, where: str, depth: int) -> bool:
        if isinstance(value, (tf.Tensor, tf.Variable)):
            digest.array(np.asarray(value))
            return True
        if isinstance(value, (tf.TensorSpec, tf.dtypes.DType, tf.TensorShape)):
            digest.text(type(value).__name__, repr(value))
            return True
        return False

    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        self.bind(config)
        signature = _signature(model, config.example_inputs)
        if signature is None and frontend.is_keras(model) and not has_defined_input(model):
            signature = _signature(model, config.sample_inputs)  # a subclassed model: trace it on those
        return frontend.load(model, input_signature=signature, inputs=config.inputs, outputs=config.outputs)

    def runtime_limits(self, ir_model: Model, config: MixedPrecisionConfig) -> RuntimeLimits:
        target = dialect.tf_dtype(target_dtype(config.precision)).as_datatype_enum
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
        if isinstance(model, graph_pb2.GraphDef):
            return self._graph_model(model)
        if not isinstance(model, (str, os.PathLike)):
            return model
        path = os.fspath(model)  # loaded once per fit (5-10 s a time for EfficientNetB0)
        return load_once_per_fit("tensorflow models", path, lambda: self._load_native(path), repr(self._graph_io))

    def _load_native(self, path: str) -> Any:
        if os.path.isdir(path):
            return _SavedModelSignature(tf.saved_model.load(path))
        if path.lower().endswith(".keras"):
            import keras
            return keras.models.load_model(path, compile=False)
        return self._graph_model(frontend.read_graph_def(path))

    def _graph_model(self, graph_def: Any) -> backend.GraphModel:
        """The FP32 GraphDef, callable, with the interface the conversion used."""
        inputs, outputs = self._graph_io
        source = frontend.graph_def_source(graph_def, outputs, inputs)
        return backend.graph_model(frontend.lower(source), source.graph_def)

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        if config.sample_inputs is not None:
            return config.sample_inputs
        return next(iter(self.candidate_inputs(original, ir_model, config)))

    def candidate_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Iterator[Any]:
        """The user's sample inputs alone, else one list of arrays (in input order) per
        shape of ``mixprec.sample_inputs.shape_ladder``: unknown dims of NHWC/NCHW images
        take 224, 320, 640, 32; ``config.input_shapes`` (by input key) wins."""
        if config.sample_inputs is not None:
            yield config.sample_inputs
            return
        specs = input_specs(ir_model)
        limit = input_bytes_limit(weight_bytes(ir_model))
        for shapes in shape_ladder(specs, given=config.input_shapes, limit_bytes=limit):
            arrays = make_arrays(specs, shapes)
            yield [arrays[spec.name] for spec in specs]

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        native = self.native(original)
        if isinstance(native, backend.GraphModel):
            return checked_reference(to_numpy(native(*_ordered(inputs, native.input_keys))))
        if frontend.is_keras(native):
            return checked_reference(to_numpy(native(keras_structure(native, inputs), training=False)))
        signature = getattr(native, "structured_input_signature", None)
        keys = sorted(signature[1]) if signature is not None and not signature[0] else []
        return checked_reference(to_numpy(_call_function(native, _ordered(inputs, keys))))

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        return to_numpy(converted(*_ordered(inputs, converted.input_keys)))

    output_directory_kind = "SavedModel"

    def output_targets(self, path: Path) -> list[tuple[str, Path]]:
        """A ``.pb`` file (frozen graph) or a suffix-less directory (SavedModel)."""
        if path.suffix.lower() == ".pb":
            return [("file", path)]
        if path.suffix == "":
            return [("dir", path)]
        raise OutputPathError(f"{path}: TensorFlow output must be a .pb file or a directory path without a "
                              "suffix (SavedModel)")

    def output_names(self, ir_model: Model) -> list[str]:
        keys = ir_model.meta.get(dialect.TF_META, {}).get("output_keys") or []
        return list(keys) if len(keys) == len(ir_model.graph.outputs) else [v.name for v in ir_model.graph.outputs]

    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        """Write ``converted`` (a GraphModel); any other model (the user's own, which
        objective="performance" returns when its conversion is slower) is written as
        the GraphModel of ``ir_model``, its FP32 IR."""
        if not isinstance(converted, backend.GraphModel):
            converted = backend.graph_model(ir_model).load()
        backend.save(converted, path, input_path=input_path)


# --------------------------------------------------------------------- helpers ---
def fingerprint_keras(model: Any, digest: Fingerprint) -> None:
    """See ``TensorflowAdapter.fingerprint``; the conversion cache also checks that the
    model gives its cached FP32 outputs before a conversion is reused."""
    try:
        digest.text("architecture", model.to_json())
        configs = False
    except (NotImplementedError, TypeError, ValueError, AttributeError):  # a subclassed model without get_config
        configs = True
    layers = list(model._flatten_layers(include_self=True)) if hasattr(model, "_flatten_layers") else [model]
    for layer in layers:
        digest.text("layer", layer.name)
        digest.code(type(layer))
        if configs:
            try:
                digest.plain(layer.get_config(), f"{layer.name}'s config")
            except (NotImplementedError, TypeError, Unfingerprintable):
                digest.text("no config")
        for name, value in sorted(vars(layer).items()):  # subclassed models keep settings as attributes
            if isinstance(value, (str, int, float, bool, type(None))) and not name.startswith("_"):
                digest.text(name, repr(value))
    for variable in model.weights:
        digest.text("weight", getattr(variable, "path", None) or variable.name)
        digest.array(np.asarray(variable.numpy()))


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


def has_defined_input(model: Any) -> bool:
    """True when a Keras model has ``model.input`` (functional and built Sequential models;
    a subclassed model never does, even after a call)."""
    try:
        model.input
    except (AttributeError, ValueError):
        return False
    return True


def keras_structure(model: Any, inputs: Any) -> Any:
    """The inputs as the Keras model takes them (and as the frontend traced it): a dict as
    is; else packed like ``model.input`` when it has one, otherwise one array alone or a
    list (a subclassed model was traced on exactly that structure)."""
    if isinstance(inputs, dict):
        return inputs
    arrays = _input_list(inputs)
    if has_defined_input(model) and isinstance(model.input, (list, tuple, dict)):
        return tf.nest.pack_sequence_as(model.input, arrays)
    return arrays[0] if len(arrays) == 1 else arrays


#: an FP32 output at this magnitude is the identity of an empty reduction (max of nothing
#: is -FLT_MAX) or an overflow, not a value the network computes on a sensible input
DEGENERATE = 0.5 * float(np.finfo(np.float32).max)


def checked_reference(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The FP32 outputs, or SampleInputError when they are empty or reach the float32
    limit: the sample input did not fit the network (e.g. smaller than its receptive
    field), so comparing a converted model with them would prove nothing."""
    for index, array in enumerate(outputs):
        if array.dtype.kind != "f":
            continue
        if array.size == 0:
            raise SampleInputError(f"FP32 output {index} is empty on this sample input")
        finite = array[np.isfinite(array)]
        if finite.size and float(np.abs(finite).max()) >= DEGENERATE:
            raise SampleInputError(f"FP32 output {index} reaches {float(np.abs(finite).max()):.3g}, the float32 "
                                   "limit (an empty reduction or an overflow) on this sample input")
    return outputs


def input_specs(ir_model: Model) -> list[InputSpec]:
    """One InputSpec per graph input, named by its input key (the names ``input_shapes``
    uses); unknown dims are None, float inputs are FP32 (whatever keep_io_types did)."""
    keys = ir_model.meta.get(dialect.TF_META, {}).get("input_keys") or []
    values = ir_model.graph.inputs
    names = list(keys) if len(keys) == len(values) else [v.name for v in values]
    specs = []
    for name, value in zip(names, values):
        shape = None if value.shape is None else tuple(d if isinstance(d, int) and d >= 0 else None
                                                       for d in value.shape)
        dtype = DType.FLOAT32 if value.dtype.is_float and value.dtype != DType.FLOAT64 else value.dtype
        specs.append(InputSpec(name, dtype, shape))
    return specs


def weight_bytes(ir_model: Model) -> int:
    """Bytes of the model's constants (all graphs)."""
    return sum(int(np.asarray(v.data).nbytes) for g in ir_model.graph.all_graphs()
               for v in g.constants.values() if v.data is not None)


def make_sample_inputs(ir_model: Model, seed: int = SEED) -> list[np.ndarray]:
    """The first candidate of the shape ladder, one array per graph input (see
    ``TensorflowAdapter.candidate_inputs``)."""
    specs = input_specs(ir_model)
    shapes = next(iter(shape_ladder(specs, limit_bytes=input_bytes_limit(weight_bytes(ir_model)))))
    arrays = make_arrays(specs, shapes, seed=seed)
    return [arrays[spec.name] for spec in specs]


def lowerable_type_attrs(node: Node, policy: Policy) -> tuple[str, ...]:
    """The type attributes that lowering the node would turn from float32 to the target:
    those bound to a float32 input the policy does not pin, and those bound only to
    float32 outputs (sorted names; none for casts and ops without an OpDef)."""
    definition = dialect.op_def(node.op)
    if definition is None or node.op == dialect.CAST_OP:
        return ()
    found: set[str] = set()
    for arg, positions in dialect.arg_ranges(definition.input_arg, node.attrs):
        if arg.type_attr and any(i < len(node.inputs) and node.inputs[i] is not None
                                 and node.inputs[i].dtype == DType.FLOAT32
                                 and not policy.is_pinned(node.qualified_op, i) for i in positions):
            found.add(arg.type_attr)
    bound = {arg.type_attr for arg in definition.input_arg}
    for arg, positions in dialect.arg_ranges(definition.output_arg, node.attrs):
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
