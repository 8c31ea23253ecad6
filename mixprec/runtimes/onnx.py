"""Running ONNX models: the ONNX adapter (.onnx files and ModelProtos), inference in
onnxruntime and onnx.reference, sample inputs fitted to a model, and the exact
low-precision emulation the output check runs (kernel probes: ``onnx_probes``).

The converted model is checked with onnx.checker (full_check). The output check feeds
sample inputs fitted to the model (``candidate_feeds``) and runs the converted model in
onnxruntime: directly where it has the kernels (FP16, target=onnxruntime), else on an
exact float32 emulation of the low-precision model (``emulate_in_float``); the reference
evaluator only with ``check_runtime="reference"``. The FP32 model runs in onnxruntime."""
from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mixprec import background
from mixprec import progress as bars
from mixprec.backends import onnx as backend
from mixprec.config import MixedPrecisionConfig
from mixprec.dialects.onnx import LARGE_MODEL_BYTES, NodeTable, dtype_to_onnx, onnx_name
from mixprec.errors import ConfigError, ConversionError, ModelRunError, OutputCheckUnavailable, SampleInputError
from mixprec.fileio import first_line
from mixprec.frontends import onnx as frontend
from mixprec.frontends import onnx_wire
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Node, Value
from mixprec.passes.common import target_dtype
from mixprec.runtimes.base import BACKGROUND_JOBS, Adapter, RuntimeLimits, load_once_per_fit, per_fit_memo
from mixprec.runtimes import onnx_numpy, onnx_segments
from mixprec.runtimes.onnx_probes import missing_kernels
from mixprec.sample_inputs import Dim, InputSpec, check_sample_inputs, input_bytes_limit, make_arrays, shape_ladder

logger = logging.getLogger(__name__)


#: the largest graph (nodes, subgraphs included) the output check falls back to
#: onnx.reference for when onnxruntime cannot run the FP32 model: the evaluator runs about
#: 1k nodes a second in Python, so larger graphs skip the check with a note instead
REFERENCE_MAX_NODES = 20000
#: the per-fit memo of what the emitter wrote for each emitted proto: id -> (proto, NodeTable)
EMITTED_NODES = "emitted nodes"
#: the per-fit memo of what the lowering read of each model file: file version -> NodeTable
READ_NODES = "read nodes"


class OnnxAdapter(Adapter):
    name = "onnx"
    reloads_cheaply = True

    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        """The IR of ``model``; within a fit, what the lowering read of a large model
        file's nodes is kept for the output check's runner (``numpy_runner``)."""
        memo = per_fit_memo(READ_NODES)
        if memo is None or not isinstance(model, (str, os.PathLike)):
            return frontend.load(model)
        table = NodeTable()
        ir_model = frontend.load(model, table=table)
        if len(table.rows) >= onnx_numpy.MIN_NODES:
            memo[_file_version(Path(model))] = table
        return ir_model

    def runtime_limits(self, ir_model: Model, config: MixedPrecisionConfig) -> RuntimeLimits:
        nodes = _onnxruntime_crashers(ir_model) if config.precision == "fp16" else {}
        if config.target != "onnxruntime":
            return RuntimeLimits([], nodes, "onnxruntime")
        ops = sorted({(n.domain, n.op) for n in ir_model.graph.all_nodes()})
        missing = missing_kernels(ops, target_dtype(config.precision))
        return RuntimeLimits(sorted(missing), nodes, "onnxruntime (CPUExecutionProvider)")

    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """The validated ModelProto, every node legal at its opset (``backend.emit_legal``:
        the opset raised, or a node kept in float32). What was done is logged and kept in
        ``ir_model.meta["notes"]`` for the report."""
        proto = self.emit_unvalidated(ir_model, config)
        backend.validate(proto)
        return proto

    def emit_unvalidated(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """``emit`` without the validation; within a fit, what the emitter wrote for each
        node is kept for the output check's runner (``numpy_runner``)."""
        memo = per_fit_memo(EMITTED_NODES)
        table = NodeTable() if memo is not None else None
        proto, notes = backend.emit_legal(ir_model, table)
        if memo is not None and table.rows:
            memo[id(proto)] = (proto, table)  # the proto held: its id is not reused within the fit
        for note in notes:
            logger.warning(note)
        ir_model.meta.setdefault("notes", []).extend(notes)
        return proto

    def validate(self, native: Any, config: MixedPrecisionConfig) -> None:
        backend.validate(native)

    def start_validation(self, native: Any, config: MixedPrecisionConfig) -> Callable[[], None]:
        """onnx.checker's full check of a graph of ``onnx_numpy.MIN_NODES`` nodes and more runs
        in a forked child beside the output check (1-1.4 s of the 100k-node graph of
        bench/scale.py); the same check, here, where no child can run it."""
        if len(native.graph.node) < onnx_numpy.MIN_NODES or per_fit_memo(BACKGROUND_JOBS) is None:
            return super().start_validation(native, config)

        def check() -> str:
            try:
                backend.validate(native)
            except ConversionError as exc:
                return str(exc)
            return ""
        job = background.start(check, "onnx.checker of the converted model")
        if job is None:
            return super().start_validation(native, config)
        per_fit_memo(BACKGROUND_JOBS)[("validation", id(native))] = job  # ended with the fit if not collected

        def finish() -> None:
            problem = job.result()
            if problem is None:  # the child gave no answer: check here
                backend.validate(native)
            elif problem:
                raise ConversionError(problem)
        return finish

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        return next(iter(self.candidate_inputs(original, ir_model, config)))

    def candidate_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Iterator[Any]:
        """The user's ``sample_inputs`` alone (checked against the model's inputs), else
        ``candidate_feeds``: the shape ladder over the model's inputs with their
        unknown dims resolved from the model, ``input_shapes`` first."""
        if config.sample_inputs is not None:
            yield check_feeds(ir_model, config.sample_inputs)
            return
        yield from candidate_feeds(ir_model, config.input_shapes)

    def native(self, model: Any) -> Any:
        return onnx.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model

    def prefetch_original(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> None:
        """A model file the numpy runner runs (``onnx_numpy.suited``: 5k nodes and more) runs
        on the first candidate input in a forked child while the pipeline converts it (on
        the 100k-node graph of bench/scale.py: reading, planning and running, 2.5-3 s off
        the wall time). ``run_original`` takes that result for the same inputs only."""
        if not isinstance(original, (str, os.PathLike)) or not background.available():
            return
        if sum(len(g) for g in ir_model.graph.all_graphs()) < onnx_numpy.MIN_NODES:
            return
        memo = per_fit_memo(BACKGROUND_JOBS)
        if memo is None:
            return
        try:
            feeds = next(iter(self.candidate_inputs(original, ir_model, config)))
        except Exception:  # noqa: BLE001 - the check itself says what is wrong with the inputs
            return
        path = Path(original)

        def run() -> list[np.ndarray] | None:
            runner = numpy_runner(path)
            return None if runner is None else runner.run(feeds)
        job = background.start(run, "FP32 run of the output check")
        if job is not None:
            memo[_prefetch_key(path)] = (feeds, job)

    def _prefetched(self, original: Any, inputs: Any) -> list[np.ndarray] | None:
        """The background FP32 run of ``original`` on exactly ``inputs``, if one was made."""
        memo = per_fit_memo(BACKGROUND_JOBS)
        if not memo or not isinstance(original, (str, os.PathLike)) or not isinstance(inputs, Mapping):
            return None
        entry = memo.pop(_prefetch_key(Path(original)), None)
        if entry is None:
            return None
        feeds, job = entry
        if feeds.keys() != inputs.keys() or not all(_same_array(feeds[k], inputs[k]) for k in feeds):
            job.close()
            return None
        return job.result()

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        """onnxruntime, from the model's file (its external data read by onnxruntime, never
        loaded into Python; an in-memory ModelProto is run as ``run_onnxruntime`` runs it);
        a model that already holds bf16/f16 values (mixprec's own output) runs on its exact
        float32 emulation; the reference evaluator only where onnxruntime cannot load the
        model. A model that loads and fails on ``inputs`` (ModelRunError) is run once more
        with the graph optimizations off, then the error is raised: the inputs do not fit."""
        prefetched = self._prefetched(original, inputs)
        if prefetched is not None:
            return prefetched
        path = Path(original) if isinstance(original, (str, os.PathLike)) else None
        runner = numpy_runner(path if path is not None else original)
        if runner is not None:
            try:
                return runner.run(inputs)
            except Exception as exc:  # noqa: BLE001 - onnxruntime runs it then, and says what is wrong
                logger.info("the numpy runner failed on the FP32 model (%s); running it in onnxruntime",
                            first_line(exc))
        try:
            return run_onnxruntime_file(path, inputs) if path is not None else run_onnxruntime(original, inputs)
        except ModelRunError:  # loaded, then failed on these inputs: once more unoptimized (a graph
            #                    optimization can be what fails), never in the reference evaluator, whose
            #                    numpy kernels reject the same shapes after seconds (minutes on large images)
            return run_onnxruntime_file(path, inputs, exact=True) if path is not None else \
                run_onnxruntime(original, inputs, exact=True)
        except ConversionError as exc:
            ort_error = first_line(exc)
        proto = frontend.read_file(path) if path is not None else original
        if low_precision_dtypes(proto):
            try:
                return run_emulated(proto, inputs, folder=path.parent if path is not None else None)
            except ConversionError:
                pass
        nodes = sum(len(g.node) for g in _graphs(proto.graph))
        if nodes > REFERENCE_MAX_NODES:
            raise ConversionError(f"onnxruntime cannot run the FP32 model ({ort_error}), and the reference evaluator "
                                  f"would take minutes on its {nodes} nodes (more than {REFERENCE_MAX_NODES})")
        logger.info("onnxruntime cannot run the FP32 model (%s); using the reference evaluator", ort_error)
        return run_reference(self.native(original), inputs)

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        """The converted model's outputs, by ``config.check_runtime``: ``"reference"`` runs
        onnx.reference.ReferenceEvaluator; ``"auto"`` runs onnxruntime directly where it
        has the kernels (FP16, or target='onnxruntime') and otherwise onnxruntime on the
        exact emulation (``emulate_in_float``). A graph the numpy runner suits (very
        large, cheap ops) runs its emulation there, FP16 too unless target='onnxruntime':
        onnxruntime's session of a 100k-node graph alone costs more than the whole run.
        Any failure of the runtime is OutputCheckUnavailable with a one-line reason."""
        if config.check_runtime == "reference":  # the evaluator needs the data in memory (lazily loaded weights)
            self.last_check_note = "outputs checked with onnx.reference.ReferenceEvaluator (check_runtime='reference')"
            return _unavailable_on_error("the reference evaluator", run_reference, backend.resolved(converted), inputs)
        runner = numpy_runner(converted) if config.target != "onnxruntime" else None
        if (config.precision == "fp16" and runner is None) or config.target == "onnxruntime":
            try:
                return run_onnxruntime(converted, inputs)
            except ConversionError as exc:
                if config.target == "onnxruntime":
                    raise OutputCheckUnavailable(f"the converted model does not run in onnxruntime although "
                                                 f"target='onnxruntime' ({first_line(exc)})") from None
                logger.info("onnxruntime cannot run the fp16 model (%s); checking its emulation", first_line(exc))
        if runner is not None:
            try:
                outputs = runner.run(inputs)
            except Exception as exc:  # noqa: BLE001 - the onnxruntime emulation then
                logger.info("the numpy runner failed on the converted model (%s); using onnxruntime", first_line(exc))
            else:
                self.last_check_note = (
                    f"outputs checked with onnx.reference's numpy kernels node by node ({len(runner)} nodes: "
                    f"onnxruntime's per-node session cost would exceed the run) on an exact float32 emulation of "
                    f"the {config.precision} model (every {config.precision} value rounded where it is produced)")
                return outputs
        self.last_check_note = (f"outputs checked in onnxruntime on an exact float32 emulation of the "
                                f"{config.precision} model (every {config.precision} value rounded where it "
                                "is produced)")
        return _unavailable_on_error("onnxruntime on the float32 emulation", run_emulated, converted,
                                     inputs, [target_dtype(config.precision)])

    def input_files(self, path: Path, external: bool = True) -> list[Path]:
        """The model file and, when ``external``, the external data files it names."""
        return [path, *_external_files(path)] if external else [path]

    def output_targets(self, path: Path) -> list[tuple[str, Path]]:
        """The model file and the ``OUT.data`` file a large model's weights go to."""
        return [("file", path), ("file", path.with_name(path.name + ".data"))]

    def output_names(self, ir_model: Model) -> list[str]:
        return [onnx_name(ir_model, v) for v in ir_model.graph.outputs]

    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        backend.save(converted, path, input_path=input_path, external_data=True if config.external_data else None)


def _onnxruntime_crashers(ir_model: Model) -> dict[str, str]:
    """Nodes whose FP16 form crashes onnxruntime's CPU provider (segmentation fault when
    the session is created with default optimizations; seen with onnxruntime 1.32): a
    Transpose swapping the two leading axes of a 3-D tensor read by a MatMul, which the
    optimizer fuses into a batch-transposing FusedMatMul. Keeping the Transpose in FP32
    puts a cast between the two and the fusion does not happen."""
    out = {}
    for node in ir_model.graph.all_nodes():
        if node.op != "Transpose" or node.domain or list(node.attrs.get("perm", [])) != [1, 0, 2]:
            continue
        if any(reader.op == "MatMul" for value in node.outputs for reader, _ in value.uses()):
            out[node.name] = ("kept f32: onnxruntime's CPU provider crashes on an f16 Transpose(perm=[1,0,2]) "
                              "feeding MatMul (its FusedMatMul fusion)")
    return out


def _unavailable_on_error(what: str, run: Callable[..., list[np.ndarray]], *args: Any) -> list[np.ndarray]:
    """``run(*args)``; any failure is OutputCheckUnavailable naming ``what`` in one line."""
    try:
        return run(*args)
    except Exception as exc:  # a runtime's own gap on this model, never a conversion failure
        reason = first_line(exc) if isinstance(exc, ConversionError) else f"{type(exc).__name__}: {first_line(exc)}"
        raise OutputCheckUnavailable(f"{what} cannot run the converted model ({reason})") from None


def _prefetch_key(path: Path) -> tuple:
    return ("prefetched FP32 run", *_file_version(path))


def _file_version(path: Path) -> tuple:
    """The file at ``path`` as it is now (its path, inode, size and modification time)."""
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns


def _same_array(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


# ----------------------------------------------------------------------- running ---
def numpy_runner(model: onnx.ModelProto | Path) -> onnx_numpy.NumpyRunner | None:
    """The numpy runner of ``model`` (a model file or a proto) when it suits the model
    (``onnx_numpy.suited``: a very large graph of cheap ops), made once per fit; None
    (onnxruntime runs it) otherwise."""
    if isinstance(model, Path):
        def make() -> onnx_numpy.NumpyRunner | None:
            table = (per_fit_memo(READ_NODES) or {}).get(_file_version(model))  # the same file as lowered
            structure = frontend.read_file(model)
            why = onnx_numpy.suited(structure, table)
            if why is not None:
                return None
            onnx.external_data_helper.load_external_data_for_model(structure, str(model.parent))
            return onnx_numpy.NumpyRunner(structure, table)
        return load_once_per_fit("numpy runners", model, make)
    memo = per_fit_memo("numpy runners")
    held = memo.get(id(model)) if memo is not None else None
    if held is not None and held[0] is model:
        return held[1]
    emitted = (per_fit_memo(EMITTED_NODES) or {}).get(id(model))
    table = emitted[1] if emitted is not None and emitted[0] is model else None
    why = onnx_numpy.suited(model, table)
    runner = onnx_numpy.NumpyRunner(model, table) if why is None else None
    if why is None:
        logger.info("the output check runs the %d-node model with onnx.reference's numpy kernels (%d kinds of node)",
                    len(runner), runner.kernels)
    if memo is not None:
        memo[id(model)] = (model, runner)  # the model held: its id is not reused within the fit
    return runner


def run_onnxruntime(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                    provider: str = "CPUExecutionProvider", exact: bool = False,
                    folder: Path | None = None) -> list[np.ndarray]:
    """Run ``proto`` in onnxruntime and return every graph output. Raises
    ConversionError when onnxruntime cannot load the model (a missing kernel is
    NOT_IMPLEMENTED) or fails running it. ``folder`` is the directory the locations of
    its external data are relative to (a model loaded with ``load_external_data=False``);
    data it defers (``backend.deferred_tensor``) and models too large for one message are
    streamed to a temporary file first (``_run_whole``).

    ``exact``, and every graph of more than ``onnx_segments.SEGMENT_NODES`` nodes, run
    with onnxruntime's graph optimizations off, so every node computes what it says (no
    fusion folds an emulation's rounding casts away); a large graph runs as consecutive
    segments of at most that many nodes (``onnx_segments``: onnxruntime's session
    creation is superlinear in the graph's size, 197 s at 100k nodes with optimizations,
    a few seconds in segments). Its progress bar counts the segments."""
    large = len(proto.graph.node) > onnx_segments.SEGMENT_NODES
    known = onnx_segments.typed_values(proto.graph) if large else {}
    segments = onnx_segments.plan(proto.graph, known=known) if large else None
    optimize = not (exact or large)
    if segments is None:
        return _run_whole(proto, feeds, provider, optimize, folder)
    STATS["segmented_runs"] += 1
    logger.info("running %d nodes in onnxruntime as %d segments", len(proto.graph.node), len(segments))
    with bars.stage("onnxruntime", total=len(segments), unit="segment") as bar:
        return onnx_segments.run_segments(proto, feeds, lambda p, f: _run_whole(p, f, provider, optimize, folder),
                                          segments, on_segment=lambda i, n: bar.update(1), known=known)


def run_onnxruntime_file(path: str | os.PathLike, feeds: Mapping[str, np.ndarray],
                         provider: str = "CPUExecutionProvider", exact: bool = False) -> list[np.ndarray]:
    """``run_onnxruntime`` of the model at ``path``, its weights never loaded into Python:
    a graph that fits one segment runs in a session onnxruntime makes from the path (it
    reads, or maps, the external data itself); a larger one is read without its external
    data (``load_external_data=False``) and its segments reference the data files."""
    path = Path(path)
    structure = frontend.read_file(path)
    if len(structure.graph.node) > onnx_segments.SEGMENT_NODES:
        return run_onnxruntime(structure, feeds, provider, exact, folder=path.parent)
    del structure
    return _run_whole(path, feeds, provider, not exact)


#: what the output check ran, for tests and benchmarks (never read by the conversion)
STATS = {"segmented_runs": 0, "sessions": 0, "reference_runs": 0}


def _run_whole(model: onnx.ModelProto | Path, feeds: Mapping[str, np.ndarray], provider: str,
               optimize: bool, folder: Path | None = None) -> list[np.ndarray]:
    """One onnxruntime session of ``model`` (a path, or a proto whose external data lies
    in ``folder``; optimizations on when ``optimize``), released before this returns. A
    proto with deferred data or large initializers, within IN_MEMORY_RUN_BYTES, hands
    them to onnxruntime as arrays (``backend.detach_initializers``); a larger one with
    deferred data, or one too large to serialize, is first written to a temporary
    directory with its tensors in external data (``backend.save``, streaming) that is
    removed afterwards, whether the run succeeds or not."""
    if isinstance(model, Path):
        return _run_session_of(str(model), feeds, provider, optimize, None)
    pending = backend.pending_bytes(model)
    if (pending or backend.largest_initializer(model) >= DETACH_MIN_BYTES) and pending <= IN_MEMORY_RUN_BYTES \
            and _size(model) <= IN_MEMORY_RUN_BYTES:
        shell, arrays = backend.detach_initializers(model, DETACH_MIN_BYTES)
        return _run_session_of(shell.SerializeToString(), feeds, provider, optimize, folder, arrays)
    if pending or (folder is None and _size(model) >= LARGE_MODEL_BYTES):
        with tempfile.TemporaryDirectory(prefix="mixprec-ort-") as tmp:
            path = backend.save(model, Path(tmp) / "model.onnx", external_data=True)
            return _run_session_of(str(path), feeds, provider, optimize, None)
    return _run_session_of(model.SerializeToString(), feeds, provider, optimize, folder)


def _run_session_of(source: str | bytes, feeds: Mapping[str, np.ndarray], provider: str, optimize: bool,
                    folder: Path | None, arrays: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Create a session of ``source`` (a path, or serialized bytes whose external data
    lies in ``folder``, and whose ``backend.IN_MEMORY_LOCATION`` initializers are
    ``arrays``), run it, and drop it before returning its outputs, so that no two checked
    models' weights are held by onnxruntime at once."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if arrays:  # onnxruntime copies them while it creates the session
        options.add_external_initializers(list(arrays), [_ort_value(a) for a in arrays.values()])
    options.log_severity_level = 4  # failures are raised, with onnxruntime's message
    # prepacked MatMul weights are a second copy of each; a check runs every session once
    options.add_session_config_entry("session.disable_prepacking", "1")
    # each node runs as soon as its consumer's turn comes (the default order runs every
    # Cast that widens an emulation's weight first, all widened weights alive at once)
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    STATS["sessions"] += 1
    try:
        session = ort.InferenceSession(source, options, providers=[provider])
    except Exception as exc:
        raise ConversionError(f"onnxruntime cannot load the model: {first_line(exc, 500)}") from None
    del source
    try:
        return _run_session(session, feeds)
    finally:
        del session  # the session's memory goes now (nothing else refers to it; no gc.collect, which
        #              walks the whole heap: 72 of them cost 130 s on a 100k-node graph)


def _ort_value(array: np.ndarray) -> Any:
    """An onnxruntime OrtValue sharing ``array``'s memory (bf16/fp8 arrays of ml_dtypes
    passed as their bits with the ONNX element type)."""
    import onnxruntime as ort

    if not array.flags.c_contiguous:
        array = np.array(array, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
    if array.dtype.type in _NUMPY_NATIVE:
        return ort.OrtValue.ortvalue_from_numpy(array)
    elem = helper.np_dtype_to_tensor_dtype(array.dtype)
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(f"u{array.dtype.itemsize}"), elem)


_NUMPY_NATIVE = frozenset({np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                           np.uint64, np.float16, np.float32, np.float64})

#: the longest one onnxruntime run of a check may take (a Loop with neither a trip count
#: nor a condition never ends); MIXPREC_RUN_TIMEOUT overrides it, in seconds
RUN_TIMEOUT_S = 300.0


def _run_session(session: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run``, stopped (RunOptions.terminate) after the run timeout: a
    ConversionError either way."""
    import threading

    import onnxruntime as ort

    limit = float(os.environ.get("MIXPREC_RUN_TIMEOUT") or RUN_TIMEOUT_S)
    run_options = ort.RunOptions()
    timer = threading.Timer(limit, lambda: setattr(run_options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        return list(session.run(None, dict(feeds), run_options))
    except Exception as exc:
        if run_options.terminate:
            raise ConversionError(f"onnxruntime did not finish running the model within {limit:.0f} s (set "
                                  "MIXPREC_RUN_TIMEOUT to allow more, or skip the check with --no-check)") from None
        raise ModelRunError(f"onnxruntime failed running the model: {first_line(exc, 500)}") from None
    finally:
        timer.cancel()
        timer.join()  # no thread left behind: a later background fork needs a single-threaded process


def run_reference(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``proto`` with onnx.reference.ReferenceEvaluator (slow, but runs bf16)."""
    from onnx.reference import ReferenceEvaluator

    STATS["reference_runs"] += 1
    return [np.asarray(out) for out in ReferenceEvaluator(proto).run(None, dict(feeds))]


#: a model whose deferred data (``backend.deferred_tensor``) and inline data each stay within
#: this many bytes runs from memory, its initializers of DETACH_MIN_BYTES or more handed to
#: onnxruntime as arrays (``backend.detach_initializers``); a larger one is streamed to a
#: temporary file first (writing, syncing and parsing 100 MB per tuning trial cost a
#: ResNet-50's error budget 15 s)
IN_MEMORY_RUN_BYTES = 512 * 2**20
DETACH_MIN_BYTES = 64 * 2**10
#: ``_size`` is exact below this many bytes of initializers (serializing them is cheap)
EXACT_SIZE_BELOW = 32 * 2**20


def _size(proto: onnx.ModelProto) -> int:
    """The model's serialized size in bytes: exact (``ByteSize``, which serializes the
    whole message) when its main-graph initializers hold under EXACT_SIZE_BELOW; otherwise
    estimated from its tensors' payload (initializers and tensor attributes) plus 512
    bytes a node, exact again only when that reaches half of LARGE_MODEL_BYTES
    (``ByteSize`` took 0.23 s on a 100 MB model, twice per tuning trial)."""
    if backend.initializer_bytes(proto) < EXACT_SIZE_BELOW:
        return _byte_size(proto)
    payload = nodes = 0
    for graph in _graphs(proto.graph):
        nodes += len(graph.node)
        payload += sum(_tensor_bytes(t) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    payload += _tensor_bytes(attr.t)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    payload += sum(_tensor_bytes(t) for t in attr.tensors)
    estimate = payload + 512 * nodes
    return estimate if estimate < LARGE_MODEL_BYTES // 2 else _byte_size(proto)


def _byte_size(proto: onnx.ModelProto) -> int:
    try:
        return proto.ByteSize()
    except Exception:  # pragma: no cover
        return LARGE_MODEL_BYTES


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes ``tensor`` holds inline (raw_data or typed fields; strings by length)."""
    return (len(tensor.raw_data) + 4 * (len(tensor.float_data) + len(tensor.int32_data))
            + 8 * (len(tensor.int64_data) + len(tensor.double_data) + len(tensor.uint64_data))
            + sum(len(v) for v in tensor.string_data))


# ---------------------------------------------------------------- sample inputs ---
#: ops whose first output has the shape of the input read at these positions (elementwise
#: ops broadcast, so a static output dim fixes an unknown input dim of the same rank)
_SAME_SHAPE_UNARY = frozenset({
    "Abs", "Acos", "Asin", "Atan", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos",
    "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax",
    "LpNormalization", "MeanVarianceNormalization", "Mish", "Neg", "Not", "PRelu", "Reciprocal", "Relu",
    "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Softmax", "Softplus", "Softsign", "Sqrt",
    "Tan", "Tanh", "ThresholdedRelu", "GroupNormalization"})
_SAME_SHAPE_BINARY = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "Sub", "Sum",
    "Where", "Xor"})
#: ops that pass integer values through unchanged on their way to an index consumer
_VALUE_PRESERVING = frozenset({"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand"})
#: (op, index input) -> data input whose dim along ``axis`` bounds the indices
_INDEX_CONSUMERS = {("Gather", 1): 0, ("GatherElements", 1): 0}
_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
#: how far the same-shape closure of a graph input is followed
_MAX_CLOSURE = 256


def input_specs(model: Model) -> list[InputSpec]:
    """One ``InputSpec`` per graph input of ``model`` (the ONNX names), its unknown dims
    resolved from what the model says about them (see ``_resolve_dims``) and ``high``
    set for integer inputs used as Gather/GatherElements indices (the table's rows).
    Raises SampleInputError for an input of a non-tensor or unknown type."""
    specs = []
    for value in model.graph.inputs:
        name = onnx_name(model, value)
        if value.dtype == DType.UNKNOWN:
            raise SampleInputError(f"input {name!r} has a non-tensor or unknown type, so no sample input can be "
                                   "made for it; give the inputs with --sample-inputs FILE.npz (sample_inputs=)")
        shape = None if value.shape is None else _resolve_dims(value)
        high = _index_bound(value) if not value.dtype.is_float and value.dtype != DType.BOOL else None
        specs.append(InputSpec(name, value.dtype, shape, high=high))
    return specs


def weight_bytes(model: Model) -> int:
    """Bytes of every constant in the model's graph tree (bounds the sample inputs)."""
    return sum(int(np.asarray(c.data).nbytes) for g in model.graph.all_graphs() for c in g.constants.values()
               if c.data is not None)


def candidate_feeds(model: Model, input_shapes: Mapping[str, Sequence[int]] | None = None,
                    seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Sample feeds to try for the output check, most likely first: the shapes of
    ``mixprec.sample_inputs.shape_ladder`` (the user's ``input_shapes`` first), filled by
    ``make_arrays``; integer inputs named like masks are all ones."""
    specs = input_specs(model)
    given = _checked_shapes(specs, input_shapes or {})
    for shapes in shape_ladder(specs, given, input_bytes_limit(weight_bytes(model))):
        feeds = make_arrays(specs, shapes, seed=seed)
        for spec in specs:
            if _MASK_NAME.search(spec.name) and not spec.dtype.is_float:
                feeds[spec.name] = np.ones_like(feeds[spec.name])
        yield feeds


def check_feeds(model: Model, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The user's sample inputs (a dict by input name, or arrays in input order), checked
    against the model's inputs (names, rank, fixed dims: ``check_sample_inputs``, a
    ConfigError naming the model's inputs); values of another dtype of the same kind
    (float64 for float32) are converted."""
    specs = {s.name: s for s in input_specs(model)}
    check_sample_inputs(feeds, [(spec.name, spec.shape) for spec in specs.values()])
    if not isinstance(feeds, Mapping):  # arrays in the order of the model's inputs
        feeds = dict(zip(specs, feeds if isinstance(feeds, (list, tuple)) else [feeds]))
    return {name: _as_input_dtype(specs[name], feeds[name]) for name in specs}


def _as_input_dtype(spec: InputSpec, value: Any) -> np.ndarray:
    array = np.asarray(value)
    wanted = np.dtype(spec.dtype.to_numpy())
    if array.dtype != wanted:
        same_kind = (spec.dtype.is_float and array.dtype.kind == "f") or \
                    (array.dtype.kind in "iu" and wanted.kind in "iu") or (array.dtype.kind == wanted.kind)
        if not same_kind:
            raise ConfigError(f"sample input {spec.name!r} is {array.dtype}, but the model's input is "
                              f"{spec.dtype.value}")
        array = array.astype(wanted)
    return array


def _checked_shapes(specs: Sequence[InputSpec], given: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ConfigError(f"input_shapes names {unknown}, which are not inputs of the model; its inputs "
                          f"are {sorted(by_name)}")
    out = {name: tuple(int(d) for d in dims) for name, dims in given.items()}
    for name, dims in out.items():
        _check_dims(by_name[name], dims, "the given shape of")
    return out


def _check_dims(spec: InputSpec, dims: tuple[int, ...], what: str) -> None:
    if spec.shape is None:
        return
    fixed = [d if isinstance(d, int) else None for d in spec.shape]
    if len(dims) != len(fixed) or any(f is not None and f != d for f, d in zip(fixed, dims)):
        declared = ",".join("?" if f is None else str(f) for f in fixed)
        raise ConfigError(f"{what} {spec.name!r} is {list(dims)}, but the model declares [{declared}]")


def _resolve_dims(value: Value) -> tuple[Dim, ...]:
    """The input's dims, each unknown one (None, ``-1``, or a name) fixed where the model
    says what it must be: a static dim of a value of the same shape downstream
    (elementwise ops, as ONNX shape inference broadcasts constants into them), the
    channels a Conv weight reads, the rows a MatMul/Gemm weight reads, or the one dim a
    Reshape to a static shape leaves open. Symbolic names stay names otherwise."""
    dims: list[Dim] = [None if isinstance(d, int) and d < 0 else d for d in value.shape]
    for current in _same_shape_closure(value, len(dims)):
        if current is not value and current.shape is not None:
            for axis, dim in enumerate(current.shape):
                if not _fixed(dims[axis]) and _fixed(dim):
                    dims[axis] = dim
        for node, index in current.uses():
            for axis, dim in _dims_from_consumer(node, index, dims).items():
                if not _fixed(dims[axis]):
                    dims[axis] = dim
    return tuple(dims)


def _fixed(dim: Dim) -> bool:
    return isinstance(dim, int) and dim >= 0


def _same_shape_closure(value: Value, rank: int) -> list[Value]:
    """``value`` and the values computed from it by elementwise ops that keep its rank."""
    seen, order, todo = {id(value)}, [value], [value]
    while todo and len(order) < _MAX_CLOSURE:
        current = todo.pop()
        for node, index in current.uses():
            if node.domain or not node.outputs:
                continue
            if node.op in _SAME_SHAPE_UNARY and index == 0 or node.op in _SAME_SHAPE_BINARY:
                out = node.outputs[0]
                if out.shape is not None and len(out.shape) == rank and id(out) not in seen:
                    seen.add(id(out))
                    order.append(out)
                    todo.append(out)
    return order


def _dims_from_consumer(node: Node, index: int, dims: list[Dim]) -> dict[int, int]:
    """Dims of the input a consumer fixes (axis -> size); see ``_resolve_dims``."""
    if node.domain:
        return {}
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    wshape = weight.shape if weight is not None and weight.shape is not None else None
    rank = len(dims)
    if index != 0 or wshape is None or not all(_fixed(d) for d in wshape):
        return {}
    if node.op == "Conv" and rank >= 3 and len(wshape) == rank:
        return {1: int(wshape[1]) * int(node.attrs.get("group", 1))}
    if node.op == "ConvTranspose" and rank >= 3 and len(wshape) == rank:
        return {1: int(wshape[0])}
    if node.op == "MatMul" and rank >= 2 and len(wshape) >= 2:
        return {rank - 1: int(wshape[-2])}
    if node.op == "Gemm" and rank == 2 and len(wshape) == 2:
        k = wshape[1] if node.attrs.get("transB", 0) else wshape[0]
        return {0 if node.attrs.get("transA", 0) else 1: int(k)}
    if node.op == "Reshape" and weight is not None and weight.is_constant and weight.data is not None:
        return _reshape_dims(dims, np.asarray(weight.data).reshape(-1), bool(node.attrs.get("allowzero", 0)))
    return {}


def _reshape_dims(dims: list[Dim], target: np.ndarray, allowzero: bool) -> dict[int, int]:
    """A Reshape to a fully static target fixes the product of the input's dims: one
    unknown dim is solved (two when one of them is the batch, taken as 1)."""
    if target.size == 0 or np.any(target < 0) or (np.any(target == 0) and not allowzero):
        return {}
    total = int(np.prod(target, dtype=np.int64))
    unknown = [axis for axis, d in enumerate(dims) if not _fixed(d)]
    out = {}
    if len(unknown) == 2 and unknown[0] == 0:
        out[0] = 1
        unknown = unknown[1:]
    if len(unknown) != 1:
        return {}
    known = int(np.prod([d for d in dims if _fixed(d)] or [1], dtype=np.int64)) * out.get(0, 1)
    if known == 0 or total % known:
        return {}
    out[unknown[0]] = total // known
    return out


def _index_bound(value: Value) -> int | None:
    """The rows of the smallest table ``value`` indexes (through Cast/Reshape/...), or
    None when it indexes none."""
    bounds: list[int] = []
    seen = {id(value)}
    todo = [value]
    while todo:
        current = todo.pop()
        for node, index in current.uses():
            data_at = _INDEX_CONSUMERS.get((node.op, index)) if not node.domain else None
            if data_at is not None:
                data = node.inputs[data_at]
                axis = int(node.attrs.get("axis", 0))
                if data is not None and data.shape is not None and -len(data.shape) <= axis < len(data.shape) \
                        and _fixed(data.shape[axis]):
                    bounds.append(int(data.shape[axis]))
            elif node.op in _VALUE_PRESERVING and index == 0 and not node.domain and node.outputs:
                out = node.outputs[0]
                if id(out) not in seen:
                    seen.add(id(out))
                    todo.append(out)
    return min(bounds) if bounds else None


# ------------------------------------------------------------- bf16 emulation ---
_LOW_ELEMS = {onnx.TensorProto.BFLOAT16: DType.BFLOAT16, onnx.TensorProto.FLOAT16: DType.FLOAT16}


def low_precision_dtypes(proto: onnx.ModelProto) -> set[DType]:
    """The low-precision float types (bf16, f16) any tensor, value or cast of ``proto``
    uses (its graph tree included)."""
    found: set[int] = set()
    for graph in _graphs(proto.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                found.add(vi.type.tensor_type.elem_type)
        found.update(t.data_type for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    found.add(attr.t.data_type)
                elif attr.name in _DTYPE_ATTRS and attr.type == onnx.AttributeProto.INT:
                    found.add(attr.i)
    return {_LOW_ELEMS[e] for e in found if e in _LOW_ELEMS}


def run_emulated(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 lows: Iterable[DType] | None = None, folder: Path | None = None) -> list[np.ndarray]:
    """Run ``proto`` in onnxruntime on its exact float32 emulation (``emulate_in_float``
    for each low-precision type it uses, its low-precision weights kept as they are and
    widened by a Cast where they are read, so no weight is converted in Python); feeds of
    a low-precision graph input are given as float32 (they are exact). ``folder`` as in
    ``run_onnxruntime``; deferred weights are streamed to a temporary file, removed after
    the run. Raises ConversionError like ``run_onnxruntime``."""
    lows = sorted(low_precision_dtypes(proto) if lows is None else set(lows), key=lambda d: d.value)
    model = proto
    for low in lows:
        model = emulate_in_float(model, low, cast_initializers=True)
    low_inputs = {vi.name for vi in proto.graph.input if vi.type.tensor_type.elem_type in
                  {dtype_to_onnx(d) for d in lows}}
    fed = {k: (np.asarray(v).astype(np.float32) if k in low_inputs else v) for k, v in feeds.items()}
    if folder is None and (backend.pending_bytes(model) > IN_MEMORY_RUN_BYTES or _size(model) >= LARGE_MODEL_BYTES):
        with tempfile.TemporaryDirectory(prefix="mixprec-emulation-") as tmp:
            path = backend.save(model, Path(tmp) / "emulated.onnx", external_data=True)
            del model
            return run_onnxruntime_file(path, fed, "CPUExecutionProvider", True)  # exact: optimizations off
    return run_onnxruntime(model, fed, "CPUExecutionProvider", True, folder)


#: INT attributes that name an output element type (Cast's ``to``, EyeLike's ``dtype``, ...)
_DTYPE_ATTRS = ("to", "dtype")


def emulate_in_float(proto: onnx.ModelProto, low: DType = DType.BFLOAT16,
                     cast_initializers: bool = False) -> onnx.ModelProto:
    """A float32 copy of ``proto`` that onnxruntime's CPU provider can run, computing
    exactly the values of the low-precision model (as a CPU kernel that accumulates in
    float32 and rounds its result once does):

    - every initializer, tensor attribute and declared value of type ``low`` becomes
      float32 (exact: float32 holds every bf16/f16 value); with ``cast_initializers``, an
      initializer of type ``low`` (that is no graph input) keeps its data, type and
      storage (external or deferred data stays unread) under the name
      ``<name>__stored``, and a ``Cast(to=float)`` before the first node that reads it
      (or at the end of the graph) makes ``<name>``, the same float32 values;
    - casts to ``low`` (and ``dtype`` attributes naming it) become float32, and every
      node output of type ``low`` is rounded to ``low`` and back
      (``Cast(to=low) -> Cast(to=float)``) where it is produced, so every value any
      consumer reads is the low-precision value;
    - the arithmetic inside each op runs in float32, rounded once at its output.

    It differs from ``onnx.reference.ReferenceEvaluator`` only where the evaluator's
    numpy kernels round inside an op (see tests/test_onnx_check.py): both round every
    value where it is produced."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    low_elem, f32 = dtype_to_onnx(low), onnx.TensorProto.FLOAT
    types: dict[str, int] = {}
    for graph in _graphs(model.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
    # lazily: a graph's subgraphs are found in the nodes it holds after its emulation (the
    # node list is rebuilt, and the old nodes' subgraphs are no longer the model's)
    for graph in _graphs(model.graph):
        _emulate_graph(graph, types, low_elem, f32, cast_initializers)
    return model


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


#: standard ops whose float outputs are copies of float input elements (data movement,
#: selection, max/min, sign): when every float input holds low-precision values, so does
#: every output, and rounding it again would change nothing
_EXACT_OPS = frozenset({
    "Abs", "Concat", "DepthToSpace", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Identity",
    "Max", "MaxPool", "Min", "Neg", "ReduceMax", "ReduceMin", "Relu", "Reshape", "Slice", "SpaceToDepth", "Split",
    "Squeeze", "Tile", "Transpose", "Unsqueeze", "Where"})
_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                     onnx.TensorProto.BFLOAT16})


def _emulate_graph(graph: onnx.GraphProto, types: dict[str, int], low: int, f32: int,
                   cast_initializers: bool = False) -> None:
    inputs = {vi.name for vi in graph.input}
    widened: dict[str, onnx.NodeProto] = {}
    for i, init in enumerate(graph.initializer):
        if init.data_type != low:
            continue
        if cast_initializers and init.name not in inputs:
            widened[init.name] = helper.make_node("Cast", [f"{init.name}__stored"], [init.name], to=f32)
            graph.value_info.append(helper.make_tensor_value_info(init.name, f32, list(init.dims)))
            init.name = f"{init.name}__stored"
        else:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(  # a graph input's default: fed values win
                backend.initializer_array(init).astype(np.float32), init.name))
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == low:
            vi.type.tensor_type.elem_type = f32
    to_f32, to_low = helper.make_attribute("to", f32), helper.make_attribute("to", low)
    nodes = []
    for node in graph.node:
        if widened:  # the widening Cast of a stored low-precision weight goes before its first reader
            nodes.extend(widened.pop(name) for name in onnx_segments.node_reads(node) if name in widened)
        if _casts_f32_to(node, types, low):  # Cast(to=low) rounds already: one cast back to float32
            name = node.output[0]
            node.output[0] = f"{name}__rounded"
            nodes += [node, _cast(node.output[0], name, to_f32)]
            continue
        for attr in node.attribute:
            if attr.name in _DTYPE_ATTRS and attr.type == onnx.AttributeProto.INT and attr.i == low:
                attr.i = f32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == low:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        nodes.append(node)
        if _keeps_low_values(node, types, low):
            continue
        for k, name in enumerate(node.output):
            if name and types.get(name) == low:
                raw = f"{name}__computed"
                node.output[k] = raw
                nodes.append(_cast(raw, f"{name}__rounded", to_low))
                nodes.append(_cast(f"{name}__rounded", name, to_f32))
    nodes.extend(widened.values())  # read by no node (a graph output)
    del graph.node[:]
    graph.node.extend(nodes)


def _cast(source: str, target: str, to: onnx.AttributeProto) -> onnx.NodeProto:
    """A standard Cast node (helper.make_node's checks cost 2x, 250k times on a 100k-node graph)."""
    return onnx.NodeProto(op_type="Cast", input=[source], output=[target], attribute=[to])


def _casts_f32_to(node: onnx.NodeProto, types: Mapping[str, int], low: int) -> bool:
    """A standard Cast of a float32 value to ``low`` (it rounds exactly as the model does)."""
    return (node.op_type == "Cast" and node.domain in ("", "ai.onnx") and len(node.input) == 1
            and types.get(node.input[0]) == onnx.TensorProto.FLOAT and types.get(node.output[0]) == low
            and any(a.name == "to" and a.i == low for a in node.attribute))


def _keeps_low_values(node: onnx.NodeProto, types: Mapping[str, int], low: int) -> bool:
    """An ``_EXACT_OPS`` node every float input of which is of type ``low`` (all input
    types known): its low-precision outputs need no rounding."""
    if node.op_type not in _EXACT_OPS or node.domain not in ("", "ai.onnx"):
        return False
    inputs = [name for name in node.input if name]
    return all(name in types for name in inputs) and \
        all(types[name] == low for name in inputs if types[name] in _FLOATS)


def _external_files(path: Path) -> list[Path]:
    """The external data files an ONNX file names (read without loading the data; the
    file's own inline data read in place is not another file). The answer is kept per
    file version (path, inode, size, modification time): the output checks before and
    after a conversion ask twice (0.2-0.45 s each on a 100k-node file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return []
    locations = _external_locations(os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return sorted({path.parent / location for location in locations})


@functools.lru_cache(maxsize=8)
def _external_locations(path_text: str, inode: int, size: int, mtime_ns: int) -> tuple[str, ...]:
    path = Path(path_text)
    if size < onnx_wire.MIN_FILE_BYTES and not _names_a_location(path):
        return ()  # no tensor keeps its data elsewhere: nothing to parse
    try:
        proto = frontend.read_file(path)
    except Exception:  # not readable: the loader says why; nothing else is read
        return ()
    found: set[str] = set()
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and location != path.name:
                found.add(location)
    return tuple(sorted(found))


def _names_a_location(path: Path) -> bool:
    """Whether the file's bytes hold the key ``location``, which every external-data
    entry carries (a file without it has no external data; one with it, say in a node's
    name, is parsed). Unreadable: True, the parse says why."""
    try:
        return b"location" in path.read_bytes()
    except OSError:
        return True


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)
