"""ONNX backend: ``emit(ir.Model) -> onnx.ModelProto``, ``validate``, ``save``.

``emit`` is the inverse of mixprec.frontends.onnx.load: with no passes in between, the
emitted model has the same graph structure, names, attributes, opsets and metadata as the
input (Constant nodes come first in their graph), so onnxruntime gives bit-identical
outputs. Every intermediate value with a known dtype gets a value_info entry and graph
outputs are typed, so the checker sees types.

Opsets: an op whose schema at the model's opset does not accept a tensor type the graph
now gives it (bf16 Conv/MaxPool/AveragePool need opset >= 22) raises the default-domain
opset to the lowest one that accepts every such type; the rest of the model is brought
to that opset by ``onnx.version_converter``.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mixprec import progress
from mixprec.dialects.onnx import (LARGE_MODEL_BYTES, NODE_META, ONNX_META, NodeTable, RawAttribute, dtype_to_onnx,
                                   graph_key, onnx_type_string, sparse_to_dense, sub_byte_types, type_from_proto)
from mixprec.errors import ConfigError, ConversionError
from mixprec.fileio import atomic_write, atomic_write_bytes, first_line, make_temp_dir, publish, same_file
from mixprec.ir.dtypes import DType
from mixprec.ir.cast import make_cast
from mixprec.ir.gcpause import paused_gc
from mixprec.ir.graph import Graph, Model, Node, Value
from mixprec.ir.lazy import CHUNK_BYTES, LazyArray, in_external_data, is_lazy


logger = logging.getLogger(__name__)

#: default-domain opset for models that carry no opset (hand-built or parsed IR)
DEFAULT_OPSET = 22
#: models at least this large are saved with their tensors in an external data file
EXTERNAL_DATA_THRESHOLD = LARGE_MODEL_BYTES
_DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- emit ---
def emit(model: Model, opset: int | None = None) -> onnx.ModelProto:
    """Write ``model`` back as an ONNX ModelProto.

    ``opset`` forces the default-domain opset (the model is converted to it); without it
    the model keeps its opset unless an op needs a newer one for the tensor types it now
    reads (then the lowest opset that accepts them). Raises ConversionError when the
    model cannot be expressed (constant without data, failed opset conversion, a forced
    opset below what the types need) and ConfigError for a non-ONNX model."""
    if model.framework not in ("onnx", "generic"):
        raise ConfigError(f"the ONNX backend cannot emit a {model.framework} model; use the "
                          f"{model.framework} backend")
    return _emit_needing(model, required_opset(model.graph, _model_opset(model)), opset)


def _model_opset(model: Model) -> int:
    """The model's default-domain opset (DEFAULT_OPSET when it declares none)."""
    opsets = model.meta.get("opset_import") or {}
    return int(next((v for d, v in opsets.items() if d in _DEFAULT_DOMAINS), DEFAULT_OPSET))


def _emit_needing(model: Model, required: tuple[int, str], opset: int | None = None,
                  table: NodeTable | None = None) -> onnx.ModelProto:
    """``emit`` given ``required_opset``'s answer for the model as it is."""
    proto = _emit_proto(model, table)
    current = _default_opset(proto)
    needed, reason = required
    target = needed if opset is None else opset
    if opset is not None and opset < needed:
        raise ConversionError(f"opset {opset} is too old for this model: {reason}; use opset >= {needed}")
    if target != current:
        logger.info("converting the model from opset %d to %d (%s)", current, target, reason or "requested")
        proto = _convert_opset(proto, current, target, reason or "requested")
        if table is not None:
            table.clear()  # the converter wrote other nodes
    return proto


def emit_legal(model: Model, table: NodeTable | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """``emit``, making every node legal at the emitted opset: a node whose tensor types
    its schema at the model's opset rejects (bf16 Conv before opset 22, a f16
    BatchNormalization with f32 statistics before opset 15, ...) raises the opset when a
    newer schema accepts it and ``onnx.version_converter`` can convert the model; else
    the node is kept in float32 (``keep_in_float32``; ``model`` is changed in place).
    Returns the proto and report notes naming what was done; ``table``, when given, is
    filled with what was written for the main graph's nodes (empty when an opset
    conversion rewrote them)."""
    if model.framework not in ("onnx", "generic"):
        raise ConfigError(f"the ONNX backend cannot emit a {model.framework} model; use the "
                          f"{model.framework} backend")
    current = _model_opset(model)
    notes: list[str] = []
    with paused_gc():
        answers = [(n, _legality(_signature(n), current)) for n in _standard_nodes(model.graph)]
    stuck = [n for n, answer in answers if answer == (True, None)]
    if stuck:
        keep_in_float32(stuck)
        notes.append(_kept_note(stuck, "no opset of their op accepts their mixed types"))
        needed, reason = required_opset(model.graph, current)
    else:  # the graph is as it was when asked
        needed, reason = _required(answers, current)
    if needed == current:
        return _emit_needing(model, (needed, reason), table=table), notes
    try:
        proto = _emit_needing(model, (needed, reason), table=table)
    except ConversionError as exc:
        if table is not None:
            table.clear()
        nodes = illegal_nodes(model.graph, current)
        if not nodes:
            raise
        keep_in_float32(nodes)
        notes.append(_kept_note(nodes, f"the model cannot be converted from opset {current} to {needed} "
                                       f"({first_line(exc, 160)})"))
        return emit(model), notes
    notes.append(f"opset raised from {current} to {needed}: {reason}")
    return proto, notes


def _kept_note(nodes: list[Node], why: str) -> str:
    names = ", ".join(f"{n.name!r} ({n.op})" for n in nodes[:8]) + (f" and {len(nodes) - 8} more" if len(nodes) > 8
                                                                     else "")
    return f"kept in float32 because {why}: {names}"


def keep_in_float32(nodes: list[Node]) -> None:
    """Run each node in float32: its bf16/f16 inputs are cast to float32, its bf16/f16
    outputs become float32 and are cast back for their readers (and graph outputs), so
    the rest of the graph sees the types it had. The node's precision meta says f32."""
    for node in nodes:
        graph = node.graph
        assert graph is not None
        for index, value in enumerate(node.inputs):
            if value is not None and value.dtype.is_low_precision:
                cast = make_cast(graph, value, DType.FLOAT32)
                graph.insert_before(node, cast)
                node.set_input(index, cast.outputs[0])
        for value in node.outputs:
            if not value.dtype.is_low_precision:
                continue
            low = value.dtype
            readers = value.uses()
            value.dtype = DType.FLOAT32
            cast = make_cast(graph, value, low)
            graph.insert_after(node, cast)
            rounded = cast.outputs[0]
            value.name, rounded.name = rounded.name, value.name  # readers keep the name they read
            for reader, index in readers:
                reader.set_input(index, rounded)
            if value in graph.outputs:
                graph.replace_output(value, rounded)
        node.meta["precision"] = DType.FLOAT32.value
        node.meta["reason"] = "kept f32: its op's schema rejects its mixed types at the model's opset"


def _emit_proto(model: Model, table: NodeTable | None = None) -> onnx.ModelProto:
    """The model as a ModelProto at its own opset (no conversion)."""
    proto = onnx.ModelProto()
    with paused_gc():
        _Emitter(model, table).fill_graph(proto.graph, model.graph, "")
    _fill_model_fields(proto, model.meta)
    return proto


def _fill_model_fields(proto: onnx.ModelProto, meta: dict[str, Any]) -> None:
    shell = meta.get(ONNX_META, {}).get("model_shell")
    if shell is not None:
        proto.MergeFrom(shell)
    opsets = dict(meta.get("opset_import") or {"": DEFAULT_OPSET})
    proto.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    for field in ("producer_name", "producer_version", "domain", "doc_string"):
        if meta.get(field):
            setattr(proto, field, meta[field])
    if meta.get("model_version"):
        proto.model_version = meta["model_version"]
    if meta.get("metadata_props"):
        helper.set_model_props(proto, {str(k): str(v) for k, v in meta["metadata_props"].items()})
    proto.functions.extend(meta.get("functions") or [])
    proto.training_info.extend(meta.get("training_info") or [])
    proto.ir_version = max(int(meta.get("ir_version") or 0), _min_ir_version(proto))


def _min_ir_version(proto: onnx.ModelProto) -> int:
    try:
        return helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    except Exception:  # pragma: no cover - an opset newer than this onnx knows
        return onnx.IR_VERSION


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return entry.version
    return DEFAULT_OPSET


_NO_META: dict[str, Any] = {}
#: the type of a value whose type is unknown (shared, never changed)
_EMPTY_TYPE = onnx.TypeProto()


class _Emitter:
    """Builds GraphProtos from IR graphs, restoring ONNX names from the model meta."""

    def __init__(self, model: Model, table: NodeTable | None = None) -> None:
        onnx_meta = model.meta.get(ONNX_META, {})
        self.table = table
        self.renamed: dict[str, str] = onnx_meta.get("renamed", {})
        self.raw_types: dict[str, onnx.TypeProto] = onnx_meta.get("types", {})
        self.graph_meta: dict[str, dict[str, Any]] = onnx_meta.get("graphs", {})
        self.inferred: set[str] = onnx_meta.get("inferred", set())
        #: (element type, shape) -> its TypeProto, built once
        self._types: dict[tuple[int, Any], onnx.TypeProto] = {}

    def name(self, value: Value) -> str:
        return self.renamed.get(value.name, value.name)

    # ---- graphs -------------------------------------------------------------------------
    def fill_graph(self, gp: onnx.GraphProto, graph: Graph, key: str) -> None:
        meta = self.graph_meta.get(key, {})
        if "shell" in meta:
            gp.MergeFrom(meta["shell"])
        gp.name = graph.name
        self._constants(gp, graph, meta)
        gp.input.extend(self._inputs(graph, meta))
        add_node = gp.node.add  # filled in place: a built NodeProto would be copied in
        if key == "" and self.table is not None:
            self.table.clear()
            self.table.start = len(gp.node)
            rows = self.table.rows
            for node in graph.iter_nodes():
                rows.append(self.fill_node(add_node(), node, key))
        else:
            for node in graph.iter_nodes():
                self.fill_node(add_node(), node, key)
        gp.output.extend(self.value_info(v, required=True) for v in graph.outputs)
        emitted = {vi.name for vi in gp.input} | {vi.name for vi in gp.output} | {vi.name for vi in gp.value_info}
        add_info = gp.value_info.add
        for node in graph.iter_nodes():
            for value in node._outputs:
                name = self.name(value)
                if name and name not in emitted:
                    tp = self.type_of(value, required=False, with_shape=value.name not in self.inferred)
                    if tp is not None:
                        vi = add_info(name=name)
                        if tp is not _EMPTY_TYPE:
                            vi.type.CopyFrom(tp)
                        emitted.add(name)
        gp.value_info.extend(vi for vi in meta.get("value_info", []) if vi.name not in emitted)

    def _constants(self, gp: onnx.GraphProto, graph: Graph, meta: dict[str, Any]) -> None:
        constant_nodes = meta.get("constant_nodes", {})
        sparse = meta.get("sparse", {})
        for value in graph.constants.values():
            if value.name in constant_nodes:
                node = onnx.NodeProto()
                node.CopyFrom(constant_nodes[value.name])
                node.output.append(self.name(value))
                node.attribute.append(helper.make_attribute("value", self.tensor(value, "")))
                gp.node.append(node)
                info = self.value_info(value, required=False)
                if info is not None:
                    gp.value_info.append(info)
            elif value.name in sparse:
                gp.sparse_initializer.append(self._sparse(value, sparse[value.name]))
            elif is_lazy(value.storage):
                gp.initializer.append(deferred_tensor(value, self.name(value)))
            else:
                gp.initializer.append(self.tensor(value, self.name(value)))

    def _inputs(self, graph: Graph, meta: dict[str, Any]) -> list[onnx.ValueInfoProto]:
        inputs = [self.value_info(v, required=True) for v in graph.inputs]
        for pos, ir_name, vi in meta.get("initializer_inputs", []):
            const = graph.constants.get(ir_name)
            if const is None:
                continue  # a pass removed the constant
            declared = type_from_proto(vi.type)[:2]
            if declared[0] == const.dtype and (declared[1] is None or len(declared[1]) == len(const.shape or ())):
                entry = onnx.ValueInfoProto()
                entry.CopyFrom(vi)
            else:  # a pass retyped the constant: declare its new type
                entry = self.value_info(const, required=True)
            inputs.insert(min(pos, len(inputs)), entry)
        return inputs

    def value_info(self, value: Value, required: bool, with_shape: bool = True) -> onnx.ValueInfoProto | None:
        """The ValueInfoProto of ``value``; None when its type is unknown and not required."""
        tp = self.type_of(value, required, with_shape)
        if tp is None:
            return None
        vi = onnx.ValueInfoProto(name=self.name(value))
        if tp is not _EMPTY_TYPE:
            vi.type.CopyFrom(tp)
        return vi

    def type_of(self, value: Value, required: bool, with_shape: bool = True) -> onnx.TypeProto | None:
        """The TypeProto of ``value`` (shared: copy it, never change it): the model's own where
        it still holds, an empty one for an unknown type when ``required``, else None."""
        raw = self.raw_types.get(value.name)
        if raw is not None and type_from_proto(raw)[:2] == (value.dtype, value.shape):
            return raw
        if value.dtype == DType.UNKNOWN:
            return _EMPTY_TYPE if required else None
        shape = None if value.shape is None or not with_shape else value.shape
        key = (dtype_to_onnx(value.dtype), shape)
        tp = self._types.get(key)
        if tp is None:
            tp = self._types[key] = helper.make_tensor_value_info("", key[0], None if shape is None else list(shape)
                                                                  ).type
        return tp

    # ---- tensors ------------------------------------------------------------------------
    def tensor(self, value: Value, name: str) -> onnx.TensorProto:
        data = _constant_data(value)
        return numpy_helper.from_array(data, name)

    def _sparse(self, value: Value, index_rank: int) -> onnx.SparseTensorProto:
        data = _constant_data(value)
        flat = data.reshape(-1)
        positions = np.flatnonzero(flat != np.zeros((), dtype=flat.dtype))
        indices = np.stack(np.unravel_index(positions, data.shape), axis=1) if index_rank == 2 else positions
        sparse = onnx.SparseTensorProto()
        sparse.values.CopyFrom(numpy_helper.from_array(flat[positions], self.name(value)))
        sparse.indices.CopyFrom(numpy_helper.from_array(indices.astype(np.int64)))
        sparse.dims.extend(data.shape)
        return sparse

    # ---- nodes --------------------------------------------------------------------------
    def fill_node(self, proto: onnx.NodeProto, node: Node, key: str) -> tuple:
        """Fill the empty ``proto`` with ``node``; returns its row of ``NodeTable``."""
        meta = node.meta.get(NODE_META, _NO_META)
        renamed = self.renamed
        outputs = node._outputs
        default_name = outputs[0].name if outputs else node.op
        if "shell" in meta:  # fields the IR does not model (doc string, metadata, ...)
            proto.CopyFrom(meta["shell"])
        proto.op_type = node.op
        proto.domain = node.domain
        proto.name = "" if meta.get("unnamed") and node.name == default_name else node.name
        inputs = tuple(["" if v is None else renamed.get(v.name, v.name) for v in node._inputs])
        names = tuple([renamed.get(v.name, v.name) for v in outputs])
        proto.input.extend(inputs)
        proto.output.extend(names)
        attr_key: tuple | None = ()
        if node.attrs:
            attr_types = meta.get("attr_types", _NO_META)
            for attr_name, value in node.attrs.items():
                value = _typed_attr(node, attr_name, value)
                if _fill_plain_attr(proto.attribute, attr_name, value):
                    if attr_key is not None:
                        attr_key += ((attr_name, value.__class__, tuple(value) if value.__class__ is list else value),)
                else:
                    proto.attribute.append(self.attribute(attr_name, value, node, key, attr_types.get(attr_name)))
                    attr_key = None
        return node.op, node.domain, inputs, names, attr_key, tuple([v.dtype for v in outputs])

    def attribute(self, name: str, value: Any, node: Node, key: str, attr_type: int | None) -> onnx.AttributeProto:
        A = onnx.AttributeProto
        if isinstance(value, RawAttribute):
            attr = onnx.AttributeProto()
            attr.CopyFrom(value.proto)
            attr.name = name
            return attr
        if isinstance(value, Graph):
            attr = onnx.AttributeProto(name=name, type=A.GRAPH)
            self.fill_graph(attr.g, value, graph_key(key, node, name))
            return attr
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Graph) for v in value):
            attr = onnx.AttributeProto(name=name, type=A.GRAPHS)
            for index, sub in enumerate(value):
                self.fill_graph(attr.graphs.add(), sub, graph_key(key, node, name, index))
            return attr
        try:
            if isinstance(value, (list, tuple)) and not value:
                return helper.make_attribute(name, [], attr_type=attr_type or A.INTS)
            return helper.make_attribute(name, _attr_value(value))
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"node {node.name!r} ({node.op}): attribute {name}={value!r} cannot be "
                                  f"written to ONNX ({exc})") from None


def _fill_plain_attr(attributes: Any, name: str, value: Any) -> bool:
    """Add the attribute of a plain value (int, float, str, DType, a non-empty list of ints
    or of floats) to the repeated field ``attributes``, as ``helper.make_attribute`` writes
    it, in place; False (nothing added) for any other value."""
    A = onnx.AttributeProto
    kind = value.__class__
    if kind is int:
        attr = attributes.add(name=name, type=A.INT)
        attr.i = value
    elif kind is DType:
        attr = attributes.add(name=name, type=A.INT)
        attr.i = dtype_to_onnx(value)
    elif kind is float:
        attr = attributes.add(name=name, type=A.FLOAT)
        attr.f = value
    elif kind is str:
        attributes.add(name=name, type=A.STRING, s=value.encode("utf-8"))
    elif kind is list and value and all(v.__class__ is int for v in value):
        attributes.add(name=name, type=A.INTS).ints.extend(value)
    elif kind is list and value and all(v.__class__ is float for v in value):
        attributes.add(name=name, type=A.FLOATS).floats.extend(value)
    else:
        return False
    return True


#: ops whose output element type an attribute sets: op -> (attribute, kind)
_TYPE_SETTING_ATTRS = {"ConstantOfShape": ("value", "tensor"), "EyeLike": ("dtype", "dtype"),
                       "RandomNormalLike": ("dtype", "dtype"), "RandomUniformLike": ("dtype", "dtype")}


def _typed_attr(node: Node, name: str, value: Any) -> Any:
    """An attribute that sets the output element type (ConstantOfShape's ``value``,
    EyeLike's ``dtype``) follows the output's dtype when a pass retyped the output, so
    the model stays consistent (shape inference derives the output type from it)."""
    spec = _TYPE_SETTING_ATTRS.get(node.op)
    if node.domain or spec is None or spec[0] != name or not node.outputs:
        return value
    out = node.outputs[0].dtype
    if not out.is_float:
        return value
    if spec[1] == "tensor" and isinstance(value, np.ndarray) and value.dtype != out.to_numpy():
        return value.astype(out.to_numpy())
    if spec[1] == "dtype" and isinstance(value, (DType, int)) and value != out:
        return out
    return value


def _attr_value(value: Any) -> Any:
    """An IR attribute value as something onnx.helper.make_attribute accepts."""
    if isinstance(value, DType):
        return dtype_to_onnx(value)
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_attr_value(v) for v in value]
    if isinstance(value, (bool, int, float, str, bytes)):
        return value
    raise TypeError(f"unsupported attribute value type {type(value).__name__}")


def _constant_data(value: Value) -> np.ndarray:
    if value.data is None:
        raise ConversionError(f"constant %{value.name} has no data (an IR parsed from an elided text dump "
                              "cannot be emitted); convert the model from its original file")
    data = np.asarray(value.data)
    if value.dtype not in (DType.UNKNOWN, DType.STRING) and data.dtype != value.dtype.to_numpy():
        raise ConversionError(f"constant %{value.name} is typed {value.dtype.value} but holds {data.dtype} "
                              "data; the pass that retyped it must convert its data too")
    return data


# --------------------------------------------------------------- deferred tensors ---
#: external-data ``location`` of an initializer whose data the emitted proto does not
#: hold yet: the rest names its entry in ``_PENDING``; ``save`` streams it to the data
#: file and ``resolved`` reads it into a copy of the proto
PENDING_PREFIX = "mixprec-pending:"
_PENDING: dict[str, LazyArray] = {}


def deferred_tensor(value: Value, name: str) -> onnx.TensorProto:
    """An initializer for ``value``'s lazily stored data that holds no data: marked
    EXTERNAL at a pending location, its bytes read only when the model is saved (one
    tensor at a time) or resolved. ConversionError when the data's type is not the value's."""
    data = value.storage
    assert isinstance(data, LazyArray)
    if value.dtype not in (DType.UNKNOWN, DType.STRING) and data.dtype != value.dtype.to_numpy():
        raise ConversionError(f"constant %{value.name} is typed {value.dtype.value} but holds {data.dtype} "
                              "data; the pass that retyped it must convert its data too")
    key = f"{len(_PENDING)}"
    _PENDING[key] = data
    tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(data.dtype), dims=data.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", PENDING_PREFIX + key
    return tensor


def _pending_source(tensor: onnx.TensorProto) -> LazyArray | None:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location" and entry.value.startswith(PENDING_PREFIX):
            source = _PENDING.get(entry.value[len(PENDING_PREFIX):])
            if source is None:
                raise ConversionError(f"initializer {tensor.name!r} refers to data that is gone; emit the model "
                                      "again in this process before saving it")
            return source
    return None


def initializer_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of an initializer of an emitted proto, its pending data
    (``deferred_tensor``) read from its source; other tensors as numpy_helper reads them."""
    source = _pending_source(tensor)
    if source is not None:
        return np.asarray(source.materialize())
    return numpy_helper.to_array(tensor)


def _all_initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for sub in _all_graphs(graph):
        yield from sub.initializer


def _pending_from_files(proto: onnx.ModelProto) -> bool:
    """True when some pending initializer is read from an external data file (the input
    kept its weights in external data; a file's own inline data read in place does not
    count: such a model is written inline like its input, below 2 GiB)."""
    return bool(_PENDING) and any(in_external_data(source) for t in _all_initializers(proto.graph)
               if (source := _pending_source(t)) is not None)


def pending_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of initializer data ``proto`` refers to but does not hold (see ``deferred_tensor``);
    0 without a walk of the graphs when this process deferred no tensor."""
    if not _PENDING:
        return 0
    return sum(source.nbytes for t in _all_initializers(proto.graph)
               if (source := _pending_source(t)) is not None)


def resolved(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` itself when it holds all its data, else a copy whose pending initializers
    hold their data inline (in memory: for running the model, not for saving it)."""
    if not pending_bytes(proto):
        return proto
    out = _copy_proto(proto)
    for graph in _all_graphs(out.graph):
        _resolve_graph(graph)
    return out


# ------------------------------------------------------------------------- opsets ---
@functools.lru_cache(maxsize=1)
def _schema_table() -> dict[tuple[str, str], list[Any]]:
    table: dict[tuple[str, str], list[Any]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        table.setdefault((schema.domain, schema.name), []).append(schema)
    for versions in table.values():
        versions.sort(key=lambda s: s.since_version)
    return table


#: the element types a node reads and writes, with its op: (op, input dtypes, output
#: dtypes); an omitted input counts as untyped. Schema legality depends on nothing else.
_Signature = tuple[str, tuple[DType, ...], tuple[DType, ...]]


def _signature(node: Node) -> _Signature:
    unknown = DType.UNKNOWN
    return (node.op, tuple(unknown if v is None else v.dtype for v in node._inputs),
            tuple(v.dtype for v in node._outputs))


def _accepts(schema: Any, inputs: tuple[DType, ...], outputs: tuple[DType, ...]) -> bool:
    """True when the input and output element types satisfy ``schema``'s type
    constraints: each value's type is one its formal parameter allows, and every
    occurrence of a type parameter (``T`` of BatchNormalization's X, scale, B, mean and
    var before opset 15) binds to one type (heterogeneous variadics, as Loop's carried
    values, excepted). Untyped values (DType.UNKNOWN) match anything."""
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: dict[str, str] = {}
    for formals, dtypes in ((list(schema.inputs), inputs), (list(schema.outputs), outputs)):
        for index, dtype in enumerate(dtypes):
            if dtype == DType.UNKNOWN:
                continue
            formal = _formal_at(formals, index)
            if formal is None:
                continue  # arity problems are the checker's to report
            type_str = onnx_type_string(dtype)
            if type_str not in constraints.get(formal.type_str, {formal.type_str}):
                return False
            variadic = formal.option == onnx.defs.OpSchema.FormalParameterOption.Variadic
            if formal.type_str in constraints and (not variadic or formal.is_homogeneous):
                if bound.setdefault(formal.type_str, type_str) != type_str:
                    return False
    return True


def _formal_at(formals: list[Any], index: int) -> Any:
    if index < len(formals):
        return formals[index]
    if formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return formals[-1]
    return None


@functools.lru_cache(maxsize=65536)
def _legality(signature: _Signature, current: int) -> tuple[bool, int | None]:
    """(illegal, lowest) for a standard-domain node of ``signature`` in a model at opset
    ``current``: ``illegal`` when the op's schema at ``current`` exists and rejects the
    types; ``lowest`` the lowest opset >= ``current`` whose schema accepts them (None when
    none does or the op is unknown). Each schema is asked once per distinct signature."""
    op, inputs, outputs = signature
    versions = _schema_table().get(("", op))
    if not versions:
        return False, None
    active = [s for s in versions if s.since_version <= current]
    if active and _accepts(active[-1], inputs, outputs):
        return False, current
    for schema in versions:
        if schema.since_version > current and _accepts(schema, inputs, outputs):
            return bool(active), schema.since_version
    return bool(active), None


def _standard_nodes(graph: Graph) -> Iterator[Node]:
    for node in graph.all_nodes():
        if node.domain in _DEFAULT_DOMAINS:
            yield node


def _lowest_opset_for(node: Node, current: int) -> int | None:
    """The lowest default-domain opset >= ``current`` whose schema of ``node.op`` accepts
    the node's tensor types; None when no opset does (or the op is unknown)."""
    return _legality(_signature(node), current)[1]


def illegal_nodes(graph: Graph, opset: int) -> list[Node]:
    """Standard-domain nodes of the graph tree whose schema at ``opset`` does not accept
    their tensor types (see ``_accepts``)."""
    return [node for node in _standard_nodes(graph) if _legality(_signature(node), opset)[0]]


def required_opset(graph: Graph, current: int) -> tuple[int, str]:
    """(opset, reason): the lowest default-domain opset >= ``current`` at which every
    standard op in the graph tree accepts the tensor types it reads and writes, and a
    sentence naming the op that needs it (empty when ``current`` is enough)."""
    return _required(((n, _legality(_signature(n), current)) for n in _standard_nodes(graph)), current)


def _required(answers: Iterable[tuple[Node, tuple[bool, int | None]]], current: int) -> tuple[int, str]:
    """``required_opset`` from each standard node's ``_legality`` answer."""
    needed, reason = current, ""
    for node, (_, lowest) in answers:
        if lowest is not None and lowest > needed:
            types = ", ".join(sorted({v.dtype.value for v in node.inputs if v is not None}))
            needed, reason = lowest, f"{node.op} {node.name!r} on {types} needs opset {lowest}"
    return needed, reason


def _convert_opset(proto: onnx.ModelProto, current: int, target: int, reason: str) -> onnx.ModelProto:
    """Convert with onnx.version_converter; fields the converter drops are restored.
    Large models are converted without their tensor data, which is put back after."""
    from onnx import version_converter

    stash = _stash_data(proto) if _is_large(proto) else {}
    sparse = _densify_sparse(proto)  # the converter rejects sparse tensors
    try:
        converted = version_converter.convert_version(proto, target)
    except Exception as exc:
        raise ConversionError(f"cannot convert the model from opset {current} to {target} ({reason}): "
                              f"{first_line(exc, 400)}") from None
    finally:
        _unstash_data(proto, stash)
        _restore_sparse(proto, sparse)
    _retype_from_inference(converted)
    _unstash_data(converted, stash)
    _restore_sparse(converted, sparse)
    for field in ("functions", "training_info", "metadata_props"):
        if len(getattr(proto, field)) and not len(getattr(converted, field)):
            getattr(converted, field).extend(getattr(proto, field))
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if getattr(proto, field) and not getattr(converted, field):
            setattr(converted, field, getattr(proto, field))
    converted.ir_version = max(converted.ir_version, proto.ir_version, _min_ir_version(converted))
    return converted


def _retype_from_inference(proto: onnx.ModelProto) -> None:
    """Correct declared element types that the opset conversion made stale (the version
    converter changes op signatures, e.g. Dropout's mask from T to bool at opset 10, but
    not the value_info it copied): where ONNX type inference, run without the declared
    types, derives another element type for an intermediate value, that type wins."""
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    for graph in _all_graphs(bare.graph):
        graph.ClearField("value_info")
    try:
        inferred = onnx.shape_inference.infer_shapes(bare, check_type=False, strict_mode=False)
    except Exception as exc:  # inference gaps leave the declared types as they are
        logger.debug("type inference after the opset conversion failed: %s", first_line(exc, 200))
        return
    types = {vi.name: vi.type.tensor_type.elem_type for graph in _all_graphs(inferred.graph)
             for vi in graph.value_info if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    for graph in _all_graphs(proto.graph):
        for vi in graph.value_info:
            elem = types.get(vi.name)
            if elem and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type != elem:
                logger.debug("value %s: type %d after the opset conversion, not %d", vi.name, elem,
                             vi.type.tensor_type.elem_type)
                vi.type.tensor_type.elem_type = elem


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_graphs(sub)


_SparseStash = dict[str, Any]


def _densify_sparse(proto: onnx.ModelProto) -> _SparseStash:
    """Replace sparse initializers and sparse Constant values by dense ones, in place;
    returns what :func:`_restore_sparse` needs to undo it (keyed by value name)."""
    stash: _SparseStash = {}
    for graph in _all_graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            stash[sparse.values.name] = _copy_proto(sparse)
            graph.initializer.append(numpy_helper.from_array(sparse_to_dense(sparse), sparse.values.name))
        graph.ClearField("sparse_initializer")
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "sparse_value":
                stash[node.output[0]] = _copy_proto(node.attribute[0])
                dense = numpy_helper.from_array(sparse_to_dense(node.attribute[0].sparse_tensor))
                node.attribute[0].CopyFrom(helper.make_attribute("value", dense))
    return stash


def _restore_sparse(proto: onnx.ModelProto, stash: _SparseStash) -> None:
    if not stash:
        return
    for graph in _all_graphs(proto.graph):
        kept = [t for t in graph.initializer if t.name not in stash]
        restored = [stash[t.name] for t in graph.initializer if t.name in stash]
        if restored:
            graph.ClearField("initializer")
            graph.initializer.extend(kept)
            graph.sparse_initializer.extend(restored)
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] in stash and node.attribute \
                    and node.attribute[0].name == "value":
                node.attribute[0].CopyFrom(stash[node.output[0]])


def _copy_proto(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for sub in _all_graphs(graph):
        yield from sub.initializer


def _stash_data(proto: onnx.ModelProto, min_bytes: int = 1024) -> dict[str, bytes]:
    stash: dict[str, bytes] = {}
    for tensor in _all_tensors(proto.graph):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes and tensor.name not in stash:
            stash[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
    return stash


def _unstash_data(proto: onnx.ModelProto, stash: dict[str, bytes]) -> None:
    if not stash:
        return
    for tensor in _all_tensors(proto.graph):
        if tensor.name in stash and not tensor.HasField("raw_data"):
            tensor.raw_data = stash[tensor.name]


def _is_large(proto: onnx.ModelProto) -> bool:
    return _byte_size(proto) >= LARGE_MODEL_BYTES


def _byte_size(proto: onnx.ModelProto) -> int:
    """``proto``'s serialized size; a size past what protobuf can count reads as 2**63."""
    try:
        return proto.ByteSize()
    except Exception:  # pragma: no cover - protobuf refuses to size a >2 GiB message
        return 2**63


# ------------------------------------------------------------------ validate, save ---
def validate(proto: onnx.ModelProto) -> None:
    """onnx.checker.check_model(full_check=True); raises ConversionError with the
    checker's message. The model is checked from a temporary file: the checker's own path
    for a file does the strict shape inference in C++, where a proto makes it go through
    Python and back (0.8 s against 1.5 s on a 120k-node graph); models over 2 GiB are
    written with external data."""
    try:
        with tempfile.TemporaryDirectory(prefix="mixprec-check-") as tmp:
            if pending_bytes(proto):
                path = _placeholder_copy(proto, Path(tmp))
            else:
                path = Path(tmp) / "model.onnx"
                try:
                    path.write_bytes(proto.SerializeToString())
                except Exception:  # protobuf refuses to serialize a >2 GiB message
                    path = save(proto, path, external_data=True)
            onnx.checker.check_model(str(path), full_check=True)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"the ONNX model fails onnx.checker: {first_line(exc, 1000)}") from None


def _placeholder_copy(proto: onnx.ModelProto, directory: Path) -> Path:
    """``directory/model.onnx``: a copy of ``proto`` whose pending initializers point into
    a sparse file of zeros of their size (nothing is read or written but the proto), so
    that onnx.checker can check a model whose data is not written yet."""
    copy = _copy_proto(proto)
    offset = 0
    for tensor in _all_initializers(copy.graph):
        source = _pending_source(tensor)
        if source is None:
            continue
        tensor.ClearField("external_data")
        for key, value in (("location", "placeholder.data"), ("offset", str(offset)), ("length", str(source.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += source.nbytes
    with open(directory / "placeholder.data", "wb") as handle:
        handle.truncate(offset)
    path = directory / "model.onnx"
    path.write_bytes(copy.SerializeToString())
    return path


def save(proto: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None,
         external_data: bool | None = None) -> Path:
    """Write ``proto`` to ``path`` atomically (mixprec.fileio: temporaries in the same
    directory, fsync, os.replace; parent directories made) and return the path. Tensors
    go to ``<name>.data`` next to it when ``external_data`` is True, or when None and the
    model with its data reaches EXTERNAL_DATA_THRESHOLD (protobuf cannot write 2 GiB) or
    its pending data comes from the input's external data (which stays unread till now);
    they are written one at a time, pending ones (``deferred_tensor``) read and converted
    chunk by chunk, so memory holds one chunk, not the model. ``proto`` is left as it was.
    Refuses (ConfigError) to overwrite ``input_path``."""
    path = Path(path)
    if input_path is not None and same_file(path, Path(input_path)):
        raise ConfigError(f"refusing to overwrite the input model {input_path}; choose another output path")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the output .onnx file name")
    directory = Path(os.path.abspath(path)).parent
    pending = pending_bytes(proto)
    if external_data is None:
        size = _byte_size(proto)  # 0.07 s of a 100k-node graph: once
        external_data = size >= LARGE_MODEL_BYTES or size + pending >= EXTERNAL_DATA_THRESHOLD or \
            _pending_from_files(proto)
    if external_data:
        logger.info("writing %s with its tensors in %s.data", path, path.name)
        _save_with_external_data(proto, path, directory)
    elif pending:
        atomic_write(path, lambda tmp: _write_inline_streaming(proto, tmp))
    else:
        atomic_write_bytes(path, proto.SerializeToString())
    return path


#: protobuf field numbers and wire type of the fields ``_write_inline_streaming`` writes
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA, _LENGTH_DELIMITED = 7, 5, 9, 2


def _write_inline_streaming(proto: onnx.ModelProto, tmp: str) -> None:
    """Write ``proto`` to ``tmp`` with every main-graph initializer's data inline, its
    pending data (``deferred_tensor``) streamed chunk by chunk instead of built in memory:
    the file is the model without its main-graph initializers, then each initializer, in
    order, as a further ``graph { initializer { ... } }`` field. Protobuf merges repeated
    occurrences of a message field and appends repeated fields in order, so every reader
    parses the same model (initializers in the same order) as from the usual
    serialization. Subgraphs' pending initializers (rare) are resolved in memory."""
    shell = onnx.ModelProto()
    shell.CopyFrom(proto)  # holds no pending data: structure only
    del shell.graph.initializer[:]
    for sub in _all_graphs(shell.graph):
        if sub is not shell.graph and _pending_bytes_of(sub):
            _resolve_graph(sub)
    with open(tmp, "wb") as out:
        out.write(shell.SerializeToString())
        del shell
        for tensor in proto.graph.initializer:
            source = _pending_source(tensor)
            if source is None:
                body = tensor.SerializeToString()
                out.write(_field_header(_MODEL_GRAPH, _field_size(_GRAPH_INITIALIZER, len(body))))
                out.write(_field_header(_GRAPH_INITIALIZER, len(body)))
                out.write(body)
                continue
            bare = onnx.TensorProto()
            bare.CopyFrom(tensor)
            bare.ClearField("external_data")
            bare.ClearField("data_location")
            header = bare.SerializeToString() + _field_header(_TENSOR_RAW_DATA, int(source.nbytes))
            size = len(header) + int(source.nbytes)
            out.write(_field_header(_MODEL_GRAPH, _field_size(_GRAPH_INITIALIZER, size)))
            out.write(_field_header(_GRAPH_INITIALIZER, size))
            out.write(header)
            little = source.dtype.newbyteorder("<")
            for chunk in source.chunks(CHUNK_BYTES):
                out.write(np.ascontiguousarray(chunk, dtype=little).reshape(-1).view(np.uint8).data)


#: the external-data location of an initializer ``detach_initializers`` hands over as an
#: array (onnxruntime's ``add_external_initializers`` replaces it; no file has this name)
IN_MEMORY_LOCATION = "mixprec-in-memory"


def detach_initializers(proto: onnx.ModelProto, min_bytes: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of ``proto`` whose pending main-graph initializers (``deferred_tensor``) and
    inline ones of ``min_bytes`` or more are external references to IN_MEMORY_LOCATION, and
    their values by name, so that a runtime can take the arrays as they are instead of
    parsing them out of a serialized model (serializing a 100 MB model cost 0.17 s and
    as much again to parse, per tuning trial). Other initializers, data of external files,
    strings and packed sub-byte types are copied as they are; subgraphs' pending data is resolved in place.
    ``proto`` is left as it was; its bytes are copied only into the arrays."""
    shell = onnx.ModelProto()
    _copy_fields(proto, shell, skip="graph")
    _copy_fields(proto.graph, shell.graph, skip="initializer")
    for sub in _all_graphs(shell.graph):
        if sub is not shell.graph and _pending_bytes_of(sub):
            _resolve_graph(sub)
    arrays: dict[str, np.ndarray] = {}
    for tensor in proto.graph.initializer:
        source = _pending_source(tensor)
        inline = tensor.data_location != onnx.TensorProto.EXTERNAL
        size = int(np.prod(tensor.dims, dtype=np.int64)) * _itemsize(tensor.data_type)  # as _initializer_sizes
        packed = tensor.data_type in sub_byte_types()
        if source is None and (not inline or tensor.data_type == onnx.TensorProto.STRING or size < min_bytes
                               or packed) or tensor.name in arrays or packed:
            copy = shell.graph.initializer.add()
            copy.CopyFrom(tensor)
            _resolve_tensor(copy)  # a pending packed one is held inline, as before
            continue
        arrays[tensor.name] = initializer_array(tensor)
        ref = shell.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        ref.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", IN_MEMORY_LOCATION), ("offset", "0"), ("length", str(size))):
            entry = ref.external_data.add()
            entry.key, entry.value = key, value
    return shell, arrays


def largest_initializer(proto: onnx.ModelProto) -> int:
    """Bytes of the largest main-graph initializer (from its dims and type; 0 when none)."""
    return max(_initializer_sizes(proto), default=0)


def initializer_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the main graph's initializers, held or not (from their dims and type)."""
    return sum(_initializer_sizes(proto))


def _initializer_sizes(proto: onnx.ModelProto) -> Iterator[int]:
    for tensor in proto.graph.initializer:
        yield int(np.prod(tensor.dims, dtype=np.int64)) * _itemsize(tensor.data_type)


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    """Copy every set field of protobuf message ``source`` but ``skip`` into ``target``."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _itemsize(data_type: int) -> int:
    try:
        return helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0


def _pending_bytes_of(graph: onnx.GraphProto) -> int:
    """Bytes of pending data (``deferred_tensor``) of ``graph``'s own initializers."""
    return sum(source.nbytes for t in graph.initializer if (source := _pending_source(t)) is not None)


def _resolve_graph(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _resolve_tensor(tensor)


def _resolve_tensor(tensor: onnx.TensorProto) -> None:
    """Hold ``tensor``'s pending data (``deferred_tensor``) inline; others are left as they are."""
    source = _pending_source(tensor)
    if source is not None:
        tensor.ClearField("external_data")
        tensor.ClearField("data_location")
        tensor.raw_data = np.ascontiguousarray(source.materialize()).astype(source.dtype.newbyteorder("<")).tobytes()


def _field_header(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited protobuf field."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(length)


def _field_size(number: int, length: int) -> int:
    """Bytes of a length-delimited field holding ``length`` bytes."""
    return len(_field_header(number, length)) + length


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: initializers of fewer bytes stay inside the .onnx file when saving with external data
EXTERNAL_MIN_BYTES = 1024
#: offsets of tensors in the data file are multiples of this (onnxruntime maps aligned data)
DATA_ALIGNMENT = 4096


def _save_with_external_data(proto: onnx.ModelProto, path: Path, directory: Path) -> None:
    data_name = f"{path.name}.data"
    tmp_dir = make_temp_dir(path)
    undo: list[tuple[onnx.TensorProto, Any]] = []
    try:
        tmp_data = tmp_dir / data_name
        todo = [(t, n) for t in _all_initializers(proto.graph) if (n := _external_bytes(t))]
        with open(tmp_data, "wb") as out, \
                progress.bytes("weights", total_bytes=sum(n for _, n in todo), tensors=len(todo)) as bar:
            for tensor, _ in todo:
                bar.update(_externalize(tensor, out, data_name, undo))
        tmp_model = tmp_dir / path.name
        with open(tmp_model, "wb") as handle:
            handle.write(proto.SerializeToString())
        if undo:
            publish(tmp_data, directory / data_name)
        publish(tmp_model, path)
    finally:
        for tensor, saved in reversed(undo):
            _restore_tensor(tensor, saved)
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _external_bytes(tensor: onnx.TensorProto) -> int:
    """The data bytes ``_externalize`` writes for ``tensor``: a pending tensor's, or its
    raw_data's when that holds at least EXTERNAL_MIN_BYTES; 0 when it stays inline."""
    source = _pending_source(tensor)
    if source is not None:
        return int(source.nbytes)
    if not tensor.HasField("raw_data"):
        return 0
    size = len(tensor.raw_data)
    return size if size >= EXTERNAL_MIN_BYTES else 0


def _externalize(tensor: onnx.TensorProto, out: Any, location: str, undo: list[tuple[onnx.TensorProto, Any]]) -> int:
    """Append ``tensor``'s data to the open data file ``out`` (pending data streamed chunk
    by chunk) and point the tensor at it; what ``_restore_tensor`` needs goes to ``undo``.
    Returns the bytes of data written (0: the tensor stays inline)."""
    source = _pending_source(tensor)
    if source is None and not (tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_MIN_BYTES):
        return 0
    offset = out.tell()
    if offset % DATA_ALIGNMENT:
        out.write(b"\0" * (DATA_ALIGNMENT - offset % DATA_ALIGNMENT))
        offset = out.tell()
    if source is not None:
        saved: Any = [(e.key, e.value) for e in tensor.external_data]
        little = source.dtype.newbyteorder("<")
        for chunk in source.chunks(CHUNK_BYTES):
            out.write(np.ascontiguousarray(chunk, dtype=little).reshape(-1).view(np.uint8).data)  # no copy
    else:
        saved = tensor.raw_data
        out.write(saved)
        tensor.ClearField("raw_data")
    length = out.tell() - offset
    undo.append((tensor, saved))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("external_data")
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return length


def _restore_tensor(tensor: onnx.TensorProto, saved: Any) -> None:
    tensor.ClearField("external_data")
    if isinstance(saved, bytes):
        tensor.ClearField("data_location")
        tensor.raw_data = saved
        return
    for key, value in saved:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
