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
from typing import Any

import numpy as np

from mixprec.ir.cast import cast_target, is_cast
from mixprec.ir.dtypes import DType, convert_array, finite_max
from mixprec.ir.graph import Graph, Node, Value
from mixprec.ir.lazy import batchable, exceeding, is_lazy
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
        protected = {id(v) for g in graph.all_graphs() for v in g.outputs}
        chosen: list[tuple[Value, list[Node]]] = []
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
                chosen.append((const, readers))
        converted = _convert_all([const for const, _ in chosen], wanted)
        for const, readers in chosen:
            if id(const) not in converted:
                logger.warning("constant %s has values outside %s; left in %s",
                               const.name, wanted.value, const.dtype.value)
                continue
            const.data = converted[id(const)]
            const.dtype = wanted
            for reader in readers:
                reader.outputs[0].replace_all_uses_with(const)
                reader.graph.remove(reader)
        return PassResult(graph, bool(converted))


def _convert_all(constants: list[Value], target: DType) -> dict[int, Any]:
    """id(constant) -> its data in ``target`` for each constant that converts without
    overflow (lazy data as a lazy conversion, converted chunk by chunk when written).
    Small in-memory arrays (``lazy.batchable``) are checked and converted as one
    concatenated array (25k small weights of a 100k-node graph: one conversion instead of
    25k, 0.7 s); the result is the same as one ``convert_array`` each, because the
    conversion is elementwise."""
    datas = [const.storage for const in constants]
    beyond = exceeding([d for d in datas if d is not None], finite_max(target))
    out: dict[int, Any] = {}
    small: list[tuple[Value, np.ndarray]] = []
    checked = iter(beyond)
    for const, data in zip(constants, datas):
        if data is None:
            out[id(const)] = None
        elif next(checked):
            continue
        elif is_lazy(data):
            out[id(const)] = data.converted(target)
        elif batchable(data):
            small.append((const, data))
        else:
            out[id(const)] = convert_array(data, target)
    if small:
        flat = convert_array(np.concatenate([array.reshape(-1) for _, array in small]), target)
        pieces = np.split(flat, np.cumsum([array.size for _, array in small[:-1]]))
        for (const, array), piece in zip(small, pieces):
            out[id(const)] = piece.reshape(array.shape)
    return out
