"""fold-casts: remove casts that do nothing or undo each other.

The clean-ups are small named rules (``RULES``), each one line of intent, driven by one
worklist rewriter: every cast starts on the worklist; when a rule fires, the casts it may
have enabled (readers of the rewritten value, the producer of a removed cast's input) go
back on it; the pass ends when the worklist is empty, so the result is a fixed point.

- ``same-dtype``: a cast to its input's dtype is its input;
- ``round-trip``: ``cast(cast(x: A, B), A)`` with B holding every A value exactly is x;
- ``chain``: ``cast(cast(x: A, B), C)`` with A->B exact becomes ``cast(x, C)``;
- ``duplicate``: of two casts of one value to one dtype in one graph, the later's readers
  read the earlier;
- ``dead``: a cast nobody reads goes.
A cast whose output is a graph output is never rewritten (its name is the graph's
interface). The ``rules`` option selects rules by name (default: all), so each can be
tested alone."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from mixprec.errors import PipelineError
from mixprec.ir.cast import cast_spec, cast_target, is_cast
from mixprec.ir.dtypes import holds_exactly
from mixprec.ir.graph import Graph, Node
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import graph_policy, mixed_float_inputs
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)


class _Rewriter:
    """The worklist and what the rules share: protected values and graph order."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.protected = {id(v) for g in graph.all_graphs() for v in g.outputs}
        self._order: dict[int, int] | None = None
        self.work: list[Node] = [n for n in graph.all_nodes() if is_cast(n)]
        self.fired: Counter[str] = Counter()

    @property
    def order(self) -> dict[int, int]:
        """id(node) -> position in the graph, numbered on first use (only ``duplicate``
        asks, when a value has two casts to one dtype); the rules remove nodes but never
        move one, so the nodes left keep the order the pass began with."""
        if self._order is None:
            self._order = {id(n): i for i, n in enumerate(self.graph.all_nodes())}
        return self._order

    def requeue_readers(self, node: Node) -> None:
        """The casts reading ``node``'s output (what a rewrite of it may enable)."""
        self.work.extend(r for r, _ in node.outputs[0].uses() if is_cast(r))

    def forward(self, node: Node, value) -> None:
        """``node``'s readers read ``value`` instead; ``node`` is then dead (the rules that
    forward fire only on a cast that has readers, so each fires once per cast)."""
        readers = [r for r, _ in node.outputs[0].uses()]
        node.outputs[0].replace_all_uses_with(value)
        self.work.extend(r for r in readers if is_cast(r))
        self.work.append(node)


def _same_dtype(node: Node, rw: _Rewriter) -> bool:
    if not node.outputs[0].num_uses or node.inputs[0].dtype != cast_target(node):
        return False
    rw.forward(node, node.inputs[0])
    return True


def _exact_inner(node: Node) -> Node | None:
    """The cast producing ``node``'s input, when that cast loses nothing."""
    inner = node.inputs[0].producer
    if inner is not None and is_cast(inner) and holds_exactly(inner.inputs[0].dtype, node.inputs[0].dtype):
        return inner
    return None


def _round_trip(node: Node, rw: _Rewriter) -> bool:
    inner = _exact_inner(node)
    if not node.outputs[0].num_uses or inner is None or inner.inputs[0].dtype != cast_target(node):
        return False
    rw.forward(node, inner.inputs[0])
    rw.work.append(inner)
    return True


def _chain(node: Node, rw: _Rewriter) -> bool:
    inner = _exact_inner(node)
    if inner is None:
        return False
    origin = inner.inputs[0]
    node.set_input(0, origin)
    spec = cast_spec(node.graph.root.framework)
    if spec.from_attr:
        node.attrs[spec.from_attr] = origin.dtype
    rw.work += [inner, node]
    rw.requeue_readers(node)
    return True


def _duplicate(node: Node, rw: _Rewriter) -> bool:
    if not node.outputs[0].num_uses or node.inputs[0].num_uses < 2:  # its input's only reader: no twin
        return False
    target = cast_target(node)
    twins = [r for r, _ in node.inputs[0].uses() if r is not node and r.graph is node.graph and is_cast(r)
             and cast_target(r) == target and id(r.outputs[0]) not in rw.protected]
    if not twins:
        return False
    first = min(twins + [node], key=lambda n: rw.order.get(id(n), len(rw.order)))
    if first is node:  # a rewrite (chain) may have made ``node`` the earlier twin of casts already seen
        rw.work.extend(twins)
        return False
    rw.forward(node, first.outputs[0])
    return True


def _dead(node: Node, rw: _Rewriter) -> bool:
    if node.outputs[0].num_uses:
        return False
    producer = node.inputs[0].producer
    node.graph.remove(node)
    if producer is not None and is_cast(producer):
        rw.work.append(producer)
    return True


@dataclass(frozen=True)
class CastRule:
    """One clean-up: ``apply(cast, rewriter)`` rewrites around ``cast`` and says whether
    it fired (a rule that does not apply changes nothing)."""
    name: str
    apply: Callable[[Node, _Rewriter], bool]


RULES: tuple[CastRule, ...] = (
    CastRule("same-dtype", _same_dtype),
    CastRule("round-trip", _round_trip),
    CastRule("chain", _chain),
    CastRule("duplicate", _duplicate),
    CastRule("dead", _dead),
)


@register_pass
@dataclass
class FoldCasts(Pass):
    name = "fold-casts"
    description = "drop casts to the same dtype, lossless round trips, cast chains, duplicate and dead casts"
    rules: list[str] = field(default_factory=list)

    def ensures(self, graph: Graph) -> str | None:
        return mixed_float_inputs(graph, graph_policy(graph, None))

    def run(self, graph: Graph) -> PassResult:
        known = {rule.name: rule for rule in RULES}
        unknown = [name for name in self.rules if name not in known]
        if unknown:
            raise PipelineError(f"fold-casts has no rule {unknown}; its rules: {', '.join(known)}")
        rules = [known[name] for name in self.rules] if self.rules else list(RULES)
        rw = _Rewriter(graph)
        while rw.work:
            node = rw.work.pop()
            if node.graph is None or not is_cast(node) or id(node.outputs[0]) in rw.protected:
                continue
            for rule in rules:
                if rule.apply(node, rw):
                    rw.fired[rule.name] += 1
                    break
        if rw.fired:
            logger.debug("fold-casts: %s", ", ".join(f"{name} x{n}" for name, n in sorted(rw.fired.items())))
        return PassResult(graph, bool(rw.fired))
