"""The shared IR: every frontend lowers to it, every pass rewrites it, every backend reads it."""
from mixprec.ir.builder import GraphBuilder
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model, Node, Value
from mixprec.ir.pins import Pin, set_pin
from mixprec.ir.text import dump, parse
from mixprec.ir.verify import verify


def to_networkx(graph):
    """See mixprec.ir.nx.to_networkx (imported lazily: networkx is slow to import)."""
    from mixprec.ir.nx import to_networkx as _to_networkx
    return _to_networkx(graph)


__all__ = ["DType", "Value", "Node", "Graph", "Model", "GraphBuilder", "Pin", "set_pin", "dump", "parse", "verify",
           "to_networkx"]
