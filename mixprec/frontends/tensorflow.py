"""TensorFlow frontend: a Keras 3 model, a ``tf.function`` / ConcreteFunction, a SavedModel
directory, a ``.keras`` file or a frozen GraphDef ``.pb`` -> ``mixprec.ir.Model``.

Capture: everything becomes a frozen GraphDef first. Keras models and tf.functions are
traced to a ConcreteFunction (Keras: ``tf.function(model).get_concrete_function`` with
the model's input shapes, batch dim None); a SavedModel contributes its
``serving_default`` signature. Variables are frozen with
``convert_variables_to_constants_v2(..., lower_control_flow=False)`` so that v2 control
flow (While/If) stays v2. A ``.pb`` file is read as is.

IR conventions for TF graphs and the ``model.meta["tensorflow"]`` keys: see
``mixprec.dialects.tensorflow``.
"""
from __future__ import annotations

import difflib
import heapq
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2, node_def_pb2

from mixprec.dialects.tensorflow import (BODY_SEP, CAST_OP, CONTROL_INPUTS, NAME, TF_META, arg_ranges, convert_attrs,
                                         ir_dtype, op_def, parse_input, tensor_to_array)
from mixprec.errors import ConfigError, ModelLoadError, UnsupportedModelError
from mixprec.fileio import first_line
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model, Node, Shape, Value
from mixprec.naming import claim, identifier

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------- shapes ---
def ir_shape(shape: tf.TensorShape) -> Shape:
    """A TensorShape as an IR shape: None for unknown rank, None for unknown dims."""
    if shape.rank is None:
        return None
    return tuple(shape.as_list())


# -------------------------------------------------------------------- sources ---
@dataclass
class GraphSource:
    """A frozen GraphDef plus the tensors that are its interface.

    ``inputs`` / ``outputs`` are tensor names (``x:0``); ``input_keys`` / ``output_keys``
    the names a caller uses for them (same lengths)."""
    graph_def: graph_pb2.GraphDef
    inputs: list[str]
    outputs: list[str]
    input_keys: list[str]
    output_keys: list[str]
    call: str = "args"
    source: str = "graph_def"
    extra: dict[str, Any] = field(default_factory=dict)


def load(model: Any, input_signature: Sequence[Any] | None = None, outputs: Sequence[str] | None = None,
         inputs: Sequence[str] | None = None) -> Model:
    """The model as an ir.Model (see the module docstring for what is accepted).

    ``input_signature`` (TensorSpecs) is needed for a tf.function that has none and
    overrides a Keras model's input shapes; ``inputs`` / ``outputs`` (tensor or node
    names) pick the interface of a GraphDef (default: its Placeholders and its sink
    nodes). Bad files raise ModelLoadError, names that are not in the graph ConfigError."""
    source = read_source(model, input_signature, outputs, inputs)
    return lower(source)


def read_source(model: Any, input_signature: Sequence[Any] | None = None,
                outputs: Sequence[str] | None = None, inputs: Sequence[str] | None = None) -> GraphSource:
    """Freeze ``model`` into a GraphSource, its constant-only subgraphs folded
    (``fold_constants``)."""
    if (inputs or outputs) and not _is_graph(model):
        raise ConfigError("inputs= / outputs= (--inputs / --outputs) choose the tensors of a GraphDef (.pb); "
                          "a Keras model, tf.function or SavedModel has its own signature")
    source = _read_any(model, input_signature, outputs, inputs)
    source.graph_def = fold_constants(source.graph_def, [parse_input(t)[0] for t in source.outputs])
    return source


def _read_any(model: Any, input_signature: Sequence[Any] | None, outputs: Sequence[str] | None,
              inputs: Sequence[str] | None) -> GraphSource:
    if isinstance(model, (str, os.PathLike)):
        return _read_path(Path(model), input_signature, outputs, inputs)
    if isinstance(model, graph_pb2.GraphDef):
        if not model.node:
            raise ModelLoadError("the GraphDef has no nodes")
        return graph_def_source(model, outputs, inputs)
    if is_keras(model):
        return _keras_source(model, input_signature)
    if isinstance(model, tf.types.experimental.ConcreteFunction):
        return _concrete_source(model, "concrete_function")
    if isinstance(model, tf.types.experimental.PolymorphicFunction):
        return _function_source(model, input_signature)
    raise UnsupportedModelError(f"cannot read a {type(model).__module__}.{type(model).__name__} as a TensorFlow "
                                "model; pass a Keras model, a tf.function, a ConcreteFunction, a GraphDef, a "
                                "SavedModel directory, a .keras file or a frozen .pb GraphDef")


def _is_graph(model: Any) -> bool:
    """True for a GraphDef object or a path that is neither a directory nor a .keras file."""
    if isinstance(model, graph_pb2.GraphDef):
        return True
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return not path.is_dir() and path.suffix.lower() != ".keras"
    return False


def is_keras(model: Any) -> bool:
    """True for a Keras (3 or tf_keras) model or layer."""
    return any((cls.__module__ or "").split(".")[0] in ("keras", "tf_keras") and cls.__name__ in
               ("Model", "Functional", "Sequential", "Layer") for cls in type(model).__mro__)


def _read_path(path: Path, input_signature: Sequence[Any] | None, outputs: Sequence[str] | None,
               inputs: Sequence[str] | None = None) -> GraphSource:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
            raise ModelLoadError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
        return saved_model_source(path)
    if path.suffix.lower() == ".keras":
        return _keras_file_source(path, input_signature)
    return graph_def_source(read_graph_def(path), outputs, inputs)


def read_graph_def(path: str | os.PathLike) -> graph_pb2.GraphDef:
    """A binary GraphDef file; ModelLoadError when it is missing, truncated or not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a binary TensorFlow GraphDef (truncated or another format): "
                             f"{first_line(exc)}") from None
    if not graph_def.node:
        raise ModelLoadError(f"{path}: not a TensorFlow GraphDef (no nodes)")
    return graph_def


def saved_model_source(path: Path) -> GraphSource:
    """The ``serving_default`` signature of a SavedModel, frozen."""
    try:
        loaded = tf.saved_model.load(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - TF raises many types for bad SavedModels
        raise ModelLoadError(f"{path}: cannot load the SavedModel: {first_line(exc)}") from None
    signatures = getattr(loaded, "signatures", {}) or {}
    if "serving_default" not in signatures:
        raise ModelLoadError(f"{path}: the SavedModel has no serving_default signature "
                             f"(signatures: {', '.join(signatures) or 'none'})")
    source = _concrete_source(signatures["serving_default"], "saved_model")
    source.extra["loaded"] = loaded  # keeps the captured variables alive while freezing
    return source


def _keras_file_source(path: Path, input_signature: Sequence[Any] | None) -> GraphSource:
    import keras
    try:
        model = keras.models.load_model(os.fspath(path), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load the Keras model: {first_line(exc)}") from None
    source = _keras_source(model, input_signature)
    source.source = "keras_file"
    return source


def keras_input_specs(model: Any, input_signature: Sequence[Any] | None = None) -> Any:
    """TensorSpecs for the model's inputs (its input structure; batch dim None), named
    after the Keras inputs (these names become the Placeholders and signature keys)."""
    if input_signature is not None:
        specs = list(input_signature)
        return specs[0] if len(specs) == 1 else specs
    try:
        structure = model.input
    except (AttributeError, ValueError) as exc:
        raise ConfigError(f"the Keras model has no defined inputs ({first_line(exc)}); build it on an Input or "
                          "pass an input signature (example_inputs)") from None
    taken: set[str] = set()

    def spec(tensor: Any) -> tf.TensorSpec:
        name = claim(identifier(getattr(tensor, "name", None) or "input"), taken)
        return tf.TensorSpec((None,) + tuple(tensor.shape[1:]), tf.as_dtype(tensor.dtype), name=name)

    return tf.nest.map_structure(spec, structure)



def _keras_source(model: Any, input_signature: Sequence[Any] | None) -> GraphSource:
    specs = keras_input_specs(model, input_signature)
    try:
        concrete = tf.function(lambda inputs: model(inputs, training=False)).get_concrete_function(specs)
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
        raise ModelLoadError(f"cannot trace the Keras model: {first_line(exc)}") from None
    source = _concrete_source(concrete, "keras")
    source.call = "keras"
    return source


def _function_source(function: Any, input_signature: Sequence[Any] | None) -> GraphSource:
    try:
        if input_signature is not None:
            concrete = function.get_concrete_function(*input_signature)
        else:
            concrete = function.get_concrete_function()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot get a concrete function from the tf.function ({first_line(exc)}); give it an "
                          "input_signature or pass example inputs") from None
    source = _concrete_source(concrete, "function")
    return source


def _concrete_source(concrete: Any, kind: str) -> GraphSource:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    try:
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot freeze the function's variables: {first_line(exc)}") from None
    graph_def = frozen.graph.as_graph_def()
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in frozen.outputs]
    args, kwargs = concrete.structured_input_signature
    call = "kwargs" if kwargs and not args else "args"
    input_keys = sorted(kwargs) if call == "kwargs" and len(kwargs) == len(inputs) else \
        [t.split(":")[0] for t in inputs]
    return GraphSource(graph_def, inputs, outputs, input_keys, _output_keys(concrete.structured_outputs, outputs),
                       call=call, source=kind)


def _output_keys(structure: Any, outputs: list[str]) -> list[str]:
    """The names a signature gives the outputs, as TF's own SavedModel export does: dict
    keys (``logits``; nested ``a/b``), ``output_<i>`` for positions in a list or tuple
    (``output_0``; nested ``output_0/1``), ``output_0`` for a single tensor; tensor names
    if the structure does not flatten to the outputs."""
    from tensorflow.python.util import nest
    paths = [p for p, _ in nest.flatten_with_joined_string_paths(structure)]
    if len(paths) != len(outputs) or len(set(paths)) != len(paths):
        return [_key(o) for o in outputs]
    if paths == [""]:
        return ["output_0"]
    return [f"output_{p}" if p.split("/")[0].isdigit() else p for p in paths]


def graph_def_source(graph_def: graph_pb2.GraphDef, outputs: Sequence[str] | None = None,
                     inputs: Sequence[str] | None = None) -> GraphSource:
    """A GraphDef's interface. Outputs: ``outputs`` (tensor ``name:i`` or node names, INC
    spelling), the graph then pruned to what they need; else the sink nodes' outputs (nodes
    no data input reads; NoOps, Consts and Placeholders aside). Inputs: ``inputs`` (which
    must be Placeholders), else the Placeholders in node order; a Placeholder the outputs
    need that ``inputs`` does not name is appended (``lower`` does that)."""
    feeds = [tensor_name(i) for i in inputs or ()]
    _check_tensors(graph_def, feeds, "input")
    _check_placeholders(graph_def, feeds)
    if outputs:
        names = [tensor_name(o) for o in outputs]
        _check_tensors(graph_def, names, "output")
        graph_def = prune(graph_def, [parse_input(n)[0] for n in names])
    else:
        names = _sink_outputs(graph_def)
    if not names:
        raise ModelLoadError("the GraphDef has no outputs (no sink node); name them with outputs=[...] (--outputs)")
    kept = {n.name for n in graph_def.node}
    unused = [f for f in feeds if parse_input(f)[0] not in kept]
    if unused:
        raise ConfigError(f"input {unused[0]!r} is not needed by the chosen outputs; name only the Placeholders "
                          "they read")
    if not feeds:
        feeds = [f"{n.name}:0" for n in graph_def.node if n.op == "Placeholder"]
    return GraphSource(graph_def, feeds, names, [_key(i) for i in feeds], [_key(n) for n in names])


def tensor_name(name: str) -> str:
    """``x`` -> ``x:0``; ``x:1`` unchanged; a leading ``^`` is not a tensor (ConfigError)."""
    name = str(name).strip()
    if not name or name.startswith("^"):
        raise ConfigError(f"{name!r} is not a tensor name; use NODE or NODE:INDEX")
    node, index = parse_input(name)
    return f"{node}:{index}"


def _key(tensor: str) -> str:
    return tensor[:-2] if tensor.endswith(":0") else tensor


def _check_tensors(graph_def: graph_pb2.GraphDef, tensors: Sequence[str], what: str) -> None:
    """ConfigError unless every ``name:i`` is an existing node's output (by its OpDef)."""
    nodes = {n.name: n for n in graph_def.node}
    for tensor in tensors:
        name, index = parse_input(tensor)
        node = nodes.get(name)
        if node is None:
            close = difflib.get_close_matches(name, list(nodes), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{what} {tensor!r}: the graph has no node {name!r}{hint}")
        count = _num_outputs(node)
        if index >= count:
            raise ConfigError(f"{what} {tensor!r}: node {name!r} ({node.op}) has {count} output(s)")


def _check_placeholders(graph_def: graph_pb2.GraphDef, tensors: Sequence[str]) -> None:
    ops = {n.name: n.op for n in graph_def.node}
    for tensor in tensors:
        name = parse_input(tensor)[0]
        if ops[name] != "Placeholder":
            raise ConfigError(f"input {tensor!r} is a {ops[name]} node, not a Placeholder; name the graph's "
                              "Placeholders as inputs")


def prune(graph_def: graph_pb2.GraphDef, keep: Sequence[str]) -> graph_pb2.GraphDef:
    """A copy of ``graph_def`` with only the nodes that ``keep`` (node names) depend on
    through data or control inputs; versions and the function library are kept."""
    nodes = {n.name: n for n in graph_def.node}
    needed: set[str] = set()
    stack = list(keep)
    while stack:
        name = stack.pop()
        if name in needed or name not in nodes:
            continue
        needed.add(name)
        stack.extend(parse_input(ref)[0] for ref in nodes[name].input)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in needed)
    return out


def _sink_outputs(graph_def: graph_pb2.GraphDef) -> list[str]:
    """Outputs of the nodes no other node reads, by data or control edge (a node that
    only a NoOp waits on, like the frozen variable reads a Keras graph keeps, is no
    output)."""
    read = {parse_input(ref)[0] for node in graph_def.node for ref in node.input}
    sinks = []
    for node in graph_def.node:
        if node.name in read or node.op in ("NoOp", "Const", "Placeholder", "Assert", "SaveV2", "RestoreV2"):
            continue
        count = _num_outputs(node)
        sinks.extend(f"{node.name}:{i}" for i in range(count))
    return sinks


def _num_outputs(node: node_def_pb2.NodeDef) -> int:
    definition = op_def(node.op)
    if definition is None:
        return 1
    ranges = arg_ranges(definition.output_arg, convert_attrs(node)[0])
    return ranges[-1][1].stop if ranges else 0


# ------------------------------------------------------------- constant folding ---
#: a folded tensor may be at most this large, or as large as the constants it reads (a
#: Fill or Tile that makes a big tensor from a small shape stays an op, as in grappler)
FOLD_MIN_BYTES = 1 << 20
#: ops never folded: they make no value a Const could hold, or mean more than their value
_NO_FOLD = {"Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "Assert", "CheckNumerics"}


def fold_constants(graph_def: graph_pb2.GraphDef, keep: Sequence[str] = ()) -> graph_pb2.GraphDef:
    """``graph_def`` with every constant-only subgraph evaluated by TensorFlow into Consts
    (the frozen Keras BatchNorm's ``Rsqrt(var + eps) * gamma`` and ``beta - mean * scale``).

    Invariants: a node is folded when it is stateless, calls no function, reads only Consts
    and folded nodes (data and control), writes only IR-typed tensors (no variant or
    resource) of bounded size (``FOLD_MIN_BYTES``), and is not in ``keep`` (the graph's
    outputs) or ``_NO_FOLD``. Each folded output that an unfolded node reads becomes one
    Const (named like the node for output 0, ``<node>/folded_<i>`` otherwise) holding what
    TF computes for it, so the graph computes the same; folded nodes nobody reads any more
    are dropped. A graph with nothing to fold is returned as is."""
    nodes = list(graph_def.node)
    foldable = _foldable(nodes, set(keep), {f.signature.name for f in graph_def.library.function})
    by_name = {n.name: n for n in nodes}
    frontier: dict[tuple[str, int], None] = {}
    for node in nodes:
        if node.name in foldable:
            continue
        for ref in node.input:
            name, index = parse_input(ref)
            if index >= 0 and name in foldable:
                frontier[(name, index)] = None
    if not frontier:
        return graph_def
    tensors = list(frontier)
    values = _evaluate(graph_def, tensors)
    if values is None:
        return graph_def
    consts = _folded_consts(by_name, list(zip(tensors, values)))
    return _splice(graph_def, foldable, consts)


def _foldable(nodes: Sequence[node_def_pb2.NodeDef], keep: set[str], functions: set[str]) -> set[str]:
    """Names of the nodes ``fold_constants`` evaluates (see its invariants), in one pass
    over a topological order."""
    constant = {n.name for n in nodes if n.op == "Const"}
    folded: set[str] = set()
    for node in topological_order(nodes):
        if node.name in keep or node.op in _NO_FOLD or node.op in functions or not node.input:
            continue
        definition = op_def(node.op)
        if definition is None or definition.is_stateful or any(
                node.attr[k].WhichOneof("value") == "func" or node.attr[k].list.func for k in node.attr):
            continue
        if not all(parse_input(ref)[0] in constant or parse_input(ref)[0] in folded for ref in node.input):
            continue
        if not _typed_outputs(node, definition):
            continue
        folded.add(node.name)
    return folded


def _typed_outputs(node: node_def_pb2.NodeDef, definition: Any) -> bool:
    """True when every output of ``node`` has a dtype the IR models (per its OpDef)."""
    attrs = convert_attrs(node)[0]
    for arg, positions in arg_ranges(definition.output_arg, attrs):
        if arg.type_attr:
            dtype = attrs.get(arg.type_attr)
            if not isinstance(dtype, DType):
                return False
        elif arg.type_list_attr:
            return False
        elif ir_dtype(arg.type) == DType.UNKNOWN:
            return False
    return True


def _evaluate(graph_def: graph_pb2.GraphDef, tensors: list[tuple[str, int]]) -> list[np.ndarray] | None:
    """The values of ``tensors`` (computed from Consts only), or None when TF cannot
    compute them or one is too large to store (the graph is then left unfolded)."""
    graph = import_graph(graph_def)
    try:
        with tf.compat.v1.Session(graph=graph) as session:
            values = session.run([graph.get_operation_by_name(n).outputs[i] for n, i in tensors])
    except Exception as exc:  # noqa: BLE001 - a kernel error leaves the graph as it was
        logger.info("constant folding skipped: %s", first_line(exc))
        return None
    return [np.asarray(v) for v in values]


def _folded_consts(by_name: dict[str, node_def_pb2.NodeDef], values: list[tuple[tuple[str, int], np.ndarray]]
                   ) -> dict[tuple[str, int], node_def_pb2.NodeDef]:
    """One Const NodeDef per folded tensor small enough to store; a tensor larger than
    both FOLD_MIN_BYTES and the constants its node reads is left to the op. A node all of
    whose read outputs fold, output 0 among them, gives its name to that Const."""
    small: dict[tuple[str, int], np.ndarray] = {}
    for (name, index), value in values:
        node = by_name[name]
        read = sum(_const_bytes(by_name, parse_input(r)[0]) for r in node.input if not r.startswith("^"))
        if value.nbytes <= max(FOLD_MIN_BYTES, read):
            small[(name, index)] = value
    whole = {name for (name, index) in small if index == 0} - {name for (name, index), _ in values
                                                                 if (name, index) not in small}
    taken = set(by_name)
    consts: dict[tuple[str, int], node_def_pb2.NodeDef] = {}
    for (name, index), value in small.items():
        const_name = name if name in whole and index == 0 else claim(f"{name}/folded_{index}", taken)
        const = node_def_pb2.NodeDef(name=const_name, op="Const", device=by_name[name].device)
        const.attr["dtype"].type = tf.dtypes.as_dtype(value.dtype).as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, shape=value.shape))
        consts[(name, index)] = const
    return consts


def _const_bytes(by_name: dict[str, node_def_pb2.NodeDef], name: str) -> int:
    node = by_name.get(name)
    if node is None or node.op != "Const":
        return 0
    return len(node.attr["value"].tensor.tensor_content) or node.attr["value"].tensor.ByteSize()


def _splice(graph_def: graph_pb2.GraphDef, foldable: set[str],
            consts: dict[tuple[str, int], node_def_pb2.NodeDef]) -> graph_pb2.GraphDef:
    """The graph with readers of folded tensors reading their Consts, and folded nodes no
    remaining node reads (by data or control edge) dropped."""
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    replaced = {name for (name, index), const in consts.items() if const.name == name}
    kept: list[node_def_pb2.NodeDef] = []
    for node in graph_def.node:
        if node.name in replaced:
            continue
        copy = node_def_pb2.NodeDef()
        copy.CopyFrom(node)
        if node.name not in foldable:
            del copy.input[:]
            for ref in node.input:
                name, index = parse_input(ref)
                const = consts.get((name, index)) if index >= 0 else None
                copy.input.append(const.name if const is not None else ref)
        kept.append(copy)
    kept.extend(consts.values())
    needed = _reachable_from_unfolded(kept, foldable)
    out.node.extend(n for n in kept if n.name not in foldable or n.name in needed)
    return out


def _reachable_from_unfolded(nodes: Sequence[node_def_pb2.NodeDef], foldable: set[str]) -> set[str]:
    """Names of the folded nodes that some unfolded node still reads, directly or not."""
    by_name = {n.name: n for n in nodes}
    needed: set[str] = set()
    stack = [parse_input(ref)[0] for n in nodes if n.name not in foldable for ref in n.input]
    while stack:
        name = stack.pop()
        if name in needed or name not in foldable or name not in by_name:
            continue
        needed.add(name)
        stack.extend(parse_input(ref)[0] for ref in by_name[name].input)
    return needed


# --------------------------------------------------------------------- lowering ---
def lower(source: GraphSource) -> Model:
    """Lower a GraphSource to an ir.Model (see the module docstring)."""
    tf_graph = import_graph(source.graph_def)
    return _Lowerer(source, tf_graph).run()


def import_graph(graph_def: graph_pb2.GraphDef) -> tf.Graph:
    """Import ``graph_def`` into a fresh tf.Graph (validating it; giving dtypes and shapes)."""
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except Exception as exc:  # noqa: BLE001 - ValueError, InvalidArgumentError, NotFoundError...
        raise ModelLoadError(f"TensorFlow cannot import the GraphDef: {first_line(exc)}") from None
    return graph


#: functional ops and the attributes that name the functions they run; those functions
#: are lowered as IR subgraphs of the calling node (see ``_Lowerer._lower_functions``)
FUNCTION_ATTRS: dict[str, tuple[str, ...]] = {
    "While": ("cond", "body"), "StatelessWhile": ("cond", "body"),
    "If": ("then_branch", "else_branch"), "StatelessIf": ("then_branch", "else_branch"),
    "PartitionedCall": ("f",), "StatefulPartitionedCall": ("f",),
}


class _Lowerer:
    """Lowers one GraphSource; with ``prefix``, a function body (every value and node name
    prefixed, so names stay unique across the graph tree), sharing ``shells`` and
    ``functions`` (body graph name -> FunctionDef name) with the main graph's lowerer."""

    def __init__(self, source: GraphSource, tf_graph: tf.Graph, prefix: str = "",
                 library: dict[str, Any] | None = None, shells: dict[str, bytes] | None = None,
                 functions: dict[str, str] | None = None) -> None:
        self.source = GraphSource(source.graph_def, list(source.inputs), list(source.outputs),
                                  list(source.input_keys), list(source.output_keys), source.call, source.source)
        self.tf_graph = tf_graph
        self.prefix = prefix
        self.graph = Graph(prefix[:-len(BODY_SEP)] if prefix else "main", NAME)
        self.values: dict[tuple[str, int], Value] = {}
        self.shells: dict[str, bytes] = shells if shells is not None else {}
        self.library = library if library is not None else {f.signature.name: f for f in
                                                            source.graph_def.library.function}
        self.functions: dict[str, str] = functions if functions is not None else {}

    def _name(self, name: str) -> str:
        return self.prefix + name

    def run(self) -> Model:
        self.lower_graph()
        return Model(self.graph, {TF_META: self._meta()})

    def lower_graph(self) -> Graph:
        nodes = topological_order(self.source.graph_def.node)
        inputs = {name.split(":")[0] for name in self.source.inputs}
        for node in nodes:
            if node.op == "Placeholder" and node.name in inputs:
                continue
            if node.op == "Placeholder":
                inputs.add(node.name)
                self.source.inputs.append(f"{node.name}:0")
                self.source.input_keys.append(node.name)
        by_name = {n.name: n for n in nodes}
        for tensor in self.source.inputs:
            self._lower_placeholder(by_name[tensor.split(":")[0]])
        for node in nodes:
            if node.op == "Placeholder":
                continue
            if node.op == "Const" and _only_control(node.input) and self._const_data(node) is not None:
                self._lower_const(node)
            else:
                self._lower_node(node)
        self.graph.outputs = [self._output(name) for name in self.source.outputs]
        return self.graph

    def _meta(self) -> dict[str, Any]:
        gd = self.source.graph_def
        return {
            "library": gd.library.SerializeToString(deterministic=True),
            "versions": gd.versions.SerializeToString(deterministic=True),
            "shells": self.shells,
            "functions": self.functions,
            "input_keys": list(self.source.input_keys),
            "output_keys": list(self.source.output_keys),
            "call": self.source.call,
            "source": self.source.source,
        }

    def _output(self, tensor: str) -> Value:
        name, index = parse_input(tensor)
        value = self.values.get((name, index))
        if value is None:
            raise ModelLoadError(f"output {tensor!r} is not a tensor of the graph")
        return value

    def _tf_output(self, name: str, index: int) -> tuple[DType, Shape]:
        try:
            tensor = self.tf_graph.get_operation_by_name(name).outputs[index]
        except (KeyError, IndexError, ValueError):
            return DType.UNKNOWN, None
        return ir_dtype(tensor.dtype), ir_shape(tensor.shape)

    def _shell(self, node: node_def_pb2.NodeDef, drop: Iterable[str]) -> None:
        shell = node_def_pb2.NodeDef()
        shell.CopyFrom(node)
        for key in drop:
            if key in shell.attr:
                del shell.attr[key]
        if self.prefix:
            shell.input[:] = [f"^{self._name(r[1:])}" if r.startswith("^") else r for r in shell.input]
        self.shells[self._name(node.name)] = shell.SerializeToString(deterministic=True)

    def _lower_placeholder(self, node: node_def_pb2.NodeDef) -> None:
        dtype, shape = self._tf_output(node.name, 0)
        value = self.graph.add_input(Value(self._name(node.name), dtype, shape))
        self.values[(node.name, 0)] = value
        self._shell(node, ("dtype",))

    @staticmethod
    def _const_data(node: node_def_pb2.NodeDef) -> np.ndarray | None:
        return tensor_to_array(node.attr["value"].tensor) if "value" in node.attr else None

    def _lower_const(self, node: node_def_pb2.NodeDef) -> None:
        data = self._const_data(node)
        value = Value(self._name(node.name), ir_dtype(node.attr["value"].tensor.dtype), tuple(data.shape), data)
        self.values[(node.name, 0)] = self.graph.add_constant(value)
        if set(node.attr) - {"dtype", "value"} or node.input or node.device:
            self._shell(node, ("dtype", "value"))

    def _lower_node(self, node: node_def_pb2.NodeDef) -> None:
        inputs, control = self._read_inputs(node)
        count = len(self.tf_graph.get_operation_by_name(node.name).outputs)
        outputs = []
        for index in range(count):
            dtype, shape = self._tf_output(node.name, index)
            name = self._name(node.name)
            outputs.append(Value(name if index == 0 else f"{name}:{index}", dtype, shape))
        attrs, kinds = convert_attrs(node)
        definition = op_def(node.op)
        types = {}
        if definition is not None and node.op != CAST_OP:
            for key in derived_type_attrs(definition, attrs, [v.dtype for v in inputs], [v.dtype for v in outputs]):
                types[key] = attrs.pop(key)
        if control:
            attrs[CONTROL_INPUTS] = [self._name(c) for c in control]
        self._lower_functions(node, attrs, inputs)
        ir_node = Node(node.op, inputs, outputs, attrs, name=self._name(node.name))
        declared = {a.name for a in definition.attr} if definition is not None else set()
        extra = {k: v for k, v in kinds.items() if k not in declared}
        if extra or node.device or node.HasField("experimental_type") or node.HasField("experimental_debug_info"):
            ir_node.meta[TF_META] = {"kinds": extra, "device": node.device, "experimental": _experimental(node),
                                     "types": types}
        self.graph.append(ir_node)
        for index, value in enumerate(outputs):
            self.values[(node.name, index)] = value

    def _lower_functions(self, node: node_def_pb2.NodeDef, attrs: dict[str, Any], inputs: list[Value]) -> None:
        """Replace the names of the functions a functional op runs (``FUNCTION_ATTRS``)
        with their bodies as IR graphs named ``<node>>``<attr>`` (the FunctionDef's name
        recorded in ``functions``). A body TF cannot import stays a name (opaque)."""
        for key in FUNCTION_ATTRS.get(node.op, ()):
            name = attrs.get(key)
            if not isinstance(name, str) or name not in self.library:
                continue
            prefix = f"{self._name(node.name)}{BODY_SEP}{key}{BODY_SEP}"
            try:
                attrs[key] = self._lower_function(self.library[name], prefix, _arg_shapes(node, attrs, inputs))
            except (ModelLoadError, UnsupportedModelError, ValueError) as exc:
                logger.info("function %s of %s stays opaque: %s", name, node.name, first_line(exc))
                continue
            self.functions[prefix[:-len(BODY_SEP)]] = name

    def _lower_function(self, fdef: Any, prefix: str, shapes: list[Any] | None) -> Graph:
        from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def
        graph_def, flat = function_def_to_graph_def(fdef, input_shapes=shapes)
        graph_def.library.CopyFrom(self.source.graph_def.library)
        inputs = [f"{arg.name}:0" for arg in fdef.signature.input_arg]
        outputs = [flat[fdef.ret[arg.name]] for arg in fdef.signature.output_arg]
        source = GraphSource(graph_def, inputs, outputs, list(inputs), list(outputs))
        body = _Lowerer(source, import_graph(graph_def), prefix, self.library, self.shells, self.functions)
        return body.lower_graph()

    def _read_inputs(self, node: node_def_pb2.NodeDef) -> tuple[list[Value], list[str]]:
        """The node's data inputs as values, and the names of its control inputs."""
        inputs: list[Value] = []
        control: list[str] = []
        for ref in node.input:
            name, index = parse_input(ref)
            if index < 0:
                control.append(name)
                continue
            value = self.values.get((name, index))
            if value is None:
                raise ModelLoadError(f"node {node.name!r} reads {ref!r}, which is not a tensor of the graph")
            inputs.append(value)
        return inputs, control


def _arg_shapes(node: node_def_pb2.NodeDef, attrs: dict[str, Any], inputs: list[Value]) -> list[Any] | None:
    """The shapes a functional op's function arguments have: a While's ``output_shapes``
    (loop-invariant shapes), an If's inputs after the condition, a call's inputs."""
    if node.op in ("While", "StatelessWhile"):
        shapes = attrs.get("output_shapes")
        if isinstance(shapes, list) and len(shapes) == len(inputs):
            return [tf.TensorShape(None if s is None else [d if d >= 0 else None for d in s]) for s in shapes]
        return None
    args = inputs[1:] if node.op in ("If", "StatelessIf") else inputs
    return [tf.TensorShape(None if v.shape is None else list(v.shape)) for v in args]


def derived_type_attrs(definition: Any, attrs: dict[str, Any], in_dtypes: list[DType],
                       out_dtypes: list[DType]) -> list[str]:
    """The node's single-type attributes (``T``, ``Tidx``, ...) that the dtypes of its
    input/output values determine: every arg bound to the attribute has known dtypes equal
    to it, and at least one such arg has a tensor. The IR leaves them out (the values'
    dtypes are the truth) and the backend writes them back from the values."""
    verdict: dict[str, bool] = {}
    ranges = [(arg, [in_dtypes[i] for i in positions if i < len(in_dtypes)])
              for arg, positions in arg_ranges(definition.input_arg, attrs)]
    ranges += [(arg, [out_dtypes[i] for i in positions if i < len(out_dtypes)])
               for arg, positions in arg_ranges(definition.output_arg, attrs)]
    for arg, dtypes in ranges:
        key = arg.type_attr
        if not key or not dtypes:
            continue
        value = attrs.get(key)
        ok = isinstance(value, DType) and all(d == value for d in dtypes)
        verdict[key] = verdict.get(key, True) and ok
    return sorted(key for key, ok in verdict.items() if ok)


def _experimental(node: node_def_pb2.NodeDef) -> bytes:
    """The NodeDef's experimental_type / experimental_debug_info fields, serialized."""
    shell = node_def_pb2.NodeDef()
    if node.HasField("experimental_type"):
        shell.experimental_type.CopyFrom(node.experimental_type)
    if node.HasField("experimental_debug_info"):
        shell.experimental_debug_info.CopyFrom(node.experimental_debug_info)
    return shell.SerializeToString(deterministic=True)


def _only_control(refs: Iterable[str]) -> bool:
    return all(ref.startswith("^") for ref in refs)


def topological_order(nodes: Sequence[node_def_pb2.NodeDef]) -> list[node_def_pb2.NodeDef]:
    """The nodes in a topological order of data and control edges, as close to the given
    order as possible (a stable Kahn sort). UnsupportedModelError on a cycle (v1 while
    loops: NextIteration -> Merge)."""
    position = {n.name: i for i, n in enumerate(nodes)}
    if len(position) != len(nodes):
        raise ModelLoadError("the GraphDef has two nodes with one name")
    pending = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for ref in node.input:
            src = position.get(parse_input(ref)[0])
            if src is None:
                raise ModelLoadError(f"node {node.name!r} reads {ref!r}, which no node produces")
            pending[i] += 1
            readers[src].append(i)
    ready = [i for i, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for reader in readers[i]:
            pending[reader] -= 1
            if pending[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(nodes):
        stuck = next(nodes[i].name for i, count in enumerate(pending) if count)
        raise UnsupportedModelError(f"the graph has a cycle (at {stuck!r}): v1 control flow (Enter/Merge/"
                                    "NextIteration) is not supported; export with v2 control flow (tf.function)")
    return [nodes[i] for i in order]


