"""Candidate regions for hardware-aware precision, and the standalone graphs that time them.

A *region* is a set of nodes of the FP32 graph that would run in low precision together:
a connected component of the low-precision nodes that painting (assign-precision on a
clone) gives, or a single allow op of such a component. For each region two standalone
graphs are built, both with the same inputs (the FP32 values that flow in) and outputs:

- ``fp32``: the region's nodes as they are in the FP32 graph;
- ``low``: a clone with every node pinned to the low precision and the conversion's own
  passes run on it (assign-precision, insert-casts, fold-casts, convert-constants,
  keep-io-types): its boundary casts and weights stored low are exactly what the
  converted model will run.

Invariants: the standalone graphs have canonical names (``in0``, ``c0``, ``v0``, ``n0``)
and no decision meta from the big graph, so the same structure at the same shapes gives
the same :attr:`Region.signature` in any model; the FP32 graph's constant data is shared,
never copied or written; nothing here imports a framework."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from mixprec.ir.cast import is_cast
from mixprec.ir.graph import Graph, Node, Value
from mixprec.ir.pins import Pin, set_pin
from mixprec.ir.text import dump

logger = logging.getLogger(__name__)

#: bump when the way regions are built or timed changes: old cache entries stop matching
SIGNATURE_VERSION = "1"
#: the passes that turn a region pinned low into what the converted model runs
#: node meta that holds the big graph's decisions, not the node's own description
_DECISIONS = ("precision", "category", "reason", "pin", "scope", "module_type")
LOW_PIPELINE = "infer-dtypes,assign-precision,insert-casts,fold-casts,convert-constants,keep-io-types"


@dataclass
class Region:
    """``nodes``: names of the region's nodes in the FP32 graph; ``inputs``: names of the
    FP32 graph's values feeding ``fp32.inputs`` (and ``low.inputs``) in order;
    ``untimeable``: why the region cannot be timed (None when it can)."""
    kind: str  # "component" | "single"
    nodes: list[str]
    ops: list[str]
    fp32: Graph
    inputs: list[str]
    precision: str
    policy: str | None = None
    untimeable: str | None = None
    _low: Graph | None = field(default=None, repr=False)

    def signature(self, shapes: Sequence[Sequence[Any]]) -> str:
        """A hash of the FP32 structure (ops, attrs, dtypes, shapes, small constants), the
        target precision, the policy and the concrete input ``shapes`` it runs at."""
        text = "\n".join([f"mixprec-region {SIGNATURE_VERSION} {self.precision} {self.policy or ''}",
                          dump(self.fp32), repr([tuple(int(d) for d in s) for s in shapes])])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def low(self) -> Graph:
        """The low-precision twin (built on first use: converting weights costs time)."""
        if self._low is None:
            self._low = lower(self.fp32, self.precision, self.policy)
        return self._low

    def label(self) -> str:
        head = ", ".join(self.ops[:3]) + (f", ... ({len(self.ops)} ops)" if len(self.ops) > 3 else "")
        return f"{self.kind} {self.nodes[0]}" + (f"..{self.nodes[-1]}" if len(self.nodes) > 1 else "") + f" [{head}]"


def low_components(painted: Graph, precision: str) -> list[list[Node]]:
    """The connected components (through values one produces and another reads) of the
    main graph's nodes painted ``precision`` that are not casts, each in graph order."""
    low = [n for n in painted.iter_nodes() if n.meta.get("precision") == precision and not is_cast(n)]
    parent = {id(n): id(n) for n in low}

    def find(key: int) -> int:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key
    for node in low:
        for value in node.inputs:
            producer = value.producer if value is not None else None
            if producer is not None and id(producer) in parent:
                parent[find(id(producer))] = find(id(node))
    groups: dict[int, list[Node]] = {}
    for node in low:
        groups.setdefault(find(id(node)), []).append(node)
    return list(groups.values())


def extract(graph: Graph, names: Sequence[str], precision: str, policy: str | None, kind: str) -> Region:
    """The region of ``graph``'s main-graph nodes named ``names`` as a standalone FP32
    graph (see the module docstring)."""
    wanted = set(names)
    nodes = [n for n in graph.iter_nodes() if n.name in wanted]
    sub = Graph("region", graph.root.framework)
    mapping: dict[int, Value] = {}
    inputs: list[str] = []
    untimeable = None
    made = 0
    for index, node in enumerate(nodes):
        if any(True for _ in node.subgraphs()):
            untimeable = f"node {node.name} holds a nested graph"
        args = []
        for value in node.inputs:
            if value is None:
                args.append(None)
                continue
            if id(value) not in mapping:
                if value.is_constant:
                    mapping[id(value)] = sub.add_constant(Value(f"c{len(sub.constants)}", value.dtype, value.shape,
                                                                value.data))
                else:  # produced outside the region, or a graph input
                    mapping[id(value)] = sub.add_input(Value(f"in{len(sub.inputs)}", value.dtype, value.shape))
                    inputs.append(value.name)
            args.append(mapping[id(value)])
        outs = []
        for value in node.outputs:
            twin = Value(f"v{made}", value.dtype, value.shape)
            made += 1
            mapping[id(value)] = twin
            outs.append(twin)
        twin = Node(node.op, args, outs, dict(node.attrs), node.domain, f"n{index}")
        twin.meta = {k: v for k, v in node.meta.items() if k not in _DECISIONS}  # a framework's own node meta
        sub.append(twin)
    outputs = {id(v) for v in graph.outputs}
    for node in nodes:
        for value in node.outputs:
            read_outside = any(reader.name not in wanted or reader.graph is not graph for reader, _ in value.uses())
            if id(value) in outputs or read_outside:
                sub.outputs.append(mapping[id(value)])
    if not sub.outputs:
        untimeable = untimeable or "nothing outside reads the region"
    return Region(kind, [n.name for n in nodes], [n.op for n in nodes], sub, inputs, precision, policy, untimeable)


def lower(fp32: Graph, precision: str, policy: str | None) -> Graph:
    """A clone of the standalone ``fp32`` graph converted as the pipeline converts it
    with every node pinned to ``precision`` (casts at the boundary, weights stored low,
    inputs and outputs kept in their dtypes)."""
    from mixprec.passes import build_pipeline  # passes import this package's users, not the reverse
    low = fp32.clone()
    for node in low.iter_nodes():
        set_pin(node, Pin(precision, "user", "profiling: the region's low-precision twin"))
    build_pipeline(LOW_PIPELINE, verify=True, precision=precision, policy=policy, keep=True).run(low)
    return low
