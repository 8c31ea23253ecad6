"""convert-constants: store a float constant in the low-precision target dtype when every
reader is a cast to that dtype, instead of casting it on every run (other casts of
constants, widening ones included, are left alone).

The constant keeps its name (parameters stay findable); its data is rounded to nearest
even, the source type's extremes (±FLT_MAX mask sentinels) saturate to the target's
extremes and ±inf/NaN stay; a constant whose conversion would overflow other values is
left alone (assign-precision keeps its readers in FP32 anyway)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.cast import cast_target, is_cast
from mixprec.ir.dtypes import convert_array
from mixprec.ir.graph import Graph
from mixprec.ir.lazy import is_lazy, overflows
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import graph_policy, mixed_float_inputs, target_dtype
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)


@register_pass
@dataclass
class ConvertConstants(Pass):
    name = "convert-constants"
    description = "store constants in bf16/fp16 when every reader casts them to it"
    precision: str = "bf16"

    def ensures(self, graph: Graph) -> str | None:
        return mixed_float_inputs(graph, graph_policy(graph, None))

    def run(self, graph: Graph) -> PassResult:
        wanted = target_dtype(self.precision)
        modified = False
        protected = {id(v) for g in graph.all_graphs() for v in g.outputs}
        for g in graph.all_graphs():
            for const in list(g.constants.values()):
                if not const.dtype.is_float or id(const) in protected:
                    continue
                readers = [node for node, _ in const.uses()]
                if not readers or not all(is_cast(r) for r in readers):
                    continue
                targets = {cast_target(r) for r in readers}
                if len(targets) != 1:
                    continue
                target = targets.pop()
                if target != wanted or target == const.dtype:
                    continue
                if any(id(r.outputs[0]) in protected for r in readers):
                    continue
                if const.storage is not None and overflows(const.storage, target):
                    logger.warning("constant %s has values outside %s; left in %s",
                                   const.name, target.value, const.dtype.value)
                    continue
                if is_lazy(const.storage):  # converted chunk by chunk when written, never held
                    const.data = const.storage.converted(target)
                elif const.data is not None:
                    const.data = convert_array(const.data, target)
                const.dtype = target
                for reader in readers:
                    reader.outputs[0].replace_all_uses_with(const)
                    reader.graph.remove(reader)
                modified = True
        return PassResult(graph, modified)
