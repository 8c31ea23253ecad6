"""apply-overrides: pins from the user, accuracy tuning and the target runtime.

It runs before assign-precision, which reads the pins (mixprec.ir.pins): a node pinned
FP32 paints as a deny node and one pinned low as an allow node, so the neighbours follow
(a runtime limit therefore acts before propagation, as grappler checks kernel support while
it paints, and no neighbour is pulled low by a node that stays FP32). Pins stay on the
node, so re-running the pipeline keeps them.

Options name op types and nodes to force to FP32 or to the low-precision target. A node
pattern matches a node's name, its module scope (``encoder.layer.3`` matches every node
under that module) or a glob over either. ``fallback_*`` are FP32 pins chosen by accuracy
tuning (``accuracy tuning: ...``); ``runtime_fp32_ops`` (ops the target runtime has no
low-precision kernel for) and ``runtime_fp32_nodes`` (node -> why the runtime cannot run
it low) are the runtime's, named ``runtime``. Which pin wins on one node: see
mixprec.ir.pins. An op type that neither the graph nor the policy knows, or a node
pattern that matches nothing, is a ConfigError."""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

from mixprec.errors import ConfigError
from mixprec.ir.cast import is_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node
from mixprec.ir.pins import FP32, Pin, set_pin
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import SHAPE, graph_policy, target_dtype, touches_fp32
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)

USER = "user override"
TUNING = "accuracy tuning"  # fallbacks found by mixprec.tuning


@register_pass
@dataclass
class ApplyOverrides(Pass):
    name = "apply-overrides"
    description = "pin op types or named nodes/modules to FP32 or low precision (user, tuning, runtime limits)"
    changes_structure = False
    precision: str = "bf16"
    policy: str | None = None
    fp32_ops: list[str] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)
    lp_ops: list[str] = field(default_factory=list)
    lp_nodes: list[str] = field(default_factory=list)
    fallback_ops: list[str] = field(default_factory=list)
    fallback_nodes: list[str] = field(default_factory=list)
    runtime_fp32_ops: list[str] = field(default_factory=list)
    runtime_fp32_nodes: dict[str, str] = field(default_factory=dict)
    runtime: str = "the target runtime"

    def run(self, graph: Graph) -> PassResult:
        target = target_dtype(self.precision)
        policy = graph_policy(graph, self.policy)
        nodes = [n for n in graph.all_nodes() if n.meta.get("category") not in (SHAPE, "cast") and not is_cast(n)]
        asked = [op for op in self.fp32_ops + self.lp_ops if op not in policy.known_ops]
        present = {n.op for n in nodes} | {n.qualified_op for n in nodes} | {_packet(n.op) for n in nodes} \
            if asked else set()
        for op in asked:
            if op not in present:
                raise ConfigError(f"unknown op type {op!r}: it is neither in the model nor in the "
                                  f"{policy.framework} policy (op types are case-sensitive, e.g. 'MatMul')")
        modified = False
        for node, pin in self._pins(nodes, target):
            if pin.precision != FP32 and not touches_fp32(node, policy) and node.meta.get("precision") != pin.precision:
                logger.warning("override asks %s for %s but it has no float32 tensor; ignored", pin.precision,
                               node.name)
                continue
            modified |= set_pin(node, pin)
        return PassResult(graph, modified)

    def _pins(self, nodes: list[Node], target: DType) -> list[tuple[Node, Pin]]:
        """Every pin the options ask for. Among the user's and tuning's, a node-level
        entry beats an op-level one and FP32 beats low precision at the same level (one
        pin per node); runtime pins come beside them and set_pin keeps the strongest."""
        out: list[tuple[Node, Pin]] = []
        runtime = set(self.runtime_fp32_ops)
        for node in nodes if runtime or self.runtime_fp32_nodes else ():
            if {node.qualified_op, node.op} & runtime:
                out.append((node, Pin(FP32, "runtime", f"{self.runtime} has no {target.value} kernel for "
                                                       f"{node.qualified_op}")))
            if node.name in self.runtime_fp32_nodes:
                out.append((node, Pin(FP32, "runtime", self.runtime_fp32_nodes[node.name])))
        chosen: dict[int, tuple[Node, Pin]] = {}
        for ops, precision, source, who in ((self.lp_ops, target.value, "user", USER),
                                            (self.fallback_ops, FP32, "tuning", TUNING),
                                            (self.fp32_ops, FP32, "user", USER)):
            wanted = set(ops)
            for node in nodes if wanted else ():
                if {node.op, node.qualified_op, _packet(node.op)} & wanted:
                    chosen[id(node)] = (node, Pin(precision, source, f"{who}: op type {node.op} -> {precision}"))
        for patterns, precision, source, who in ((self.lp_nodes, target.value, "user", USER),
                                                 (self.fallback_nodes, FP32, "tuning", TUNING),
                                                 (self.fp32_nodes, FP32, "user", USER)):
            for pattern in patterns:
                hits = [n for n in nodes if _node_matches(n, pattern)]
                if not hits:
                    raise ConfigError(f"no node or module matches {pattern!r}; `mixprec dump MODEL` "
                                      "lists node names")
                for node in hits:
                    chosen[id(node)] = (node, Pin(precision, source, f"{who}: node {pattern!r} -> {precision}"))
        return out + list(chosen.values())


def _packet(op: str) -> str:
    return op.rsplit(".", 1)[0] if op.count(".") >= 2 else op


def _node_matches(node: Node, pattern: str) -> bool:
    scope = node.meta.get("scope") or ""
    if node.name == pattern or scope == pattern or scope.startswith(pattern + "."):
        return True
    return fnmatch.fnmatchcase(node.name, pattern) or (bool(scope) and fnmatch.fnmatchcase(scope, pattern))
