"""mixprec.runtimes.onnx_numpy: the output check's runner for very large ONNX graphs
(onnx.reference's kernels node by node, low precision emulated in float32). It must give
what onnxruntime gives: the FP32 model's outputs, and the converted model's values as the
onnxruntime emulation computes them, on generated graphs and on real exporters' models
of the corpus; and it must never turn a check that onnxruntime could run into a failure."""
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import corpus
from bench.onnx_peers import big_graph
from mixprec import mix_precision
from mixprec.backends import onnx as backend
from mixprec.config import MixedPrecisionConfig
from mixprec.dialects.onnx import NodeTable
from mixprec.frontends import onnx as frontend
from mixprec.ir.dtypes import DType
from mixprec.passes.pipeline import DEFAULT_PIPELINE, build_pipeline
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


_F, _I = TensorProto.FLOAT, TensorProto.INT64
#: (node, input types and shapes, integer inputs' values or None): each a node form the direct kernels compute
_DIRECT_CASES = [
    (helper.make_node("Add", ["a", "b"], ["y"]), [(_F, [2, 3]), (_F, [3])]),
    (helper.make_node("Add", ["a", "b"], ["y"]), [(_F, []), (_F, [])]),  # 0-d: numpy answers a scalar
    (helper.make_node("Sub", ["a", "b"], ["y"]), [(_F, [2, 3]), (_F, [2, 1])]),
    (helper.make_node("Mul", ["a", "b"], ["y"]), [(_I, [4]), (_I, [4])]),
    (helper.make_node("MatMul", ["a", "b"], ["y"]), [(_F, [2, 3, 4]), (_F, [4, 5])]),
    (helper.make_node("MatMul", ["a", "b"], ["y"]), [(_F, [4]), (_F, [4, 5])]),
    (helper.make_node("Div", ["a", "b"], ["y"]), [(_F, [3, 4]), (_F, [4])]),
    (helper.make_node("Div", ["a", "b"], ["y"]), [(_I, [6]), (_I, [6])]),  # integer: truncating, the reference's
    (helper.make_node("Pow", ["a", "b"], ["y"]), [(_F, [5]), (_I, [5])]),
    (helper.make_node("Tanh", ["a"], ["y"]), [(_F, [3, 3])]),
    (helper.make_node("Exp", ["a"], ["y"]), [(_F, [3, 3])]),
    (helper.make_node("Sqrt", ["a"], ["y"]), [(_F, [3, 3])]),
    (helper.make_node("Sigmoid", ["a"], ["y"]), [(_F, [3, 3])]),
    (helper.make_node("Neg", ["a"], ["y"]), [(_F, [3])]),
    (helper.make_node("Abs", ["a"], ["y"]), [(_I, [3])]),
    (helper.make_node("Relu", ["a"], ["y"]), [(_F, [2, 5])]),
    (helper.make_node("Identity", ["a"], ["y"]), [(_F, [2])]),
    (helper.make_node("Where", ["c", "a", "b"], ["y"]), [(TensorProto.BOOL, [2, 3]), (_F, [2, 3]), (_F, [3])]),
    (helper.make_node("Transpose", ["a"], ["y"], perm=[2, 0, 1]), [(_F, [2, 3, 4])]),
    (helper.make_node("Transpose", ["a"], ["y"]), [(_F, [2, 3, 4])]),
    (helper.make_node("Reshape", ["a", "s"], ["y"]), [(_F, [2, 3, 4]), (_I, [3], [0, -1, 2])]),
    (helper.make_node("Reshape", ["a", "s"], ["y"], allowzero=1), [(_F, [2, 0]), (_I, [2], [0, 7])]),
    (helper.make_node("Softmax", ["a"], ["y"], axis=1), [(_F, [2, 5, 3])]),
    (helper.make_node("Softmax", ["a"], ["y"]), [(_F, [2, 5])]),
    (helper.make_node("LayerNormalization", ["a", "g", "b"], ["y"], axis=-1, epsilon=1e-3),
     [(_F, [2, 3, 8]), (_F, [8]), (_F, [8])]),
    (helper.make_node("LayerNormalization", ["a", "g"], ["y"], axis=1), [(_F, [2, 3, 4]), (_F, [3, 4])]),
    (helper.make_node("Cast", ["a"], ["y"], to=TensorProto.BFLOAT16), [(_F, [16])]),
    (helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT16), [(_F, [16])]),
    (helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT), [(_I, [4])]),  # int to float: the reference's
    (helper.make_node("Gather", ["a", "i"], ["y"], axis=1), [(_F, [3, 5]), (_I, [2, 2], [0, -1, 4, -5])]),
    (helper.make_node("Concat", ["a", "b", "c"], ["y"], axis=-1), [(_F, [2, 1]), (_F, [2, 3]), (_F, [2, 2])]),
    (helper.make_node("Unsqueeze", ["a", "x"], ["y"]), [(_F, [3, 4]), (_I, [2], [-1, 0])]),
]


def _case_id(case):
    node, specs = case
    return f"{node.op_type}-" + "-".join("x".join(map(str, s[1])) or "scalar" for s in specs)


@pytest.mark.parametrize("case", _DIRECT_CASES, ids=[_case_id(c) for c in _DIRECT_CASES])
def test_direct_kernels_compute_what_the_reference_does(any_size, case):
    node, specs = case
    rng = np.random.default_rng(3)
    inputs, feeds = [], {}
    for name, spec in zip(node.input, specs):
        elem, shape = spec[0], spec[1]
        inputs.append(helper.make_tensor_value_info(name, elem, shape))
        if len(spec) > 2:
            feeds[name] = np.array(spec[2], np.int64)
        elif elem == TensorProto.BOOL:
            feeds[name] = rng.random(shape) > 0.5
        elif elem == _I:
            feeds[name] = rng.integers(1, 9, shape).astype(np.int64) * rng.choice([-1, 1], shape)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32) + (2.0 if node.op_type == "Sqrt" else 0.0)
    model = helper.make_model(helper.make_graph([node], "g", inputs, [helper.make_empty_tensor_value_info("y")]),
                              opset_imports=[helper.make_opsetid("", 18)])
    runner = onnx_numpy.NumpyRunner(model)
    assert runner.direct == 1, f"{node.op_type} should run its direct kernel"
    mine = runner.run(feeds)[0]
    from onnx.reference import ReferenceEvaluator
    theirs = np.asarray(ReferenceEvaluator(model).run(None, feeds)[0])
    if theirs.dtype in (np.float16, DType.BFLOAT16.to_numpy()):
        theirs = theirs.astype(np.float32)  # the runner holds low-precision values as their float32
    assert isinstance(mine, np.ndarray) and mine.shape == theirs.shape and mine.dtype == theirs.dtype
    np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)


def test_forms_the_direct_kernels_do_not_compute_use_the_reference(any_size):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    old_softmax = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=0)], "g", [x],
                                                      [helper.make_empty_tensor_value_info("y")]),
                                    opset_imports=[helper.make_opsetid("", 11)])  # 2-D coercion before opset 13
    runner = onnx_numpy.NumpyRunner(old_softmax)
    assert runner.direct == 0
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    from onnx.reference import ReferenceEvaluator
    np.testing.assert_allclose(runner.run(feeds)[0], ReferenceEvaluator(old_softmax).run(None, feeds)[0], rtol=1e-6)


def test_a_large_fp16_graph_is_checked_on_its_emulation_unless_onnxruntime_is_the_target(monkeypatch):
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 1000)
    model = big_graph(1500)
    before = runtime.STATS["sessions"]
    converted = mix_precision.fit(model, config=MixedPrecisionConfig(precision="fp16"))
    assert runtime.STATS["sessions"] == before
    assert any("numpy kernels node by node" in n and "fp16 model" in n for n in converted.report.notes)
    emulated = converted.report.checks[0].cosine
    native = mix_precision.fit(model, config=MixedPrecisionConfig(precision="fp16", target="onnxruntime"))
    assert runtime.STATS["sessions"] > before  # the target runtime itself runs it
    assert not any("numpy kernels" in n for n in native.report.notes)
    assert abs(native.report.checks[0].cosine - emulated) < 1e-3


def test_the_fp32_run_of_a_large_file_is_made_beside_the_pipeline(tmp_path, monkeypatch):
    """A model file of MIN_NODES nodes and more runs in a forked child while the pipeline
    converts it (the FP32 run was 3 s of a 100k-node convert): the same check, the parent
    runs only the converted model, and a prefetch for other inputs is not used."""
    import threading

    from mixprec import background
    from mixprec.runtimes.base import per_fit_scope
    if not sys.platform.startswith("linux"):
        pytest.skip("background jobs fork on Linux only")
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # threads other tests' frameworks left running
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 1000)
    path = tmp_path / "big.onnx"
    onnx.save(big_graph(1500), str(path))
    runs, forks = [], []
    real_run, real_start = onnx_numpy.NumpyRunner.run, background.start
    monkeypatch.setattr(onnx_numpy.NumpyRunner, "run", lambda self, feeds: runs.append(1) or real_run(self, feeds))

    def start(fn, what):
        job = real_start(fn, what)
        if job is not None:
            forks.append(what)
        return job
    monkeypatch.setattr(background, "start", start)
    converted = mix_precision.fit(str(path), config=MixedPrecisionConfig())
    assert forks == ["FP32 run of the output check", "onnx.checker of the converted model"]
    assert len(runs) == 1  # the converted model's run only
    monkeypatch.setenv("MIXPREC_BACKGROUND", "0")
    here = mix_precision.fit(str(path), config=MixedPrecisionConfig())
    assert len(forks) == 2 and len(runs) == 3
    assert here.report.checks == converted.report.checks
    monkeypatch.setenv("MIXPREC_BACKGROUND", "1")
    adapter, config = runtime.OnnxAdapter(), MixedPrecisionConfig()
    with per_fit_scope():
        loaded = adapter.load(str(path), config)
        adapter.prefetch_original(str(path), loaded, config)
        feeds = next(iter(adapter.candidate_inputs(str(path), loaded, config)))
        other = {name: value + 1 for name, value in feeds.items()}
        expected = real_run(onnx_numpy.NumpyRunner(onnx.load(str(path))), other)
        del runs[:]
        got = adapter.run_original(str(path), other)
        assert len(runs) == 1 and all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_a_failed_background_validation_is_the_error(tmp_path, monkeypatch):
    """onnx.checker of a large converted model runs in a child beside the output check; its
    failure is raised as a ConversionError, before the check's own result or error."""
    import threading

    from mixprec.errors import ConversionError
    if not sys.platform.startswith("linux"):
        pytest.skip("background jobs fork on Linux only")
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 1000)
    parent = os.getpid()

    def checker(proto):
        if os.getpid() != parent:  # the child's check fails, as onnx.checker would on a broken model
            raise ConversionError("the ONNX model fails onnx.checker: planted")
    monkeypatch.setattr(backend, "validate", checker)
    with pytest.raises(ConversionError, match="planted"):
        mix_precision.fit(big_graph(1500), config=MixedPrecisionConfig())
    monkeypatch.setattr(runtime.OnnxAdapter, "run_converted", lambda *a: 1 / 0)
    with pytest.raises(ConversionError, match="planted"):
        mix_precision.fit(big_graph(1500), config=MixedPrecisionConfig())


def _steps(runner):
    """What each step of a plan computes (the kernel objects aside)."""
    return [(direct, inputs, outputs, lows, freed) for direct, _, inputs, outputs, lows, freed in runner.plan]


def _converted_ir(model):
    ir = frontend.load(model) if isinstance(model, onnx.ModelProto) else frontend.load(str(model))
    build_pipeline(DEFAULT_PIPELINE).run(ir.graph)
    return ir


def _corpus_model(name):
    entry = next(e for e in registry.ENTRIES if e.name == name)
    missing = registry.missing_modules(entry)
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)} (pip install -r requirements.txt)")
    folder = registry.build(entry)
    with np.load(folder / "inputs.npz") as data:
        return folder / entry.model_file, {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", ["generated", "minilm-l6-onnx", "gpt2-onnx-ts", "llama-onnx-ts"])
def test_the_emitters_table_gives_the_plan_read_from_the_nodes(any_size, name):
    model, feeds = (big_graph(3000), None) if name == "generated" else _corpus_model(name)
    feeds = feeds or _feeds(model)
    table = NodeTable()
    proto, _ = backend.emit_legal(_converted_ir(model), table)
    assert table.covers(proto) and len(table.rows) == len(proto.graph.node) - table.start
    for row, node in zip(table.rows, proto.graph.node[table.start:]):
        assert row[:4] == (node.op_type, node.domain, tuple(node.input), tuple(node.output))
    written, read = onnx_numpy.NumpyRunner(proto, table), onnx_numpy.NumpyRunner(proto)
    assert _steps(written) == _steps(read)
    assert (written.kernels, written.direct) == (read.kernels, read.direct)
    assert any(step[3] for step in _steps(written))  # bf16 outputs are rounded
    assert onnx_numpy.suited(proto, table) == onnx_numpy.suited(proto)
    for mine, theirs in zip(written.run(feeds), read.run(feeds)):
        assert np.array_equal(mine, theirs, equal_nan=True)


def test_an_attribute_the_table_does_not_model_is_read_from_the_node(any_size):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    fills = [helper.make_node("ConstantOfShape", ["s"], [f"c{i}"], value=numpy_helper.from_array(
        np.array([float(i % 2 + 1)], np.float32))) for i in range(3)]
    adds = [helper.make_node("Add", ["x" if i == 0 else f"a{i - 1}", f"c{i}"], [f"a{i}" if i < 2 else "y"])
            for i in range(3)]
    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["s"]), *fills, *adds], "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    table = NodeTable()
    emitted, _ = backend.emit_legal(frontend.load(proto), table)
    assert [row[4] for row in table.rows if row[0] == "ConstantOfShape"] == [None, None, None]
    written, read = onnx_numpy.NumpyRunner(emitted, table), onnx_numpy.NumpyRunner(emitted)
    assert written.kernels == read.kernels == 4  # Shape, ConstantOfShape of 1 and of 2, Add
    feeds = {"x": np.arange(4, dtype=np.float32)}
    assert np.array_equal(written.run(feeds)[0], feeds["x"] + 4)


def test_an_opset_conversion_leaves_the_table_empty(any_size):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y],
                              [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")])
    ir = _converted_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    table = NodeTable()
    proto, notes = backend.emit_legal(ir, table)
    assert any("opset raised from 17 to 22" in n for n in notes)
    assert table.rows == [] and not table.covers(proto)


def test_the_check_of_a_large_fit_runs_the_emitters_table(monkeypatch):
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 1000)
    tables = []
    real = onnx_numpy.NumpyRunner.__init__

    def spy(self, proto, table=None):
        tables.append(table is not None and table.covers(proto))
        real(self, proto, table)
    monkeypatch.setattr(onnx_numpy.NumpyRunner, "__init__", spy)
    converted = mix_precision.fit(big_graph(1500), config=MixedPrecisionConfig())
    assert converted.report.checks[0].cosine > 0.999
    assert tables[-1] is True  # the converted model's runner; the FP32 one read its file's nodes


def test_the_fp32_run_of_a_large_file_reads_what_the_lowering_read(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_numpy, "MIN_NODES", 1000)
    monkeypatch.setenv("MIXPREC_BACKGROUND", "0")  # both runs here, where the spy sees them
    path = tmp_path / "big.onnx"
    path.write_bytes(big_graph(1500).SerializeToString())
    made = []
    real = onnx_numpy.NumpyRunner.__init__

    def spy(self, proto, table=None):
        made.append((table is not None and table.covers(proto), table is not None and table.rows[0][5] is None))
        real(self, proto, table)
        made[-1] += (_steps(self),)
    monkeypatch.setattr(onnx_numpy.NumpyRunner, "__init__", spy)
    converted = mix_precision.fit(str(path), config=MixedPrecisionConfig())
    assert converted.report.checks[0].cosine > 0.999
    (fp32_covered, fp32_read, fp32_steps), (low_covered, low_read, _) = made
    assert (fp32_covered, fp32_read) == (True, True)  # the lowering's table: types left to the proto
    assert (low_covered, low_read) == (True, False)  # the emitter's table: types as written
    monkeypatch.setattr(onnx_numpy.NumpyRunner, "__init__", real)
    assert fp32_steps == _steps(onnx_numpy.NumpyRunner(onnx.load(str(path))))


@pytest.mark.parametrize("name", ["minilm-l6-onnx", "gpt2-onnx-ts", "t5-onnx-ts", "converted"])
def test_the_lowerings_table_gives_the_plan_read_from_the_nodes(any_size, name, tmp_path):
    if name == "converted":  # a bf16 model: its declared low types come from the proto
        model = big_graph(600)
        path, feeds = tmp_path / "converted.onnx", _feeds(model)
        mix_precision.fit(model, config=MixedPrecisionConfig(check_outputs=False)).save(path)
    else:
        path, feeds = _corpus_model(name)
    table = NodeTable()
    frontend.load(str(path), table=table)
    proto = frontend.read_file(path)
    assert table.covers(proto) and table.start == 0
    assert any(row[0] == "Constant" and row[4] is None for row in table.rows) or name in ("minilm-l6-onnx",
                                                                                          "converted")
    assert onnx_numpy.suited(proto) is None
    onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    read, recorded = onnx_numpy.NumpyRunner(proto), onnx_numpy.NumpyRunner(proto, table)
    assert _steps(recorded) == _steps(read) and recorded.kernels == read.kernels
    assert any(step[3] for step in _steps(read)) == (name == "converted")  # bf16 outputs rounded
    for mine, theirs in zip(recorded.run(feeds), read.run(feeds)):
        assert np.array_equal(mine, theirs, equal_nan=True)
