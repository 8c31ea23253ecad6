"""The fallback search behind ``fit(..., eval_func=...)``.

It knows nothing of frameworks: ``convert(fallback_ops, fallback_nodes)`` builds a
candidate with those op types and nodes kept in FP32, ``evaluate(candidate)`` scores it.

Order of trials (each one a full conversion and one evaluation):
1. the default conversion; done if it meets the criterion;
2. op types fall back one at a time, cumulatively (infer ops first, then clear, then allow
   ops, which carry the speed), until the criterion holds; if it never does the search
   fails: the model cannot meet the criterion even with every converted op type in FP32;
3. refinement: the op type that tipped the balance is put back and its nodes fall back
   instead: one node alone, else a growing prefix in graph order, so that only the nodes
   that matter stay FP32;
4. each earlier op type is put back if the criterion still holds without it.
Invariants: a returned candidate met the criterion when it was evaluated; the search stops
at ``max_trials`` evaluations or ``timeout`` seconds and then returns the best candidate
that met the criterion (or fails when none did)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mixprec.config import AccuracyCriterion, TuningCriterion
from mixprec.errors import ConversionError

logger = logging.getLogger(__name__)

_CATEGORY_ORDER = {"infer": 0, "clear": 1, "unlisted": 2, "deny": 3, "allow": 4}


@dataclass
class Candidate:
    """One converted model: ``lowered`` lists (node name, op type, policy category) of the
    nodes that run in low precision."""
    model: Any
    lowered: list[tuple[str, str, str]]
    payload: Any = None


@dataclass
class Trial:
    index: int
    fallback_ops: list[str]
    fallback_nodes: list[str]
    accuracy: float
    meets: bool


@dataclass
class TuningResult:
    baseline: float
    best: Candidate
    trials: list[Trial] = field(default_factory=list)
    fallback_ops: list[str] = field(default_factory=list)
    fallback_nodes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "fallback_ops": self.fallback_ops, "fallback_nodes": self.fallback_nodes,
                "trials": [t.__dict__ for t in self.trials]}


class _OutOfBudget(Exception):
    pass


def fallback_search(convert: Callable[[list[str], list[str]], Candidate], evaluate: Callable[[Any], float],
                    baseline: float, accuracy: AccuracyCriterion, budget: TuningCriterion) -> TuningResult:
    """Run the search described in the module docstring."""
    start = time.monotonic()
    trials: list[Trial] = []
    best: tuple[Candidate, list[str], list[str]] | None = None

    def attempt(ops: list[str], nodes: list[str]) -> tuple[Candidate, bool]:
        nonlocal best
        if len(trials) >= budget.max_trials or (budget.timeout > 0 and time.monotonic() - start > budget.timeout):
            raise _OutOfBudget()
        candidate = convert(list(ops), list(nodes))
        score = float(evaluate(candidate.model))
        ok = accuracy.meets(baseline, score)
        trials.append(Trial(len(trials) + 1, list(ops), list(nodes), score, ok))
        logger.info("tuning trial %d: fp32 ops %s, fp32 nodes %d -> %.6g (%s)", len(trials), ops, len(nodes),
                    score, "meets" if ok else "misses")
        if ok:
            best = (candidate, list(ops), list(nodes))
        return candidate, ok

    try:
        first, ok = attempt([], [])
        if not ok:
            _search(first, attempt)
    except _OutOfBudget:
        logger.warning("tuning stopped: budget of %d trials / %ss spent", budget.max_trials, budget.timeout)
    if best is None:
        last = trials[-1].accuracy if trials else float("nan")
        raise ConversionError(f"accuracy tuning found no conversion within {baseline:.6g} "
                              f"({accuracy.criterion} loss {accuracy.tolerable_loss}) in {len(trials)} trials "
                              f"(last: {last:.6g}); raise max_trials or tolerable_loss, or the model loses too "
                              f"much even with every converted op type in FP32")
    candidate, ops, nodes = best
    return TuningResult(baseline, candidate, trials, ops, nodes)


def _search(first: Candidate, attempt: Callable[[list[str], list[str]], tuple[Candidate, bool]]) -> None:
    types = sorted({(_CATEGORY_ORDER.get(cat, 2), op) for _, op, cat in first.lowered})
    order = [op for _, op in types]
    ops: list[str] = []
    tipped = None
    for op in order:
        ops.append(op)
        _, ok = attempt(ops, [])
        if ok:
            tipped = op
            break
    if tipped is None:
        return
    kept = ops[:-1]
    names = [name for name, op, _ in first.lowered if op == tipped]
    nodes = _refine_nodes(kept, names, attempt)
    if not nodes:
        kept = ops
    for op in list(kept):
        if op == tipped:
            continue
        trial_ops = [o for o in kept if o != op]
        _, ok = attempt(trial_ops, nodes)
        if ok:
            kept = trial_ops


def _refine_nodes(ops: list[str], names: list[str],
                  attempt: Callable[[list[str], list[str]], tuple[Candidate, bool]]) -> list[str]:
    """The fewest of ``names`` found to fall back (one alone, else a growing prefix in
    graph order) so that the criterion holds with ``ops``; [] when only all of them do."""
    if len(names) < 2:
        return []
    for name in names:
        if attempt(ops, [name])[1]:
            return [name]
    for end in range(2, len(names)):
        if attempt(ops, names[:end])[1]:
            return names[:end]
    return []
