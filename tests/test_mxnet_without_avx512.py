"""MXNet on a CPU without AVX-512, where oneDNN runs no bf16 kernel: the ops whose bf16
kernel is oneDNN's stay FP32, each with the reason, and the converted model runs and
passes the output check. Regression: on an AVX2-only AMD EPYC every MXNet conversion with
a Convolution or FullyConnected died in the check ("could not create a primitive
descriptor iterator"). Runs on every machine: the probe is forced to say no."""
import numpy as np
import pytest

try:
    from mixprec.runtimes import mxnet as runtime
except Exception as exc:  # MissingDependencyError, or mxnet failing to import
    pytest.skip(f"these tests need mxnet 1.9.1 importable: {exc}", allow_module_level=True)

from mixprec import mix_precision  # noqa: E402
from mixprec.config import MixedPrecisionConfig  # noqa: E402
from tests import mxnet_models as mm  # noqa: E402

mx = runtime.mx


@pytest.fixture
def no_onednn_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "onednn_runs_bf16", lambda: False)


def test_the_probe_agrees_with_running_a_bf16_convolution():
    data = mx.nd.amp_cast(mx.nd.ones((1, 3, 6, 6)), dtype="bfloat16")
    weight = mx.nd.amp_cast(mx.nd.ones((2, 3, 3, 3)), dtype="bfloat16")
    try:
        out = mx.nd.Convolution(data, weight, kernel=(3, 3), num_filter=2, no_bias=True)
        mx.nd.amp_cast(out, dtype="float32").asnumpy()
        ran = True
    except mx.base.MXNetError:
        ran = False
    assert runtime.onednn_runs_bf16() is ran


def test_the_table_without_onednn_keeps_its_ops_out(no_onednn_bf16):
    table = runtime.kernel_table("bf16")
    assert table.missing >= runtime.ONEDNN_BF16_OPS
    assert not table.ops & runtime.ONEDNN_BF16_OPS and not set(table.conditional) & runtime.ONEDNN_BF16_OPS
    assert {"elemwise_add", "softmax", "Concat", "Embedding"} <= table.ops  # these run without oneDNN
    assert "AVX-512" in table.runtime
    assert runtime.kernel_table("fp16") is runtime.FP16_CPU


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_a_model_converts_and_checks_with_its_onednn_ops_in_fp32(no_onednn_bf16, name):
    block, x = getattr(mm, name)()
    result = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,)))
    nodes = list(result.ir.graph.iter_nodes())
    onednn = [n for n in nodes if n.op in runtime.ONEDNN_BF16_OPS]
    assert onednn and all(n.meta["precision"] == "f32" for n in onednn)
    assert all("without AVX-512" in n.meta["reason"] for n in onednn)
    assert any("without AVX-512" in note for note in result.report.notes)
    assert result.report.checks and all(c.cosine > 0.999 for c in result.report.checks)
    out = result.model(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    want = block(x)
    want = want[0] if isinstance(want, (list, tuple)) else want
    np.testing.assert_allclose(out.astype("float32").asnumpy(), want.asnumpy(), rtol=0.05, atol=0.05)
