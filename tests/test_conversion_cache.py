"""The conversion cache (mixprec.conversion_cache): a second objective="performance"
conversion of the same model with the same options is served whole (nothing captured,
timed or checked again) and gives the same model; any change the result depends on (a
weight, an attribute, the code's behaviour, an option, the file) makes it convert again;
a damaged or foreign entry is a miss, never an error. The timers are faked: every region
is faster in BF16 and the whole model as the test says, so nothing here times anything."""
import logging
import os

import numpy as np
import pytest

from mixprec import conversion_cache, mix_precision
from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConfigError
from mixprec.ir import dump
from mixprec.profiling import Measurement

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def calls(monkeypatch):
    """Fake timers of every framework (regions 1.0 ms FP32 against 0.5 ms low; the whole
    model 0.7x FP32, or ``calls["whole"]``), and a count of model loads (captures)."""
    from mixprec.runtimes.base import Adapter
    counted = {"regions": 0, "models": 0, "loads": 0, "whole": Measurement(1.0, 0.7, 20, 0.05)}

    def time(self, fp32, low, inputs, policy):
        counted["regions"] += 1
        return Measurement(1.0, 0.5, 9, 0.01)

    def time_models(self, original, converted, policy):
        counted["models"] += 1
        return counted["whole"]
    from mixprec.runtimes.torch_timing import TorchTimer
    for cls in [TorchTimer, *_optional_timers()]:
        monkeypatch.setattr(cls, "time", time)
        monkeypatch.setattr(cls, "time_models", time_models)
    from mixprec import runtimes
    original = runtimes.adapter_for

    def adapter_for(model):
        adapter = original(model)
        load = adapter.load

        def counting_load(*args, **kwargs):
            counted["loads"] += 1
            return load(*args, **kwargs)
        adapter.load = counting_load
        return adapter
    monkeypatch.setattr(mix_precision, "adapter_for", adapter_for)
    assert issubclass(type(original(torch.nn.Linear(1, 1))), Adapter)
    return counted


def _optional_timers():
    found = []
    try:
        from mixprec.runtimes.tensorflow_timing import TensorFlowTimer
        found.append(TensorFlowTimer)
    except ImportError:
        pass
    try:
        from mixprec.runtimes.mxnet_timing import MXNetTimer
        found.append(MXNetTimer)
    except ImportError:
        pass
    return found


_SCALE = {"activation": torch.relu}


def _activation(x):
    return _SCALE["activation"](x)


class Scaled(torch.nn.Module):
    """Linear -> an activation looked up at call time -> Linear, times ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)
        self.scale = scale

    def forward(self, x):
        return self.down(_activation(self.up(x))) * self.scale


def _model(seed: int = 0) -> "torch.nn.Module":
    torch.manual_seed(seed)
    return Scaled().eval()


def _config(**options) -> MixedPrecisionConfig:
    torch.manual_seed(1)
    return MixedPrecisionConfig(example_inputs=(torch.randn(4, 16),), objective="performance", **options)


def _entries(cache_dir):
    return sorted(p.name for p in (cache_dir / "conversions").iterdir() if not p.name.startswith("."))


def test_second_conversion_is_served_whole_and_gives_the_same_model(calls, cache_dir):
    model = _model()
    first = mix_precision.fit(model, config=_config())
    assert calls["loads"] == 1 and calls["regions"] >= 1 and calls["models"] == 1
    assert len(_entries(cache_dir)) == 1
    before = dict(calls)
    again = mix_precision.fit(model, config=_config())
    assert calls == before  # nothing loaded (captured) or timed
    assert any(n.startswith("conversion cache: reused the conversion") for n in again.report.notes)
    assert again.report.profile["cached"] is True and again.report.profile["timer_calls"] == 0
    assert dump(again.ir.graph) == dump(first.ir.graph)
    assert [(n.name, n.precision, n.reason) for n in again.report.nodes] == \
        [(n.name, n.precision, n.reason) for n in first.report.nodes]
    assert [c.cosine for c in again.report.checks] == [c.cosine for c in first.report.checks]
    x = torch.randn(8, 16)
    with torch.no_grad():
        assert torch.equal(again.model(x), first.model(x))
        assert any(p.dtype == torch.bfloat16 for p in again.model.state_dict().values())


def _change_weight(model):
    with torch.no_grad():
        model.up.weight[0, 0] += 0.5


def _change_attribute(model):
    model.scale = 2.0


@pytest.mark.parametrize("change", [_change_weight, _change_attribute], ids=["weight", "attribute"])
def test_a_changed_model_converts_again_and_gets_its_own_entry(calls, cache_dir, change):
    model = _model()
    mix_precision.fit(model, config=_config())
    change(model)
    again = mix_precision.fit(model, config=_config())
    assert calls["loads"] == 2 and len(_entries(cache_dir)) == 2
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(again.model(x).float(), model(x), rtol=0.05, atol=0.05)


def test_a_changed_option_converts_again(calls):
    model = _model()
    mix_precision.fit(model, config=_config())
    mix_precision.fit(model, config=_config(min_cosine=0.99))
    mix_precision.fit(model, config=_config(op_type_dict={"aten.linear.default": {"activation": {"dtype": ["fp32"]}}}))
    assert calls["loads"] == 3


def test_behaviour_the_fingerprint_cannot_see_is_caught_by_the_fp32_outputs(calls, cache_dir, monkeypatch, caplog):
    model = _model()
    mix_precision.fit(model, config=_config())
    key = conversion_cache.slot(mix_precision.adapter_for(model), model, _config(), True).key
    monkeypatch.setitem(_SCALE, "activation", torch.tanh)  # same file, same weights: another function
    assert conversion_cache.slot(mix_precision.adapter_for(model), model, _config(), True).key == key
    with caplog.at_level(logging.INFO, logger="mixprec.conversion_cache"):
        again = mix_precision.fit(model, config=_config())
    assert "no longer gives the FP32 outputs" in caplog.text
    assert calls["loads"] == 2
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(again.model(x).float(), model(x), atol=0.05)  # tanh, not the cached relu
        assert not torch.allclose(model(x), torch.nn.functional.linear(torch.relu(model.up(x)), model.down.weight,
                                                                       model.down.bias), atol=0.05)
    assert _entries(cache_dir) == [key]  # the stale entry replaced by the new conversion


def test_cache_false_reads_and_writes_nothing(calls, cache_dir):
    model = _model()
    mix_precision.fit(model, config=_config(cache=False))
    mix_precision.fit(model, config=_config(cache=False))
    assert calls["loads"] == 2
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.json"))


def test_not_cached_with_an_evaluation_function_or_dump_dir(calls, cache_dir, tmp_path):
    model = _model()
    mix_precision.fit(model, config=_config(), eval_func=lambda m: 1.0)
    mix_precision.fit(model, config=_config(dump_dir=str(tmp_path / "dump")))
    assert not (cache_dir / "conversions").exists() or not _entries(cache_dir)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_a_damaged_entry_is_a_miss_and_is_replaced(calls, cache_dir, damage, caplog):
    model = _model()
    mix_precision.fit(model, config=_config())
    (entry,) = _entries(cache_dir)
    target = cache_dir / "conversions" / entry / "ir.bin"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "garbage":
        target.write_bytes(os.urandom(4096))
    else:
        target.unlink()
    with caplog.at_level(logging.WARNING, logger="mixprec.conversion_cache"):
        again = mix_precision.fit(model, config=_config())
    assert "ignoring entry" in caplog.text and calls["loads"] == 2
    assert again.report.checks and again.report.checks[0].cosine > 0.99
    mix_precision.fit(model, config=_config())
    assert calls["loads"] == 2  # the new entry serves the third conversion


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="file ownership is a POSIX notion")
def test_an_entry_others_can_write_is_not_read(calls, cache_dir, caplog):
    model = _model()
    mix_precision.fit(model, config=_config())
    (entry,) = _entries(cache_dir)
    os.chmod(cache_dir / "conversions" / entry / "result.bin", 0o666)
    with caplog.at_level(logging.WARNING, logger="mixprec.conversion_cache"):
        mix_precision.fit(model, config=_config())
    assert "is not private to this user" in caplog.text and calls["loads"] == 2


def test_least_recently_used_entries_go_when_the_cache_is_full(calls, cache_dir, monkeypatch):
    first, second = _model(0), _model(1)
    mix_precision.fit(first, config=_config())
    (entry,) = _entries(cache_dir)
    size = sum(p.stat().st_size for p in (cache_dir / "conversions" / entry).iterdir())
    monkeypatch.setenv("MIXPREC_CACHE_MAX_BYTES", str(int(size * 1.5)))
    mix_precision.fit(second, config=_config())
    (kept,) = _entries(cache_dir)
    assert kept != entry
    mix_precision.fit(second, config=_config())
    assert calls["loads"] == 2


def test_a_returned_fp32_model_is_returned_as_given_again(calls):
    calls["whole"] = Measurement(1.0, 2.0, 20, 0.05)  # the converted model measures 2x slower
    model = _model()
    first = mix_precision.fit(model, config=_config())
    assert first.model is model
    again = mix_precision.fit(model, config=_config())
    assert again.model is model and calls["loads"] == 1
    assert again.report.profile["returned"] == "fp32"
    assert {n.precision for n in again.report.nodes} <= {"f32", "keep"}


def test_an_unhashable_attribute_means_no_cache_not_a_failure(calls, cache_dir, caplog):
    model = _model()
    model.token = object()  # copies (capture works on a copy), but says nothing that can be hashed
    with caplog.at_level(logging.INFO, logger="mixprec.conversion_cache"):
        result = mix_precision.fit(model, config=_config())
    assert "conversion cache: not used" in caplog.text and "Scaled.token is a builtins.object" in caplog.text
    assert result.report.checks[0].cosine > 0.99
    assert not (cache_dir / "conversions").exists()


def test_a_pt2_file_is_keyed_by_its_bytes_and_the_reused_model_saves(calls, tmp_path):
    model = _model()
    path = tmp_path / "m.pt2"
    x = torch.randn(4, 16)
    torch.export.save(torch.export.export(model, (x,)), str(path))
    config = lambda: MixedPrecisionConfig(objective="performance")  # noqa: E731 - the program's own inputs
    mix_precision.fit(str(path), config=config())
    again = mix_precision.fit(str(path), config=config())
    assert calls["loads"] == 1
    out = again.save(tmp_path / "out.pt2")  # needs the program's example inputs, stored with the entry
    with torch.no_grad():
        assert torch.allclose(torch.export.load(out).module()(x).float(), model(x), atol=0.05)
    _change_weight(model)
    torch.export.save(torch.export.export(model, (x,)), str(path))
    mix_precision.fit(str(path), config=config())
    assert calls["loads"] == 2


def test_mxnet_block_is_served_whole(calls):
    pytest.importorskip("mxnet")
    import mixprec.frontends.mxnet  # noqa: F401 - imports mxnet the way mixprec does
    from tests import mxnet_models
    block, x = mxnet_models.mlp()
    block(x)  # a trained block has its parameters' shapes; a fresh one defers them and is not cached
    config = lambda: MixedPrecisionConfig(example_inputs=(x,), objective="performance")  # noqa: E731
    first = mix_precision.fit(block, config=config())
    again = mix_precision.fit(block, config=config())
    assert calls["loads"] == 1
    assert np.array_equal(again.model(x).asnumpy(), first.model(x).asnumpy())
    assert dump(again.ir.graph) == dump(first.ir.graph)


def test_keras_model_is_served_whole_and_a_new_weight_misses(calls):
    pytest.importorskip("tensorflow")
    from tests import tf_models
    model = tf_models.make_cnn()
    first = mix_precision.fit(model, config=MixedPrecisionConfig(objective="performance"))
    again = mix_precision.fit(model, config=MixedPrecisionConfig(objective="performance"))
    assert calls["loads"] == 1
    images = tf_models.images(2)
    assert np.array_equal(np.asarray(again.model(images)), np.asarray(first.model(images)))
    kernel = model.layers[1].kernel
    kernel.assign(kernel.numpy() * 1.5)
    mix_precision.fit(model, config=MixedPrecisionConfig(objective="performance"))
    assert calls["loads"] == 2


def test_cache_option_must_be_a_bool():
    with pytest.raises(ConfigError, match="cache must be True or False"):
        MixedPrecisionConfig(cache="no")


def test_a_reused_module_owns_its_weights_apart_from_the_ir_and_the_entry(calls, cache_dir):
    model = _model()
    mix_precision.fit(model, config=_config())
    again = mix_precision.fit(model, config=_config())
    (entry,) = _entries(cache_dir)
    stored = (cache_dir / "conversions" / entry / "ir.bin").read_bytes()
    weight = next(p for p in again.model.parameters() if p.dtype == torch.bfloat16 and p.dim() == 2)
    ir_weight = next(v for v in again.ir.graph.constants.values() if v.shape == tuple(weight.shape))
    before = np.array(ir_weight.data, copy=True)
    with torch.no_grad():
        weight.add_(1.0)  # fine-tuning the returned module in place
    assert np.array_equal(ir_weight.data, before)
    assert (cache_dir / "conversions" / entry / "ir.bin").read_bytes() == stored
    third = mix_precision.fit(model, config=_config())
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert not torch.equal(third.model(x), again.model(x))  # the next reuse gets the cached weights


def test_cli_cache_lists_and_clears_the_entries(calls, cache_dir, capsys):
    from mixprec.cli import main
    mix_precision.fit(_model(), config=_config())
    (entry,) = _entries(cache_dir)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"cache directory: {cache_dir}" in out and "conversions: 1," in out and entry in out
    assert "torch" in out and "measurements:" in out
    assert main(["cache", "--clear"]) == 0
    assert "removed 1 cached conversion(s)" in capsys.readouterr().out
    assert not _entries(cache_dir) and list(cache_dir.glob("timings/*/*.json"))
    assert main(["cache", "--clear-all"]) == 0
    assert not list(cache_dir.glob("timings/*/*.json"))
