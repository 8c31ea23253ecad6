"""fold-casts: remove casts that do nothing or undo each other.

Rules, applied to a fixed point: a cast to its input's dtype goes; ``cast(cast(x: A, B), A)``
with B holding every A value exactly is x; ``cast(cast(x: A, B), C)`` with A->B exact becomes
``cast(x, C)``; two casts of one value to one dtype in one graph merge into the earlier;
casts nobody reads go. A cast whose output is a graph output is kept (its name is the
graph's interface)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.cast import cast_spec, cast_target, is_cast
from mixprec.ir.dtypes import holds_exactly
from mixprec.ir.graph import Graph, Node
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import graph_policy, mixed_float_inputs
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)


@register_pass
@dataclass
class FoldCasts(Pass):
    name = "fold-casts"
    description = "drop casts to the same dtype, lossless round trips, cast chains, duplicate and dead casts"

    def ensures(self, graph: Graph) -> str | None:
        return mixed_float_inputs(graph, graph_policy(graph, None))

    def run(self, graph: Graph) -> PassResult:
        modified = False
        while True:
            changed = self._once(graph)
            modified |= changed
            if not changed:
                return PassResult(graph, modified)

    def _once(self, graph: Graph) -> bool:
        changed = False
        protected = {id(v) for g in graph.all_graphs() for v in g.outputs}
        for g in list(graph.all_graphs()):
            seen: dict[tuple[int, object], Node] = {}
            for node in g.nodes:
                if node.graph is None or not is_cast(node):
                    continue
                out = node.outputs[0]
                src = node.inputs[0]
                target = cast_target(node)
                if id(out) in protected:
                    continue
                if src.dtype == target:
                    out.replace_all_uses_with(src)
                    changed = True
                    continue
                inner = src.producer
                if inner is not None and is_cast(inner) and holds_exactly(inner.inputs[0].dtype, src.dtype):
                    origin = inner.inputs[0]
                    if origin.dtype == target:
                        out.replace_all_uses_with(origin)
                    else:
                        node.set_input(0, origin)
                        spec = cast_spec(g.root.framework)
                        if spec.from_attr:
                            node.attrs[spec.from_attr] = origin.dtype
                    changed = True
                    continue
                key = (id(src), target)
                first = seen.get(key)
                if first is not None:
                    out.replace_all_uses_with(first.outputs[0])
                    changed = True
                else:
                    seen[key] = node
        for g in list(graph.all_graphs()):
            for node in reversed(g.nodes):
                if is_cast(node) and node.outputs[0].num_uses == 0 and id(node.outputs[0]) not in protected:
                    g.remove(node)
                    changed = True
        return changed
