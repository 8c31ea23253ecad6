"""Other views of a graph for `mixprec dump`: JSON (machine-readable) and Graphviz dot."""
from __future__ import annotations

import json
import logging
from typing import Any

from mixprec.ir.graph import Graph, Node, Value
from mixprec.ir.text import format_attr, format_type

logger = logging.getLogger(__name__)

_COLORS = {"bf16": "#9ecae1", "f16": "#a1d99b", "f32": "#fdae6b", "keep": "#e0e0e0"}


def _value(v: Value) -> dict[str, Any]:
    return {"name": v.name, "type": format_type(v.dtype, v.shape)}


def _node(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": node.name, "op": node.qualified_op,
        "inputs": [None if v is None else v.name for v in node.inputs],
        "outputs": [_value(v) for v in node.outputs],
        "attrs": {k: format_attr(v, "") for k, v in sorted(node.attrs.items()) if not isinstance(v, Graph)},
        "decision": {k: node.meta[k] for k in ("precision", "category", "reason") if k in node.meta},
    }
    subs = {k: graph_to_dict(v) for k, v in node.attrs.items() if isinstance(v, Graph)}
    if subs:
        out["subgraphs"] = subs
    return out


def graph_to_dict(graph: Graph) -> dict[str, Any]:
    return {
        "name": graph.name, "framework": graph.framework,
        "inputs": [_value(v) for v in graph.inputs],
        "constants": [_value(v) for v in graph.constants.values()],
        "nodes": [_node(n) for n in graph.iter_nodes()],
        "outputs": [v.name for v in graph.outputs],
    }


def to_json(graph: Graph) -> str:
    return json.dumps(graph_to_dict(graph), indent=2)


def to_dot(graph: Graph) -> str:
    """The top-level graph as Graphviz dot; nodes colored by precision, edges labelled
    with their dtype (constants are left out to keep pictures readable)."""
    lines = [f"digraph {json.dumps(graph.name)} {{", "  rankdir=TB;", "  node [shape=box, style=filled];"]
    ids: dict[int, str] = {}
    for i, value in enumerate(graph.inputs):
        ids[id(value)] = f"in{i}"
        lines.append(f'  in{i} [label={json.dumps(value.name)}, shape=ellipse, fillcolor="#ffffff"];')
    for i, node in enumerate(graph.iter_nodes()):
        nid = f"n{i}"
        color = _COLORS.get(node.meta.get("precision", "keep"), "#ffffff")
        lines.append(f'  {nid} [label={json.dumps(node.qualified_op + chr(10) + node.name)}, fillcolor="{color}"];')
        for value in node.inputs:
            if value is None or value.is_constant:
                continue
            src = ids.get(id(value.producer)) if value.producer is not None else ids.get(id(value))
            if src is not None:
                lines.append(f"  {src} -> {nid} [label={json.dumps(value.dtype.value)}];")
        ids[id(node)] = nid
    for i, value in enumerate(graph.outputs):
        src = ids.get(id(value.producer)) if value.producer is not None else ids.get(id(value))
        lines.append(f'  out{i} [label={json.dumps(value.name)}, shape=ellipse, fillcolor="#ffffff"];')
        if src is not None:
            lines.append(f"  {src} -> out{i} [label={json.dumps(value.dtype.value)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
