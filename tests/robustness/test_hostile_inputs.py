"""Each hostile input of issue 8 that the IR parser, the ONNX reader and policy loading
own, through the CLI in-process and through ``fit``: exit 2 with one clear line (or a
MixprecError subclass), no traceback, the input unchanged, nothing at OUT."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the hostile ONNX cases need onnx")
pytest.importorskip("onnxruntime", reason="the CLI's output check runs onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

from mixprec.errors import ModelLoadError, ParseError, PolicyError, UnsupportedModelError  # noqa: E402
from tests import onnx_models  # noqa: E402
from tests.robustness.contract import assert_cli_contract, run_cli, snapshot  # noqa: E402


HOSTILE_MODELS = {
    "raw_data shorter than dims": (onnx_models.short_raw_data, ModelLoadError, "raw_data holds 10 bytes"),
    "initializer dims 1e10": (onnx_models.huge_dims(True), ModelLoadError, "declares dims [10000000000]"),
    "Constant dims 1e10": (onnx_models.huge_constant, ModelLoadError, "node 'big' (Constant)"),
    "element type UNDEFINED": (onnx_models.element_type(0), ModelLoadError, "element type UNDEFINED"),
    "element type 999": (onnx_models.element_type(999), ModelLoadError, "element type 999"),
    "sparse index out of range": (onnx_models.sparse_initializer([1, 99], [8]), ModelLoadError,
                                  "sparse index lies outside"),
    "undeclared domain": (onnx_models.undeclared_domain, ModelLoadError, "does not declare"),
}


def _write(tmp_path, proto):
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return folder, path


@pytest.mark.parametrize("name", sorted(HOSTILE_MODELS))
def test_hostile_model_through_cli(name, tmp_path, capsys):
    mutate, _, message = HOSTILE_MODELS[name]
    proto = onnx_models.matmul_model()
    mutate(proto)
    folder, path = _write(tmp_path, proto)
    before = snapshot(folder)
    out = tmp_path / "out.onnx"
    outcome = run_cli(["convert", str(path), "-o", str(out)], capsys, name)
    assert outcome.rc == 2
    assert_cli_contract(outcome, name, out)
    assert message in outcome.err
    assert snapshot(folder) == before


@pytest.mark.parametrize("name", sorted(HOSTILE_MODELS))
def test_hostile_model_through_fit(name):
    from mixprec.mix_precision import fit
    mutate, error, message = HOSTILE_MODELS[name]
    proto = onnx_models.matmul_model()
    mutate(proto)
    before = proto.SerializeToString()
    with pytest.raises(error, match=re.escape(message)):
        fit(proto)
    assert proto.SerializeToString() == before


def test_non_utf8_node_name_through_cli(tmp_path, capsys):
    proto = onnx_models.matmul_model()
    proto.graph.node[0].name = "matmXl"
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString().replace(b"matmXl", b"matm\xffl"))
    before = snapshot(folder)
    outcome = run_cli(["convert", str(path), "-o", str(tmp_path / "o.onnx")], capsys, "utf-8")
    assert outcome.rc == 2 and "is not UTF-8 text" in outcome.err
    assert_cli_contract(outcome, "utf-8", tmp_path / "o.onnx")
    assert snapshot(folder) == before


@pytest.mark.parametrize("key, value", [("offset", "999999"), ("length", "999999"), ("offset", "-5"),
                                        ("length", "-8"), ("offset", "abc")])
def test_bad_external_data_through_cli(key, value, tmp_path, capsys):
    path = onnx_models.external_data_model(tmp_path / "in")
    proto = onnx.load(str(path), load_external_data=False)
    entries = proto.graph.initializer[0].external_data
    match = [e for e in entries if e.key == key]
    (match[0] if match else entries.add(key=key)).value = value
    onnx.save(proto, str(path))
    before = snapshot(tmp_path / "in")
    outcome = run_cli(["convert", str(path), "-o", str(tmp_path / "o.onnx")], capsys, f"{key}={value}")
    assert outcome.rc == 2 and "initializer 'w'" in outcome.err and "external data" in outcome.err
    assert_cli_contract(outcome, f"{key}={value}", tmp_path / "o.onnx")
    assert snapshot(tmp_path / "in") == before


def test_in_memory_model_with_external_data_through_fit(tmp_path, monkeypatch):
    """fit(ModelProto) never reads a same-named file from the current directory."""
    from mixprec.mix_precision import fit
    path = onnx_models.external_data_model(tmp_path / "model")
    proto = onnx.load(str(path), load_external_data=False)
    monkeypatch.chdir(tmp_path / "model")  # the data file is right here: still refused
    with pytest.raises(ModelLoadError, match="keeps its data in an external file"):
        fit(proto)


def test_custom_domain_op_converts_kept_fp32_and_check_skipped(tmp_path, capsys):
    """An op of a declared custom domain that no runtime runs: converted, the op kept in
    FP32, the output check skipped with a note (never a failure)."""
    proto = onnx_models.matmul_model()
    proto.graph.node[1].domain = "com.example"
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    folder, path = _write(tmp_path, proto)
    before = snapshot(folder)
    out = tmp_path / "out.onnx"
    report = tmp_path / "r.json"
    outcome = run_cli(["convert", str(path), "-o", str(out), "--report", str(report)], capsys, "custom domain")
    assert_cli_contract(outcome, "custom domain", out)
    assert outcome.rc == 0
    converted = onnx.load(str(out))
    add = next(n for n in converted.graph.node if n.op_type == "Add")
    assert add.domain == "com.example"
    data = json.loads(report.read_text())
    assert any("output check skipped" in note for note in data["notes"])
    assert snapshot(folder) == before


def test_truncated_and_corrupt_files_through_cli(tmp_path, capsys):
    data = onnx_models.matmul_model().SerializeToString()
    for name, content in {"half": data[: len(data) // 2], "garbage": b"\x08\x07" + b"\xff" * 100,
                          "empty": b"", "deep": b"\x3a" + b"\x0a\xff\xff\x03" * 200}.items():
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "m.onnx"
        path.write_bytes(content)
        outcome = run_cli(["convert", str(path), "-o", str(folder / "o.onnx")], capsys, name)
        assert outcome.rc == 2, name
        assert_cli_contract(outcome, name, folder / "o.onnx")
        assert path.read_bytes() == content


# ------------------------------------------------------------------ IR texts ---
@pytest.mark.parametrize("text", [
    'graph main() -> () {\n  %"a\\q": f32[1] = Foo()\n  return\n}\n',
    "graph main() -> () {\n  %a: f32[1] = Foo() {x=" + "[" * 5000 + "]" * 5000 + "}\n  return\n}\n",
    "graph main(%x: f32[1.5]) -> () {\n  return\n}\n",
    "graph main(%x: f32[1e400]) -> () {\n  return\n}\n",
    'graph main() -> () {\n  const %c: f32[2] = ["a", "b"]\n  return\n}\n',
    "graph main() -> () {\n  const %c: f32[2,2] = [1]\n  return\n}\n",
    'graph main() -> () {\n  const %c: bool[1] = {"a": 1}\n  return\n}\n',
    "graph main(%x: f32[-4]) -> () {\n  return\n}\n",
])
def test_bad_ir_text_through_report(text, tmp_path, capsys):
    path = tmp_path / "bad.ir"
    path.write_text(text)
    outcome = run_cli(["report", str(path)], capsys, text[:40])
    assert outcome.rc == 2 and "error: line " in outcome.err and ", column " in outcome.err
    assert_cli_contract(outcome, text[:40])
    with pytest.raises(ParseError):
        from mixprec.ir import parse
        parse(text)


# ------------------------------------------------------------------ policies ---
#: the text of each bad policy file (the binary one and the directory are made below)
POLICY_TEXTS = {
    "list is a string": 'allow = "Conv"\n',
    "list item is a number": 'allow = ["Conv", 3]\n',
    "conditional op is a number": '[[conditional]]\nop = 1\nattr = "a"\nvalues = [3]\nlist = "deny"\n',
    "conditional is a number": "conditional = 5\n",
    "shape_sources is a string": 'shape_sources = "Shape"\n',
    "framework is a list": 'framework = ["x"]\n',
}


def _policy(tmp_path, kind):
    path = tmp_path / "policy.toml"
    if kind == "binary":
        path.write_bytes(b"\x00\xff\xfe\x01binary")
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text(POLICY_TEXTS[kind])
    return path


POLICY_CASES = {
    "binary": "is not UTF-8 text",
    "directory": "is a directory",
    "list is a string": "key 'allow' must be a list of op names, got str 'Conv'",
    "list item is a number": "key 'allow' must be a list of op names; item 1 is int 3",
    "conditional op is a number": "key 'conditional': conditional rule 0: op must be a string",
    "conditional is a number": "key 'conditional' must be an array of tables",
    "shape_sources is a string": "key 'shape_sources' must be a list of op names",
    "framework is a list": "key 'framework' must be a string",
}


@pytest.mark.parametrize("kind", sorted(POLICY_CASES))
def test_bad_policy_file(kind, tmp_path, capsys):
    from mixprec.passes.policies import load_policy
    path = _policy(tmp_path, kind)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert str(path) in str(info.value) and POLICY_CASES[kind] in str(info.value)
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_models.matmul_model().SerializeToString())
    outcome = run_cli(["convert", str(model), "-o", str(tmp_path / "o.onnx"), "--policy", str(path)], capsys, kind)
    assert outcome.rc == 2 and POLICY_CASES[kind] in outcome.err and str(path) in outcome.err
    assert "failed:" not in outcome.err  # not "pass 'mark-shape-subgraphs' failed: UnicodeDecodeError"
    assert_cli_contract(outcome, kind, tmp_path / "o.onnx")


def test_unreadable_policy_file(tmp_path, monkeypatch):
    """(Root reads any file, so the permission error is simulated.)"""
    from pathlib import Path

    from mixprec.passes.policies import load_policy
    path = tmp_path / "locked.toml"
    path.write_text('allow = ["Conv"]\n')

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(PolicyError, match=r"locked.toml cannot be read \(Permission denied\)"):
        load_policy(str(path))


def test_policy_of_wrong_type():
    from mixprec.passes.policies import load_policy
    with pytest.raises(PolicyError, match="not int"):
        load_policy(123)


def test_sparse_too_large_is_unsupported():
    proto = onnx_models.matmul_model()
    del proto.graph.initializer[1]
    proto.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(2, np.float32), "b"), numpy_helper.from_array(np.array([1, 2], np.int64)),
        [10**10]))
    from mixprec.mix_precision import fit
    with pytest.raises(UnsupportedModelError, match="sparse"):
        fit(proto)


def test_real_stderr_is_one_line(tmp_path):
    """In a real process (logging and Python warnings reach stderr, unlike under capsys):
    a malformed tensor, a bad external-data entry and a bad IR text each give exactly
    one line."""
    import subprocess
    import sys
    from pathlib import Path
    proto = onnx_models.matmul_model()
    onnx_models.short_raw_data(proto)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(proto.SerializeToString())
    ext = onnx_models.external_data_model(tmp_path / "ext")
    meta = onnx.load(str(ext), load_external_data=False)
    meta.graph.initializer[0].external_data.add(key="", value="")  # onnx warns about unknown keys
    meta.graph.initializer[0].external_data.add(key="offset", value="abc")
    onnx.save(meta, str(ext))
    ir = tmp_path / "bad.ir"
    ir.write_text('graph main() -> () {\n  %"a\\q": f32[1] = Foo()\n  return\n}\n')
    root = Path(__file__).resolve().parents[2]
    for argv in (["convert", str(bad), "-o", str(tmp_path / "o1.onnx")],
                 ["convert", str(ext), "-o", str(tmp_path / "o2.onnx")], ["report", str(ir)]):
        result = subprocess.run([sys.executable, "-m", "mixprec.cli", *argv], capture_output=True, text=True,
                                cwd=root, timeout=300)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("mixprec: error: "), result.stderr
    assert not (tmp_path / "o1.onnx").exists() and not (tmp_path / "o2.onnx").exists()
