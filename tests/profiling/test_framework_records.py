"""A framework's record names its region timer and its runtime's low-precision note, so a
third-party framework brings its own timer through its entry point (no table in
mixprec.profiling names a framework)."""
import dataclasses

import pytest

from mixprec import frameworks
from mixprec.config import MixedPrecisionConfig
from mixprec.ir.cast import CastSpec
from mixprec.profiling.session import make_session


class RecordTimer:
    """What the record's ``timer`` path names: built with (adapter, original, loaded, config)."""
    framework = "plugfw"

    def __init__(self, adapter, original, loaded, config):
        self.built_with = (adapter, original, loaded, config)

    def version(self):
        return "plug-1"


class Adapter:
    name = "plugfw"


@pytest.fixture
def record(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path))
    made = frameworks.Framework(name="plugfw", suffixes=(".plug",), module_roots=("plugfw",),
                                cast=CastSpec("Cast", "to"), policy="onnx", adapter="plugfw:Adapter",
                                timer=f"{__name__}:RecordTimer")
    records = frameworks.frameworks()
    monkeypatch.setitem(records, made.name, made)
    return made


def test_the_record_names_the_timer(record):
    config = MixedPrecisionConfig(objective="performance")
    session = make_session(Adapter(), "original", "loaded", config)
    assert isinstance(session.timer, RecordTimer) and session.timer.built_with[1:3] == ("original", "loaded")
    assert session.unavailable is None and "plug-1" in str(session.cache.directory)


def test_a_note_means_nothing_is_timed(record, monkeypatch):
    noted = dataclasses.replace(record, low_precision_note="this runtime has no {p} kernels")
    monkeypatch.setitem(frameworks.frameworks(), "plugfw", noted)
    session = make_session(Adapter(), None, None, MixedPrecisionConfig(objective="performance", precision="fp16"))
    assert session.timer is None and session.unavailable == "this runtime has no FP16 kernels"


def test_no_timer_keeps_fp32_with_a_reason(record, monkeypatch):
    monkeypatch.setitem(frameworks.frameworks(), "plugfw", dataclasses.replace(record, timer=None))
    session = make_session(Adapter(), None, None, MixedPrecisionConfig(objective="performance"))
    assert session.timer is None and "mixprec has no plugfw timer" in session.unavailable


def test_builtin_records_carry_their_timers():
    records = frameworks.frameworks()
    assert records["torch"].timer == "mixprec.runtimes.torch_timing:TorchTimer"
    assert records["tensorflow"].timer == "mixprec.runtimes.tensorflow_timing:TensorFlowTimer"
    assert records["onnx"].timer is None and "{p}" in records["onnx"].low_precision_note
