"""objective="performance" is never slower than FP32: when the converted model measures
slower than the FP32 model beyond noise, fit returns the FP32 model as given (and save
writes it in its framework's format); when it measures faster, the conversion is kept.
The timers are faked (nothing is timed): every region is "faster" in low precision and
the whole-model latency is whatever the test says."""
import numpy as np
import pytest

from mixprec import mix_precision
from mixprec.config import MixedPrecisionConfig
from mixprec.profiling import Measurement
from mixprec.profiling.guard import ambiguous, pooled, slower_than_fp32


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_timer(monkeypatch, cls, *wholes: Measurement):
    """Regions: 1.0 ms FP32 against 0.5 ms low (all kept low); the whole model: ``wholes``
    in turn (the last one repeated)."""
    calls = {"regions": 0, "models": 0}

    def time(self, fp32, low, inputs, policy):
        calls["regions"] += 1
        return Measurement(1.0, 0.5, 9, 0.01)

    def time_models(self, original, converted, policy):
        calls["models"] += 1
        return wholes[min(calls["models"], len(wholes)) - 1]
    monkeypatch.setattr(cls, "time", time)
    monkeypatch.setattr(cls, "time_models", time_models)
    return calls


@pytest.mark.parametrize("measured, slower", [
    (Measurement(1.0, 2.0, 20, 0.05), True),     # 2x slower, tight interval
    (Measurement(1.0, 1.03, 20, 0.005), True),   # just over the bar, beyond noise
    (Measurement(1.0, 1.02, 20, 0.0), False),    # at the bar
    (Measurement(1.0, 1.10, 20, 0.2), False),    # slower, but within the noise
    (Measurement(1.0, 0.7, 20, 0.01), False),    # faster
])
def test_slower_than_fp32_beyond_noise(measured, slower):
    assert slower_than_fp32(measured) is slower
    assert ambiguous(measured) is (measured.low_ms == 1.10)  # only the noisy slower one is measured again


def test_a_noisy_slower_measurement_taken_twice_decides_by_its_median():
    noisy = Measurement(1.0, 1.10, 20, 0.2)
    again_slower = pooled(noisy, Measurement(1.0, 1.3, 10, 0.4))
    assert again_slower.reps == 30 and again_slower.low_ms == pytest.approx((1.10 * 20 + 1.3 * 10) / 30)
    assert slower_than_fp32(again_slower) and not ambiguous(again_slower)
    assert not slower_than_fp32(pooled(noisy, Measurement(1.0, 0.8, 20, 0.3)))  # the pooled median is 0.95x


def _torch_mlp():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch, torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()


def test_torch_slower_conversion_returns_and_saves_the_fp32_module(monkeypatch, tmp_path):
    torch, module = _torch_mlp()
    from mixprec.runtimes.torch_timing import TorchTimer
    calls = fake_timer(monkeypatch, TorchTimer, Measurement(1.0, 2.0, 20, 0.05))
    x = torch.randn(4, 16)
    result = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=(x,), objective="performance"))
    assert calls["models"] == 1 and calls["regions"] >= 1
    assert result.model is module  # the FP32 model as given
    profile = result.report.profile
    assert profile["returned"] == "fp32" and profile["rejected"]["measured_ms"] == 2.0
    assert profile["rejected"]["checks"] and profile["rejected"]["checks"][0]["cosine"] > 0.99
    assert any(r["decision"] == "bf16" for r in profile["regions"])  # the regions did win alone
    assert {n.precision for n in result.report.nodes} <= {"f32", "keep"}
    assert result.report.casts_inserted == 0 and result.report.failed_check is None
    assert any("so the FP32 model is returned as given" in note for note in result.report.notes)
    assert "so the FP32 model is returned" in result.report.summary_table()
    out = result.save(tmp_path / "out.pt2")
    reloaded = torch.export.load(out).module()
    with torch.no_grad():
        assert torch.equal(reloaded(x), module(x))  # FP32: bit for bit the user's model
    assert all(p.dtype == torch.float32 for p in reloaded.state_dict().values())


@pytest.mark.parametrize("second, returned", [(Measurement(1.0, 0.6, 20, 0.05), False),  # pooled 0.95x
                                              (Measurement(1.0, 1.4, 20, 0.5), True)])  # pooled 1.35x
def test_torch_noisy_slower_latency_is_measured_again(monkeypatch, second, returned):
    torch, module = _torch_mlp()
    from mixprec.runtimes.torch_timing import TorchTimer
    calls = fake_timer(monkeypatch, TorchTimer, Measurement(1.0, 1.3, 20, 0.4), second)
    result = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=(torch.randn(4, 16),),
                                                                   objective="performance"))
    assert calls["models"] == 2
    assert (result.model is module) is returned and (result.report.profile.get("returned") == "fp32") is returned
    assert result.report.profile["latency"]["reps"] == 40


def test_torch_faster_conversion_is_kept(monkeypatch, tmp_path):
    torch, module = _torch_mlp()
    from mixprec.runtimes.torch_timing import TorchTimer
    fake_timer(monkeypatch, TorchTimer, Measurement(1.0, 0.6, 20, 0.05))
    x = torch.randn(4, 16)
    result = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=(x,), objective="performance"))
    assert result.model is not module and "returned" not in result.report.profile
    assert {n.precision for n in result.report.nodes if n.op.startswith("aten.linear")} == {"bf16"}
    reloaded = torch.export.load(result.save(tmp_path / "out.pt2")).module()
    assert any(p.dtype == torch.bfloat16 for p in reloaded.state_dict().values())


@pytest.mark.parametrize("form", ["exported", "pt2"])
def test_torch_program_inputs_return_the_fp32_program(monkeypatch, tmp_path, form):
    torch, module = _torch_mlp()
    from mixprec.runtimes.torch_timing import TorchTimer
    fake_timer(monkeypatch, TorchTimer, Measurement(1.0, 1.5, 20, 0.05))
    x = torch.randn(4, 16)
    program = torch.export.export(module, (x,))
    model = program
    if form == "pt2":
        model = tmp_path / "in.pt2"
        torch.export.save(program, str(model))
    result = mix_precision.fit(model, config=MixedPrecisionConfig(objective="performance"))
    assert result.report.profile["returned"] == "fp32"
    with torch.no_grad():
        assert torch.equal(result.model(x), module(x))
        assert torch.equal(torch.export.load(result.save(tmp_path / "out.pt2")).module()(x), module(x))


def test_keras_slower_conversion_saves_the_fp32_graph(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from mixprec.runtimes.tensorflow_timing import TensorFlowTimer
    from tests import tf_models
    fake_timer(monkeypatch, TensorFlowTimer, Measurement(1.0, 3.0, 20, 0.05))
    model = tf_models.make_cnn()
    result = mix_precision.fit(model, config=MixedPrecisionConfig(objective="performance"))
    assert result.model is model and result.report.profile["returned"] == "fp32"
    x = np.random.default_rng(0).standard_normal((1,) + tuple(model.input_shape[1:])).astype(np.float32)
    expected = model(x, training=False).numpy()
    graph_def = tf.compat.v1.GraphDef()
    result.save(tmp_path / "out.pb")
    graph_def.ParseFromString((tmp_path / "out.pb").read_bytes())
    assert {n.attr["T"].type for n in graph_def.node if "T" in n.attr} <= {tf.float32.as_datatype_enum,
                                                                          tf.int32.as_datatype_enum}
    saved = tf.saved_model.load(result.save(tmp_path / "saved"))
    got = list(saved.signatures["serving_default"](tf.constant(x)).values())[0].numpy()
    assert np.allclose(got, expected, atol=1e-5)


def test_nothing_converted_returns_the_model_as_given(monkeypatch, tmp_path):
    torch, module = _torch_mlp()
    from mixprec.runtimes.torch_timing import TorchTimer
    monkeypatch.setattr(TorchTimer, "time", lambda self, fp32, low, inputs, policy: Measurement(1.0, 1.5, 9, 0.01))
    monkeypatch.setattr(TorchTimer, "time_models", lambda self, *a: Measurement(1.0, 1.0, 20, 0.01))
    x = torch.randn(4, 16)
    result = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=(x,), objective="performance"))
    assert {r["decision"] for r in result.report.profile["regions"]} == {"f32"}
    assert result.model is module and result.report.profile["returned"] == "fp32"
    assert any("nothing was converted and the FP32 model is returned as given" in n for n in result.report.notes)
    with torch.no_grad():
        assert torch.equal(torch.export.load(result.save(tmp_path / "out.pt2")).module()(x), module(x))


def test_onnx_performance_returns_the_model_as_given(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    result = mix_precision.fit(str(path), config=MixedPrecisionConfig(objective="performance"))
    assert result.report.profile["returned"] == "fp32"
    result.save(tmp_path / "out.onnx")
    assert onnx.load(str(tmp_path / "out.onnx")).graph == model.graph
