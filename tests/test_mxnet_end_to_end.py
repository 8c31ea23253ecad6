"""MXNet end to end: ``mix_precision.fit`` on a Gluon CNN, an MLP with softmax, a block
with an op that has no bf16 CPU kernel, and a saved symbol/params pair gives a runnable
SymbolBlock whose outputs match FP32; Convolution/FullyConnected run in bf16 while deny
ops stay FP32; the saved pair keeps its amp_cast nodes and bf16 weights, reloads with
plain MXNet in a fresh interpreter without mixprec and reproduces the outputs; saving
never overwrites the input files; ``mixprec convert`` works on a ``-symbol.json``."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

try:
    from mixprec.frontends import mxnet as frontend
except Exception as exc:  # MissingDependencyError, or mxnet failing to import
    pytest.skip(f"the MXNet end-to-end tests need mxnet 1.9.1 importable: {exc}", allow_module_level=True)

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from tests.fresh_process import BLOCK_MIXPREC  # noqa: E402
from mixprec.runtimes.mxnet import BF16_CPU  # noqa: E402
from mixprec.cli import main as cli_main  # noqa: E402
from mixprec.dialects.mxnet import mx_bfloat16  # noqa: E402
from mixprec.errors import ConfigError  # noqa: E402
from mixprec.ir import DType, Node  # noqa: E402
from mixprec.passes.policies import load_policy  # noqa: E402
from tests import mxnet_models as mm  # noqa: E402

mx = frontend.mx
MIN_COSINE = 0.99
LOW_PRECISION_OPS = {"Convolution", "FullyConnected"}

# Runs in a fresh interpreter (python -I, cwd a temp dir) where mixprec cannot be
# imported: loads the saved pair twice (SymbolBlock.imports, load_checkpoint + bind),
# runs it on the saved input and saves both outputs.
FRESH_PROCESS = BLOCK_MIXPREC + textwrap.dedent("""
    import sys, warnings

    import numpy as np
    np.bool = np.bool_
    import mxnet as mx
    warnings.simplefilter("ignore")
    prefix, x_file, out_file = sys.argv[1:4]
    x = mx.nd.array(np.load(x_file))
    block = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params")
    imported = block(x).asnumpy()
    symbol, args, aux = mx.model.load_checkpoint(prefix, 0)
    executor = symbol.bind(mx.cpu(), args={"data": x, **args}, aux_states=aux, grad_req="null")
    bound = executor.forward(is_train=False)[0].asnumpy()
    try:
        import mixprec  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("mixprec was importable")
    assert not any(m.split(".")[0] == "mixprec" for m in sys.modules)
    np.savez(out_file, imported=imported, bound=bound)
    print("reloaded")
""")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _run(block, x) -> np.ndarray:
    with mx.autograd.predict_mode():
        return block(x).asnumpy()


def _fresh_input(model_name: str, x) -> mx.nd.NDArray:
    """An input the conversion never saw, of the example's shape."""
    rng = np.random.RandomState(sum(map(ord, model_name)))
    return mx.nd.array(rng.normal(size=x.shape).astype(np.float32))


def _precisions(converted) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for node in converted.ir.graph.iter_nodes():
        out.setdefault(node.op, set()).add(node.meta.get("precision"))
    return out


@pytest.fixture(scope="module", params=["cnn", "mlp", "dot_head"])
def converted(request):
    block, x = mm.MODELS[request.param]()
    result = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,)))
    return request.param, block, x, result


@pytest.fixture(scope="module")
def saved_cnn(tmp_path_factory):
    block, x = mm.cnn()
    result = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,)))
    prefix = tmp_path_factory.mktemp("saved") / "cnn_bf16"
    result.save(prefix)
    return block, x, result, prefix


# ---------------------------------------------------------------- numerics ---
def test_outputs_match_fp32(converted):
    name, block, x, result = converted
    fresh = _fresh_input(name, x)
    want, got = _run(block, fresh), _run(result.model, fresh)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.isfinite(got).all()
    assert _cosine(got, want) >= MIN_COSINE
    assert np.abs(want).max() > 1e-3
    assert [c.output for c in result.report.checks] == [v.name for v in result.ir.graph.outputs]
    assert all(c.cosine >= MIN_COSINE for c in result.report.checks)


@pytest.mark.mxnet_onednn_bf16
def test_compute_ops_run_in_bf16(converted):
    precisions = _precisions(converted[3])
    for op in LOW_PRECISION_OPS & set(precisions):
        assert precisions[op] == {"bf16"}, op
    assert LOW_PRECISION_OPS & set(precisions)
    weights = [c for c in converted[3].ir.graph.constants.values() if c.name.endswith("weight")]
    assert weights and all(c.dtype == DType.BFLOAT16 for c in weights if "batchnorm" not in c.name)


def test_deny_ops_stay_fp32(converted):
    policy = load_policy("mxnet")
    graph = converted[3].ir.graph
    for node in graph.iter_nodes():
        if policy.base_category(node.op) == "deny":
            assert node.meta["precision"] == "f32", node
    assert all(v.dtype == DType.FLOAT32 for v in graph.inputs + graph.outputs)


@pytest.mark.mxnet_onednn_bf16
def test_softmax_stays_fp32():
    block, x = mm.mlp()
    result = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,)))
    assert _precisions(result)["softmax"] == {"f32"}
    assert _precisions(result)["FullyConnected"] == {"bf16"}
    np.testing.assert_allclose(_run(result.model, x).sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.mxnet_onednn_bf16
def test_ops_without_a_bf16_kernel_stay_fp32():
    """dot is an infer op fed by a bf16 FullyConnected, but mxnet 1.9.1 has no bf16 CPU dot."""
    block, x = mm.dot_head()
    result = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,)))
    node = next(n for n in result.ir.graph.iter_nodes() if n.op == "dot")
    assert node.meta["precision"] == "f32"
    assert "no bf16 kernel for dot" in node.meta["reason"]
    assert "dot" in BF16_CPU.missing
    assert any("lacks bf16 kernels for: dot" in note for note in result.report.notes)


def test_forcing_an_op_without_a_kernel_is_refused_by_the_runtime_limits():
    block, x = mm.dot_head()
    config = MixedPrecisionConfig(example_inputs=(x,), op_type_dict={"dot": {"activation": {"dtype": ["bf16"]}}})
    result = mix_precision.fit(block, config=config)
    assert _precisions(result)["dot"] == {"f32"}


def test_user_block_is_untouched():
    block, x = mm.cnn()
    before = {p.name: p.data().asnumpy().copy() for p in block.collect_params().values()}
    want = _run(block, x)
    mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,)))
    assert not block._active
    for p in block.collect_params().values():
        assert p.data().dtype == np.float32
        np.testing.assert_array_equal(p.data().asnumpy(), before[p.name])
    np.testing.assert_array_equal(_run(block, x), want)


def test_block_without_example_inputs_is_a_config_error():
    block, _ = mm.cnn()
    with pytest.raises(ConfigError, match="example inputs"):
        mix_precision.fit(block)


def test_fp16_keeps_gemm_ops_fp32():
    """FP16 Convolution/FullyConnected have no CPU kernels in mxnet 1.9.1."""
    block, x = mm.cnn()
    result = mix_precision.fit(block, config=MixedPrecisionConfig(precisions="fp16", example_inputs=(x,)))
    precisions = _precisions(result)
    assert precisions["Convolution"] == {"f32"} and precisions["FullyConnected"] == {"f32"}
    assert _cosine(_run(result.model, x), _run(block, x)) >= MIN_COSINE


@pytest.mark.mxnet_onednn_bf16
def test_bf16_inputs_and_outputs_without_keep_io_types():
    block, x = mm.cnn()
    result = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,), keep_io_types=False))
    graph = result.ir.graph
    assert graph.inputs[0].dtype == DType.BFLOAT16 and graph.outputs[0].dtype == DType.BFLOAT16
    assert result.report.checks[0].cosine >= MIN_COSINE  # the adapter fed bf16 and read bf16


@pytest.mark.mxnet_onednn_bf16
@pytest.mark.parametrize("op, call, runs", [
    ("Convolution", lambda b: mx.nd.Convolution(b(1, 3, 6, 6), b(2, 3, 3, 3), b(2), kernel=(3, 3), num_filter=2),
     True),
    ("FullyConnected", lambda b: mx.nd.FullyConnected(b(2, 8), b(4, 8), b(4), num_hidden=4), True),
    ("Pooling avg", lambda b: mx.nd.Pooling(b(1, 2, 4, 4), kernel=(2, 2), pool_type="avg"), True),
    ("elemwise_add", lambda b: mx.nd.elemwise_add(b(2, 3), b(2, 3)), True),
    ("dot", lambda b: mx.nd.dot(b(2, 8), b(8, 3)), False),
    ("Pooling sum", lambda b: mx.nd.Pooling(b(1, 2, 4, 4), kernel=(2, 2), pool_type="sum"), False),
    ("LayerNorm", lambda b: mx.nd.LayerNorm(b(2, 8), b(8), b(8)), False),
])
def test_kernel_table_matches_this_mxnet(op, call, runs):
    """Spot checks of the measured table: what it allows runs in bf16, what it keeps out fails."""
    name, _, attr = op.partition(" ")
    node = Node(name, attrs={"pool_type": attr} if attr else {})
    assert (BF16_CPU.why_not(node) is None) == runs

    def bf16(*shape):
        return mx.nd.ones(shape).astype(mx_bfloat16())

    if runs:
        assert frontend.dtype_from_mx(call(bf16).dtype) == DType.BFLOAT16
        call(bf16).asnumpy()
    else:
        with pytest.raises(mx.base.MXNetError):
            call(bf16).asnumpy()


# ---------------------------------------------------------------- saving ---
@pytest.mark.mxnet_onednn_bf16
def test_saved_json_keeps_the_casts_and_bf16_weights(saved_cnn):
    _, _, result, prefix = saved_cnn
    nodes = json.loads(Path(f"{prefix}-symbol.json").read_text())["nodes"]
    casts = [n for n in nodes if n["op"] == "amp_cast"]
    assert len(casts) == sum(n.op == "amp_cast" for n in result.ir.graph.iter_nodes()) >= 2
    assert {n["attrs"]["dtype"] for n in casts} == {"bfloat16", "float32"}
    params = mx.nd.load(f"{prefix}-0000.params")
    conv_weights = [k for k in params if k.startswith("arg:") and "conv" in k and k.endswith("weight")]
    assert conv_weights and all(frontend.dtype_from_mx(params[k].dtype) == DType.BFLOAT16 for k in conv_weights)
    assert all(params[k].dtype == np.float32 for k in params if k.startswith("aux:"))


@pytest.mark.mxnet_onednn_bf16
def test_saved_pair_reloads_without_mixprec(saved_cnn, tmp_path):
    block, x, result, prefix = saved_cnn
    fresh = _fresh_input("reload", x)
    np.save(tmp_path / "x.npy", fresh.asnumpy())
    script = tmp_path / "reload.py"
    script.write_text(FRESH_PROCESS)
    proc = subprocess.run([sys.executable, "-I", str(script), str(prefix), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = np.load(tmp_path / "out.npz")
    in_process = _run(result.model, fresh)
    np.testing.assert_array_equal(outputs["imported"], in_process)
    assert _cosine(outputs["bound"], in_process) >= 0.999  # bind fuses conv+bn+relu (oneDNN subgraphs)
    assert _cosine(outputs["imported"], _run(block, fresh)) >= MIN_COSINE


def test_fit_from_a_saved_pair(tmp_path):
    block, x = mm.cnn()
    symbol_file, params_file = mm.export(block, x, str(tmp_path / "cnn"))
    result = mix_precision.fit(symbol_file, config=MixedPrecisionConfig(example_inputs=(x,)))
    assert _cosine(_run(result.model, x), _run(block, x)) >= MIN_COSINE
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        result.save(symbol_file)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        result.save(params_file)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        result.save(tmp_path / "cnn")
    result.save(tmp_path / "cnn_bf16-symbol.json")
    assert (tmp_path / "cnn_bf16-0000.params").exists()


@pytest.mark.mxnet_onednn_bf16
def test_cli_convert(tmp_path, capsys):
    block, x = mm.cnn()
    symbol_file, _ = mm.export(block, x, str(tmp_path / "cnn"))
    assert cli_main(["convert", symbol_file, "-o", str(tmp_path / "out"), "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "Convolution" in printed and "infer_shape error" not in printed
    nodes = json.loads((tmp_path / "out-symbol.json").read_text())["nodes"]
    assert any(n["op"] == "amp_cast" for n in nodes)
    assert (tmp_path / "out-0000.params").exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["checks"] and report["checks"][0]["cosine"] >= MIN_COSINE
    assert cli_main(["convert", symbol_file, "-o", str(tmp_path / "cnn")]) != 0
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.mxnet_onednn_bf16
def test_cli_dump_of_a_params_file(tmp_path, capsys):
    block, x = mm.mlp()
    _, params_file = mm.export(block, x, str(tmp_path / "mlp"))
    assert cli_main(["dump", params_file, "--after", "insert-casts"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("graph main<mxnet>(%data: f32[1,20])") and "amp_cast" in text


@pytest.mark.mxnet_onednn_bf16
def test_fit_accepts_a_symbol_params_triple():
    from mixprec.backends.mxnet import emit
    block, example = mm.mlp()
    triple = emit(frontend.load(block, example_inputs=example))
    result = mix_precision.fit(triple, config=MixedPrecisionConfig(example_inputs=example))
    assert any(n.op == "FullyConnected" and n.meta["precision"] == "bf16" for n in result.ir.graph.all_nodes())


# ------------------------------------------------- first layers, policy rules (issue 7) ---
def test_batchnorm_first_symbol_converts_and_checks_by_default(tmp_path):
    """Every Gluon resnet*_v2 starts with a BatchNorm: its input shape used to be
    unknown ("no sample input can be made") and the default fit path failed."""
    block, x = mm.batchnorm_stem()
    symbol_file, _ = mm.export(block, x, str(tmp_path / "stem"))
    result = mix_precision.fit(symbol_file)
    assert result.ir.meta[frontend.META]["input_specs"]["data"] == {"dims": [None, 3, None, None], "high": None,
                                                                   "image": True}
    assert result.report.checks and result.report.checks[0].cosine >= 0.999
    assert _cosine(_run(result.model, x), _run(block, x)) >= 0.999


def test_given_input_shape_is_used(tmp_path):
    block, x = mm.batchnorm_stem()
    symbol_file, _ = mm.export(block, x, str(tmp_path / "stem"))
    result = mix_precision.fit(symbol_file, config=MixedPrecisionConfig(input_shapes={"data": [1, 3, 40, 40]}))
    assert result.ir.graph.inputs[0].shape == (1, 3, 40, 40)
    assert result.report.checks


@pytest.mark.mxnet_onednn_bf16
def test_embedding_first_language_model_converts_with_token_ids(tmp_path):
    """Embedding -> LSTM -> Dense: the token ids get values below the vocabulary size,
    the table is stored bf16 (the lookup is exact) and the saved pair reloads."""
    block, tokens = mm.embedding_lm(vocab=200)
    symbol_file, _ = mm.export(block, tokens, str(tmp_path / "lm"))
    result = mix_precision.fit(symbol_file)
    assert result.ir.meta[frontend.META]["input_specs"]["data"]["high"] == 200
    assert result.report.checks and result.report.checks[0].cosine >= 0.999
    embedding = next(n for n in result.ir.graph.all_nodes() if n.op == "Embedding")
    assert embedding.inputs[1].dtype == DType.BFLOAT16 and embedding.inputs[0].dtype == DType.FLOAT32
    result.save(tmp_path / "lm_bf16")
    nodes = json.loads((tmp_path / "lm_bf16-symbol.json").read_text())["nodes"]
    assert next(n for n in nodes if n["op"] == "Embedding")["attrs"]["dtype"] == "bfloat16"
    params = mx.nd.load(str(tmp_path / "lm_bf16-0000.params"))
    assert frontend.dtype_from_mx(params["arg:lm_embedding0_weight"].dtype) == DType.BFLOAT16
    reloaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "lm_bf16-symbol.json"), ["data"],
                                            str(tmp_path / "lm_bf16-0000.params"))
    fresh = mx.nd.array(np.random.RandomState(3).randint(0, 200, size=(20, 1)).astype(np.float32))
    assert _cosine(_run(reloaded, fresh), _run(block, fresh)) >= 0.999


@pytest.mark.mxnet_onednn_bf16
def test_normalization_of_the_raw_input_keeps_offset_images_accurate():
    """Images with an offset of 100: rounding them to bf16 before the BatchNorm removes
    their mean left a cosine of 0.990 on the stem's feature map (min_cosine failed); kept FP32 by the
    policy rule, the conversion matches FP32."""
    block, x = mm.batchnorm_stem(offset=100.0, head=False)
    result = mix_precision.fit(block, config=MixedPrecisionConfig(example_inputs=(x,)))
    norm = next(n for n in result.ir.graph.all_nodes() if n.op == "BatchNorm")
    assert norm.meta["precision"] == "f32"
    assert norm.meta["reason"].startswith("policy rule: normalizes a graph input (%data)")
    assert next(n for n in result.ir.graph.all_nodes() if n.op == "Convolution").meta["precision"] == "bf16"
    assert _cosine(_run(result.model, x), _run(block, x)) >= 0.999


ZOO = ["resnet18_v1", "resnet18_v2", "mobilenet1.0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO + ["embedding_lstm_lm"])
def test_real_gluon_models_through_the_default_cli_path(name, tmp_path, capsys):
    """Gluon model-zoo networks (random weights, calibrated BatchNorm statistics) and an
    Embedding+LSTM language model, exported to symbol JSON + params, converted by
    ``mixprec convert`` with no shapes given: the check runs, the pair reloads in plain
    MXNet and matches FP32 on a fresh 224x224 image (or 20 fresh tokens)."""
    block, example = mm.embedding_lm() if name == "embedding_lstm_lm" else mm.model_zoo(name)
    symbol_file, params_file = mm.export(block, example, str(tmp_path / "m"))
    out = tmp_path / "m_bf16"
    assert cli_main(["convert", symbol_file, "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["checks"] and report["checks"][0]["cosine"] >= 0.99
    reloaded = mx.gluon.SymbolBlock.imports(f"{out}-symbol.json", ["data"], f"{out}-0000.params")
    rng = np.random.RandomState(5)
    fresh = (rng.randint(0, 200, size=(20, 1)) if name == "embedding_lstm_lm"
             else rng.normal(size=(1, 3, 224, 224))).astype(np.float32)
    got, want = _run(reloaded, mx.nd.array(fresh)), _run(block, mx.nd.array(fresh))
    same_top1 = np.array_equal(got.reshape(-1, got.shape[-1]).argmax(-1), want.reshape(-1, want.shape[-1]).argmax(-1))
    assert _cosine(got, want) >= 0.999 or same_top1
