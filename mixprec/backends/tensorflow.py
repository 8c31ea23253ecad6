"""TensorFlow backend: ``ir.Model`` -> frozen ``tf.compat.v1.GraphDef``, a callable that runs
it, and writers for a ``.pb`` file or a SavedModel directory.

Emission is the inverse of ``mixprec.frontends.tensorflow`` (the conventions are in
``mixprec.dialects.tensorflow``):

- a node's NodeDef name is its first output's value name (node.name for nodes without
  outputs), made a valid TF name and unique; so a graph output keeps its tensor name
  (``Identity:0``) after insert-casts renamed the retyped producer; graph inputs are
  Placeholders and constants Consts named by their values;
- every constant is a Const of its IR dtype (a bf16 weight is a bf16 Const: no runtime
  cast of weights); Placeholder/Const NodeDef fields the IR does not model come back
  from ``model.meta["tensorflow"]["shells"]``;
- type attributes (``T``, ``SrcT``/``DstT``, ``Tin``, ...) are recomputed from the
  dtypes of the values bound to them, following the op's OpDef, so a node a pass
  retyped gets matching attributes; other attributes are written back by the OpDef's
  attribute kinds (or the kinds the frontend recorded, or the python types);
- ``attrs["_control_inputs"]`` become ``^name`` inputs (names of nodes that no longer
  exist are dropped);
- graph-output producers nobody else reads come last, in output order, so a reader that
  takes a GraphDef's sink nodes as its outputs gets them in the right order;
- the function library is written back with every function renamed to
  ``<name>_mp<digest of the library>``: one name always means one body, so the FP32 and
  the converted graph (or two converted graphs) can be loaded in one process.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, versions_pb2

from mixprec.dialects.tensorflow import (BODY_SEP, CONTROL_INPUTS, TF_META, RawAttr, arg_ranges, convert_attrs, op_def,
                                         ir_dtype, parse_input, sanitize, tf_dtype)
from mixprec.errors import ConfigError, ConversionError, UnsupportedModelError
from mixprec.fileio import atomic_write_bytes, atomic_write_dir, first_line, same_file
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model, Node, Value
from mixprec.naming import claim, identifier

logger = logging.getLogger(__name__)

_SUFFIX = re.compile(r"_mp[0-9a-f]{8}\Z")
#: names a gradient function registered in the exporting process only (tf.custom_gradient,
#: e.g. Keras's swish): never written, the converted graph is for inference, and saving a
#: SavedModel would trace that FP32 gradient on the converted bf16 ops and fail
CUSTOM_GRADIENT = "_gradient_op_type"


# --------------------------------------------------------------------- interface ---
@dataclass
class GraphModel:
    """A frozen GraphDef and its interface, callable like a function.

    ``inputs`` / ``outputs`` are tensor names in the GraphDef; ``input_keys`` /
    ``output_keys`` the names callers use (signature keys). ``input_dtypes`` and
    ``input_shapes`` (None dims unknown) describe the Placeholders. Calling it with
    arrays (positionally, or by input key) returns the output tensors in order."""
    graph_def: graph_pb2.GraphDef
    inputs: list[str]
    outputs: list[str]
    input_keys: list[str]
    output_keys: list[str]
    input_dtypes: list[tf.DType]
    input_shapes: list[tuple | None]

    def __post_init__(self) -> None:
        self._function: Callable | None = None

    @property
    def function(self) -> Callable:
        """The graph imported into a pruned wrap_function (built on first use)."""
        if self._function is None:
            self._function = wrap_graph_def(self.graph_def, self.inputs, self.outputs,
                                            list(zip(self.input_shapes, self.input_dtypes)))
        return self._function

    def load(self) -> "GraphModel":
        """Import the graph into TF now (ConversionError if TF rejects it); returns self."""
        _ = self.function
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> list[tf.Tensor]:
        if kwargs:
            missing = [k for k in self.input_keys if k not in kwargs]
            if args or missing:
                raise ConfigError(f"call the graph with all inputs by position or all by name; missing: {missing}")
            args = tuple(kwargs[k] for k in self.input_keys)
        if len(args) != len(self.inputs):
            raise ConfigError(f"the graph takes {len(self.inputs)} inputs ({', '.join(self.input_keys)}), "
                              f"got {len(args)}")
        feeds = [_as_tensor(a, dtype) for a, dtype in zip(args, self.input_dtypes)]
        return list(self.function(*feeds))


def _as_tensor(value: Any, dtype: tf.DType) -> tf.Tensor:
    tensor = tf.convert_to_tensor(value)
    if tensor.dtype != dtype and tensor.dtype.is_floating and dtype.is_floating:
        tensor = tf.cast(tensor, dtype)
    return tensor


def wrap_graph_def(graph_def: graph_pb2.GraphDef, inputs: Sequence[str], outputs: Sequence[str],
                   signature: Sequence[tuple[tuple | None, tf.DType]] | None = None) -> Callable:
    """A concrete function feeding ``inputs`` and fetching ``outputs`` of ``graph_def``.
    With ``signature`` (the inputs' shapes and dtypes), the graph is imported into a
    ``tf.function`` traced for it, the inputs mapped onto its arguments (``input_map``):
    4x faster than the pruned ``wrap_function`` (0.55 s against 2.1 s on Keras ResNet50,
    paid by every tuning trial); without it, for a graph with a function library (a
    function imported that way is not found when the traced function runs), or where
    that import fails, tf.compat.v1.wrap_function + import_graph_def, pruned.
    ConversionError if TF cannot import or prune it."""
    if signature is not None and not graph_def.library.function:
        specs = [tf.TensorSpec(shape, dtype) for shape, dtype in signature]

        def body(*args: tf.Tensor) -> list[tf.Tensor]:
            return tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(inputs, args)),
                                                  return_elements=list(outputs), name="")
        try:
            return tf.function(body, input_signature=specs, autograph=False).get_concrete_function()
        except Exception as exc:  # noqa: BLE001 - the pruned import below says why, if it fails too
            logger.debug("importing the graph into a tf.function failed (%s); pruning a wrapped import", exc)

    def _import() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    try:
        wrapped = tf.compat.v1.wrap_function(_import, [])
        graph = wrapped.graph
        return wrapped.prune([graph.get_tensor_by_name(n) for n in inputs],
                             [graph.get_tensor_by_name(n) for n in outputs])
    except Exception as exc:  # noqa: BLE001 - import errors come in many types
        raise ConversionError(f"TensorFlow cannot load the graph: {first_line(exc)}") from None


def graph_model(model: Model, graph_def: graph_pb2.GraphDef | None = None) -> GraphModel:
    """The GraphModel of an ir.Model (emitting it unless ``graph_def`` is given)."""
    graph_def = graph_def if graph_def is not None else emit(model)
    graph = model.graph
    names = _Names(graph)
    meta = model.meta.get(TF_META, {})
    inputs = [f"{names.value(v)}:0" for v in graph.inputs]
    outputs = [names.ref(v, explicit=True) for v in graph.outputs]
    input_keys = list(meta.get("input_keys") or [v.name for v in graph.inputs])
    output_keys = list(meta.get("output_keys") or [v.name for v in graph.outputs])
    if len(input_keys) != len(inputs):
        input_keys = [v.name for v in graph.inputs]
    if len(output_keys) != len(outputs):
        output_keys = [v.name for v in graph.outputs]
    return GraphModel(graph_def, inputs, outputs, input_keys, output_keys,
                      [tf_dtype(v.dtype) for v in graph.inputs], [v.shape for v in graph.inputs])


# -------------------------------------------------------------------------- emit ---
def emit(model: Model) -> graph_pb2.GraphDef:
    """The ir.Model as a frozen GraphDef (see the module docstring)."""
    return _Emitter(model).run()


class _Names:
    """NodeDef names for the graph's inputs, constants and nodes (deterministic)."""

    def __init__(self, graph: Graph) -> None:
        self.taken: set[str] = set()
        self.values: dict[int, str] = {}
        self.nodes: dict[int, str] = {}
        self.by_ir_name: dict[str, str] = {}
        for value in graph.inputs:
            self.values[id(value)] = self._claim(value.name)
            self.by_ir_name.setdefault(value.name, self.values[id(value)])
        for value in graph.constants.values():
            self.values[id(value)] = self._claim(value.name)
            self.by_ir_name.setdefault(value.name, self.values[id(value)])
        for node in graph.iter_nodes():
            name = self._claim(node.outputs[0].name if node.outputs else node.name)
            self.nodes[id(node)] = name
            self.by_ir_name.setdefault(node.name, name)

    def _claim(self, base: str) -> str:
        return claim(sanitize(base), self.taken)

    def value(self, value: Value) -> str:
        """The NodeDef name of a graph input or constant."""
        return self.values[id(value)]

    def ref(self, value: Value, explicit: bool = False) -> str:
        """The tensor reference of ``value``: ``node`` / ``node:i`` (``node:0`` if explicit)."""
        producer = value.producer
        if producer is None:
            base, index = self.values[id(value)], 0
        else:
            base, index = self.nodes[id(producer)], value.producer_index
        return f"{base}:{index}" if index or explicit else base


class _Emitter:
    """Emits one graph of the tree: the main graph (``run``) or a function body
    (``function``), sharing ``bodies`` (FunctionDefs emitted from body subgraphs, by
    name) and the original ``library`` with the emitters of the graphs nested in it."""

    def __init__(self, model: Model, graph: Graph | None = None, library: dict[str, Any] | None = None,
                 bodies: dict[str, Any] | None = None) -> None:
        self.model = model
        self.graph = graph if graph is not None else model.graph
        self.meta = model.meta.get(TF_META, {})
        self.shells: dict[str, bytes] = self.meta.get("shells", {})
        self.names = _Names(self.graph)
        if library is None:
            parsed = graph_pb2.GraphDef().library
            if self.meta.get("library"):
                parsed.ParseFromString(self.meta["library"])
            library = {f.signature.name: f for f in parsed.function}
        self.library = library
        self.bodies: dict[str, Any] = bodies if bodies is not None else {}

    def run(self) -> graph_pb2.GraphDef:
        if self.graph.framework != "tensorflow":
            raise UnsupportedModelError(f"the TensorFlow backend cannot emit a {self.graph.framework} graph")
        graph_def = graph_pb2.GraphDef()
        if self.meta.get("versions"):
            graph_def.versions.ParseFromString(self.meta["versions"])
        else:
            graph_def.versions.CopyFrom(versions_pb2.VersionDef(producer=tf.version.GRAPH_DEF_VERSION))
        nodes = [self._placeholder(v) for v in self.graph.inputs]
        nodes += self._body_nodes()
        graph_def.node.extend(_outputs_last(nodes, self._output_producers()))
        if self.meta.get("library"):
            graph_def.library.ParseFromString(self.meta["library"])
        _replace_functions(graph_def.library, self.bodies)
        rename_functions(graph_def)
        return graph_def

    def _body_nodes(self) -> list[node_def_pb2.NodeDef]:
        nodes = [self._const(v) for v in self.graph.constants.values()]
        return nodes + [self._node(n) for n in self.graph.iter_nodes()]

    def function(self, original: Any) -> Any:
        """The body graph as a FunctionDef with ``original``'s signature (argument and
        result names, attributes), node names without the body's prefix, and inputs in
        the FunctionDef form (``node:output_arg:index``; arguments by name)."""
        from tensorflow.core.framework import function_pb2
        prefix = self.graph.name + BODY_SEP
        args = {self.names.value(v): arg.name for v, arg in zip(self.graph.inputs, original.signature.input_arg)}
        nodes = self._body_nodes()
        local = {n.name: _strip(n.name, prefix) for n in nodes}
        out = function_pb2.FunctionDef()
        out.signature.CopyFrom(original.signature)
        for key in original.attr:
            out.attr[key].CopyFrom(original.attr[key])
        for index in original.arg_attr:
            out.arg_attr[index].CopyFrom(original.arg_attr[index])
        for index in original.resource_arg_unique_id:
            out.resource_arg_unique_id[index] = original.resource_arg_unique_id[index]
        by_name = {n.name: n for n in nodes}
        for node in nodes:
            copy = node_def_pb2.NodeDef()
            copy.CopyFrom(node)
            copy.name = local[node.name]
            copy.input[:] = [self._function_ref(ref, by_name, local, args) for ref in node.input]
            out.node_def.append(copy)
        for value, arg in zip(self.graph.outputs, original.signature.output_arg):
            out.ret[arg.name] = self._function_ref(self.names.ref(value), by_name, local, args)
        kept = set(local.values())
        for key, target in original.control_ret.items():
            if target in kept:
                out.control_ret[key] = target
        del out.signature.control_output[:]
        out.signature.control_output.extend(k for k in original.signature.control_output if k in out.control_ret)
        for values, arg_defs in ((self.graph.inputs, out.signature.input_arg),
                                 (self.graph.outputs, out.signature.output_arg)):
            for value, arg in zip(values, arg_defs):
                if value.dtype.is_float and ir_dtype(arg.type).is_float:  # never a variant/resource arg
                    arg.type = _datatype(value.dtype, arg.name)
        return out

    def _function_ref(self, ref: str, by_name: dict[str, node_def_pb2.NodeDef], local: dict[str, str],
                      args: dict[str, str]) -> str:
        """A GraphDef tensor reference inside a body in FunctionDef form."""
        name, index = parse_input(ref)
        if index < 0:
            return f"^{local.get(name, name)}"
        if name in args:
            return args[name]
        node = by_name[name]
        arg, offset = _output_arg(node, index, self.library, self.bodies)
        return f"{local[name]}:{arg}:{offset}"

    def _emit_body(self, graph: Graph, node: Node) -> str:
        """Emit a body subgraph of ``node`` into ``bodies``; the name its caller uses."""
        functions = self.meta.get("functions", {})
        original_name = functions.get(graph.name)
        original = self.library.get(original_name) if original_name else None
        if original is None:
            raise UnsupportedModelError(f"node {node.name!r}: subgraph {graph.name!r} names no library function")
        fdef = _Emitter(self.model, graph, self.library, self.bodies).function(original)
        name = original_name
        taken = set(self.library) | set(self.bodies)
        if name in self.bodies and self.bodies[name] != fdef:
            same = next((k for k, v in self.bodies.items() if v == fdef), None)
            name = same or claim(f"{original_name}_v", taken)
        fdef.signature.name = name
        self.bodies[name] = fdef
        return name

    def _output_producers(self) -> list[str]:
        return [self.names.ref(v, explicit=True).rsplit(":", 1)[0] for v in self.graph.outputs]

    def _shell(self, value: Value, op: str) -> node_def_pb2.NodeDef:
        node = node_def_pb2.NodeDef()
        if value.name in self.shells:
            node.ParseFromString(self.shells[value.name])
            self._map_control(node)
        node.op = op
        node.name = self.names.value(value)
        return node

    def _map_control(self, node: node_def_pb2.NodeDef) -> None:
        refs = list(node.input)
        del node.input[:]
        node.input.extend(f"^{self.names.by_ir_name[r[1:]]}" for r in refs
                          if r.startswith("^") and r[1:] in self.names.by_ir_name)

    def _placeholder(self, value: Value) -> node_def_pb2.NodeDef:
        node = self._shell(value, "Placeholder")
        node.attr["dtype"].type = _datatype(value.dtype, value.name)
        if "shape" not in node.attr:
            node.attr["shape"].shape.CopyFrom(_shape_proto(value.shape))
        return node

    def _const(self, value: Value) -> node_def_pb2.NodeDef:
        if value.data is None:
            raise UnsupportedModelError(f"constant %{value.name} has no data (an IR parsed from elided text "
                                        "cannot be emitted)")
        node = self._shell(value, "Const")
        dtype = tf_dtype(value.dtype)
        data = np.asarray(value.data)
        if value.dtype != DType.STRING and data.dtype != value.dtype.to_numpy():
            data = data.astype(value.dtype.to_numpy())
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(data, dtype=dtype, shape=data.shape))
        return node

    def _node(self, node: Node) -> node_def_pb2.NodeDef:
        out = node_def_pb2.NodeDef(name=self.names.nodes[id(node)], op=node.op)
        for value in node.inputs:
            if value is None:
                raise UnsupportedModelError(f"node {node.name!r} ({node.op}) has an omitted input; TF has none")
            out.input.append(self.names.ref(value))
        for name in node.attrs.get(CONTROL_INPUTS, []):
            target = self.names.by_ir_name.get(name)
            if target is None:
                logger.debug("node %s: dropping control input ^%s (no such node any more)", node.name, name)
            elif f"^{target}" not in out.input:
                out.input.append(f"^{target}")
        tf_meta = node.meta.get(TF_META, {})
        if tf_meta.get("device"):
            out.device = tf_meta["device"]
        definition = op_def(node.op)
        kinds = {a.name: a.type for a in definition.attr} if definition is not None else {}
        kinds = {**tf_meta.get("kinds", {}), **kinds}
        for key, value in node.attrs.items():
            if key == CUSTOM_GRADIENT:
                continue
            if isinstance(value, Graph):
                out.attr[key].func.name = self._emit_body(value, node)
            elif key != CONTROL_INPUTS:
                out.attr[key].CopyFrom(python_to_attr(value, kinds.get(key), f"{node.name}.{key}"))
        if definition is not None:
            _retype(out, definition, node)
        if tf_meta.get("experimental") and not _retyped(out, node):
            out.MergeFrom(node_def_pb2.NodeDef.FromString(tf_meta["experimental"]))
        return out


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name


def _output_arg(node: node_def_pb2.NodeDef, index: int, library: dict[str, Any],
                bodies: dict[str, Any]) -> tuple[str, int]:
    """(output arg name, offset in it) of output ``index`` of ``node``: from its OpDef,
    or from the signature of the library function it calls."""
    definition = op_def(node.op)
    if definition is None:
        function = bodies.get(node.op) or library.get(node.op)
        if function is None:
            raise UnsupportedModelError(f"node {node.name!r}: op {node.op!r} is neither registered nor a function")
        definition = function.signature
    for arg, positions in arg_ranges(definition.output_arg, convert_attrs(node)[0]):
        if index in positions:
            return arg.name, index - positions.start
    raise UnsupportedModelError(f"node {node.name!r} ({node.op}) has no output {index}")


def _replace_functions(library: Any, bodies: dict[str, Any]) -> None:
    """Put the FunctionDefs emitted from body subgraphs into ``library`` (replacing the
    originals of the same name, adding the others)."""
    if not bodies:
        return
    kept = [f for f in library.function if f.signature.name not in bodies]
    del library.function[:]
    library.function.extend(kept)
    library.function.extend(bodies[name] for name in sorted(bodies))


def _outputs_last(nodes: list[node_def_pb2.NodeDef], producers: list[str]) -> list[node_def_pb2.NodeDef]:
    """Move the graph outputs' producers that no node reads to the end, in output order
    (Placeholders and Consts stay where they are)."""
    read = {parse_input(ref)[0] for n in nodes for ref in n.input if not ref.startswith("^")}
    by_name = {n.name: n for n in nodes}
    last: dict[str, None] = {}  # ordered set
    for name in producers:
        if name not in read and by_name[name].op not in ("Placeholder", "Const"):
            last[name] = None
    return [n for n in nodes if n.name not in last] + [by_name[name] for name in last]


# ------------------------------------------------------------------- attributes ---
def _datatype(dtype: DType, where: str) -> int:
    try:
        return tf_dtype(dtype).as_datatype_enum
    except ValueError:
        raise UnsupportedModelError(f"{where}: dtype {dtype.value} has no TensorFlow type") from None


def _shape_proto(shape: Any) -> Any:
    if shape is None:
        return tf.TensorShape(None).as_proto()
    return tf.TensorShape([d if isinstance(d, int) and d >= 0 else None for d in shape]).as_proto()


def _infer_kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, (str, bytes)):
        return "string"
    if isinstance(value, DType):
        return "type"
    if isinstance(value, np.ndarray):
        return "tensor"
    if value is None:
        return "shape"
    if isinstance(value, (list, tuple)):
        if not value:
            return "list(empty)"
        head = value[0]
        if head is None or isinstance(head, (list, tuple)):
            return "list(shape)"
        return f"list({_infer_kind(head)})"
    raise UnsupportedModelError(f"cannot write an attribute of type {type(value).__name__} to TensorFlow")


def python_to_attr(value: Any, kind: str | None, where: str = "") -> attr_value_pb2.AttrValue:
    """A python attribute value (as the frontend makes them) as an AttrValue of ``kind``
    (an OpDef attr type such as ``list(int)``; inferred from the value when None)."""
    if isinstance(value, RawAttr):
        return value.proto()
    kind = kind or _infer_kind(value)
    attr = attr_value_pb2.AttrValue()
    if kind.startswith("list("):
        attr.list.SetInParent()
        inner = kind[5:-1]
        for item in value or []:
            _set_scalar(attr.list, inner, item, where, repeated=True)
        return attr
    _set_scalar(attr, kind, value, where, repeated=False)
    return attr


def _set_scalar(target: Any, kind: str, value: Any, where: str, repeated: bool) -> None:
    def put(field_name: str, item: Any) -> None:
        if repeated:
            getattr(target, field_name).append(item)
        else:
            setattr(target, field_name, item)

    if kind == "string":
        put("s", value.encode("utf-8") if isinstance(value, str) else bytes(value))
    elif kind == "int":
        put("i", int(value))
    elif kind == "float":
        put("f", float(value))
    elif kind == "bool":
        put("b", bool(value))
    elif kind == "type":
        if not isinstance(value, DType):
            raise UnsupportedModelError(f"{where}: expected a dtype, got {value!r}")
        put("type", _datatype(value, where))
    elif kind in ("shape", "tensor", "func"):
        message = _message(kind, value, where)
        (getattr(target, kind).add() if repeated else getattr(target, kind)).CopyFrom(message)
    elif kind == "empty":
        raise UnsupportedModelError(f"{where}: a non-empty list of unknown kind")
    else:
        raise UnsupportedModelError(f"{where}: cannot write an attribute of kind {kind!r} ({value!r})")


def _message(kind: str, value: Any, where: str) -> Any:
    if kind == "shape":
        return _shape_proto(value)
    if kind == "tensor":
        if not isinstance(value, np.ndarray):
            raise UnsupportedModelError(f"{where}: expected tensor data, got {type(value).__name__} "
                                        "(an IR parsed from elided text cannot be emitted)")
        return tf.make_tensor_proto(value, dtype=tf_dtype(DType.from_numpy(value.dtype)), shape=value.shape)
    return attr_value_pb2.NameAttrList(name=str(value))


def _retype(out: node_def_pb2.NodeDef, definition: Any, node: Node) -> None:
    """Set the type attributes of ``out`` from the dtypes of the values bound to them
    (inputs first; an output binds only attributes no input binds)."""
    in_dtypes = [v.dtype if v is not None else DType.UNKNOWN for v in node.inputs]
    opaque = {key for key, value in node.attrs.items() if isinstance(value, RawAttr)}  # a variant/resource type
    _bind(out, arg_ranges(definition.input_arg, node.attrs), in_dtypes, opaque)
    bound = {a.type_attr or a.type_list_attr for a in definition.input_arg} - {""}
    _bind(out, arg_ranges(definition.output_arg, node.attrs), [v.dtype for v in node.outputs], bound | opaque)


def _retyped(out: node_def_pb2.NodeDef, node: Node) -> bool:
    """True when a type attribute of ``out`` differs from the one the node was loaded
    with (its experimental full type, which may name dtypes, is then stale)."""
    loaded = {**node.meta.get(TF_META, {}).get("types", {}), **node.attrs}
    for key, value in loaded.items():
        if key not in out.attr:
            continue
        if isinstance(value, DType) and out.attr[key].type != _datatype(value, key):
            return True
        if isinstance(value, list) and value and all(isinstance(d, DType) for d in value) and \
                list(out.attr[key].list.type) != [_datatype(d, key) for d in value]:
            return True
    return False


def _bind(out: node_def_pb2.NodeDef, ranges: list[tuple[Any, range]], dtypes: list[DType], skip: set[str]) -> None:
    for arg, positions in ranges:
        chunk = dtypes[positions.start:positions.stop]
        if not chunk or len(chunk) != len(positions) or DType.UNKNOWN in chunk:
            continue
        if arg.type_attr and arg.type_attr not in skip and len(set(chunk)) == 1:
            out.attr[arg.type_attr].type = _datatype(chunk[0], f"{out.name}.{arg.type_attr}")
        elif arg.type_list_attr and arg.type_list_attr not in skip:
            lst = out.attr[arg.type_list_attr].list
            del lst.type[:]
            lst.type.extend(_datatype(d, f"{out.name}.{arg.type_list_attr}") for d in chunk)


# -------------------------------------------------------------------- functions ---
def rename_functions(graph_def: graph_pb2.GraphDef) -> dict[str, str]:
    """Rename every library function to ``<name>_mp<digest>`` (digest of the library with
    any earlier suffix stripped), updating every reference; returns old -> new names."""
    library = graph_def.library
    if not library.function:
        return {}
    digest = hashlib.sha1(library.SerializeToString(deterministic=True)).hexdigest()[:8]
    mapping = {f.signature.name: f"{_SUFFIX.sub('', f.signature.name)}_mp{digest}" for f in library.function}
    for function in library.function:
        function.signature.name = mapping[function.signature.name]
        for node in function.node_def:
            _rename_in_node(node, mapping)
    for gradient in library.gradient:
        gradient.function_name = mapping.get(gradient.function_name, gradient.function_name)
        gradient.gradient_func = mapping.get(gradient.gradient_func, gradient.gradient_func)
    for node in graph_def.node:
        _rename_in_node(node, mapping)
    return mapping


def _rename_in_node(node: node_def_pb2.NodeDef, mapping: dict[str, str]) -> None:
    if node.op in mapping:
        node.op = mapping[node.op]
    for value in node.attr.values():
        _rename_in_attr(value, mapping)


def _rename_in_attr(value: attr_value_pb2.AttrValue, mapping: dict[str, str]) -> None:
    which = value.WhichOneof("value")
    if which == "func":
        _rename_in_func(value.func, mapping)
    elif which == "list":
        for func in value.list.func:
            _rename_in_func(func, mapping)


def _rename_in_func(func: attr_value_pb2.NameAttrList, mapping: dict[str, str]) -> None:
    func.name = mapping.get(func.name, func.name)
    for inner in func.attr.values():
        _rename_in_attr(inner, mapping)


# ------------------------------------------------------------------------- save ---
def save(model: GraphModel, path: str | os.PathLike, input_path: str | os.PathLike | None = None) -> None:
    """Write ``model`` to ``path``: a frozen GraphDef for ``.pb``, a SavedModel directory
    (``serving_default`` signature) for a path without suffix; atomically, and never over
    ``input_path`` (ConfigError)."""
    path = Path(path)
    if input_path is not None and same_file(path, Path(input_path)):
        raise ConfigError(f"refusing to overwrite the input model {input_path}; choose another output path")
    if path.suffix.lower() == ".pb":
        if path.is_dir():
            raise ConfigError(f"{path} is a directory; a .pb output must be a file")
        atomic_write_bytes(path, model.graph_def.SerializeToString())
    elif path.suffix == "":
        save_saved_model(model, path)
    else:
        raise ConfigError(f"{path}: TensorFlow output must be a .pb file or a directory path without a suffix "
                          "(SavedModel)")




def serving_function(model: GraphModel) -> Any:
    """A tf.function whose signature takes the inputs by key and returns {key: output};
    its body imports the GraphDef (so it needs nothing but TensorFlow)."""
    specs = [tf.TensorSpec(_dims(shape), dtype, name=identifier(key))
             for shape, dtype, key in zip(model.input_shapes, model.input_dtypes, model.input_keys)]
    graph_def, inputs, outputs = model.graph_def, list(model.inputs), list(model.outputs)
    keys = _unique_keys(model.output_keys)

    def serve(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        results = tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(inputs, args)),
                                                 return_elements=outputs, name="graph")
        return {key: tf.identity(tensor, name=key) for key, tensor in zip(keys, results)}

    return tf.function(serve, input_signature=specs)


def _dims(shape: tuple | None) -> list | None:
    return None if shape is None else [d if isinstance(d, int) and d >= 0 else None for d in shape]


def _unique_keys(keys: Sequence[str]) -> list[str]:
    taken: set[str] = set()
    return [claim(identifier(key, fallback="output"), taken) for key in keys]


def save_saved_model(model: GraphModel, path: Path) -> None:
    """Write a SavedModel directory with mixprec.fileio.atomic_write_dir: built beside
    ``path`` and swapped into place; an existing directory is replaced only when it is
    empty or mixprec wrote it (ConfigError otherwise)."""
    def write(new: Path) -> None:
        module = tf.Module()
        module.serve = serving_function(model)
        concrete = module.serve.get_concrete_function()
        tf.saved_model.save(module, os.fspath(new), signatures={"serving_default": concrete})

    atomic_write_dir(path, write, kind="a SavedModel mixprec wrote")


__all__ = ["GraphModel", "emit", "graph_model", "wrap_graph_def", "rename_functions", "save", "save_saved_model",
           "serving_function", "python_to_attr"]
