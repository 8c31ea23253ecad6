"""to_networkx: the graph as a networkx.MultiDiGraph for analysis and pictures."""
from __future__ import annotations

import logging

import networkx as nx

from mixprec.ir.graph import Graph

logger = logging.getLogger(__name__)


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """Nodes are IR node names (attributes: op, domain, precision); graph inputs and
    constants are nodes of kind 'input'/'const'; one edge per (value, reader input index)
    with attributes value, dtype and index. Subgraphs are not expanded."""
    g = nx.MultiDiGraph(name=graph.name, framework=graph.framework)
    for value in list(graph.inputs) + list(graph.constants.values()):
        g.add_node(value.name, kind=value.kind, op=None, dtype=value.dtype.value)
    for node in graph.iter_nodes():
        g.add_node(node.name, kind="node", op=node.op, domain=node.domain,
                   precision=node.meta.get("precision"))
    for node in graph.iter_nodes():
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            src = value.producer.name if value.producer is not None else value.name
            if src not in g:
                g.add_node(src, kind="outer", op=None, dtype=value.dtype.value)
            g.add_edge(src, node.name, value=value.name, dtype=value.dtype.value, index=index)
    return g
