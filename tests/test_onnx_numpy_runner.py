"""mixprec.runtimes.onnx_numpy: the output check's runner for very large ONNX graphs
(onnx.reference's kernels node by node, low precision emulated in float32). It must give
what onnxruntime gives: the FP32 model's outputs, and the converted model's values as the
onnxruntime emulation computes them, on generated graphs and on real exporters' models
of the corpus; and it must never turn a check that onnxruntime could run into a failure."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import corpus
from bench.onnx_peers import big_graph
from mixprec import mix_precision
from mixprec.config import MixedPrecisionConfig
from mixprec.ir.dtypes import DType
from mixprec.runtimes import onnx as runtime
from mixprec.runtimes import onnx_numpy
from tests.corpus import registry


@pytest.fixture
def any_size(monkeypatch):
    """The runner for graphs of any size (it is used from MIN_NODES nodes)."""
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 0)


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
            for vi in model.graph.input}


def test_cast_rounding_is_onnxruntime_s_bit_for_bit(any_size):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])
    w = numpy_helper.from_array(np.linspace(-3, 3, 64).astype(DType.BFLOAT16.to_numpy()), "w")
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("Mul", ["xb", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["t"]),
             helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [x], [y], [w], value_info=[
        helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [64]) for n in ("xb", "m", "t")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.random.default_rng(1).standard_normal(64).astype(np.float32) * 4}
    mine = onnx_numpy.NumpyRunner(model).run(feeds)[0]
    emulated = runtime.run_emulated(model, feeds)[0]
    assert mine.dtype == np.float32 and np.array_equal(mine, emulated)
    assert not np.array_equal(mine, np.tanh(feeds["x"] * np.linspace(-3, 3, 64)).astype(np.float32))  # rounded


def test_suited_says_why_not(monkeypatch):
    small = big_graph(200)
    assert "nodes (onnxruntime below" in onnx_numpy.suited(small)
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 0)
    assert onnx_numpy.suited(small) is None
    conv = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")]))
    assert onnx_numpy.suited(conv) == "op Conv has no fast reference kernel"
    custom = onnx.ModelProto()
    custom.CopyFrom(small)
    custom.graph.node[0].domain = "com.microsoft"
    assert "com.microsoft" in onnx_numpy.suited(custom)
    monkeypatch.setattr(onnx_numpy, "MAX_WEIGHT_BYTES", 1000)
    assert "MiB of weights" in onnx_numpy.suited(small)


@pytest.mark.parametrize("nodes", [300, 3000])
def test_generated_transformer_matches_onnxruntime(any_size, nodes):
    model = big_graph(nodes)
    feeds = _feeds(model)
    fp32 = onnx_numpy.NumpyRunner(model).run(feeds)
    reference = runtime.run_onnxruntime(model, feeds)
    for mine, theirs in zip(fp32, reference):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4 * float(np.abs(theirs).max()))
    converted = mix_precision.fit(model, config=MixedPrecisionConfig(check_outputs=False)).model
    mine = onnx_numpy.NumpyRunner(converted).run(feeds)
    emulated = runtime.run_emulated(converted, feeds)
    for low, ort_low, exact in zip(mine, emulated, reference):
        # both emulations round every bf16 value; only float32 kernel rounding differs (flipping a bf16
        # rounding here and there): each is as far from FP32 as the other, and close to the other
        assert corpus.min_cosine([ort_low], [low]) > 0.9999
        assert abs(corpus.min_cosine([exact], [low]) - corpus.min_cosine([exact], [ort_low])) < 1e-4


@pytest.mark.parametrize("name", ["minilm-l6-onnx", "gpt2-onnx-ts", "llama-onnx-ts", "t5-onnx-ts"])
def test_real_exporters_models_match_onnxruntime(any_size, name, tmp_path):
    entry = next(e for e in registry.ENTRIES if e.name == name)
    missing = registry.missing_modules(entry)
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)} (pip install -r requirements.txt)")
    folder = registry.build(entry)
    path = folder / entry.model_file
    with np.load(folder / "inputs.npz") as data:
        feeds = {k: data[k] for k in data.files}
    model = onnx.load(path)
    assert onnx_numpy.suited(model) is None
    reference = runtime.run_onnxruntime_file(path, feeds, exact=True)
    mine = onnx_numpy.NumpyRunner(model).run(feeds)
    assert corpus.min_cosine(reference, mine) > 0.99999
    for theirs, got in zip(reference, mine):
        assert got.shape == theirs.shape
    converted = mix_precision.fit(str(path), config=MixedPrecisionConfig(check_outputs=False)).model
    low = onnx_numpy.NumpyRunner(converted).run(feeds)
    emulated = runtime.run_emulated(converted, feeds)
    assert corpus.min_cosine(emulated, low) > 0.9999
    assert abs(corpus.min_cosine(reference, low) - corpus.min_cosine(reference, emulated)) < 1e-3


def test_a_large_graph_is_checked_without_onnxruntime_sessions(monkeypatch):
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 1000)
    model = big_graph(1500)
    before = runtime.STATS["sessions"]
    converted = mix_precision.fit(model, config=MixedPrecisionConfig())
    assert runtime.STATS["sessions"] == before
    assert any("onnx.reference's numpy kernels node by node" in n for n in converted.report.notes)
    numpy_cosine = converted.report.checks[0].cosine
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 10 ** 9)
    again = mix_precision.fit(model, config=MixedPrecisionConfig())
    assert runtime.STATS["sessions"] > before
    assert abs(again.report.checks[0].cosine - numpy_cosine) < 1e-4


def test_a_failing_runner_leaves_the_check_to_onnxruntime(any_size, monkeypatch):
    def broken(self, feeds):
        raise RuntimeError("a kernel the runner lacks")
    monkeypatch.setattr(onnx_numpy.NumpyRunner, "run", broken)
    converted = mix_precision.fit(big_graph(300), config=MixedPrecisionConfig())
    assert converted.report.checks and converted.report.checks[0].cosine > 0.99
    assert any("in onnxruntime on an exact float32 emulation" in n for n in converted.report.notes)


def test_gather_elements_takes_more_than_32_choices_and_negative_indices(any_size):
    data = helper.make_tensor_value_info("d", TensorProto.FLOAT, [3, 40])
    index = helper.make_tensor_value_info("i", TensorProto.INT64, [3, 50])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 50])
    model = helper.make_model(helper.make_graph([helper.make_node("GatherElements", ["d", "i"], ["y"], axis=-1)],
                                                "g", [data, index], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    feeds = {"d": rng.standard_normal((3, 40)).astype(np.float32), "i": rng.integers(-40, 40, (3, 50))}
    assert np.array_equal(onnx_numpy.NumpyRunner(model).run(feeds)[0], runtime.run_onnxruntime(model, feeds)[0])
