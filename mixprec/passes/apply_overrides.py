"""apply-overrides: the user's word beats the painting.

It runs before assign-precision (unlike grappler's order) so that painting treats an
FP32 override as a deny node and a low-precision one as an allow node, and the
neighbours follow; the decision is recorded as ``user override: ...`` and sticks to the
node in the IR (re-running the pipeline keeps it).

Options name op types and nodes to force to FP32 or to the low-precision target. A node
pattern matches a node's name, its module scope (``encoder.layer.3`` matches every node
under that module) or a glob over either. Node-level overrides beat op-level ones, and
FP32 beats low precision when both name the same node. ``fallback_*`` are FP32 overrides
chosen by accuracy tuning; they are recorded as ``accuracy tuning: ...``. An op type that neither the
graph nor the policy knows, or a node pattern that matches nothing, is a ConfigError."""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

from mixprec.errors import ConfigError
from mixprec.ir.cast import is_cast
from mixprec.ir.graph import Graph, Node
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import FP32, decide, graph_policy, target_dtype, touches_fp32
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)

USER = "user override"
TUNING = "accuracy tuning"  # fallbacks found by mixprec.tuning


@register_pass
@dataclass
class ApplyOverrides(Pass):
    name = "apply-overrides"
    description = "force op types or named nodes/modules to FP32 or low precision, as the user asked"
    changes_structure = False
    precision: str = "bf16"
    policy: str | None = None
    fp32_ops: list[str] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)
    lp_ops: list[str] = field(default_factory=list)
    lp_nodes: list[str] = field(default_factory=list)
    fallback_ops: list[str] = field(default_factory=list)
    fallback_nodes: list[str] = field(default_factory=list)

    def run(self, graph: Graph) -> PassResult:
        if not (self.fp32_ops or self.fp32_nodes or self.lp_ops or self.lp_nodes or self.fallback_ops
                or self.fallback_nodes):
            return PassResult(graph, False)
        target = target_dtype(self.precision)
        policy = graph_policy(graph, self.policy)
        nodes = list(graph.all_nodes())
        present = {n.op for n in nodes} | {n.qualified_op for n in nodes} | {_packet(n.op) for n in nodes}
        for op in self.fp32_ops + self.lp_ops:
            if op not in present and op not in policy.known_ops:
                raise ConfigError(f"unknown op type {op!r}: it is neither in the model nor in the "
                                  f"{policy.framework} policy (op types are case-sensitive, e.g. 'MatMul')")
        decisions: dict[int, tuple[str, str]] = {}
        for ops, precision, who in ((self.lp_ops, target.value, USER), (self.fallback_ops, FP32, TUNING),
                                    (self.fp32_ops, FP32, USER)):
            wanted = set(ops)
            for node in nodes:
                if {node.op, node.qualified_op, _packet(node.op)} & wanted:
                    decisions[id(node)] = (precision, f"{who}: op type {node.op} -> {precision}")
        for patterns, precision, who in ((self.lp_nodes, target.value, USER), (self.fallback_nodes, FP32, TUNING),
                                         (self.fp32_nodes, FP32, USER)):
            for pattern in patterns:
                hits = [n for n in nodes if _node_matches(n, pattern)]
                if not hits:
                    raise ConfigError(f"no node or module matches {pattern!r}; `mixprec dump MODEL` "
                                      "lists node names")
                for node in hits:
                    decisions[id(node)] = (precision, f"{who}: node {pattern!r} -> {precision}")
        modified = False
        for node in nodes:
            hit = decisions.get(id(node))
            if hit is None or node.meta.get("category") in ("shape", "cast") or is_cast(node):
                continue
            precision, reason = hit
            if precision != FP32 and not touches_fp32(node, policy) and node.meta.get("precision") != precision:
                logger.warning("override asks %s for %s but it has no float32 tensor; ignored", precision, node.name)
                continue
            if (node.meta.get("precision"), node.meta.get("reason")) != (precision, reason):
                decide(node, precision, policy.base_category(node.qualified_op), reason)
                modified = True
        return PassResult(graph, modified)


def _packet(op: str) -> str:
    return op.rsplit(".", 1)[0] if op.count(".") >= 2 else op


def _node_matches(node: Node, pattern: str) -> bool:
    scope = node.meta.get("scope") or ""
    if node.name == pattern or scope == pattern or scope.startswith(pattern + "."):
        return True
    return fnmatch.fnmatchcase(node.name, pattern) or (bool(scope) and fnmatch.fnmatchcase(scope, pattern))
