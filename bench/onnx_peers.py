"""ONNX FP16 conversion: mixprec vs onnxconverter-common (issue "ONNX end to end").

For each test model (tests/onnx_models.py, plus ``if_loop`` from
tests/test_onnx_end_to_end.py) this converts the FP32 model with
``onnxconverter_common.float16.convert_float_to_float16(model, keep_io_types=True)`` and
with mixprec (``MixedPrecisionConfig(precisions="fp16", check_outputs=False)``) and
records, per tool: Cast nodes (subgraphs and model-local functions included), whether the
output loads and runs in onnxruntime's CPU provider (each session in a subprocess, so a
segfault reads "crash"), max abs error and cosine against the FP32 model, and the convert
time (best of 3, same process). For mixprec's BF16 mode it records the cast count, whether
``onnx.checker`` full_check passes, what onnxruntime CPU says (it has no BF16 kernels for
most ops) and the cosine under ``onnx.reference.ReferenceEvaluator``. Last, a generated
~100k-node transformer-like ONNX graph (hidden 16) is converted to FP16 by both tools and
the times and their ratio are printed. Output is Markdown. Run from the repo root:

    PYTHONPATH=. .venv/bin/python bench/onnx_peers.py [--nodes 100000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODEL_NAMES = ["torch_cnn", "torch_transformer", "torch_shape_resize", "tf_cnn", "control_flow", "if_loop",
               "transpose_matmul"]
SUBPROCESS_TIMEOUT_S = 120


# --------------------------------------------------------------------- small helpers ---
_ORT_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : |Load model from \S+ failed:")


def first_line(error: BaseException | str, limit: int = 180) -> str:
    """The first non-empty line of an error (type name prefixed for exceptions), without
    onnxruntime's "[ONNXRuntimeError] : N :" and "Load model from <tmp path> failed:"
    noise, cut to ``limit`` characters and safe inside a Markdown table cell."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = _ORT_NOISE.sub("", lines[0] if lines else "").strip()
    if isinstance(error, BaseException):
        line = f"{type(error).__name__}: {line}"
    line = line.replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def count_casts(model: Any) -> int:
    """Cast nodes in ``model`` (onnx.ModelProto): main graph, every nested subgraph
    (If/Loop/Scan bodies, GRAPHS attributes) and model-local function bodies."""
    import onnx

    count = 0
    stack: list[Any] = [model.graph]
    node_lists: list[Any] = [f.node for f in model.functions]
    while stack:
        node_lists.append(stack.pop().node)
        while node_lists:
            for node in node_lists.pop():
                count += node.op_type == "Cast" and node.domain in ("", "ai.onnx")
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        stack.append(attr.g)
                    stack.extend(attr.graphs)
    return count


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Call ``fn`` ``repeat`` times; (fastest wall time in seconds, last result). An
    exception is returned as the result (and its time counted) instead of raised."""
    best = float("inf")
    result: Any = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a peer's failure is a result here
            result = exc
        best = min(best, time.perf_counter() - start)
    return best, result


def transpose_matmul() -> Any:
    """Extra model (not from tests/): ``Transpose(perm=[1,0,2])`` feeding ``MatMul``, the
    pattern whose FP16 form onnxruntime 1.32's CPU optimizer turns into a segfault."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((8, 8)) / 3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[1, 0, 2]),
         helper.make_node("MatMul", ["t", "w"], ["y"], name="matmul")],
        "transpose_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def load_model(name: str) -> tuple[Any, dict[str, np.ndarray]]:
    """A fresh FP32 model and its deterministic feeds (as the end-to-end tests use)."""
    if name == "transpose_matmul":
        return transpose_matmul(), {"x": np.random.default_rng(1).standard_normal((4, 2, 8)).astype(np.float32)}
    if name == "if_loop":
        from tests.test_onnx_end_to_end import if_loop_model

        rng = np.random.default_rng(1)
        feeds = {"x": rng.standard_normal((2, 8)).astype(np.float32), "c": np.array(True),
                 "trip": np.array(3, np.int64)}
        return if_loop_model(), feeds
    from tests import onnx_models

    proto = getattr(onnx_models, name)()
    return proto, onnx_models.feeds(name, proto)


def copy_model(proto: Any) -> Any:
    """A deep copy of an onnx.ModelProto (so that no tool sees another tool's edits)."""
    import onnx

    return onnx.load_from_string(proto.SerializeToString())


# ---------------------------------------------------------------------- conversions ---
def convert_occ(proto: Any, check_fp16_ready: bool = True) -> Any:
    """onnxconverter-common's FP16 conversion, as its README shows it."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(proto, keep_io_types=True, check_fp16_ready=check_fp16_ready)


def convert_mixprec(proto: Any, precision: str) -> Any:
    """mixprec's conversion (``fit``) without the output check; returns the ModelProto."""
    from mixprec import MixedPrecisionConfig, mix_precision

    return mix_precision.fit(proto, config=MixedPrecisionConfig(precisions=precision, check_outputs=False)).model


def timed_convert(convert: Callable[[Any], Any], proto: Any, repeat: int) -> tuple[float, Any]:
    """Best-of-``repeat`` time of ``convert`` on fresh copies of ``proto`` (copying is
    not timed); the last result, or the exception it raised."""
    best = float("inf")
    result: Any = None
    for _ in range(repeat):
        fresh = copy_model(proto)
        seconds, result = best_of(lambda: convert(fresh), 1)
        best = min(best, seconds)
    return best, result


# ----------------------------------------------------- onnxruntime, in a subprocess ---
@dataclass
class RunOutcome:
    """What onnxruntime's CPU provider did with a model: ``status`` is "ok", "error"
    (an exception; ``error`` holds its first line), "crash" (the process died on a
    signal) or "timeout"."""

    status: str
    error: str = ""
    outputs: list[np.ndarray] = field(default_factory=list)

    def cell(self) -> str:
        """A Markdown table cell."""
        if self.status == "ok":
            return "yes"
        return f"**{self.status}**: {self.error}" if self.error else f"**{self.status}**"


def worker(model_path: str, feeds_path: str, out_path: str) -> int:
    """Subprocess body: create an InferenceSession (CPU provider) and run it once; write
    the outputs (``o0``, ``o1``, ...) to ``out_path`` or the error's first line to
    ``out_path + '.err'``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    with np.load(feeds_path, allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    try:
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        with open(out_path + ".err", "w", encoding="utf-8") as fh:
            fh.write(first_line(exc))
        return 2
    np.savez(out_path, **{f"o{i}": np.asarray(o) for i, o in enumerate(outputs)})
    return 0


def run_in_subprocess(model: Any, feeds: dict[str, np.ndarray]) -> RunOutcome:
    """Load and run ``model`` in onnxruntime (CPU) in a fresh Python process."""
    with tempfile.TemporaryDirectory(prefix="onnx_peers_") as tmp:
        model_path = os.path.join(tmp, "model.onnx")
        feeds_path = os.path.join(tmp, "feeds.npz")
        out_path = os.path.join(tmp, "out.npz")
        with open(model_path, "wb") as fh:
            fh.write(model.SerializeToString())
        np.savez(feeds_path, **feeds)
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", model_path, feeds_path,
                                   out_path], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return RunOutcome("timeout", f"no answer in {SUBPROCESS_TIMEOUT_S} s")
        if proc.returncode == 0 and os.path.exists(out_path):
            with np.load(out_path, allow_pickle=False) as data:
                return RunOutcome("ok", outputs=[data[f"o{i}"] for i in range(len(data.files))])
        if os.path.exists(out_path + ".err"):
            with open(out_path + ".err", encoding="utf-8") as fh:
                return RunOutcome("error", fh.read())
        if proc.returncode < 0:
            return RunOutcome("crash", f"signal {-proc.returncode}")
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return RunOutcome("crash", f"exit {proc.returncode}" + (f": {first_line(tail[-1])}" if tail else ""))


def compare(reference: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[float, float]:
    """(max abs error, min cosine) over the floating-point outputs; cosine is computed
    on the flattened output in float64 (nan when either side is not finite)."""
    worst_err, worst_cos = 0.0, 1.0
    for ref, out in zip(reference, outputs):
        if ref.dtype.kind != "f":
            continue
        if ref.shape != out.shape:
            return float("inf"), float("nan")
        a = ref.astype(np.float64).ravel()
        b = out.astype(np.float64).ravel()
        finite = np.isfinite(a) & np.isfinite(b)
        same_nonfinite = np.array_equal(a[~finite], b[~finite], equal_nan=True)
        if not same_nonfinite:
            return float("inf"), float("nan")
        a, b = a[finite], b[finite]
        worst_err = max(worst_err, float(np.max(np.abs(a - b))) if a.size else 0.0)
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        cos = float(a @ b / norm) if norm else (1.0 if np.array_equal(a, b) else 0.0)
        worst_cos = min(worst_cos, cos)
    return worst_err, worst_cos


def run_reference(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` with onnx.reference.ReferenceEvaluator (runs BF16)."""
    from onnx.reference import ReferenceEvaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, feeds)]


def full_check(model: Any) -> str:
    """"yes" when onnx.checker.check_model(full_check=True) passes, else the error."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        return f"**no**: {first_line(exc)}"
    return "yes"


# ------------------------------------------------------------------- the small models ---
@dataclass
class ToolResult:
    """One tool on one model."""

    seconds: float
    casts: int | None = None
    convert_error: str = ""
    convert_error_full: str = ""
    run: RunOutcome | None = None
    max_abs: float | None = None
    cosine: float | None = None


def evaluate(proto: Any, feeds: dict[str, np.ndarray], reference: RunOutcome, convert: Callable[[Any], Any],
             repeat: int) -> ToolResult:
    """Time ``convert`` and check its output in onnxruntime."""
    seconds, model = timed_convert(convert, proto, repeat)
    if isinstance(model, Exception):
        return ToolResult(seconds, convert_error=first_line(model), convert_error_full=str(model))
    result = ToolResult(seconds, casts=count_casts(model), run=run_in_subprocess(model, feeds))
    if result.run.status == "ok" and reference.status == "ok":
        result.max_abs, result.cosine = compare(reference.outputs, result.run.outputs)
    return result


def run_cell(result: ToolResult) -> str:
    """The "runs in ORT CPU" cell of one tool's result."""
    if result.convert_error or result.run is None:
        return f"**convert fails**: {result.convert_error}"
    return result.run.cell()


def fmt_num(value: float | None, spec: str) -> str:
    """Format a number for a table; "-" for None."""
    return "-" if value is None else format(value, spec)


def small_models(repeat: int) -> tuple[list[str], list[str], list[str], bool]:
    """Run the per-model comparison; returns (fp16 table, bf16 table, notes, whether
    mixprec's FP16 output ran in onnxruntime for every model)."""
    fp16_rows = ["| model | nodes | casts occ | casts mixprec | runs in ORT CPU: occ | runs in ORT CPU: mixprec "
                 "| max abs err occ | max abs err mixprec | cosine occ | cosine mixprec | convert s occ "
                 "| convert s mixprec |",
                 "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    bf16_rows = ["| model | casts mixprec bf16 | onnx full_check | ORT CPU | cosine (ReferenceEvaluator) "
                 "| convert s |", "|---|---:|---|---|---:|---:|"]
    notes: list[str] = []
    all_ran = True
    for name in MODEL_NAMES:
        proto, feeds = load_model(name)
        reference = run_in_subprocess(proto, feeds)
        if reference.status != "ok":
            notes.append(f"{name}: the FP32 model itself does not run in onnxruntime: {reference.error}")
        occ = evaluate(proto, feeds, reference, convert_occ, repeat)
        ours = evaluate(proto, feeds, reference, lambda p: convert_mixprec(p, "fp16"), repeat)
        if ours.run is None or ours.run.status != "ok":
            all_ran = False
            notes.append(f"{name}: mixprec FP16 did NOT run in onnxruntime: "
                         f"{ours.convert_error or (ours.run.cell() if ours.run else '')}")
        if occ.convert_error:
            retry_note = ""
            if "check_fp16_ready" in occ.convert_error_full:
                fresh = copy_model(proto)
                try:
                    forced = convert_occ(fresh, check_fp16_ready=False)
                    outcome = run_in_subprocess(forced, feeds)
                    retry_note = (f"; with check_fp16_ready=False it converts ({count_casts(forced)} casts) and "
                                  f"onnxruntime says: {outcome.cell()}")
                except Exception as exc:  # noqa: BLE001
                    retry_note = f"; with check_fp16_ready=False: {first_line(exc)}"
            notes.append(f"{name}: onnxconverter-common raises: {occ.convert_error}{retry_note}")
        elif occ.run is not None and occ.run.status != "ok":
            notes.append(f"{name}: onnxconverter-common output does not run in onnxruntime: {occ.run.cell()}")
        nodes = len(proto.graph.node)
        fp16_rows.append(
            f"| {name} | {nodes} | {fmt_num(occ.casts, 'd')} | {fmt_num(ours.casts, 'd')} | {run_cell(occ)} "
            f"| {run_cell(ours)} | {fmt_num(occ.max_abs, '.2e')} | {fmt_num(ours.max_abs, '.2e')} "
            f"| {fmt_num(occ.cosine, '.6f')} | {fmt_num(ours.cosine, '.6f')} | {occ.seconds:.4f} "
            f"| {ours.seconds:.4f} |")

        seconds, bf16 = timed_convert(lambda p: convert_mixprec(p, "bf16"), proto, repeat)
        if isinstance(bf16, Exception):
            bf16_rows.append(f"| {name} | - | **convert fails**: {first_line(bf16)} | - | - | {seconds:.4f} |")
            continue
        ort_cell = run_in_subprocess(bf16, feeds).cell()
        try:  # FP32 and BF16 under the same evaluator, so that its quirks cancel out
            fp32_ref = run_reference(proto, feeds)
        except Exception as exc:  # noqa: BLE001
            fp32_ref = None
            cos_cell = f"n/a: ReferenceEvaluator fails on the FP32 model too ({first_line(exc, 100)})"
        if fp32_ref is not None:
            try:
                cos_cell = fmt_num(compare(fp32_ref, run_reference(bf16, feeds))[1], ".6f")
            except Exception as exc:  # noqa: BLE001
                cos_cell = f"**error**: {first_line(exc, 100)}"
        bf16_rows.append(f"| {name} | {count_casts(bf16)} | {full_check(bf16)} | {ort_cell} | {cos_cell} "
                         f"| {seconds:.4f} |")
    return fp16_rows, bf16_rows, notes, all_ran


# ------------------------------------------------------------------ the big graph ---
def big_graph(num_nodes: int, hidden: int = 16, seq: int = 8, heads: int = 2) -> Any:
    """A transformer-like ONNX model (opset 17) of at least ``num_nodes`` nodes: stacked
    layers of attention (MatMul/Add/Reshape/Transpose/Softmax) and an MLP (MatMul/Add/
    Relu) with residual Adds and LayerNormalizations, 27 nodes per layer; every layer's
    weights are initializers of shape [hidden, hidden] / [hidden]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    head_dim = hidden // heads
    init = [numpy_helper.from_array(np.array([1, seq, heads, head_dim], np.int64), "heads_shape"),
            numpy_helper.from_array(np.array([1, seq, hidden], np.int64), "flat_shape")]
    nodes: list[Any] = []
    x = "x"
    layer = 0

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    while len(nodes) < num_nodes:
        p = f"l{layer}."
        for k in ("q", "k", "v", "o", "f1", "f2"):
            w = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
            init.append(numpy_helper.from_array(w, p + k))
        init.append(numpy_helper.from_array((rng.standard_normal(hidden) * 0.1).astype(np.float32), p + "bias"))
        init.append(numpy_helper.from_array(np.ones(hidden, np.float32), p + "ln_scale"))
        init.append(numpy_helper.from_array(np.zeros(hidden, np.float32), p + "ln_bias"))
        qkv = []
        for k in ("q", "k", "v"):
            t = node("MatMul", [x, p + k], p + k + "_mm")
            t = node("Add", [t, p + "bias"], p + k + "_b")
            t = node("Reshape", [t, "heads_shape"], p + k + "_r")
            qkv.append(node("Transpose", [t], p + k + "_t", perm=[0, 2, 1, 3]))
        s = node("MatMul", [qkv[0], node("Transpose", [qkv[1]], p + "k_tt", perm=[0, 1, 3, 2])], p + "scores")
        s = node("Add", [s, "mask"], p + "masked")
        s = node("Softmax", [s], p + "probs", axis=-1)
        a = node("MatMul", [s, qkv[2]], p + "ctx")
        a = node("Transpose", [a], p + "ctx_t", perm=[0, 2, 1, 3])
        a = node("Reshape", [a, "flat_shape"], p + "ctx_r")
        a = node("MatMul", [a, p + "o"], p + "attn_out")
        h = node("Add", [a, x], p + "res1")
        h = node("LayerNormalization", [h, p + "ln_scale", p + "ln_bias"], p + "ln1", axis=-1)
        f = node("MatMul", [h, p + "f1"], p + "ff1")
        f = node("Add", [f, p + "bias"], p + "ff1_b")
        f = node("Relu", [f], p + "act")
        f = node("MatMul", [f, p + "f2"], p + "ff2")
        f = node("Add", [f, h], p + "res2")
        x = node("LayerNormalization", [f, p + "ln_scale", p + "ln_bias"], p + "ln2", axis=-1)
        layer += 1
    graph = helper.make_graph(nodes, "transformer_like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden]),
                               helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, seq, seq])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, seq, hidden])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def big_graph_table(num_nodes: int, repeat: int) -> list[str]:
    """Convert the generated graph with both tools (FP16); one Markdown table."""
    import onnx

    start = time.perf_counter()
    proto = big_graph(num_nodes)
    build_s = time.perf_counter() - start
    occ_s, occ = timed_convert(convert_occ, proto, repeat)
    ours_s, ours = timed_convert(lambda p: convert_mixprec(p, "fp16"), proto, repeat)
    check_s = float("nan")
    if not isinstance(ours, Exception):
        check_s, _ = best_of(lambda: onnx.checker.check_model(ours, full_check=True), 1)

    def casts(m: Any) -> str:
        return f"**fails**: {first_line(m)}" if isinstance(m, Exception) else str(count_casts(m))

    ratio = ours_s / occ_s if occ_s > 0 else float("nan")
    return ["| nodes | initializers | build s | occ s | mixprec s | mixprec / occ | casts occ | casts mixprec "
            "| of mixprec's time: one full_check s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(proto.graph.node)} | {len(proto.graph.initializer)} | {build_s:.2f} | {occ_s:.2f} "
            f"| {ours_s:.2f} | {ratio:.2f}x | {casts(occ)} | {casts(ours)} | {check_s:.2f} |"]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run both parts, print Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000, help="size of the generated graph (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="conversions per tool and model (best is kept)")
    parser.add_argument("--big-repeat", type=int, default=1, help="conversions per tool of the generated graph")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "FEEDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    import onnx
    import onnxconverter_common
    import onnxruntime

    start = time.perf_counter()
    print(f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, onnxconverter-common "
          f"{onnxconverter_common.__version__}; occ = onnxconverter-common; convert times best of {args.repeat}\n")
    fp16, bf16, notes, all_ran = small_models(args.repeat)
    print("### FP16: onnxconverter-common vs mixprec\n")
    print("\n".join(fp16))
    print("\n### mixprec BF16 (onnxruntime's CPU provider has no BF16 kernels for these ops)\n")
    print("\n".join(bf16))
    print("\n### Notes\n")
    print("\n".join(f"- {n}" for n in notes) or "- none")
    print(f"- mixprec FP16 output loaded and ran in onnxruntime for every model: {'yes' if all_ran else 'NO'}")
    if args.nodes:
        print(f"\n### Generated transformer-like graph, FP16, best of {args.big_repeat}\n")
        print("\n".join(big_graph_table(args.nodes, args.big_repeat)))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 0 if all_ran else 1


if __name__ == "__main__":
    sys.exit(main())
