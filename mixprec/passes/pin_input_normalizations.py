"""pin-input-norms: a normalization that normalizes a raw graph input stays FP32.

A BatchNorm/LayerNorm/InstanceNorm/GroupNorm (the policy's ``input_normalizations``)
whose data input is a graph input of the model, directly or through casts, clear ops
and the policy's ``input_passthrough`` ops (MXNet's Reshape, transpose) that read no
other data, would round that input to the low-precision type before its mean is removed
when painting pulls it low (it is a clear op next to a Convolution in MXNet): an image
with an offset of 100 then keeps 2-3 significant bits of its signal. The rule is a pin,
a ``policy-rule`` pin (mixprec.ir.pins) set before painting, with its reason; the
painter treats it as a deny node. Any user, runtime or tuning pin on the node is
stronger (apply-overrides can still force the node to low precision).

Invariants: only nodes of the root graph's data path are pinned (a nested graph's inputs
are not the model's raw input); the pass never changes structure; re-running it on its
own output changes nothing."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.cast import is_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node, Value
from mixprec.passes.base import Pass, PassResult
from mixprec.ir.pins import FP32, Pin, set_pin
from mixprec.passes.common import SHAPE, graph_policy
from mixprec.passes.policies import Policy
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)

RULE = "policy rule"
REASON = ("policy rule: normalizes a graph input (%{name}): kept fp32 so the input is not rounded before its "
          "mean is removed")


@register_pass
@dataclass
class PinInputNormalizations(Pass):
    name = "pin-input-norms"
    description = "keep normalizations of a raw graph input in FP32 (policy rule), so the input is not rounded first"
    changes_structure = False
    policy: str | None = None

    def run(self, graph: Graph) -> PassResult:
        policy = graph_policy(graph, self.policy)
        inputs = {id(v) for v in graph.inputs}
        modified = False
        for node in graph.nodes:
            source = normalized_graph_input(node, policy, inputs)
            if source is not None:
                modified |= set_pin(node, Pin(FP32, "policy-rule", REASON.format(name=source.name)))
        return PassResult(graph, modified)


def normalized_graph_input(node: Node, policy: Policy, graph_inputs: set[int]) -> Value | None:
    """The graph input that ``node`` normalizes, or None: ``node`` is one of the policy's
    input normalizations and its data input leads back to a float graph input through
    single-data-input casts, clear ops and passthrough ops only."""
    index = policy.normalized_input(node.qualified_op)
    if index is None or index >= len(node.inputs) or node.meta.get("category") == SHAPE:
        return None
    value = node.inputs[index]
    seen: set[int] = set()
    while value is not None and id(value) not in seen:
        seen.add(id(value))
        if id(value) in graph_inputs:
            return value if value.dtype.is_float or value.dtype == DType.UNKNOWN else None
        value = _through(value.producer, policy)
    return None


def _through(producer: Node | None, policy: Policy) -> Value | None:
    """The one data input of a value-moving producer, or None where the walk stops."""
    if producer is None:
        return None
    moves = (is_cast(producer) or policy.is_passthrough(producer.qualified_op)
             or policy.base_category(producer.qualified_op) == "clear")
    if not moves:
        return None
    data = [v for j, v in enumerate(producer.inputs) if v is not None and not v.is_constant
            and not policy.is_shape_input(producer.qualified_op, j)]
    return data[0] if len(data) == 1 else None
