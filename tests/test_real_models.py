"""Architectures as users have them: transformers' BERT and MobileNetV2 (random weights
from configs, no download), through ONNX (torch.onnx.export) and through torch.export."""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="these models are built with torch")
transformers = pytest.importorskip("transformers", reason="these models come from transformers configs")
onnx = pytest.importorskip("onnx", reason="the ONNX half needs onnx")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.ir import DType  # noqa: E402


class _Bert(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, vocab_size=500, attn_implementation="eager")
        self.bert = transformers.BertModel(config)

    def forward(self, ids, mask):
        out = self.bert(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output


def _bert():
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    return _Bert().eval(), (ids, mask)


def _mobilenet():
    torch.manual_seed(0)
    config = transformers.MobileNetV2Config(image_size=64, depth_multiplier=0.5, num_labels=10)
    return transformers.MobileNetV2ForImageClassification(config).eval(), (torch.randn(2, 3, 64, 64),)


def _to_onnx(module, args, names):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=17, input_names=names)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("build, names", [(_bert, ["ids", "mask"]), (_mobilenet, ["x"])])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_onnx_exports_convert_and_match(build, names, precision):
    module, args = build()
    proto = _to_onnx(module, args, names)
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    result = mix_precision.fit(proto, config=MixedPrecisionConfig(precisions=precision, sample_inputs=feeds))
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report.checks and all(c.cosine >= 0.99 for c in result.report.checks)
    low = DType.BFLOAT16 if precision == "bf16" else DType.FLOAT16
    heavy = [n for n in result.ir.graph.all_nodes() if n.op in ("MatMul", "Gemm", "Conv")]
    assert heavy and all(n.outputs[0].dtype == low for n in heavy if n.meta.get("precision") == low.value)
    assert sum(n.meta.get("precision") == low.value for n in heavy) >= len(heavy) // 2


@pytest.mark.parametrize("build", [_bert, _mobilenet])
def test_torch_modules_convert_and_match(build):
    module, args = build()
    result = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=args))
    with torch.no_grad():
        expected = module(*args)
        got = result.model(*args)
    expected = expected if isinstance(expected, tuple) else (expected.logits,)
    got = got if isinstance(got, tuple) else (got.logits,)
    for a, b in zip(expected, got):
        a, b = a.double().ravel().numpy(), b.double().ravel().numpy()
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.99
