"""infer-dtypes: give a dtype to node outputs that have none (UNKNOWN).

Rules: a cast's output is its target; any other node's unknown output takes the dtype
of its first float input, else of its first typed input. Values a frontend typed are
never changed, so the pass is a no-op on fully typed graphs."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.cast import cast_target, is_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)


@register_pass
@dataclass
class InferDtypes(Pass):
    name = "infer-dtypes"
    description = "fill in unknown output dtypes from casts' targets and the nodes' inputs"

    def run(self, graph: Graph) -> PassResult:
        modified = False
        for node in graph.all_nodes():
            unknown = [v for v in node.outputs if v.dtype == DType.UNKNOWN]
            if not unknown:
                continue
            if is_cast(node):
                guess = cast_target(node)
            else:
                typed = [v.dtype for v in node.inputs if v is not None and v.dtype != DType.UNKNOWN]
                guess = next((d for d in typed if d.is_float), typed[0] if typed else DType.UNKNOWN)
            if guess == DType.UNKNOWN:
                continue
            for value in unknown:
                value.dtype = guess
                modified = True
        return PassResult(graph, modified)
