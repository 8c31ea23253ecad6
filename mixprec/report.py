"""The conversion report: every node's precision and the reason for it, the per-op-type
statistics table INC users know, pass timings and the FP32-vs-converted output checks;
as text and as JSON. Built from the IR alone (node.meta), so ``mixprec report`` can
rebuild it from a dumped or converted graph."""
from __future__ import annotations

import copy
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mixprec.fileio import atomic_write_text
from mixprec.ir.gcpause import paused_gc
from mixprec.ir.graph import Graph

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class NodeDecision:
    """One node's decision (slots: a report holds one per node, 100k for a large graph)."""
    name: str
    op: str
    precision: str
    category: str
    reason: str
    graph: str  # the nested graph holding the node; "" for the main graph
    scope: str = ""


_DECISION_FIELDS = tuple(f.name for f in fields(NodeDecision))


@dataclass
class OutputCheck:
    """One output of the converted model against the FP32 model on the same inputs."""
    output: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    argmax_agreement: float | None = None


@dataclass
class Report:
    framework: str
    precision: str
    target: str = "spec"
    nodes: list[NodeDecision] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)
    checks: list[OutputCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tuning: dict[str, Any] | None = None
    #: why the output check failed (cosine below min_cosine, non-finite outputs); None when it passed or was skipped
    failed_check: str | None = None
    #: objective "performance"/"accuracy" (mixprec.profiling): per region the measured FP32 and low-precision
    #: times and the decision, and the model's latency against FP32; None for objective "memory"
    profile: dict[str, Any] | None = None

    @classmethod
    def from_graph(cls, graph: Graph, precision: str, target: str = "spec") -> "Report":
        nodes = []
        with paused_gc():
            for g in graph.all_graphs():
                where = g.name if g is not graph else ""
                for node in g.iter_nodes():
                    meta = node.meta
                    nodes.append(NodeDecision(node.name, f"{node.domain}::{node.op}" if node.domain else node.op,
                                              meta.get("precision", "keep"), meta.get("category", "-"),
                                              meta.get("reason", "no pass recorded a decision"), where,
                                              meta.get("scope") or ""))
        return cls(graph.framework, precision, target, nodes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """The report ``to_dict`` made (its statistics are derived again, not read)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k not in ("nodes", "checks")}
        with paused_gc():
            nodes = [NodeDecision(**n) for n in data.get("nodes", [])]
        return cls(**values, nodes=nodes, checks=[OutputCheck(**c) for c in data.get("checks", [])])

    # ---- summaries ----------------------------------------------------------------------
    @property
    def casts_inserted(self) -> int:
        return sum(1 for n in self.nodes if n.category == "cast" and n.reason.startswith("inserted"))

    def statistics(self) -> list[dict[str, Any]]:
        """Per op type: total, low-precision, FP32 and kept (no float tensor) counts.
        Casts come last as one row per op."""
        rows: dict[str, Counter] = {}
        for (op, precision), count in Counter((n.op, n.precision) for n in self.nodes).items():
            bucket = "lp" if precision == self.precision else ("keep" if precision == "keep" else "fp32")
            rows.setdefault(op, Counter())[bucket] += count
        casts = {n.op for n in self.nodes if n.category == "cast"}
        order = sorted(rows, key=lambda op: (op in casts, op))
        return [{"op": op, "total": sum(rows[op].values()), self.precision: rows[op]["lp"],
                 "fp32": rows[op]["fp32"], "keep": rows[op]["keep"]} for op in order]

    def decision(self, name: str) -> NodeDecision:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    # ---- output -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (a copy: changing it leaves the report as it is)."""
        with paused_gc():
            data: dict[str, Any] = {}
            for f in fields(self):
                value = getattr(self, f.name)
                if f.name == "nodes":  # flat string records: no deep copy needed
                    data["nodes"] = [{k: getattr(n, k) for k in _DECISION_FIELDS} for n in value]
                elif f.name == "checks":
                    data["checks"] = [asdict(c) for c in value]
                else:
                    data[f.name] = copy.deepcopy(value)
            data["statistics"] = self.statistics()
            data["casts_inserted"] = self.casts_inserted
        return data

    def to_json(self) -> str:
        """``to_dict`` as JSON: keys sorted, indented, except that each node decision is
        one line (a 100k-node report stays fast to write and to read)."""
        data = self.to_dict()
        nodes = data.pop("nodes")
        marker = "\u0000nodes\u0000"
        data["nodes"] = marker
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
        encoder = json.JSONEncoder(sort_keys=True, default=str)
        rows = ",\n    ".join(encoder.encode(n) for n in nodes)
        return text.replace(json.dumps(marker), f"[\n    {rows}\n  ]" if nodes else "[]", 1)

    def summary_table(self) -> str:
        lp = self.precision.upper()
        lines = [f"Mixed precision statistics ({self.framework}, {self.precision}, target {self.target})",
                 f"| {'Op Type':<28} | {'Total':>5} | {lp:>5} | {'FP32':>5} | {'Kept':>5} |",
                 f"|{'-' * 30}|{'-' * 7}|{'-' * 7}|{'-' * 7}|{'-' * 7}|"]
        for row in self.statistics():
            lines.append(f"| {row['op'][:28]:<28} | {row['total']:>5} | {row[self.precision]:>5} | "
                         f"{row['fp32']:>5} | {row['keep']:>5} |")
        lines.append(f"casts inserted: {self.casts_inserted}")
        for check in self.checks:
            agree = "" if check.argmax_agreement is None else f", argmax agreement {check.argmax_agreement:.3f}"
            lines.append(f"output {check.output}: cosine {check.cosine:.5f}, max abs error "
                         f"{check.max_abs_error:.3g}, max rel error {check.max_rel_error:.3g}{agree}")
        if self.tuning and self.tuning.get("kind") == "error budget":
            lines.append(f"error budget: {len(self.tuning['trials'])} trials; FP32 fallbacks: "
                         f"{self.tuning['fallback_nodes'] or 'none'} (before: {self.tuning['missed_before']})")
        elif self.tuning:
            last = next(t for t in reversed(self.tuning["trials"]) if t["meets"])
            lines.append(f"accuracy tuning: baseline {self.tuning['baseline']:.6g}, kept {last['accuracy']:.6g} after "
                         f"{len(self.tuning['trials'])} trials; FP32 fallbacks: op types "
                         f"{self.tuning['fallback_ops'] or 'none'}, nodes {self.tuning['fallback_nodes'] or 'none'}")
        lines.extend(self.profile_lines())
        lines.extend(f"note: {n}" for n in self.notes)
        if self.failed_check:
            lines.append(f"FAILED output check: {self.failed_check}")
        return "\n".join(lines)

    def profile_lines(self) -> list[str]:
        """The objective's summary: one line per region (FP32 and low-precision times, the
        decision) and the model's predicted and measured latency against FP32."""
        if not self.profile or self.profile.get("objective") != "performance":
            return [f"objective: {self.profile['objective']}"] if self.profile else []
        lp = self.precision.upper()
        data = self.profile
        lines = [f"objective: performance ({data.get('source')}; {data.get('timer_calls', 0)} regions timed; "
                 f"machine: {data.get('machine')})"]
        for r in data.get("regions", []):
            times = (f"FP32 {r['fp32_ms']:.4g} ms, {lp} {r['low_ms']:.4g} ms ({r['reps']} reps, {r['source']})"
                     if r.get("fp32_ms") is not None else f"not measured ({r['source']})")
            lines.append(f"  region {r['label']}: {times} -> {r['decision']}")
        latency = data.get("latency") or {}
        if latency.get("fp32_ms"):
            fp32 = latency["fp32_ms"]
            parts = [f"model latency: FP32 {fp32:.4g} ms"]
            if latency.get("predicted_ms") is not None:
                parts.append(f"predicted {latency['predicted_ms']:.4g} ms ({latency['predicted_ms'] / fp32:.2f}x)")
            if latency.get("measured_ms") is not None:
                parts.append(f"measured {latency['measured_ms']:.4g} ms ({latency['measured_ms'] / fp32:.2f}x)")
            lines.append(", ".join(parts))
        return lines

    def to_text(self) -> str:
        """The summary table, then one line per node: name, op, precision, category, why."""
        width = max((len(n.name) for n in self.nodes), default=4)
        lines = [self.summary_table(), "", "Decisions:"]
        for n in self.nodes:
            where = (f" [module {n.scope}]" if n.scope else "") + (f" [graph {n.graph}]" if n.graph else "")
            lines.append(f"  {n.name:<{width}}  {n.op:<20} {n.precision:<5} {n.category:<8} {n.reason}{where}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON (``.json``) or text (anything else) atomically
        (mixprec.fileio.atomic_write_text: parent directories made, never half-written)."""
        path = Path(path)
        text = self.to_json() if path.suffix == ".json" else self.to_text()
        atomic_write_text(path, text + "\n")
