"""Nothing lost, nothing executed: every output path is checked before any work, writes
are atomic with the umask's mode, stale temporaries are cleaned, and no reader unpickles
code unless trust_pickle. Each refused case: exit 2, one line on stderr, no traceback,
nothing printed on stdout (no work done), the input's bytes unchanged, nothing at OUT."""
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="the output safety tests convert ONNX models and need onnx")
pytest.importorskip("onnxruntime", reason="the output safety tests need onnxruntime")

from mixprec.cli import main  # noqa: E402
from mixprec.errors import OutputPathError  # noqa: E402
from mixprec.fileio import atomic_write_bytes, check_disjoint, stale_temps, temp_path  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"



def _snapshot(paths):
    return {p: p.read_bytes() for p in paths if p.is_file()}


def _refused(capsys, argv, protected, out, message):
    """Run the CLI; assert the refusal contract."""
    before = _snapshot(protected)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert message in captured.err, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""  # refused before any work
    assert _snapshot(protected) == before
    return out


def test_report_equal_to_the_input_is_refused(model, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    _refused(capsys, ["convert", str(model), "-o", str(out), "--report", str(model)], [model], out,
             "the report")
    assert not out.exists()


def test_report_equal_to_the_output_is_refused(model, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    _refused(capsys, ["convert", str(model), "-o", str(out), "--report", str(out)], [model], out,
             "is the output")
    assert not out.exists()


def _model_with_external_data(tmp_path):
    import onnx
    proto = onnx.load(str(EXAMPLE))
    path = tmp_path / "withdata.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="withdata.bin", size_threshold=0)
    return path, tmp_path / "withdata.bin"


def test_output_naming_the_inputs_external_data_is_refused(tmp_path, capsys):
    import onnx
    path, data = _model_with_external_data(tmp_path)
    assert data.exists()
    _refused(capsys, ["convert", str(path), "-o", str(data)], [path, data], data, "input model's file")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # still loads


def test_output_whose_data_file_would_be_the_inputs_data_is_refused(tmp_path, capsys):
    import onnx
    proto = onnx.load(str(EXAMPLE))
    path = tmp_path / "in.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="out.onnx.data", size_threshold=0)
    data = tmp_path / "out.onnx.data"
    _refused(capsys, ["convert", str(path), "-o", str(tmp_path / "out.onnx")], [path, data], None,
             "out.onnx.data")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("make, kind", [
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: os.symlink(p.with_name("target.onnx"), p), "symlink"),
])
def test_special_files_at_the_output_are_refused(model, tmp_path, capsys, make, kind):
    out = tmp_path / "special.onnx"
    (tmp_path / "target.onnx").write_bytes(b"keep me")
    make(out)
    _refused(capsys, ["convert", str(model), "-o", str(out)], [model, tmp_path / "target.onnx"], out, kind)
    assert stat.S_ISFIFO(os.lstat(out).st_mode) if kind == "FIFO" else os.path.islink(out)
    assert (tmp_path / "target.onnx").read_bytes() == b"keep me"


def test_a_device_node_at_the_output_is_refused(model, tmp_path, capsys):
    out = tmp_path / "null.onnx"
    try:
        os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    _refused(capsys, ["convert", str(model), "-o", str(out)], [model], out, "character device")
    assert stat.S_ISCHR(os.lstat(out).st_mode)


def test_output_in_an_unwritable_place_is_refused_before_work(model, tmp_path, capsys):
    _refused(capsys, ["convert", str(model), "-o", "/proc/mixprec-nowhere/o.onnx"], [model], None,
             "cannot be written")


def _writable(directory):
    try:
        (directory / "probe").touch()
    except OSError:
        return False
    (directory / "probe").unlink()
    return True


def test_output_in_a_read_only_directory_is_refused(model, tmp_path, capsys, monkeypatch):
    """Mode 0555 stops a normal user; root is stopped by the immutable flag (chattr +i);
    where neither is available, file creation in the directory fails with EACCES."""
    import subprocess
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    immutable = False
    if _writable(locked) and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0:
        immutable = True
    if _writable(locked):
        real_open = os.open

        def refusing_open(path, flags, *args, **kwargs):
            if os.path.dirname(os.path.abspath(path)) == str(locked) and flags & os.O_CREAT:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", refusing_open)
    try:
        _refused(capsys, ["convert", str(model), "-o", str(locked / "o.onnx")], [model], None, "read-only")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o755)


def test_report_below_a_file_is_refused_before_work(model, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    _refused(capsys, ["convert", str(model), "-o", str(out), "--report", str(model / "r.json")], [model], out,
             "is not a directory")
    assert not out.exists()


def test_dump_dir_naming_an_existing_file_is_refused(model, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    _refused(capsys, ["convert", str(model), "-o", str(out), "--dump-dir", str(existing)], [model, existing], out,
             "--dump-dir")
    assert not out.exists()


def test_missing_directories_are_made_for_output_and_report(model, tmp_path, capsys):
    out, report = tmp_path / "new" / "dir" / "o.onnx", tmp_path / "nodir" / "r.json"
    assert main(["convert", str(model), "-o", str(out), "--report", str(report)]) == 0
    assert out.stat().st_size > 0 and json.loads(report.read_text())["framework"] == "onnx"


def test_written_files_get_the_umask_mode_or_keep_the_replaced_files_mode(model, tmp_path):
    fresh, kept = tmp_path / "fresh.onnx", tmp_path / "kept.onnx"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    old = os.umask(0o022)
    try:
        assert main(["convert", str(model), "-o", str(fresh), "--no-check"]) == 0
        assert main(["convert", str(model), "-o", str(kept), "--no-check", "--report", str(tmp_path / "r.txt")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "r.txt").stat().st_mode) == 0o644


def test_stale_temporaries_of_mixprecs_naming_are_removed_on_the_next_write(tmp_path):
    out = tmp_path / "o.onnx"
    dead = tmp_path / f".o.onnx.mixprec-{_dead_pid()}-0badc0de.tmp"
    dead.write_bytes(b"x" * 1000)
    live = temp_path(out)  # this process's own: a concurrent write, not stale
    live.write_bytes(b"y")
    foreign = tmp_path / ".o.onnx.abcdefgh.tmp"  # not mixprec's naming: never touched
    foreign.write_bytes(b"z")
    assert stale_temps(out) == [dead]
    atomic_write_bytes(out, b"model")
    assert out.read_bytes() == b"model"
    assert not dead.exists() and live.exists() and foreign.exists()


def test_a_failed_write_leaves_the_old_output_and_no_temporary(tmp_path):
    out = tmp_path / "o.bin"
    out.write_bytes(b"old")

    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    from mixprec.fileio import atomic_write
    with pytest.raises(OSError):
        atomic_write(out, broken)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["o.bin"]


def test_output_lying_inside_or_holding_the_input_is_refused():
    with pytest.raises(OutputPathError, match="contains the input"):
        check_disjoint([("the output", "/models/sm")], [("the input", "/models/sm/frozen.pb")])
    with pytest.raises(OutputPathError, match="lies inside the input"):
        check_disjoint([("the output", "/models/sm/variables/out.pb")], [("the input", "/models/sm")])


def _dead_pid():
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


# ------------------------------------------------------------------ TensorFlow ---
def _frozen_pb(path):
    tf = pytest.importorskip("tensorflow", reason="the .pb cases need tensorflow")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    w = tf.Variable(tf.random.normal([4, 3], seed=1))
    fn = tf.function(lambda x: tf.nn.relu(tf.matmul(x, w))).get_concrete_function(tf.TensorSpec([2, 4], tf.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(convert_variables_to_constants_v2(fn).graph.as_graph_def().SerializeToString())
    return path


def test_tensorflow_output_directory_holding_the_input_pb_is_refused(tmp_path, capsys):
    pb = _frozen_pb(tmp_path / "tf_sm" / "my_model.pb")
    _refused(capsys, ["convert", str(pb), "-o", str(tmp_path / "tf_sm")], [pb], None, "contains the input")
    assert pb.exists()


def test_tensorflow_output_inside_the_input_savedmodel_is_refused(tmp_path, capsys):
    tf = pytest.importorskip("tensorflow", reason="the SavedModel cases need tensorflow")
    module = tf.Module()
    module.f = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec([2], tf.float32)])
    sm = tmp_path / "sm"
    tf.saved_model.save(module, str(sm))
    files = [p for p in sm.rglob("*") if p.is_file()]
    _refused(capsys, ["convert", str(sm), "-o", str(sm / "variables" / "out.pb")], files, None, "lies inside")
    _refused(capsys, ["convert", str(sm), "-o", str(sm)], files, None, "is the input")


def test_a_non_empty_directory_mixprec_did_not_write_is_never_replaced(tmp_path, capsys):
    pb = _frozen_pb(tmp_path / "in" / "model.pb")
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"someone else's model")
    _refused(capsys, ["convert", str(pb), "-o", str(out)], [pb, out / "saved_model.pb"], out,
             "is not a SavedModel mixprec wrote")


# ------------------------------------------------------------------------ torch ---
def _pt2(path):
    torch = pytest.importorskip("torch", reason="the .pt2 cases need torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.relu(self.fc(x))

    torch.manual_seed(0)
    torch.export.save(torch.export.export(Net(), (torch.randn(2, 4),)), str(path))
    return path


class _Marker:
    """Unpickling it writes a file: what a hostile pickle would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


def _craft(src, dst, marker, where):
    """A copy of the .pt2 ``src`` whose sample inputs (or the weight ``fc.bias``,
    marked use_pickle) are a pickle that writes ``marker`` when unpickled."""
    import torch
    with zipfile.ZipFile(src) as zin:
        members = {info.filename: zin.read(info.filename) for info in zin.infolist()}
    config_name = next(n for n in members if n.endswith("model_weights_config.json"))
    config = json.loads(members[config_name])
    hostile = io.BytesIO()
    if where == "sample_inputs":
        torch.save(((torch.randn(2, 4),), {"_": _Marker(marker)}), hostile)
        target = next(n for n in members if n.endswith("data/sample_inputs/model.pt"))
    else:
        torch.save(_Marker(marker), hostile)
        config["config"]["fc.bias"]["use_pickle"] = True
        members[config_name] = json.dumps(config).encode()
        target = next(n for n in members if n.endswith("data/weights/" + config["config"]["fc.bias"]["path_name"]))
    members[target] = hostile.getvalue()
    with zipfile.ZipFile(dst, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return dst


@pytest.mark.parametrize("where", ["sample_inputs", "weight"])
@pytest.mark.parametrize("command", ["convert", "dump"])
def test_a_pt2_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path, capsys, where, command):
    src = _pt2(tmp_path / "net.pt2")
    marker = tmp_path / "pwned"
    evil = _craft(src, tmp_path / "evil.pt2", marker, where)
    out = tmp_path / "o.pt2"
    argv = ["convert", str(evil), "-o", str(out)] if command == "convert" else ["dump", str(evil)]
    before = evil.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and "refusing to load" in err and err.count("\n") == 1
    assert not marker.exists() and not out.exists() and evil.read_bytes() == before


def test_the_python_api_refuses_too_and_trust_pickle_opts_in(tmp_path):
    from mixprec import mix_precision
    from mixprec.errors import ModelLoadError, UntrustedPickleError
    src = _pt2(tmp_path / "net.pt2")
    marker = tmp_path / "pwned"
    evil = _craft(src, tmp_path / "evil.pt2", marker, "sample_inputs")
    with pytest.raises(UntrustedPickleError) as info:
        mix_precision.fit(str(evil))
    assert isinstance(info.value, ModelLoadError) and not marker.exists()
    from mixprec.frontends.torch import read_program
    read_program(evil, trust_pickle=True)
    assert marker.read_text() == "ran"  # the opt-in really unpickles


def test_a_plain_pt2_still_converts_and_torch_makes_the_output_directory(tmp_path, capsys):
    src = _pt2(tmp_path / "net.pt2")
    out = tmp_path / "newdir" / "out.pt2"
    assert main(["convert", str(src), "-o", str(out)]) == 0
    import torch
    assert torch.export.load(str(out)).module()(torch.randn(2, 4)).shape == (2, 3)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def test_trusted_pickle_fallback_leaves_no_logging_error_on_stderr(tmp_path):
    src = _pt2(tmp_path / "net.pt2")
    evil = _craft(src, tmp_path / "evil.pt2", tmp_path / "pwned", "sample_inputs")
    result = subprocess.run([sys.executable, "-m", "mixprec.cli", "dump", str(evil), "--trust-pickle"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr and "Traceback" not in result.stderr
    assert all(line.startswith("mixprec: ") for line in result.stderr.splitlines()), result.stderr


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------ MXNet ---
def test_mxnet_output_naming_the_inputs_params_is_refused(tmp_path, capsys):
    try:
        from mixprec.frontends import mxnet as frontend
        frontend.mx.__name__  # noqa: B018 - imports mxnet (with the numpy fix) or raises
    except Exception as exc:  # MissingDependencyError, or mxnet failing to import
        pytest.skip(f"the MXNet case needs mxnet: {exc}")
    symbol = tmp_path / "net-symbol.json"
    params = tmp_path / "net-0000.params"
    symbol.write_text(json.dumps({"nodes": [{"op": "null", "name": "data", "inputs": []}], "arg_nodes": [0],
                                  "heads": [[0, 0, 0]]}))
    params.write_bytes(b"params")
    _refused(capsys, ["convert", str(symbol), "-o", str(params)], [symbol, params], None, "input model's file")
