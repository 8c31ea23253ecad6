"""The built-in precision policies (passes/policies/*.toml) and the policy loader's errors.

Framework-specific checks compare the policy files against the installed frameworks:
every default-domain ONNX op, every aten op of small torch.export graphs, MXNet's AMP
bf16 lists, TF's op registry. Each is skipped with a reason when that framework is absent."""
from __future__ import annotations

import importlib.util
import itertools
import tomllib
from pathlib import Path

import pytest

from mixprec.errors import PolicyError
from mixprec.passes.policies import (LISTS, POLICY_DIR, builtin_policies, load_policy,
                                     parse_policy)

BUILTINS = ["onnx", "tensorflow", "torch", "mxnet"]


def _raw(name: str) -> dict:
    return tomllib.loads((POLICY_DIR / f"{name}.toml").read_text())


# ---------------------------------------------------------------- all built-in policies

def test_every_framework_has_a_builtin_policy():
    assert set(BUILTINS) <= set(builtin_policies())


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_policy_loads(name):
    policy = load_policy(name)
    assert policy.framework == name
    assert policy.reference, f"{name}.toml names no reference"
    for lst in LISTS:
        assert policy.lists[lst], f"{name}.toml has an empty {lst!r} list"
    assert policy.shape_sources, f"{name}.toml names no shape sources"


@pytest.mark.parametrize("name", BUILTINS)
def test_no_op_in_two_lists(name):
    raw = _raw(name)
    for a, b in itertools.combinations(LISTS, 2):
        both = set(raw.get(a, [])) & set(raw.get(b, []))
        assert not both, f"{name}.toml: {sorted(both)} in both {a} and {b}"
    for lst in LISTS:
        ops = raw.get(lst, [])
        assert len(ops) == len(set(ops)), f"{name}.toml: duplicates in {lst}"


@pytest.mark.parametrize("name", BUILTINS)
def test_pins_shape_inputs_and_rules_name_listed_ops(name):
    policy = load_policy(name)
    for table in ("pins", "shape_inputs"):
        for op, indices in getattr(policy, table).items():
            assert policy.base_category(op) != "unlisted", f"{name}.toml [{table}] names {op!r}, which no list names"
            assert all(i >= -1 for i in indices), f"{name}.toml [{table}] {op}: bad index"
    for rule in policy.conditional:
        assert rule.op in policy.known_ops, f"{name}.toml: conditional rule for unlisted op {rule.op!r}"
        assert rule.list != policy.base_category(rule.op), f"{name}.toml: rule for {rule.op} changes nothing"


# ---------------------------------------------------------------------------------- ONNX

def _onnx_schemas():
    defs = pytest.importorskip("onnx.defs", reason="onnx is not installed; the ONNX op set comes from onnx.defs")
    return defs.get_all_schemas_with_history()


def test_onnx_every_default_domain_op_in_exactly_one_list():
    ops = {s.name for s in _onnx_schemas() if s.domain in ("", "ai.onnx")}
    assert len(ops) > 150
    raw = _raw("onnx")
    for op in sorted(ops):
        where = [lst for lst in LISTS if op in raw.get(lst, [])]
        assert len(where) == 1, f"ONNX op {op} is in {where or 'no list'}; it must be in exactly one"


def test_onnx_ml_domain_ops_are_denied():
    ml = {s.name for s in _onnx_schemas() if s.domain == "ai.onnx.ml"}
    policy = load_policy("onnx")
    assert ml
    for op in ml:
        assert policy.base_category(f"ai.onnx.ml::{op}") == "deny", op


def _latest_onnx_schemas():
    latest = {}
    for s in _onnx_schemas():
        if s.domain == "" and (s.name not in latest or s.since_version > latest[s.name].since_version):
            latest[s.name] = s
    return latest


def test_onnx_pins_are_float_inputs_outside_the_main_type_variable():
    latest = _latest_onnx_schemas()
    policy = load_policy("onnx")
    for op, indices in policy.pins.items():
        schema = latest[op]
        constraints = {t.type_param_str: set(t.allowed_type_strs) for t in schema.type_constraints}
        for i in indices:
            assert i < len(schema.inputs), f"{op} has no input {i}"
            formal = schema.inputs[i]
            allowed = constraints.get(formal.type_str, {formal.type_str})
            assert "tensor(float)" in allowed, f"pinned input {i} ({formal.name}) of {op} never holds float"
            if i > 0 and op not in ("BitCast",):
                assert formal.type_str != schema.inputs[0].type_str, \
                    f"pinned input {i} of {op} shares the main input's type variable; casting it is required"


def test_onnx_shape_inputs_exist_in_the_schema():
    latest = _latest_onnx_schemas()
    policy = load_policy("onnx")
    for op, indices in policy.shape_inputs.items():
        schema = latest[op]
        for i in indices:
            if i != -1:
                assert i < len(schema.inputs), f"[shape_inputs] {op}: the op has no input {i}"
    assert policy.is_shape_input("Reshape", 1) and not policy.is_shape_input("Reshape", 0)
    assert policy.is_shape_input("Range", 2)
    assert policy.is_pinned("Resize", 1) and policy.is_pinned("Resize", 2) and not policy.is_pinned("Resize", 0)


def test_onnx_categories_and_conditional_rules():
    policy = load_policy("onnx")
    expected = {
        "allow": ["Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"],
        "infer": ["Add", "Sub", "Mul", "Div", "Sum", "BatchNormalization"],
        "clear": ["Reshape", "Transpose", "Relu", "MaxPool", "Concat", "Gather", "Shape",
                  "MatMulInteger", "QLinearConv", "ConvInteger", "Cast"],
        "deny": ["Exp", "Log", "Pow", "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean",
                 "LayerNormalization", "InstanceNormalization", "SoftmaxCrossEntropyLoss",
                 "If", "Loop", "Scan", "SequenceAt", "OptionalHasElement"],
    }
    for lst, ops in expected.items():
        for op in ops:
            assert policy.base_category(op) == lst, f"{op} should be in {lst}"
    assert policy.category("Resize", {"mode": b"cubic"})[0] == "deny"
    assert policy.category("Resize", {"mode": "nearest"})[0] == "clear"
    assert policy.category("Resize", {})[0] == "clear"
    assert policy.category("ScatterND", {"reduction": "add"})[0] == "deny"
    assert policy.base_category("com.microsoft::FusedMatMul") == "allow"
    assert set(policy.shape_sources) == {"Shape", "Size"}


# ----------------------------------------------------------------------------- TensorFlow

def test_tensorflow_grappler_ops_in_expected_lists():
    policy = load_policy("tensorflow")
    expected = {
        "allow": ["Conv2D", "MatMul", "BatchMatMulV2", "DepthwiseConv2dNative", "Einsum", "Conv3D"],
        "infer": ["AddV2", "BiasAdd", "Mul", "Sub", "FusedBatchNormV3", "Tanh", "Sigmoid"],
        "clear": ["Relu", "Reshape", "Transpose", "MaxPool", "ConcatV2", "Identity", "GatherV2",
                  "StridedSlice", "Enter", "TensorListStack"],
        "deny": ["Softmax", "Exp", "Pow", "Mean", "Sum", "SoftmaxCrossEntropyWithLogits", "L2Loss"],
    }
    for lst, ops in expected.items():
        for op in ops:
            assert policy.base_category(op) == lst, f"{op} should be in {lst}"
    for i in (1, 2, 3, 4):
        assert policy.is_pinned("FusedBatchNormV3", i)
    assert not policy.is_pinned("FusedBatchNormV3", 0)
    assert policy.is_shape_input("Reshape", 1) and policy.is_shape_input("StridedSlice", 3)
    assert set(policy.shape_sources) == {"Shape", "ShapeN", "Size", "Rank"}


def test_tensorflow_policy_names_registered_ops():
    pytest.importorskip("tensorflow", reason="tensorflow is not installed; its op registry checks the names")
    from tensorflow.python.framework import op_def_registry
    policy = load_policy("tensorflow")
    names = set(policy.known_ops) | set(policy.pins) | set(policy.shape_inputs) | set(policy.shape_sources)
    unknown = sorted(n for n in names if op_def_registry.get(n) is None)
    assert not unknown, f"not TF ops: {unknown}"
    # U (scale/offset/mean/variance) is its own type attribute: pinned inputs stay float32.
    op_def = op_def_registry.get("FusedBatchNormV3")
    assert [a.type_attr for a in op_def.input_arg] == ["T", "U", "U", "U", "U"]


# ---------------------------------------------------------------------------------- torch

def _torch_ops(module, args):
    torch = pytest.importorskip("torch", reason="torch is not installed; the aten op set comes from torch.export")
    with torch.no_grad():
        ep = torch.export.export(module, args)
    found = set()
    for gm in (ep.graph_module, ep.run_decompositions().graph_module):
        found |= {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    return {op for op in found if op.startswith("aten.")}


def _small_cnn():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    nn = torch.nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            self.avg = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = torch.relu(self.bn1(self.c1(x)))
            y = torch.relu(y + self.bn2(self.c2(y)))
            y = self.avg(self.pool(y)).flatten(1)
            return torch.softmax(self.fc(y), -1)

    return CNN().eval(), (torch.randn(2, 3, 16, 16),)


def _small_encoder():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation="gelu")
    return layer.eval(), (torch.randn(2, 5, 16),)


@pytest.mark.parametrize("build", [_small_cnn, _small_encoder], ids=["cnn", "transformer-encoder"])
def test_torch_export_ops_are_all_listed(build):
    module, args = build()
    ops = _torch_ops(module, args)
    assert ops, "the export produced no aten op"
    policy = load_policy("torch")
    unlisted = sorted(op for op in ops if policy.base_category(op) == "unlisted")
    assert not unlisted, f"aten ops in no list of torch.toml: {unlisted}"


def test_torch_categories():
    cnn_ops = _torch_ops(*_small_cnn())
    policy = load_policy("torch")
    assert "aten.conv2d.default" in cnn_ops and "aten.convolution.default" in cnn_ops
    assert policy.base_category("aten.conv2d.default") == "allow"
    assert policy.base_category("aten.convolution.default") == "allow"
    assert policy.base_category("aten.addmm.default") == "allow"
    assert policy.base_category("aten._native_batch_norm_legit_no_training.default") == "infer"
    assert policy.base_category("aten.add.Tensor") == "infer"
    assert policy.base_category("aten.relu.default") == "clear"
    assert policy.base_category("aten.view.default") == "clear"
    assert policy.base_category("aten._to_copy.default") == "clear"
    assert policy.base_category("aten._softmax.default") == "deny"
    assert policy.base_category("aten.native_layer_norm.default") == "deny"
    assert policy.base_category("aten.mean.dim") == "deny"
    assert policy.is_shape_source("aten.sym_size.int")
    assert policy.is_pinned("aten.scaled_dot_product_attention.default", 3)


def test_torch_policy_names_aten_ops():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    policy = load_policy("torch")
    names = set(policy.known_ops) | set(policy.pins) | set(policy.shape_inputs) | set(policy.shape_sources)
    for name in policy.known_ops:
        assert name.startswith("aten.") and name.count(".") == 1, f"{name}: list aten.<op> without overload"
    missing = []
    for name in sorted(names):
        _, packet, *overload = name.split(".")
        try:
            found = getattr(torch.ops.aten, packet)
            if overload:
                getattr(found, overload[0])
        except (AttributeError, RuntimeError):
            missing.append(name)
    assert not missing, f"not aten ops in torch {torch.__version__}: {missing}"


# ---------------------------------------------------------------------------------- MXNet

def _mxnet_bf16_lists():
    """MXNet's AMP bf16 lists, read from the installed file without importing mxnet."""
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mxnet is not installed; its AMP bf16 lists are the reference for mxnet.toml")
    path = Path(list(spec.submodule_search_locations)[0]) / "contrib" / "amp" / "lists" / "symbol_bf16.py"
    if not path.exists():
        pytest.skip(f"installed mxnet has no AMP bf16 lists at {path}")
    lists_spec = importlib.util.spec_from_file_location("_mxnet_symbol_bf16", path)
    module = importlib.util.module_from_spec(lists_spec)
    lists_spec.loader.exec_module(module)
    return module


def test_mxnet_policy_matches_installed_amp_lists():
    amp = _mxnet_bf16_lists()
    policy = load_policy("mxnet")
    # MXNet list -> policy list, strictest first: an op in two MXNet lists takes the first.
    order = [("deny", amp.FP32_FUNCS), ("infer", amp.WIDEST_TYPE_CASTS),
             ("clear", amp.BF16_FP32_FUNCS), ("allow", amp.BF16_FUNCS)]
    expected: dict[str, str] = {}
    for lst, ops in order:
        for op in ops:
            expected.setdefault(op, lst)
    wrong = {op: (lst, policy.base_category(op)) for op, lst in expected.items()
             if policy.base_category(op) != lst}
    assert not wrong, f"op: (expected, found) {wrong}"
    extra = set(policy.known_ops) - set(expected)
    assert extra == {"amp_cast", "amp_multicast", "Activation", "LeakyReLU", "_contrib_BatchNormWithReLU"}
    # the extras are dtype-agnostic, or (the contrib op's registered name) follow their AMP twin
    assert all(policy.base_category(op) == "clear" for op in extra - {"_contrib_BatchNormWithReLU"})
    assert policy.base_category("_contrib_BatchNormWithReLU") == policy.base_category("BatchNormWithReLU")
    rules = {(r.op, r.attr, r.values, r.list) for r in policy.conditional}
    assert rules == {(op, attr, tuple(values), "deny") for op, attr, values in amp.CONDITIONAL_FP32_FUNCS}
    assert policy.category("Activation", {"act_type": "softrelu"})[0] == "deny"
    assert policy.category("Activation", {"act_type": "relu"})[0] == "clear"
    for op, params in amp.BF16_USE_FP32_PARAMS.items():
        assert policy.pins[op] == frozenset(i for i, name in enumerate(params) if name)


def test_mxnet_policy_categories():
    policy = load_policy("mxnet")
    assert policy.base_category("Convolution") == "allow"
    assert policy.base_category("FullyConnected") == "allow"
    assert policy.base_category("elemwise_add") == "infer"
    assert policy.base_category("Pooling") == "clear"
    assert policy.base_category("softmax") == "deny"
    assert policy.base_category("amp_cast") == "clear"
    assert policy.is_pinned("BatchNorm", 3) and not policy.is_pinned("BatchNorm", 0)
    assert policy.is_shape_input("Embedding", 0) and policy.is_shape_input("take", 1)


# ---------------------------------------------------------------------------- loader errors

def test_unknown_key_is_rejected():
    with pytest.raises(PolicyError, match=r"unknown key\(s\) \['alow'\]"):
        parse_policy({"framework": "x", "alow": ["Conv"]}, "bad.toml")


def test_op_in_two_lists_is_rejected():
    with pytest.raises(PolicyError, match=r"'Relu' is in both 'clear' and 'deny'"):
        parse_policy({"framework": "x", "clear": ["Relu"], "deny": ["Relu", "Exp"]}, "bad.toml")


def test_op_twice_in_one_list_is_rejected():
    with pytest.raises(PolicyError, match=r"\['Add'\] listed twice in 'infer'"):
        parse_policy({"infer": ["Add", "Mul", "Add"]}, "bad.toml")


def test_conditional_rule_with_unknown_list_is_rejected():
    rule = {"op": "Resize", "attr": "mode", "values": ["cubic"], "list": "forbid"}
    with pytest.raises(PolicyError, match=r"conditional rule 0 names unknown list 'forbid'"):
        parse_policy({"clear": ["Resize"], "conditional": [rule]}, "bad.toml")


def test_conditional_rule_with_missing_key_is_rejected():
    rule = {"op": "Resize", "values": ["cubic"], "list": "deny"}
    with pytest.raises(PolicyError, match=r"conditional rule 0 needs exactly the keys"):
        parse_policy({"clear": ["Resize"], "conditional": [rule]}, "bad.toml")


def test_bad_pin_indices_are_rejected():
    with pytest.raises(PolicyError, match=r"\[pins\] Resize must be a list of input indices"):
        parse_policy({"clear": ["Resize"], "pins": {"Resize": "1,2"}}, "bad.toml")


def test_good_policy_dict_parses():
    policy = parse_policy({"framework": "x", "allow": ["MatMul"], "deny": ["Exp"],
                           "pins": {"Resize": [1, 2]},
                           "conditional": [{"op": "Resize", "attr": "mode", "values": ["cubic"],
                                            "list": "deny"}]}, "ok.toml")
    assert policy.base_category("MatMul") == "allow"
    assert policy.base_category("Relu") == "unlisted"
    assert policy.category("Resize", {"mode": "cubic"}) == ("deny", "deny list because mode='cubic'")


def test_domain_aliases_map_ai_onnx_to_the_default_domain():
    policy = load_policy("onnx")
    assert policy.category("ai.onnx::Conv") == ("allow", "allow list")
    assert policy.is_pinned("ai.onnx::Resize", 2) and policy.is_shape_input("ai.onnx::Reshape", 1)
    with pytest.raises(PolicyError, match="domain_aliases"):
        parse_policy({"domain_aliases": {"ai.onnx": 1}}, "t")
