"""TensorFlow end to end: ``mix_precision.fit`` on a Keras CNN, a Keras transformer block
and a tf.function with a while loop and a cond gives runnable BF16 graphs whose outputs
match FP32 (cosine computed here); matmul-like ops run in BF16, Softmax and the
LayerNorm/BatchNorm statistics stay FP32 as the policy says; BF16 weights are bf16
Consts (no Cast of a Const left); saved .pb files and SavedModels reload in a fresh
interpreter without mixprec and reproduce the outputs; the FP32 and the converted graph
load side by side; ops without a CPU bf16 kernel stay FP32; the CLI converts a .pb."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="the TensorFlow end-to-end tests need tensorflow")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from tests.fresh_process import BLOCK_MIXPREC  # noqa: E402
from mixprec.runtimes.tensorflow import TensorflowAdapter, has_cpu_kernel, make_sample_inputs  # noqa: E402
from mixprec.backends import tensorflow as backend  # noqa: E402
from mixprec.cli import main as cli_main  # noqa: E402
from mixprec.errors import ConfigError, ModelLoadError  # noqa: E402
from mixprec.frontends import tensorflow as frontend  # noqa: E402
from mixprec.ir import DType, verify  # noqa: E402
from mixprec.mix_precision import ConvertedModel  # noqa: E402
from tests import tf_models  # noqa: E402

MIN_COSINE = 0.99
BF16 = tf.bfloat16.as_datatype_enum
LOW_OPS = {"Conv2D", "MatMul", "BatchMatMulV2", "Einsum"}

# Runs in a fresh interpreter (python -I, cwd a temp dir) where mixprec cannot be
# imported: loads each saved .pb (import_graph_def) and SavedModel (serving_default),
# runs them on the given inputs and pickles the outputs.
FRESH_PROCESS = BLOCK_MIXPREC + textwrap.dedent("""
    import os, pickle, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

    import tensorflow as tf

    def run_pb(case):
        graph_def = tf.compat.v1.GraphDef()
        with open(case["pb"], "rb") as handle:
            graph_def.ParseFromString(handle.read())
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        fn = wrapped.prune([wrapped.graph.get_tensor_by_name(n) for n in case["inputs"]],
                           [wrapped.graph.get_tensor_by_name(n) for n in case["outputs"]])
        return [t.numpy() for t in fn(*[tf.constant(a) for a in case["arrays"]])]

    def run_saved_model(case):
        loaded = tf.saved_model.load(case["saved_model"])
        result = loaded.signatures["serving_default"](**{k: tf.constant(a) for k, a in
                                                         zip(case["keys"], case["arrays"])})
        return {k: v.numpy() for k, v in result.items()}

    with open(sys.argv[1], "rb") as handle:
        cases = pickle.load(handle)
    results = {name: {"pb": run_pb(case), "saved_model": run_saved_model(case)} for name, case in cases.items()}
    assert not any(m.split(".")[0] == "mixprec" for m in sys.modules), "mixprec was imported"
    with open(sys.argv[2], "wb") as handle:
        pickle.dump(results, handle)
    print("reloaded", len(results))
""")


@dataclass
class Case:
    """One model converted once, with its FP32 and converted outputs on ``inputs``."""
    name: str
    model: Any
    inputs: list[np.ndarray]
    fp32: list[np.ndarray]
    converted: ConvertedModel
    outputs: list[np.ndarray]


def _build(name: str) -> Case:
    make, data = {
        "cnn": (tf_models.make_cnn, lambda: [tf_models.images(4, seed=3)]),
        "transformer": (tf_models.make_transformer, lambda: [tf_models.tokens(2, seed=3)]),
        "control_flow": (tf_models.make_control_flow, lambda: [tf_models.tokens(1, seed=3)[0]]),
    }[name]
    model, inputs = make(), data()
    adapter = TensorflowAdapter()
    fp32 = adapter.run_original(model, inputs)
    converted = mix_precision.fit(model, MixedPrecisionConfig(sample_inputs=inputs))
    outputs = adapter.run_converted(converted.model, inputs, MixedPrecisionConfig())
    return Case(name, model, inputs, fp32, converted, outputs)


CASES: dict[str, Case] = {}


@pytest.fixture(scope="module", params=["cnn", "transformer", "control_flow"])
def case(request) -> Case:
    if request.param not in CASES:
        CASES[request.param] = _build(request.param)
    return CASES[request.param]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def _nodes(case: Case, op: str) -> list:
    return [n for n in case.converted.ir.graph.all_nodes() if n.op == op]


# ------------------------------------------------------------------ every model ---
def test_converted_graph_runs_and_matches_fp32(case):
    assert len(case.outputs) == len(case.fp32)
    for got, want in zip(case.outputs, case.fp32):
        assert got.shape == want.shape and np.isfinite(got).all()
        assert np.std(want) > 1e-3, "degenerate reference output: the test could not fail"
        assert _cosine(got, want) >= MIN_COSINE
    assert all(check.cosine >= MIN_COSINE for check in case.converted.report.checks)
    verify(case.converted.ir.graph)


def test_matmul_like_ops_are_bf16(case):
    low = [n for n in case.converted.ir.graph.all_nodes() if n.op in LOW_OPS]
    assert low
    for node in low:
        assert node.meta["precision"] == "bf16", (node.name, node.meta)
        assert node.outputs[0].dtype == DType.BFLOAT16
    emitted = _emitted_nodes(case.converted.model.graph_def)
    for node in low:
        assert emitted[node.outputs[0].name.rsplit(frontend.BODY_SEP, 1)[-1]].attr["T"].type == BF16


def _emitted_nodes(graph_def) -> dict:
    """NodeDefs of the main graph and of every library function, by (local) name."""
    nodes = {n.name: n for f in graph_def.library.function for n in f.node_def}
    nodes.update({n.name: n for n in graph_def.node})
    return nodes


def test_weights_are_bf16_consts_and_no_const_is_cast(case):
    graph_def = case.converted.model.graph_def
    consts = {n.name: n for n in graph_def.node if n.op == "Const"}
    assert any(n.attr["dtype"].type == BF16 and len(tf.make_ndarray(n.attr["value"].tensor).shape) >= 2
               for n in consts.values())
    for node in graph_def.node:
        if node.op == "Cast":
            assert frontend.parse_input(node.input[0])[0] not in consts, node.name


def test_fp32_and_converted_graphs_in_one_process(case, tmp_path):
    """The FP32 frozen graph and the converted one (and both again from .pb files) load
    and run side by side."""
    original = frontend.read_source(case.model)
    fp32_model = backend.GraphModel(original.graph_def, original.inputs, original.outputs, original.input_keys,
                                    original.output_keys, case.converted.model.input_dtypes,
                                    case.converted.model.input_shapes)
    path = case.converted.save(tmp_path / "converted.pb")
    reloaded = TensorflowAdapter().native(path)
    for run in (fp32_model, case.converted.model, reloaded, fp32_model):
        outputs = [t.numpy() for t in run(*case.inputs)]
        for got, want in zip(outputs, case.fp32):
            assert _cosine(got.astype(np.float32), want) >= MIN_COSINE


# ----------------------------------------------------------------- per model ---
def test_cnn_policy():
    cnn = CASES.get("cnn") or _build("cnn")
    nodes = list(cnn.converted.ir.graph.all_nodes())
    assert {n.meta.get("precision") for n in nodes if n.op in ("Conv2D", "MatMul", "MaxPool", "Relu")} == {"bf16"}
    softmax = [n for n in nodes if n.op == "Softmax"]
    assert softmax and all(n.meta["precision"] == "f32" and n.outputs[0].dtype == DType.FLOAT32 for n in softmax)
    # the BatchNorm statistics (Rsqrt of the variance) and the global average (Mean) stay FP32
    assert all(n.outputs[0].dtype == DType.FLOAT32 for n in nodes if n.op in ("Rsqrt", "Mean"))
    probs = cnn.fp32[0]
    assert probs.max() < 0.9 and np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5), "softmax is degenerate"


def test_transformer_policy():
    block = CASES.get("transformer") or _build("transformer")
    nodes = list(block.converted.ir.graph.all_nodes())
    assert {n.op for n in nodes} >= {"BatchMatMulV2", "Einsum", "Softmax", "Mean", "SquaredDifference", "Rsqrt"}
    for node in nodes:
        if node.op in ("Softmax", "Mean", "SquaredDifference", "Rsqrt"):
            assert node.meta["precision"] == "f32", (node.name, node.meta)
            assert node.outputs[0].dtype == DType.FLOAT32


def test_control_flow_bodies_are_painted_like_the_main_graph():
    """Regression: functional While/If bodies stayed untouched (0 bf16 nodes in them).
    Now they are IR subgraphs painted like the main graph: the loop body's MatMul and the
    Tanh after it run in bf16 and its weight is a bf16 Const; the loop-carried values stay
    FP32 on the body's boundary, so the While's T, the body's and the cond's signatures and
    the body's outputs agree; functions are renamed so both graphs load side by side."""
    flow = CASES.get("control_flow") or _build("control_flow")
    graph = flow.converted.ir.graph
    (loop,) = [n for n in graph.nodes if n.op == "While"]
    assert all(v.dtype != DType.BFLOAT16 for v in loop.outputs)
    assert [n.meta["precision"] for n in graph.nodes if n.op == "MatMul"] == ["bf16"]
    body = loop.attrs["body"]
    assert {n.op: n.meta["precision"] for n in body.nodes if n.op in ("MatMul", "Tanh")} == \
        {"MatMul": "bf16", "Tanh": "bf16"}
    assert [v.dtype for v in body.inputs] == [v.dtype for v in body.outputs] == [v.dtype for v in loop.inputs]
    graph_def = flow.converted.model.graph_def
    functions = {f.signature.name: f for f in graph_def.library.function}
    assert all("_mp" in name for name in functions)
    (while_node,) = [n for n in graph_def.node if n.op == "While"]
    body_def, cond_def = functions[while_node.attr["body"].func.name], functions[while_node.attr["cond"].func.name]
    carried = list(while_node.attr["T"].list.type)
    assert [a.type for a in body_def.signature.input_arg] == [a.type for a in body_def.signature.output_arg] == carried
    assert [a.type for a in cond_def.signature.input_arg] == carried
    matmul = [n for n in body_def.node_def if n.op == "MatMul"]
    assert len(matmul) == 1 and matmul[0].attr["T"].type == BF16
    low = [n.name for n in body_def.node_def if any(k in n.attr and n.attr[k].type == BF16 for k in ("T", "DstT"))]
    assert len(low) >= 3, low  # the weight's and the state's casts, MatMul, Tanh


# ------------------------------------------------------------------ saving ---
def test_saved_pb_and_saved_model_reload_without_mixprec(tmp_path):
    """Every converted model saved as .pb and as SavedModel reloads in a fresh python -I
    process where mixprec cannot be imported, and computes what the in-process graph does."""
    cases = {}
    for name in ("cnn", "transformer", "control_flow"):
        converted = (CASES.get(name) or CASES.setdefault(name, _build(name)))
        model = converted.converted.model
        pb = converted.converted.save(tmp_path / f"{name}.pb")
        saved_model = converted.converted.save(tmp_path / f"{name}_saved")
        assert (Path(saved_model) / "saved_model.pb").exists()
        cases[name] = {"pb": pb, "saved_model": saved_model, "inputs": model.inputs, "outputs": model.outputs,
                       "keys": model.input_keys, "arrays": converted.inputs}
    spec, result = tmp_path / "cases.pkl", tmp_path / "results.pkl"
    spec.write_bytes(pickle.dumps(cases))
    run = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS, str(spec), str(result)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "reloaded 3" in run.stdout
    results = pickle.loads(result.read_bytes())
    for name, got in results.items():
        case = CASES[name]
        keys = case.converted.model.output_keys
        for index, want in enumerate(case.outputs):
            np.testing.assert_array_equal(got["pb"][index].astype(np.float32), want)
            np.testing.assert_allclose(got["saved_model"][keys[index]].astype(np.float32), want, rtol=1e-6, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files were left behind"


def test_save_refuses_the_input_path_and_bad_suffixes(tmp_path):
    flow = CASES.get("control_flow") or _build("control_flow")
    source = tmp_path / "model.pb"
    backend.save(backend.graph_model(frontend.load(flow.model)), source)
    before = source.read_bytes()
    converted = mix_precision.fit(str(source), MixedPrecisionConfig(sample_inputs=flow.inputs))
    with pytest.raises(ConfigError, match="input model"):
        converted.save(source)
    assert source.read_bytes() == before
    with pytest.raises(ConfigError, match=".pb file or a directory"):
        converted.save(tmp_path / "model.onnx")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a SavedModel"):
        converted.save(tmp_path / "precious")
    out = converted.save(tmp_path / "again")
    assert converted.save(tmp_path / "again") == out  # an existing SavedModel is replaced


def test_fp32_and_converted_saved_models_in_one_process(tmp_path):
    """The FP32 model's own SavedModel and the converted SavedModel load side by side."""
    flow = CASES.get("control_flow") or _build("control_flow")
    module = tf.Module()
    module.serve, module.weights = flow.model, list(flow.model.variables_)
    tf.saved_model.save(module, str(tmp_path / "fp32"), signatures={"serving_default": flow.model})
    converted = mix_precision.fit(str(tmp_path / "fp32"), MixedPrecisionConfig(sample_inputs=flow.inputs))
    converted.save(tmp_path / "bf16")
    fp32 = tf.saved_model.load(str(tmp_path / "fp32")).signatures["serving_default"]
    bf16 = tf.saved_model.load(str(tmp_path / "bf16")).signatures["serving_default"]
    (x,) = flow.inputs
    want, got = fp32(x=tf.constant(x)), bf16(x=tf.constant(x))
    assert set(got) == set(want) == {"mean", "out"}
    for key in want:
        assert _cosine(got[key].numpy(), want[key].numpy()) >= MIN_COSINE


def test_multi_input_keras_model_with_dict_outputs(tmp_path):
    """Float and int inputs named after the Keras inputs, dict outputs by key; generated
    sample inputs; keep_io_types=False takes and returns bf16 tensors."""
    import keras
    keras.utils.set_random_seed(0)
    features = keras.Input((8,), name="features")
    ids = keras.Input((3,), dtype="int32", name="ids")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(10, 4)(ids))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([features, embedded]))
    model = keras.Model([features, ids], {"logits": keras.layers.Dense(5)(hidden),
                                          "prob": keras.layers.Dense(2, activation="softmax")(hidden)})
    converted = mix_precision.fit(model)
    assert converted.model.input_keys == ["features", "ids"] and converted.model.output_keys == ["logits", "prob"]
    assert [c.output for c in converted.report.checks] == ["logits", "prob"]
    assert all(c.cosine >= MIN_COSINE for c in converted.report.checks)
    converted.save(tmp_path / "two")
    signature = tf.saved_model.load(str(tmp_path / "two")).signatures["serving_default"]
    assert set(signature.structured_input_signature[1]) == {"features", "ids"}
    low_io = mix_precision.fit(model, MixedPrecisionConfig(keep_io_types=False))
    assert low_io.model.input_dtypes == [tf.bfloat16, tf.int32]
    assert all(c.cosine >= MIN_COSINE for c in low_io.report.checks)


# --------------------------------------------------------------- adapter bits ---
def test_ops_without_a_cpu_bf16_kernel_stay_fp32():
    """Rint has no CPU bf16 kernel: between two bf16 MatMuls it would be painted bf16
    (clear op) but the runtime limits keep it FP32, and the model runs."""
    assert has_cpu_kernel("Conv2D", ("T",), BF16) and not has_cpu_kernel("Rint", ("T",), BF16)
    rng = np.random.default_rng(0)
    w1, w2 = (tf.constant(rng.standard_normal((8, 8)).astype(np.float32)) for _ in range(2))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def f(x):
        return tf.matmul(tf.math.rint(tf.matmul(x, w1) * 4.0), w2)

    x = rng.standard_normal((3, 8)).astype(np.float32)
    converted = mix_precision.fit(f, MixedPrecisionConfig(sample_inputs=[x], min_cosine=0.9))
    (rint,) = [n for n in converted.ir.graph.nodes if n.op == "Rint"]
    assert rint.meta["precision"] == "f32" and "kernel" in rint.meta["reason"]
    assert converted.report.checks[0].cosine >= 0.99


def test_tf_function_without_signature_takes_example_inputs():
    @tf.function
    def f(x):
        return tf.nn.softmax(tf.matmul(x, tf.ones((4, 3))))

    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match="input_signature or pass example inputs"):
        mix_precision.fit(f)
    converted = mix_precision.fit(f, MixedPrecisionConfig(example_inputs=(x,)))
    assert converted.ir.graph.inputs[0].shape == (None, 4)
    assert converted.report.checks[0].cosine >= MIN_COSINE


def test_generated_sample_inputs():
    ir_model = frontend.load(tf_models.make_cnn())
    (images,) = make_sample_inputs(ir_model)
    assert images.shape == (1,) + tf_models.IMAGE and images.dtype == np.float32
    converted = mix_precision.fit(tf_models.make_cnn())  # sample inputs generated from the input specs
    assert converted.report.checks[0].cosine >= MIN_COSINE


def test_bad_model_file_is_a_model_load_error(tmp_path):
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\x08\x96\x01garbage that is not a graph")
    with pytest.raises(ModelLoadError):
        mix_precision.fit(str(bad))


def test_cli_converts_a_pb(tmp_path, capsys):
    flow = CASES.get("control_flow") or _build("control_flow")
    source = tmp_path / "model.pb"
    backend.save(backend.graph_model(frontend.load(flow.model)), source)
    out = tmp_path / "out.pb"
    assert cli_main(["convert", str(source), "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    assert "MatMul" in capsys.readouterr().out
    reloaded = TensorflowAdapter().native(out)
    got = [t.numpy() for t in reloaded(*flow.inputs)]
    for a, b in zip(got, flow.outputs):
        np.testing.assert_array_equal(a.astype(np.float32), b)
    bad = tmp_path / "bad.pb"
    bad.write_text("not a graph")
    assert cli_main(["convert", str(bad), "-o", str(tmp_path / "x.pb")]) == 2


# ------------------------------------------------- issue 7: models as users have them ---
class _SubclassedNet(__import__("keras").Model):
    """A subclassed Keras model (no model.input, ever): conv -> relu -> pool -> dense."""

    def __init__(self) -> None:
        import keras
        super().__init__(name="p_net")
        init = keras.initializers.HeNormal(seed=0)
        self.conv = keras.layers.Conv2D(8, 3, kernel_initializer=init)
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=0))

    def call(self, x):
        return self.head(self.pool(tf.nn.relu(self.conv(x))))


@pytest.mark.parametrize("option", ["example_inputs", "sample_inputs"])
def test_subclassed_keras_model_is_checked(option):
    """Regression: the check called model.input, which a subclassed model never has ("The
    layer p_net has never been called"): the check was skipped. Now it runs and matches."""
    x = tf_models.images(2, seed=4)
    converted = mix_precision.fit(_SubclassedNet(), MixedPrecisionConfig(**{option: [x]}))
    assert not any("skipped" in note for note in converted.report.notes), converted.report.notes
    assert [c.output for c in converted.report.checks] == ["output_0"]
    assert converted.report.checks[0].cosine >= MIN_COSINE
    assert [n.meta["precision"] for n in converted.ir.graph.nodes if n.op == "Conv2D"] == ["bf16"]


def test_any_size_image_saved_model_gets_a_224_sample(tmp_path, capsys):
    """Regression: a SavedModel with input (None, None, None, 3) got an 8x8 sample input,
    smaller than its receptive field (29 px): the FP32 model failed and the check was
    skipped. Now the sample is 1x224x224x3 and the CLI's default path checks the outputs."""
    model = tf_models.make_fully_convolutional()
    model.export(str(tmp_path / "fcn"), verbose=False)
    ir_model = frontend.load(tmp_path / "fcn")
    assert ir_model.graph.inputs[0].shape == (None, None, None, 3)
    adapter = TensorflowAdapter()
    adapter.load(str(tmp_path / "fcn"), MixedPrecisionConfig())
    inputs, reference = mix_precision.reference_run(adapter, str(tmp_path / "fcn"), ir_model, MixedPrecisionConfig())
    assert [a.shape for a in inputs] == [(1, 224, 224, 3)]
    assert np.std(reference[0]) > 1e-2
    out = tmp_path / "fcn_bf16"
    assert cli_main(["convert", str(tmp_path / "fcn"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "output output_0: cosine" in text and "skipped" not in text, text
    shapes = mix_precision.fit(str(tmp_path / "fcn"), MixedPrecisionConfig(input_shapes={"image": [2, 64, 48, 3]}))
    assert shapes.report.checks[0].cosine >= MIN_COSINE


def test_degenerate_fp32_outputs_are_not_a_reference():
    """An FP32 output that is the identity of an empty reduction (max over an empty crop
    is -FLT_MAX) matches a converted model just as degenerate with cosine 1.0: such a
    sample is rejected and the next size of the ladder (320, whose crop is not empty) used."""
    weight = tf.constant(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
    def crop_max(image):
        features = tf.matmul(tf.reshape(image, [-1, 3]), weight)
        features = tf.reshape(features, tf.concat([tf.shape(image)[:3], [4]], 0))
        return tf.reduce_max(features[:, 240:, 240:, :], axis=[1, 2])

    adapter = TensorflowAdapter()
    config = MixedPrecisionConfig()
    ir_model = adapter.load(crop_max, config)
    inputs, reference = mix_precision.reference_run(adapter, crop_max, ir_model, config)
    assert [a.shape for a in inputs] == [(1, 320, 320, 3)]
    assert np.abs(reference[0]).max() < 1e3
    converted = mix_precision.fit(crop_max)
    assert converted.report.checks[0].max_abs_error < 1.0


def _two_head_graph_def() -> tuple[Any, list[np.ndarray]]:
    """A frozen GraphDef with two Placeholders and three sinks (logits, aux, a debug sum)."""
    rng = np.random.default_rng(0)
    w1, w2 = (tf.constant(rng.standard_normal((8, 8)).astype(np.float32) / 3) for _ in range(2))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x"),
                                  tf.TensorSpec([None, 8], tf.float32, name="y")])
    def heads(x, y):
        hidden = tf.nn.relu(tf.matmul(x, w1) + y)
        return (tf.identity(tf.matmul(hidden, w2), name="logits"), tf.identity(tf.tanh(hidden), name="aux"),
                tf.identity(tf.reduce_sum(x), name="debug"))

    graph_def = frontend.read_source(heads).graph_def
    return graph_def, [rng.standard_normal((2, 8)).astype(np.float32) for _ in range(2)]


def test_fit_takes_a_graph_def_object():
    """Regression: fit(graph_def) raised TypeError: 'GraphDef' object is not callable
    (the FP32 reference run called it)."""
    graph_def, arrays = _two_head_graph_def()
    converted = mix_precision.fit(graph_def)
    assert len(converted.report.checks) == 3 and all(c.cosine >= MIN_COSINE for c in converted.report.checks)
    assert [n.meta["precision"] for n in converted.ir.graph.nodes if n.op == "MatMul"] == ["bf16", "bf16"]


def test_graph_outputs_and_inputs_are_chosen_by_config(tmp_path):
    """Regression: every sink of a .pb became an output. config.outputs (INC spelling,
    node or tensor names) picks them, in that order, and prunes what they do not need;
    config.inputs names the Placeholders; bad names are ConfigErrors naming the node."""
    graph_def, arrays = _two_head_graph_def()
    path = tmp_path / "heads.pb"
    path.write_bytes(graph_def.SerializeToString())
    everything = frontend.load(path)
    assert len(everything.graph.outputs) == 3
    config = MixedPrecisionConfig(inputs=["x:0", "y"], outputs=["aux", "logits:0"], sample_inputs=arrays)
    for model in (graph_def, str(path)):
        converted = mix_precision.fit(model, config)
        assert converted.model.output_keys == ["aux", "logits"]
        assert converted.model.input_keys == ["x", "y"]
        assert not [n for n in converted.ir.graph.nodes if n.op == "Sum"]  # pruned with its sink
        assert [c.output for c in converted.report.checks] == ["aux", "logits"]
        assert all(c.cosine >= MIN_COSINE for c in converted.report.checks)
    out = tmp_path / "heads_bf16.pb"
    mix_precision.fit(str(path), config).save(out)
    assert len(frontend.load(out).graph.outputs) == 2
    with pytest.raises(ConfigError, match="no node 'logit'.*logits"):
        mix_precision.fit(str(path), MixedPrecisionConfig(outputs=["logit"]))
    with pytest.raises(ConfigError, match="not a Placeholder"):
        mix_precision.fit(str(path), MixedPrecisionConfig(inputs=["aux"], outputs=["logits"]))
    with pytest.raises(ConfigError, match="GraphDef"):
        mix_precision.fit(tf_models.make_cnn(), MixedPrecisionConfig(outputs=["logits"]))


def test_list_output_model_keeps_signature_names(tmp_path):
    """Regression: a list-output model's SavedModel named its outputs input_0, input_1.
    Now they are output_0, output_1, as Keras's own export names them."""
    import keras
    keras.utils.set_random_seed(0)
    features = keras.Input((4,), name="features")
    model = keras.Model(features, [keras.layers.Dense(3)(features), keras.layers.Dense(2)(features)])
    model.export(str(tmp_path / "keras_export"), verbose=False)
    want = tf.saved_model.load(str(tmp_path / "keras_export")).signatures["serving_default"].structured_outputs
    for source in (model, str(tmp_path / "keras_export")):
        converted = mix_precision.fit(source)
        converted.save(tmp_path / "converted")
        got = tf.saved_model.load(str(tmp_path / "converted")).signatures["serving_default"].structured_outputs
        assert sorted(got) == sorted(want) == ["output_0", "output_1"]
        assert [c.output for c in converted.report.checks] == ["output_0", "output_1"]


def test_tensor_list_handles_are_never_cast():
    """Regression: a TensorList handle (DT_VARIANT) was typed float, painted and cast, and
    TensorListStack got element_dtype=bf16 for a list of float32 ("Trying to read from list
    with wrong element dtype" / "was passed variant ... expected bfloat16"). Now list ops
    keep their element dtype, handles are never cast, and the MatMuls around run in bf16."""
    model = tf_models.make_tensor_array()
    x = tf_models.tokens(1, seed=2)[0]
    converted = mix_precision.fit(model, MixedPrecisionConfig(sample_inputs=[x]))
    assert converted.report.checks[0].cosine >= MIN_COSINE
    graph = converted.ir.graph
    assert [n.meta["precision"] for n in graph.nodes if n.op == "MatMul"] == ["bf16"] * 3
    lists = [n for n in graph.all_nodes() if n.op.startswith("TensorList")]
    assert {n.op for n in lists} >= {"TensorListReserve", "TensorListSetItem", "TensorListStack"}
    for node in lists:
        assert all(v.dtype != DType.BFLOAT16 for v in node.outputs), node.name
    emitted = {n.name: n for n in converted.model.graph_def.node}
    variant = tf.variant.as_datatype_enum
    for node in converted.model.graph_def.node:
        if node.op == "Cast":
            assert node.attr["SrcT"].type != variant and node.attr["DstT"].type != variant, node.name
            producer = emitted[frontend.parse_input(node.input[0])[0]]
            assert not (producer.op.startswith("TensorList") and producer.op != "TensorListStack"), node.name
        if node.op.startswith("TensorList") and "element_dtype" in node.attr:
            assert node.attr["element_dtype"].type == tf.float32.as_datatype_enum, node.name


def test_batch_norm_arithmetic_is_folded_into_bf16_constants():
    """Regression: the frozen Keras BatchNorm's scale/offset arithmetic on constants
    (Rsqrt(var + eps) * gamma, beta - mean * scale) stayed FP32 ops in the saved graph,
    and each of their results was cast to bf16 on every call. Now those subgraphs are
    evaluated at load time: the graph has no Rsqrt/Sub left, the BatchNorm's Mul/AddV2
    read bf16 Consts, and the only casts are those of the data: the input, and around the
    FP32 global average (Mean) and Softmax."""
    cnn = CASES.get("cnn") or _build("cnn")
    graph_def = cnn.converted.model.graph_def
    ops = [n.op for n in graph_def.node]
    assert "Rsqrt" not in ops and "Sub" not in ops
    consts = {n.name: n for n in graph_def.node if n.op == "Const"}
    norm = [n for n in graph_def.node if n.op in ("Mul", "AddV2") and "batch_normalization" in n.name]
    assert len(norm) == 4
    for node in norm:
        assert node.attr["T"].type == BF16, node.name
        assert any(frontend.parse_input(i)[0] in consts and
                   consts[frontend.parse_input(i)[0]].attr["dtype"].type == BF16 for i in node.input), node.name
    assert ops.count("Cast") == 4
    assert cnn.converted.report.checks[0].cosine >= MIN_COSINE


def test_fold_constants_keeps_big_and_stateful_values_as_ops():
    """fold_constants evaluates constant-only subgraphs with TF, but a Fill that makes a
    large tensor from a small shape, and a random op, stay ops; the graph computes the same."""
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def f(x):
        scale = tf.math.rsqrt(tf.constant([4.0, 9.0, 16.0, 25.0]) + 1e-3) * 2.0
        big = tf.fill([1024, 1024], 0.5)
        noise = tf.random.uniform([4])
        return x * scale + 0.0 * noise, tf.reduce_sum(big * x[0, 0])

    source = frontend.read_source(f)
    ops = {n.op for n in source.graph_def.node}
    assert "Rsqrt" not in ops and "Fill" in ops and "RandomUniform" in ops
    x = np.ones((2, 4), np.float32)
    got = backend.GraphModel(source.graph_def, source.inputs, source.outputs, source.input_keys,
                             source.output_keys, [tf.float32], [(None, 4)])(x)[0].numpy()
    np.testing.assert_allclose(got, f(x)[0].numpy(), rtol=1e-6)


def test_custom_gradient_ops_save_as_saved_model(tmp_path):
    """Regression (EfficientNet): Keras's swish is a tf.custom_gradient, frozen as an
    IdentityN with _gradient_op_type naming a gradient registered in this process only;
    saving the converted graph as a SavedModel traced that FP32 gradient on bf16 ops and
    failed ("Input 'y' of 'Mul' Op has type float32 that does not match type bfloat16").
    The attribute is not written; the SavedModel saves, reloads and matches."""
    import keras
    keras.utils.set_random_seed(0)
    features = keras.Input((16,), name="features")
    hidden = keras.layers.Dense(32, activation="swish")(keras.layers.Dense(32)(features))
    model = keras.Model(features, keras.layers.Dense(4)(hidden))
    assert any("_gradient_op_type" in n.attr for n in frontend.read_source(model).graph_def.node)
    converted = mix_precision.fit(model)
    assert not any("_gradient_op_type" in n.attr for n in converted.model.graph_def.node)
    converted.save(tmp_path / "swish")
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    got = tf.saved_model.load(str(tmp_path / "swish")).signatures["serving_default"](features=tf.constant(x))
    assert _cosine(got["output_0"].numpy(), model(x).numpy()) >= MIN_COSINE
