"""Interleaved A/B of whole-process ``mixprec convert`` times: two revisions on one file.

This machine's speed drifts 20-40% for minutes at a time, so two runs made minutes apart
cannot tell a 5% change. Here each revision is a detached git worktree (the same venv,
``PYTHONPATH`` pointing at the worktree, so its ``mixprec`` is the one imported), and the
runs alternate A B B A A B ... on the same cached graph of ``bench/scale.py``: a drift
hits both sides alike. Reported: every run, each side's median, and the median of the
per-pair ratios B/A (a pair is two neighbouring runs, one of each). Run:
    PYTHONPATH=. .venv/bin/python bench/ab.py --base 777e0a0 [--head WORKTREE_OR_REV] [--nodes 100000] [--pairs 5]
``--head`` defaults to the working tree itself (uncommitted changes included).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from scale import model_path, timed_process  # noqa: E402


def checkout(rev: str, into: Path) -> Path:
    """A detached worktree of ``rev`` under ``into`` (a path already holding a checkout is used as is)."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    where = into / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    return where


def convert(tree: Path, model: Path, out_dir: Path, extra: list[str], timeout: float) -> dict[str, Any]:
    """One whole CLI process of the ``mixprec`` in ``tree``; wall seconds and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = out_dir / f"{tree.name}.onnx"
    cmd = [sys.executable, "-m", "mixprec.cli", "convert", str(model), "-o", str(out), "--no-progress", *extra]
    run = timed_process(cmd, timeout, env=env)
    if run["rc"] != 0:
        raise SystemExit(f"{tree}: convert failed ({run['rc']}): {run['stderr'][-2000:]}")
    return run


def order(pairs: int) -> list[str]:
    """A B B A A B ...: each side first in half of the pairs."""
    return [side for i in range(pairs) for side in (("A", "B") if i % 2 == 0 else ("B", "A"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="revision A (a git revision or a checkout's directory)")
    ap.add_argument("--head", default=str(ROOT), help="revision B (default: this working tree)")
    ap.add_argument("--nodes", type=int, default=100000, help="graph size of bench/scale.py")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mixprec-scale")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("extra", nargs="*", help="more convert options, after --")
    args = ap.parse_args(argv)
    model = model_path(args.cache, args.nodes)
    work = Path(tempfile.mkdtemp(prefix="mixprec-ab-"))
    made: list[Path] = []
    try:
        trees = {}
        for side, rev in (("A", args.base), ("B", args.head)):
            trees[side] = checkout(rev, work)
            if trees[side].parent == work:
                made.append(trees[side])
        times: dict[str, list[float]] = {"A": [], "B": []}
        sequence = order(args.pairs)
        for side in sequence:
            run = convert(trees[side], model, work, args.extra, args.timeout)
            times[side].append(run["seconds"])
            print(f"{side} {trees[side].name}: {run['seconds']:.2f} s, {run['rss_mib']:.0f} MiB", file=sys.stderr,
                  flush=True)
        # neighbouring runs form the pairs: (0,1), (2,3), ...; each holds one A and one B
        ratios = []
        a_iter, b_iter = iter(times["A"]), iter(times["B"])
        for _ in range(args.pairs):
            a, b = next(a_iter), next(b_iter)
            ratios.append(b / a)
        result = {"model": model.name, "base": args.base, "head": args.head, "order": "".join(sequence),
                  "A": times["A"], "B": times["B"], "median_A": statistics.median(times["A"]),
                  "median_B": statistics.median(times["B"]), "ratios_B_over_A": ratios,
                  "median_ratio": statistics.median(ratios)}
        print(f"A ({args.base}) median {result['median_A']:.2f} s; B ({args.head}) median {result['median_B']:.2f} s; "
              f"B/A per pair {', '.join(f'{r:.3f}' for r in ratios)}: median {result['median_ratio']:.3f}")
        print(json.dumps(result, indent=1))
    finally:
        for tree in made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
