"""mixprec env facts, the objective/profile options' validation, the measurement loop and
the cache's files (no timed asserts)."""
import json

import pytest

from mixprec import machine
from mixprec.cli import main
from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConfigError
from mixprec.profiling import Measurement, Profile, TimingCache, TimingPolicy, measure_pair

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 fma f16c avx512f avx512bw avx512_bf16 amx_tile amx_bf16 avx512_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""


def test_cpuinfo_parsing_and_isa(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    model, flags = machine._read_cpuinfo(str(path))
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"amx_bf16", "avx512_bf16", "avx512f"} <= flags and "avx512_fp16" not in flags
    cpu = machine.CpuInfo(model, tuple(f for f in machine.PRECISION_FLAGS if f in flags), 56, "x86_64")
    assert machine.onednn_isa(cpu) == "avx512_core_amx"
    assert machine.bf16_support(cpu).startswith("native (AMX")
    assert machine.fp16_support(cpu).startswith("emulated")
    plain = machine.CpuInfo("Old Xeon", ("avx2", "avx512f"), 2, "x86_64")
    assert machine.onednn_isa(plain) == "avx512_core" and machine.bf16_support(plain).startswith("emulated")


def test_onednn_cap_changes_the_fingerprint(monkeypatch):
    before = machine.fingerprint_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "capped by ONEDNN_MAX_CPU_ISA=AVX2" in machine.onednn_isa(machine.cpu_info())
    assert machine.fingerprint_key() != before


def test_env_report_fields():
    data = machine.env_report(probe=False)
    assert set(data["cpu"]["flags"]) >= {"avx512_bf16", "amx_bf16", "amx_fp16", "avx512_fp16", "avx512f"}
    assert data["cpu"]["cores"] >= 1 and data["cpu"]["model"]
    assert data["frameworks"]["onnx"] is not None  # installed in the test environment
    runtimes = {r["framework"]: r for r in data["runtimes"]}
    if "onnxruntime" in runtimes:
        assert runtimes["onnxruntime"]["bf16"].startswith("none")
    assert data["summary"] == machine.summary_line() and len(data["fingerprint"]) == 16


def test_env_cli_prints_flags_and_runtimes(capsys):
    assert main(["env", "--no-probe"]) == 0
    out = capsys.readouterr().out
    for field in ("cpu:", "avx512_bf16=", "amx_bf16=", "amx_fp16=", "avx512_fp16=", "avx512f=", "oneDNN ISA:",
                  "summary:"):
        assert field in out
    assert main(["env", "--json", "--no-probe"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu"]["flags"]["avx512f"] in (True, False)


@pytest.mark.parametrize("kwargs, message", [
    ({"objective": "performace"}, "did you mean 'performance'"),
    ({"objective": 3}, "objective must be one of memory, performance, accuracy"),
    ({"profile": "machine.json"}, "set objective='performance'"),
    ({"objective": "performance", "profile": ""}, "profile must be the path"),
    ({"objective": "performance", "profile": "/nonexistent/machine.json"}, "no such file; write one with"),
])
def test_objective_options_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MixedPrecisionConfig(**kwargs)
    assert MixedPrecisionConfig().objective == "memory"


def test_config_typo_of_the_field_itself():
    with pytest.raises(ConfigError, match="did you mean 'objective'"):
        MixedPrecisionConfig(objectve="performance")


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("{", "not a readable JSON"), ('{"a": 1}', "not a mixprec profile"),
    ('{"format": "mixprec-profile", "version": 9}', "format version 9"),
    ('{"format": "mixprec-profile", "version": 1, "entries": {"x": {"fp32_ms": "a"}}}', "malformed"),
])
def test_bad_profile_files_are_config_errors(tmp_path, content, message):
    path = tmp_path / "machine.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Profile.load(path)


def test_measure_pair_interleaves_and_respects_the_rep_bounds():
    calls = []
    policy = TimingPolicy(min_reps=4, max_reps=9, max_seconds=0.5, warmup=1, min_sample_s=0.0)
    result = measure_pair(lambda: calls.append("a"), lambda: calls.append("b"), policy)
    assert policy.min_reps <= result.reps <= policy.max_reps
    assert calls.count("a") == calls.count("b")
    timed = calls[4:]  # after warmup and calibration: A B, then B A, ...
    assert timed[:4] == ["a", "b", "b", "a"]


def test_cache_files_round_trip_and_a_corrupt_entry_is_a_miss(tmp_path):
    cache = TimingCache("abc", "torch", "2.13.0+cpu-threads2", root=tmp_path)
    assert cache.get("sig") is None
    cache.put("sig", Measurement(1.5, 0.5, 10, 0.01, "matmul"))
    assert cache.get("sig") == Measurement(1.5, 0.5, 10, 0.01, "matmul")
    assert [p.name for p in cache.directory.iterdir()] == ["sig.json"]  # no temporaries left
    (cache.directory / "sig.json").write_text("{not json")
    assert cache.get("sig") is None


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    from mixprec.profiling import cache_root
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("MIXPREC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "mixprec"
