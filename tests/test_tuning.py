"""Accuracy-aware fallback: fit with an evaluation falls ops back to FP32 until the
criterion holds, and keeps as few of them FP32 as it can."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixprec.config import AccuracyCriterion, TuningCriterion
from mixprec.errors import ConfigError, ConversionError
from mixprec.tuning import Candidate, fallback_search

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"


def _fake_convert(sensitive):
    """Candidates over nodes a(Add, infer), b(Relu, clear), c1/c2(Conv, allow); a node
    that falls back leaves `lowered`."""
    nodes = [("a", "Add", "infer"), ("b", "Relu", "clear"), ("c1", "Conv", "allow"), ("c2", "Conv", "allow")]

    def convert(ops, names):
        lowered = [n for n in nodes if n[1] not in ops and n[0] not in names]
        return Candidate({n[0] for n in lowered}, lowered)

    def evaluate(lowered_names):
        return 1.0 - 0.5 * len(lowered_names & sensitive)
    return convert, evaluate


def test_search_keeps_only_the_sensitive_node_in_fp32():
    convert, evaluate = _fake_convert({"c2"})
    result = fallback_search(convert, evaluate, 1.0, AccuracyCriterion(tolerable_loss=0.01), TuningCriterion())
    assert result.fallback_nodes == ["c2"] and result.fallback_ops == []
    assert result.best.model == {"a", "b", "c1"}
    assert [t.meets for t in result.trials][:2] == [False, True]  # default, then every node in FP32
    assert result.trials[-1].meets


def test_search_falls_back_every_node_that_matters():
    convert, evaluate = _fake_convert({"c1", "c2"})
    result = fallback_search(convert, evaluate, 1.0, AccuracyCriterion(), TuningCriterion())
    assert sorted(result.fallback_nodes) == ["c1", "c2"]
    assert result.best.model == {"a", "b"}


def test_search_fails_clearly_when_nothing_meets_the_criterion_or_budget_is_spent():
    convert, _ = _fake_convert(set())
    with pytest.raises(ConversionError, match="even with all 4 converted nodes in FP32"):
        fallback_search(convert, lambda m: 0.0, 1.0, AccuracyCriterion(), TuningCriterion())
    convert, evaluate = _fake_convert({"c2"})
    with pytest.raises(ConversionError, match="in 1 trials"):
        fallback_search(convert, evaluate, 1.0, AccuracyCriterion(), TuningCriterion(max_trials=1))


@pytest.mark.parametrize("criterion, baseline, score, ok", [
    (AccuracyCriterion(tolerable_loss=0.01), 0.80, 0.793, True),
    (AccuracyCriterion(tolerable_loss=0.01), 0.80, 0.79, False),
    (AccuracyCriterion(criterion="absolute", tolerable_loss=0.02), 0.80, 0.785, True),
    (AccuracyCriterion(higher_is_better=False, tolerable_loss=0.1), 2.0, 2.15, True),
    (AccuracyCriterion(higher_is_better=False, tolerable_loss=0.1), 2.0, 2.3, False),
])
def test_accuracy_criterion(criterion, baseline, score, ok):
    assert criterion.meets(baseline, score) is ok


def test_fit_tunes_an_onnx_model_down_to_the_sensitive_conv(tmp_path):
    pytest.importorskip("onnx", reason="tuning an ONNX model needs onnx")
    pytest.importorskip("onnxruntime", reason="tuning an ONNX model needs onnxruntime")
    from onnx import TensorProto
    from mixprec import MixedPrecisionConfig, mix_precision
    path = Path(shutil.copy(EXAMPLE, tmp_path / "m.onnx"))

    def eval_func(model):  # pretend conv2 in bf16 costs 10 points of accuracy
        weights = {t.name: t.data_type for t in model.graph.initializer}
        return 0.9 if weights.get("conv2.w") == TensorProto.BFLOAT16 else 1.0

    result = mix_precision.fit(path, config=MixedPrecisionConfig(), eval_func=eval_func)
    decisions = {n.name: n for n in result.report.nodes}
    assert decisions["conv2"].precision == "f32" and decisions["conv2"].reason.startswith("accuracy tuning")
    assert decisions["conv1"].precision == "bf16" and decisions["fc"].precision == "bf16"
    assert result.report.tuning["fallback_nodes"] == ["conv2"]
    assert "accuracy tuning: baseline 1" in result.report.summary_table()
    assert eval_func(result.model) == 1.0


def test_tuning_shows_a_bar_of_trials_with_score_and_fp32_nodes(tmp_path):
    pytest.importorskip("onnxruntime", reason="tuning an ONNX model needs onnxruntime")
    import io
    from mixprec import MixedPrecisionConfig, mix_precision, progress
    path = Path(shutil.copy(EXAMPLE, tmp_path / "m.onnx"))

    def eval_func(model):
        return 0.9 if any(t.name == "conv2.w" and t.data_type == 16 for t in model.graph.initializer) else 1.0

    stream = io.StringIO()
    try:
        progress.configure(True, stream=stream)
        result = mix_precision.fit(path, config=MixedPrecisionConfig(), eval_func=eval_func)
    finally:
        progress.configure(False)
    last = result.report.tuning["trials"][-1]
    assert "tuning:" in stream.getvalue()
    assert f"trial {last['index']}: {last['accuracy']:.4g}, 1 fp32" in stream.getvalue()


def test_fit_with_dataloader_and_metric():
    onnx = pytest.importorskip("onnx", reason="tuning an ONNX model needs onnx")
    pytest.importorskip("onnxruntime", reason="tuning an ONNX model needs onnxruntime")
    from mixprec import MixedPrecisionConfig, mix_precision
    model = onnx.load(str(EXAMPLE))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    from mixprec.runtimes.onnx import run_onnxruntime
    labels = run_onnxruntime(model, {"image": images})[0].argmax(axis=1)  # FP32 is 100% right by definition

    class Top1:
        def reset(self):
            self.hits, self.total = 0, 0

        def update(self, preds, y):
            self.hits += int((np.asarray(preds).argmax(axis=1) == y).sum())
            self.total += len(y)

        def result(self):
            return self.hits / self.total

    loader = [({"image": images[i:i + 8]}, labels[i:i + 8]) for i in (0, 8)]
    result = mix_precision.fit(model, config=MixedPrecisionConfig(accuracy_criterion=AccuracyCriterion(
        tolerable_loss=0.2)), eval_dataloader=loader, eval_metric=Top1())
    assert result.report.tuning["baseline"] == 1.0
    assert result.report.tuning["trials"][-1]["meets"]


def test_bad_evaluation_arguments_are_config_errors():
    pytest.importorskip("onnx", reason="needs onnx")
    from mixprec import MixedPrecisionConfig, mix_precision
    with pytest.raises(ConfigError, match="eval_metric"):
        mix_precision.fit(str(EXAMPLE), eval_dataloader=[1])
    with pytest.raises(ConfigError, match="must return one number"):
        mix_precision.fit(str(EXAMPLE), config=MixedPrecisionConfig(check_outputs=False), eval_func=lambda m: "good")
