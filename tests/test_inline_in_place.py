"""Large .onnx files with their weights inline (issue 12): the structure is read at the
protobuf wire level with the large initializers left in the file (``onnx_wire``), the
weights are read in place one tensor at a time, and an inline output is streamed, so that
the whole file is never parsed into memory (a 1.07 GB model peaked at 5.2 GB before: the
file parsed three times, shape inference and onnx.checker each adding a copy). At small
sizes here; the memory itself is measured in bench/large_weights.py --inline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mixprec.backends import onnx as backend  # noqa: E402
from mixprec.cli import main  # noqa: E402
from mixprec.config import MixedPrecisionConfig  # noqa: E402
from mixprec.frontends import onnx as frontend  # noqa: E402
from mixprec.frontends import onnx_wire  # noqa: E402
from mixprec.ir.lazy import Converted, FileSlice  # noqa: E402
from mixprec.mix_precision import fit, model_files  # noqa: E402
from mixprec.runtimes import onnx as runtime  # noqa: E402

WIDTH = 64


def _mlp(path: Path) -> onnx.ModelProto:
    """x[1,W] -> 3 x (MatMul, Add, Relu), weights inline (raw_data), a small bias and a
    shape-like int64 initializer; written to ``path``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / 8).astype(np.float32), f"W{i}")
             for i in range(3)]
    inits += [numpy_helper.from_array(np.full((WIDTH,), 0.1, np.float32), "b"),
              numpy_helper.from_array(np.array([1, WIDTH], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["h-1"])]
    for i in range(3):
        nodes += [helper.make_node("MatMul", [f"h{i - 1}", f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", "b"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"h{i}" if i < 2 else "y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])], inits,
                              doc_string="kept")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.metadata_props.add(key="k", value="v")
    onnx.save(model, str(path))
    return model


@pytest.fixture
def in_place(monkeypatch):
    """Read every file in place and make initializers of 1 KiB or more lazy."""
    monkeypatch.setattr(onnx_wire, "MIN_FILE_BYTES", 0)
    monkeypatch.setattr(frontend, "LAZY_MIN_BYTES", 1024)


def _as_inline(structure: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """``structure`` with its references to ``path`` replaced by the bytes they name."""
    out = onnx.ModelProto()
    out.CopyFrom(structure)
    data = path.read_bytes()
    for tensor in out.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            assert info["location"] == path.name
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            tensor.raw_data = data[int(info["offset"]):int(info["offset"]) + int(info["length"])]
    return out


def test_structure_is_the_model_with_its_large_tensors_referenced_in_place(tmp_path, in_place):
    path = tmp_path / "mlp.onnx"
    model = _mlp(path)
    structure = onnx_wire.read_structure(path, 1024)
    assert structure is not None
    referenced = {t.name for t in structure.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert referenced == {"W0", "W1", "W2"}  # the bias and the shape are smaller: left as they are
    assert all(not t.HasField("raw_data") for t in structure.graph.initializer if t.name in referenced)
    assert _as_inline(structure, path).SerializeToString() == model.SerializeToString()


def test_small_files_and_files_without_large_tensors_are_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    assert onnx_wire.read_structure(path, 1024) is None  # below MIN_FILE_BYTES
    monkeypatch.setattr(onnx_wire, "MIN_FILE_BYTES", 0)
    assert onnx_wire.read_structure(path, 1 << 20) is None  # no tensor that large


@pytest.mark.parametrize("damage", ["truncated", "group", "raw_data_twice", "length_past_end"])
def test_files_that_do_not_walk_fall_back_to_the_usual_load(tmp_path, in_place, damage):
    path = tmp_path / "mlp.onnx"
    model = _mlp(path)
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) - 100]
    elif damage == "group":
        data = data + bytes([(15 << 3) | 3])  # a start-group field at the model's top level
    elif damage == "raw_data_twice":
        tensor = model.graph.initializer[0]
        twice = tensor.SerializeToString() + backend._field_header(9, 4) + b"\0\0\0\0"
        data = data + backend._field_header(7, backend._field_size(5, len(twice))) + \
            backend._field_header(5, len(twice)) + twice
    else:
        data = data + backend._field_header(16, 1 << 20)  # a field longer than the file
    path.write_bytes(data)
    assert onnx_wire.read_structure(path, 1024) is None
    if damage in ("truncated", "length_past_end", "group"):
        with pytest.raises(Exception) as info:
            frontend.load(path)
        assert "not a readable ONNX model" in str(info.value)


def test_in_place_weights_convert_lazily_and_the_output_is_inline_and_the_same(tmp_path, monkeypatch):
    """The regression: the in-place path converts to the very model the whole-file path
    gives, inline (no data file), its weights never materialized whole."""
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    monkeypatch.setattr(frontend, "LAZY_MIN_BYTES", 1024)
    whole = fit(str(path), MixedPrecisionConfig(check_outputs=False))
    whole.save(tmp_path / "whole.onnx")
    monkeypatch.setattr(onnx_wire, "MIN_FILE_BYTES", 0)
    converted = fit(str(path), MixedPrecisionConfig(check_outputs=False))
    weights = {n: v.storage for n, v in converted.ir.graph.constants.items() if n.startswith("W")}
    assert all(isinstance(s, Converted) and isinstance(s.source, FileSlice) and s.source.in_place
               and Path(s.source.path) == path for s in weights.values())
    converted.save(tmp_path / "out.onnx")
    assert all(s.materialized == 0 and s.source.materialized == 0 and s.reads > 0 for s in weights.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "out.onnx", "whole.onnx"]
    got = onnx.load(str(tmp_path / "out.onnx"))
    want = onnx.load(str(tmp_path / "whole.onnx"))
    assert got.SerializeToString() == want.SerializeToString()
    assert [t.name for t in got.graph.initializer] == ["W0", "W1", "W2", "b", "shape"]
    assert got.graph.initializer[0].data_type == TensorProto.BFLOAT16
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)


def test_the_input_file_is_not_listed_as_its_own_data_file(tmp_path, in_place):
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    assert runtime._external_files(path) == []
    assert model_files(str(path)) == [path]


def test_checker_still_reports_a_broken_structure(tmp_path, in_place, caplog):
    path = tmp_path / "mlp.onnx"
    model = _mlp(path)
    model.graph.node[1].input[0] = "undefined"  # read by MatMul, produced by no one
    onnx.save(model, str(path))
    with caplog.at_level("WARNING"):
        frontend._check_input(frontend.read_file(path), path)
    assert "does not pass onnx.checker" in caplog.text and "undefined" in caplog.text


def test_cli_converts_an_in_place_model_with_the_check(tmp_path, in_place, capsys):
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    before = path.read_bytes()
    assert main(["convert", str(path), "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["checks"] and report["checks"][0]["cosine"] > 0.999, report["checks"]
    assert path.read_bytes() == before
    assert not (tmp_path / "out.onnx.data").exists()
