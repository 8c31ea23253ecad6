"""Models larger than memory (issue 12), at small sizes: lazily stored constants are
never held whole by the pipeline, the streamed writer writes what the in-memory path
writes, large outputs go to external data, and the output check is skipped (with a
note naming --no-check) when the model would not fit in memory; the check runs the FP32
model from its file and the converted model's emulation from a temporary file its
weights are streamed to, one onnxruntime session at a time."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mixprec import memory  # noqa: E402
from mixprec.backends import onnx as backend  # noqa: E402
from mixprec.cli import main  # noqa: E402
from mixprec.config import MixedPrecisionConfig  # noqa: E402
from mixprec.frontends import onnx as frontend  # noqa: E402
from mixprec.ir.dtypes import DType, convert_array  # noqa: E402
from mixprec.ir.graph import Graph, Value  # noqa: E402
from mixprec.ir.lazy import Converted, FileSlice, ProtoBytes, finite_abs_max  # noqa: E402
from mixprec.mix_precision import fit  # noqa: E402

WIDTH = 48


def _weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ws = [(rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) for _ in range(3)]
    ws[1][0, 0] = np.finfo(np.float32).max  # a mask sentinel: saturated, not inf
    return ws


def _mlp(external: Path | None = None) -> onnx.ModelProto:
    """x[1,W] -> 3 x (MatMul, Relu) with a tiny bias Add; saved with external data when
    ``external`` (a .onnx path) is given."""
    ws = _weights()
    nodes, inits = [], [numpy_helper.from_array(w, f"W{i}") for i, w in enumerate(ws)]
    inits.append(numpy_helper.from_array(np.full((WIDTH,), 0.1, np.float32), "b"))
    for i in range(3):
        src = "x" if i == 0 else f"h{i - 1}"
        nodes.append(helper.make_node("MatMul", [src, f"W{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Add", [f"m{i}", "b"], [f"a{i}"], name=f"add{i}"))
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}" if i < 2 else "y"], name=f"relu{i}"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external is not None:
        onnx.save_model(model, str(external), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external.name + ".weights", size_threshold=1024)
    return model


@pytest.fixture
def lazy_small(monkeypatch):
    """Make every initializer of 1 KiB or more lazy (the default is 4 MiB)."""
    monkeypatch.setattr(frontend, "LAZY_MIN_BYTES", 1024)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ------------------------------------------------------------------- lazy storage ---
def test_lazy_arrays_chunks_equal_their_data(tmp_path):
    data = np.arange(1000, dtype=np.float32).reshape(10, 100) * 1.001
    file = tmp_path / "w.bin"
    file.write_bytes(b"\0" * 24 + data.tobytes())
    lazy = FileSlice(file, 24, np.float32, (10, 100))
    assert (lazy.shape, lazy.dtype, lazy.nbytes, lazy.reads) == ((10, 100), np.float32, 4000, 0)
    np.testing.assert_array_equal(lazy.materialize(), data)
    assert not lazy.materialize().flags.writeable
    pieces = list(lazy.chunks(max_bytes=1000))
    assert [p.size for p in pieces] == [250] * 4
    np.testing.assert_array_equal(np.concatenate(pieces), data.reshape(-1))
    low = Converted(lazy, DType.BFLOAT16)
    want = convert_array(data, DType.BFLOAT16)
    assert low.dtype == want.dtype and low.nbytes == 2000
    np.testing.assert_array_equal(np.concatenate(list(low.chunks(max_bytes=300))).view(np.uint16),
                                  want.reshape(-1).view(np.uint16))
    tensor = numpy_helper.from_array(data)
    np.testing.assert_array_equal(ProtoBytes(tensor, np.float32, (10, 100)).materialize(), data)
    assert finite_abs_max(lazy, max_bytes=400) == pytest.approx(float(data.max()))
    reads = lazy.reads
    assert finite_abs_max(lazy) == pytest.approx(float(data.max())) and lazy.reads == reads  # kept, not re-read


@pytest.mark.parametrize("extreme", [np.inf, -np.inf, np.nan, np.finfo(np.float32).max, -np.finfo(np.float32).max])
def test_finite_abs_max_skips_non_finite_values_and_the_saturated_extreme(extreme):
    data = np.array([0.5, -7.25, 3.0, extreme], np.float32)
    assert finite_abs_max(data) == 7.25
    assert finite_abs_max(np.array([extreme], np.float32)) == 0.0
    assert finite_abs_max(np.array([-7.25, 3.0], np.float32)) == 7.25


def test_value_data_materializes_storage_does_not(tmp_path):
    file = tmp_path / "w.bin"
    file.write_bytes(np.ones(64, np.float32).tobytes())
    lazy = FileSlice(file, 0, np.float32, (8, 8))
    graph = Graph()
    value = graph.add_constant(Value("w", DType.FLOAT32, (8, 8), lazy))
    assert value.storage is lazy and value.has_data and lazy.reads == 0
    copy = graph.clone().constants["w"]
    assert copy.storage is lazy and lazy.reads == 0  # clone shares, reads nothing
    assert isinstance(value.data, np.ndarray) and float(value.data.sum()) == 64.0
    assert lazy.materialized == 2


# ------------------------------------------------------------ pipeline, streaming ---
def test_pipeline_never_holds_lazy_weights_whole(tmp_path, lazy_small):
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    converted = fit(str(path), MixedPrecisionConfig(check_outputs=False))
    weights = {name: v.storage for name, v in converted.ir.graph.constants.items() if name.startswith("W")}
    assert set(weights) == {"W0", "W1", "W2"}
    for name, stored in weights.items():
        assert isinstance(stored, Converted) and isinstance(stored.source, FileSlice), (name, stored)
        assert stored.materialized == 0 and stored.source.materialized == 0, name
    out = tmp_path / "out.onnx"
    converted.save(out)
    for name, stored in weights.items():  # written chunk by chunk, never materialized
        assert stored.materialized == 0 and stored.source.materialized == 0 and stored.reads > 0, name
    got = _initializers(out)
    for i, w in enumerate(_weights()):
        assert got[f"W{i}"].dtype == convert_array(w, DType.BFLOAT16).dtype
        np.testing.assert_array_equal(got[f"W{i}"].view(np.uint16), convert_array(w, DType.BFLOAT16).view(np.uint16))
    assert np.isfinite(got["W1"].astype(np.float32)).all()  # the FLT_MAX sentinel saturated, not inf


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_streamed_writer_writes_what_the_in_memory_path_writes(tmp_path, monkeypatch, precision):
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    config = MixedPrecisionConfig(precisions=precision, check_outputs=False, external_data=True)
    eager = fit(str(path), config)  # default LAZY_MIN_BYTES: these small tensors are read eagerly
    assert not any(isinstance(v.storage, Converted) for v in eager.ir.graph.constants.values())
    eager.save(tmp_path / "eager.onnx")
    monkeypatch.setattr(frontend, "LAZY_MIN_BYTES", 1024)
    streamed = fit(str(path), config)
    assert isinstance(streamed.ir.graph.constants["W0"].storage, Converted)
    streamed.save(tmp_path / "streamed.onnx")
    want, got = _initializers(tmp_path / "eager.onnx"), _initializers(tmp_path / "streamed.onnx")
    assert sorted(want) == sorted(got)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), name
    streamed_model = onnx.load(str(tmp_path / "streamed.onnx"), load_external_data=False)
    for tensor in streamed_model.graph.initializer:
        if tensor.name.startswith("W"):
            offset = {e.key: e.value for e in tensor.external_data}["offset"]
            assert int(offset) % backend.DATA_ALIGNMENT == 0


def test_check_runs_on_deferred_weights(tmp_path, lazy_small):
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    converted = fit(str(path), MixedPrecisionConfig())
    assert [c.output for c in converted.report.checks] == ["y"]
    assert converted.report.checks[0].cosine > 0.99


# -------------------------------------------------------------- external data ---
def test_output_over_the_threshold_goes_to_external_data(tmp_path, monkeypatch):
    proto = _mlp()
    backend.save(proto, tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()
    monkeypatch.setattr(backend, "EXTERNAL_DATA_THRESHOLD", 4096)
    backend.save(proto, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= 3 * WIDTH * WIDTH * 4
    saved = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    kinds = {t.name: t.data_location for t in saved.graph.initializer}
    assert kinds == {"W0": TensorProto.EXTERNAL, "W1": TensorProto.EXTERNAL, "W2": TensorProto.EXTERNAL,
                     "b": TensorProto.DEFAULT}  # under EXTERNAL_MIN_BYTES stays inline
    assert all(not t.HasField("data_location") or t.data_location == TensorProto.DEFAULT
               for t in proto.graph.initializer)  # the proto is left as it was
    got = _initializers(tmp_path / "big.onnx")
    for i, w in enumerate(_weights()):
        np.testing.assert_array_equal(got[f"W{i}"], w)


def test_external_data_flag_and_config_force_it(tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save_model(_mlp(), str(model))
    assert main(["convert", str(model), "-o", str(tmp_path / "inline.onnx"), "--no-check"]) == 0
    assert not (tmp_path / "inline.onnx.data").exists()
    assert main(["convert", str(model), "-o", str(tmp_path / "ext.onnx"), "--no-check", "--external-data"]) == 0
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    fit(str(model), MixedPrecisionConfig(check_outputs=False, external_data=True)).save(tmp_path / "cfg.onnx")
    assert (tmp_path / "cfg.onnx.data").exists()
    assert _initializers(tmp_path / "ext.onnx")["W0"].tobytes() == _initializers(tmp_path / "inline.onnx")["W0"].tobytes()


# ------------------------------------------------------------ check memory gate ---
def test_check_skipped_with_a_note_when_memory_is_short(tmp_path, monkeypatch, caplog):
    model = tmp_path / "mlp.onnx"
    onnx.save_model(_mlp(), str(model))
    ir_model = frontend.load(str(model))
    weights = 3 * WIDTH * WIDTH * 4 + WIDTH * 4
    activations = 9 * WIDTH * 4  # nine [1, W] float outputs
    assert memory.check_memory_need(ir_model) == int(memory.CHECK_MEMORY_FACTOR * (weights + activations))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger="mixprec"):
        converted = fit(str(model), MixedPrecisionConfig())
    assert converted.report.checks == []
    note = next(n for n in converted.report.notes if n.startswith("output check skipped"))
    assert "--no-check" in note and "GiB" in note and "available" in note
    assert any("--no-check" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**40)
    assert [c.output for c in fit(str(model), MixedPrecisionConfig()).report.checks] == ["y"]


def test_available_bytes_reads_meminfo_without_psutil(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_psutil)
    available = memory.available_bytes()
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo here")
    assert isinstance(available, int) and available > 2**20


def test_inline_raw_data_is_lazy_only_in_mixprecs_own_proto(tmp_path, lazy_small):
    model = tmp_path / "mlp.onnx"
    proto = _mlp()
    onnx.save_model(proto, str(model))
    from_file = frontend.load(str(model)).graph.constants["W0"].storage
    assert isinstance(from_file, ProtoBytes) and from_file.reads == 0
    np.testing.assert_array_equal(from_file.materialize(), _weights()[0])
    from_proto = frontend.load(proto, infer_shapes=False).graph.constants["W0"].storage
    assert isinstance(from_proto, np.ndarray)  # the caller's proto is copied, never aliased
    converted = fit(str(model), MixedPrecisionConfig(check_outputs=False))
    assert isinstance(converted.ir.graph.constants["W0"].storage, Converted)
    converted.save(tmp_path / "out.onnx")  # under 2 GB, from an inline model: stays inline
    assert not (tmp_path / "out.onnx.data").exists()
    np.testing.assert_array_equal(_initializers(tmp_path / "out.onnx")["W0"].view(np.uint16),
                                  convert_array(_weights()[0], DType.BFLOAT16).view(np.uint16))


# ------------------------------------------------- the check, from files (bounded) ---
def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(3).standard_normal((1, WIDTH)).astype(np.float32)}


def _streamed(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    """The external-data MLP and its BF16 conversion whose weights are deferred."""
    path = tmp_path / "in" / "mlp.onnx"
    path.parent.mkdir()
    _mlp(path)
    converted = fit(str(path), MixedPrecisionConfig(check_outputs=False)).model
    assert backend.pending_bytes(converted) > 0  # lazy_small: W0..W2 are deferred, unread
    return path, converted


@pytest.fixture
def sessions(monkeypatch):
    """What every onnxruntime session of the check is made from (a path, or bytes)."""
    import onnxruntime as ort
    made: list[object] = []
    real = ort.InferenceSession

    def recording(source, *args, **kwargs):
        made.append(source)
        return real(source, *args, **kwargs)
    monkeypatch.setattr(ort, "InferenceSession", recording)
    return made


def test_fp32_reference_session_is_made_from_the_path_weights_unread(tmp_path, lazy_small, monkeypatch, sessions):
    import onnx.external_data_helper as edh
    from mixprec.runtimes import onnx as runtime
    path = tmp_path / "in" / "mlp.onnx"
    path.parent.mkdir()
    _mlp(path)
    loads: list[object] = []
    real_load = onnx.load

    def counting_load(f, *args, **kwargs):
        loads.append(kwargs.get("load_external_data", True))
        return real_load(f, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("the check loaded external data into Python")
    monkeypatch.setattr(onnx, "load", counting_load)
    monkeypatch.setattr(edh, "load_external_data_for_model", refuse)
    monkeypatch.setattr(edh, "load_external_data_for_tensor", refuse)
    want = runtime.run_onnxruntime(_mlp(), _feeds())  # the same model held in memory
    sessions.clear()
    got = runtime.OnnxAdapter().run_original(str(path), _feeds())
    assert sessions == [str(path)], sessions
    assert all(flag is False for flag in loads), loads
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    sessions.clear()
    result = fit(str(path), MixedPrecisionConfig())
    assert [c.output for c in result.report.checks] == ["y"] and result.report.checks[0].cosine > 0.99
    assert sessions[0] == str(path)  # the FP32 reference
    assert isinstance(sessions[1], bytes)  # a small emulation runs from memory, its weights handed over as arrays
    sessions.clear()
    monkeypatch.setattr(runtime, "IN_MEMORY_RUN_BYTES", 0)  # a large one is streamed to a temporary file
    result = fit(str(path), MixedPrecisionConfig())
    assert [c.output for c in result.report.checks] == ["y"] and result.report.checks[0].cosine > 0.99
    assert sessions[0] == str(path)
    assert isinstance(sessions[1], str) and Path(sessions[1]).parent != path.parent  # the emulation's temp file
    assert all(flag is False for flag in loads), loads


def test_streamed_emulation_equals_the_in_memory_emulation(tmp_path, lazy_small):
    from mixprec.runtimes import onnx as runtime
    _, converted = _streamed(tmp_path)
    in_memory = runtime.emulate_in_float(backend.resolved(converted), DType.BFLOAT16)
    streamed = runtime.emulate_in_float(converted, DType.BFLOAT16, cast_initializers=True)
    assert backend.pending_bytes(streamed) == backend.pending_bytes(converted)  # nothing was read
    saved = backend.save(streamed, tmp_path / "emulated.onnx", external_data=True)
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(saved)).graph.initializer}
    want = {t.name: numpy_helper.to_array(t) for t in in_memory.graph.initializer}
    assert {n.removesuffix("__stored") for n in stored} == set(want)
    for name, array in stored.items():
        widened = array.astype(np.float32) if name.endswith("__stored") else array
        assert widened.dtype == want[name.removesuffix("__stored")].dtype, name
        assert widened.tobytes() == want[name.removesuffix("__stored")].tobytes(), name
    nodes = list(streamed.graph.node)
    for i, node in enumerate(nodes):  # each widening Cast sits just before the node that reads it
        if node.op_type == "Cast" and node.input[0].endswith("__stored"):
            assert node.output[0] in nodes[i + 1].input, (node, nodes[i + 1])
    exact = runtime.run_onnxruntime(in_memory, _feeds(), exact=True)
    (got,) = runtime.run_emulated(converted, _feeds(), [DType.BFLOAT16])
    assert got.tobytes() == exact[0].tobytes()


def test_segmented_runs_from_files_are_exact(tmp_path, lazy_small, monkeypatch):
    from mixprec.runtimes import onnx as runtime, onnx_segments
    path, converted = _streamed(tmp_path)
    whole_fp32 = runtime.run_onnxruntime_file(path, _feeds(), exact=True)
    whole_emulated = runtime.run_onnxruntime(runtime.emulate_in_float(backend.resolved(converted)), _feeds(),
                                             exact=True)
    monkeypatch.setattr(onnx_segments, "SEGMENT_NODES", 3)
    runs = runtime.STATS["segmented_runs"]
    assert runtime.run_onnxruntime_file(path, _feeds())[0].tobytes() == whole_fp32[0].tobytes()
    assert runtime.run_emulated(converted, _feeds(), [DType.BFLOAT16])[0].tobytes() == whole_emulated[0].tobytes()
    assert runtime.STATS["segmented_runs"] == runs + 2


def test_temporary_files_are_removed_even_when_the_run_fails(tmp_path, lazy_small, monkeypatch):
    import tempfile
    from mixprec.errors import ConversionError
    from mixprec.runtimes import onnx as runtime
    path, converted = _streamed(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in path.parent.iterdir()}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen: list[list[str]] = []

    def failing(session, feeds):
        seen.append(sorted(p.name for p in scratch.rglob("*") if p.is_file()))
        raise ConversionError("onnxruntime failed running the model: boom")
    monkeypatch.setattr(runtime, "_run_session", failing)
    monkeypatch.setattr(runtime, "IN_MEMORY_RUN_BYTES", 0)  # as a model too large to run from memory
    with pytest.raises(ConversionError, match="boom"):
        runtime.run_emulated(converted, _feeds(), [DType.BFLOAT16])
    assert seen and "emulated.onnx.data" in seen[0], seen  # the weights were streamed there
    assert list(scratch.iterdir()) == []
    result = fit(str(path), MixedPrecisionConfig())  # the whole check: skipped with a note, nothing left
    assert not result.report.checks and any("output check skipped" in n for n in result.report.notes)
    assert list(scratch.iterdir()) == []
    assert {p.name: p.stat().st_mtime_ns for p in path.parent.iterdir()} == before  # the input untouched


def test_check_cosine_equals_the_in_memory_checks(tmp_path, lazy_small):
    """The old check: the FP32 model loaded whole and run from memory, the converted
    model's emulation built in memory (weights materialized and widened)."""
    from mixprec.numerics import compare_outputs
    from mixprec.runtimes import onnx as runtime
    path = tmp_path / "in" / "mlp.onnx"
    path.parent.mkdir()
    _mlp(path)
    result = fit(str(path), MixedPrecisionConfig(sample_inputs=_feeds()))
    assert backend.pending_bytes(result.model) > 0
    reference = runtime.run_onnxruntime(onnx.load(str(path)), _feeds())
    emulated = runtime.run_onnxruntime(runtime.emulate_in_float(backend.resolved(result.model)), _feeds(), exact=True)
    (old,) = compare_outputs(["y"], reference, emulated)
    (new,) = result.report.checks
    assert new.cosine == old.cosine and new.max_abs_error == old.max_abs_error, (new, old)


def test_check_runs_when_lazy_weights_are_also_graph_inputs(tmp_path, lazy_small):
    """The regression (the onnx package's model-zoo files, IR 3: every weight is also a
    graph input with the initializer as its default): the emulation read such a weight's
    deferred data with numpy_helper, which looked for the pending location on disk, and
    the check was skipped ("should be stored in mixprec-pending:0"), so no error budget
    ran either."""
    model = _mlp()
    model.ir_version = 3
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    path = tmp_path / "ir3.onnx"
    onnx.save(model, str(path))
    converted = fit(str(path), MixedPrecisionConfig())
    assert isinstance(converted.ir.graph.constants["W0"].storage, Converted)
    assert not any("check skipped" in note for note in converted.report.notes), converted.report.notes
    assert [c.output for c in converted.report.checks] == ["y"] and converted.report.checks[0].cosine > 0.99


def test_a_model_run_from_memory_hands_its_weights_over_as_arrays(tmp_path, lazy_small, monkeypatch, sessions):
    """Inline FP32 weights and deferred BF16 ones reach onnxruntime as arrays
    (``backend.detach_initializers``): the serialized model holds no weight bytes, and the
    outputs equal those of the model serialized whole."""
    from mixprec.runtimes import onnx as runtime
    monkeypatch.setattr(runtime, "DETACH_MIN_BYTES", 1024)
    inline = _mlp()
    weight_bytes = sum(w.nbytes for w in _weights())
    whole = runtime._run_session_of(inline.SerializeToString(), _feeds(), "CPUExecutionProvider", True, None)
    sessions.clear()
    got = runtime.run_onnxruntime(inline, _feeds())
    assert isinstance(sessions[0], bytes) and len(sessions[0]) < weight_bytes // 10
    np.testing.assert_array_equal(got[0], whole[0])
    _, converted = _streamed(tmp_path)  # BF16 weights deferred (ml_dtypes arrays when read)
    sessions.clear()
    emulated = runtime.run_emulated(converted, _feeds(), [DType.BFLOAT16])
    assert isinstance(sessions[0], bytes) and len(sessions[0]) < weight_bytes // 10  # BF16 data: weight_bytes / 2
    streamed = runtime.emulate_in_float(backend.resolved(converted), DType.BFLOAT16)
    np.testing.assert_array_equal(emulated[0], runtime._run_whole(streamed, _feeds(), "CPUExecutionProvider",
                                                                  False)[0])


def test_the_size_estimate_of_a_model_counts_its_tensors(monkeypatch):
    from mixprec.runtimes import onnx as runtime
    monkeypatch.setattr(runtime, "EXACT_SIZE_BELOW", 0)  # estimated, as for a model of 32 MiB or more
    model = _mlp()
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        np.zeros((256, 256), np.float32), "c")))
    exact = model.ByteSize()
    assert exact <= runtime._size(model) <= exact + 512 * len(model.graph.node)


def test_packed_sub_byte_initializers_stay_inline_when_weights_are_handed_over(monkeypatch):
    """An INT4 weight is stored two values a byte: it is not handed over as an array (an
    unpacked numpy int4 array is not its ONNX layout) but kept in the model."""
    import ml_dtypes
    from mixprec.runtimes import onnx as runtime
    monkeypatch.setattr(runtime, "DETACH_MIN_BYTES", 1)
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, size=(64, 32)).astype(ml_dtypes.int4)
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.float32(0.05), "s"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["qf"]), helper.make_node("MatMul", ["x", "qf"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    shell, arrays = backend.detach_initializers(model, 1)
    assert "q" not in arrays and "w" in arrays and {t.name for t in shell.graph.initializer} == {"q", "s", "w"}
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    whole = runtime._run_session_of(model.SerializeToString(), feeds, "CPUExecutionProvider", True, None)
    np.testing.assert_array_equal(runtime.run_onnxruntime(model, feeds)[0], whole[0])
