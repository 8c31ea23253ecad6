"""ONNX frontend: ``load(ModelProto | path) -> ir.Model``.

Lowering rules (the ONNX backend, mixprec.backends.onnx, is the exact inverse):
- one IR Graph per ONNX graph, ``framework="onnx"``; subgraphs (If/Loop/Scan bodies) are
  Graph attributes of their node and read outer-scope values through the outer Value
  objects, so use-lists span the whole graph tree;
- initializers (and ``Constant`` nodes holding a ``value`` tensor) become graph constants
  with numpy data (bf16/fp8/int4 through ml_dtypes); an initializer that is also a graph
  input stays a constant and is re-declared as an input on emit;
- node attributes become Python values (int, float, str, lists, np.ndarray, Graph); Cast's
  ``to`` becomes a DType; anything else (sparse tensors, type protos, function attribute
  references) is kept verbatim in a :class:`RawAttribute`;
- value names are unique across the graph tree: a name that a subgraph re-defines, and
  every omitted optional output (``""``), gets a fresh IR name; ``model.meta["onnx"]
  ["renamed"]`` maps IR names back to ONNX names for the backend;
- everything the backend needs to rebuild the ModelProto (opsets, producer, metadata,
  functions, doc strings, value types the IR cannot express) lives in ``model.meta``.

Model meta keys: ``ir_version``, ``opset_import`` ({domain: version}), ``producer_name``,
``producer_version``, ``domain``, ``model_version``, ``doc_string``, ``metadata_props``
({key: value}), ``functions`` (FunctionProtos), ``training_info`` (TrainingInfoProtos) and
``onnx`` (a dict of private round-trip data, see :data:`mixprec.dialects.onnx.ONNX_META`).
"""
from __future__ import annotations

import logging
import math
import operator
import os
import tempfile
from collections import ChainMap
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from mixprec import background
from mixprec.dialects.onnx import (LARGE_MODEL_BYTES, NODE_META, ONNX_META, NodeTable, RawAttribute, check_sparse,
                                   check_tensor, dtype_from_onnx, graph_key, sparse_to_dense, tensor_to_array,
                                   type_from_bytes, type_from_proto)
from mixprec.errors import ModelLoadError
from mixprec.fileio import first_line
from mixprec.ir.dtypes import DType
from mixprec.ir.gcpause import paused_gc
from mixprec.ir.graph import Graph, Model, Node, Value
from mixprec.ir.lazy import FileSlice, LazyArray, ProtoBytes
from mixprec.frontends import onnx_wire

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------- reading ---
def load(model: "onnx.ModelProto | str | os.PathLike", *, infer_shapes: bool = True,
         base_dir: "str | os.PathLike | None" = None, table: NodeTable | None = None) -> Model:
    """Lower an ONNX model (a ModelProto or a path to a .onnx file) to an IR Model.

    The input is never modified. Shape inference fills dtypes and shapes the model lacks
    (a failure only logs a warning). External data is read relative to the model file's
    folder; for a ModelProto whose tensors keep their data outside it, ``base_dir`` names
    that folder (nothing is read from the current directory). Raises ModelLoadError for
    unreadable files and malformed models (undefined values, tensors whose data does not
    fit their dims or type, undeclared op-set domains, names that are not UTF-8) and
    UnsupportedModelError for what mixprec cannot hold (a sparse tensor too large dense).
    ``table``, when given, is filled with the main graph's nodes as read (``NodeTable``:
    attribute keys as their bytes, types left to the proto)."""
    if isinstance(model, onnx.ModelProto):
        proto, path = model, None
        base = os.fspath(base_dir) if base_dir is not None else None
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        proto = read_file(path, in_place=base_dir is None)
        base = os.fspath(base_dir) if base_dir is not None else str(path.resolve().parent)
    else:
        raise ModelLoadError(f"cannot load an ONNX model from {type(model).__name__}; "
                             "pass an onnx.ModelProto or the path of a .onnx file")
    if not proto.HasField("graph"):
        where = str(path) if path is not None else "the ModelProto"
        raise ModelLoadError(f"{where} is not an ONNX model (it has no graph); pass a .onnx model file")
    source = str(path) if path is not None else "the ModelProto"
    checks = _start_checks(proto, path, source, base, infer_shapes)
    try:
        declared = None
        if infer_shapes:
            declared = _declared_names(proto.graph, set())
            if not checks.infers:
                proto = _infer_shapes(proto, path)
        lowerer = _Lowerer(proto, base, declared, lazy_inline=path is not None,
                           own_file=path.name if path is not None and base_dir is None else None, table=table)
        model = lowerer.lower()
    except Exception:
        checks.finish(False)  # a malformed model: its structure error is the one to report
        raise
    inferred = checks.finish(True)
    if inferred is not None:
        lowerer.apply_types(inferred)
    return model


class _Checks:
    """The input's checks, maybe running in a forked child (``_start_checks``):
    ``finish(passed)`` raises the structure's ModelLoadError and, when ``passed`` (nothing
    else failed), logs the checker's warning; where the child also ran shape inference
    (``infers``), it returns the inferred main graph's types (``InferredTypes``; None
    when inference failed, which it logs)."""

    def __init__(self, job: background.Job | None = None, proto: onnx.ModelProto | None = None,
                 source: str = "", infers: bool = False) -> None:
        self.job, self.proto, self.source, self.infers = job, proto, source, infers

    def finish(self, passed: bool) -> InferredTypes | None:
        if self.job is None:
            return None
        answer = self.job.result()
        if answer is None:  # the child died (the C++ checker on a hostile model): the Python walk here
            _check_structure(self.proto, self.source)
            if passed:
                logger.warning("onnx.checker did not finish on the input model; converting anyway")
            return _inferred_types(self.proto) if self.infers and passed else None
        inferred, error, warning = answer
        if error:
            raise ModelLoadError(error)
        if warning and passed:
            logger.warning(warning)
        if not self.infers or not passed:
            return None
        if isinstance(inferred, str):
            logger.warning("ONNX shape inference failed (%s); using the types the model declares", inferred)
            return None
        return inferred


def _start_checks(proto: onnx.ModelProto, path: Path | None, source: str,
                  base: str | None, infer_shapes: bool = False) -> _Checks:
    """``_check_structure``, ``_check_tensors`` and ``_check_input`` of ``proto``, in that
    order. On a large graph (``background.LARGE_GRAPH_NODES``: 0.8 s of a 100k-node graph)
    the structure walk and the checker run in a forked child (mixprec.background) beside
    lowering, after the nesting depth (which guards the C++ of shape inference against a
    stack overflow) is checked here; with ``infer_shapes``, a graph without subgraphs
    (whose types are the main graph's alone) is shape-inferred there first (1 s of the
    100k-node graph), and the parent lowers it with its declared types and applies the
    inferred ones after (``_Lowerer.apply_types``: the same IR). Else all run here, now."""
    job = None
    infers = False
    if len(proto.graph.node) >= background.LARGE_GRAPH_NODES and not proto.functions and not proto.training_info:
        depth = _nesting(proto.graph, 1)
        if depth > MAX_GRAPH_DEPTH:
            _check_structure(proto, source)  # raises, naming the graph
        infers = infer_shapes and depth == 1 and not _is_large(proto)
        job = background.start(lambda: (_inferred_answer(proto) if infers else None, _structure_error(proto, source),
                                        _checker_warning(proto, path)),
                               "shape inference, structure check and onnx.checker of the input" if infers else
                               "structure check and onnx.checker of the input")
    if job is None:
        _check_structure(proto, source)
        _check_tensors(proto, base)
        _check_input(proto, path)
        return _Checks()
    checks = _Checks(job, proto, source, infers)
    try:
        _check_tensors(proto, base)
    except ModelLoadError:
        checks.finish(False)
        raise
    return checks


#: shape inference's types of a main graph: (name, serialized TypeProto) of its inputs,
#: value_info and outputs in that order, and of its outputs alone
InferredTypes = tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]


def _inferred_answer(proto: onnx.ModelProto) -> InferredTypes | str:
    """``_inferred_types`` of ``proto``, or why shape inference failed."""
    try:
        return _inferred_types(proto, raising=True)
    except Exception as exc:  # noqa: BLE001 - reported as the in-line inference reports it
        return first_line(exc)


def _inferred_types(proto: onnx.ModelProto, raising: bool = False) -> InferredTypes | None:
    """Shape inference's types of ``proto``'s main graph, as plain names and bytes (no
    proto objects to make in the parent: wrapping 121k ValueInfoProtos costs 0.35 s).
    None (logged) when inference fails, unless ``raising``."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False).graph
    except Exception as exc:
        if raising:
            raise
        logger.warning("ONNX shape inference failed (%s); using the types the model declares", first_line(exc))
        return None
    outputs = [(vi.name, vi.type.SerializeToString()) for vi in inferred.output]
    entries = [(vi.name, vi.type.SerializeToString()) for vi in list(inferred.input) + list(inferred.value_info)]
    return entries + outputs, outputs


def _nesting(gp: onnx.GraphProto, depth: int) -> int:
    """The depth of the deepest graph in ``gp`` (at ``depth``; 1: no subgraphs), counted
    no further than one past MAX_GRAPH_DEPTH."""
    if depth > MAX_GRAPH_DEPTH:
        return depth
    A = onnx.AttributeProto
    deepest = depth
    for node in gp.node:
        for attr in node.attribute:
            kind = attr.type
            if kind == A.GRAPH:
                deepest = max(deepest, _nesting(attr.g, depth + 1))
            elif kind == A.GRAPHS:
                deepest = max([deepest, *(_nesting(g, depth + 1) for g in attr.graphs)])
            if deepest > MAX_GRAPH_DEPTH:
                return deepest
    return deepest


def _structure_error(proto: onnx.ModelProto, source: str) -> str:
    try:
        _check_structure(proto, source)
    except ModelLoadError as exc:
        return str(exc)
    return ""


def read_file(path: Path, in_place: bool = True) -> onnx.ModelProto:
    """The model in the .onnx file ``path``, its external data unread and, in a large
    file with ``in_place``, its large inline initializers left in the file as references
    to themselves (``onnx_wire.read_structure``: external data at ``location`` = the
    file's own name, relative to the file's folder).
    ModelLoadError when the file is missing or not a readable ONNX model."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; check the model path")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory; pass the .onnx file inside it")
    structure = onnx_wire.read_structure(path, LAZY_MIN_BYTES) if in_place else None
    if structure is not None:
        return structure
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        reason = first_line(exc, 200)
        raise ModelLoadError(f"{path} is not a readable ONNX model ({reason}); the file may be "
                             "truncated or in another format: re-export or re-download it") from None


def _is_large(proto: onnx.ModelProto) -> bool:
    try:
        return proto.ByteSize() >= LARGE_MODEL_BYTES
    except Exception:  # pragma: no cover - protobuf refuses to size a >2 GiB message
        return True


def _check_input(proto: onnx.ModelProto, path: Path | None) -> None:
    """Run onnx.checker (not full) and only warn: many real models have small flaws that
    do not stop conversion. Uses the path for large models and external data."""
    warning = _checker_warning(proto, path)
    if warning:
        logger.warning(warning)


def _checker_warning(proto: onnx.ModelProto, path: Path | None) -> str | None:
    """``_check_input``'s warning, or None when the model passes."""
    try:
        if path is not None and _refers_to(proto, path.name):
            _check_in_place(proto)
        elif path is not None:
            onnx.checker.check_model(str(path))
        elif not _is_large(proto):
            onnx.checker.check_model(proto)
    except Exception as exc:
        return f"the input model does not pass onnx.checker ({first_line(exc)}); converting anyway"
    return None


def _refers_to(proto: onnx.ModelProto, location: str) -> bool:
    """Some main-graph initializer of ``proto`` keeps its data at ``location``."""
    return any(entry.key == "location" and entry.value == location
               for tensor in proto.graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
               for entry in tensor.external_data)


def _check_in_place(proto: onnx.ModelProto) -> None:
    """onnx.checker on the structure of a file read in place (``read_file``): a copy
    (the structure only: small) whose external tensors all point at an empty stub file in
    a temporary folder, since the checker wants a model path to resolve external data and
    refuses absolute locations and links; it checks locations, not lengths, and
    ``check_tensor`` has checked that every tensor's bytes lie inside its real file."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    stub = "mixprec-stub.bin"
    for tensor, _ in _graph_tensors(copy.graph):
        if isinstance(tensor, onnx.TensorProto) and tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = stub
    with tempfile.TemporaryDirectory(prefix="mixprec-checker-") as tmp:
        Path(tmp, stub).touch()
        structure = os.path.join(tmp, "structure.onnx")
        with open(structure, "wb") as handle:
            handle.write(copy.SerializeToString())
        onnx.checker.check_model(structure)


#: deepest nesting of subgraphs (If/Loop/Scan bodies) accepted; protobuf itself refuses
#: files nested deeper than about 30 graph levels
MAX_GRAPH_DEPTH = 64
_TENSOR_PROTO = onnx.TensorProto.DESCRIPTOR.full_name
_GRAPH_PROTO = onnx.GraphProto.DESCRIPTOR.full_name
_NODE_PROTO = onnx.NodeProto.DESCRIPTOR.full_name


def _check_structure(proto: onnx.ModelProto, source: str) -> None:
    """ModelLoadError for a model that no runtime could read: a string field that is not
    UTF-8, a node whose op-set domain ``opset_import`` does not declare, subgraphs nested
    deeper than MAX_GRAPH_DEPTH. Reads names only, never tensor data."""
    declared: set[str] | None = None
    if len(proto.opset_import):
        declared = {_domain(entry.domain) for entry in proto.opset_import}
        declared |= {_domain(f.domain) for f in proto.functions}
    root: _Trail = (source,)
    for field, value in proto.ListFields():
        if field.name == "graph":
            _walk(value, root, declared, 1)
        elif field.type == field.TYPE_MESSAGE:
            for item in (value if _repeated(field) else [value]):
                _walk(item, root, None, 0)
        elif field.type == field.TYPE_STRING:
            _check_utf8(field.name, value, root, field)


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _repeated(field: Any) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


#: where a message sits, rendered only for an error: (source text) or (parent trail, message)
_Trail = tuple


def _render(trail: _Trail) -> str:
    """``source, graph 'main', node 'n' (Op), ...`` of a trail."""
    parts: list[str] = []
    while len(trail) == 2:
        trail, message = trail
        parts.append(_describe_message(message))
    parts.append(trail[0])
    return ", ".join(reversed(parts))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _describe_message(message: Any) -> str:
    kind = message.DESCRIPTOR.full_name
    name = _text(message.name) if "name" in message.DESCRIPTOR.fields_by_name else None
    if kind == _NODE_PROTO:
        return f"node {name or '(unnamed)'!r} ({_text(message.op_type)})"
    if kind == _GRAPH_PROTO:
        return f"graph {name!r}"
    if kind == _TENSOR_PROTO:
        return f"tensor {name!r}"
    return f"{message.DESCRIPTOR.name}" + (f" {name!r}" if name else "")


def _check_utf8(name: str, value: Any, trail: _Trail, field: Any) -> None:
    for item in (value if _repeated(field) else [value]):
        if isinstance(item, bytes):
            raise ModelLoadError(f"{_render(trail)}: its {name} {item[:60]!r} is not UTF-8 text; the model is "
                                 "corrupt (ONNX strings are UTF-8): re-export it or fix that name")


_TENSOR_NAME = onnx.TensorProto.DESCRIPTOR.fields_by_name["name"]


def _walk(message: Any, trail: _Trail, declared: set[str] | None, depth: int) -> None:
    kind = message.DESCRIPTOR.full_name
    here = (trail, message)
    if kind == _GRAPH_PROTO and depth > MAX_GRAPH_DEPTH:
        raise ModelLoadError(f"{_render(here)}: subgraphs are nested more than {MAX_GRAPH_DEPTH} levels deep; "
                             "the model is malformed (real models nest a few If/Loop levels)")
    if kind == _TENSOR_PROTO:  # never touch the data fields (raw_data may be large)
        _check_utf8("name", message.name, here, _TENSOR_NAME)
        for entry in message.external_data:
            _walk(entry, here, declared, depth)
        return
    if kind == _NODE_PROTO and declared is not None and isinstance(message.domain, str) \
            and _domain(message.domain) not in declared:
        raise ModelLoadError(f"{_render(here)} uses op-set domain {message.domain!r}, which the model's "
                             "opset_import does not declare; the model is malformed: add the domain to "
                             "opset_import or re-export it")
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            if value.__class__ is not str:  # bytes, or a repeated field: look at each
                _check_utf8(field.name, value, here, field)
        elif field.type == field.TYPE_MESSAGE:
            for item in (value if _repeated(field) else [value]):
                inner = depth + 1 if item.DESCRIPTOR.full_name == _GRAPH_PROTO else depth
                _walk(item, here, declared, inner)


def _graph_tensors(gp: onnx.GraphProto) -> Iterable[tuple[Any, str]]:
    """(TensorProto or SparseTensorProto, where) of every tensor in ``gp`` and its
    subgraphs: initializers, sparse initializers and tensor attributes."""
    here = f"graph {gp.name!r}"
    for tensor in gp.initializer:
        yield tensor, f"initializer {tensor.name!r} of {here}"
    for sparse in gp.sparse_initializer:
        yield sparse, f"sparse initializer {sparse.values.name!r} of {here}"
    A = onnx.AttributeProto
    for node in gp.node:
        for attr in node.attribute:
            kind = attr.type
            if kind in (A.TENSOR, A.TENSORS, A.SPARSE_TENSOR, A.SPARSE_TENSORS):
                owner = f"attribute {{}} of node {node.name or node.op_type!r} ({node.op_type}) in {here}"
            if kind == A.TENSOR:
                yield attr.t, owner.format(repr(attr.name))
            elif kind == A.TENSORS:
                yield from ((t, owner.format(f"{attr.name!r}[{i}]")) for i, t in enumerate(attr.tensors))
            elif kind == A.SPARSE_TENSOR:
                yield attr.sparse_tensor, owner.format(repr(attr.name))
            elif kind == A.SPARSE_TENSORS:
                yield from ((t, owner.format(f"{attr.name!r}[{i}]")) for i, t in enumerate(attr.sparse_tensors))
            elif attr.type == A.GRAPH:
                yield from _graph_tensors(attr.g)
            elif attr.type == A.GRAPHS:
                for g in attr.graphs:
                    yield from _graph_tensors(g)


def _check_tensors(proto: onnx.ModelProto, base_dir: str | None) -> None:
    """Every tensor's element type, dims and data agree (see :func:`check_tensor`); sparse
    tensors also densify within bounds. Reads no dense data."""
    for tensor, where in _graph_tensors(proto.graph):
        if isinstance(tensor, onnx.SparseTensorProto):
            check_sparse(tensor, base_dir, where)
        else:
            check_tensor(tensor, base_dir, where)


def _infer_shapes(proto: onnx.ModelProto, path: Path | None) -> onnx.ModelProto:
    """Shape inference on a copy; the original proto is returned when inference fails.
    External data is never loaded into the proto, so only a model file near 2 GiB (data
    inside the file) needs the path-based variant."""
    try:
        if not _is_large(proto):
            return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False)
        if path is None:
            logger.warning("skipping shape inference: the in-memory model is larger than 2 GiB")
            return proto
        with tempfile.TemporaryDirectory(prefix="mixprec-infer-") as tmp:
            out = os.path.join(tmp, "inferred.onnx")
            onnx.shape_inference.infer_shapes_path(str(path), out)
            return onnx.load(out, load_external_data=False)
    except Exception as exc:
        logger.warning("ONNX shape inference failed (%s); using the types the model declares",
                       first_line(exc))
        return proto


# ------------------------------------------------------------------ lazy constants ---
#: initializers of at least this many bytes are not read at load time: external data is
#: mapped from its file when asked for, inline raw_data decoded when asked for
LAZY_MIN_BYTES = 4 * 2**20


def lazy_initializer(tensor: onnx.TensorProto, base_dir: str | None, where: str,
                     inline: bool = True, own_file: str | None = None) -> LazyArray | None:
    """A LazyArray over ``tensor``'s data when it is large (LAZY_MIN_BYTES), of a plain
    numpy element type, and stored as external data or (when ``inline``: the proto is
    mixprec's own, not the caller's, which could change it) raw_data; None otherwise (the
    caller reads it eagerly). External data at ``own_file`` (the model file's name, in
    ``base_dir``) is the file's own inline data read in place (``FileSlice.in_place``).
    Validates the tensor (``check_tensor``) first, reads nothing."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except Exception:  # an element type numpy has no plain form for
        return None
    if dtype.kind not in "fiub" or dtype.itemsize == 0 or dtype.byteorder == ">":
        return None
    shape = tuple(tensor.dims)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < LAZY_MIN_BYTES:
        return None
    check_tensor(tensor, base_dir, where)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        return FileSlice(os.path.join(base_dir or "", info["location"]), int(info.get("offset") or 0), dtype,
                         shape, in_place=own_file is not None and info["location"] == own_file)
    if inline and tensor.HasField("raw_data"):
        return ProtoBytes(tensor, dtype, shape)
    return None


# -------------------------------------------------------------------------- helpers ---
def _decode(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _copy_fields(src: Any, dst: Any, skip: Iterable[str]) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except ``skip``."""
    skip = set(skip)
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        target = getattr(dst, field.name)
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            target.extend(value)
        elif field.type == field.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _defined_names(gp: onnx.GraphProto) -> list[str]:
    """Names a graph defines at its own level (inputs, initializers, node outputs)."""
    names = [vi.name for vi in gp.input]
    declared = set(names)
    names += [t.name for t in gp.initializer if t.name not in declared]
    names += [s.values.name for s in gp.sparse_initializer]
    outputs: list[str] = []
    extend = outputs.extend
    for node in gp.node:
        extend(node.output)
    return names + ([n for n in outputs if n] if "" in outputs else outputs)


def _subgraphs(gp: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    for node in gp.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def _declared_names(gp: onnx.GraphProto, out: set[str]) -> set[str]:
    """Names of values whose type the model itself declares (value_info, outputs)."""
    out.update(vi.name for vi in gp.value_info)
    out.update(vi.name for vi in gp.output)
    for sub in _subgraphs(gp):
        _declared_names(sub, out)
    return out


def _all_names(gp: onnx.GraphProto, out: set[str]) -> set[str]:
    out.update(_defined_names(gp))
    for sub in _subgraphs(gp):
        _all_names(sub, out)
    return out


# ------------------------------------------------------------------------- lowering ---
#: NodeProto fields the IR node holds; any other set field goes to the node's shell
_NODE_LOWERED = frozenset(("input", "output", "name", "op_type", "domain", "attribute"))
#: the NodeProto fields the IR does not model (doc string, overload, metadata, ...): kept in a shell
_NODE_EXTRA = tuple(f.name for f in onnx.NodeProto.DESCRIPTOR.fields if f.name not in _NODE_LOWERED)
#: their values, read in C (a tuple even of one field)
_node_extra = operator.attrgetter(*_NODE_EXTRA) if len(_NODE_EXTRA) > 1 else \
    (lambda node: tuple(getattr(node, name) for name in _NODE_EXTRA))


class _Lowerer:
    """Lowers one ModelProto. Holds the tree-wide naming state and the round-trip meta."""

    def __init__(self, proto: onnx.ModelProto, base_dir: str | None, declared: set[str] | None,
                 lazy_inline: bool = False, own_file: str | None = None, table: NodeTable | None = None) -> None:
        self.proto = proto
        self.table = table  # filled with the main graph's nodes as read (attribute keys as their bytes)
        self.lazy_inline = lazy_inline  # the proto is mixprec's own: its raw_data may be read later
        self.own_file = own_file  # the model file's name, when it is read in place (``read_file``)
        self.base_dir = base_dir
        self.declared = declared
        self.inferred: set[str] = set()
        self._all_names: set[str] | None = None  # made when a fresh name is first needed
        self.claimed: set[str] = set()
        self.generated: set[str] = set()
        self.renamed: dict[str, str] = {}
        self.raw_types: dict[str, onnx.TypeProto] = {}
        self.graph_meta: dict[str, dict[str, Any]] = {}
        #: the main graph's values by ONNX name, and the types its proto declares
        self.main_scope: dict[str, Value] = {}
        self.main_types: dict[str, onnx.TypeProto] = {}

    def lower(self) -> Model:
        with paused_gc():  # long-lived graph objects: collections would rescan them again and again
            graph = self.lower_graph(self.proto.graph, None, {}, "")
            return Model(graph, self._model_meta())

    # ---- model meta ---------------------------------------------------------------------
    def _model_meta(self) -> dict[str, Any]:
        p = self.proto
        opsets: dict[str, int] = {}
        for entry in p.opset_import:
            opsets[entry.domain] = entry.version
        shell = onnx.ModelProto()
        _copy_fields(p, shell, skip=("graph", "ir_version", "opset_import", "producer_name", "producer_version",
                                     "domain", "model_version", "doc_string", "metadata_props",
                                     "functions", "training_info"))
        onnx_meta: dict[str, Any] = {"graphs": self.graph_meta, "renamed": self.renamed, "types": self.raw_types,
                                     "inferred": self.inferred}
        if shell.ByteSize():
            onnx_meta["model_shell"] = shell
        return {
            "ir_version": p.ir_version,
            "opset_import": opsets,
            "producer_name": p.producer_name,
            "producer_version": p.producer_version,
            "domain": p.domain,
            "model_version": p.model_version,
            "doc_string": p.doc_string,
            "metadata_props": {e.key: e.value for e in p.metadata_props},
            "functions": [_copy(f, onnx.FunctionProto) for f in p.functions],
            "training_info": [_copy(t, onnx.TrainingInfoProto) for t in p.training_info],
            ONNX_META: onnx_meta,
        }

    # ---- naming -------------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        counter = 0
        while True:
            counter += 1
            candidate = f"{base or 'unused'}.{counter}"
            if self._all_names is None:
                self._all_names = _all_names(self.proto.graph, set())
            if candidate not in self._all_names and candidate not in self.generated:
                self.generated.add(candidate)
                return candidate

    def _claim(self, gp: onnx.GraphProto) -> dict[str, str]:
        """Claim the names ``gp`` defines; names claimed earlier (by an enclosing or an
        earlier graph) get fresh IR names. Returns {onnx name: ir name} of the renames."""
        rename: dict[str, str] = {}
        names = _defined_names(gp)
        if not self.claimed:  # the first graph: nothing to rename; one set, unless a name repeats
            claimed = set(names)
            if len(claimed) == len(names):
                self.claimed = claimed
                return rename
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ModelLoadError(f"value {name!r} is defined twice in graph {gp.name!r}; the model is "
                                     "not valid ONNX (not in SSA form): re-export it")
            seen.add(name)
            if name in self.claimed:
                new = self._fresh(name)
                rename[name] = new
                self.renamed[new] = name
                logger.debug("graph %r re-defines %r; named %r in the IR", gp.name, name, new)
            else:
                self.claimed.add(name)
        return rename

    # ---- graphs -------------------------------------------------------------------------
    def lower_graph(self, gp: onnx.GraphProto, parent: Graph | None, outer: Mapping[str, Value],
                    key: str) -> Graph:
        graph = Graph(gp.name, "onnx", parent)
        rename = self._claim(gp)
        scope: ChainMap[str, Value] = ChainMap({}, outer)
        types = {vi.name: vi.type for vi in list(gp.input) + list(gp.value_info) + list(gp.output)}
        if key == "":
            self.main_scope, self.main_types = scope.maps[0], types
        meta: dict[str, Any] = {}
        init_names = {t.name for t in gp.initializer}
        for tensor in gp.initializer:
            where = f"initializer {tensor.name!r} of graph {gp.name!r}"
            data = lazy_initializer(tensor, self.base_dir, where, self.lazy_inline, self.own_file)
            value = self._constant(tensor.name, rename, data if data is not None
                                   else tensor_to_array(tensor, self.base_dir, where, checked=True))
            scope[tensor.name] = graph.add_constant(value)
        self._sparse_initializers(gp, graph, rename, scope, meta)
        for pos, vi in enumerate(gp.input):
            if vi.name in init_names:
                meta.setdefault("initializer_inputs", []).append(
                    (pos, rename.get(vi.name, vi.name), _copy(vi, onnx.ValueInfoProto)))
                continue
            scope[vi.name] = graph.add_input(self._value(vi.name, rename, types.get(vi.name)))
        output_names = {vi.name for vi in gp.output}
        rows = None
        if key == "" and self.table is not None:
            self.table.clear()
            rows = self.table.rows
        for np_node in gp.node:
            op = np_node.op_type
            if op == "Constant" and self._lift_constant(np_node, graph, rename, scope, output_names, meta):
                if rows is not None:
                    rows.append((op, np_node.domain, tuple(np_node.input), tuple(np_node.output), None, None))
                continue
            row = self._node(np_node, op, graph, rename, scope, types, key, rows is not None)
            if rows is not None:
                rows.append(row)
        for vi in gp.output:
            graph.outputs.append(self._output(vi, gp, scope))
        self._graph_extras(gp, scope.maps[0].keys(), meta)
        if meta:
            self.graph_meta[key] = meta
        return graph

    def apply_types(self, inferred: InferredTypes) -> None:
        """Type the main graph (lowered with its declared types) as lowering the proto
        shape inference returned would have (``inferred``: that proto's main-graph types).
        Every graph input and node output takes the type its name has there (the last of
        input, value_info, output), one that has none there is untyped; a graph output
        still untyped then takes its output entry's."""
        entries, outputs = inferred
        types = dict(entries)
        scope = self.main_scope
        with paused_gc():
            for name in self.main_types.keys() - types.keys():
                value = scope.get(name)
                if value is not None and not value.is_constant:
                    value.dtype, value.shape = DType.UNKNOWN, None
                    self.raw_types.pop(value.name, None)
            for name, data in types.items():
                value = scope.get(name)
                if value is not None and not value.is_constant:
                    self._apply_type_bytes(value, data)
            for name, data in outputs:
                value = scope.get(name)
                if value is not None and value.dtype == DType.UNKNOWN and value.name not in self.raw_types \
                        and onnx.TypeProto.FromString(data).WhichOneof("value") is not None:
                    self._apply_type_bytes(value, data)

    def _graph_extras(self, gp: onnx.GraphProto, local_names: Iterable[str], meta: dict[str, Any]) -> None:
        """Graph fields without an IR counterpart (doc string, metadata, quantization
        annotations) and value_info entries for values this graph does not define."""
        shell = onnx.GraphProto()
        _copy_fields(gp, shell, skip=("node", "name", "initializer", "sparse_initializer", "input",
                                      "output", "value_info"))
        if shell.ByteSize():
            meta["shell"] = shell
        extra = [_copy(vi, onnx.ValueInfoProto) for vi in gp.value_info if vi.name not in local_names]
        if extra:
            meta["value_info"] = extra

    def _output(self, vi: onnx.ValueInfoProto, gp: onnx.GraphProto, scope: Mapping[str, Value]) -> Value:
        value = scope.get(vi.name)
        if value is None:
            raise ModelLoadError(f"graph {gp.name!r} returns {vi.name!r}, which nothing defines; the model "
                                 "is incomplete or corrupt: re-export it")
        untyped = value.dtype == DType.UNKNOWN and value.name not in self.raw_types
        if untyped and vi.type.WhichOneof("value") is not None:  # an input or outer value returned as is
            self._apply_type(value, vi.type)
        return value

    def _sparse_initializers(self, gp: onnx.GraphProto, graph: Graph, rename: dict[str, str],
                             scope: dict, meta: dict[str, Any]) -> None:
        for sparse in gp.sparse_initializer:
            dense = sparse_to_dense(sparse, self.base_dir,
                                    f"sparse initializer {sparse.values.name!r} of graph {gp.name!r}")
            value = self._constant(sparse.values.name, rename, dense)
            scope[sparse.values.name] = graph.add_constant(value)
            meta.setdefault("sparse", {})[value.name] = len(sparse.indices.dims)

    def _lift_constant(self, node: onnx.NodeProto, graph: Graph, rename: dict[str, str], scope: dict,
                       output_names: set[str], meta: dict[str, Any]) -> bool:
        """A ``Constant`` node holding a ``value`` tensor becomes a graph constant (the
        backend writes it back as a Constant node); graph outputs stay nodes."""
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            return False
        if len(node.attribute) != 1 or node.attribute[0].name != "value" or node.attribute[0].ref_attr_name:
            return False
        if node.output[0] in output_names or not node.output[0]:
            return False
        data = tensor_to_array(node.attribute[0].t, self.base_dir,
                               f"attribute 'value' of node {node.name or node.op_type!r} (Constant)")
        try:
            DType.from_numpy(data.dtype)
        except ValueError:
            return False
        value = self._constant(node.output[0], rename, data)
        scope[node.output[0]] = graph.add_constant(value)
        shell = onnx.NodeProto()
        _copy_fields(node, shell, skip=("input", "output", "attribute"))
        meta.setdefault("constant_nodes", {})[value.name] = shell
        return True

    # ---- values -------------------------------------------------------------------------
    def _value(self, name: str, rename: dict[str, str], tp: onnx.TypeProto | None) -> Value:
        value = Value(rename.get(name, name))
        if tp is not None:
            self._apply_type(value, tp)
        return value

    def _apply_type(self, value: Value, tp: onnx.TypeProto) -> None:
        dtype, shape, lossy = type_from_proto(tp)
        value.dtype, value.shape = dtype, shape
        if lossy:
            self.raw_types[value.name] = _copy(tp, onnx.TypeProto)
        else:
            self.raw_types.pop(value.name, None)

    def _apply_type_bytes(self, value: Value, data: bytes) -> None:
        """``_apply_type`` of a serialized TypeProto."""
        dtype, shape, lossy = type_from_bytes(data)
        value.dtype, value.shape = dtype, shape
        if lossy:
            self.raw_types[value.name] = onnx.TypeProto.FromString(data)
        else:
            self.raw_types.pop(value.name, None)

    def _constant(self, name: str, rename: dict[str, str], data: "np.ndarray | LazyArray") -> Value:
        try:
            dtype = DType.from_numpy(data.dtype)
        except ValueError:
            dtype = DType.UNKNOWN
        return Value(rename.get(name, name), dtype, data.shape, data)

    def _lookup(self, scope: ChainMap[str, Value], name: str, node: onnx.NodeProto) -> Value:
        value = scope.maps[0].get(name)  # this graph's own values first: a plain dict read
        if value is None:
            value = scope.get(name)
        if value is None:
            raise ModelLoadError(f"node {node.name or node.op_type!r} ({node.op_type}) reads {name!r}, which no "
                                 "node, input or initializer defines before it; the model is incomplete, "
                                 "corrupt or not topologically sorted: re-export it")
        return value

    # ---- nodes --------------------------------------------------------------------------
    def _node(self, np_node: onnx.NodeProto, op: str, graph: Graph, rename: dict[str, str], scope: ChainMap,
              types: Mapping[str, onnx.TypeProto], key: str, row: bool = False) -> tuple | None:
        """Lower ``np_node`` into ``graph``; with ``row``, return its NodeTable row (types left to the proto)."""
        local = scope.maps[0]  # this graph's own values: a plain dict read first
        inputs = []
        read = tuple(np_node.input)
        for name in read:
            if name == "":
                inputs.append(None)
            else:
                value = local.get(name)
                inputs.append(value if value is not None else self._lookup(scope, name, np_node))
        outputs = []
        names = tuple(np_node.output)
        declared = self.declared
        for name in names:
            if name == "":
                placeholder = self._fresh(f"{np_node.name or op}.unused")
                self.renamed[placeholder] = ""
                outputs.append(Value(placeholder))
            else:
                tp = types.get(name)
                value = Value(rename.get(name, name)) if tp is None else self._value(name, rename, tp)
                if declared is not None and name not in declared:
                    self.inferred.add(value.name)
                outputs.append(value)
        node_name = np_node.name
        node = Node(op, inputs, outputs, {}, domain=np_node.domain, name=node_name or None)
        node_meta: dict[str, Any] = {}
        attributes = np_node.attribute
        if attributes:
            attrs = node.attrs
            for attr in attributes:
                attrs[attr.name] = self._attr(attr, np_node, node, graph, scope, key, node_meta)
        if any(_node_extra(np_node)):
            shell = onnx.NodeProto()
            _copy_fields(np_node, shell, skip=_NODE_LOWERED)
            if shell.ByteSize():
                node_meta["shell"] = shell
        if not node_name:
            node_meta["unnamed"] = True
        if node_meta:
            node.meta[NODE_META] = node_meta
        graph.append(node)
        for name, value in zip(names, outputs):
            if name:
                local[name] = value
        if not row:
            return None
        return (op, node.domain, read, names,
                b"".join([a.SerializeToString() for a in attributes]) if attributes else b"", None)

    def _attr(self, attr: onnx.AttributeProto, np_node: onnx.NodeProto, node: Node, graph: Graph,
              scope: Mapping[str, Value], key: str, node_meta: dict[str, Any]) -> Any:
        A = onnx.AttributeProto
        if attr.ref_attr_name:
            return RawAttribute(attr)
        kind = attr.type
        if kind == A.INT:
            if attr.name == "to" and np_node.op_type == "Cast" and np_node.domain in ("", "ai.onnx"):
                dtype = dtype_from_onnx(attr.i)
                return dtype if dtype != DType.UNKNOWN else attr.i
            return attr.i
        if kind == A.FLOAT:
            return attr.f
        if kind == A.STRING:
            return _decode(attr.s)
        if kind == A.TENSOR:
            return self._tensor_attr(attr, attr.t, node)
        if kind == A.GRAPH:
            return self.lower_graph(attr.g, graph, scope, graph_key(key, node, attr.name))
        if kind in (A.INTS, A.FLOATS, A.STRINGS, A.TENSORS, A.GRAPHS):
            try:
                items = self._list_attr(attr, graph, node, scope, key)
            except ValueError:  # a tensor of an element type the IR does not model
                return RawAttribute(attr)
            if not items:
                node_meta.setdefault("attr_types", {})[attr.name] = kind
            return items
        return RawAttribute(attr)

    def _list_attr(self, attr: onnx.AttributeProto, graph: Graph, node: Node, scope: Mapping[str, Value],
                   key: str) -> list[Any]:
        A = onnx.AttributeProto
        if attr.type == A.INTS:
            return list(attr.ints)
        if attr.type == A.FLOATS:
            return list(attr.floats)
        if attr.type == A.STRINGS:
            return [_decode(s) for s in attr.strings]
        if attr.type == A.TENSORS:
            arrays = [tensor_to_array(t, self.base_dir, f"attribute {attr.name!r}[{i}] of node {node.name!r}")
                      for i, t in enumerate(attr.tensors)]
            for array in arrays:
                DType.from_numpy(array.dtype)  # raises for exotic dtypes; caller keeps it raw
            return arrays
        return [self.lower_graph(g, graph, scope, graph_key(key, node, attr.name, i))
                for i, g in enumerate(attr.graphs)]

    def _tensor_attr(self, attr: onnx.AttributeProto, tensor: onnx.TensorProto, node: Node) -> Any:
        data = tensor_to_array(tensor, self.base_dir, f"attribute {attr.name!r} of node {node.name!r}")
        try:
            DType.from_numpy(data.dtype)
        except ValueError:
            return RawAttribute(attr)
        return data


def _copy(message: Any, cls: type) -> Any:
    out = cls()
    out.CopyFrom(message)
    return out
