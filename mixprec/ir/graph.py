"""The IR: Value, Node, Graph, Model.

Invariants (checked by mixprec.ir.verify):
- every Value has exactly one producer: a node output, a graph input or a constant;
- ``value.uses()`` lists exactly the (node, input_index) pairs that read the value, in the
  order they were added, and node inputs change only through Node methods that keep the
  use-lists right in both directions;
- ``graph.nodes`` is in topological order (every input is defined before its reader);
  nodes are kept in a doubly linked list so that inserting or removing one is O(1);
- names of values are unique within a graph and the graphs nested in it;
- a graph knows which of its nodes hold subgraphs (registered when the node is linked,
  dropped when it is removed), so ``all_graphs`` never walks the node list: a nested
  graph is set as a node attribute before the node is added to its graph.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import numpy as np

from mixprec.errors import IRError
from mixprec.ir.dtypes import DType
from mixprec.ir.lazy import LazyArray

logger = logging.getLogger(__name__)

Dim = int | str | None
Shape = tuple[Dim, ...] | None


class Value:
    """A tensor in the graph: a name, an element type, a shape, one producer and its uses."""

    __slots__ = ("name", "dtype", "shape", "_data", "_producer", "_index", "_kind", "_uses", "__weakref__")

    def __init__(self, name: str, dtype: DType = DType.UNKNOWN, shape: Shape = None,
                 data: "np.ndarray | LazyArray | None" = None) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape) if shape is not None else None
        self._data = data
        self._producer: Node | None = None
        self._index = 0
        self._kind = "free"  # free | input | const | node
        self._uses: dict[tuple[int, int], tuple[Node, int]] = {}

    @property
    def producer(self) -> "Node | None":
        """The node that computes this value, or None for graph inputs and constants."""
        return self._producer

    @property
    def producer_index(self) -> int:
        return self._index

    @property
    def kind(self) -> str:
        """'input', 'const', 'node', or 'free' for a value not yet placed in a graph."""
        return self._kind

    @property
    def is_constant(self) -> bool:
        return self._kind == "const"

    @property
    def data(self) -> np.ndarray | None:
        """A constant's data as a read-only-by-contract ndarray (None when it has none).
        Lazily stored data (mixprec.ir.lazy) is materialized on every access: a file
        slice as a fresh read-only memory map, a lazy conversion by converting it; code
        that needs only size, dtype or shape, or streams the data, uses ``storage``."""
        data = self._data
        return data.materialize() if isinstance(data, LazyArray) else data

    @data.setter
    def data(self, data: "np.ndarray | LazyArray | None") -> None:
        self._data = data

    @property
    def storage(self) -> "np.ndarray | LazyArray | None":
        """The data as stored: an ndarray, a LazyArray (shape, dtype, nbytes known without
        reading; ``chunks()`` streams it) or None."""
        return self._data

    @property
    def has_data(self) -> bool:
        return self._data is not None

    def uses(self) -> list[tuple["Node", int]]:
        """A snapshot of (node, input_index) pairs that read this value."""
        return list(self._uses.values())

    @property
    def num_uses(self) -> int:
        return len(self._uses)

    def replace_all_uses_with(self, other: "Value") -> None:
        """Every reader of self reads ``other`` instead (graph outputs are the caller's)."""
        for node, idx in self.uses():
            node.set_input(idx, other)

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.dtype.short}{list(self.shape) if self.shape is not None else ''})"


class Node:
    """One operation. ``op`` is the framework's own op name, ``domain`` its op-set namespace
    (empty for the framework's standard ops). ``attrs`` are carried verbatim; ``meta`` holds
    the passes' decisions (precision, category, reason) that the report and text show."""

    __slots__ = ("op", "domain", "name", "attrs", "meta", "_inputs", "_outputs", "graph",
                 "_prev", "_next", "__weakref__")

    def __init__(self, op: str, inputs: Sequence[Value | None] = (), outputs: Sequence[Value] = (),
                 attrs: dict[str, Any] | None = None, domain: str = "", name: str | None = None) -> None:
        self.op = op
        self.domain = domain
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta: dict[str, Any] = {}
        self._outputs: list[Value] = []
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._inputs = ins = list(inputs)
        key = id(self)
        for index, value in enumerate(ins):  # append_input, inlined: nodes are made by the hundred thousand
            if value is not None:
                value._uses[(key, index)] = (self, index)
        for value in outputs:
            self._add_output(value)
        self.name = name if name is not None else (self._outputs[0].name if self._outputs else op)

    # ---- inputs -------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """The operands in order; None marks an omitted optional input."""
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    def append_input(self, value: Value | None) -> None:
        self._inputs.append(value)
        if value is not None:
            value._uses[(id(self), len(self._inputs) - 1)] = (self, len(self._inputs) - 1)

    def set_input(self, index: int, value: Value | None) -> None:
        """Replace operand ``index``, keeping both use-lists right."""
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old._uses.pop((id(self), index), None)
        self._inputs[index] = value
        if value is not None:
            value._uses[(id(self), index)] = (self, index)

    def drop_inputs(self) -> None:
        """Forget every operand (used when the node is removed)."""
        for index, value in enumerate(self._inputs):
            if value is not None:
                value._uses.pop((id(self), index), None)
        self._inputs = []

    def _add_output(self, value: Value) -> None:
        if value._kind != "free":
            raise IRError(f"value %{value.name} already has a producer ({value._kind})")
        value._producer = self
        value._index = len(self._outputs)
        value._kind = "node"
        self._outputs.append(value)

    def subgraphs(self) -> Iterator["Graph"]:
        """Graphs nested in this node's attributes (If/Loop/Scan bodies, functions)."""
        if not self.attrs:
            return
        for attr in self.attrs.values():
            if isinstance(attr, Graph):
                yield attr
            elif isinstance(attr, list):
                for item in attr:
                    if isinstance(item, Graph):
                        yield item

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op}" if self.domain else self.op

    def __repr__(self) -> str:
        return f"Node({self.qualified_op} {self.name!r})"


class Graph:
    """Nodes in topological order plus the graph's inputs, outputs and constants.

    ``framework`` names the framework the graph came from (``onnx``, ``tensorflow``,
    ``torch``, ``mxnet``, or ``generic`` for hand-built graphs); passes pick their policy
    from it. Nested graphs point to their parent so that outer-scope values resolve."""

    def __init__(self, name: str = "main", framework: str = "generic", parent: "Graph | None" = None) -> None:
        self.name = name
        self.framework = framework
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        self._count = 0
        self._names: set[str] = set()
        self._name_counter: dict[str, int] = {}
        #: id -> node of this graph's nodes that hold subgraphs, and them in node order
        #: (None: to be recomputed after a holder was added or removed or nodes reordered)
        self._holders: dict[int, Node] = {}
        self._holder_order: list[Node] | None = []

    # ---- values -------------------------------------------------------------------------
    def add_input(self, value: Value) -> Value:
        if value._kind != "free":
            raise IRError(f"value %{value.name} already has a producer ({value._kind})")
        value._kind = "input"
        self.inputs.append(value)
        self._names.add(value.name)
        return value

    def add_constant(self, value: Value) -> Value:
        if value._kind != "free":
            raise IRError(f"value %{value.name} already has a producer ({value._kind})")
        if value.name in self.constants:
            raise IRError(f"duplicate constant %{value.name}")
        value._kind = "const"
        self.constants[value.name] = value
        self._names.add(value.name)
        return value


    def unique_name(self, base: str) -> str:
        """A value/node name not used anywhere in this graph tree, derived from ``base``
        deterministically (``base``, then ``base.1``, ``base.2``, ...)."""
        root = self.root
        if not root._name_taken(base):
            root._names.add(base)
            return base
        counter = root._name_counter.get(base, 0)
        while True:
            counter += 1
            candidate = f"{base}.{counter}"
            if not root._name_taken(candidate):
                root._name_counter[base] = counter
                root._names.add(candidate)
                return candidate

    def _name_taken(self, name: str) -> bool:
        return name in self._names

    def register_name(self, name: str) -> None:
        self.root._names.add(name)

    @property
    def root(self) -> "Graph":
        graph = self
        while graph.parent is not None:
            graph = graph.parent
        return graph

    # ---- nodes --------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The nodes in topological order (a snapshot)."""
        return list(self.iter_nodes())

    def iter_nodes(self) -> Iterator[Node]:
        node = self._head
        while node is not None:
            nxt = node._next
            yield node
            node = nxt

    @property
    def first_node(self) -> Node | None:
        return self._head

    def __len__(self) -> int:
        return self._count

    def _link(self, node: Node) -> None:
        if node.graph is not None:
            raise IRError(f"node {node.name!r} is already in a graph")
        node.graph = self
        self._count += 1
        root = self.root
        for value in node._outputs:
            root._names.add(value.name)
        if node.attrs:
            for sub in node.subgraphs():
                sub.parent = self
                root._names |= sub._names
                self._holders[id(node)] = node
                self._holder_order = None

    def append(self, node: Node) -> Node:
        """Add ``node`` at the end."""
        self._link(node)
        node._prev = self._tail
        node._next = None
        if self._tail is None:
            self._head = node
        else:
            self._tail._next = node
        self._tail = node
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._link(node)
        node._next = anchor
        node._prev = anchor._prev
        if anchor._prev is None:
            self._head = node
        else:
            anchor._prev._next = node
        anchor._prev = node
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        if anchor._next is None:
            return self.append(node)
        return self.insert_before(anchor._next, node)

    def remove(self, node: Node) -> None:
        """Unlink ``node``; its outputs must have no readers left."""
        for value in node._outputs:
            if value._uses:
                raise IRError(f"cannot remove {node.name!r}: output %{value.name} still has readers")
            if value in self.outputs:
                raise IRError(f"cannot remove {node.name!r}: output %{value.name} is a graph output")
        node.drop_inputs()
        if self._holders.pop(id(node), None) is not None:
            self._holder_order = None
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        node._prev = node._next = None
        node.graph = None
        self._count -= 1
        for value in node._outputs:
            value._kind = "free"
            value._producer = None

    def reorder(self, order: Sequence[Node]) -> None:
        """Relink this graph's nodes in ``order`` (a permutation of them); the caller
        keeps it topological (verify checks)."""
        if len(order) != self._count or any(n.graph is not self for n in order):
            raise IRError("reorder needs a permutation of the graph's own nodes")
        if self._holders:
            self._holder_order = None
        prev = None
        for node in order:
            node._prev = prev
            if prev is None:
                self._head = node
            else:
                prev._next = node
            prev = node
        if prev is not None:
            prev._next = None
        self._tail = prev

    def replace_output(self, old: Value, new: Value) -> None:
        self.outputs = [new if v is old else v for v in self.outputs]

    # ---- whole-graph helpers ------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        """Inputs, constants, then node outputs in order (this graph only)."""
        yield from self.inputs
        yield from self.constants.values()
        for node in self.iter_nodes():
            yield from node._outputs

    def all_graphs(self) -> Iterator["Graph"]:
        """This graph and every graph nested in it, depth first (in node order); reads
        only the nodes that hold subgraphs, not the node list."""
        yield self
        for node in self.subgraph_holders():
            for sub in node.subgraphs():
                yield from sub.all_graphs()

    def subgraph_holders(self) -> list[Node]:
        """This graph's nodes that hold subgraphs, in node order (a snapshot)."""
        if not self._holders:
            return []
        if self._holder_order is None:
            self._holder_order = [n for n in self.iter_nodes() if id(n) in self._holders]
        return list(self._holder_order)

    def all_nodes(self) -> Iterator[Node]:
        for graph in self.all_graphs():
            yield from graph.iter_nodes()


    # ---- copying ------------------------------------------------------------------------
    def clone(self) -> "Graph":
        """An independent copy of this graph and the graphs nested in it: new Values and
        Nodes with the same names, dtypes, shapes, attrs and meta (shallow copies of the
        dicts), use-lists rebuilt. Constant data is shared, not copied: passes must treat
        ``Value.data`` as read-only and assign a new array instead of writing into it.
        Outer-scope reads of a nested graph map to the copy's values."""
        return self._clone_into(None, {})

    def _clone_into(self, parent: "Graph | None", mapping: dict[int, Value]) -> "Graph":
        copy = Graph(self.name, self.framework, parent)
        for value in self.inputs:
            mapping[id(value)] = copy.add_input(_copy_value(value))
        for value in self.constants.values():
            mapping[id(value)] = copy.add_constant(_copy_value(value))
        for node in self.iter_nodes():
            attrs = {key: _clone_attr(attr, copy, mapping) for key, attr in node.attrs.items()}
            outputs = [_copy_value(v) for v in node._outputs]
            for old, new in zip(node._outputs, outputs):
                mapping[id(old)] = new
            twin = Node(node.op, [mapping[id(v)] if v is not None else None for v in node._inputs], outputs,
                        attrs, node.domain, node.name)
            twin.meta = dict(node.meta)
            copy.append(twin)
        copy.outputs = [mapping[id(v)] for v in self.outputs]
        copy._names |= self._names
        copy._name_counter.update(self._name_counter)
        return copy

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {self.framework}, {self._count} nodes)"


def _copy_value(value: Value) -> Value:
    return Value(value.name, value.dtype, value.shape, value._data)


def _clone_attr(attr: Any, parent: Graph, mapping: dict[int, Value]) -> Any:
    if isinstance(attr, Graph):
        return attr._clone_into(parent, mapping)
    if isinstance(attr, list) and any(isinstance(item, Graph) for item in attr):
        return [_clone_attr(item, parent, mapping) for item in attr]
    return attr


class Model:
    """A graph plus what the framework needs to write it back (opsets, metadata, ...)."""

    def __init__(self, graph: Graph, meta: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def framework(self) -> str:
        return self.graph.framework

    def clone(self) -> "Model":
        """A copy whose graph is ``graph.clone()`` (constant data shared read-only) and
        whose meta is a copy of the dict and of each dict or list directly in it; other
        meta values (framework objects, protos) are shared and must not be mutated."""
        meta = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                for k, v in self.meta.items()}
        return Model(self.graph.clone(), meta)

    def __repr__(self) -> str:
        return f"Model({self.graph!r})"
