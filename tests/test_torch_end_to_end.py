"""PyTorch end to end (issue "PyTorch: frontend and backend"): ``mix_precision.fit`` on a
ResNet-style CNN, an LSTM, a transformers BERT encoder and a dict-input two-output model
gives a runnable module whose outputs match FP32; its saved ``.pt2`` reloads in a fresh
interpreter without mixprec and reproduces them; matmul-like ops run in BF16 while the
numerically sensitive ones follow the torch policy; the report explains every node; the
saved program is about half the FP32 size; the user's module is untouched; module-path
overrides, uncapturable modules and the ``mixprec convert`` CLI on a ``.pt2`` behave."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch end-to-end tests need torch")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from tests.fresh_process import BLOCK_MIXPREC  # noqa: E402
from mixprec.backends.torch import save as save_fp32_program  # noqa: E402
from mixprec.cli import main as cli_main  # noqa: E402
from mixprec.errors import MixprecError, UnsupportedModelError  # noqa: E402
from mixprec.ir import DType  # noqa: E402
from mixprec.ir.cast import is_cast  # noqa: E402
from mixprec.ir.graph import Node  # noqa: E402
from mixprec.mix_precision import ConvertedModel  # noqa: E402
from mixprec.passes.policies import load_policy  # noqa: E402
from tests import torch_models as tm  # noqa: E402

MIN_COSINE = 0.99
# Compute-heavy ops that must run in bf16 (op names without the overload).
MATMUL_OPS = {"aten.linear", "aten.conv2d", "aten.matmul", "aten.mm", "aten.bmm", "aten.addmm"}
# Numerically sensitive ops each model must contain, so that the policy check is not vacuous.
SENSITIVE_OPS = {
    "resnet": {"aten.adaptive_avg_pool2d"},
    "lstm": {"aten.lstm"},
    "bert": {"aten.softmax", "aten.layer_norm"},
    "two_heads": {"aten.softmax", "aten.layer_norm", "aten.adaptive_avg_pool2d"},
}
MODELS = list(SENSITIVE_OPS)
FP32_BLOCK = "bert.encoder.layer.1"

# Runs in a fresh interpreter (python -I, cwd a temp dir) where mixprec cannot be
# imported: loads every saved program, runs it on the given inputs and saves the outputs.
FRESH_PROCESS = BLOCK_MIXPREC + textwrap.dedent("""
    import sys

    import torch
    from torch.utils import _pytree

    cases = torch.load(sys.argv[1])
    results = {}
    with torch.no_grad():
        for name, case in cases.items():
            module = torch.export.load(case["path"]).module()
            out = module(*case["args"], **case["kwargs"])
            results[name] = [t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    assert not any(m.split(".")[0] == "mixprec" for m in sys.modules), "mixprec was imported"
    try:
        import mixprec  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("mixprec was importable")
    torch.save(results, sys.argv[2])
    print("reloaded", len(results))
""")


@dataclass
class Case:
    """One model converted once: what went in, what came out, and the state before ``fit``."""
    name: str
    module: torch.nn.Module
    inputs: Any
    state_before: dict[str, torch.Tensor]
    fp32_outputs: list[torch.Tensor]
    converted: ConvertedModel
    converted_outputs: list[torch.Tensor]


def _run(module: torch.nn.Module, inputs: Any) -> list[torch.Tensor]:
    """The output tensors of one forward pass, flattened in pytree order."""
    with torch.no_grad():
        return [t.detach() for t in tm.flat_tensors(tm.call(module, inputs))]


def _split(inputs: Any) -> tuple[tuple, dict]:
    """Example inputs as ``(args, kwargs)``."""
    return ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A private copy of the module's state (values and dtypes)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened, in float64."""
    x, y = a.detach().double().flatten(), b.detach().double().flatten()
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


def _packet(op: str) -> str:
    """``aten.conv2d.default`` -> ``aten.conv2d``."""
    return op.rsplit(".", 1)[0] if op.count(".") >= 2 else op


def _float_values(node: Node, outputs: bool = False) -> list:
    """The node's float input (or output) values."""
    values = node.outputs if outputs else node.inputs
    return [v for v in values if v is not None and v.dtype.is_float]


def _touches_float(node: Node) -> bool:
    """True when the node reads or writes a float tensor."""
    return bool(_float_values(node) or _float_values(node, outputs=True))


def _assert_close_outputs(got: list[torch.Tensor], want: list[torch.Tensor], min_cosine: float = MIN_COSINE) -> None:
    """Same structure, shapes and dtypes; every float output finite with cosine >= ``min_cosine``."""
    assert len(got) == len(want)
    floats = 0
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        if b.is_floating_point():
            floats += 1
            assert torch.isfinite(a).all()
            assert _cosine(a, b) >= min_cosine
    assert floats > 0


def _build(name: str) -> Case:
    """Build model ``name``, record its state and FP32 outputs, convert it and run the result."""
    module, inputs = tm.BUILDERS[name]()
    state_before = _snapshot(module)
    fp32_outputs = _run(module, inputs)
    converted = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=inputs))
    return Case(name, module, inputs, state_before, fp32_outputs, converted, _run(converted.model, inputs))


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    """Each model converted at most once per test module (filled lazily by ``case``)."""
    return {}


@pytest.fixture(scope="module", params=MODELS)
def case(request, cases: dict[str, Case]) -> Case:
    """One converted model per parameter (shared with ``reloaded``)."""
    if request.param == "bert":
        pytest.importorskip("transformers", reason="the BERT encoder comes from transformers")
    if request.param not in cases:
        cases[request.param] = _build(request.param)
    return cases[request.param]


@pytest.fixture(scope="module")
def reloaded(cases: dict[str, Case], tmp_path_factory) -> dict[str, list[torch.Tensor]]:
    """Save every converted model, reload them all in one fresh ``python -I`` process
    (cwd a temp dir) where mixprec cannot be imported, and return the outputs computed
    there (model name -> tensors)."""
    directory = tmp_path_factory.mktemp("fresh")
    specs = {}
    for name in MODELS:
        if name not in cases:
            try:
                cases[name] = _build(name)
            except ImportError:  # transformers missing: that model's test is skipped anyway
                continue
        path = cases[name].converted.save(directory / f"{name}.pt2")
        args, kwargs = _split(cases[name].inputs)
        specs[name] = {"path": str(path), "args": args, "kwargs": kwargs}
    spec_path, result_path = directory / "cases.pt", directory / "results.pt"
    torch.save(specs, spec_path)
    result = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS, str(spec_path), str(result_path)],
                            cwd=directory, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"reloaded {len(specs)}" in result.stdout
    return torch.load(result_path)


# --------------------------------------------------------------------- every model ---
def test_converted_module_runs_and_matches_fp32(case):
    """Cosine >= 0.99 on every float output, computed here from the module's outputs."""
    _assert_close_outputs(case.converted_outputs, case.fp32_outputs)
    # The report's own check agrees with ours.
    assert case.converted.report.checks
    assert all(check.cosine >= MIN_COSINE for check in case.converted.report.checks)


def test_saved_program_reloads_without_mixprec_and_matches(case, reloaded):
    """The .pt2 reloaded without mixprec computes exactly what the in-process module does."""
    got = reloaded[case.name]
    assert len(got) == len(case.converted_outputs)
    for a, b in zip(got, case.converted_outputs):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a - b).abs().max()
    _assert_close_outputs(got, case.fp32_outputs)


def test_matmul_like_nodes_run_in_bf16(case):
    """Linear/conv/matmul nodes are bf16 and read and write bf16 tensors."""
    nodes = [n for n in case.converted.ir.graph.all_nodes() if _packet(n.op) in MATMUL_OPS]
    assert nodes, f"{case.name} has no linear/conv/matmul node"
    for node in nodes:
        assert node.meta.get("precision") == "bf16", (node.name, node.meta)
        floats = _float_values(node)
        assert floats and all(v.dtype == DType.BFLOAT16 for v in floats), (node.name, [v.dtype for v in floats])
        assert all(v.dtype == DType.BFLOAT16 for v in _float_values(node, outputs=True)), node.name


def test_every_node_follows_the_torch_policy(case):
    """Each node's category is its list in torch.toml; deny nodes (softmax, layer norm,
    pooling means, LSTM) run in f32 on f32 inputs; allow nodes in bf16."""
    policy = load_policy("torch")
    seen = set()
    for node in case.converted.ir.graph.all_nodes():
        if is_cast(node) or node.meta.get("category") == "shape":
            continue
        seen.add(_packet(node.op))
        category, _ = policy.category(node.op, node.attrs)
        assert node.meta.get("category") == category, (node.name, node.op, node.meta)
        if not _touches_float(node):
            continue
        if category == "deny":
            assert node.meta.get("precision") == "f32", (node.name, node.meta)
            assert all(v.dtype == DType.FLOAT32 for v in _float_values(node)), node.name
        elif category == "allow":
            assert node.meta.get("precision") == "bf16", (node.name, node.meta)
        else:
            assert node.meta.get("precision") in ("bf16", "f32"), (node.name, node.meta)
    assert SENSITIVE_OPS[case.name] <= seen
    for op in SENSITIVE_OPS[case.name]:
        assert policy.base_category(op) == "deny"


def test_report_explains_every_node(case):
    """One decision per IR node, each with a real reason."""
    report = case.converted.report
    nodes = list(case.converted.ir.graph.all_nodes())
    assert len(report.nodes) == len(nodes)
    for decision in report.nodes:
        assert decision.reason and decision.reason.strip(), decision
        assert "no pass recorded a decision" not in decision.reason, decision
        assert decision.precision in ("bf16", "f32", "keep"), decision


def test_fit_does_not_mutate_the_users_module(case):
    """State values and dtypes, eval mode and outputs are as before ``fit``."""
    after = case.module.state_dict()
    assert after.keys() == case.state_before.keys()
    for key, before in case.state_before.items():
        assert after[key].dtype == before.dtype, key
        assert torch.equal(after[key], before), key
    assert not case.module.training
    for a, b in zip(_run(case.module, case.inputs), case.fp32_outputs):
        assert torch.equal(a, b)


# -------------------------------------------------------------------- single cases ---
def test_saved_linear_conv_heavy_program_is_about_half_the_fp32_size(tmp_path):
    """A width-64 ResNet's converted .pt2 is < 0.65x its FP32 .pt2 and still reloads."""
    module, inputs = tm.resnet(width=64)
    converted = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=inputs))
    bf16_path = converted.save(tmp_path / "m.pt2")
    fp32_path = save_fp32_program(module, tmp_path / "fp32.pt2", inputs)
    ratio = Path(bf16_path).stat().st_size / Path(fp32_path).stat().st_size
    assert 0.4 < ratio < 0.65, ratio
    reloaded = torch.export.load(str(bf16_path)).module()
    _assert_close_outputs(_run(reloaded, inputs), _run(module, inputs))


def test_module_path_override_keeps_one_bert_block_fp32():
    """``op_name_dict`` naming one encoder layer's module path keeps every matmul-like
    node in that scope f32 and leaves the others bf16."""
    pytest.importorskip("transformers", reason="the BERT model comes from transformers")
    module, inputs = tm.bert()
    config = MixedPrecisionConfig(example_inputs=inputs,
                                  op_name_dict={FP32_BLOCK: {"activation": {"dtype": ["fp32"]}}})
    converted = mix_precision.fit(module, config=config)
    inside = outside = 0
    for node in converted.ir.graph.all_nodes():
        if _packet(node.op) not in MATMUL_OPS:
            continue
        scope = node.meta.get("scope", "")
        if scope == FP32_BLOCK or scope.startswith(FP32_BLOCK + "."):
            inside += 1
            assert node.meta["precision"] == "f32", (node.name, node.meta)
            assert node.meta["reason"].startswith("user override"), node.meta
            assert all(v.dtype == DType.FLOAT32 for v in _float_values(node)), node.name
        else:
            outside += 1
            assert node.meta["precision"] == "bf16", (node.name, node.meta)
    assert inside >= 6 and outside >= 6  # q, k, v, 2 matmuls, 3 dense layers per block
    _assert_close_outputs(_run(converted.model, inputs), _run(module, inputs))


def test_uncapturable_module_is_a_mixprec_error():
    """Data-dependent python control flow: fit raises UnsupportedModelError, not a torch error."""
    module, inputs = tm.data_dependent()
    with pytest.raises(UnsupportedModelError) as info:
        mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=inputs))
    assert isinstance(info.value, MixprecError)
    assert "cannot capture" in str(info.value)


def test_cli_converts_a_saved_fp32_program(tmp_path, capsys):
    """``mixprec convert model.pt2 -o out.pt2`` writes a bf16 program that reloads and matches."""
    module, inputs = tm.two_heads()
    source = tmp_path / "model.pt2"
    args, kwargs = _split(inputs)
    torch.export.save(torch.export.export(copy.deepcopy(module), args, kwargs), str(source))
    source_bytes = source.read_bytes()
    out = tmp_path / "out.pt2"
    assert cli_main(["convert", str(source), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert source.read_bytes() == source_bytes
    program = torch.export.load(str(out))
    dtypes = {t.dtype for t in program.state_dict.values()}
    assert torch.bfloat16 in dtypes
    _assert_close_outputs(_run(program.module(), inputs), _run(module, inputs))


def test_dynamic_batch_and_fallback_fx_through_fit(tmp_path):
    from mixprec.errors import UnsupportedModelError
    module, example = tm.resnet(batch=2)
    converted = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=example, dynamic_batch=True))
    bigger = (torch.randn(5, *example[0].shape[1:]),)
    with torch.no_grad():
        assert converted.model(*bigger).shape[0] == 5
    path = converted.save(tmp_path / "dyn.pt2")
    reloaded = torch.export.load(path).module()
    with torch.no_grad():
        assert reloaded(*bigger).shape[0] == 5
    branchy, branch_inputs = tm.data_dependent()
    with pytest.raises(UnsupportedModelError, match="fallback_fx"):
        mix_precision.fit(branchy, config=MixedPrecisionConfig(example_inputs=branch_inputs))
    traced = mix_precision.fit(branchy, config=MixedPrecisionConfig(example_inputs=branch_inputs, fallback_fx=True))
    assert all(c.cosine >= 0.99 for c in traced.report.checks)


# ---------------------------------------------------------- gather tables (issue 7) ---
def test_embedding_table_is_stored_bf16_in_the_saved_program(tmp_path):
    """Embedding -> LayerNorm -> Linear: the table used to stay FP32 (a LayerNorm reads
    the rows). Now the .pt2 stores it in bf16, and the outputs equal those of the FP32
    model whose table (and Linear) are rounded, up to bf16 rounding of the Linear."""
    module, inputs = tm.embedding_norm_head()
    converted = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=inputs))
    path = converted.save(tmp_path / "m.pt2")
    program = torch.export.load(str(path))
    assert program.state_dict["embed.weight"].dtype == torch.bfloat16
    assert program.state_dict["norm.weight"].dtype == torch.float32
    table = program.state_dict["embed.weight"]
    torch.testing.assert_close(table.float(), module.embed.weight.detach().to(torch.bfloat16).float(), rtol=0, atol=0)
    rounded = copy.deepcopy(module)
    with torch.no_grad():
        rounded.embed.weight.copy_(rounded.embed.weight.to(torch.bfloat16).float())
    got = _run(program.module(), inputs)
    want = _run(rounded, inputs)
    assert _cosine(got[0], want[0]) >= 0.9999
    torch.testing.assert_close(got[0].float(), want[0], rtol=0.02, atol=0.05)
    fp32_path = save_fp32_program(module, tmp_path / "fp32.pt2", inputs)
    assert Path(path).stat().st_size / Path(fp32_path).stat().st_size < 0.6


def test_candidate_inputs_follow_the_example_then_the_ladder():
    """The example inputs come first; with a dynamic batch, generated inputs of the same
    structure follow, with token ids below the embedding's rows."""
    from mixprec.runtimes.torch import TorchAdapter
    module, inputs = tm.embedding_norm_head(batch=3)
    config = MixedPrecisionConfig(example_inputs=inputs, dynamic_batch=True)
    adapter = TorchAdapter()
    ir_model = adapter.load(module, config)
    candidates = list(adapter.candidate_inputs(module, ir_model, config))
    assert candidates[0] is inputs
    assert len(candidates) >= 2
    ids = candidates[1][0]
    assert ids.dtype == torch.int64 and ids.shape == (1, 12)
    assert int(ids.max()) < 1000 and int(ids.max()) >= 2


def _transformers_case(name: str):
    import transformers
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if name == "bert":
        return tm.bert_model(seq=16)
    if name == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=256, n_positions=32,
                                         use_cache=False, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2Model(config).eval(), {"input_ids": torch.randint(0, 256, (2, 16), generator=gen)}
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1],
                                       layer_type="basic")
    model = transformers.ResNetModel(config)
    tm.calibrate_batchnorm(model, lambda: torch.randn(4, 3, 64, 64, generator=gen))
    return model.eval(), {"pixel_values": torch.randn(1, 3, 64, 64, generator=gen)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "gpt2", "resnet"])
def test_transformers_models_through_the_default_cli_path(name, tmp_path):
    """transformers BertModel, GPT2Model and ResNetModel (small configs, random weights,
    calibrated BatchNorm) saved as FP32 .pt2, converted by ``mixprec convert`` with no
    shapes given: the check runs, the output reloads with plain torch and matches FP32;
    the embedding tables are stored bf16."""
    module, inputs = _transformers_case(name)
    source = save_fp32_program(module, tmp_path / "fp32.pt2", inputs)
    out = tmp_path / "bf16.pt2"
    assert cli_main(["convert", str(source), "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["checks"] and min(c["cosine"] for c in report["checks"]) >= 0.999
    program = torch.export.load(str(out))
    got = _run(program.module(), inputs)
    want = _run(torch.export.load(str(source)).module(), inputs)
    assert min(_cosine(g.float(), w.float()) for g, w in zip(got, want)) >= 0.999
    tables = [v.dtype for k, v in program.state_dict.items() if "embeddings.weight" in k or k in ("wte.weight", "wpe.weight")]
    assert all(d == torch.bfloat16 for d in tables)


def test_empty_lifted_constant_saves_and_reloads(tmp_path):
    """transformers' GPT-2/LLaMA/T5 attention lifts empty tensors as constants; stored as
    bf16 views of an empty buffer they made torch.export.save fail ("numel: integer
    multiplication overflow", an internal error on every such .pt2)."""
    class WithEmpty(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) + torch.tensor([]).sum()

    torch.manual_seed(0)
    x = torch.randn(2, 4)
    model = WithEmpty().eval()
    converted = mix_precision.fit(model, MixedPrecisionConfig(example_inputs=(x,)))
    path = converted.save(tmp_path / "m.pt2")
    got = torch.export.load(path).module()(x)
    assert got.dtype == torch.float32 and torch.allclose(got, model(x), atol=0.05)
