"""The mixprec command line on the bundled example model and on bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="the CLI tests convert ONNX models and need onnx")
pytest.importorskip("onnxruntime", reason="the CLI tests need onnxruntime")

from mixprec.cli import main  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"



def test_convert_writes_model_and_report_and_prints_the_table(model, tmp_path, capsys):
    import onnx
    out = tmp_path / "out" / "bf16.onnx"
    before = model.read_bytes()
    assert main(["convert", str(model), "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "| Conv                         |     2 |     2 |     0 |     0 |" in printed
    assert "output logits: cosine" in printed
    converted = onnx.load(str(out))
    onnx.checker.check_model(converted, full_check=True)
    assert max(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")) >= 22
    report = json.loads((tmp_path / "r.json").read_text())
    conv = next(n for n in report["nodes"] if n["name"] == "conv1")
    assert conv["precision"] == "bf16" and conv["reason"] == "allow list"
    soft = next(n for n in report["nodes"] if n["name"] == "softmax")
    assert soft["precision"] == "f32" and soft["category"] == "deny"
    assert model.read_bytes() == before
    assert not list(out.parent.glob("*.tmp*"))


def test_fp16_conversion_runs_in_onnxruntime(model, tmp_path):
    import numpy as np
    import onnxruntime as ort
    out = tmp_path / "fp16.onnx"
    assert main(["convert", str(model), "-o", str(out), "--precision", "fp16"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits, probs) = sess.run(None, {"image": np.ones((2, 3, 32, 32), np.float32)})
    assert logits.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_fp32_op_type_override_and_dump_after(model, tmp_path, capsys):
    assert main(["dump", str(model), "--after", "assign-precision", "--fp32-op-type", "Conv"]) == 0
    text = capsys.readouterr().out
    assert "Conv(%image, %conv1.w, %conv1.b) {pads=[1, 1, 1, 1]} @conv1  # f32 allow pin=user: user override: op type Conv -> f32" in text
    assert "Cast" not in text  # stopped before insert-casts
    assert main(["dump", str(model), "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith('digraph "tiny_cnn" {')


def test_report_and_passes(model, capsys):
    assert main(["passes"]) == 0
    assert "insert-casts" in capsys.readouterr().out
    assert main(["report", str(model)]) == 0
    text = capsys.readouterr().out
    assert "Decisions:" in text and "relu1" in text


@pytest.mark.parametrize("make_input, extra, message", [
    (lambda d: d / "missing.onnx", [], "no such file"),
    (lambda d: _write(d / "notes.onnx", b"hello, not a model"), [], "not a readable ONNX model"),
    (lambda d: _write(d / "trunc.onnx", EXAMPLE.read_bytes()[:500]), [], "not a readable ONNX model"),
    (lambda d: _write(d / "model.txt", b"x"), [], "unknown model format"),
    (lambda d: _copy(d), ["--fp32-op-type", "Convv"], "unknown op type 'Convv'"),
    (lambda d: _copy(d), ["--fp32-node", "nope"], "no node or module matches 'nope'"),
    (lambda d: _copy(d), ["--pipeline", "infer-dtypes,bogus"], "unknown pass 'bogus'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make_input, extra, message):
    path = make_input(tmp_path)
    before = path.read_bytes() if path.exists() else None
    code = main(["convert", str(path), "-o", str(tmp_path / "o.onnx"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    if before is not None:
        assert path.read_bytes() == before
    assert not (tmp_path / "o.onnx").exists()


def test_output_equal_to_input_is_refused(model, capsys):
    before = model.read_bytes()
    assert main(["convert", str(model), "-o", str(model)]) == 2
    assert "is the input model" in capsys.readouterr().err
    assert model.read_bytes() == before


def test_already_bf16_model_is_refused(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 2])])
    path = tmp_path / "bf16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), str(path))
    assert main(["convert", str(path), "-o", str(tmp_path / "again.onnx")]) == 2
    assert "already in bf16" in capsys.readouterr().err


def test_converting_the_converted_model_changes_nothing(model, tmp_path):
    import onnx
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    assert main(["convert", str(model), "-o", str(once), "--no-check"]) == 0
    assert main(["convert", str(once), "-o", str(twice), "--no-check"]) == 0
    a, b = onnx.load(str(once)), onnx.load(str(twice))
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    assert sorted(t.name for t in a.graph.initializer) == sorted(t.name for t in b.graph.initializer)


def test_console_script_runs_in_a_subprocess(model, tmp_path):
    exe = Path(sys.executable).with_name("mixprec")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mixprec.cli"]
    result = subprocess.run(cmd + ["convert", str(model), "-o", str(tmp_path / "x.onnx")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    assert "casts inserted:" in result.stdout


def _write(path, data):
    path.write_bytes(data)
    return path


def _copy(d):
    return Path(shutil.copy(EXAMPLE, d / "m.onnx"))


def test_corrupt_pt2_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("torch", reason="reading .pt2 programs needs torch")
    bad = tmp_path / "broken.pt2"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["convert", str(bad), "-o", str(tmp_path / "o.pt2")]) == 2
    err = capsys.readouterr().err
    assert "not a torch.export program" in err and "Traceback" not in err


# ---- options from issue 7/8: shapes, sample inputs, graph inputs/outputs, exit codes ----
def test_convert_help_states_security_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "SavedModel runs its resource initializers" in text and "only in a sandbox" in text
    assert "--trust-pickle" in text and "4 failed output check" in text


@pytest.mark.parametrize("items, expected", [
    (["image=1,3,224,224"], {"image": [1, 3, 224, 224]}),
    (["a=1,16", "b:0=1,16"], {"a": [1, 16], "b:0": [1, 16]}),
    (["1,3,224,224"], [1, 3, 224, 224]),
    (["input=1,512", "sr="], {"input": [1, 512], "sr": []}),  # a scalar input (silero-vad's sample rate)
])
def test_input_shape_option_parses(items, expected):
    from mixprec.cli import parse_input_shapes
    assert parse_input_shapes(items) == expected


@pytest.mark.parametrize("extra, message", [
    (["--input-shape", "image=1,3,x"], "give whole numbers >= 1"),
    (["--input-shape", "image=1,0,32,32"], "give whole numbers >= 1"),
    (["--input-shape", "=1,3"], "the input name before '=' is empty"),
    (["--input-shape", "1,3,32,32", "--input-shape", "x=1"], "write NAME=DIMS each"),
    (["--input-shape", "a=1", "--input-shape", "a=2"], "names 'a' twice"),
    (["--sample-inputs", "missing.npz"], "no such file"),
    (["--sample-inputs", "inputs.txt"], "give an .npz file"),
    (["--inputs", "a,,b"], "give tensor names separated by commas"),
])
def test_bad_new_options_are_one_line_exit_2_before_work(model, tmp_path, capsys, extra, message):
    out = tmp_path / "o.onnx"
    assert main(["convert", str(model), "-o", str(out), *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1 and captured.out == ""
    assert not out.exists()


def test_bad_npz_is_a_clear_error(model, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    assert main(["convert", str(model), "-o", str(tmp_path / "o.onnx"), "--sample-inputs", str(bad)]) == 2
    assert "not a readable .npz file" in capsys.readouterr().err


def test_new_options_reach_the_config(tmp_path):
    import numpy as np
    from mixprec.cli import _config, build_parser
    np.savez(tmp_path / "s.npz", image=np.ones((1, 3, 32, 32), np.float32))
    args = build_parser().parse_args(["convert", "m.onnx", "-o", "o.onnx", "--input-shape", "image=1,3,64,64",
                                      "--sample-inputs", str(tmp_path / "s.npz"), "--inputs", "x:0,y:0",
                                      "--outputs", "out:0", "--check-runtime", "reference", "--trust-pickle"])
    config = _config(args)
    assert config.input_shapes == {"image": [1, 3, 64, 64]} and config.inputs == ["x:0", "y:0"]
    assert config.outputs == ["out:0"] and config.check_runtime == "reference" and config.trust_pickle
    assert config.sample_inputs["image"].shape == (1, 3, 32, 32)


def test_sample_inputs_file_is_used_by_the_check(model, tmp_path, capsys):
    import numpy as np
    np.savez(tmp_path / "s.npz", image=np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32))
    assert main(["convert", str(model), "-o", str(tmp_path / "o.onnx"), "--sample-inputs", str(tmp_path / "s.npz")]) == 0
    assert "output logits: cosine" in capsys.readouterr().out


def test_bare_input_shape_names_the_only_input(model):
    from mixprec.runtimes import adapter_for
    from mixprec.config import MixedPrecisionConfig
    from mixprec.mix_precision import _resolve_bare_shape
    config = _resolve_bare_shape(adapter_for(str(model)), str(model), MixedPrecisionConfig(input_shapes=[2, 3, 32, 32]))
    assert config.input_shapes == {"image": [2, 3, 32, 32]}


def test_bare_input_shape_on_a_two_input_model_is_refused(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["convert", str(path), "-o", str(tmp_path / "o.onnx"), "--input-shape", "2,2"]) == 2
    assert "the model has 2 inputs (a, b); write NAME=DIMS" in capsys.readouterr().err


def test_failed_check_exits_4_without_writing_and_keep_failed_writes(model, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["convert", str(model), "-o", str(out), "--min-cosine", "1.0", "--no-error-budget"]) == 4
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("mixprec: failed check: output ")
    assert "below min_cosine=1.0" in captured.err and not out.exists()
    assert main(["convert", str(model), "-o", str(out), "--min-cosine", "1.0", "--no-error-budget",
                 "--keep-failed"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("mixprec: warning: failed check: output ")
    assert out.exists() and "FAILED output check" in captured.out


def test_opt_prints_the_ir_after_a_pipeline(tmp_path, capsys):
    """Text in, text out: a runtime limit given as a pin leaves no neighbour in bf16."""
    src = tmp_path / "m.ir"
    src.write_text("graph main(%x: f32[2,4], %w: f32[4,4]) -> (%out: f32[2,4]) {\n"
                   "  %m: f32[2,4] = MatMul(%x, %w)\n  %out: f32[2,4] = Relu(%m)\n  return %out\n}\n")
    assert main(["opt", str(src), "--pipeline", "infer-dtypes,mark-shape-subgraphs,"
                 "apply-overrides{runtime_fp32_ops=[MatMul],runtime=ort},assign-precision,insert-casts"]) == 0
    out = capsys.readouterr().out
    assert "%m: f32[2,4] = MatMul(%x, %w)  # f32 allow pin=runtime: ort has no bf16 kernel for MatMul" in out
    assert "Cast" not in out
    assert main(["opt", str(src)]) == 0
    assert "%m: bf16[2,4] = MatMul(%x.bf16, %w.bf16)  # bf16 allow: allow list" in capsys.readouterr().out
    assert main(["opt", str(tmp_path / "missing.ir")]) == 2
