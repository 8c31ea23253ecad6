"""The TensorFlow dialect of the IR: what the frontend (``mixprec.frontends.tensorflow``)
writes and the backend (``mixprec.backends.tensorflow``) reads, and the framework's
registration record ``FRAMEWORK``.

Importing this module imports no TensorFlow (the registry imports every dialect to read
its record): the functions that need TF import it when they are called.

IR conventions for TF graphs (the frontend writes exactly these; the backend reads them):

- ``Graph(framework="tensorflow")``; one IR node per GraphDef node, ``node.op`` the TF op
  type, ``node.name`` the NodeDef name, nodes in a topological order of data and control
  edges that keeps the GraphDef order where it can.
- Output ``i`` of node ``n`` is the value ``n`` (``i == 0``) or ``n:i``; its dtype and
  shape come from the graph TF imports (op registry shape inference). Value names are
  therefore unique and never contain ``:`` for output 0.
- ``Placeholder`` nodes are graph inputs named by the node, in the traced function's
  argument order; ``Const`` nodes are graph constants named by the node, holding numpy
  data (bf16 through ml_dtypes). Their other NodeDef fields (shape attr, ``_class``,
  control inputs) are kept in ``model.meta["tensorflow"]["shells"]``.
- Data inputs ``name:idx`` read the producer's output ``idx``; control inputs ``^name``
  are kept, in order, as ``attrs["_control_inputs"]`` (node names), which the backend
  turns back into control inputs (dropping names that no longer exist).
- Attributes: ``type`` -> DType, ``list(type)`` -> list of DType, ``shape`` -> list of ints
  (-1 unknown dim) or None (unknown rank), ``tensor`` -> np.ndarray, ``func`` -> the
  function's name, strings -> str (bytes if not UTF-8), ints/floats/bools as is, lists
  of those -> lists. Anything else (a func with bound attrs, a placeholder attr, a dtype
  the IR has no name for) is a :class:`RawAttr` holding the serialized AttrValue. The
  kind of every attribute is kept in ``node.meta["tensorflow"]["kinds"]`` for
  attributes the op's OpDef does not declare, with the NodeDef's device, its
  ``experimental_type`` / ``experimental_debug_info`` fields (``experimental``, bytes)
  and the type attributes left out (``types``, below).
- Single-type attributes that the OpDef binds to tensors (``T`` of Conv2D, ``Tidx`` of
  Mean, ...) are left out of ``attrs`` when the values' dtypes determine them: the
  values are the truth (a pass that retypes a value needs to know nothing about TF) and
  the backend derives the attributes from them. ``list(type)`` attributes (``Tin``,
  ``T`` of While) stay: they also say how many tensors an argument has.
- The cast is ``Cast`` with DType attrs ``SrcT``/``DstT`` and ``Truncate`` (TF's own form;
  passes keep them right).
- The functions that While/StatelessWhile (``cond``, ``body``), If/StatelessIf (branches)
  and (Stateful)PartitionedCall (``f``) run are lowered as IR subgraphs in place of the
  function name attribute: graph ``<node>>``<attr>``, every value and node name inside
  prefixed with ``<node>>``<attr>>`` (unique across the tree), inputs = the function's
  arguments, outputs = its results; ``model.meta["tensorflow"]["functions"]`` maps each
  body graph's name to its FunctionDef's. Passes paint them like the main graph; their
  inputs and outputs keep their dtypes, so loop-carried values agree with the While's
  ``T``. A function TF cannot import stays a name (opaque); the FunctionDefLibrary is
  kept serialized in ``model.meta["tensorflow"]["library"]``.
- Constant-only subgraphs are evaluated by TF at load (``fold_constants``): the IR sees
  Consts (a frozen Keras BatchNorm's scale and offset), which convert-constants can store
  in bf16.
- Variant and resource tensors (TensorList handles) are UNKNOWN: never float.

``model.meta["tensorflow"]`` keys: ``library`` (bytes), ``versions`` (bytes),
``shells`` ({name: NodeDef bytes} for Placeholder and Const nodes), ``input_keys`` /
``output_keys`` (the names callers use: signature keys or flattened output paths),
``call`` (``args``, ``keras`` or ``kwargs``: how the source callable takes its inputs),
``source`` (``keras``, ``function``, ``concrete_function``, ``saved_model``,
``keras_file``, ``graph_def``).
"""
from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec
from mixprec.ir.dtypes import DType

if TYPE_CHECKING:
    import tensorflow as tf
    from tensorflow.core.framework import attr_value_pb2, node_def_pb2

logger = logging.getLogger(__name__)

#: the IR's ``graph.framework`` of TF graphs
NAME = "tensorflow"
#: the key of ``model.meta`` and ``node.meta`` entries for TF
TF_META = "tensorflow"
#: the attribute that keeps a node's control inputs (node names, in order)
CONTROL_INPUTS = "_control_inputs"
CAST_OP = "Cast"
#: separator between a function body's prefix (``<calling node>>``<attr>``) and its names
BODY_SEP = ">"

FRAMEWORK = Framework(
    name=NAME, suffixes=(".pb", ".keras"), module_roots=("tensorflow", "keras", "tf_keras"),
    cast=CastSpec(CAST_OP, "DstT", "SrcT", extra={"Truncate": False}), policy="tensorflow",
    adapter="mixprec.runtimes.tensorflow:TensorflowAdapter", directory_marker="saved_model.pb",
    description="TensorFlow SavedModel directories, frozen .pb graphs and .keras files",
    timer="mixprec.runtimes.tensorflow_timing:TensorFlowTimer")

_TF_TO_DTYPE: dict[str, DType] = {
    "float32": DType.FLOAT32, "bfloat16": DType.BFLOAT16, "float16": DType.FLOAT16, "float64": DType.FLOAT64,
    "int8": DType.INT8, "int16": DType.INT16, "int32": DType.INT32, "int64": DType.INT64,
    "uint8": DType.UINT8, "uint16": DType.UINT16, "uint32": DType.UINT32, "uint64": DType.UINT64,
    "bool": DType.BOOL, "string": DType.STRING, "complex64": DType.COMPLEX64, "complex128": DType.COMPLEX128,
    "float8_e4m3fn": DType.FLOAT8E4M3, "float8_e5m2": DType.FLOAT8E5M2, "int4": DType.INT4, "uint4": DType.UINT4,
}
_DTYPE_TO_TF: dict[DType, str] = {v: k for k, v in _TF_TO_DTYPE.items()}


# ------------------------------------------------------------------------- dtypes ---
def ir_dtype(dtype: Any) -> DType:
    """The IR dtype of a TF dtype (DataType enum, tf.DType); UNKNOWN for resource, variant,
    quantized and other types the IR does not model."""
    import tensorflow as tf
    try:
        return _TF_TO_DTYPE.get(tf.dtypes.as_dtype(dtype).name, DType.UNKNOWN)
    except TypeError:
        return DType.UNKNOWN


def tf_dtype(dtype: DType) -> tf.DType:
    """The TF dtype of an IR dtype; ValueError for UNKNOWN."""
    import tensorflow as tf
    try:
        return tf.dtypes.as_dtype(_DTYPE_TO_TF[dtype])
    except KeyError:
        raise ValueError(f"dtype {dtype.value} has no TensorFlow equivalent") from None


class RawAttr:
    """An attribute value the IR does not model, kept as its serialized AttrValue. Its
    repr is deterministic (kind and a digest), so the IR text stays stable."""

    __slots__ = ("data",)

    def __init__(self, value: attr_value_pb2.AttrValue) -> None:
        self.data = value.SerializeToString(deterministic=True)

    def proto(self) -> attr_value_pb2.AttrValue:
        from tensorflow.core.framework import attr_value_pb2
        value = attr_value_pb2.AttrValue()
        value.ParseFromString(self.data)
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawAttr) and self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"tf_attr({self.proto().WhichOneof('value')}:{hashlib.sha1(self.data).hexdigest()[:12]})"


# ------------------------------------------------------------------ attributes ---
_LIST_FIELDS = ("s", "i", "f", "b", "type", "shape", "tensor", "func")


def attr_kind(value: attr_value_pb2.AttrValue) -> str:
    """The OpDef-style kind of an AttrValue: ``type``, ``list(int)``, ``func``, ..."""
    which = value.WhichOneof("value")
    names = {"s": "string", "i": "int", "f": "float", "b": "bool"}
    if which == "list":
        for name in _LIST_FIELDS:
            if len(getattr(value.list, name)):
                return f"list({names.get(name, name)})"
        return "list(empty)"
    return names.get(which, which or "none")


def shape_to_list(shape: Any) -> list[int] | None:
    """A TensorShapeProto as a list of ints (-1 unknown), None for unknown rank."""
    if shape.unknown_rank:
        return None
    return [int(d.size) for d in shape.dim]


def tensor_to_array(tensor: Any) -> np.ndarray | None:
    """A TensorProto's data as a numpy array; None for dtypes the IR does not model and
    encodings TF cannot read."""
    if ir_dtype(tensor.dtype) == DType.UNKNOWN:
        return None
    import tensorflow as tf
    try:
        return tf.make_ndarray(tensor)
    except Exception:  # noqa: BLE001 - exotic encodings stay raw
        return None


def attr_to_python(value: attr_value_pb2.AttrValue) -> Any:
    """One AttrValue as a python value (see the module docstring); RawAttr if the IR
    cannot express it."""
    which = value.WhichOneof("value")
    if which == "s":
        return _decode(value.s)
    if which in ("i", "f", "b"):
        return getattr(value, which)
    if which == "type":
        dtype = ir_dtype(value.type)
        return dtype if dtype != DType.UNKNOWN else RawAttr(value)
    if which == "shape":
        return shape_to_list(value.shape)
    if which == "tensor":
        array = tensor_to_array(value.tensor)
        return array if array is not None else RawAttr(value)
    if which == "func":
        return value.func.name if not value.func.attr else RawAttr(value)
    if which == "list":
        return _list_to_python(value)
    return RawAttr(value)


def _list_to_python(value: attr_value_pb2.AttrValue) -> Any:
    lst = value.list
    if len(lst.s):
        return [_decode(s) for s in lst.s]
    if len(lst.i):
        return list(lst.i)
    if len(lst.f):
        return list(lst.f)
    if len(lst.b):
        return list(lst.b)
    if len(lst.type):
        types = [ir_dtype(t) for t in lst.type]
        return types if DType.UNKNOWN not in types else RawAttr(value)
    if len(lst.shape):
        return [shape_to_list(s) for s in lst.shape]
    if len(lst.func):
        return [f.name for f in lst.func] if not any(f.attr for f in lst.func) else RawAttr(value)
    if len(lst.tensor):
        arrays = [tensor_to_array(t) for t in lst.tensor]
        return arrays if all(a is not None for a in arrays) else RawAttr(value)
    return []


def _decode(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def convert_attrs(node: node_def_pb2.NodeDef) -> tuple[dict[str, Any], dict[str, str]]:
    """A NodeDef's attributes as python values, and each attribute's kind."""
    attrs: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for key in sorted(node.attr):
        value = node.attr[key]
        attrs[key] = attr_to_python(value)
        kinds[key] = attr_kind(value)
    return attrs, kinds


def op_def(op: str) -> Any:
    """The registered OpDef of ``op``, or None (function names, unknown custom ops)."""
    from tensorflow.python.framework import op_def_registry
    try:
        return op_def_registry.get(op)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------- names ---
def parse_input(ref: str) -> tuple[str, int]:
    """``name``, ``name:3`` or ``^name`` -> (node name, output index; -1 for control)."""
    if ref.startswith("^"):
        return ref[1:], -1
    name, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return name, int(index)
    return ref, 0


def arg_ranges(args: Sequence[Any], attrs: dict[str, Any]) -> list[tuple[Any, range]]:
    """(OpDef arg, positions) for each input or output arg of an op, given the node's IR
    attributes (``number_attr`` ints and ``type_list_attr`` lists say how many tensors an
    arg stands for)."""
    out = []
    position = 0
    for arg in args:
        if arg.number_attr:
            count = attrs.get(arg.number_attr, 1)
        elif arg.type_list_attr:
            types = attrs.get(arg.type_list_attr)
            count = len(types) if isinstance(types, list) else 0
        else:
            count = 1
        count = count if isinstance(count, int) else 0
        out.append((arg, range(position, position + count)))
        position += count
    return out


def sanitize(name: str) -> str:
    """``name`` as a valid TF node name (``[A-Za-z0-9.][A-Za-z0-9_.\\-/>]*``); valid names
    are returned unchanged."""
    text = re.sub(r"[^A-Za-z0-9_.\-/>]", "_", name)
    return text if text and re.match(r"[A-Za-z0-9.]", text) else f"t_{text}"
