"""Whole-process ``mixprec convert`` time on transformer-like ONNX graphs (issue 12).

Generates transformer-like ONNX graphs of about 1k, 10k, 100k (and 1M) nodes with
``bench/onnx_peers.big_graph`` (27 nodes a layer, hidden 16, sequence 8: small weights,
so the graph and not the weights dominates), cached under ``--cache`` (default
``$TMPDIR/mixprec-scale``), and runs the whole CLI as a user does,
``python -m mixprec.cli convert IN -o OUT`` with the default output check, in a fresh
subprocess per size: wall time, peak RSS, the check's own time and the casts inserted
(from the summary it prints; no ``--report``, as a user runs it). With ``--repeat N``
(default 3) the sizes run round-robin N times (interleaved, so a slow spell of a shared
machine hits every size alike) and each row gives the median run, with the fastest and
slowest wall times beside it; graphs of ``--once-from`` nodes and more (default 500k) run
in the first round only. On the ``--peer-size``
file it also times onnxconverter-common's
``float16.convert_float_to_float16(keep_io_types=True)`` as a whole process too (load,
convert, save; onnxconverter-common has no BF16 converter) next to ``mixprec convert
--precision fp16``. Prints a Markdown table, then the rows as JSON.

``--profile N`` runs one convert of the N-node graph under cProfile and prints where the
time goes per stage (load, each pass, emit, onnx.checker, the output check, writing).

    PYTHONPATH=. .venv/bin/python bench/scale.py [--sizes 1000 10000 100000 1000000] [--peer-size 100000] [--repeat 3]
    PYTHONPATH=. .venv/bin/python bench/scale.py --profile 100000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

#: stage -> the functions (pstats "file:function" suffixes) whose cumulative time it is
STAGES = {
    "load (parse, shape inference, input checker, lowering)": ["runtimes/onnx.py:load"],
    "  of it onnx.checker on the input": ["frontends/onnx.py:_check_input"],
    "pass pipeline (all passes, verify included)": ["passes/manager.py:run"],
    "emit (IR -> ModelProto, opset legality)": ["backends/onnx.py:emit_legal"],
    "onnx.checker full_check on the output": ["backends/onnx.py:validate"],
    "output check (FP32 run + converted run)": ["mix_precision.py:_check_outputs"],
    "  of it the FP32 run": ["mix_precision.py:reference_run"],
    "  of it the converted model's run": ["runtimes/onnx.py:run_converted"],
    "  of it onnxruntime session creation": ["onnxruntime_inference_collection.py:_create_inference_session"],
    "  of it explicit gc.collect() calls": ["~:<built-in method gc.collect>"],
    "write (save the model)": ["mix_precision.py:save"],
    "report (statistics)": ["report.py:from_graph"],
}


def model_path(cache: Path, nodes: int) -> Path:
    """The cached generated model of about ``nodes`` nodes (made on first use, in a
    subprocess: a 1M-node proto built here would stay in this process, and every child's
    ``ru_maxrss`` counts the parent's memory it was forked from)."""
    path = cache / f"transformer_{nodes}.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        subprocess.run([sys.executable, "-c", GENERATE_SCRIPT, str(nodes), str(tmp), str(ROOT / "bench")],
                       check=True, env=_env())
        os.replace(tmp, path)
    return path


GENERATE_SCRIPT = """
import sys, onnx
sys.path.insert(0, sys.argv[3])
from onnx_peers import big_graph
onnx.save(big_graph(int(sys.argv[1])), sys.argv[2])
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def timed_process(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (in ``env``, default: this checkout's ``mixprec`` on ``PYTHONPATH``); wall
    seconds, the child's own peak RSS (MiB, from wait4), exit status ("timeout" when killed
    after ``timeout`` s) and its output."""
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env or _env())
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        killed = not timer.is_alive()
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"seconds": float("nan") if killed else wall, "rss_mib": usage.ru_maxrss / 1024,
                "rc": "timeout" if killed else proc.returncode, "stdout": out.read(), "stderr": err.read()}


def mixprec_convert(path: Path, out_dir: Path, *extra: str, timeout: float) -> dict[str, Any]:
    """The whole CLI process on ``path`` exactly as a user runs it (no ``--report``: its
    JSON of every node decision is extra work); the check time, cast count and check notes
    read from the summary it prints."""
    out = out_dir / f"{path.stem}{''.join(extra).replace('-', '_')}.onnx"
    run = timed_process([sys.executable, "-m", "mixprec.cli", "convert", str(path), "-o", str(out),
                         "--no-progress", *extra], timeout)
    if run["rc"] == 0:
        lines = run["stdout"].splitlines()
        run["casts"] = next((int(line.split()[-1]) for line in lines if line.startswith("casts inserted:")), "n/a")
        run["check_s"] = next((float(line.split()[4]) for line in lines if line.startswith("note: output check took")),
                              float("nan"))
        run["notes"] = [line[6:] for line in lines if line.startswith("note: ") and ("checked" in line or
                                                                                    "skipped" in line)]
    return run


OCC_SCRIPT = """
import sys, onnx
from onnxconverter_common import float16
model = onnx.load(sys.argv[1])
onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), sys.argv[2])
"""


def occ_convert(path: Path, out_dir: Path, timeout: float) -> dict[str, Any]:
    """onnxconverter-common's FP16 conversion as a whole process (load, convert, save)."""
    return timed_process([sys.executable, "-c", OCC_SCRIPT, str(path), str(out_dir / f"{path.stem}_occ.onnx")],
                         timeout)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time (a failed run counts as slowest), with the fastest and
    slowest times, the number of runs and the highest peak RSS of them."""
    ordered = sorted(runs, key=lambda r: (r["rc"] != 0, r["seconds"] if r["seconds"] == r["seconds"] else 1e18))
    median = dict(ordered[(len(ordered) - 1) // 2])
    if any(r["rc"] != 0 for r in runs):
        median = dict(next(r for r in runs if r["rc"] != 0))
    median.update(fastest=ordered[0]["seconds"], slowest=ordered[-1]["seconds"], runs=len(runs),
                  rss_mib=max(r["rss_mib"] for r in runs))
    return median


def _nodes(path: Path) -> int:
    """The graph's node count, read in a subprocess: loading the 1M-node proto here would
    grow this process to 3.6 GB, and every later child's peak RSS (wait4) would start there."""
    code = "import onnx, sys; print(len(onnx.load(sys.argv[1], load_external_data=False).graph.node))"
    return int(subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True,
                              text=True).stdout)


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]], peers: dict[str, Any]) -> str:
    lines = ["| nodes | convert s (default check, median) | fastest / slowest s | runs | of it check s | "
             "peak RSS MiB | casts | exit |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['nodes']} | {_fmt(r['seconds'])} | {_fmt(r.get('fastest', r['seconds']))} / "
                     f"{_fmt(r.get('slowest', r['seconds']))} | {r.get('runs', 1)} | {_fmt(r.get('check_s', 'n/a'))} "
                     f"| {_fmt(r['rss_mib'], 0)} | {r.get('casts', 'n/a')} | {r['rc']} |")
    if len(rows) >= 2:
        for a, b in zip(rows, rows[1:]):
            lines.append(f"\n{b['nodes']} vs {a['nodes']} nodes ({b['nodes'] / a['nodes']:.0f}x the nodes): "
                         f"{b['seconds'] / a['seconds']:.1f}x the time")
    if peers:
        lines += ["", f"Same {peers['nodes']}-node file, whole process each:", "",
                  "| tool | s | peak RSS MiB | exit |", "|---|---:|---:|---:|"]
        for name in ("mixprec convert (bf16, default check)", "mixprec convert --precision fp16 (default check)",
                     "mixprec convert --precision fp16 --no-check", "onnxconverter-common fp16 (no check)"):
            if name in peers:
                p = peers[name]
                lines.append(f"| {name} | {_fmt(p['seconds'])} | {_fmt(p['rss_mib'], 0)} | {p['rc']} |")
    return "\n".join(lines)


def profile(path: Path, out_dir: Path, timeout: float) -> str:
    """One convert under cProfile (in a subprocess); the per-stage table."""
    prof = out_dir / f"{path.stem}.prof"
    report = out_dir / f"{path.stem}_profiled.json"
    run = timed_process([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "mixprec.cli", "convert", str(path),
                         "-o", str(out_dir / f"{path.stem}_profiled.onnx"), "--report", str(report),
                         "--no-progress"], timeout)
    if run["rc"] != 0:
        return f"convert failed ({run['rc']}): {run['stderr'][-2000:]}"
    return summarize(prof, report, f"{path.name} (wall {run['seconds']:.2f} s under the profiler)")


def summarize(prof: Path, report: Path, title: str) -> str:
    """The per-stage table of a cProfile file and the report's per-pass seconds."""
    import pstats

    stats = pstats.Stats(str(prof)).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total = max(v[3] for v in stats.values())
    lines = [f"cProfile of `mixprec convert` on {title}; {total:.2f} s profiled", "",
             "| stage | s | share |", "|---|---:|---:|"]
    for stage, keys in STAGES.items():
        seconds = sum(v[3] for (file, _, func), v in stats.items() for key in keys if f"{file}:{func}".endswith(key))
        lines.append(f"| {stage} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    for p in json.loads(report.read_text()).get("passes", []):
        lines.append(f"|   pass {p['name']} | {p['seconds']:.2f} | {100 * p['seconds'] / total:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--peer-size", type=int, default=100000, help="size for the onnxconverter-common comparison "
                                                                  "(0: skip)")
    ap.add_argument("--profile", type=int, metavar="N", help="profile one convert of the N-node graph instead")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mixprec-scale")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over the sizes (the median run is reported)")
    ap.add_argument("--once-from", type=int, default=500000, metavar="N",
                    help="graphs of N nodes and more run in the first round only (1M: about 2.5 min a run)")
    args = ap.parse_args(argv)
    out_dir = Path(tempfile.mkdtemp(prefix="mixprec-scale-out-"))
    if args.profile:
        print(profile(model_path(args.cache, args.profile), out_dir, args.timeout))
        return 0
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in args.sizes}
    for round_ in range(max(1, args.repeat)):
        for size in args.sizes:
            if round_ and size >= args.once_from:
                continue
            path = model_path(args.cache, size)
            run = mixprec_convert(path, out_dir, timeout=args.timeout)
            run["nodes"] = _nodes(path)
            runs[size].append(run)
            print(f"{run['nodes']} nodes: {_fmt(run['seconds'])} s", file=sys.stderr, flush=True)
    rows = [_median_run(runs[size]) for size in args.sizes]
    peers: dict[str, Any] = {}
    if args.peer_size:
        path = model_path(args.cache, args.peer_size)
        peers["nodes"] = _nodes(path)
        same = next((r for r in rows if r["nodes"] == peers["nodes"]), None)
        peers["mixprec convert (bf16, default check)"] = same or mixprec_convert(path, out_dir, timeout=args.timeout)
        peers["mixprec convert --precision fp16 (default check)"] = mixprec_convert(
            path, out_dir, "--precision", "fp16", timeout=args.timeout)
        peers["mixprec convert --precision fp16 --no-check"] = mixprec_convert(
            path, out_dir, "--precision", "fp16", "--no-check", timeout=args.timeout)
        peers["onnxconverter-common fp16 (no check)"] = occ_convert(path, out_dir, args.timeout)
        for run in peers.values():
            if isinstance(run, dict):
                run["nodes"] = peers["nodes"]
    print(table(rows, peers))
    failed = [r for r in rows if r["rc"] != 0]
    for r in failed:
        print(f"\n{r['nodes']} nodes failed: {r['stderr'][-1000:]}")
    keep = ("nodes", "seconds", "fastest", "slowest", "runs", "rss_mib", "rc", "casts", "check_s", "notes")
    print("\n```json\n" + json.dumps({"rows": [{k: r.get(k) for k in keep} for r in rows],
                                       "peers": {k: ({f: v.get(f) for f in keep} if isinstance(v, dict) else v)
                                                 for k, v in peers.items()}}, indent=1) + "\n```")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
