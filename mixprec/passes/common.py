"""Helpers shared by the precision passes (no framework knowledge here)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mixprec.errors import PipelineError
from mixprec.ir.cast import is_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node, Value
from mixprec.passes.policies import Policy, load_policy

logger = logging.getLogger(__name__)

FP32 = "f32"
KEEP = "keep"
#: the category mark-shape-subgraphs gives nodes that compute shapes, indices, axes and
#: scales (they keep their dtype and take no part in painting)
SHAPE = "shape"
_PRECISIONS = {"bf16": DType.BFLOAT16, "bfloat16": DType.BFLOAT16,
               "fp16": DType.FLOAT16, "f16": DType.FLOAT16, "float16": DType.FLOAT16}


_UNASKED = object()


@dataclass(frozen=True)
class OpFacts:
    """What a policy says of one op, asked once (``PolicyAnswers.facts``): its list
    (``category``: (list, why); None when conditional rules make its attributes decide),
    the input and output indices that keep their dtype, whether it is a shape source,
    its gather-table input and the inputs that carry shapes, indices, axes or bounds."""

    base_category: str
    category: tuple[str, str] | None
    pinned: frozenset[int]
    output_pinned: frozenset[int]
    shape_source: bool
    gather_table: int | None
    shape_inputs: frozenset[int]

    def is_pinned(self, index: int) -> bool:
        pinned = self.pinned
        return bool(pinned) and (index in pinned or -1 in pinned)

    def is_shape_input(self, index: int) -> bool:
        shape_inputs = self.shape_inputs
        return bool(shape_inputs) and (index in shape_inputs or -1 in shape_inputs)

    def is_output_pinned(self, index: int) -> bool:
        pinned = self.output_pinned
        return bool(pinned) and (index in pinned or -1 in pinned)


class PolicyAnswers:
    """``ask(question, *args)``: ``policy.<question>(*args)``, each asked once per arguments.
    A pass over a large graph asks millions of times about a few dozen ops; the policy does
    not change while a pass runs."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._answers: dict[tuple, Any] = {}

    def ask(self, question: str, *args: Any) -> Any:
        key = (question, *args)
        answer = self._answers.get(key, _UNASKED)
        if answer is _UNASKED:
            answer = self._answers[key] = getattr(self.policy, question)(*args)
        return answer

    def facts(self, op: str) -> OpFacts:
        """Everything the policy says of ``op`` (a qualified op name), asked once."""
        facts = self._answers.get(op)
        if facts is None:
            policy = self.policy
            facts = self._answers[op] = OpFacts(
                policy.base_category(op), None if policy.has_rules(op) else policy.category(op),
                policy.pinned_inputs(op), policy.pinned_outputs(op), policy.is_shape_source(op),
                policy.gather_table(op), policy.shape_input_indices(op))
        return facts


def target_dtype(precision: str) -> DType:
    """``bf16``/``fp16`` (and their long names) -> the DType to convert to."""
    try:
        return _PRECISIONS[str(precision).lower()]
    except KeyError:
        raise PipelineError(f"unknown precision {precision!r}; use bf16 or fp16") from None


def graph_policy(graph: Graph, policy: str | None) -> Policy:
    """The policy named by a pass option, or else the one the graph's framework record
    names (mixprec.frameworks), or else the built-in policy of that name."""
    if policy:
        return load_policy(policy)
    from mixprec.frameworks import frameworks  # the registry names no framework itself
    record = frameworks().get(graph.root.framework)
    return load_policy(record.policy if record is not None else graph.root.framework)


#: each dtype's name (``DType.value`` is an enum property: slow, asked once per node)
_NAMES = {dtype: dtype.value for dtype in DType}


def is_lowered(node: Node, target: DType) -> bool:
    """True when the node's decision is to run in ``target``."""
    return node.meta.get("precision") == _NAMES[target]


def decide(node: Node, precision: str, category: str | None, reason: str) -> None:
    node.meta["precision"] = precision
    if category is not None:
        node.meta["category"] = category
    node.meta["reason"] = reason


def float_inputs(node: Node, policy: Policy) -> list[tuple[int, Value]]:
    """(index, value) of the FP32 inputs that may change dtype (pinned inputs excluded)."""
    return [(i, v) for i, v in enumerate(node.inputs)
            if v is not None and v.dtype == DType.FLOAT32 and not policy.is_pinned(node.qualified_op, i)]


def touches_fp32(node: Node, policy: Policy) -> bool:
    """A node takes part in painting when it reads or writes an FP32 tensor."""
    if any(v.dtype == DType.FLOAT32 for v in node.outputs):
        return True
    return bool(float_inputs(node, policy))



def owning_graph(value: Value, index: dict[int, Graph]) -> Graph | None:
    if value.producer is not None:
        return value.producer.graph
    return index.get(id(value))


def value_owners(root: Graph) -> dict[int, Graph]:
    """id(value) -> graph, for every graph input and constant in the tree."""
    owners: dict[int, Graph] = {}
    for graph in root.all_graphs():
        for value in graph.inputs:
            owners[id(value)] = graph
        for value in graph.constants.values():
            owners[id(value)] = graph
    return owners


def undecided_node(graph: Graph) -> str | None:
    """What insert-casts and the passes after it need: every node that is not a cast
    carries a precision decision (``meta["precision"]``). None when so, else the first
    node without one."""
    for node in graph.all_nodes():
        if "precision" not in node.meta and not is_cast(node):
            return (f"node {node.name!r} ({node.qualified_op}) has no precision decision; run assign-precision "
                    "(after infer-dtypes and mark-shape-subgraphs) first")
    return None


def mixed_float_inputs(graph: Graph, policy: Policy) -> str | None:
    """What insert-casts guarantees and the passes after it keep: a node decided FP32 or
    low precision reads one float type on all its inputs, the policy's pinned inputs
    aside. None when so, else the first node that mixes."""
    for node in graph.all_nodes():
        if node.meta.get("precision") in (None, KEEP) or is_cast(node):
            continue
        if len({v.dtype for v in node.inputs if v is not None and v.dtype.is_float}) < 2:
            continue  # one float type (or none): nothing can mix, pinned inputs or not
        op = node.qualified_op
        seen: DType | None = None
        for index, value in enumerate(node.inputs):
            if value is None or not value.dtype.is_float or policy.is_pinned(op, index):
                continue
            if seen is None:
                seen = value.dtype
            elif value.dtype != seen:
                return (f"node {node.name!r} ({node.op}) mixes float input types: {seen.value} and "
                        f"{value.dtype.value} (input {index}, %{value.name})")
    return None
