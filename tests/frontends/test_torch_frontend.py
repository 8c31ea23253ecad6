"""mixprec.frontends.torch: nn.Module / .pt2 -> IR (see the module docstring for conventions)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch frontend needs PyTorch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch_models as tm  # noqa: E402

from mixprec.backends.torch import emit  # noqa: E402
from mixprec.errors import ModelLoadError, UnsupportedModelError  # noqa: E402
from mixprec.frontends.torch import load, load_program, tensor_to_numpy  # noqa: E402
from mixprec.ir import DType, dump, parse, verify  # noqa: E402
from mixprec.ir.cast import cast_target, is_cast  # noqa: E402

MODELS = list(tm.BUILDERS)


@pytest.fixture(scope="module", params=MODELS)
def loaded(request):
    module, example = tm.BUILDERS[request.param]()
    return request.param, module, example, load(module, example)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_outputs(got, want):
    got, want = tm.flat_tensors(got), tm.flat_tensors(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


# ------------------------------------------------------------------- every model ---
def test_verify_and_framework(loaded):
    _, _, _, model = loaded
    verify(model.graph)
    assert model.graph.framework == "torch"
    assert all(node.domain == "" for node in model.graph.nodes)


def test_text_round_trip(loaded):
    _, _, _, model = loaded
    text = dump(model.graph)
    assert dump(parse(text)) == text


def test_linear_and_conv_nodes_carry_their_module_scope(loaded):
    name, module, _, model = loaded
    modules = dict(module.named_modules())
    heavy = [n for n in model.graph.nodes if n.op in ("aten.linear.default", "aten.conv2d.default")]
    assert heavy
    for node in heavy:
        scope = node.meta.get("scope")
        assert scope in modules, (node.name, scope)
        assert isinstance(modules[scope], (torch.nn.Linear, torch.nn.Conv2d))
        assert node.meta["module_type"].endswith(type(modules[scope]).__name__)


def test_constants_are_the_state_by_fqn(loaded):
    _, module, _, model = loaded
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    consts = model.graph.constants
    assert set(consts) <= set(state)
    assert {n for n, p in module.named_parameters()} <= set(consts)
    for name, value in consts.items():
        assert value.shape == tuple(state[name].shape)
        np.testing.assert_array_equal(value.data, tensor_to_numpy(state[name]))
    kinds = model.meta["torch"]["constant_kinds"]
    assert all(kinds[n] == "parameter" for n, _ in module.named_parameters())


def test_every_value_has_dtype_and_shape(loaded):
    _, _, _, model = loaded
    for value in model.graph.values():
        assert value.dtype != DType.UNKNOWN, value
        assert value.shape is not None and all(isinstance(d, int) for d in value.shape), value


def test_user_module_is_not_mutated(loaded):
    name, module, example, _ = loaded
    module.train()
    before = _state(module)
    load(module, example)
    after = module.state_dict()
    assert module.training
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    module.eval()


def test_no_getitem_and_no_inplace_ops(loaded):
    _, _, _, model = loaded
    for node in model.graph.nodes:
        assert "getitem" not in node.op
        packet = node.op.split(".")[1] if node.op.startswith("aten.") else ""
        assert not (packet.endswith("_") and not packet.startswith("_")), node.op


# ---------------------------------------------------------------------- specifics ---
def test_input_names_follow_the_signature_and_dict_keys():
    expected = {"resnet": ["x"], "lstm": ["x"], "bert": ["input_ids", "attention_mask"], "two_heads": ["image", "meta"]}
    for name, names in expected.items():
        module, example = tm.BUILDERS[name]()
        model = load(module, example)
        assert [v.name for v in model.graph.inputs] == names


def test_multi_output_ops_fold_getitem():
    module, example = tm.lstm()
    graph = load(module, example).graph
    (lstm,) = [n for n in graph.nodes if n.op == "aten.lstm.input"]
    assert len(lstm.outputs) == 3
    assert lstm.attrs["_tensor_lists"] == {"hx": 2, "params": 8}
    assert len(lstm.inputs) == 1 + 2 + 8
    assert [v.name for v in lstm.inputs[3:5]] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    assert lstm.meta["scope"] == "lstm"
    module, example = tm.resnet()
    graph = load(module, example).graph
    norms = [n for n in graph.nodes if "batch_norm" in n.op]
    assert norms and all(len(n.outputs) == 3 for n in norms)
    assert norms[0].inputs[1].name == "bn1.weight" and norms[0].meta["scope"] == "bn1"


def test_bert_scopes_and_attention_mask_cast():
    module, example = tm.bert()
    graph = load(module, example).graph
    scopes = {n.meta.get("scope") for n in graph.nodes if n.op == "aten.linear.default"}
    assert "bert.encoder.layer.1.attention.self.query" in scopes
    assert "bert.pooler.dense" in scopes
    casts = [n for n in graph.nodes if n.op == "aten._to_copy.default"]
    assert casts and all(is_cast(n) for n in casts)
    assert {cast_target(n) for n in casts} == {DType.BOOL}
    floats = [n for n in graph.nodes if n.op == "aten.mul.Tensor" and n.inputs[1] is None]
    assert floats and isinstance(floats[0].attrs["other"], float)  # the attention scale


class _Casts(torch.nn.Module):
    def forward(self, x):
        a = x.to(torch.bfloat16).float()
        b = x.to(dtype=torch.float16, copy=True).to(torch.float32)
        c = x.to(torch.float64, memory_format=torch.channels_last)
        return a + b, c


def test_casts_are_canonical():
    graph = load(_Casts(), (torch.randn(2, 3, 4, 5),)).graph
    casts = [n for n in graph.nodes if n.op == "aten._to_copy.default"]
    assert len(casts) == 5
    plain = [n for n in casts if is_cast(n)]
    assert [cast_target(n) for n in plain] == [DType.BFLOAT16, DType.FLOAT32, DType.FLOAT16, DType.FLOAT32]
    assert all(set(n.attrs) == {"dtype"} for n in plain)
    (kept,) = [n for n in casts if not is_cast(n)]
    assert kept.attrs == {"dtype": DType.FLOAT64, "memory_format": "channels_last"}
    verify(graph)


def test_two_outputs_and_dict_input_specs():
    module, example = tm.two_heads()
    model = load(module, example)
    assert len(model.graph.outputs) == 2
    meta = model.meta["torch"]
    assert meta["arg_names"] == ["batch"] and meta["kwarg_names"] == []
    out = emit(model)(*example)
    assert isinstance(out, tuple) and len(out) == 2


def test_model_output_structure_is_rebuilt():
    module, example = tm.bert_model()
    model = load(module, example)
    got = emit(model)(**example)
    want = module(**example)
    assert type(got) is type(want)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)
    assert torch.equal(got.pooler_output, want.pooler_output)


def test_dynamic_batch():
    module, example = tm.bert()
    model = load(module, example, dynamic_batch=True)
    verify(model.graph)
    text = dump(model.graph)
    assert dump(parse(text)) == text
    assert [v.shape for v in model.graph.inputs] == [("batch", 8), ("batch", 8)]
    sizes = [n for n in model.graph.nodes if n.op == "aten.sym_size.int"]
    assert sizes and sizes[0].outputs[0].dtype == DType.INT64 and sizes[0].outputs[0].shape == ()
    refs = [n for n in model.graph.nodes if any(isinstance(v, dict) and "$input" in v for v in n.attrs.get("size", []))]
    assert refs
    bigger = tm.bert_inputs(batch=3, seed=5)
    _assert_same_outputs(emit(model)(**bigger), module(**bigger))


def test_dynamic_batch_needs_a_batch_of_two():
    module, _ = tm.resnet()
    with pytest.raises(UnsupportedModelError, match="batch"):
        load(module, (torch.randn(1, 3, 16, 16),), dynamic_batch=True)


def test_load_program(tmp_path):
    module, example = tm.two_heads()
    path = tmp_path / "two_heads.pt2"
    torch.export.save(torch.export.export(module, example), str(path))
    model = load_program(path)
    verify(model.graph)
    assert [v.name for v in model.graph.inputs] == ["image", "meta"]
    assert "side.weight" in model.graph.constants
    _assert_same_outputs(emit(model)(*example), module(*example))
    with pytest.raises(ModelLoadError):
        load_program(tmp_path / "missing.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError):
        load_program(tmp_path / "junk.pt2")


# -------------------------------------------------------------- uncapturable models ---
def test_data_dependent_control_flow_is_reported():
    module, example = tm.data_dependent()
    with pytest.raises(UnsupportedModelError) as info:
        load(module, example)
    message = str(info.value)
    assert "DataDependentBranch" in message and "data-dependent" in message
    assert "if y.sum() > 0" in message
    assert "fallback_fx=True" in message


class _InplaceBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.act = torch.nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.fc(x))
        y += 1.0
        return y * 2 if y.sum() > 0 else y - 1


def test_fallback_fx_specializes_on_the_example():
    torch.manual_seed(0)
    module, example = _InplaceBranch().eval(), (torch.randn(3, 4),)
    model = load(module, example, fallback_fx=True)
    verify(model.graph)
    assert model.meta["torch"]["capture"] == "make_fx"
    ops = [n.op for n in model.graph.nodes]
    assert "aten.relu.default" in ops and "aten.add.Tensor" in ops
    assert not any(op.endswith("_.default") or op.endswith("_.Tensor") for op in ops)
    (linear,) = [n for n in model.graph.nodes if n.op == "aten.linear.default"]
    assert linear.meta["scope"] == "fc" and linear.inputs[1].name == "fc.weight"
    _assert_same_outputs(emit(model)(*example), module(*example))
    text = dump(model.graph)
    assert dump(parse(text)) == text


class _ScalarsInAndOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x, scale: float, flag: bool = True):
        y = self.fc(x) * scale
        return (y, None, x.shape[0]) if flag else y


def test_python_scalars_in_inputs_and_outputs():
    torch.manual_seed(0)
    module, x = _ScalarsInAndOut().eval(), torch.randn(3, 4)
    model = load(module, (x, 2.0, True))
    verify(model.graph)
    assert model.meta["torch"]["specialized_inputs"] == {1: 2.0, 2: True}
    assert model.meta["torch"]["constant_outputs"] == {1: None, 2: 3}
    assert len(model.graph.outputs) == 1
    emitted = emit(model)
    got, want = emitted(x, 2.0, True), module(x, 2.0, True)
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]
    with pytest.raises(ValueError, match="specialized"):
        emitted(x, 3.0, True)
