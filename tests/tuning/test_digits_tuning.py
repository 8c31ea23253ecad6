"""Tuning with an evaluation function on digits-trained ONNX MLPs with k planted sensitive
Adds (``(h + 4096) - 4096``, the same op type as the innocent bias Adds): the criterion is
met, the allow ops stay BF16, the fallback is small, no configuration is evaluated twice,
and the trials grow with log n, not n (the one-node-at-a-time search needed 7 / 22 / 82
trials for 10 / 40 / 160 layers at k=1)."""
import math
import random

import pytest

pytest.importorskip("onnxruntime", reason="the digits models run in onnxruntime")
pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.config import AccuracyCriterion  # noqa: E402
from tests.tuning.digits_models import digits, onnx_mlp, onnx_top1  # noqa: E402


def _tune(model):
    _, _, x, y = digits()
    seen = []

    def eval_func(candidate):
        seen.append(candidate.SerializeToString())
        return onnx_top1(candidate, x, y)
    result = mix_precision.fit(model, MixedPrecisionConfig(accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01)),
                               eval_func=eval_func)
    return result, seen, onnx_top1(model, x, y), eval_func


def _assert_tuned(result, seen, baseline, eval_func, k):
    evaluated = seen[1:]  # the baseline first, then each trial once
    assert len(evaluated) == len(set(evaluated)) == len(result.report.tuning["trials"])
    _assert_within_bounds(result, baseline, eval_func, k)
    for name in result.report.tuning["fallback_nodes"]:
        assert result.report.decision(name).reason.startswith("accuracy tuning")


def _assert_within_bounds(result, baseline, eval_func, k):
    """Criterion met, >= 90% of the allow ops BF16, <= 2k+2 fallbacks, the trial bound."""
    tuning = result.report.tuning
    nodes = [d for d in result.report.nodes if d.category != "cast"]
    allow = [d for d in nodes if d.category == "allow"]
    assert eval_func(result.model) >= baseline * 0.99
    assert sum(d.precision == "bf16" for d in allow) >= 0.9 * len(allow)
    assert len(tuning["fallback_nodes"]) <= 2 * k + 2
    assert len(tuning["trials"]) <= 2 * math.ceil(math.log2(len(nodes))) + 4 * k + 4


@pytest.mark.parametrize("layers", [10, 40, 160])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_planted_mlp(layers, k):
    planted = sorted(random.Random(layers + k).sample(range(layers), k))
    result, seen, baseline, eval_func = _tune(onnx_mlp(layers, planted))
    _assert_tuned(result, seen, baseline, eval_func, k)
    assert result.report.tuning["ranked"]  # error attribution ranked the culprits


@pytest.mark.parametrize("k", [1, 2, 4])
def test_planted_residual_mlp(k):
    planted = sorted(random.Random(k).sample(range(24), k))
    result, seen, baseline, eval_func = _tune(onnx_mlp(24, planted, residual=True))
    _assert_tuned(result, seen, baseline, eval_func, k)


@pytest.mark.parametrize("layers, k", [(10, 1), (40, 2)])
def test_planted_torch_mlp(layers, k):
    """The same search on a torch module (torch.export path)."""
    torch = pytest.importorskip("torch", reason="the torch MLP needs torch")
    from tests.tuning.digits_models import torch_mlp
    _, _, x, y = digits()
    inputs = torch.tensor(x)

    def eval_func(module):
        with torch.no_grad():
            logits = module(inputs)
        return float((logits.float().argmax(1).numpy() == y).mean())

    planted = sorted(random.Random(layers + k).sample(range(layers), k))
    model = torch_mlp(layers, planted)
    baseline = eval_func(model)
    result = mix_precision.fit(model, MixedPrecisionConfig(example_inputs=(inputs[:4],),
                                                           accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01)),
                               eval_func=eval_func)
    _assert_within_bounds(result, baseline, eval_func, k)
