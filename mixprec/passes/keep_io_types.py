"""keep-io-types: the main graph's inputs and outputs keep their dtypes (the default, a
no-op: insert-casts already preserves them). With ``keep=false`` an FP32 input that is
only read through casts to one low-precision dtype becomes that dtype, and an output
that is a cast back to FP32 of a low-precision value becomes that value (under the
output's name), so callers feed and receive bf16/fp16 directly."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.cast import cast_target, is_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import graph_policy, mixed_float_inputs
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)


@register_pass
@dataclass
class KeepIoTypes(Pass):
    name = "keep-io-types"
    description = "keep graph inputs/outputs in FP32 (default) or, with keep=false, let them be bf16/fp16"
    keep: bool = True

    def ensures(self, graph: Graph) -> str | None:
        return mixed_float_inputs(graph, graph_policy(graph, None))

    def run(self, graph: Graph) -> PassResult:
        if self.keep:
            return PassResult(graph, False)
        modified = False
        for value in graph.inputs:
            readers = [n for n, _ in value.uses()]
            if value.dtype != DType.FLOAT32 or not readers or not all(is_cast(r) for r in readers):
                continue
            targets = {cast_target(r) for r in readers}
            if len(targets) != 1 or not next(iter(targets)).is_low_precision:
                continue
            value.dtype = targets.pop()
            for reader in readers:
                reader.outputs[0].replace_all_uses_with(value)
                if reader.outputs[0] not in graph.outputs:
                    reader.graph.remove(reader)
            modified = True
        for position, value in enumerate(list(graph.outputs)):
            node = value.producer
            if node is None or not is_cast(node) or node.graph is not graph:
                continue
            src = node.inputs[0]
            if (value.dtype != DType.FLOAT32 or not src.dtype.is_low_precision or src in graph.outputs
                    or value.num_uses or graph.outputs.count(value) > 1):
                continue
            graph.outputs[position] = src
            graph.remove(node)
            src.name = value.name
            modified = True
        return PassResult(graph, modified)
