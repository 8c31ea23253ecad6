"""profile-precision: the conversion objective's pins, set before painting.

- ``objective=performance``: a clone is painted as the pipeline would paint it; each
  connected component of its low-precision nodes (and, when it loses, each of its allow
  ops alone) is measured by the ``session`` (mixprec.profiling.session: cache, profile
  file or the framework's timer); nodes of regions that are not faster with their casts
  are pinned FP32 with source ``profile`` and the measured numbers in the reason, so
  the IR text and the report explain them. Without a session (no runtime to measure on)
  every node that would be lowered is pinned FP32: unknown is FP32.
- ``objective=accuracy``: only allow ops run low; every other node painting would lower
  (infer and clear ops) is pinned FP32 (source ``policy-rule``, so a user's override
  wins). The error budget then falls back allow ops the output check does not clear.
- ``objective=memory``: nothing (today's conversion).

The pass reads no framework: the session's timer is the only thing that runs a model."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from mixprec.ir.graph import Graph
from mixprec.ir.pins import FP32, Pin, set_pin
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)


@register_pass
@dataclass
class ProfilePrecision(Pass):
    name = "profile-precision"
    description = "objective=performance: pin FP32 the regions not measured faster in low precision; accuracy: allow ops only"
    changes_structure = False
    precision: str = "bf16"
    policy: str | None = None
    objective: str = "performance"
    session: Any = field(default=None, repr=False, compare=False)

    def run(self, graph: Graph) -> PassResult:
        if self.objective == "memory":
            return PassResult(graph, False)
        painted = graph.clone()
        from mixprec.passes.pipeline import build_pipeline
        build_pipeline("assign-precision,insert-casts", verify=False, precision=self.precision,
                       policy=self.policy).run(painted)
        from mixprec.profiling.regions import low_components
        components = low_components(painted, self.precision)
        pins = self._accuracy(components) if self.objective == "accuracy" else self._performance(graph, components)
        nodes = {n.name: n for n in graph.iter_nodes()}
        modified = False
        source = "policy-rule" if self.objective == "accuracy" else "profile"
        for name, reason in pins.items():
            modified |= set_pin(nodes[name], Pin(FP32, source, reason))
        logger.info("objective=%s: %d of %d low-precision nodes pinned FP32", self.objective, len(pins),
                    sum(len(c) for c in components))
        return PassResult(graph, modified)

    def _accuracy(self, components: list) -> dict[str, str]:
        return {n.name: "objective=accuracy: only allow ops run in low precision" for component in components
                for n in component if n.meta.get("category") != "allow"}

    def _performance(self, graph: Graph, components: list) -> dict[str, str]:
        session = self.session
        if session is None or session.unavailable:
            why = session.unavailable if session is not None else "no runtime to measure on"
            return {n.name: why for component in components for n in component}
        pins: dict[str, str] = {}
        for component in components:
            allow = {n.name for n in component if n.meta.get("category") == "allow"}
            pins.update(session.decide(graph, [n.name for n in component], allow))
        return pins
