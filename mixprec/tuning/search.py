"""The fallback search behind ``fit(..., eval_func=...)``.

It knows nothing of frameworks: ``convert(fallback_ops, fallback_nodes)`` builds a
candidate with those op types and nodes kept in FP32 and reports which nodes it painted
low (``Candidate.lowered``); ``evaluate(candidate.model)`` scores it.

The search finds a small set of nodes whose fallback to FP32 meets the criterion, in
O(k log n) evaluations for k nodes that matter among n converted ones (group testing):
1. the default conversion; done if it meets the criterion;
2. every converted node in FP32 (if even that misses, the model cannot meet the
   criterion: a clear error);
3. the shortest prefix of the candidate order whose fallback meets the criterion:
   galloping (1, 2, 4, ... nodes) when the order is a ranking of likely culprits (error
   attribution puts them first), a binary search otherwise (over the policy categories,
   allow ops last, then graph order); the last node of that prefix is needed;
4. the other needed nodes inside the prefix, one at a time: if the nodes found so far
   suffice, stop; else binary-search the shortest sub-prefix that, with them, meets it.
Assuming that falling back more nodes never hurts, the result is minimal: no node in it can
go back to low precision alone.

With ``workers`` > 1 (mixprec.tuning.parallel) each round evaluates, in parallel, the
configuration the search needs next together with the ones it may need after it (the
next galloping steps; the midpoints of the bisection tree below the current one, breadth
first). The search itself still walks one configuration at a time and takes the scores
from those speculative evaluations, so its trials, their order and its result are the
same as with one worker; speculative evaluations it never needs are not trials.

Invariants: a configuration that paints the same as one already evaluated (the same set of
low-precision nodes after painting) is never evaluated again; a returned candidate met the
criterion when it was evaluated; when ``max_trials`` or ``timeout`` stops the search, the
candidate with the fewest FP32 fallbacks that met the criterion is returned (or the search
fails when none did)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mixprec.config import AccuracyCriterion, TuningCriterion
from mixprec.errors import ConversionError
from mixprec.tuning.parallel import make_pool

logger = logging.getLogger(__name__)

#: called after each evaluated trial: (trial, number of nodes in FP32 by the search)
TrialCallback = Callable[["Trial", int], None]


@dataclass
class Candidate:
    """One converted model: ``lowered`` lists (node name, op type, policy category) of the
    nodes that run in low precision."""
    model: Any
    lowered: list[tuple[str, str, str]]
    payload: Any = None


@dataclass
class Trial:
    """One evaluated configuration; ``reason`` says which search step asked for it."""
    index: int
    fallback_ops: list[str]
    fallback_nodes: list[str]
    accuracy: float
    meets: bool
    reason: str = ""


@dataclass
class TuningResult:
    baseline: float
    best: Candidate
    trials: list[Trial] = field(default_factory=list)
    fallback_ops: list[str] = field(default_factory=list)
    fallback_nodes: list[str] = field(default_factory=list)
    #: configurations that painted like an earlier one and were not evaluated again
    duplicates_skipped: int = 0
    exhausted: bool = False

    def summary(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "fallback_ops": self.fallback_ops, "fallback_nodes": self.fallback_nodes,
                "trials": [t.__dict__ for t in self.trials], "duplicates_skipped": self.duplicates_skipped,
                "budget_exhausted": self.exhausted}

    def op_name_dict(self) -> dict[str, Any]:
        """The result as INC-style ``op_name_dict`` entries: a config with them replays the
        tuned conversion without searching again."""
        fp32 = {"activation": {"dtype": ["fp32"]}}
        return {name: fp32 for name in self.fallback_nodes}


class _OutOfBudget(Exception):
    pass


class _Search:
    """State of one search: the trials, the configurations seen, the best result."""

    def __init__(self, convert: Callable[[list[str], list[str]], Candidate], pool: Any,
                 baseline: float, accuracy: AccuracyCriterion, budget: TuningCriterion,
                 on_trial: TrialCallback | None) -> None:
        self.convert, self.pool, self.baseline = convert, pool, baseline
        self.accuracy, self.budget, self.on_trial = accuracy, budget, on_trial
        self.start = time.monotonic()
        self.trials: list[Trial] = []
        self.seen: dict[frozenset[str], bool] = {}
        self.duplicates = 0
        self.best: tuple[Candidate, list[str]] | None = None
        #: scores of speculatively evaluated configurations, by painted signature
        self.prefetched: dict[frozenset[str], float] = {}
        #: the candidates of the last parallel round, by FP32 node list (converted once)
        self.round: dict[tuple[str, ...], Candidate] = {}

    def _candidate(self, nodes: Sequence[str]) -> Candidate:
        return self.round.get(tuple(nodes)) or self.convert([], list(nodes))

    def _out_of_budget(self) -> bool:
        return len(self.trials) >= self.budget.max_trials or (
            self.budget.timeout > 0 and time.monotonic() - self.start > self.budget.timeout)

    def prefetch(self, configurations: Sequence[Sequence[str]]) -> None:
        """Evaluate up to ``pool.workers`` of ``configurations`` (FP32 node lists, the one
        needed next first) in parallel, skipping those that paint like one already scored;
        a no-op with one worker."""
        if self.pool.workers <= 1 or self._out_of_budget():
            return
        batch: dict[frozenset[str], Any] = {}
        self.round = {}
        for nodes in configurations:
            if len(batch) >= self.pool.workers:
                break
            candidate = self.round[tuple(nodes)] = self.convert([], list(nodes))
            signature = frozenset(name for name, _, _ in candidate.lowered)
            if signature not in self.seen and signature not in self.prefetched and signature not in batch:
                batch[signature] = candidate.model
        if len(batch) > 1:
            logger.info("tuning: evaluating %d configurations in parallel", len(batch))
            self.prefetched.update(zip(batch, self.pool.map(list(batch.values()))))

    def meets(self, nodes: Sequence[str], reason: str) -> bool:
        """Convert with ``nodes`` in FP32 and evaluate, unless that paints like a
        configuration already evaluated (then its answer is reused)."""
        if self._out_of_budget():
            raise _OutOfBudget()
        candidate = self._candidate(nodes)
        signature = frozenset(name for name, _, _ in candidate.lowered)
        if signature in self.seen:
            self.duplicates += 1
            logger.info("tuning: %d FP32 nodes paint like an earlier trial; not evaluated again", len(nodes))
            self._keep_if_smaller(self.seen[signature], candidate, nodes)
            return self.seen[signature]
        score = self.prefetched.pop(signature) if signature in self.prefetched else self.pool.map([candidate.model])[0]
        ok = self.accuracy.meets(self.baseline, score)
        trial = Trial(len(self.trials) + 1, [], list(nodes), score, ok, reason)
        self.trials.append(trial)
        self.seen[signature] = ok
        logger.info("tuning trial %d (%s): %d FP32 nodes -> %.6g (%s)", trial.index, reason, len(nodes), score,
                    "meets" if ok else "misses")
        if self.on_trial is not None:
            self.on_trial(trial, len(nodes))
        self._keep_if_smaller(ok, candidate, nodes)
        return ok

    def _keep_if_smaller(self, ok: bool, candidate: Candidate, nodes: Sequence[str]) -> None:
        if ok and (self.best is None or len(nodes) < len(self.best[1])):
            self.best = (candidate, list(nodes))


def fallback_search(convert: Callable[[list[str], list[str]], Candidate], evaluate: Callable[[Any], float],
                    baseline: float, accuracy: AccuracyCriterion, budget: TuningCriterion,
                    ranking: Sequence[str] | None = None, on_trial: TrialCallback | None = None,
                    workers: int = 1) -> TuningResult:
    """Run the search described in the module docstring. ``ranking`` lists node names
    most likely to blame first (nodes it leaves out follow in graph order); ``workers`` > 1
    evaluates on Ray (mixprec.tuning.parallel: ``evaluate`` and the models must pickle)."""
    pool = make_pool(evaluate, workers)
    try:
        return _run(_Search(convert, pool, baseline, accuracy, budget, on_trial), ranking)
    finally:
        pool.close()


def _run(search: _Search, ranking: Sequence[str] | None) -> TuningResult:
    budget, baseline, accuracy = search.budget, search.baseline, search.accuracy
    exhausted = False
    try:
        first = search.convert([], [])
        order = _candidate_order(first, ranking)
        ahead = search.pool.workers - 2
        search.prefetch([[], order] + (_gallop_points(order, [], 1, ahead) if ranking is not None
                                       else _bisection_points(order, [], 0, len(order), ahead)))
        if not search.meets([], "default conversion"):
            if not search.meets(order, "every converted node in FP32"):
                raise ConversionError(
                    f"accuracy tuning: even with all {len(order)} converted nodes in FP32 the model scores "
                    f"{search.trials[-1].accuracy:.6g} against the FP32 baseline {baseline:.6g}; the evaluation "
                    "may not be deterministic, or the criterion is too strict (tolerable_loss)")
            _find_needed(search, order, gallop=ranking is not None)
    except _OutOfBudget:
        exhausted = True
        logger.warning("tuning stopped: budget of %d trials / %ss spent", budget.max_trials, budget.timeout)
    if search.best is None:
        last = search.trials[-1].accuracy if search.trials else float("nan")
        raise ConversionError(f"accuracy tuning found no conversion within {baseline:.6g} "
                              f"({accuracy.criterion} loss {accuracy.tolerable_loss}) in {len(search.trials)} trials "
                              f"(last: {last:.6g}); raise max_trials or tolerable_loss")
    candidate, nodes = search.best
    return TuningResult(baseline, candidate, search.trials, [], nodes, search.duplicates, exhausted)


#: without a ranking, allow ops (where low precision pays) come last, so that a fallback of
#: their cheaper neighbours is found first
_CATEGORY_ORDER = {"infer": 0, "clear": 1, "unlisted": 2, "deny": 3, "allow": 4}


def _candidate_order(first: Candidate, ranking: Sequence[str] | None) -> list[str]:
    """The converted nodes of the default conversion: ranked ones first, the rest by
    policy category (allow ops last), then in graph order."""
    converted = [(name, category) for name, _, category in first.lowered if category != "cast"]
    lowered = [name for name, _ in sorted(converted, key=lambda item: _CATEGORY_ORDER.get(item[1], 2))]
    if not ranking:
        return lowered
    present = set(lowered)
    ranked = [name for name in dict.fromkeys(ranking) if name in present]
    chosen = set(ranked)
    return ranked + [name for name in lowered if name not in chosen]


def _find_needed(search: _Search, order: list[str], gallop: bool) -> list[str]:
    """Steps 3 and 4 of the module docstring; returns the needed nodes."""
    end = _shortest_prefix(search, order, [], gallop, "shortest meeting prefix")
    needed = [order[end - 1]]
    rest = order[:end - 1]
    while rest:
        search.prefetch([needed] + _bisection_points(rest, needed, 0, len(rest), search.pool.workers - 1))
        if search.meets(needed, "do the nodes found suffice?"):
            break
        end = _shortest_prefix(search, rest, needed, False, f"next needed node besides {len(needed)} found")
        needed.append(rest[end - 1])
        rest = rest[:end - 1]
    return needed


def _shortest_prefix(search: _Search, order: list[str], fixed: list[str], gallop: bool, reason: str) -> int:
    """The smallest p >= 1 such that ``order[:p] + fixed`` meets the criterion, given that
    ``order + fixed`` does and ``fixed`` alone does not."""
    low, high = 0, len(order)  # fixed + order[:low] misses, fixed + order[:high] meets
    if gallop:
        step = 1
        while step < high:
            search.prefetch(_gallop_points(order, fixed, step, search.pool.workers))
            if search.meets(order[:step] + fixed, reason):
                high = step
                break
            low = step
            step *= 2
    while high - low > 1:
        search.prefetch(_bisection_points(order, fixed, low, high, search.pool.workers))
        mid = (low + high) // 2
        if search.meets(order[:mid] + fixed, reason):
            high = mid
        else:
            low = mid
    return high


def _gallop_points(order: list[str], fixed: list[str], step: int, count: int) -> list[list[str]]:
    """The configurations of the next ``count`` galloping steps from ``step`` on."""
    points = []
    while step < len(order) and len(points) < count:
        points.append(order[:step] + fixed)
        step *= 2
    return points


def _bisection_points(order: list[str], fixed: list[str], low: int, high: int, count: int) -> list[list[str]]:
    """The configurations of the first ``count`` midpoints of the bisection of
    ``(low, high)``, breadth first: the one needed next, then those of both halves, ..."""
    intervals, points = [(low, high)], []
    while intervals and len(points) < count:
        lo, hi = intervals.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            points.append(order[:mid] + fixed)
            intervals += [(lo, mid), (mid, hi)]
    return points
