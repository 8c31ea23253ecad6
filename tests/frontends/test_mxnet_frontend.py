"""MXNet frontend and backend: lowering (variables, attributes, multi-output ops, amp_cast),
IR invariants, text round trip, bit-identical load -> emit, the user's model untouched,
input shapes, output file names, and bad inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from mixprec.frontends import mxnet as frontend
except Exception as exc:  # MissingDependencyError, or mxnet failing to import
    pytest.skip(f"the MXNet frontend needs mxnet 1.9.1 importable: {exc}", allow_module_level=True)

from mixprec.backends import mxnet as backend  # noqa: E402
from mixprec.errors import ConfigError, ModelLoadError  # noqa: E402
from mixprec.ir import DType, dump, parse, verify  # noqa: E402
from mixprec.ir.cast import cast_target, is_cast  # noqa: E402
from tests import mxnet_models as mm  # noqa: E402

mx = frontend.mx


def _outputs(block, x) -> list[np.ndarray]:
    out = block(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [o.astype("float32").asnumpy() for o in outs]


def _reference(model, x) -> list[np.ndarray]:
    """The model's own outputs: the block itself, or a SymbolBlock for a triple."""
    if isinstance(model, tuple):
        symbol, args, aux = model
        return _outputs(backend.to_block(symbol, args, aux), x)
    return _outputs(model, x)


def _emitted(ir_model, x) -> list[np.ndarray]:
    return _outputs(backend.to_block(*backend.emit(ir_model)), x)


@pytest.fixture(scope="module", params=sorted(mm.MODELS))
def case(request):
    model, x = mm.MODELS[request.param]()
    return request.param, model, x, frontend.load(model, example_inputs=(x,))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    block, x = mm.cnn()
    symbol_file, params_file = mm.export(block, x, str(tmp_path_factory.mktemp("cnn") / "cnn"))
    return block, x, symbol_file, params_file


# ---------------------------------------------------------------- every model ---
def test_loaded_model_verifies(case):
    _, _, x, model = case
    verify(model.graph)
    assert model.framework == "mxnet"
    assert [v.name for v in model.graph.inputs] == ["data"]
    assert model.graph.inputs[0].shape == tuple(x.shape)
    assert model.graph.inputs[0].dtype == DType.FLOAT32


def test_text_round_trip(case):
    text = dump(case[3].graph)
    assert dump(parse(text)) == text


def test_emit_is_bit_identical(case):
    _, model, x, ir_model = case
    want, got = _reference(model, x), _emitted(ir_model, x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        assert np.abs(b).max() > 1e-3  # outputs are not degenerate


def test_every_value_is_typed_and_shaped(case):
    for node in case[3].graph.iter_nodes():
        for value in node.outputs:
            assert value.dtype == DType.FLOAT32, value
            assert value.shape is not None and None not in value.shape, value


def test_nodes_match_the_symbol_json(case):
    _, model, x, ir_model = case
    symbol = model[0] if isinstance(model, tuple) else model(mx.sym.var("data"))
    nodes = json.loads(symbol.tojson())["nodes"]
    ops = [n for n in nodes if n["op"] != "null"]
    assert [(n.op, n.name) for n in ir_model.graph.iter_nodes()] == [(n["op"], n["name"]) for n in ops]
    for ir_node, js in zip(ir_model.graph.iter_nodes(), ops):
        assert ir_node.attrs == js.get("attrs", {})  # strings, verbatim
        assert all(isinstance(v, str) for v in ir_node.attrs.values())


# ---------------------------------------------------------------- lowering details ---
def test_parameters_become_constants_with_exact_data():
    block, x = mm.cnn()
    model = frontend.load(block, example_inputs=(x,))
    params = {p.name: p.data().asnumpy() for p in block.collect_params().values()}
    assert set(model.graph.constants) == set(params)
    for name, data in params.items():
        const = model.graph.constants[name]
        assert const.dtype == DType.FLOAT32 and const.shape == data.shape
        np.testing.assert_array_equal(const.data, data)
    aux = set(model.meta[frontend.META]["aux"])
    assert aux == {n for n in params if n.endswith(("running_mean", "running_var"))} and len(aux) == 4


def test_multi_output_ops():
    (symbol, args, aux), x = mm.two_outputs()
    model = frontend.load((symbol, args, aux), example_inputs=(x,))
    nodes = {n.name: n for n in model.graph.iter_nodes()}
    assert [v.name for v in nodes["bn"].outputs] == ["bn_output", "bn_mean", "bn_var"]
    assert [v.shape for v in nodes["bn"].outputs] == [(2, 4, 8, 8), (4,), (4,)]
    assert [v.name for v in nodes["halves"].outputs] == ["halves_output0", "halves_output1"]
    assert nodes["merged"].inputs == nodes["halves"].outputs
    assert [v.name for v in model.graph.outputs] == ["fc_output", "bn_mean"]
    block, x = mm.cnn()
    gluon = frontend.load(block, example_inputs=(x,))
    assert all(len(n.outputs) == 1 for n in gluon.graph.iter_nodes() if n.op == "BatchNorm")


@pytest.mark.mxnet_onednn_bf16
def test_amp_cast_lowers_to_the_canonical_cast():
    from mxnet.contrib import amp
    (symbol, args, aux), x = mm.two_outputs()
    args_copy = {k: v.copy() for k, v in args.items()}  # convert_model casts the dicts in place
    converted = amp.convert_model(symbol, args_copy, dict(aux), target_dtype="bfloat16", cast_optional_params=True)
    model = frontend.load(converted, example_inputs=(x,))
    verify(model.graph)
    casts = [n for n in model.graph.iter_nodes() if n.op == "amp_cast"]
    assert casts and all(is_cast(n) for n in casts)
    assert {cast_target(n) for n in casts} == {DType.BFLOAT16, DType.FLOAT32}
    assert all(n.outputs[0].dtype == cast_target(n) for n in casts)
    assert model.graph.constants["conv_weight"].dtype == DType.BFLOAT16
    text = dump(model.graph)
    assert "{dtype=bf16}" in text and dump(parse(text)) == text
    want = _outputs(backend.to_block(*converted), x)
    for a, b in zip(_emitted(model, x), want):
        np.testing.assert_array_equal(a, b)


def test_load_leaves_the_block_untouched():
    block, x = mm.cnn()
    before = {p.name: p.data().asnumpy().copy() for p in block.collect_params().values()}
    frontend.load(block, example_inputs=(x,))
    assert not block._active  # not hybridized
    for p in block.collect_params().values():
        np.testing.assert_array_equal(p.data().asnumpy(), before[p.name])


def test_deferred_initialization_needs_inputs():
    block = mx.gluon.nn.Dense(4)
    block.initialize()
    with pytest.raises(ModelLoadError, match="example inputs"):
        frontend.load(block)
    model = frontend.load(block, input_shapes=[(3, 5)])
    assert model.graph.inputs[0].shape == (3, 5)
    assert model.graph.constants[block.weight.name].shape == (4, 5)


def test_control_flow_round_trips():
    """A _foreach node keeps its subgraph verbatim (model.meta) and emits bit-identically."""
    weight = mx.sym.var("w")

    def step(x, states):
        h = mx.sym.FullyConnected(x, weight, num_hidden=4, no_bias=True) + states[0]
        return h, [h]

    outs, states = mx.sym.contrib.foreach(step, mx.sym.var("data"), [mx.sym.var("h0")])
    symbol = mx.sym.Group([outs, states[0]])
    args = {"w": mx.nd.array(np.random.RandomState(0).normal(size=(4, 3)).astype(np.float32))}
    model = frontend.load((symbol, args, {}), input_shapes={"data": (5, 2, 3), "h0": (2, 4)})
    verify(model.graph)
    node = next(model.graph.iter_nodes())
    assert node.op == "_foreach" and len(node.outputs) == 2 and node.name in model.meta[frontend.META]["subgraphs"]
    x, h0 = mx.nd.ones((5, 2, 3)), mx.nd.ones((2, 4))
    want = backend.to_block(symbol, args, {}, ["data", "h0"])(x, h0)
    got = backend.to_block(*backend.emit(model), ["data", "h0"])(x, h0)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


# ---------------------------------------------------------------- files ---
def test_load_from_either_file(exported):
    block, x, symbol_file, params_file = exported
    want = _outputs(block, x)
    for path in (symbol_file, params_file):
        model = frontend.load(path, example_inputs=(x,))
        verify(model.graph)
        np.testing.assert_array_equal(_emitted(model, x)[0], want[0])


def test_input_shape_guessed_from_the_weights(exported):
    _, _, symbol_file, _ = exported
    model = frontend.load(symbol_file)
    assert model.graph.inputs[0].shape[:2] == (1, 3)
    assert model.meta[frontend.META]["shapes_from"].startswith("guessed")
    assert model.graph.outputs[0].shape == (1, 10)


def test_declared_input_shape_is_used(tmp_path):
    data = mx.sym.var("data", shape=(4, 6))
    symbol = mx.sym.FullyConnected(data, num_hidden=3, name="fc")
    args = {"fc_weight": mx.nd.ones((3, 6)), "fc_bias": mx.nd.zeros(3)}
    mx.model.save_checkpoint(str(tmp_path / "fc"), 0, symbol, args, {})
    model = frontend.load(tmp_path / "fc-symbol.json")
    assert model.graph.inputs[0].shape == (4, 6)
    assert model.meta[frontend.META]["shapes_from"] == "__shape__ attributes"


@pytest.mark.mxnet_onednn_bf16
@pytest.mark.filterwarnings("ignore:Cannot decide type")  # SymbolBlock.imports' own warning
def test_save_writes_a_loadable_pair_with_casts(tmp_path):
    from mxnet.contrib import amp
    (symbol, args, aux), x = mm.two_outputs()
    converted = amp.convert_model(symbol, {k: v.copy() for k, v in args.items()}, dict(aux),
                                  target_dtype="bfloat16", cast_optional_params=True)
    model = frontend.load(converted, example_inputs=(x,))
    symbol_file, params_file = backend.save(model, tmp_path / "out")
    assert (symbol_file.name, params_file.name) == ("out-symbol.json", "out-0000.params")
    nodes = json.loads(symbol_file.read_text())["nodes"]
    assert sum(n["op"] == "amp_cast" for n in nodes) == sum(n.op == "amp_cast" for n in model.graph.iter_nodes())
    weight = next(n for n in nodes if n["name"] == "conv_weight")
    assert weight.get("attrs", {}).get("__dtype__") == "12"
    block = mx.gluon.SymbolBlock.imports(str(symbol_file), ["data"], str(params_file))
    np.testing.assert_array_equal(_outputs(block, x)[0], _emitted(model, x)[0])
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("given, files", [
    ("out/m_bf16", ("out/m_bf16-symbol.json", "out/m_bf16-0000.params")),
    ("out/m-symbol.json", ("out/m-symbol.json", "out/m-0000.params")),
    ("out/m-0007.params", ("out/m-symbol.json", "out/m-0007.params")),
    ("out/m.mx", ("out/m.mx-symbol.json", "out/m.mx-0000.params")),
])
def test_output_file_names(given, files):
    assert tuple(str(p) for p in backend.output_files(given)) == files


def test_output_to_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        backend.output_files(tmp_path)


def test_save_refuses_protected_files(exported, tmp_path):
    _, x, symbol_file, params_file = exported
    model = frontend.load(symbol_file, example_inputs=(x,))
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        backend.save(model, symbol_file, protected=[symbol_file, params_file])


# ---------------------------------------------------------------- bad inputs ---
def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        frontend.load(tmp_path / "nope-symbol.json")


def test_not_json(tmp_path):
    (tmp_path / "bad-symbol.json").write_text("this is not json")
    mx.nd.save(str(tmp_path / "bad-0000.params"), {})
    with pytest.raises(ModelLoadError, match="not a symbol JSON"):
        frontend.load(tmp_path / "bad-symbol.json")


def test_json_that_is_no_symbol(tmp_path):
    (tmp_path / "bad-symbol.json").write_text('{"hello": 1}')
    mx.nd.save(str(tmp_path / "bad-0000.params"), {})
    with pytest.raises(ModelLoadError, match="not an MXNet symbol"):
        frontend.load(tmp_path / "bad-symbol.json")


def test_missing_params_file(exported, tmp_path):
    _, _, symbol_file, _ = exported
    lonely = tmp_path / "lonely-symbol.json"
    lonely.write_text(Path(symbol_file).read_text())
    with pytest.raises(ModelLoadError, match="no parameter file"):
        frontend.load(lonely)


def test_truncated_params(exported, tmp_path):
    _, _, symbol_file, params_file = exported
    (tmp_path / "cut-symbol.json").write_text(Path(symbol_file).read_text())
    (tmp_path / "cut-0000.params").write_bytes(Path(params_file).read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="not an MXNet parameter file"):
        frontend.load(tmp_path / "cut-symbol.json")


def test_params_of_another_model(exported, tmp_path):
    _, _, symbol_file, _ = exported
    (symbol, args, aux), _ = mm.two_outputs()
    mx.model.save_checkpoint(str(tmp_path / "other"), 0, symbol, args, aux)
    with pytest.raises(ModelLoadError, match="do not belong to this symbol"):
        frontend.load(symbol_file, params=tmp_path / "other-0000.params")


def test_params_of_the_wrong_shape(exported):
    block, x, symbol_file, params_file = exported
    symbol = mx.sym.load(symbol_file)
    args, aux = frontend.read_params(Path(params_file))
    args = dict(args)
    args["cnn_dense0_weight"] = mx.nd.zeros((10, 3))
    with pytest.raises(ModelLoadError, match="do not fit the symbol"):
        frontend.load((symbol, args, aux), example_inputs=(x,))


def test_not_a_model():
    with pytest.raises(ModelLoadError, match="cannot load an MXNet model"):
        frontend.load(42)


def test_import_mixprec_does_not_import_mxnet():
    code = "import sys, mixprec, mixprec.runtimes, mixprec.cli; print('mxnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
