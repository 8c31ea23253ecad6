"""objective="performance" on the real runtimes: outputs valid, per-region times in the
report, decisions explained by pins, a second conversion served by the cache, and ONNX
kept FP32 (onnxruntime's CPU provider has no BF16 kernels). Timing results themselves are
never asserted: only that they were measured and acted on consistently."""
import shutil

import numpy as np
import pytest

from mixprec import mix_precision
from mixprec.config import MixedPrecisionConfig
from mixprec.ir import dump


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _checks(converted):
    """The output checks of the conversion (of the rejected one when the guard returned
    the FP32 model: it measured slower, or converted nothing)."""
    profile = converted.report.profile
    checks = profile["rejected"]["checks"] if profile.get("returned") == "fp32" else \
        [vars(c) for c in converted.report.checks]
    assert checks
    return checks


def _consistent(converted):
    """Every region decision shows in the converted IR: a component kept low has its
    nodes low; nodes of a lost region that no single kept are FP32 with a profile pin.
    When the guard returned the FP32 model instead, every node is FP32 and a note says why."""
    profile = converted.report.profile
    assert profile["objective"] == "performance" and profile["regions"]
    if profile.get("returned") == "fp32":
        assert {n.precision for n in converted.report.nodes} <= {"f32", "keep"}
        assert any("the FP32 model is returned as given" in note for note in converted.report.notes)
        assert "bf16" not in dump(converted.ir.graph)
        return profile
    by_name = {n.name: n for n in converted.ir.graph.iter_nodes()}
    for region in profile["regions"]:
        if region["source"] in ("measured", "cache"):
            assert region["fp32_ms"] > 0 and region["low_ms"] > 0 and region["reps"] >= 5
        node = by_name[region["first"]]
        if region["kind"] == "component" and region["decision"] == "bf16":
            assert node.meta["precision"] == "bf16"
        if region["kind"] == "single":
            assert node.meta["precision"] == region["decision"] or region["decision"] == "f32"
    text = dump(converted.ir.graph)
    lost = [r for r in profile["regions"] if r["kind"] == "component" and r["decision"] == "f32"]
    if lost:
        assert "pin=profile" in text
    return profile


def test_torch_mlp_performance(cache_dir):
    torch = pytest.importorskip("torch")

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.norm = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64), torch.nn.LayerNorm(64)

        def forward(self, x):
            return self.norm(self.b(torch.relu(self.a(x))))

    torch.manual_seed(0)
    model = MLP().eval()
    config = MixedPrecisionConfig(example_inputs=(torch.randn(4, 64),), objective="performance")
    first = mix_precision.fit(model, config=config)
    assert _checks(first)[0]["cosine"] > 0.99
    assert (first.model is model) is (first.report.profile.get("returned") == "fp32")
    profile = _consistent(first)
    assert profile["timer_calls"] >= 2  # the component (and its allow ops if it lost), plus the model
    assert profile["latency"]["fp32_ms"] > 0 and profile["latency"]["measured_ms"] > 0
    assert "region component linear..linear_1" in first.report.summary_table()
    assert "model latency: FP32" in first.report.summary_table()
    assert list(cache_dir.glob("timings/*/*.json"))
    shutil.rmtree(cache_dir / "conversions", ignore_errors=True)  # the timing cache alone (tests/test_conversion_cache.py: the whole)
    again = mix_precision.fit(model, config=MixedPrecisionConfig(example_inputs=(torch.randn(4, 64),),
                                                                 objective="performance"))
    assert again.report.profile["timer_calls"] == 0  # regions and the whole-model latency from the cache
    assert again.report.profile["latency"] == first.report.profile["latency"]
    assert {r["source"] for r in again.report.profile["regions"]} == {"cache"}
    assert dump(again.ir.graph) == dump(first.ir.graph).replace(", measured)", ", cache)")
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert np.allclose(again.model(x).float().numpy(), model(x).numpy(), atol=0.1)


def test_tensorflow_cnn_performance():
    pytest.importorskip("tensorflow")
    from tests import tf_models
    converted = mix_precision.fit(tf_models.make_cnn(), config=MixedPrecisionConfig(objective="performance"))
    assert _checks(converted)[0]["cosine"] > 0.99
    profile = _consistent(converted)
    assert any(r["first"].endswith("convolution") for r in profile["regions"])


def test_onnx_performance_stays_fp32_with_a_note():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"w{i}") for i in range(2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w1"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted = mix_precision.fit(model, config=MixedPrecisionConfig(objective="performance"))
    assert {n.precision for n in converted.report.nodes} == {"f32"}
    assert any("onnxruntime's CPU execution provider has no BF16 kernels" in note for note in converted.report.notes)
    assert converted.report.profile["source"] == "unavailable" and converted.report.profile["timer_calls"] == 0
    memory = mix_precision.fit(model, config=MixedPrecisionConfig())
    assert {n.precision for n in memory.report.nodes if n.op == "MatMul"} == {"bf16"}


def test_cli_profile_then_convert_with_the_profile(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import json

    from mixprec.cli import main
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).eval()
    model = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(2, 32),)), str(model))
    machine_file = tmp_path / "machine.json"
    assert main(["profile", str(model), "-o", str(machine_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    data = json.loads(machine_file.read_text())
    assert data["format"] == "mixprec-profile" and data["framework"] == "torch"
    assert data["machine"]["cpu"] and "flags" in data["machine"] and len(data["entries"]) == 3
    report = tmp_path / "report.json"
    assert main(["convert", str(model), "-o", str(tmp_path / "out.pt2"), "--profile", str(machine_file),
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "nothing was timed on this machine" in out and "reps, profile)" in out
    converted = json.loads(report.read_text())
    assert converted["profile"]["timer_calls"] == 0 and converted["profile"]["source"] == "profile file"
    assert (tmp_path / "out.pt2").stat().st_size > 0
