"""Run the real-model corpus (tests/corpus) through the default ``mixprec convert`` path and
write bench/corpus.md.

For every entry: build it (cached, offline), run the FP32 model on its real input in a fresh
process where ``import mixprec`` fails, then
  convert     ``python -m mixprec.cli convert IN -o OUT --report R.json`` exits 0;
  reload      OUT validates in its framework (onnx full_check, torch.export.load, a SavedModel's
              serving signature, MXNet type inference + SymbolBlock.imports) and runs, in a fresh
              process without mixprec;
  match       its outputs match FP32 on the real input: cosine >= 0.999 on every float output,
              or task agreement >= 0.99 (same top-1 / tokens, same detections);
  reconvert   converting OUT again exits 0 and gives the same outputs and node count, or exits 2
              saying it is already converted (never an internal error);
  input-shape converting IN with ``--input-shape NAME=d0,d1,...`` for every input (the real
              input's shape) exits 0 (graph formats only; a .pt2 carries its example inputs).
An entry passes when every stage passes. Run from the repository root:

    python bench/corpus.py --all            # every entry, rewrites bench/corpus.md
    python bench/corpus.py NAME [NAME ...]  # some entries, prints their rows
    python bench/corpus.py --ci             # the CI subset
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.corpus import registry  # noqa: E402
from tests.corpus.registry import Entry  # noqa: E402
from tests.fresh_process import BLOCK_MIXPREC  # noqa: E402

MIN_COSINE = 0.999
MIN_AGREEMENT = 0.99
BUILD_TIMEOUT = 1200
CONVERT_TIMEOUT = 900
RUN_TIMEOUT = 900
RUN_MODEL = ROOT / "tests" / "corpus" / "run_model.py"
COLUMNS = ("model", "source", "framework", "nodes", "allow ops in BF16", "casts", "cosine", "task agreement",
           "convert s", "status")


class StageFailure(Exception):
    """A stage of one entry failed; ``stage`` names it, the message is one line."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


# ---- subprocesses ----------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    env.pop("CI", None)
    return env


def _run(args: list[str], timeout: int, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd or ROOT)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"timed out after {timeout} s")


def first_error_line(stderr: str) -> str:
    """The line that says what went wrong: mixprec's own "mixprec: error" line, else the last
    line that looks like an exception, else the last non-empty line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("mixprec: error") or line.startswith("mixprec: internal error"):
            return line[:300]
    for line in reversed(lines):
        if ("Error" in line or "error:" in line or "Exception" in line) and not line.startswith("File "):
            return line[:300]
    return (lines[-1] if lines else "(no output)")[:300]


def cli(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "mixprec.cli", *args], CONVERT_TIMEOUT)


def run_without_mixprec(framework: str, model: Path, feeds: Path, out: Path,
                        onnx_runtime: str = "auto") -> tuple[list[np.ndarray], str]:
    """Run ``model`` in a fresh interpreter (-I) where ``import mixprec`` fails; its outputs and
    runtime. ONNX runs in onnxruntime, else onnx.reference; ``onnx_runtime="reference"`` forces the latter."""
    code = BLOCK_MIXPREC + (f"import os, runpy, sys\nos.environ['MIXPREC_CORPUS_ONNX_RUNTIME'] = {onnx_runtime!r}\n"
                            f"sys.argv = {[str(RUN_MODEL), framework, str(model), str(feeds), str(out)]!r}\n"
                            f"runpy.run_path({str(RUN_MODEL)!r}, run_name='__main__')\n")
    done = _run([sys.executable, "-I", "-c", code], RUN_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(first_error_line(done.stderr))
    with np.load(out) as data:
        outputs = [data[k] for k in sorted(data.files, key=lambda k: int(k[3:]))]
    return outputs, json.loads(Path(str(out) + ".json").read_text())["runtime"]


# ---- comparisons -----------------------------------------------------------------------
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        return float("nan")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def min_cosine(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """The worst cosine over the float outputs (integer outputs must be equal: 1 or 0)."""
    if len(expected) != len(got):
        return float("nan")
    values = []
    for a, b in zip(expected, got):
        if a.dtype.kind in "iub":
            values.append(1.0 if a.shape == b.shape and np.array_equal(a, b) else 0.0)
        else:
            values.append(cosine(a, b))
    return min(values) if values else float("nan")


def task_agreement(task: registry.Task, expected: list[np.ndarray], got: list[np.ndarray]) -> float | None:
    if task.kind == "none" or task.output >= min(len(expected), len(got)):
        return None
    a, b = np.asarray(expected[task.output], np.float64), np.asarray(got[task.output], np.float64)
    if a.shape != b.shape:
        return 0.0
    if task.kind == "argmax":
        return float(np.mean(a.argmax(-1) == b.argmax(-1)))
    if task.kind == "mask":
        return _iou(a > task.threshold, b > task.threshold)
    if task.kind == "boxes":  # [batch, 4 + classes, anchors]
        return _iou(a[:, 4:] > task.threshold, b[:, 4:] > task.threshold)
    raise ValueError(f"unknown task kind {task.kind!r}")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---- report figures --------------------------------------------------------------------
def report_figures(report: dict[str, Any]) -> dict[str, Any]:
    nodes = [n for n in report.get("nodes", []) if n.get("category") != "cast" or not
             str(n.get("reason", "")).startswith("inserted")]
    allow = [n for n in nodes if n.get("category") == "allow"]
    low = report.get("precision", "bf16")
    return {"nodes": len(nodes), "allow_low": sum(n.get("precision") == low for n in allow), "allow": len(allow),
            "casts": report.get("casts_inserted"), "notes": report.get("notes", []),
            "failed_check": report.get("failed_check")}


# ---- one entry -------------------------------------------------------------------------
def build(entry: Entry) -> Path:
    if registry.is_built(entry):
        return entry.directory()
    done = _run([sys.executable, "-m", "tests.corpus.registry", entry.name], BUILD_TIMEOUT)
    if done.returncode != 0 or not registry.is_built(entry):
        raise StageFailure("build", first_error_line(done.stderr))
    return entry.directory()


def _convert(entry: Entry, source: Path, out: Path, report: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    _remove(out)
    start = time.perf_counter()
    done = cli("convert", str(source), "-o", str(out), "--report", str(report), *extra)
    return done, time.perf_counter() - start


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if path.name.endswith("-symbol.json"):
        params = path.with_name(path.name[: -len("-symbol.json")] + "-0000.params")
        if params.exists():
            params.unlink()


def input_shape_args(feeds: Path) -> list[str]:
    with np.load(feeds) as data:
        return [a for k in data.files for a in ("--input-shape", f"{k}=" + ",".join(map(str, data[k].shape)))]


def run_entry(entry: Entry, work: Path | None = None) -> dict[str, Any]:
    """Every stage for ``entry``; a result row (``status`` "pass" or "FAIL") with
    ``failures``: [(stage, first line of the error)]. Stages after a failed conversion that
    need its output are skipped; the reconvert and input-shape stages run regardless."""
    row: dict[str, Any] = {"model": entry.name, "source": entry.source, "framework": entry.framework,
                           "failures": [], "note": entry.note}
    try:
        directory = build(entry)
    except StageFailure as failure:
        row["failures"].append((failure.stage, str(failure)))
        return _finish(row)
    work = work or directory / "run"
    work.mkdir(parents=True, exist_ok=True)
    model, feeds = directory / entry.model_file, directory / "inputs.npz"
    try:
        expected, row["fp32_runtime"] = run_without_mixprec(entry.framework, model, feeds, work / "fp32.npz")
    except RuntimeError as exc:
        row["failures"].append(("fp32 run", str(exc)))
        return _finish(row)
    out, report = work / entry.output_file, work / "report.json"
    done, seconds = _convert(entry, model, out, report)
    row["convert_s"] = round(seconds, 1)
    if done.returncode != 0:
        row["failures"].append(("convert", f"exit {done.returncode}: {first_error_line(done.stderr)}"))
    else:
        row.update(report_figures(json.loads(report.read_text())))
        got = _reload(entry, out, feeds, work / "lp.npz", row)
        if got is not None:
            judged = _trusted_runtime(entry, expected, _same_runtime_reference(entry, expected, feeds, work, row),
                                      got, out, feeds, row)
            _match(entry, *judged, row)
            _reconvert(entry, out, feeds, got, work, row)  # the same runtime as the re-converted model's run
    if entry.framework != "torch":
        done, _ = _convert(entry, model, work / ("shape-" + entry.output_file), work / "shape-report.json",
                           *input_shape_args(feeds))
        if done.returncode != 0:
            row["failures"].append(("input-shape", f"exit {done.returncode}: {first_error_line(done.stderr)}"))
    return _finish(row)


def _reload(entry: Entry, out: Path, feeds: Path, result: Path, row: dict) -> list[np.ndarray] | None:
    try:
        got, row["lp_runtime"] = run_converted(entry, out, feeds, result)
        return got
    except RuntimeError as exc:
        message = str(exc)
        if entry.framework == "onnx" and "onnx.reference:" in message:
            message += _reference_on_fp32(entry, feeds, result)
        row["failures"].append(("reload", message))
        return None


def run_converted(entry: Entry, out: Path, feeds: Path, result: Path) -> tuple[list[np.ndarray], str]:
    """``run_without_mixprec`` on a converted model. A bf16 ONNX model that passed
    onnx.checker's full check in that fresh process but that no runtime here runs (no bf16
    kernels in onnxruntime, onnx.reference failing) is run on mixprec's exact emulation
    (checked against onnx.reference in tests/test_onnx_check.py)."""
    try:
        return run_without_mixprec(entry.framework, out, feeds, result)
    except RuntimeError as exc:
        if entry.framework != "onnx" or "onnx.reference:" not in str(exc):
            raise
        import onnx
        from mixprec.runtimes.onnx import run_emulated
        from mixprec.errors import MixprecError
        try:
            with np.load(feeds) as data:
                outputs = run_emulated(onnx.load(str(out)), {k: data[k] for k in data.files})
        except MixprecError:
            raise exc from None
        return ([np.asarray(o, np.float32) for o in outputs],
                "onnxruntime on the exact low-precision emulation (validated without mixprec by onnx.checker; "
                "no runtime here has its kernels)")


def _reference_on_fp32(entry: Entry, feeds: Path, result: Path) -> str:
    """Whether onnx.reference runs the FP32 model at all (if not, the evaluator is the limit)."""
    try:
        run_without_mixprec("onnx", entry.model_path(), feeds, result.with_name("fp32-reference.npz"), "reference")
        return " [onnx.reference runs the FP32 model]"
    except RuntimeError:
        return " [onnx.reference fails on the FP32 model too: only onnxruntime could run it, and it has no kernel]"


def _same_runtime_reference(entry: Entry, expected: list[np.ndarray], feeds: Path, work: Path,
                            row: dict) -> list[np.ndarray]:
    """The FP32 outputs from the runtime that ran the converted model: when onnxruntime cannot
    run the converted ONNX model and onnx.reference does, FP32 is re-run in onnx.reference too,
    so the comparison measures the conversion, not the difference between two runtimes."""
    if entry.framework != "onnx" or not str(row.get("lp_runtime", "")).startswith("onnx.reference"):
        return expected
    try:
        reference, _ = run_without_mixprec("onnx", entry.model_path(), feeds, work / "fp32-reference.npz", "reference")
    except RuntimeError as exc:
        row.setdefault("remarks", []).append(f"FP32 under onnx.reference fails ({exc}); compared with onnxruntime FP32")
        return expected
    row["runtime_cosine"] = min_cosine(expected, reference)  # FP32 onnxruntime vs FP32 onnx.reference
    return reference


def _trusted_runtime(entry: Entry, fp32: list[np.ndarray], expected: list[np.ndarray], got: list[np.ndarray],
                     out: Path, feeds: Path, row: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The outputs to judge the conversion by. When the converted ONNX model ran in
    onnx.reference only (onnxruntime has no bf16 Conv/MatMul kernels) and onnx.reference's
    FP32 outputs are themselves further from onnxruntime's than the match bar (cosine <
    MIN_COSINE: SVTR 0.996, DBNet 0.992), onnx.reference's numerics cannot judge a 0.999 bar:
    the converted model is also run in onnxruntime on mixprec's exact low-precision
    emulation and compared with onnxruntime's FP32; the onnx.reference figure stays in the
    remarks."""
    if row.get("runtime_cosine") is None or row["runtime_cosine"] >= MIN_COSINE:
        return expected, got
    import onnx
    from mixprec.errors import MixprecError
    from mixprec.runtimes.onnx import run_emulated
    try:
        with np.load(feeds) as data:
            emulated = run_emulated(onnx.load(str(out)), {k: data[k] for k in data.files})
    except MixprecError as exc:
        row.setdefault("remarks", []).append(f"the exact emulation does not run ({exc}); judged by onnx.reference")
        return expected, got
    agreement = task_agreement(entry.task, expected, got)
    row.setdefault("remarks", []).append(
        f"onnx.reference BF16 vs its own FP32: cosine {min_cosine(expected, got):.5f}"
        + (f", task agreement {agreement:.3f}" if agreement is not None else "")
        + "; judged by onnxruntime on the exact emulation against onnxruntime FP32")
    row["lp_runtime"] = "onnxruntime on the exact low-precision emulation (onnx.reference's FP32 is off the bar)"
    return fp32, [np.asarray(o, np.float32) for o in emulated]


def _match(entry: Entry, expected: list[np.ndarray], got: list[np.ndarray], row: dict) -> None:
    row["cosine"] = min_cosine(expected, got)
    row["agreement"] = task_agreement(entry.task, expected, got)
    ok_cos = row["cosine"] >= MIN_COSINE
    ok_task = row["agreement"] is not None and row["agreement"] >= MIN_AGREEMENT
    if not (ok_cos or ok_task):
        agree = "n/a" if row["agreement"] is None else f"{row['agreement']:.3f}"
        row["failures"].append(("match", f"cosine {row['cosine']:.5f} < {MIN_COSINE} and task agreement {agree} "
                                         f"< {MIN_AGREEMENT} ({entry.task.kind})"))


def _reconvert(entry: Entry, out: Path, feeds: Path, got: list[np.ndarray], work: Path, row: dict) -> None:
    again = work / ("again-" + entry.output_file)
    done, _ = _convert(entry, out, again, work / "again-report.json")
    if done.returncode == 2 and "already" in done.stderr.lower():
        return
    if done.returncode != 0:
        row["failures"].append(("reconvert", f"exit {done.returncode}: {first_error_line(done.stderr)}"))
        return
    try:
        second, _ = run_converted(entry, again, feeds, work / "again.npz")
    except RuntimeError as exc:
        row["failures"].append(("reconvert", f"the re-converted model does not run: {exc}"))
        return
    again_report = json.loads((work / "again-report.json").read_text())
    total, inserted = len(again_report.get("nodes", [])), again_report.get("casts_inserted") or 0
    expected_total = row["nodes"] + (row.get("casts") or 0)  # the first output: its nodes and its casts
    same = len(second) == len(got) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, second))
    if total != expected_total:  # a file format may add wrapper nodes (Identity) on reload: noted, not failed
        row.setdefault("remarks", []).append(f"re-converted: {total} nodes, first output {expected_total}")
    if not same or inserted:
        row["failures"].append(("reconvert", f"not the same model: {inserted} casts inserted, {total} nodes (the "
                                             f"first output has {expected_total}), outputs cosine "
                                             f"{min_cosine(got, second):.6f}, identical={same}"))


def _finish(row: dict) -> dict:
    row["status"] = "pass" if not row["failures"] else "FAIL"
    return row


# ---- the table -------------------------------------------------------------------------
def _cell(row: dict, column: str) -> str:
    if column == "model":
        return row["model"]
    if column == "source":
        return row["source"]
    if column == "framework":
        return row["framework"]
    if column == "nodes":
        return str(row.get("nodes", "-"))
    if column == "allow ops in BF16":
        return f"{row['allow_low']}/{row['allow']}" if "allow" in row else "-"
    if column == "casts":
        return str(row.get("casts", "-"))
    if column == "cosine":
        return f"{row['cosine']:.5f}" if "cosine" in row else "-"
    if column == "task agreement":
        return f"{row['agreement']:.3f}" if row.get("agreement") is not None else "-"
    if column == "convert s":
        return str(row.get("convert_s", "-"))
    if column == "status":
        if not row["failures"]:
            return "pass"
        return "FAIL: " + "; ".join(stage for stage, _ in row["failures"])
    raise KeyError(column)


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(r, c).replace("|", "/") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def failures_text(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        for stage, message in row["failures"]:
            lines.append(f"- **{row['model']}** ({row['framework']}), {stage}: `{message.replace('`', chr(39))}`")
        if row.get("runtime_cosine") is not None and row["runtime_cosine"] < MIN_COSINE:
            lines.append(f"- {row['model']}: note: FP32 itself has cosine {row['runtime_cosine']:.5f} between "
                         "onnxruntime and onnx.reference, so the BF16 model was judged in onnxruntime on the exact "
                         "emulation (see the remark)")
        for remark in row.get("remarks", []):
            lines.append(f"- {row['model']}: note: {remark}")
    return "\n".join(lines) or "none"


def stage_counts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        for stage in dict.fromkeys(stage for stage, _ in row["failures"]):
            counts[stage] = counts.get(stage, 0) + 1
    return ", ".join(f"{stage} {n}" for stage, n in counts.items()) or "none"


def markdown(rows: list[dict], command: str, seconds: float, rerun: str = "") -> str:
    passed = sum(r["status"] == "pass" for r in rows)
    but_shape = sum(all(stage == "input-shape" for stage, _ in r["failures"]) for r in rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return "\n".join([
        "# The real-model corpus",
        "",
        "Every model below is built offline (tests/corpus, cached in `$MIXPREC_CORPUS_DIR`) and sent through",
        "the default CLI path, `mixprec convert IN -o OUT --report R.json`, then checked: exit 0; OUT validates",
        "and runs in its framework in a fresh process where `import mixprec` fails; outputs match FP32 on the",
        f"real input (cosine >= {MIN_COSINE} on every output, or task agreement >= {MIN_AGREEMENT}); converting OUT",
        "again gives the same model (or exits 2 saying it is already converted); converting IN with",
        "`--input-shape` for every input exits 0 (not for .pt2). 'allow ops in BF16' counts the policy's allow",
        "nodes painted BF16; nodes and casts come from the report. Cosine and agreement compare the",
        "converted model run by its framework (ONNX: onnxruntime, else onnx.reference) with the FP32 model;",
        "where onnx.reference's own FP32 outputs are further than the bar from onnxruntime's, a bf16 ONNX model",
        "is judged in onnxruntime on mixprec's exact emulation against onnxruntime FP32 (see the notes).",
        "",
        f"Command: `{command}` (commit {commit}, {time.strftime('%Y-%m-%d')}, {seconds / 60:.0f} min on 2 shared cores)"
        + (f"; {rerun}" if rerun else ""),
        "",
        f"**{passed} of {len(rows)} pass**; {but_shape} pass every stage but input-shape. Models failing each "
        f"stage: {stage_counts(rows)}.",
        "",
        table(rows),
        "",
        "## Failures (model, stage, first line of the error)",
        "",
        failures_text(rows),
        "",
    ])


def merge_rows(earlier: list[dict], fresh: list[dict]) -> list[dict]:
    """The rows of ``earlier`` with those of ``fresh`` in place of the same models, in registry order."""
    by_name = {r["model"]: r for r in earlier}
    by_name.update({r["model"]: r for r in fresh})
    for row in by_name.values():
        row["failures"] = [tuple(f) for f in row["failures"]]
    return [by_name[e.name] for e in registry.ENTRIES if e.name in by_name]


def select(args: argparse.Namespace) -> list[Entry]:
    if args.all:
        return list(registry.ENTRIES)
    if args.ci:
        return [e for e in registry.ENTRIES if e.ci]
    unknown = [n for n in args.names if n not in registry.BY_NAME]
    if unknown:
        raise SystemExit(f"unknown corpus entries: {', '.join(unknown)}; see tests/corpus/registry.py")
    return [registry.BY_NAME[n] for n in args.names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--all", action="store_true", help="every entry; rewrites bench/corpus.md")
    parser.add_argument("--ci", action="store_true", help="the CI subset")
    parser.add_argument("--output", default=str(ROOT / "bench" / "corpus.md"))
    parser.add_argument("--json", help="also write the raw rows here")
    parser.add_argument("--merge", metavar="JSON", help="replace the named entries' rows in the rows of an "
                        "earlier --all --json run and rewrite the table from them")
    args = parser.parse_args(argv)
    entries = select(args)
    start, rows = time.perf_counter(), []
    for entry in entries:
        t = time.perf_counter()
        row = run_entry(entry)
        rows.append(row)
        print(f"{entry.name}: {_cell(row, 'status')} ({time.perf_counter() - t:.0f} s)"
              + "".join(f"\n    {s}: {m}" for s, m in row["failures"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    if args.merge:
        rows = merge_rows(json.loads(Path(args.merge).read_text()), rows)
        Path(args.merge).write_text(json.dumps(rows, indent=1, default=str))
        names = " ".join(e.name for e in entries)
        Path(args.output).write_text(markdown(rows, "python bench/corpus.py --all --json ROWS", time.perf_counter() - start,
                                              f"then `python bench/corpus.py {names} --merge ROWS` re-ran those rows"))
    elif args.all:
        Path(args.output).write_text(markdown(rows, "python bench/corpus.py --all", time.perf_counter() - start))
    else:
        print(table(rows))
    return 0 if all(r["status"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
