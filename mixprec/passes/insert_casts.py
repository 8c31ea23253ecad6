"""insert-casts: make the dtypes follow the decisions.

A node decided low precision reads its FP32 inputs (pins aside) through casts and its
FP32 outputs become the target dtype (outputs the policy pins aside); a node that is not, reads values this pass
retyped through casts back to FP32 (shape sources such as Shape read any dtype and get
no cast); graph outputs (nested graphs' included) keep their
name and dtype: the retyped producer output is renamed ``<name>.<dtype>`` and a cast
back to FP32 takes the old name. Invariants: one cast per (value, target dtype), placed
right after the value's producer (or at the head of the graph that owns it) and shared
by all readers; names are unique and derived from the value; a graph whose dtypes
already follow the decisions is left unchanged (the pipeline is idempotent)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.cast import cast_target, is_cast, make_cast, set_cast_target
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node, Value
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import (PolicyAnswers, decide, graph_policy, is_lowered, mixed_float_inputs, owning_graph,
                                   target_dtype, undecided_node, value_owners)
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)

_F32 = DType.FLOAT32


@register_pass
@dataclass
class InsertCasts(Pass):
    name = "insert-casts"
    description = "retype low-precision nodes and insert one shared cast per value and dtype where precision changes"
    precision: str = "bf16"
    policy: str | None = None

    def run(self, graph: Graph) -> PassResult:
        return PassResult(graph, _CastInserter(graph, target_dtype(self.precision), self.policy).run())

    def requires(self, graph: Graph) -> str | None:
        return undecided_node(graph)

    def ensures(self, graph: Graph) -> str | None:
        return mixed_float_inputs(graph, graph_policy(graph, self.policy))


class _CastInserter:
    def __init__(self, graph: Graph, target: DType, policy: str | None) -> None:
        self.graph = graph
        self.target = target
        self.policy = graph_policy(graph, policy)
        self._facts = PolicyAnswers(self.policy).facts
        self.owners = value_owners(graph)
        self.cache: dict[tuple[int, DType], Value] = {}
        self.anchor: dict[int, Node] = {}
        self.retyped: set[int] = set()
        self.changed = False

    def run(self) -> bool:
        for graph in self.graph.all_graphs():
            for node in graph.nodes:
                self._visit(node)
            self._restore_outputs(graph)
        return self.changed

    def _visit(self, node: Node) -> None:
        target = self.target
        lowered = is_lowered(node, target)
        if is_cast(node):
            if lowered and cast_target(node) == _F32:
                set_cast_target(node, target)
                self.retyped.add(id(node.outputs[0]))
                self.changed = True
            return
        facts = self._facts(node.qualified_op)
        if facts.shape_source:
            return  # reads only its input's shape: any dtype will do
        some_pinned, retyped = bool(facts.pinned), self.retyped
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            pinned = some_pinned and facts.is_pinned(index)
            if lowered and not pinned and value.dtype is _F32:
                node.set_input(index, self._cast(value, target, node))
            elif value.dtype is target and (pinned or not lowered) and id(value) in retyped:
                node.set_input(index, self._cast(value, _F32, node))
        if lowered:
            for index, value in enumerate(node.outputs):
                if value.dtype is _F32 and not facts.is_output_pinned(index):
                    value.dtype = target
                    retyped.add(id(value))
                    self.changed = True

    def _cast(self, value: Value, dtype: DType, reader: Node | None) -> Value:
        key = (id(value), dtype)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        owner = owning_graph(value, self.owners)
        cast = make_cast(owner, value, dtype)
        why = f"first reader {reader.name!r} runs in {dtype.value}" if reader is not None else \
            f"graph output keeps its {dtype.value} type"
        decide(cast, dtype.value, "cast", f"inserted: {why}")
        slot = id(value) if value.producer is not None else id(owner)
        anchor = self.anchor.get(slot) or value.producer
        if anchor is not None:
            owner.insert_after(anchor, cast)
        else:
            first = owner.first_node
            owner.insert_before(first, cast) if first is not None else owner.append(cast)
        self.anchor[slot] = cast
        self.cache[key] = cast.outputs[0]
        self.changed = True
        return cast.outputs[0]

    def _restore_outputs(self, graph: Graph) -> None:
        restored: dict[int, Value] = {}
        for position, value in enumerate(graph.outputs):
            if id(value) not in self.retyped:
                continue
            if id(value) not in restored:
                old_name = value.name
                value.name = graph.unique_name(f"{old_name}.{self.target.value}")
                back = self._cast(value, DType.FLOAT32, None)
                back.name = old_name
                restored[id(value)] = back
            graph.outputs[position] = restored[id(value)]
