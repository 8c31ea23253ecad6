"""verify(graph): raise IRError naming the first broken invariant.

Checked: use-lists agree with node inputs in both directions; nodes are in topological
order (outer-scope values visible inside subgraphs); value names are unique across the
graph tree; no node reads a value that is not in scope (dangling); graph outputs are
defined; no shape has a negative dimension; a constant's data has the shape its type
declares (unknown and symbolic dims match any size); every cast's output dtype is its target (or not yet inferred); and, when ``mixed_input_ok`` is given,
every non-cast node reads one float dtype on all its float inputs except those the
callback allows to differ (policy pins)."""
from __future__ import annotations

import logging
from typing import Callable

from mixprec.errors import IRError
from mixprec.ir.cast import cast_spec, cast_target, is_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node, Value

logger = logging.getLogger(__name__)

MixedInputOk = Callable[[Node, int], bool]


def verify(graph: Graph, mixed_input_ok: MixedInputOk | None = None) -> None:
    """Check the invariants of ``graph`` and everything nested in it."""
    names: set[str] = set()
    counts = [0, 0]
    _verify(graph, set(), names, mixed_input_ok, counts)
    if counts[0] != counts[1]:  # some use-list entry matches no input: name it
        _check_all_uses(graph)
        raise IRError(f"use-lists hold {counts[0]} entries for {counts[1]} node inputs")


def _verify(graph: Graph, outer: set[int], names: set[str], mixed_input_ok: MixedInputOk | None,
            counts: list[int]) -> None:
    """``counts``: [use-list entries of the values defined, node inputs whose entry was
    found]. Every input's entry is checked where it is read; the entries are distinct, so
    when the two counts agree every entry is one of them (the reverse direction holds)."""
    defined: set[int] = set(outer)
    good_shapes: set[tuple] = set()

    def define(value: Value, what: str) -> None:
        if value.name in names:
            raise IRError(f"graph {graph.name!r}: value name %{value.name} is not unique ({what})")
        names.add(value.name)
        defined.add(id(value))
        counts[0] += len(value._uses)
        _check_shape(value)

    cast_op = cast_spec(graph.root.framework).op

    for value in graph.inputs:
        if value.kind != "input":
            raise IRError(f"graph {graph.name!r}: input %{value.name} is not marked as an input")
        define(value, "input")
    for key, value in graph.constants.items():
        if value.kind != "const" or key != value.name:
            raise IRError(f"graph {graph.name!r}: constant %{value.name} is registered wrongly")
        define(value, "constant")
    count = 0
    prev = None
    for node in graph.iter_nodes():
        count += 1
        if node.graph is not graph or node._prev is not prev:
            raise IRError(f"node {node.name!r}: broken node list in graph {graph.name!r}")
        prev = node
        node_id = id(node)
        for index, value in enumerate(node._inputs):
            if value is None:
                continue
            if id(value) not in defined:
                where = "after its reader (not topological)" if value.kind == "node" else "out of scope (dangling)"
                raise IRError(f"node {node.name!r} ({node.op}) reads %{value.name} defined {where}")
            use = value._uses.get((node_id, index))
            if use is None or use[0] is not node or use[1] != index:
                raise IRError(f"use-list of %{value.name} misses ({node.name!r}, input {index})")
            counts[1] += 1
        if node.attrs:
            for sub in node.subgraphs():
                if graph._holders.get(node_id) is not node:
                    raise IRError(f"node {node.name!r} holds subgraph {sub.name!r} that was set after the node was "
                                  "added to its graph; set nested graphs as attributes before adding the node")
                _verify(sub, defined, names, mixed_input_ok, counts)
        for index, value in enumerate(node._outputs):
            if value._producer is not node or value._index != index or value._kind != "node":
                raise IRError(f"output %{value.name} of {node.name!r} has a wrong producer link")
            name = value.name
            if name in names:
                raise IRError(f"graph {graph.name!r}: value name %{name} is not unique "
                              f"(output of {node.name!r})")
            names.add(name)
            defined.add(id(value))
            shape = value.shape
            if shape and (shape.__class__ is not tuple or shape not in good_shapes):  # few distinct shapes
                _check_dims(value)
                if shape.__class__ is tuple:
                    good_shapes.add(shape)
            counts[0] += len(value._uses)
        if node.op == cast_op or mixed_input_ok is not None:
            _check_types(node, mixed_input_ok)
    if count != len(graph):
        raise IRError(f"graph {graph.name!r}: node count {len(graph)} disagrees with the node list ({count})")
    for value in graph.outputs:
        if id(value) not in defined:
            raise IRError(f"graph {graph.name!r}: output %{value.name} is not defined")


def _check_dims(value: Value) -> None:
    """No negative dimension in the value's shape."""
    for dim in value.shape or ():
        if isinstance(dim, int) and dim < 0:
            raise IRError(f"%{value.name} has a negative dimension in its shape {list(value.shape or ())}; a "
                          "dimension is a size, unknown (None) or a symbolic name")


def _check_shape(value: Value) -> None:
    """No negative dimension; a constant's data agrees with its declared shape."""
    shape = value.shape
    if shape is None:
        return
    _check_dims(value)
    data = value.storage  # shape only: lazily stored data is not read
    if data is None or value.kind != "const":
        return
    got = getattr(data, "shape", None)
    if got is None:
        return
    if len(got) != len(shape) or any(isinstance(d, int) and d != g for d, g in zip(shape, got)):
        raise IRError(f"constant %{value.name} declares shape {list(shape)} but its data has shape {list(got)}")


def _check_all_uses(graph: Graph) -> None:
    """_check_uses on every value of ``graph`` and its subgraphs."""
    for value in [*graph.inputs, *graph.constants.values()]:
        _check_uses(value)
    for node in graph.iter_nodes():
        for value in node._outputs:
            _check_uses(value)
        if node.attrs:
            for sub in node.subgraphs():
                _check_all_uses(sub)


def _check_uses(value: Value) -> None:
    """Every entry of the use-list points at a live node that reads ``value`` there."""
    for (node_id, index), (node, idx) in value._uses.items():
        if node_id != id(node) or idx != index or index >= len(node._inputs) or node._inputs[index] is not value:
            raise IRError(f"use-list of %{value.name} names ({node.name!r}, input {index}) which reads something else")
        if node.graph is None:
            raise IRError(f"use-list of %{value.name} names removed node {node.name!r}")


def _check_types(node: Node, mixed_input_ok: MixedInputOk | None) -> None:
    if node.graph is not None and is_cast(node):
        target = cast_target(node)
        if node.outputs[0].dtype not in (target, DType.UNKNOWN):
            raise IRError(f"cast {node.name!r} targets {target.value} but its output "
                          f"%{node.outputs[0].name} is {node.outputs[0].dtype.value}")
        return
    if mixed_input_ok is None:
        return
    kinds = {v.dtype for v in node._inputs if v is not None and v.dtype.is_float}
    if len(kinds) < 2:
        return
    seen: DType | None = None
    for index, value in enumerate(node._inputs):
        if value is None or not value.dtype.is_float or mixed_input_ok(node, index):
            continue
        if seen is None:
            seen = value.dtype
        elif value.dtype != seen:
            raise IRError(f"node {node.name!r} ({node.op}) mixes float input types: "
                          f"{seen.value} and {value.dtype.value} (input {index}, %{value.name})")
