"""The programmatic workflow: load a model as IR, run a custom pipeline with one's own
pass, emit it back to its framework."""
from pathlib import Path

import pytest

import mixprec
from mixprec.ir import Pin, dump, set_pin
from mixprec.passes import DEFAULT_PIPELINE, PassManager, build_pipeline, function_pass

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"


def test_load_run_custom_pipeline_emit():
    onnx = pytest.importorskip("onnx", reason="the API test uses the bundled ONNX example")

    @function_pass("keep-first-conv-fp32", register=False)
    def keep_first_conv(graph):
        """pin the first Conv to FP32 before painting (a typed pin, no reason text parsed)"""
        conv = next(n for n in graph.nodes if n.op == "Conv")
        return set_pin(conv, Pin("f32", "user", "first conv stays FP32"))

    model = mixprec.load(str(EXAMPLE))
    assert model.framework == "onnx"
    default = build_pipeline(DEFAULT_PIPELINE)
    passes = list(default.passes)
    passes.insert(3, keep_first_conv())  # after apply-overrides, before assign-precision
    PassManager(passes).run(model.graph)
    text = dump(model.graph)
    assert "@conv1  # f32 allow pin=user: first conv stays FP32" in text
    assert "@conv2  # bf16 allow: allow list" in text
    proto = mixprec.emit(model)
    onnx.checker.check_model(proto, full_check=True)
    weights = {t.name: t.data_type for t in proto.graph.initializer}
    assert weights["conv1.w"] == onnx.TensorProto.FLOAT and weights["conv2.w"] == onnx.TensorProto.BFLOAT16
