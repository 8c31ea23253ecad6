"""mark-shape-subgraphs: nodes that compute shapes, indices, axes, Resize scales or Range
bounds keep their dtype.

Walks backward from every shape input named by the policy through producers, marking
them ``keep``/``shape``; the walk stops at shape sources (Shape, Size: their output does
not depend on the input's values), at allow-list ops (real compute is never a shape
computation), at graph inputs and constants. Marks from an earlier run are recomputed."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.graph import Graph, Value
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import KEEP, SHAPE, PolicyAnswers, decide, graph_policy
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)



@register_pass
@dataclass
class MarkShapeSubgraphs(Pass):
    name = "mark-shape-subgraphs"
    description = "keep the subgraphs that feed shapes, indices, axes and scales in their dtype"
    changes_structure = False
    policy: str | None = None

    def run(self, graph: Graph) -> PassResult:
        policy = graph_policy(graph, self.policy)
        facts_of = PolicyAnswers(policy).facts
        before: set[int] = set()
        stack: list[tuple[Value, str]] = []
        for node in graph.all_nodes():
            if node.meta.get("category") == SHAPE:
                before.add(id(node))
                node.meta.clear()
            facts = facts_of(node.qualified_op)
            if not facts.shape_inputs:
                continue
            for index, value in enumerate(node._inputs):
                if value is not None and facts.is_shape_input(index):
                    stack.append((value, f"computes input {index} of {node.name!r} ({node.op})"))
        marked: set[int] = set()
        while stack:
            value, reason = stack.pop()
            prod = value.producer
            if prod is None or id(prod) in marked:
                continue
            facts = facts_of(prod.qualified_op)
            if facts.base_category == "allow":
                continue
            marked.add(id(prod))
            decide(prod, KEEP, SHAPE, reason)
            if facts.shape_source:
                continue
            for inp in prod.inputs:
                if inp is not None:
                    stack.append((inp, reason))
        return PassResult(graph, marked != before)
