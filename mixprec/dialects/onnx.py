"""The ONNX dialect of the IR: its registration record and what the ONNX frontend,
backend and runtime share: the meta keys of the round-trip data, element types <-> IR
dtypes, ONNX names of IR values, subgraph keys, attributes kept verbatim
(:class:`RawAttribute`), TypeProtos as (dtype, shape), reading tensors (dense and
sparse) with their data checked first, and :class:`NodeTable` (a graph's NodeProtos as
the code that wrote or read them saw them).

Invariant: importing this module imports no onnx (the framework registry imports every
dialect to read its record); the functions that need onnx import it when called."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from typing import TYPE_CHECKING, Iterable

import numpy as np

from mixprec.errors import ModelLoadError, UnsupportedModelError
from mixprec.fileio import first_line
from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Node, Shape, Value

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)


class NodeTable:
    """What a main graph's NodeProtos hold, recorded by the code that wrote them (the
    emitter) or read them (the lowering), for a reader that would otherwise read them
    back (the output check's runner: reading 121k NodeProtos costs about a second).
    ``rows[i]`` is ``graph.node[start + i]`` as ``(op_type, domain, inputs, outputs,
    attributes, output_dtypes)``: input and output names as in the proto; ``attributes``
    a hashable key, equal for two rows of one table exactly when their attributes are
    alike (None: read that node's attributes from the proto); ``output_dtypes`` each
    output's IR dtype, which its declared element type is (None: read the declared types
    from the proto). Nodes before ``start`` are not in the table. Empty when the proto
    holds other nodes than were recorded (an opset conversion rewrote them)."""

    def __init__(self) -> None:
        self.start = 0
        self.rows: list[tuple] = []

    def clear(self) -> None:
        self.start, self.rows = 0, []

    def covers(self, proto: "onnx.ModelProto") -> bool:
        """True when the table describes the nodes of ``proto``'s main graph from ``start``."""
        return bool(self.rows) and self.start + len(self.rows) == len(proto.graph.node)

FRAMEWORK = Framework(
    name="onnx", suffixes=(".onnx",), module_roots=("onnx",), cast=CastSpec("Cast", "to"), policy="onnx",
    adapter="mixprec.runtimes.onnx:OnnxAdapter", description=".onnx files (external data too)",
    low_precision_note="onnxruntime's CPU execution provider has no {p} kernels for MatMul, Gemm, Conv or the "
                       "elementwise ops (only Cast and LayerNormalization run), so nothing runs faster in {p} "
                       "there: objective='performance' keeps the ONNX model FP32 (not timed)")

#: key of model.meta that holds the private round-trip data:
#:   graphs:  {graph key: {"shell": GraphProto, "initializer_inputs": [(pos, ir name, ValueInfoProto)],
#:             "constant_nodes": {ir name: NodeProto}, "sparse": {ir name: index rank},
#:             "value_info": [ValueInfoProto]}}   (graph key: see :func:`graph_key`)
#:   renamed: {ir value name: onnx value name}
#:   types:   {ir value name: TypeProto} for types (dtype, shape) cannot express
#:   inferred: {ir value name} of node outputs typed by shape inference, not by the model;
#:            the backend declares only their dtype (inferred shapes in value_info switch
#:            on onnxruntime fusions that change results in the last bit)
#:   model_shell: ModelProto holding the model fields without a meta key of their own
ONNX_META = "onnx"
#: key of node.meta that holds {"shell": NodeProto, "unnamed": bool, "attr_types": {...}}
NODE_META = "onnx"

#: protobuf cannot serialize a message of 2 GiB or more; above this size mixprec works
#: with files (external data, path-based shape inference and checking).
LARGE_MODEL_BYTES = 2**31 - 2**26

#: ONNX element types (TensorProto.DataType; the numbers are fixed by onnx.proto) and
#: their IR dtypes, written as numbers so that this module needs no onnx import
_ELEM_TO_DTYPE: dict[int, DType] = {
    1: DType.FLOAT32, 16: DType.BFLOAT16, 10: DType.FLOAT16, 11: DType.FLOAT64,  # FLOAT BFLOAT16 FLOAT16 DOUBLE
    17: DType.FLOAT8E4M3, 19: DType.FLOAT8E5M2,  # FLOAT8E4M3FN FLOAT8E5M2
    22: DType.INT4, 3: DType.INT8, 5: DType.INT16, 6: DType.INT32, 7: DType.INT64,
    21: DType.UINT4, 2: DType.UINT8, 4: DType.UINT16, 12: DType.UINT32, 13: DType.UINT64,
    9: DType.BOOL, 8: DType.STRING, 14: DType.COMPLEX64, 15: DType.COMPLEX128,
}
_DTYPE_TO_ELEM: dict[DType, int] = {v: k for k, v in _ELEM_TO_DTYPE.items()}


def dtype_from_onnx(elem_type: int) -> DType:
    """The IR dtype of an ONNX element type (UNKNOWN for types the IR does not model)."""
    return _ELEM_TO_DTYPE.get(elem_type, DType.UNKNOWN)


def dtype_to_onnx(dtype: DType) -> int:
    """The ONNX element type of an IR dtype; raises ValueError for UNKNOWN."""
    try:
        return _DTYPE_TO_ELEM[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype.value} has no ONNX element type") from None


def onnx_type_string(dtype: DType) -> str:
    """The schema type string of a tensor of ``dtype``, e.g. ``tensor(bfloat16)``."""
    import onnx

    return f"tensor({onnx.TensorProto.DataType.Name(dtype_to_onnx(dtype)).lower()})"


def onnx_name(model: Model, value: Value) -> str:
    """The ONNX name the backend gives ``value`` (IR names differ for renamed values)."""
    return model.meta.get(ONNX_META, {}).get("renamed", {}).get(value.name, value.name)


class RawAttribute:
    """An ONNX attribute the IR does not model (sparse tensor, type proto, a reference to
    a function attribute, a tensor of an exotic element type), kept verbatim. Its repr is
    deterministic so that the IR text dump stays stable."""

    __slots__ = ("proto",)

    def __init__(self, proto: onnx.AttributeProto) -> None:
        self.proto = type(proto)()
        self.proto.CopyFrom(proto)

    def digest(self) -> str:
        return hashlib.sha1(self.proto.SerializeToString(deterministic=True)).hexdigest()[:12]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawAttribute) and \
            self.proto.SerializeToString(deterministic=True) == other.proto.SerializeToString(deterministic=True)

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        kind = type(self.proto).AttributeType.Name(self.proto.type)
        ref = f" ref={self.proto.ref_attr_name}" if self.proto.ref_attr_name else ""
        return f"onnx.{kind}{ref} sha1:{self.digest()}"


def graph_key(parent_key: str, node: Node, attr: str, index: int | None = None) -> str:
    """The key of a subgraph in ``meta["onnx"]["graphs"]``: the parent graph's key, the
    owning node (by its first output name, unique in the tree), the attribute name and,
    for GRAPHS attributes, the position. The main graph's key is ``""``."""
    owner = node.outputs[0].name if node.outputs else f"@{node.name}"
    suffix = f"[{index}]" if index is not None else ""
    return f"{parent_key}/{owner}:{attr}{suffix}"


# ---------------------------------------------------------------------- conversions ---
def type_from_proto(tp: onnx.TypeProto) -> tuple[DType, Shape, bool]:
    """(dtype, shape, lossy) of a TypeProto; ``lossy`` is True when (dtype, shape) cannot
    express the type (sequence/optional/map/sparse types, element types the IR lacks,
    denotations), so the backend must re-emit the original TypeProto. Memoized on the
    type's bytes (a large graph has few distinct types; the result is immutable)."""
    return type_from_bytes(tp.SerializeToString())


@functools.lru_cache(maxsize=4096)
def type_from_bytes(data: bytes) -> tuple[DType, Shape, bool]:
    """``type_from_proto`` of a serialized TypeProto."""
    import onnx
    tp = onnx.TypeProto.FromString(data)
    which = tp.WhichOneof("value")
    if which is None:
        return DType.UNKNOWN, None, bool(tp.denotation)
    if which != "tensor_type":
        return DType.UNKNOWN, None, True
    tt = tp.tensor_type
    dtype = dtype_from_onnx(tt.elem_type)
    lossy = bool(tp.denotation) or (dtype == DType.UNKNOWN and tt.elem_type != 0) or \
        (tt.elem_type == 0 and tt.HasField("shape"))
    if not tt.HasField("shape"):
        return dtype, None, lossy
    dims: list[int | str | None] = []
    for dim in tt.shape.dim:
        lossy = lossy or bool(dim.denotation)
        kind = dim.WhichOneof("value")
        if kind == "dim_value" and dim.dim_value < 0:  # invalid ONNX; some exporters write -1 for unknown
            dims.append(None)
        else:
            dims.append(dim.dim_value if kind == "dim_value" else dim.dim_param if kind == "dim_param" else None)
    return dtype, tuple(dims), lossy


def tensor_to_array(tensor: onnx.TensorProto, base_dir: str | None = "", where: str | None = None,
                    checked: bool = False) -> np.ndarray:
    """A TensorProto's data as numpy (external data read relative to ``base_dir``; None
    means the model came from memory without a folder, so external data is an error).

    Invariant: nothing is allocated before the tensor's dims, element type and the
    amount of data it holds (or its external file holds) agree; every failure is a
    ModelLoadError naming the tensor (``where`` says where it sits). ``checked``: the
    caller ran ``check_tensor`` on it already (the frontend checks every tensor at load)."""
    from onnx import numpy_helper

    where = where or f"tensor {tensor.name!r}"
    if not checked:
        check_tensor(tensor, base_dir, where)
    try:
        if not len(tensor.external_data):
            return numpy_helper.to_array(tensor, base_dir or "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnx warns about unknown external-data keys
            return numpy_helper.to_array(tensor, base_dir or "")
    except Exception as exc:  # noqa: BLE001 - onnx raises ValueError, TypeError, KeyError, OSError, ...
        raise ModelLoadError(f"{where}: cannot read its data ({type(exc).__name__}: {first_line(exc, 200)}); "
                             "the model is corrupt: re-export it") from None


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
#: most elements one value of a typed data field can hold (sub-byte types pack into int32)
_PER_VALUE = 16


@functools.cache
def sub_byte_types() -> frozenset[int]:
    """Element types whose values take less than a byte (a lower bound on their packing)."""
    import onnx

    T = onnx.TensorProto
    return frozenset({T.UINT4, T.INT4, T.FLOAT4E2M1, T.UINT2, T.INT2, T.FLOAT6E2M3, T.FLOAT6E3M2})


@functools.cache
def _defined_types() -> frozenset[int]:
    """The ONNX tensor element types this onnx defines (UNDEFINED excluded)."""
    import onnx

    return frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}


def element_count(dims: Iterable[int], where: str, limit: int | None = None) -> int:
    """The number of elements of ``dims``; ModelLoadError for a negative dim. Stops early
    (returning a number above ``limit``) once the product passes ``limit``, so that a
    hostile rank-1e6 shape costs no big-integer arithmetic."""
    dims = list(dims)
    for dim in dims:
        if dim < 0:
            raise ModelLoadError(f"{where} has a negative dimension ({dim}) in its dims {dims[:8]}; "
                                 "the model is corrupt: re-export it")
    if 0 in dims:
        return 0
    count = 1
    for dim in dims:
        count *= dim
        if limit is not None and count > limit:
            return count
    return count


def _elem_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return str(elem_type)


def _min_bytes(elem_type: int, count: int) -> int | None:
    """The fewest bytes ``count`` elements of ``elem_type`` take as raw data (None for
    strings, which have no raw form)."""
    import onnx

    if elem_type == onnx.TensorProto.STRING:
        return None
    if elem_type in sub_byte_types():
        return (count * 2 + 7) // 8
    return count * onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize


def check_tensor(tensor: onnx.TensorProto, base_dir: str | None, where: str) -> None:
    """ModelLoadError unless ``tensor``'s element type is defined and its data (inline
    or external) holds at least what its dims need; reads no data."""
    import onnx

    elem = tensor.data_type
    if elem not in _defined_types():
        raise ModelLoadError(f"{where} has element type {_elem_name(elem)}, which is not a defined ONNX tensor "
                             "type; the model is corrupt or from a newer ONNX: re-export it")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        _check_external(tensor, base_dir, where)
        return
    present = len(tensor.raw_data) if tensor.HasField("raw_data") else None
    values = sum(len(getattr(tensor, name)) for name in _TYPED_FIELDS) if present is None else 0
    limit = (present if present is not None else values) * _PER_VALUE
    count = element_count(tensor.dims, where, limit)
    if present is not None:
        need = _min_bytes(elem, count)
        if need is None:
            raise ModelLoadError(f"{where} is a STRING tensor with raw_data; strings are stored in string_data: "
                                 "the model is corrupt: re-export it")
        if present < need:
            raise ModelLoadError(f"{where} declares dims {list(tensor.dims)} ({count} {_elem_name(elem)} elements, "
                                 f"{need} bytes) but its raw_data holds {present} bytes; the model is truncated "
                                 "or corrupt: re-export it")
    elif count > values * _PER_VALUE:
        raise ModelLoadError(f"{where} declares dims {list(tensor.dims)} ({count} elements) but holds only "
                             f"{values} values; the model is truncated or corrupt: re-export it")


def _external_int(info: dict[str, str], key: str, where: str) -> int | None:
    if key not in info:
        return None
    text = info[key]
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelLoadError(f"{where}: its external data {key} {text!r} is not a non-negative whole number; "
                             "the model is corrupt: re-export it or fix its external_data entries")
    return value


def _check_external(tensor: onnx.TensorProto, base_dir: str | None, where: str) -> None:
    """The external file exists and ``offset``/``length`` lie inside it and cover what
    the dims need; the data itself is not read."""
    if base_dir is None:
        raise ModelLoadError(f"{where} keeps its data in an external file, and the ModelProto does not say "
                             "where that file is: pass base_dir= (the folder holding the data files), load "
                             "the data into the proto first (onnx.load_external_data_for_model), or give the "
                             "model's path instead of a ModelProto")
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise ModelLoadError(f"{where} is marked EXTERNAL but names no location; the model is corrupt: re-export it")
    offset = _external_int(info, "offset", where) or 0
    length = _external_int(info, "length", where)
    file = os.path.join(base_dir, location)
    try:
        size = os.stat(file).st_size
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the external data of {where} ({location}: "
                             f"{getattr(exc, 'strerror', None) or first_line(exc)}); keep the data file next to the "
                             "model, or load the model from its path") from None
    if offset > size or (length is not None and offset + length > size):
        end = offset if length is None else offset + length
        raise ModelLoadError(f"{where}: its external data ends at byte {end} but {location} has {size} bytes; "
                             "the data file is truncated or belongs to another model: restore it or re-export")
    have = size - offset if length is None else length
    limit = have * 8 + 64
    count = element_count(tensor.dims, where, limit)
    need = _min_bytes(tensor.data_type, count)
    if need is not None and need > have:
        raise ModelLoadError(f"{where} declares dims {list(tensor.dims)} ({need} bytes) but its external data in "
                             f"{location} holds {have} bytes; the data file is truncated or belongs to another "
                             "model: restore it or re-export")


#: the largest dense form of a sparse tensor mixprec builds (the IR holds constants dense)
SPARSE_DENSE_LIMIT = 2**30


def check_sparse(sparse: onnx.SparseTensorProto, base_dir: str | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of a sparse tensor whose dims, values and indices agree and whose
    dense form fits SPARSE_DENSE_LIMIT; ModelLoadError / UnsupportedModelError otherwise.
    Indices come back as int64 linear indices."""
    import onnx

    values = tensor_to_array(sparse.values, base_dir, f"{where} (its values)")
    indices = tensor_to_array(sparse.indices, base_dir, f"{where} (its indices)")
    dims = tuple(sparse.dims)
    count = element_count(dims, where, SPARSE_DENSE_LIMIT)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(sparse.values.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 1
    if count * itemsize > SPARSE_DENSE_LIMIT:
        raise UnsupportedModelError(f"{where} is a sparse tensor of dims {list(dims)[:8]}, more than "
                                    f"{SPARSE_DENSE_LIMIT >> 20} MiB dense; mixprec keeps constants dense: "
                                    "store it dense or keep this model out of mixprec")
    if values.ndim != 1 or indices.dtype.kind not in "iu" or indices.ndim not in (1, 2) or \
            indices.shape[0] != values.shape[0] or (indices.ndim == 2 and indices.shape[1] != len(dims)):
        raise ModelLoadError(f"{where}: a sparse tensor needs 1-D values and [NNZ] or [NNZ, rank] integer "
                             f"indices; it has values {list(values.shape)} and indices {list(indices.shape)} "
                             f"({indices.dtype}) for dims {list(dims)}: the model is corrupt, re-export it")
    indices = indices.astype(np.int64)
    bounds = np.array(dims if indices.ndim == 2 else [count], dtype=np.int64)
    if indices.size and (np.any(indices < 0) or np.any(indices >= bounds)):
        raise ModelLoadError(f"{where}: a sparse index lies outside its dims {list(dims)}; the model is "
                             "corrupt: re-export it")
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices.reshape(-1)
    return values, indices


def sparse_to_dense(sparse: onnx.SparseTensorProto, base_dir: str | None = "", where: str | None = None) -> np.ndarray:
    """The dense numpy array of a SparseTensorProto (linear or coordinate indices), checked
    as :func:`check_sparse` says."""
    values, indices = check_sparse(sparse, base_dir, where or f"sparse tensor {sparse.values.name!r}")
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    dense.reshape(-1)[indices] = values
    return dense
