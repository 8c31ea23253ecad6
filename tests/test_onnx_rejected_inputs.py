"""Generated sample inputs the FP32 model rejects (seen on PaddleOCR's SVTR recognizer in
the corpus: 297 s of a 438-node conversion went into the reference evaluator failing on
224x224 images the model cannot take, once per candidate and per error-budget draw; and
its error attribution never ran: onnx.checker rejected the probes, a probed value having no known rank)."""
import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX output check runs in onnxruntime")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.errors import ModelRunError  # noqa: E402
from mixprec.runtimes import onnx as runtime  # noqa: E402
from mixprec.runtimes.base import per_fit_scope  # noqa: E402
from tests.onnx_models import text_line_model  # noqa: E402


@pytest.fixture()
def path(tmp_path):
    out = tmp_path / "text_line.onnx"
    onnx.save(text_line_model(), str(out))
    return out


def _image(side: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)}


def test_a_model_that_loads_and_rejects_the_inputs_is_not_run_in_the_reference_evaluator(path):
    before = runtime.STATS["reference_runs"]
    with pytest.raises(ModelRunError, match="Reshape"):
        runtime.OnnxAdapter().run_original(str(path), _image(224))
    assert runtime.STATS["reference_runs"] == before
    assert runtime.OnnxAdapter().run_original(str(path), _image(32))[0].shape == (1, 8, 16)


def test_each_rejected_shape_is_tried_once_per_fit(path, monkeypatch):
    adapter = runtime.OnnxAdapter()
    tried: list[tuple[int, ...]] = []
    real = runtime.OnnxAdapter.run_original

    def counting(self, original, inputs):
        tried.append(tuple(inputs["x"].shape))
        return real(self, original, inputs)
    monkeypatch.setattr(runtime.OnnxAdapter, "run_original", counting)
    config = MixedPrecisionConfig()
    loaded = adapter.load(str(path), config)
    with per_fit_scope():
        first, _ = mix_precision.reference_run(adapter, str(path), loaded, config)
        again, _ = mix_precision.reference_run(adapter, str(path), loaded, config)
    assert first["x"].shape == again["x"].shape == (1, 3, 32, 32)
    rejected = [shape for shape in tried if shape != (1, 3, 32, 32)]
    assert rejected and len(rejected) == len(set(rejected)), tried  # every rejected shape run once
    assert tried.count((1, 3, 32, 32)) == 2


def test_the_conversion_is_checked_on_the_shape_the_model_takes(path):
    result = mix_precision.fit(str(path), config=MixedPrecisionConfig())
    assert result.report.checks and result.report.checks[0].cosine > 0.999
    assert not any("skipped" in note for note in result.report.notes), result.report.notes


def test_error_attribution_measures_values_of_unknown_rank(path):
    """The probes are run, not validated: onnx.checker rejects a graph output of unknown
    rank (the Reshape's), onnxruntime runs it."""
    errors = mix_precision.error_attribution(str(path), MixedPrecisionConfig())
    names = {e.name for e in errors}
    assert {"conv", "act", "flat"} <= names, names
    assert all(np.isfinite(e.rel_error) for e in errors)
