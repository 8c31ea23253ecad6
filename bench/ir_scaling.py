"""IR scaling benchmark: transformer-like graphs of 1k, 10k and 100k nodes.

Times parse, dump, verify and the full default bf16 pipeline, and prints a Markdown table
with the 100k/10k ratio (linear growth gives ~10x). Run:
    python bench/ir_scaling.py [--sizes 1000 10000 100000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from mixprec.ir import GraphBuilder, dump, parse, verify
from mixprec.passes import DEFAULT_PIPELINE, build_pipeline

HIDDEN = 64


def transformer_like(num_nodes: int):
    """Stacked encoder layers (attention + MLP + layer norms), about 25 nodes each."""
    b = GraphBuilder(framework="generic")
    x = b.input("x", "f32", (1, 128, HIDDEN))
    mask = b.input("mask", "f32", (1, 1, 128, 128))
    heads = b.const("heads_shape", np.array([1, 128, 4, 16], np.int64))
    flat = b.const("flat_shape", np.array([1, 128, HIDDEN], np.int64))
    layer = 0
    while len(b.graph) < num_nodes:
        p = f"l{layer}."
        w = {k: b.const(p + k, dtype="f32", shape=(HIDDEN, HIDDEN)) for k in ("q", "k", "v", "o", "f1", "f2")}
        bias = b.const(p + "bias", dtype="f32", shape=(HIDDEN,))
        qkv = []
        for k in ("q", "k", "v"):
            t = b.op("MatMul", x, w[k], out=p + k + "_mm")
            t = b.op("Add", t, bias, out=p + k + "_b")
            t = b.op("Reshape", t, heads, out=p + k + "_r", shape=(1, 128, 4, 16))
            qkv.append(b.op("Transpose", t, attrs={"perm": [0, 2, 1, 3]}, out=p + k + "_t", shape=(1, 4, 128, 16)))
        s = b.op("MatMul", qkv[0], qkv[1], out=p + "scores", shape=(1, 4, 128, 128))
        s = b.op("Add", s, mask, out=p + "masked")
        s = b.op("Softmax", s, attrs={"axis": -1}, out=p + "probs")
        a = b.op("MatMul", s, qkv[2], out=p + "ctx", shape=(1, 4, 128, 16))
        a = b.op("Transpose", a, attrs={"perm": [0, 2, 1, 3]}, out=p + "ctx_t", shape=(1, 128, 4, 16))
        a = b.op("Reshape", a, flat, out=p + "ctx_r", shape=(1, 128, HIDDEN))
        a = b.op("MatMul", a, w["o"], out=p + "attn_out")
        h = b.op("Add", a, x, out=p + "res1")
        h = b.op("LayerNormalization", h, out=p + "ln1")
        f = b.op("MatMul", h, w["f1"], out=p + "ff1")
        f = b.op("Add", f, bias, out=p + "ff1_b")
        f = b.op("Relu", f, out=p + "act")
        f = b.op("MatMul", f, w["f2"], out=p + "ff2")
        f = b.op("Add", f, h, out=p + "res2")
        x = b.op("LayerNormalization", f, out=p + "ln2")
        layer += 1
    b.output(x)
    return b.graph


def _time(fn, repeat: int, setup=lambda: None) -> float:
    """Best of ``repeat`` runs of ``fn(setup())``; setup is not timed."""
    best = float("inf")
    for _ in range(repeat):
        arg = setup()
        start = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - start)
    return best


def measure(size: int, repeat: int) -> dict[str, float]:
    graph = transformer_like(size)
    text = dump(graph)
    row = {"nodes": len(graph)}
    row["parse"] = _time(lambda _: parse(text), repeat)
    row["dump"] = _time(lambda _: dump(graph), repeat)
    row["verify"] = _time(lambda _: verify(graph), repeat)
    row["pipeline"] = _time(lambda g: build_pipeline(DEFAULT_PIPELINE).run(g), repeat, lambda: parse(text))
    converted = parse(text)
    build_pipeline(DEFAULT_PIPELINE).run(converted)
    row["casts"] = sum(1 for n in converted.nodes if n.op == "Cast")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeat)))
        return
    # each size in a fresh process, so one size's heap does not slow the next
    rows = [json.loads(subprocess.run([sys.executable, __file__, "--one", str(size), "--repeat", str(args.repeat)],
                                      check=True, capture_output=True, text=True).stdout)
            for size in args.sizes]
    print("| nodes | parse s | dump s | verify s | pipeline s | casts after |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['nodes']} | {r['parse']:.3f} | {r['dump']:.3f} | {r['verify']:.3f} | {r['pipeline']:.3f} | {r['casts']} |")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        scale = b["nodes"] / a["nodes"]
        ratios = ", ".join(f"{k} {b[k] / a[k]:.1f}x" for k in ("parse", "dump", "verify", "pipeline"))
        print(f"\n{b['nodes']} vs {a['nodes']} nodes ({scale:.0f}x the nodes): {ratios}")


if __name__ == "__main__":
    main()
