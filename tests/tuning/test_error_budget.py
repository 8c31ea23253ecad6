"""Without an evaluation function, a conversion that misses min_cosine on the sample inputs
falls back the nodes most to blame until it holds, and holds on held-out inputs too."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the digits models run in onnxruntime")
pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.runtimes.onnx import emulate_in_float, run_onnxruntime  # noqa: E402
from mixprec.errors import AccuracyCheckError  # noqa: E402
from mixprec.ir.dtypes import DType  # noqa: E402
from mixprec.numerics import cosine  # noqa: E402
from mixprec.tuning.budget import flip_rate, margin  # noqa: E402
from tests.tuning.digits_models import digits, onnx_mlp  # noqa: E402


def _held_out_cosine(fp32, converted):
    _, _, x, _ = digits()  # real digits, not the generated sample inputs the search saw
    ref = run_onnxruntime(fp32, {"x": x})[0]
    got = run_onnxruntime(emulate_in_float(converted, DType.BFLOAT16), {"x": x})[0]
    return cosine(ref.astype(np.float64).ravel(), got.astype(np.float64).ravel())


@pytest.mark.parametrize("layers, planted, residual", [(10, [3], False), (40, [5, 30], False), (24, [2, 9, 20], True)])
def test_planted_models_meet_min_cosine_on_held_out_inputs(layers, planted, residual):
    model = onnx_mlp(layers, planted, residual=residual)
    with pytest.raises(AccuracyCheckError, match="below min_cosine=0.999"):
        mix_precision.fit(model, MixedPrecisionConfig(min_cosine=0.999, error_budget=False))
    result = mix_precision.fit(model, MixedPrecisionConfig(min_cosine=0.999))
    assert _held_out_cosine(model, result.model) >= 0.999
    assert all(check.cosine >= 0.999 for check in result.report.checks)
    fallbacks = result.report.tuning["fallback_nodes"]
    assert result.report.tuning["kind"] == "error budget" and 1 <= len(fallbacks) <= 2 * len(planted) + 2
    assert any(f"kept in FP32 to meet min_cosine=0.999 ({', '.join(fallbacks)})" in n for n in result.report.notes)
    matmuls = [d for d in result.report.nodes if d.op == "MatMul"]
    assert sum(d.precision == "bf16" for d in matmuls) >= 0.9 * len(matmuls)


def test_margin_and_flip_rate():
    ref = np.array([[2.0, 1.0], [0.0, 3.0]])
    assert flip_rate(ref, np.array([[1.0, 2.0], [0.0, 3.0]])) == 0.5
    probs = np.full((1, 1, 2, 2), 0.4)
    assert flip_rate(probs, probs + np.array([0.0, 0.2, 0.0, 0.0]).reshape(1, 1, 2, 2)) == 0.25
    assert margin([ref], [ref], 0.999) == pytest.approx(0.001)
    assert margin([ref], [ref * np.nan], 0.999) == float("-inf")
    assert margin([ref], [np.array([[1.0, 2.0], [0.0, 3.0]])], 0.5, max_flip_rate=0.1) == pytest.approx(-0.4)


def test_report_errors_lists_the_planted_node_first(tmp_path, capsys):
    import json

    import onnx

    from mixprec.cli import main
    path = tmp_path / "planted.onnx"
    onnx.save(onnx_mlp(10, [3]), path)
    assert main(["report", str(path), "--errors", "--json"]) == 0
    errors = json.loads(capsys.readouterr().out)
    assert len(errors) == 20 and errors[0]["name"] == "down3" and errors[0]["rel_error"] > 0.5
    assert all(e["local"] < 0.1 for e in errors[2:])  # the rest adds little
    assert main(["report", str(path), "--errors"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("down3 ")
