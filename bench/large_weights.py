"""Models larger than memory: convert an MLP whose FP32 weights live in external data
with the CLI, as a user runs it, and record wall time and peak RSS of that process.

    python bench/large_weights.py                      # the 2.68 GB model, with and without the check
    python bench/large_weights.py --huge               # also a 30 GB model, --no-check only
    python bench/large_weights.py --check-only         # only the 2.68 GB model with the output check
    python bench/large_weights.py --width 1024 --layers 4   # a small smoke run
    python bench/large_weights.py --inline --layers 4   # 1.07 GB with the weights inside the .onnx

The weights are generated and written one tensor at a time (never all in memory). Each
conversion runs ``python -m mixprec.cli convert`` in a subprocess; its peak RSS is
``ru_maxrss`` of that child (os.wait4). The result is verified: an FP16 output is loaded
and run in onnxruntime on a batch of 1; a BF16 output (onnxruntime's CPU provider has no
BF16 MatMul) is validated with ``onnx.checker.check_model`` on its path. Files go to a
temporary directory (``--dir``) that is removed afterwards; the huge model first checks
that the disk has room for it and its output."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent


def write_mlp(path: Path, width: int, layers: int, seed: int = 0) -> int:
    """An MLP x[1,width] -> (MatMul W_i -> Relu) x layers with its weights in
    ``path.data``, written tensor by tensor; returns the weight bytes."""
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    nodes, inits = [], []
    offset = 0
    rows_per_chunk = max(1, (64 * 2**20) // (width * 4))
    with open(path.parent / data_name, "wb") as out:
        for i in range(layers):
            start = offset
            for row in range(0, width, rows_per_chunk):
                rows = min(rows_per_chunk, width - row)
                chunk = (rng.random((rows, width), dtype=np.float32) - 0.5) * (3.4 / np.sqrt(width))
                out.write(chunk.tobytes())
            offset = out.tell()
            tensor = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(start)), ("length", str(offset - start))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)
            src = "x" if i == 0 else f"h{i - 1}"
            nodes.append(helper.make_node("MatMul", [src, f"W{i}"], [f"m{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}" if i < layers - 1 else "y"], name=f"relu{i}"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return offset


def write_inline_mlp(path: Path, width: int, layers: int, seed: int = 0) -> int:
    """The same MLP with its weights inline (raw_data) in one .onnx file; built in memory,
    so ``run_case`` calls it in a spawned child (the bench itself never holds a model)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    for i in range(layers):
        weight = (rng.random((width, width), dtype=np.float32) - 0.5) * (3.4 / np.sqrt(width))
        inits.append(helper.make_tensor(f"W{i}", TensorProto.FLOAT, [width, width], weight.tobytes(), raw=True))
        del weight
        src = "x" if i == 0 else f"h{i - 1}"
        nodes.append(helper.make_node("MatMul", [src, f"W{i}"], [f"m{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}" if i < layers - 1 else "y"], name=f"relu{i}"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return width * width * 4 * layers


def convert(model: Path, output: Path, *extra: str) -> tuple[float, float, int]:
    """(wall seconds, peak RSS GiB, exit status) of the CLI converting ``model``."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "mixprec.cli", "convert", str(model), "-o", str(output), *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode:
        print(out.decode(errors="replace")[-3000:], file=sys.stderr)
    else:
        tail = [line for line in out.decode(errors="replace").splitlines() if "skipped" in line or "check" in line]
        for line in tail[-3:]:
            print(f"    | {line[:200]}")
    return wall, usage.ru_maxrss / 2**20, proc.returncode


def verify(output: Path, precision: str, width: int) -> str:
    """Run an FP16 result in onnxruntime on a batch of 1; check a BF16 one with onnx.checker.
    In a child process: a child's ``ru_maxrss`` includes what its parent held when it was
    spawned, so the bench itself must never hold a model (an FP16 run here made every later
    conversion report the session's 2.8 GiB)."""
    code = f"""
import sys, numpy as np
if {precision!r} == "fp16":
    import onnxruntime as ort
    session = ort.InferenceSession({str(output)!r}, providers=["CPUExecutionProvider"])
    y = session.run(None, {{"x": np.ones((1, {width}), np.float32)}})[0]
    print(f"ran in onnxruntime, output {{y.shape}} finite={{bool(np.isfinite(y).all())}}")
else:
    import onnx
    onnx.checker.check_model({str(output)!r}, full_check=True)
    print("onnx.checker (full_check) on the path passed")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else f"FAILED: {done.stderr.strip()[-300:]}"


def run_case(workdir: Path, width: int, layers: int, runs: list[tuple[str, list[str]]], inline: bool = False) -> None:
    model = workdir / f"mlp_{width}x{layers}.onnx"
    started = time.perf_counter()
    if inline:
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=write_inline_mlp, args=(model, width, layers))
        child.start()
        child.join()
        weights = width * width * 4 * layers
    else:
        weights = write_mlp(model, width, layers)
    where = "inline in the .onnx file" if inline else "in external data"
    print(f"model: {layers} x MatMul[{width}x{width}], {weights / 1e9:.2f} GB FP32 {where} "
          f"(written in {time.perf_counter() - started:.1f} s)")
    for label, extra in runs:
        precision = "fp16" if "fp16" in extra else "bf16"
        output = workdir / f"out_{precision}.onnx"
        wall, rss, code = convert(model, output, *extra)
        result = verify(output, precision, width) if code == 0 else f"FAILED (exit {code})"
        data = output.with_name(output.name + ".data")
        size = data.stat().st_size / 1e9 if data.exists() else 0.0
        print(f"  {label:<28} {wall:7.1f} s  peak RSS {rss:6.2f} GiB  output data {size:.2f} GB  {result}")
        for path in (output, data):
            if path.exists():
                path.unlink()
    for path in (model, model.with_name(model.name + ".data")):
        path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8192, help="MatMul size (default 8192: 268 MB per layer)")
    parser.add_argument("--layers", type=int, default=10, help="layers (default 10: 2.68 GB)")
    parser.add_argument("--huge", action="store_true", help="also convert a 30 GB model (--no-check; ~45 GB disk)")
    parser.add_argument("--no-check-only", action="store_true", help="skip the run with the output check")
    parser.add_argument("--check-only", action="store_true", help="only the run with the output check")
    parser.add_argument("--inline", action="store_true", help="weights inline in the .onnx file (< 2 GB: --layers 4)")
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mixprec-large-", dir=args.dir))
    try:
        runs = [] if args.check_only else [("bf16 --no-check", ["--no-check"]),
                                           ("fp16 --no-check", ["--no-check", "--precision", "fp16"])]
        if not args.no_check_only:
            runs.append(("bf16 with the check", []))
        run_case(workdir, args.width, args.layers, runs, inline=args.inline)
        if args.huge:
            width, layers = 16384, 28  # 28 x 1.07 GB = 30.1 GB
            need = width * width * 4 * layers * 1.6
            free = shutil.disk_usage(workdir).free
            if free < need:
                print(f"huge model skipped: it needs {need / 1e9:.0f} GB of disk, {free / 1e9:.0f} GB free")
            else:
                run_case(workdir, width, layers, [("bf16 --no-check", ["--no-check"])])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
