"""GraphBuilder: a terse way to build graphs in tests and frontends."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node, Shape, Value

logger = logging.getLogger(__name__)


def _dtype(d: DType | str) -> DType:
    return d if isinstance(d, DType) else DType.parse(d)


class GraphBuilder:
    """Builds a Graph node by node. Output values default to the dtype and shape of the
    node's first input unless given; names default to ``v0``, ``v1``, ..."""

    def __init__(self, name: str = "main", framework: str = "generic", parent: Graph | None = None) -> None:
        self.graph = Graph(name, framework, parent)
        self._auto = 0

    def _fresh(self, name: str | None) -> str:
        if name is not None:
            self.graph.register_name(name)
            return name
        while True:
            candidate = f"v{self._auto}"
            self._auto += 1
            if not self.graph.root._name_taken(candidate):
                self.graph.register_name(candidate)
                return candidate

    def input(self, name: str, dtype: DType | str = DType.FLOAT32, shape: Shape = None) -> Value:
        return self.graph.add_input(Value(name, _dtype(dtype), shape))

    def const(self, name: str, data: np.ndarray | None = None, dtype: DType | str | None = None,
              shape: Shape = None) -> Value:
        if data is not None:
            data = np.asarray(data)
            dt = _dtype(dtype) if dtype is not None else DType.from_numpy(data.dtype)
            if dtype is not None:
                data = data.astype(dt.to_numpy())
            value = Value(name, dt, data.shape, data)
        else:
            value = Value(name, _dtype(dtype or DType.FLOAT32), shape)
        return self.graph.add_constant(value)

    def node(self, op: str, inputs: Sequence[Value | None], outputs: Sequence[tuple[str | None, DType | str, Shape]],
             attrs: dict[str, Any] | None = None, name: str | None = None, domain: str = "") -> Node:
        outs = [Value(self._fresh(n), _dtype(d), s) for n, d, s in outputs]
        return self.graph.append(Node(op, list(inputs), outs, attrs, domain=domain, name=name))

    def op(self, op: str, *inputs: Value | None, attrs: dict[str, Any] | None = None, out: str | None = None,
           dtype: DType | str | None = None, shape: Shape | str = "same", name: str | None = None) -> Value:
        """Add a one-output node and return its output."""
        first = next((v for v in inputs if v is not None), None)
        if dtype is None:
            dtype = first.dtype if first is not None else DType.FLOAT32
        if isinstance(shape, str):
            shape = first.shape if first is not None else None
        return self.node(op, inputs, [(out, dtype, shape)], attrs, name).outputs[0]

    def output(self, *values: Value) -> None:
        self.graph.outputs.extend(values)
