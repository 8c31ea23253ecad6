"""mixprec.backends.torch: IR -> eager module, and .pt2 programs that run without mixprec."""
from __future__ import annotations

import copy
import inspect
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch_models as tm  # noqa: E402

from mixprec.backends.torch import emit, save  # noqa: E402
from mixprec.dialects.torch import ir_dtype  # noqa: E402
from mixprec.errors import ConversionError  # noqa: E402
from mixprec.frontends.torch import load, tensor_to_numpy  # noqa: E402
from mixprec.ir import DType, Graph, Model, Value, dump, parse, verify  # noqa: E402

MODELS = list(tm.BUILDERS)

# Runs in a fresh interpreter (python -I) with mixprec made unimportable: every saved
# program must load and reproduce its expected outputs bit for bit.
FRESH_PROCESS_CHECK = textwrap.dedent("""
    import importlib.abc, sys

    class _NoMixprec(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mixprec" or name.startswith("mixprec."):
                raise ImportError("mixprec is not available here")
            return None

    sys.meta_path.insert(0, _NoMixprec())
    import torch
    from torch.utils import _pytree

    cases = torch.load(sys.argv[1])
    for case in cases:
        module = torch.export.load(case["path"]).module()
        out = module(*case["args"], **case["kwargs"])
        got = [t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        want = case["expected"]
        assert len(got) == len(want), case["path"]
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b), case["path"]
    assert not any(name.split(".")[0] == "mixprec" for name in sys.modules)
    try:
        import mixprec
    except ImportError:
        pass
    else:
        raise SystemExit("mixprec was importable")
    print("checked", len(cases))
""")


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    module, example = tm.BUILDERS[request.param]()
    return request.param, module, example, load(module, example)


def _args(example):
    return ((), dict(example)) if isinstance(example, dict) else (tuple(example), {})


def _assert_same_outputs(got, want):
    got, want = tm.flat_tensors(got), tm.flat_tensors(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


def _run_fresh(cases, directory: Path) -> None:
    spec = directory / "cases.pt"
    torch.save(cases, spec)
    result = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS_CHECK, str(spec)], cwd=directory,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checked {len(cases)}" in result.stdout


# ------------------------------------------------------------------- every model ---
def test_emit_is_bit_identical(case):
    _, module, example, model = case
    emitted = emit(model)
    _assert_same_outputs(tm.call(emitted, example), tm.call(module, example))
    assert type(tm.call(emitted, example)) is type(tm.call(module, example))


def test_emitted_state_uses_fqns(case):
    _, module, _, model = case
    emitted = emit(model)
    state = emitted.state_dict()
    for name, param in module.named_parameters():
        assert torch.equal(state[name], param.detach())
    assert {n for n, _ in emitted.named_parameters()} == {n for n, _ in module.named_parameters()}


def test_emitted_module_copies_and_pickles(case):
    _, module, example, model = case
    emitted = emit(model)
    want = tm.call(module, example)
    _assert_same_outputs(tm.call(copy.deepcopy(emitted), example), want)
    _assert_same_outputs(tm.call(pickle.loads(pickle.dumps(emitted)), example), want)


def test_saved_programs_run_bit_identical_without_mixprec(tmp_path):
    cases = []
    for name in MODELS:
        module, example = tm.BUILDERS[name]()
        path = save(load(module, example), tmp_path / f"{name}.pt2", example)
        args, kwargs = _args(example)
        cases.append({"path": str(path), "args": args, "kwargs": kwargs,
                      "expected": tm.flat_tensors(tm.call(module, example))})
    module, example = tm.bert()
    model = load(module, example)
    tm.convert_to_bf16(model)
    emitted = emit(model)
    path = save(emitted, tmp_path / "bert_bf16.pt2", example)
    cases.append({"path": str(path), "args": (), "kwargs": dict(example),
                  "expected": tm.flat_tensors(tm.call(emitted, example))})
    _run_fresh(cases, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{n}.pt2" for n in MODELS] + ["bert_bf16.pt2", "cases.pt"])  # no temporary files left


# ---------------------------------------------------------------- mixed precision ---
def _weight_bytes(model, dtype):
    return sum(v.data.nbytes for v in model.graph.constants.values() if v.dtype == dtype)


def test_one_linear_by_hand(tmp_path):
    module, example = tm.bert()
    model = load(module, example)
    fp32_size = save(model, tmp_path / "fp32.pt2", example).stat().st_size
    scope = "bert.encoder.layer.0.intermediate.dense"
    (node,) = tm.convert_to_bf16(model, select=lambda n: n.meta.get("scope") == scope)
    verify(model.graph)
    verify(model.graph, mixed_input_ok=lambda n, i: False)
    assert node.inputs[1].dtype == DType.BFLOAT16 and node.inputs[1].data.dtype.name == "bfloat16"
    emitted = emit(model)
    weight = emitted.get_parameter("bert.encoder.layer.0.intermediate.dense.weight")
    assert weight.dtype == torch.bfloat16
    got, want = tm.call(emitted, example), tm.call(module, example)
    assert tm.cosine(got, want) >= 0.99
    assert not all(torch.equal(a, b) for a, b in zip(tm.flat_tensors(got), tm.flat_tensors(want)))
    assert all(t.dtype == torch.float32 for t in tm.flat_tensors(got))
    bf16_size = save(emitted, tmp_path / "bf16.pt2", example).stat().st_size
    assert bf16_size < fp32_size


@pytest.mark.parametrize("name", ["resnet", "two_heads", "lstm"])
def test_all_linear_and_conv_in_bf16(name):
    module, example = tm.BUILDERS[name]()
    model = load(module, example)
    converted = tm.convert_to_bf16(model)
    assert converted
    verify(model.graph)
    verify(model.graph, mixed_input_ok=lambda n, i: False)
    assert "bf16" in dump(model.graph)
    emitted = emit(model)
    assert tm.cosine(tm.call(emitted, example), tm.call(module, example)) >= 0.99


def test_bf16_weights_halve_the_saved_program(tmp_path):
    module, example = tm.resnet(width=64)
    model = load(module, example)
    fp32 = save(model, tmp_path / "fp32.pt2", example).stat().st_size
    tm.convert_to_bf16(model)
    assert _weight_bytes(model, DType.BFLOAT16) > 0.9 * sum(v.data.nbytes for v in model.graph.constants.values())
    bf16 = save(model, tmp_path / "bf16.pt2", example).stat().st_size
    assert bf16 / fp32 < 0.6


# --------------------------------------------------------------------- interfaces ---
def test_signature_and_calling_conventions():
    module, example = tm.bert()
    emitted = emit(load(module, example))
    assert list(inspect.signature(emitted.forward).parameters) == ["input_ids", "attention_mask"]
    want = module(**example)
    _assert_same_outputs(emitted(example["input_ids"], example["attention_mask"]), want)
    _assert_same_outputs(emitted(example["input_ids"], attention_mask=example["attention_mask"]), want)
    with pytest.raises(TypeError):
        emitted(example["input_ids"])
    module, example = tm.two_heads()
    emitted = emit(load(module, example))
    reordered = {"meta": example[0]["meta"], "image": example[0]["image"]}
    _assert_same_outputs(emitted(batch=reordered), module(*example))
    assert "torch.ops.aten.conv2d.default" in emitted.graph_module.code


def test_dynamic_batch_program(tmp_path):
    module, example = tm.bert()
    model = load(module, example, dynamic_batch=True)
    path = save(model, tmp_path / "dyn.pt2", example)
    loaded = torch.export.load(str(path)).module()
    bigger = tm.bert_inputs(batch=3, seed=7)
    _assert_same_outputs(loaded(**bigger), module(**bigger))


def test_save_is_atomic(tmp_path):
    module, example = tm.two_heads()
    model = load(module, example)
    path = tmp_path / "model.pt2"
    path.write_bytes(b"previous")
    with pytest.raises(ConversionError):
        save(model, path, (torch.randn(2, 3),))  # wrong example inputs
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]
    save(model, path, example)
    assert path.read_bytes() != b"previous"


def test_save_accepts_a_plain_module(tmp_path):
    module, example = tm.lstm()
    path = save(module, tmp_path / "plain.pt2", example)
    _assert_same_outputs(torch.export.load(str(path)).module()(*example), module(*example))


def test_clashing_constant_names_get_sanitized():
    module, example = tm.two_heads()
    model = load(module, example)
    graph = model.graph
    weight = graph.constants["side.weight"]
    extra = graph.add_constant(Value("side.weight.copy", weight.dtype, weight.shape, weight.data.copy()))
    (linear,) = [n for n in graph.nodes if n.meta.get("scope") == "side"]
    linear.set_input(1, extra)
    emitted = emit(model)
    assert "side_weight_copy" in dict(emitted.named_buffers())
    _assert_same_outputs(emitted(*example), module(*example))


def test_emit_rejects_other_frameworks_and_missing_data():
    with pytest.raises(ConversionError, match="torch"):
        emit(Model(Graph("main", framework="onnx")))
    module, example = tm.lstm()
    model = load(module, example)
    reparsed = Model(parse(dump(model.graph)), model.meta)
    with pytest.raises(ConversionError, match="no data"):
        emit(reparsed)


def test_constants_keep_dtype_and_data(case):
    _, _, _, model = case
    emitted = emit(model)
    tensors = {**dict(emitted.named_parameters()), **dict(emitted.named_buffers())}
    for name, value in model.graph.constants.items():
        assert ir_dtype(tensors[name].dtype) == value.dtype
        assert tuple(tensors[name].shape) == value.shape == value.data.shape
        np.testing.assert_array_equal(tensor_to_numpy(tensors[name]), value.data)


# ------------------------------------------------------------------ assorted ATen ops ---
class _Assorted(torch.nn.Module):
    """Tied weights, no_grad regions, split (list results), einsum (string attr), symbolic
    reshapes, nn.MultiheadAttention, interpolate, lifted constants, Tensor?[] indices,
    complex fill values, setitem (select_scatter), and a dict output."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.out = torch.nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight
        self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, ids, x):
        h = self.emb(ids)
        with torch.no_grad():
            h = h * 1.0
        a, b = h.split(4, dim=-1)
        att, _ = self.mha(h, h, h)
        y = x.clone()
        y[:, 0] = 5.0
        return {
            "logits": self.out(h + att) * self.scale,
            "einsum": torch.einsum("bsd,bsd->bs", a, b),
            "flat": h.reshape(x.shape[0] * h.shape[1], -1),
            "up": torch.nn.functional.interpolate(x[:, None], scale_factor=2.0, mode="nearest"),
            "picked": torch.where(x > 0, x, 0.0)[:, torch.tensor([0, 2])],
            "complex": torch.full((2,), 1 + 2j).real + torch.tensor([1.0, 2.0]),
            "set": y,
        }


@pytest.mark.parametrize("dynamic", [False, True])
def test_assorted_ops(dynamic, tmp_path):
    torch.manual_seed(0)
    module = _Assorted().eval()
    example = (torch.randint(0, 10, (3, 5)), torch.randn(3, 5))
    model = load(module, example, dynamic_batch=dynamic)
    verify(model.graph)
    text = dump(model.graph)
    assert dump(parse(text)) == text
    emitted = emit(model)
    inputs = (torch.randint(0, 10, (4, 5)), torch.randn(4, 5)) if dynamic else example
    _assert_same_outputs(emitted(*inputs), module(*inputs))
    path = save(model, tmp_path / "assorted.pt2", example)
    _assert_same_outputs(torch.export.load(str(path)).module()(*inputs), module(*inputs))
