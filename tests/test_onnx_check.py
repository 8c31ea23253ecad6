"""The ONNX output check (issue 7): sample inputs fitted to the model, a check that runs in
onnxruntime on an exact emulation and never breaks a good conversion, and legality of
every node at the model's opset.

Why the emulation and the reference evaluator differ (measured here): both round every
bf16 value where it is produced, but the evaluator's numpy kernels compute *inside* an op
on bf16 arrays: GlobalAveragePool sums in bf16 (every partial sum rounded), Gemm rounds
``A @ B`` to bf16 before adding ``C``. CPU bf16 kernels (oneDNN, onnxruntime) accumulate
in float32 and round once at the output, as the emulation does. On the 158-block
residual network the plain evaluator's logits differ from the emulation's by up to 192
(values ~1.5e4, 1-2 bf16 ulps); the difference starts at the final GlobalAveragePool
and every one of the 636 values before it is bit-identical. An evaluator whose kernels
accumulate in float32 and round once (``_float32_accumulating_ops``) agrees with the
emulation bit for bit on every value of that network."""
import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX check tests need onnx")
pytest.importorskip("onnxruntime", reason="the ONNX check tests need onnxruntime")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bf16 arrays need ml_dtypes")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import mixprec.backends.onnx as backend  # noqa: E402
from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.runtimes.onnx import (candidate_feeds, check_feeds, input_specs, run_emulated,  # noqa: E402
                                   run_onnxruntime, run_reference)
from mixprec.errors import ConfigError  # noqa: E402
from mixprec.frontends.onnx import load  # noqa: E402
from tests import onnx_models  # noqa: E402

BF16 = ml_dtypes.bfloat16


def _fit(proto, **options):
    return mix_precision.fit(proto, config=MixedPrecisionConfig(**options))


def _checked(result) -> list[float]:
    """The cosines of a check that ran (fails when the check was skipped)."""
    assert result.report.checks, f"the check did not run: {result.report.notes}"
    return [c.cosine for c in result.report.checks]


# ------------------------------------------------------------------ sample inputs ---
def test_an_input_declared_with_dim_value_minus_one_gets_checked():
    """Regression: ``dim_value: -1`` made sample-input generation fail with 'ValueError:
    negative dimensions are not allowed' (an internal error)."""
    proto = onnx_models.negative_dim_model()
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    (spec,) = input_specs(load(proto))
    assert spec.shape == (None, 8)
    result = _fit(proto)
    assert min(_checked(result)) > 0.999


def test_a_stride_32_detector_with_dynamic_height_and_width_gets_a_ladder_size():
    """Regression: the detector got H=W=1, its Concat of upsampled features failed and
    the check broke. The ladder's 224 fits a stride-32 network; a stride-64 one fails
    at 224 (224/64 is not whole) and is checked at 320."""
    for stride, side in ((32, 224), (64, 320)):
        proto = onnx_models.detector_model(stride)
        result = _fit(proto)
        assert min(_checked(result)) > 0.999
        feeds = next(f for f in candidate_feeds(load(proto)) if _runs(proto, f))
        assert feeds["images"].shape == (1, 3, side, side)


def _runs(proto, feeds) -> bool:
    try:
        run_onnxruntime(proto, feeds)
        return True
    except Exception:
        return False


def _embedding_model() -> "onnx.ModelProto":
    """BERT-like inputs: ``input_ids`` [batch, seq] into Gather on a 50-row table,
    ``attention_mask`` [batch, seq] int64, and ``feats`` [?, ?] reshaped to [1, 6, 4]."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "table")
    shape = numpy_helper.from_array(np.array([1, 6, 4], np.int64), "shape")
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["table", "ids32"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
             helper.make_node("Reshape", ["feats", "shape"], ["feats3"]),
             helper.make_node("Add", ["masked", "feats3"], ["sum"]),
             helper.make_node("MatMul", ["sum", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("feats", TensorProto.FLOAT, [None, None])]
    inits = [table, shape, numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "embedding", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_input_specs_read_index_bounds_masks_and_reshape_targets():
    model = load(_embedding_model())
    specs = {s.name: s for s in input_specs(model)}
    assert specs["input_ids"].high == 50  # the Gather table's rows, through the Cast
    assert specs["attention_mask"].high is None
    assert specs["feats"].shape == (1, 24)  # Reshape to [1,6,4]: batch 1, the other dim solved
    feeds = next(candidate_feeds(model))
    assert feeds["input_ids"].max() >= 2 and feeds["input_ids"].max() < 50
    assert np.all(feeds["attention_mask"] == 1)  # an int mask stays all ones
    assert feeds["input_ids"].shape == feeds["attention_mask"].shape == (1, 16)  # 'seq' shared


def test_unknown_dims_are_resolved_from_conv_weights_and_downstream_shapes():
    proto = onnx_models.bn_opset12_model()
    proto.graph.input[0].type.tensor_type.shape.dim[1].Clear()  # channels unknown, read from the Conv
    rng = np.random.default_rng(0)
    bias = numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "bias")
    graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [bias, numpy_helper.from_array(rng.standard_normal((8, 2)).astype(np.float32), "w")])
    downstream = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert input_specs(load(proto))[0].shape == ("batch", 3, 16, 16)
    assert input_specs(load(downstream))[0].shape == ("n", 8)


def test_given_sample_inputs_are_validated_against_the_model():
    """Sample inputs and shapes the user gives that cannot be the model's inputs are a bad
    option (ConfigError naming the model's inputs), not a skipped check."""
    model = load(_embedding_model())
    good = next(candidate_feeds(model))
    assert check_feeds(model, {**good, "feats": good["feats"].astype(np.float64)})["feats"].dtype == np.float32
    with pytest.raises(ConfigError, match=r"names unknown input\(s\) 'input_idz'.*the model's inputs are input_ids"):
        check_feeds(model, {**good, "input_idz": good["input_ids"]})
    with pytest.raises(ConfigError, match="has no 'attention_mask', 'feats'"):
        check_feeds(model, {"input_ids": good["input_ids"]})
    with pytest.raises(ConfigError, match=re.escape("sample input 'x' has shape [2, 3, 8, 8], which does not fit")):
        check_feeds(load(onnx_models.bn_opset12_model()), {"x": np.zeros((2, 3, 8, 8), np.float32)})
    with pytest.raises(ConfigError, match="not inputs of the model"):
        next(candidate_feeds(model, {"nope": [1, 2]}))
    with pytest.raises(ConfigError, match="names unknown input"):
        _fit(_embedding_model(), sample_inputs={"input_idz": good["input_ids"]})


def test_given_input_shapes_win():
    proto = onnx_models.detector_model()
    feeds = next(candidate_feeds(load(proto), {"images": [2, 3, 64, 96]}))
    assert feeds["images"].shape == (2, 3, 64, 96)


# ---------------------------------------------------------------------- the check ---
def test_bf16_check_runs_on_the_emulation_not_the_reference_evaluator(monkeypatch):
    import mixprec.runtimes.onnx as runtime

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference evaluator must not run by default")
    monkeypatch.setattr(runtime, "run_reference", no_reference)
    result = _fit(onnx_models.torch_cnn())
    assert min(_checked(result)) > 0.999
    assert any("exact float32 emulation" in note for note in result.report.notes)


def test_check_runtime_reference_uses_the_evaluator_and_its_failure_only_skips_the_check():
    proto = onnx_models.torch_cnn()
    result = _fit(proto, check_runtime="reference")
    assert min(_checked(result)) > 0.999
    assert any("ReferenceEvaluator" in note for note in result.report.notes)
    proto = onnx_models.control_flow()  # the evaluator fails on its Loop
    result = _fit(proto, check_runtime="reference", sample_inputs=onnx_models.feeds("control_flow", proto))
    assert result.model is not None and not result.report.checks and result.report.failed_check is None
    note = next(n for n in result.report.notes if "output check skipped" in n)
    assert "the reference evaluator cannot run the converted model" in note and "\n" not in note


def test_a_runtime_failure_on_the_converted_model_only_skips_the_check(monkeypatch):
    import mixprec.runtimes.onnx as runtime
    from mixprec.errors import ConversionError

    real = runtime.run_onnxruntime

    def fail_on_emulation(proto, feeds, *args):
        if any(n.name == "" and n.op_type == "Cast" and n.output[0].endswith("__rounded") for n in proto.graph.node):
            raise ConversionError("onnxruntime failed running the model: boom")
        return real(proto, feeds, *args)
    monkeypatch.setattr(runtime, "run_onnxruntime", fail_on_emulation)
    result = _fit(onnx_models.torch_cnn())
    assert not result.report.checks and result.report.failed_check is None
    assert any("float32 emulation cannot run the converted model (onnxruntime failed running the model: boom)" in n
               for n in result.report.notes)


def test_reconverting_mixprecs_own_bf16_output_is_a_clean_no_op():
    """Regression: re-converting mixprec's BF16 output ran the 'FP32' model (which holds
    bf16) in the reference evaluator, which fails on real exports (AxisError, Loop without
    cond, ...), so the check broke or was skipped. Now both models run on the emulation:
    nothing is converted again and the outputs agree exactly."""
    proto = onnx_models.control_flow()
    feeds = onnx_models.feeds("control_flow", proto)
    first = _fit(proto, sample_inputs=feeds)
    again = _fit(first.model, sample_inputs=feeds)
    assert again.report.casts_inserted == 0
    assert [n.op_type for n in again.model.graph.node] == [n.op_type for n in first.model.graph.node]
    assert min(_checked(again)) == pytest.approx(1.0)
    assert all(c.max_abs_error == 0 for c in again.report.checks)


def test_a_partly_converted_model_keeps_its_fp32_allow_ops_unless_asked():
    """A model already in mixed precision kept its FP32 allow ops on purpose (an error
    budget, a tuning run, a user): converting it again keeps them (pin-existing-fp32); an
    explicit request for low precision still converts them."""
    proto = onnx_models.torch_cnn()
    partial = _fit(proto, op_type_dict={"Gemm": {"activation": {"dtype": ["fp32"]}}}).model
    assert not any(n.op_type == "Gemm" and n.input[0].endswith("bf16") for n in partial.graph.node)
    again = _fit(partial)
    gemm = next(n for n in again.ir.graph.all_nodes() if n.op == "Gemm")
    assert gemm.meta["precision"] == "f32" and "already mixed precision" in gemm.meta["reason"]
    full = _fit(partial, op_type_dict={"Gemm": {"activation": {"dtype": ["bf16"]}}})
    gemm = next(n for n in full.ir.graph.all_nodes() if n.op == "Gemm")
    assert gemm.meta["precision"] == "bf16"
    assert min(_checked(full)) > 0.999


# ---------------------------------------------------------- emulation vs evaluator ---
SKIPPED_OPS = {"Cast", "CastLike", "Constant", "If", "Loop", "Scan"}


def _float32_accumulating_ops(model: "onnx.ModelProto") -> list[type]:
    """The reference evaluator's own kernels for the model's ops, run on float32 copies
    of their bf16 inputs with the result rounded to bf16 once: a bf16 kernel that
    accumulates in float32, as CPU bf16 kernels do."""
    from onnx.reference.ops import load_op

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    classes = []
    for op in sorted({n.op_type for n in model.graph.node if not n.domain} - SKIPPED_OPS):
        base = load_op("", op, opset)

        def _run(self, *args, _base=base, **kwargs):
            low = any(isinstance(a, np.ndarray) and a.dtype == BF16 for a in args)
            wide = [a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == BF16 else a for a in args]
            results = _base._run(self, *wide, **kwargs)
            return tuple(r.astype(BF16) if low and isinstance(r, np.ndarray) and r.dtype == np.float32 else r
                         for r in results)
        classes.append(type(op, (base,), {"op_domain": "", "_run": _run}))
    return classes


def _with_every_value_as_output(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    infos = {vi.name: vi for vi in model.graph.value_info}
    model.graph.output.extend(infos[o] for n in model.graph.node for o in n.output if o in infos)
    return model


def _differences(proto, feeds, new_ops=None) -> dict[str, float]:
    """value name -> max |emulation - evaluator| over every value of the bf16 model."""
    model = _with_every_value_as_output(proto)
    emulated = run_emulated(model, feeds)
    from onnx.reference import ReferenceEvaluator
    reference = ReferenceEvaluator(model, new_ops=new_ops).run(None, feeds)
    out = {}
    for info, a, b in zip(model.graph.output, emulated, reference):
        a, b = np.asarray(a, np.float64), np.asarray(np.asarray(b).astype(np.float32), np.float64)
        if a.shape != b.shape or not np.array_equal(a, b):
            out[info.name] = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
    return out


@pytest.fixture(scope="module")
def deep_bf16():
    proto = onnx_models.deep_residual_model(blocks=158)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    return _fit(proto, check_outputs=False).model, feeds


def _order_differences(model, feeds) -> dict[str, float]:
    """The values where the emulation and a float32-accumulating evaluator differ, each
    checked to be one bf16 rounding step of the value's scale at most: the two sum float32
    products in different orders (onnxruntime's MLAS kernels for this CPU against numpy's),
    and where the two sums sit on either side of a bf16 rounding boundary they round apart.
    On an AVX-512 Xeon there were none; on an AVX2-only EPYC, 4 of 638 values."""
    diffs = _differences(model, feeds, _float32_accumulating_ops(model))
    values = [vi.name for vi in _with_every_value_as_output(model).graph.output]
    emulated = dict(zip(values, run_emulated(_with_every_value_as_output(model), feeds)))
    for value, diff in diffs.items():
        scale = float(np.abs(emulated[value]).max())
        assert diff <= scale * 2.0 ** -7, f"{value} differs by {diff} (max {scale})"
    assert len(diffs) <= len(values) // 100, sorted(diffs)  # isolated, they do not spread
    return diffs


def test_deep_residual_network_emulation_agrees_with_a_float32_accumulating_evaluator(deep_bf16):
    model, feeds = deep_bf16
    assert sum(n.op_type == "Add" for n in model.graph.node) == 158
    _order_differences(model, feeds)


def test_deep_residual_network_plain_evaluator_differs_only_from_its_bf16_accumulation(deep_bf16):
    model, feeds = deep_bf16
    diffs = _differences(model, feeds)
    order = _order_differences(model, feeds)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert diffs and {producers[name] for name in diffs if name not in order} <= \
        {"GlobalAveragePool", "Flatten", "Gemm", "Cast"}
    assert "pool" in diffs  # the first value that differs is the bf16 average
    (emulated,) = run_emulated(model, feeds)
    assert np.abs(emulated).max() > 1e3  # large values, where one bf16 ulp is large


@pytest.mark.parametrize("name", ["torch_cnn", "torch_transformer", "bn_opset12", "detector", "torch_shape_resize"])
def test_emulation_agrees_with_a_float32_accumulating_evaluator(name):
    """Bit-identical up to float32 arithmetic order: where the two float32 results sit
    on either side of a bf16 rounding boundary, one ulp."""
    builder = {"bn_opset12": onnx_models.bn_opset12_model, "detector": onnx_models.detector_model}.get(name) or \
        getattr(onnx_models, name)
    proto = builder()
    feeds = onnx_models.feeds(name, proto) if hasattr(onnx_models, name) else onnx_models.generated_feeds(proto)
    if name == "detector":
        feeds = next(candidate_feeds(load(proto), {"images": [1, 3, 64, 64]}))
    model = _fit(proto, check_outputs=False).model
    (emulated, *_), (evaluated, *_) = run_emulated(model, feeds), run_reference(model, feeds)
    a, b = emulated.astype(np.float64).ravel(), np.asarray(evaluated, np.float32).astype(np.float64).ravel()
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.9999
    diffs = _differences(model, feeds, _float32_accumulating_ops(model))
    values = {vi.name: vi for vi in _with_every_value_as_output(model).graph.output}
    emulated_all = dict(zip(values, run_emulated(_with_every_value_as_output(model), feeds)))
    for value, diff in diffs.items():
        scale = float(np.abs(emulated_all[value]).max())
        assert diff <= scale * 2.0 ** -7, f"{name}: {value} differs by {diff} (max {scale})"


# --------------------------------------------------------------------- legality ---
def test_fp16_batchnorm_at_opset_12_is_made_legal_by_raising_the_opset():
    """Regression: before opset 15, BatchNormalization has one type parameter for X,
    scale, B, mean and var; f16 X with f32 mean/var failed the checker ('mean has
    inconsistent type'). The opset is raised to 14 (the first whose BatchNormalization
    lets mean and var differ from X) with onnx's version converter."""
    proto = onnx_models.bn_opset12_model()
    result = _fit(proto, precisions="fp16")
    assert {o.domain: o.version for o in result.model.opset_import}[""] == 14
    onnx.checker.check_model(result.model, full_check=True)
    assert min(_checked(result)) > 0.999
    bn = next(n for n in result.ir.graph.all_nodes() if n.op == "BatchNormalization")
    assert bn.inputs[0].dtype.value == "f16" and bn.inputs[3].dtype.value == "f32"
    assert any("opset raised from 12 to 14" in note for note in result.report.notes)


def test_a_node_the_opset_converter_cannot_legalize_is_kept_in_float32(monkeypatch):
    from mixprec.errors import ConversionError

    def refuse(proto, current, target, reason):
        raise ConversionError(f"cannot convert the model from opset {current} to {target}: no adapter")
    monkeypatch.setattr(backend, "_convert_opset", refuse)
    result = _fit(onnx_models.bn_opset12_model(), precisions="fp16")
    assert {o.domain: o.version for o in result.model.opset_import}[""] == 12
    onnx.checker.check_model(result.model, full_check=True)
    bn = next(n for n in result.model.graph.node if n.op_type == "BatchNormalization")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in result.model.graph.value_info}
    types.update({t.name: t.data_type for t in result.model.graph.initializer})
    assert {types[name] for name in list(bn.input) + list(bn.output)} == {TensorProto.FLOAT}
    assert min(_checked(result)) > 0.999
    note = next(n for n in result.report.notes if n.startswith("kept in float32"))
    assert "'bn' (BatchNormalization)" in note and "opset 12 to 14" in note


def test_illegal_nodes_checks_type_parameter_binding_generically():
    from mixprec.ir import DType, GraphBuilder, Model

    b = GraphBuilder("g", framework="onnx")
    x = b.input("x", DType.FLOAT16, (2, 2))
    y = b.input("y", DType.FLOAT32, (2, 2))
    add = b.node("Add", [x, y], [("z", DType.FLOAT16, (2, 2))])  # T bound to f16 and f32: illegal at any opset
    conv_free = b.node("Relu", [x], [("r", DType.FLOAT16, (2, 2))])
    model = Model(b.graph)
    assert backend.illegal_nodes(model.graph, 17) == [add]
    assert conv_free not in backend.illegal_nodes(model.graph, 17)


def test_constant_of_shape_retyped_to_bf16_gets_a_bf16_value():
    """Regression (onnx's light_* model-zoo files build every weight with
    ConstantOfShape): the painted bf16 output kept its float ``value`` and the checker
    failed ('Inferred elem type differs from existing elem type')."""
    rng = np.random.default_rng(0)
    shape = numpy_helper.from_array(np.array([4, 3], np.int64), "w_shape")
    nodes = [helper.make_node("ConstantOfShape", ["w_shape"], ["w"],
                              value=numpy_helper.from_array(np.array([0.02], np.float32))),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "cos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [shape])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = _fit(proto, sample_inputs={"x": rng.standard_normal((2, 4)).astype(np.float32)})
    onnx.checker.check_model(result.model, full_check=True)
    node = next(n for n in result.model.graph.node if n.op_type == "ConstantOfShape")
    assert node.attribute[0].t.data_type == TensorProto.BFLOAT16
    assert min(_checked(result)) > 0.999


def test_raising_an_opset_9_model_retypes_the_dropout_mask():
    """Regression (onnx's light_squeezenet/vgg19/alexnet/inception_v1, opset 9): raising
    the opset for bf16 Conv made Dropout's mask bool (opset 10+) but its value_info stayed
    float and the checker failed ('Inferred elem type differs ... (9) vs (1)')."""
    rng = np.random.default_rng(0)
    inits: list = []
    nodes = [onnx_models._conv(rng, "conv", "x", 3, 4, inits),
             helper.make_node("Dropout", ["conv"], ["drop", "mask"], name="drop", ratio=0.5),
             helper.make_node("Relu", ["drop"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "drop9", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    proto.ir_version = 4
    result = _fit(proto)
    onnx.checker.check_model(result.model, full_check=True)
    assert {o.domain: o.version for o in result.model.opset_import}[""] == 22
    assert min(_checked(result)) > 0.999


def test_a_loop_that_never_ends_times_out_and_skips_the_check(monkeypatch):
    """Loop('', '', x) is valid ONNX and never ends (a fuzzed control-flow model): the
    check's onnxruntime runs stop after MIXPREC_RUN_TIMEOUT and the conversion is
    still returned, with the check skipped and the reason in the report."""
    from onnx import helper
    monkeypatch.setenv("MIXPREC_RUN_TIMEOUT", "1")
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("MatMul", ["v_in", "w"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2, 2])])
    graph = helper.make_graph([helper.make_node("Loop", ["", "", "x"], ["y"], body=body)], "endless",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                              [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = _fit(model)
    assert not result.report.checks
    assert any("output check skipped" in n and "did not finish running the model within 1 s" in n
               for n in result.report.notes)
