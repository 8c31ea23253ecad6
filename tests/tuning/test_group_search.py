"""The fallback search as group testing: k planted sensitive nodes among n converted ones
are found in O(k log n) evaluations, with no configuration evaluated twice, a minimal
fallback, and the smallest fallback found so far when the budget runs out."""
import math
import random

import pytest

from mixprec.config import AccuracyCriterion, TuningCriterion
from mixprec.tuning import Candidate, fallback_search


def _layered(layers, planted, seed=0):
    """A fake model of `layers` blocks MatMul m_i -> Add a_i -> Sub s_i -> Relu r_i. A planted
    block's Add loses accuracy in low precision ((h + 4096) - 4096); keeping a_i in FP32 also
    keeps s_i FP32 (deny spreads forward through infer ops when painting), while s_i alone in
    FP32 does not help. Returns convert, evaluate and the evaluated signatures."""
    names = [(f"{kind}{i}", op, cat) for i in range(layers)
             for kind, op, cat in (("m", "MatMul", "allow"), ("a", "Add", "infer"), ("s", "Sub", "infer"),
                                   ("r", "Relu", "clear"))]
    evaluated = []

    def convert(ops, nodes):
        fp32 = set(nodes) | {f"s{n[1:]}" for n in nodes if n.startswith("a")}
        lowered = [n for n in names if n[0] not in fp32 and n[1] not in ops]
        return Candidate(frozenset(n[0] for n in lowered), lowered)

    def evaluate(lowered):
        evaluated.append(lowered)
        return 1.0 - 0.1 * sum(f"a{i}" in lowered for i in planted)
    return convert, evaluate, evaluated, len(names)


@pytest.mark.parametrize("layers", [10, 40, 160])
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("ranked", [False, True])
def test_planted_nodes_found_within_the_trial_bound(layers, k, ranked):
    rng = random.Random(layers * 10 + k)
    planted = sorted(rng.sample(range(layers), k))
    convert, evaluate, evaluated, n = _layered(layers, planted)
    ranking = None
    if ranked:  # an imperfect attribution: the Sub (where the error shows) before the Add, decoys in between
        ranking = [name for i in planted for name in (f"s{i}", f"m{(i + 1) % layers}", f"a{i}")]
    result = fallback_search(convert, evaluate, 1.0, AccuracyCriterion(tolerable_loss=0.01), TuningCriterion(),
                             ranking=ranking)
    assert sorted(result.fallback_nodes) == sorted(f"a{i}" for i in planted)
    assert len(result.trials) <= 2 * math.ceil(math.log2(n)) + 4 * k + 4
    assert len(set(evaluated)) == len(evaluated)  # no configuration evaluated twice
    assert result.trials[-1].meets or any(t.meets for t in result.trials)


def test_budget_exhausted_returns_the_smallest_meeting_fallback():
    convert, evaluate, _, _ = _layered(40, [3, 17, 30, 38])
    full = fallback_search(convert, evaluate, 1.0, AccuracyCriterion(tolerable_loss=0.01), TuningCriterion())
    limited = fallback_search(convert, evaluate, 1.0, AccuracyCriterion(tolerable_loss=0.01),
                              TuningCriterion(max_trials=len(full.trials) - 2))
    assert limited.exhausted and not full.exhausted
    met = [t for t in limited.trials if t.meets]
    assert len(limited.fallback_nodes) == min(len(t.fallback_nodes) for t in met)
    assert len(limited.fallback_nodes) < 160  # better than everything in FP32


def test_a_configuration_painting_like_an_earlier_one_is_not_evaluated():
    # s_i alone paints differently from a_i; but {a_i} and {a_i, s_i} paint the same
    convert, evaluate, evaluated, _ = _layered(4, [2])
    calls = []

    def tracking_convert(ops, nodes):
        calls.append(tuple(nodes))
        return convert(ops, nodes)
    result = fallback_search(tracking_convert, evaluate, 1.0, AccuracyCriterion(tolerable_loss=0.01),
                             TuningCriterion(), ranking=["s2", "a2"])
    assert result.fallback_nodes == ["a2"]
    assert len(evaluated) == len(set(evaluated)) == len(result.trials)
    assert result.duplicates_skipped == len(calls) - 1 - len(result.trials)  # the first convert reads the order


def test_result_replays_as_op_name_dict():
    convert, evaluate, _, _ = _layered(10, [4])
    result = fallback_search(convert, evaluate, 1.0, AccuracyCriterion(tolerable_loss=0.01), TuningCriterion())
    assert result.op_name_dict() == {"a4": {"activation": {"dtype": ["fp32"]}}}
