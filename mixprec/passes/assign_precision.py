"""assign-precision: TF grappler's auto-mixed-precision painting, each step computed to a
fixed point so that the result does not depend on node order.

Candidates are nodes that read or write a float tensor in FP32 or the target dtype
(pinned inputs aside), are not casts and are not shape-subgraph nodes. Edges run through
float values between candidates (a cast cuts an edge). Steps (design.md):
1 allow ops start ALLOW; 2 DENY spreads forward from deny ops through infer/clear nodes
that lie upstream of a deny or infer node; 3 infer/clear nodes both downstream and
upstream of ALLOW become ALLOW; 4 an infer node with an ALLOW input and no DENY input
becomes ALLOW (to a fixed point); 5 ALLOW spreads through connected clear nodes both ways;
A node that apply-overrides pinned paints as allow (low precision) or deny (FP32), so
its neighbours follow it. 6 ops the target runtime cannot run in the target dtype, and nodes reading constants
outside its range, are taken back out; 7 an existing cast to FP32 whose readers are all
ALLOW is retargeted. Nodes that compute only from constants and shapes (not allow or
clear ops) are left out of painting and keep FP32. Every node gets meta precision/category/reason; a node that already
carries a decision with the same precision keeps its reason (on a converted graph the
casts cut edges, so the first run's explanation is the informative one)."""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mixprec.ir.cast import cast_target, is_cast
from mixprec.ir.dtypes import DType, finite_max
from mixprec.ir.graph import Graph, Node
from mixprec.passes.base import Pass, PassResult
from mixprec.passes.common import FP32, KEEP, decide, graph_policy, target_dtype
from mixprec.passes.policies import Policy
from mixprec.passes.registry import register_pass

logger = logging.getLogger(__name__)

SHAPE = "shape"
OVERRIDE_PREFIXES = ("user override", "accuracy tuning")


@register_pass
@dataclass
class AssignPrecision(Pass):
    """Options: ``precision`` (bf16|fp16), ``policy`` (name or file; default: the graph's
    framework), ``runtime_fp32_ops`` (ops the target runtime has no low-precision kernel
    for), ``runtime_fp32_nodes`` (node name -> why the runtime cannot run that node in low
    precision, e.g. a known runtime bug) and ``runtime`` (its name, for the reasons)."""

    name = "assign-precision"
    description = "paint nodes low precision or FP32 with grappler's allow/infer/clear/deny algorithm, recording why"
    changes_structure = False
    precision: str = "bf16"
    policy: str | None = None
    runtime_fp32_ops: list[str] = field(default_factory=list)
    runtime_fp32_nodes: dict[str, str] = field(default_factory=dict)
    runtime: str = "the target runtime"

    def run(self, graph: Graph) -> PassResult:
        target = target_dtype(self.precision)
        policy = graph_policy(graph, self.policy)
        before = {id(n): _snapshot(n) for n in graph.all_nodes()}
        painter = _Painter(graph, policy, target, set(self.runtime_fp32_ops), self.runtime,
                           dict(self.runtime_fp32_nodes))
        painter.paint()
        modified = any(_snapshot(n) != before.get(id(n)) for n in graph.all_nodes())
        return PassResult(graph, modified)


def _snapshot(node: Node) -> tuple:
    return node.meta.get("precision"), node.meta.get("category"), node.meta.get("reason")


class _Painter:
    def __init__(self, graph: Graph, policy: Policy, target: DType, runtime_fp32: set[str], runtime: str,
                 runtime_nodes: dict[str, str]) -> None:
        self.runtime_nodes = runtime_nodes
        self.graph = graph
        self.policy = policy
        self.target = target
        self.runtime_fp32 = runtime_fp32
        self.runtime = runtime
        self.floats = {DType.FLOAT32, target}

    def paint(self) -> None:
        nodes = list(self.graph.all_nodes())
        static = self._static_nodes(nodes)
        cands: list[Node] = []
        for node in nodes:
            if node.meta.get("category") == SHAPE:
                continue
            if is_cast(node):
                if node.meta.get("category") != "cast":
                    decide(node, KEEP, "cast", "existing cast kept as is")
                continue
            category = self.policy.base_category(node.qualified_op)
            if id(node) in static and category not in ("allow", "clear") and _override(node) is None:
                decide(node, FP32 if self._is_candidate(node) else KEEP, category,
                       "computes from constants and shapes only (no input data): kept in its dtype")
                continue
            if self._is_candidate(node):
                cands.append(node)
            else:
                decide(node, KEEP, self.policy.base_category(node.qualified_op),
                       "reads and writes no float32 tensor")
        self.cands = cands
        index = {id(n): i for i, n in enumerate(cands)}
        n = len(cands)
        fanin: list[list[int]] = [[] for _ in range(n)]
        fanout: list[list[int]] = [[] for _ in range(n)]
        for i, node in enumerate(cands):
            for j, value in enumerate(node.inputs):
                if value is None or value.dtype not in self.floats or self.policy.is_pinned(node.qualified_op, j):
                    continue
                prod = value.producer
                if prod is not None and not self.policy.is_output_pinned(prod.qualified_op, value.producer_index):
                    p = index.get(id(prod))
                    if p is not None:
                        fanin[i].append(p)
                        fanout[p].append(i)
        cat: list[str] = []
        why: list[str] = []
        out_of_range = self._out_of_range_constants()
        listed: list[str] = []
        for node in cands:
            c, reason = self.policy.category(node.qualified_op, node.attrs)
            listed.append(c)
            override = _override(node)
            bad = next((v for j, v in enumerate(node.inputs) if v is not None and id(v) in out_of_range
                        and not self.policy.is_pinned(node.qualified_op, j)), None)
            if override is not None:
                c = "allow" if override == self.target.value else "deny"
                reason = node.meta["reason"]
            elif bad is not None and c != "deny":
                c, reason = "deny", f"constant %{bad.name} holds values outside the {self.target.value} range"
            cat.append(c)
            why.append(reason)

        allow = {i for i in range(n) if cat[i] == "allow"}
        reason = {i: why[i] for i in allow}
        # step 2: deny spreads forward through infer/clear nodes upstream of deny/infer nodes
        upstream = {i for i in range(n) if cat[i] in ("deny", "infer")}
        stack = list(upstream)
        while stack:
            i = stack.pop()
            for p in fanin[i]:
                if p not in upstream and cat[p] == "clear":
                    upstream.add(p)
                    stack.append(p)
        deny = {i for i in range(n) if cat[i] == "deny"}
        deny_reason = {i: why[i] for i in deny}
        stack = list(deny)
        while stack:
            i = stack.pop()
            for c in fanout[i]:
                if c not in deny and c in upstream:
                    deny.add(c)
                    deny_reason[c] = f"downstream of deny node {cands[i].name!r} on a path to a deny or infer op (step 2)"
                    stack.append(c)

        def free(i: int) -> bool:
            return cat[i] in ("infer", "clear") and i not in deny and i not in allow

        # step 3: infer/clear nodes between allow nodes
        down = self._reach(allow, fanout, free)
        up = self._reach(allow, fanin, free)
        for i in down.keys() & up.keys():
            reason[i] = f"between allow nodes {cands[down[i]].name!r} and {cands[up[i]].name!r} (step 3)"
        allow |= down.keys() & up.keys()
        # step 4: infer nodes fed by allow and not by deny, to a fixed point
        work = deque(sorted(i for i in range(n) if cat[i] == "infer" and free(i)))
        while work:
            i = work.popleft()
            if not free(i) or any(f in deny for f in fanin[i]):
                continue
            src = next((f for f in fanin[i] if f in allow), None)
            if src is None:
                continue
            allow.add(i)
            reason[i] = f"infer op fed by allow node {cands[src].name!r} (step 4)"
            work.extend(c for c in fanout[i] if cat[c] == "infer" and free(c))
        # step 5: allow spreads through connected clear nodes, both directions
        both = [fanin[i] + fanout[i] for i in range(n)]
        clear_reach = self._reach(allow, both, lambda i: cat[i] == "clear" and free(i))
        for i, src in clear_reach.items():
            reason[i] = f"clear op connected to allow node {cands[src].name!r} (step 5)"
        allow |= clear_reach.keys()
        # step 6: runtime capability
        for i in sorted(allow):
            op = cands[i].qualified_op
            if op in self.runtime_fp32 or cands[i].op in self.runtime_fp32:
                allow.discard(i)
                deny_reason[i] = f"{self.runtime} has no {self.target.value} kernel for {op} (step 6)"
            elif cands[i].name in self.runtime_nodes:
                allow.discard(i)
                deny_reason[i] = f"{self.runtime_nodes[cands[i].name]} (step 6)"
        for i, node in enumerate(cands):
            if i in allow:
                precision, text = self.target.value, reason[i]
            else:
                precision, text = FP32, deny_reason.get(i) or _why_not(cat[i], why[i])
            if node.meta.get("precision") != precision or not node.meta.get("reason"):
                decide(node, precision, listed[i], text)
        self._retarget_casts(allow, index)

    def _static_nodes(self, nodes: list[Node]) -> set[int]:
        """ids of nodes whose inputs are all constants, shape-source outputs or outputs
        of such nodes: their values do not depend on the data fed in (a scale computed
        as 1/sqrt(head_dim) from a Shape). They take no part in painting, so a deny op
        among them (Sqrt) does not spread to the data path; readers cast their output."""
        static_values: set[int] = set()
        for graph in self.graph.all_graphs():
            static_values.update(id(v) for v in graph.constants.values())
        static: set[int] = set()
        for node in nodes:  # topological, outer graphs before the graphs nested in them
            if node.attrs and any(True for _ in node.subgraphs()):
                continue
            reads = [v for v in node.inputs if v is not None]
            if all(id(v) in static_values for v in reads) or self.policy.is_shape_source(node.qualified_op):
                static.add(id(node))
                static_values.update(id(v) for v in node.outputs)
        return static

    def _is_candidate(self, node: Node) -> bool:
        if any(v.dtype in self.floats and not self.policy.is_output_pinned(node.qualified_op, j)
               for j, v in enumerate(node.outputs)):
            return True
        return any(v is not None and v.dtype in self.floats and not self.policy.is_pinned(node.qualified_op, j)
                   for j, v in enumerate(node.inputs))

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
        tmax = finite_max(self.target)
        bad: set[int] = set()
        for graph in self.graph.all_graphs():
            for value in graph.constants.values():
                if value.dtype != DType.FLOAT32 or value.data is None or value.data.size == 0:
                    continue
                data = np.abs(np.asarray(value.data, dtype=np.float32))
                finite = data[np.isfinite(data) & (data < np.finfo(np.float32).max)]
                if finite.size and float(finite.max()) > tmax:
                    bad.add(id(value))
        return bad

    def _retarget_casts(self, allow: set[int], index: dict[int, int]) -> None:
        outputs = {id(v) for g in self.graph.all_graphs() for v in g.outputs}
        for node in self.graph.all_nodes():
            if not is_cast(node) or node.meta.get("category") == SHAPE or cast_target(node) != DType.FLOAT32:
                continue
            out = node.outputs[0]
            uses = out.uses()
            if not uses or id(out) in outputs:
                continue
            if all(index.get(id(r)) in allow and not self.policy.is_pinned(r.qualified_op, j) for r, j in uses):
                decide(node, self.target.value, "cast",
                       f"existing cast to f32 whose readers all run in {self.target.value} (step 7)")


def _override(node: Node) -> str | None:
    """The precision a user override (set by apply-overrides) pins this node to."""
    if str(node.meta.get("reason", "")).startswith(OVERRIDE_PREFIXES):
        return node.meta.get("precision")
    return None


def _why_not(category: str, base: str) -> str:
    return {
        "deny": base,
        "infer": "infer op with no allow input (or a deny input)",
        "clear": "clear op not connected to an allow node",
        "allow": base,
    }.get(category, base)
