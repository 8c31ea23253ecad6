"""ONNX end to end (issue 3): exported models convert into checker-clean BF16 models whose
outputs match FP32 under the reference evaluator, with allow ops in BF16, nothing left to
fold, and re-conversion a no-op; FP16 output always runs in onnxruntime and uses no more
casts than onnxconverter-common."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="ONNX end-to-end tests need onnx")
pytest.importorskip("onnxruntime", reason="ONNX end-to-end tests need onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.runtimes.onnx import run_onnxruntime, run_reference  # noqa: E402
from mixprec.errors import ConversionError  # noqa: E402
from mixprec.ir import DType  # noqa: E402
from mixprec.ir.cast import cast_target, is_cast  # noqa: E402
from mixprec.ir.dtypes import holds_exactly  # noqa: E402
from mixprec.passes.policies import load_policy  # noqa: E402
from tests import onnx_models  # noqa: E402

CLASSIFIERS = {"torch_cnn", "tf_cnn"}


def if_loop_model() -> "onnx.ModelProto":
    """MatMul work inside both If branches and a Loop body, reading outer-scope weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32) / 3, "w")
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t_out"]),
                                helper.make_node("Relu", ["t_out"], ["t_relu"])], "then_b", [],
                               [helper.make_tensor_value_info("t_relu", TensorProto.FLOAT, [2, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e_out"])], "else_b", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 8])])
    body = helper.make_graph(
        [helper.make_node("MatMul", ["acc_in", "w"], ["mm"]), helper.make_node("Tanh", ["mm"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["acc_out"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 8]),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [2, 8])])
    nodes = [helper.make_node("If", ["c"], ["branch"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Loop", ["trip", "c", "branch"], ["final", "scans"], body=body),
             helper.make_node("Softmax", ["final"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "if_loop",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
                               helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("trip", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 8]),
                               helper.make_tensor_value_info("scans", TensorProto.FLOAT, [None, 2, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _model(name):
    if name == "if_loop":
        proto = if_loop_model()
        rng = np.random.default_rng(1)
        return proto, {"x": rng.standard_normal((2, 8)).astype(np.float32), "c": np.array(True),
                       "trip": np.array(3, np.int64)}
    proto = getattr(onnx_models, name)()
    return proto, onnx_models.feeds(name, proto)


MODELS = ["torch_cnn", "torch_transformer", "torch_shape_resize", "tf_cnn", "if_loop"]


@pytest.fixture(scope="module", params=MODELS)
def converted(request):
    proto, feeds = _model(request.param)
    result = mix_precision.fit(proto, config=MixedPrecisionConfig(sample_inputs=feeds))
    return request.param, proto, feeds, result


def test_converted_model_passes_the_full_checker_at_an_opset_that_allows_bf16(converted):
    name, proto, feeds, result = converted
    onnx.checker.check_model(result.model, full_check=True)
    opset = max(o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx"))
    has_bf16_conv = any(n.op in ("Conv", "MaxPool", "AveragePool") and n.meta.get("precision") == "bf16"
                        for n in result.ir.graph.all_nodes())
    assert opset >= 22 or not has_bf16_conv


def test_bf16_output_matches_fp32_under_the_reference_evaluator(converted):
    name, proto, feeds, result = converted
    expected = run_onnxruntime(proto, feeds)
    got = run_reference(result.model, feeds)
    for ref, out in zip(expected, got):
        a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine >= 0.99, (name, cosine)
        if name in CLASSIFIERS:
            assert (ref.argmax(axis=1) == out.argmax(axis=1)).all()
    assert result.report.checks and all(c.cosine >= 0.99 for c in result.report.checks)


def test_allow_ops_are_bf16_and_every_node_is_explained(converted):
    name, proto, feeds, result = converted
    policy = load_policy("onnx")
    lowered = 0
    for node in result.ir.graph.all_nodes():
        assert node.meta.get("reason"), f"{name}: {node.name} has no reason"
        floats = [v for v in node.inputs if v is not None and v.dtype.is_float]
        if policy.base_category(node.qualified_op) == "allow" and floats:
            pinned = [i for i, v in enumerate(node.inputs) if v is not None and policy.is_pinned(node.op, i)]
            assert node.meta["precision"] == "bf16", (name, node.name, node.meta)
            assert all(v.dtype == DType.BFLOAT16 for i, v in enumerate(node.inputs)
                       if v is not None and v.dtype.is_float and i not in pinned)
            lowered += 1
    assert lowered >= 1


def test_no_cast_left_that_a_pass_should_have_folded(converted):
    name, proto, feeds, result = converted
    graph = result.ir.graph
    interface = {id(v) for g in graph.all_graphs() for v in g.outputs}
    for node in graph.all_nodes():
        if not is_cast(node) or id(node.outputs[0]) in interface:
            continue
        src = node.inputs[0]
        assert src.dtype != cast_target(node), f"{name}: {node.name} casts to its own dtype"
        inner = src.producer
        if inner is not None and is_cast(inner):
            assert not holds_exactly(inner.inputs[0].dtype, src.dtype), f"{name}: {node.name} chain"
        assert node.outputs[0].num_uses, f"{name}: dead cast {node.name}"


def test_converting_the_converted_model_again_changes_nothing(converted):
    name, proto, feeds, result = converted
    again = mix_precision.fit(result.model, config=MixedPrecisionConfig(check_outputs=False))
    first = [(n.op_type, list(n.input), list(n.output)) for n in result.model.graph.node]
    second = [(n.op_type, list(n.input), list(n.output)) for n in again.model.graph.node]
    assert first == second
    assert again.report.casts_inserted == 0


def test_converting_a_model_with_fallbacks_again_keeps_them():
    """The corpus' reconvert stage: a conversion whose error budget (here the user) kept a
    Conv FP32 gave a model that a second conversion lowered again, inserting casts."""
    proto, feeds = _model("torch_cnn")
    config = MixedPrecisionConfig(sample_inputs=feeds, op_name_dict={"/block/block.0/Conv": {"activation": {"dtype": ["fp32"]}}})
    first = mix_precision.fit(proto, config=config)
    again = mix_precision.fit(first.model, config=MixedPrecisionConfig(sample_inputs=feeds))
    assert [(n.op_type, list(n.input)) for n in again.model.graph.node] == \
        [(n.op_type, list(n.input)) for n in first.model.graph.node]
    assert again.report.casts_inserted == 0
    kept = next(n for n in again.ir.graph.all_nodes() if n.name == "/block/block.0/Conv")
    assert kept.meta["precision"] == "f32" and "already mixed precision" in kept.meta["reason"]


@pytest.mark.parametrize("name", MODELS)
def test_fp16_output_runs_in_onnxruntime_with_no_more_casts_than_onnxconverter_common(name):
    from onnxconverter_common import float16
    proto, feeds = _model(name)
    ours = mix_precision.fit(proto, config=MixedPrecisionConfig(precisions="fp16", sample_inputs=feeds)).model
    outputs = run_onnxruntime(ours, feeds)  # raises ConversionError if onnxruntime cannot load it
    assert all(np.all(np.isfinite(o)) for o in outputs if o.dtype.kind == "f")
    theirs = float16.convert_float_to_float16(_model(name)[0], keep_io_types=True)
    try:
        run_onnxruntime(theirs, feeds)
    except ConversionError:
        return  # theirs does not load: nothing to compare against (bench/README.md records which)
    assert _casts(ours) <= _casts(theirs), (name, _casts(ours), _casts(theirs))


def _casts(model) -> int:
    count = 0
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            count += node.op_type == "Cast"
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return count


def test_target_onnxruntime_keeps_unsupported_ops_fp32_and_says_so():
    proto, feeds = _model("torch_cnn")
    result = mix_precision.fit(proto, config=MixedPrecisionConfig(target="onnxruntime", sample_inputs=feeds))
    conv = next(n for n in result.ir.graph.all_nodes() if n.op == "Conv")
    assert conv.meta["precision"] == "f32"
    assert "onnxruntime" in conv.meta["reason"] and "no bf16 kernel for Conv" in conv.meta["reason"]
    run_onnxruntime(result.model, feeds)  # what remains must run there
    assert any("lacks bf16 kernels" in note for note in result.report.notes)


def _bn_and_mask_model():
    """Conv -> BatchNormalization whose running variance is 1e8 (beyond fp16), then a
    MatMul score plus an attention-mask constant holding -FLT_MAX, then Softmax."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
             numpy_helper.from_array(np.zeros(4, np.float32), "mean"),
             numpy_helper.from_array(np.array([1e8, 1.0, 4.0, 1e-2], np.float32), "var"),
             numpy_helper.from_array(np.array([0.0, 0.0, -np.finfo(np.float32).max, 0.0], np.float32), "mask"),
             numpy_helper.from_array(np.array([2, 16], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
             helper.make_node("Reshape", ["b", "flat"], ["r"]),
             helper.make_node("MatMul", ["r", "k"], ["s"]),
             helper.make_node("Add", ["s", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1)]
    graph = helper.make_graph(nodes, "bn_mask",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 2, 2]),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, [16, 4])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((2, 3, 2, 2)).astype(np.float32) * 1e3,
             "k": rng.standard_normal((16, 4)).astype(np.float32) / 4}
    return model, feeds


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_huge_running_variance_and_mask_sentinel_survive(precision):
    proto, feeds = _bn_and_mask_model()
    result = mix_precision.fit(proto, config=MixedPrecisionConfig(precisions=precision, sample_inputs=feeds))
    graph = result.ir.graph
    assert graph.constants["var"].dtype == DType.FLOAT32  # pinned: exact, never clamped to 1e4
    assert float(graph.constants["var"].data[0]) == 1e8
    mask = graph.constants["mask"]
    low = DType.FLOAT16 if precision == "fp16" else DType.BFLOAT16
    assert mask.dtype == low  # stored low: the sentinel became the dtype's minimum, not -inf or -1e4
    value = float(mask.data.astype(np.float32)[2])
    assert np.isfinite(value) and value <= (-65504.0 if precision == "fp16" else -3.38e38)
    bn = next(n for n in graph.all_nodes() if n.op == "BatchNormalization")
    assert bn.meta["precision"] == low.value
    assert all(c.cosine >= 0.99 for c in result.report.checks)
    out = (run_onnxruntime if precision == "fp16" else run_reference)(result.model, feeds)[0]
    assert np.allclose(out[:, 2], 0.0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3)


def test_bf16_check_falls_back_to_a_float_emulation_when_the_reference_evaluator_fails():
    proto = onnx_models.control_flow()  # the evaluator fails on its Loop (no cond input)
    feeds = onnx_models.feeds("control_flow", proto)
    result = mix_precision.fit(proto, config=MixedPrecisionConfig(sample_inputs=feeds))
    assert result.report.checks and all(c.cosine >= 0.99 for c in result.report.checks)
    assert any("float32 emulation" in note for note in result.report.notes)


def test_float_emulation_matches_the_reference_evaluator():
    from mixprec.runtimes.onnx import emulate_in_float
    proto, feeds = _model("torch_cnn")
    bf16 = mix_precision.fit(proto, config=MixedPrecisionConfig(check_outputs=False)).model
    emulated = emulate_in_float(bf16)
    assert not any(t.data_type == TensorProto.BFLOAT16 for t in emulated.graph.initializer)
    casts_to_bf16 = [n for n in emulated.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.BFLOAT16]
    assert casts_to_bf16  # every bf16 value is rounded where it is produced
    got = run_onnxruntime(emulated, feeds)[0].astype(np.float64).ravel()
    ref = run_reference(bf16, feeds)[0].astype(np.float64).ravel()
    assert float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref))) > 0.9999
    assert not np.array_equal(got, run_onnxruntime(proto, feeds)[0].astype(np.float64).ravel())


def test_fit_does_not_modify_the_users_model():
    proto, feeds = _model("torch_transformer")
    before = proto.SerializeToString()
    mix_precision.fit(proto, config=MixedPrecisionConfig(sample_inputs=feeds))
    mix_precision.fit(proto, config=MixedPrecisionConfig(precisions="fp16", sample_inputs=feeds))
    assert proto.SerializeToString() == before
