"""assign-precision: TF grappler's auto-mixed-precision painting, each step computed to a
fixed point so that the result does not depend on node order.

Candidates are nodes that read or write a float tensor in FP32 or the target dtype
(pinned inputs aside), are not casts and are not shape-subgraph nodes. Edges run through
float values between candidates (a cast cuts an edge). Steps (design.md):
1 allow ops start ALLOW; 2 DENY spreads forward from deny ops through infer/clear nodes
that lie upstream of a deny or infer node; 3 infer/clear nodes both downstream and
upstream of ALLOW become ALLOW; 4 an infer node with an ALLOW input and no DENY input
becomes ALLOW (to a fixed point); 5 ALLOW spreads through connected clear nodes both ways;
A pinned node (``node.meta["pin"]``, mixprec.ir.pins: a user override, a tuning
fallback, a runtime limit, a policy rule — all set before painting) paints as allow (low
precision) or deny (FP32), so its neighbours follow it; so does a node reading a constant
outside the target's range (deny). (Grappler's step 6, runtime limits, is therefore a pin
too and acts before propagation.) 7 an existing cast to FP32 whose readers are all
ALLOW is retargeted; 8 a gather/embedding node whose table is a float constant runs low
so that its table is stored low (see ``_step8_gather_tables``). Nodes that compute only from constants and shapes (not allow or
clear ops) are left out of painting and keep FP32. Every node gets meta precision/category/reason; a node that already
carries a decision with the same precision keeps its reason (on a converted graph the
casts cut edges, so the first run's explanation is the informative one)."""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from mixprec.ir.cast import cast_target, is_cast
from mixprec.ir.dtypes import DType, finite_max
from mixprec.ir.lazy import exceeding
from mixprec.ir.graph import Graph, Node, Value
from mixprec.ir.pins import Pin, pin_of
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import FP32, KEEP, SHAPE, OpFacts, PolicyAnswers, decide, graph_policy, target_dtype
from mixprec.passes.policies import Policy
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)



@register_pass
@dataclass
class AssignPrecision(Pass):
    """Options: ``precision`` (bf16|fp16), ``policy`` (name or file; default: the graph's
    framework). Pins come from the passes before it (apply-overrides, pin-input-norms, pin-existing-fp32)."""

    name = "assign-precision"
    description = "paint nodes low precision or FP32 with grappler's allow/infer/clear/deny algorithm, recording why"
    changes_structure = False
    precision: str = "bf16"
    policy: str | None = None

    def run(self, graph: Graph) -> PassResult:
        target = target_dtype(self.precision)
        policy = graph_policy(graph, self.policy)
        painter = _Painter(graph, policy, target)
        painter.paint()
        return PassResult(graph, painter.changed)


class _Painter:
    def __init__(self, graph: Graph, policy: Policy, target: DType) -> None:
        self.graph = graph
        self.policy = policy
        self.target = target
        self.floats = {DType.FLOAT32, target}
        self.deny: set[int] = set()
        self.allow: set[int] = set()
        self._facts = PolicyAnswers(policy).facts  # what the policy says of each op, asked once
        #: whether a node's decision (precision, category, reason) changed
        self.changed = False

    def _decide(self, node: Node, precision: str, category: str | None, reason: str) -> None:
        meta = node.meta
        if (meta.get("precision") != precision or (category is not None and meta.get("category") != category)
                or meta.get("reason") != reason):
            self.changed = True
            decide(node, precision, category, reason)

    def paint(self) -> None:
        self.cands = self._select_candidates()
        self.index = {id(n): i for i, n in enumerate(self.cands)}
        self._build_edges()
        self._categorize()
        self.allow = {i for i, c in enumerate(self.cat) if c == "allow"}
        self.reason = {i: self.why[i] for i in self.allow}
        self.deny_reason: dict[int, str] = {}
        self._step2_deny_forward()
        self._step3_between_allow()
        self._step4_infer_after_allow()
        self._step5_clear_next_to_allow()
        self._step8_gather_tables()
        self._record()
        self._retarget_casts(self.allow, self.index)

    def _select_candidates(self) -> list[Node]:
        """Painting candidates; every other node gets its decision here."""
        nodes = list(self.graph.all_nodes())
        static = self._static_nodes(nodes)
        facts_of = self._facts
        cands: list[Node] = []
        self.cand_facts: list[OpFacts] = []
        for node in nodes:
            if node.meta.get("category") == SHAPE:
                continue
            if is_cast(node):
                if node.meta.get("category") != "cast":
                    self._decide(node, KEEP, "cast", "existing cast kept as is")
                continue
            facts = facts_of(node.qualified_op)
            category = facts.base_category
            if id(node) in static and category not in ("allow", "clear") and _override(node) is None:
                self._decide(node, FP32 if self._is_candidate(node, facts) else KEEP, category,
                             "computes from constants and shapes only (no input data): kept in its dtype")
            elif self._is_candidate(node, facts):
                cands.append(node)
                self.cand_facts.append(facts)
            else:
                self._decide(node, KEEP, category, "reads and writes no float32 tensor")
        return cands

    def _build_edges(self) -> None:
        """fanin/fanout over float values between candidates (pins cut edges)."""
        n = len(self.cands)
        floats, index, facts = self.floats, self.index, self.cand_facts
        self.fanin: list[list[int]] = [[] for _ in range(n)]
        self.fanout: list[list[int]] = [[] for _ in range(n)]
        fanin, fanout = self.fanin, self.fanout
        for i, node in enumerate(self.cands):
            pinned = facts[i].pinned
            for j, value in enumerate(node.inputs):
                if value is None or value.dtype not in floats or (pinned and facts[i].is_pinned(j)):
                    continue
                p = index.get(id(value.producer))  # a candidate's output: cut where it keeps its dtype
                if p is not None and not facts[p].is_output_pinned(value.producer_index):
                    fanin[i].append(p)
                    fanout[p].append(i)

    def _categorize(self) -> None:
        """``listed``: each candidate's policy list; ``cat``: the list painting uses
        (overrides and out-of-range constants applied); ``why``: the reason for ``cat``."""
        out_of_range = self.out_of_range = self._out_of_range_constants()
        self.listed: list[str] = []
        self.cat: list[str] = []
        self.why: list[str] = []
        for node, facts in zip(self.cands, self.cand_facts):
            c, reason = facts.category or self.policy.category(node.qualified_op, node.attrs)
            self.listed.append(c)
            override = _override(node)
            bad = next((v for j, v in enumerate(node.inputs) if v is not None and id(v) in out_of_range
                        and not facts.is_pinned(j)), None) if out_of_range else None
            if override is not None:
                c = "allow" if override.precision == self.target.value else "deny"
                reason = override.reason
            elif bad is not None and c != "deny":
                c, reason = "deny", f"constant %{bad.name} holds values outside the {self.target.value} range"
            self.cat.append(c)
            self.why.append(reason)

    def _free(self, i: int) -> bool:
        return self.cat[i] in ("infer", "clear") and i not in self.deny and i not in self.allow

    def _step2_deny_forward(self) -> None:
        """DENY spreads forward through infer/clear nodes that lie upstream of a deny or
        infer node."""
        cat, fanin, fanout = self.cat, self.fanin, self.fanout
        upstream = {i for i, c in enumerate(cat) if c in ("deny", "infer")}
        stack = list(upstream)
        while stack:
            i = stack.pop()
            for p in fanin[i]:
                if p not in upstream and cat[p] == "clear":
                    upstream.add(p)
                    stack.append(p)
        self.deny = {i for i, c in enumerate(cat) if c == "deny"}
        self.deny_reason.update({i: self.why[i] for i in self.deny})
        stack = list(self.deny)
        while stack:
            i = stack.pop()
            for c in fanout[i]:
                if c not in self.deny and c in upstream:
                    self.deny.add(c)
                    self.deny_reason[c] = (f"downstream of deny node {self.cands[i].name!r} on a path to a deny "
                                           "or infer op (step 2)")
                    stack.append(c)

    def _step3_between_allow(self) -> None:
        """infer/clear nodes both downstream and upstream of ALLOW become ALLOW."""
        down = self._reach(self.allow, self.fanout, self._free)
        up = self._reach(self.allow, self.fanin, self._free)
        for i in down.keys() & up.keys():
            self.reason[i] = (f"between allow nodes {self.cands[down[i]].name!r} and "
                              f"{self.cands[up[i]].name!r} (step 3)")
        self.allow |= down.keys() & up.keys()

    def _step4_infer_after_allow(self) -> None:
        """An infer node with an ALLOW input and no DENY input becomes ALLOW, to a fixed point."""
        cat, fanin = self.cat, self.fanin
        work = deque(sorted(i for i, c in enumerate(cat) if c == "infer" and self._free(i)))
        while work:
            i = work.popleft()
            if not self._free(i) or any(f in self.deny for f in fanin[i]):
                continue
            src = next((f for f in fanin[i] if f in self.allow), None)
            if src is None:
                continue
            self.allow.add(i)
            self.reason[i] = f"infer op fed by allow node {self.cands[src].name!r} (step 4)"
            work.extend(c for c in self.fanout[i] if cat[c] == "infer" and self._free(c))

    def _step5_clear_next_to_allow(self) -> None:
        """ALLOW spreads through connected clear nodes in both directions."""
        both = [self.fanin[i] + self.fanout[i] for i in range(len(self.cands))]
        reach = self._reach(self.allow, both, lambda i: self.cat[i] == "clear" and self._free(i))
        for i, src in reach.items():
            self.reason[i] = f"clear op connected to allow node {self.cands[src].name!r} (step 5)"
        self.allow |= reach.keys()

    def _step8_gather_tables(self) -> None:
        """A gather/embedding node (policy ``gather_tables``) left FP32 whose table is a
        float constant runs in the target dtype: the table is then stored low (a lookup
        is exact, so the rows equal the rounded table's) and insert-casts casts the rows
        up for FP32 readers. Only where a low-precision weight is acceptable anyway: some
        allow-list node runs low, the node carries no user/tuning/rule pin, the runtime
        can run it, the table fits the target's range, and every reader of the table
        reads it low (otherwise the table would be cast on every run)."""
        if not any(self.listed[i] == "allow" for i in self.allow):
            return
        tables: dict[int, Value] = {}
        for i, node in enumerate(self.cands):
            table = self._gather_table(node, self.cand_facts[i])
            if i not in self.allow and table is not None:
                tables[i] = table
        changed = True
        while changed:  # drop tables that a node outside allow or the gathers also reads
            changed = False
            for i, table in list(tables.items()):
                if not all(self.index.get(id(r)) in self.allow or self.index.get(id(r)) in tables
                           for r, _ in table.uses()):
                    del tables[i]
                    changed = True
        for i, table in sorted(tables.items()):
            self.allow.add(i)
            self.reason[i] = (f"gather table %{table.name} stored in {self.target.value} (a lookup is exact); "
                              "the rows are cast up for f32 readers (step 8)")

    def _gather_table(self, node: Node, facts: OpFacts) -> Value | None:
        """The float constant table a gather node reads, if the table rule may apply."""
        index = facts.gather_table
        if index is None or index >= len(node.inputs) or _override(node) is not None:
            return None
        table = node.inputs[index]
        if (table is None or not table.is_constant or table.dtype not in self.floats
                or id(table) in self.out_of_range):
            return None
        return table

    def _record(self) -> None:
        for i, node in enumerate(self.cands):
            if i in self.allow:
                precision, text = self.target.value, self.reason[i]
            else:
                precision, text = FP32, self.deny_reason.get(i) or _why_not(self.cat[i], self.why[i])
            if node.meta.get("precision") != precision or not node.meta.get("reason"):
                self._decide(node, precision, self.listed[i], text)

    def _static_nodes(self, nodes: list[Node]) -> set[int]:
        """ids of nodes whose inputs are all constants, shape-source outputs or outputs
        of such nodes: their values do not depend on the data fed in (a scale computed
        as 1/sqrt(head_dim) from a Shape). They take no part in painting, so a deny op
        among them (Sqrt) does not spread to the data path; readers cast their output."""
        static_values: set[int] = set()
        for graph in self.graph.all_graphs():
            static_values.update(id(v) for v in graph.constants.values())
        static: set[int] = set()
        facts_of = self._facts
        for node in nodes:  # topological, outer graphs before the graphs nested in them
            if node.attrs and any(True for _ in node.subgraphs()):
                continue
            if all(v is None or id(v) in static_values for v in node.inputs) or \
                    facts_of(node.qualified_op).shape_source:
                static.add(id(node))
                static_values.update(id(v) for v in node.outputs)
        return static

    def _is_candidate(self, node: Node, facts: OpFacts) -> bool:
        floats = self.floats
        if any(v.dtype in floats and not facts.is_output_pinned(j) for j, v in enumerate(node.outputs)):
            return True
        return any(v is not None and v.dtype in floats and not facts.is_pinned(j) for j, v in enumerate(node.inputs))

    @staticmethod
    def _reach(roots: set[int], edges: list[list[int]], enter) -> dict[int, int]:
        """Nodes reachable from ``roots`` through nodes accepted by ``enter`` -> the root
        (or a root) that reached them. Independent of iteration order as a set."""
        seen: dict[int, int] = {}
        stack = [(r, r) for r in sorted(roots)]
        while stack:
            i, root = stack.pop()
            for c in edges[i]:
                if c not in seen and c not in roots and enter(c):
                    seen[c] = root
                    stack.append((c, root))
        return seen

    def _out_of_range_constants(self) -> set[int]:
        """ids of float constants with finite values beyond the target's range (other
        than the source type's own extremes, which convert-constants saturates)."""
        values = [value for graph in self.graph.all_graphs() for value in graph.constants.values()
                  if value.dtype == DType.FLOAT32 and value.storage is not None and value.storage.size]
        # lazy data read chunk by chunk; small arrays checked together
        beyond = exceeding([value.storage for value in values], finite_max(self.target))
        return {id(value) for value, bad in zip(values, beyond) if bad}

    def _retarget_casts(self, allow: set[int], index: dict[int, int]) -> None:
        outputs = {id(v) for g in self.graph.all_graphs() for v in g.outputs}
        for node in self.graph.all_nodes():
            if not is_cast(node) or node.meta.get("category") == SHAPE or cast_target(node) != DType.FLOAT32:
                continue
            out = node.outputs[0]
            uses = out.uses()
            if not uses or id(out) in outputs:
                continue
            if all(index.get(id(r)) in allow and not self._facts(r.qualified_op).is_pinned(j) for r, j in uses):
                self._decide(node, self.target.value, "cast",
                             f"existing cast to f32 whose readers all run in {self.target.value} (step 7)")


def _override(node: Node) -> Pin | None:
    """The node's pin (user, runtime, tuning or policy rule), set before painting."""
    return pin_of(node)


def _why_not(category: str, base: str) -> str:
    return {
        "deny": base,
        "infer": "infer op with no allow input (or a deny input)",
        "clear": "clear op not connected to an allow node",
        "allow": base,
    }.get(category, base)
