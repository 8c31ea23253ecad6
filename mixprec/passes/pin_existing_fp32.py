"""pin-existing-fp32: in a model that is already mixed precision, allow ops running in
FP32 stay FP32.

A model whose allow ops already compute in a low-precision type (mixprec's own output,
or a model someone converted by hand) kept its FP32 allow ops on purpose: an error
budget, a tuning run or a user fell them back. Painting it again from the policy would
lower them, so converting a converted model would change it (and undo the fallbacks
that made it accurate). The rule is a ``policy-rule`` pin (mixprec.ir.pins) on each FP32
allow node, set only when some allow node of the graph tree computes in low precision;
a user, runtime or tuning pin is stronger (``--lp-node`` can still lower the node).

A model that merely stores low-precision weights and casts them up (FP16 weights
computed in FP32) is not mixed: none of its allow ops computes low, nothing is pinned.

Invariants: the pass never changes structure; it pins only nodes outside shape
subgraphs; re-running it on its own output changes nothing."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.cast import is_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node
from mixprec.ir.pins import FP32, Pin, set_pin
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import SHAPE, graph_policy
from mixprec.passes.policies import Policy
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)

REASON = ("policy rule: the input model is already mixed precision ({low} allow ops) and runs this allow op "
          "in f32 (an earlier conversion or its author kept it): kept f32")


@register_pass
@dataclass
class PinExistingFp32(Pass):
    name = "pin-existing-fp32"
    description = "in an already mixed-precision model, keep the allow ops that run in FP32 in FP32 (policy rule)"
    changes_structure = False
    policy: str | None = None

    def run(self, graph: Graph) -> PassResult:
        policy = graph_policy(graph, self.policy)
        allow = [node for node in graph.all_nodes() if _is_allow(node, policy)]
        low = sorted({d.value for node in allow for d in _compute_dtypes(node) if d.is_low_precision})
        if not low:
            return PassResult(graph, False)
        reason = REASON.format(low="/".join(low))
        modified = False
        for node in allow:
            if _compute_dtypes(node) == {DType.FLOAT32}:
                modified |= set_pin(node, Pin(FP32, "policy-rule", reason))
        if modified:
            logger.info("the input is already mixed precision (%s): its FP32 allow ops stay FP32", "/".join(low))
        return PassResult(graph, modified)


def _is_allow(node: Node, policy: Policy) -> bool:
    return (not is_cast(node) and node.meta.get("category") != SHAPE
            and policy.base_category(node.qualified_op) == "allow")


def _compute_dtypes(node: Node) -> set[DType]:
    """The float types a node computes in: those of its float outputs."""
    return {v.dtype for v in node.outputs if v is not None and v.dtype.is_float}
