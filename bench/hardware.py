"""Hardware-aware precision benchmark (issue 11): on the machine it runs on, FP32 vs
mixprec objective="memory" vs objective="performance" vs the framework's own AMP
(torch.autocast / grappler's oneDNN BF16 rewrite), as interleaved medians.

Models: a memory-bound MLP (Linear 4096->11008->4096) at batch 1 and 4, a transformer
encoder at batch 1 and 32, a ResNet-50 (plain torch: torchvision does not import beside
torch 2.13) at batch 1, a Keras CNN (MobileNetV2, random weights) at batch 1, and MXNet
Gluon blocks (hybridized; AMP is ``mx.contrib.amp`` bfloat16): the MLP and a model-zoo
resnet18_v1 at batch 1. Also:
the machine's own probe of BF16 vs FP32 for the MLP's shapes, and, per model, how much
faster a second "performance" conversion is with the cache (measurements and whole
conversions, mixprec.conversion_cache): the whole conversion (load, torch.export /
grappler, pipeline, emit, output check, profiling) and the profiling alone
(``report.profile["seconds"]``: deciding the regions and measuring the model's latency),
first (cold cache) against second; for the torch models also the second conversion in a
fresh process (the same seeded model built again there, the cache directory shared; the
process's imports not counted).

Checks printed at the end (the issue's bar): "performance" <= 1.02x FP32 on every model;
where the probe shows BF16 >= 1.5x faster for the MLP's shapes, the MLP's "performance"
model >= 1.3x faster than FP32; the cached conversion >= 10x faster than the first (per
model, whole conversion and profiling alone).

    python bench/hardware.py                 # the recorded run (quiet machine, >= 20 reps)
    python bench/hardware.py --quick         # small shapes and few reps: checks it runs
    python bench/hardware.py --only mlp,resnet50 --reps 30 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class Case:
    name: str
    framework: str
    variants: dict[str, Callable[[], Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    conversion: dict[str, float] = field(default_factory=dict)
    returned_fp32: bool = False  # fit's guard returned the FP32 model itself as the "performance" model


# ------------------------------------------------------------------------- timing ---
def interleaved(variants: dict[str, Callable[[], Any]], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of each variant, run in a rotating order each repetition."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            started = time.perf_counter()
            variants[name]()
            samples[name].append((time.perf_counter() - started) * 1e3)
    return {n: statistics.median(s) for n, s in samples.items()}


# ----------------------------------------------------------------------- torch models ---
def torch_models(quick: bool):
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self, d: int, hidden: int) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

        def forward(self, x):
            return self.down(torch.nn.functional.gelu(self.up(x)))

    class Encoder(nn.Module):
        def __init__(self, d: int, heads: int, ff: int, layers: int) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        def forward(self, x):
            return self.encoder(x)

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, mid: int, stride: int) -> None:
            super().__init__()
            cout = mid * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self, classes: int = 1000) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 64
            for mid, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(count):
                    blocks.append(Bottleneck(cin, mid, stride if i == 0 else 1))
                    cin = mid * 4
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))

    torch.manual_seed(0)
    d, hidden = (512, 1376) if quick else (4096, 11008)
    seq, width = (16, 64) if quick else (128, 256)
    side = 64 if quick else 224
    mlp = MLP(d, hidden).eval()
    encoder = Encoder(width, 4, width * 4, 2).eval()
    resnet = ResNet50().eval()
    with torch.no_grad():  # non-degenerate BatchNorm statistics
        for module in resnet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.2, 0.6)
    # every example made before the first is converted (conversions draw from torch's generator), so that
    # another process building these models gets the same ones
    yield from [(f"mlp {d}->{hidden}->{d} b1", mlp, (torch.randn(1, d),)),
                (f"mlp {d}->{hidden}->{d} b4", mlp, (torch.randn(4, d),)),
                (f"encoder d{width} s{seq} b1", encoder, (torch.randn(1, seq, width),)),
                (f"encoder d{width} s{seq} b32", encoder, (torch.randn(32 if not quick else 8, seq, width),)),
                (f"resnet50 {side}px b1", resnet, (torch.randn(1, 3, side, side),))]


def converted_pair(model, example, convert) -> tuple[Any, Any, dict[str, float]]:
    """The "memory" and "performance" conversions of ``model``, and the seconds of the
    memory conversion, of the first (cold cache) and the second (warm) "performance"
    conversion, whole and profiling alone."""
    memory, memory_s = convert(model, example, "memory")
    performance, first_s = convert(model, example, "performance")
    again, second_s = convert(model, example, "performance")
    seconds = {"memory_s": memory_s, "first_s": first_s, "second_s": second_s,
               "profile_first_s": (performance.report.profile or {}).get("seconds", 0.0),
               "profile_second_s": (again.report.profile or {}).get("seconds", 0.0),
               "timer_calls_second": (again.report.profile or {}).get("timer_calls", 0)}
    return memory, performance, seconds


def fresh_process_seconds(name: str, quick: bool, cache: str) -> float | None:
    """The "performance" conversion of torch model ``name`` in a new process (which builds
    the same seeded models), with the cache directory ``cache``: its seconds, or None."""
    command = [sys.executable, __file__, "--convert-in-this-process", name] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "MIXPREC_CACHE_DIR": cache})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])["seconds"] if done.returncode == 0 and lines else None


def _convert_in_this_process(name: str, quick: bool) -> int:
    from mixprec import mix_precision
    from mixprec.config import MixedPrecisionConfig
    for model_name, module, example in torch_models(quick):
        if model_name == name:
            started = time.perf_counter()
            converted = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=example,
                                                                              objective="performance"))
            seconds = time.perf_counter() - started
            print(json.dumps({"seconds": seconds, "cached": bool((converted.report.profile or {}).get("cached"))}))
            return 0
    return 1


def torch_case(name: str, module, example, convert) -> Case:
    import torch
    case = Case(name, "torch")
    memory, performance, case.conversion = converted_pair(module, example, convert)

    def call(m):
        def run():
            with torch.no_grad():
                return m(*example)
        return run

    def autocast():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return module(*example)
    case.variants = {"fp32": call(module), "memory": call(memory.model), "performance": call(performance.model),
                     "amp": autocast}
    case.notes = _decisions(performance)
    case.returned_fp32 = performance.model is module
    return case


# ----------------------------------------------------------------------- keras model ---
def keras_case(quick: bool, convert) -> Case:
    import keras
    import numpy as np
    import tensorflow as tf
    side = 96 if quick else 224
    model = keras.applications.MobileNetV2(input_shape=(side, side, 3), alpha=0.35 if quick else 1.0, weights=None)
    x = tf.constant(np.random.default_rng(0).standard_normal((1, side, side, 3)).astype(np.float32))
    fp32 = tf.function(lambda t: model(t, training=False))
    fp32(x)  # traced and optimized before the AMP option is turned on
    options = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    amp = tf.function(lambda t: model(t, training=False))
    amp(x)
    tf.config.optimizer.set_experimental_options(options)
    case = Case(f"keras mobilenetv2 {side}px b1", "tensorflow")
    memory, performance, case.conversion = converted_pair(model, None, convert)
    # the FP32 model returned as given runs as the FP32 baseline does (a tf.function), not eagerly
    returned = fp32 if performance.model is model else performance.model
    case.variants = {"fp32": lambda: fp32(x), "memory": lambda: memory.model(x),
                     "performance": lambda: returned(x), "amp": lambda: amp(x)}
    case.notes = _decisions(performance)
    case.returned_fp32 = performance.model is model
    return case


def _decisions(converted) -> list[str]:
    profile = converted.report.profile or {}
    regions = profile.get("regions", [])
    low = sum(1 for r in regions if r["decision"] != "f32")
    notes = [f"{len(regions)} regions measured, {low} kept low, {profile.get('timer_calls', 0)} timings"]
    latency = profile.get("latency") or {}
    if latency.get("measured_ms") and latency.get("fp32_ms"):
        notes.append(f"fit measured {latency['measured_ms'] / latency['fp32_ms']:.2f}x FP32")
    if profile.get("returned") == "fp32":
        notes.append("FP32 model returned (the conversion measured slower)")
    return notes


# ----------------------------------------------------------------------- mxnet models ---
def mxnet_models(quick: bool):
    """Gluon HybridBlocks, hybridized (as a user deploys them): the MLP at batch 1 and a
    model-zoo resnet18_v1 (random weights, BatchNorm statistics calibrated) at batch 1."""
    import numpy as np
    from mixprec.dialects.mxnet import import_mxnet
    from tests import mxnet_models as mm
    mx = import_mxnet()
    rng = np.random.RandomState(0)
    mx.random.seed(0)
    d, hidden = (512, 1376) if quick else (4096, 11008)
    side = 64 if quick else 224
    mlp = mx.gluon.nn.HybridSequential(prefix="mlp_")
    with mlp.name_scope():
        mlp.add(mx.gluon.nn.Dense(hidden, in_units=d, activation="relu"), mx.gluon.nn.Dense(d, in_units=hidden))
    mlp.initialize(mx.init.Xavier())
    resnet = mx.gluon.model_zoo.vision.get_model("resnet18_v1", pretrained=False, classes=1000)
    resnet.initialize(mx.init.Xavier(magnitude=2.0))
    mm.calibrate_all_batchnorms(resnet, mx.nd.array(rng.normal(size=(4, 3, side, side)).astype(np.float32)))
    for name, block, shape in ((f"mxnet mlp {d}->{hidden}->{d} b1", mlp, (1, d)),
                               (f"mxnet resnet18_v1 {side}px b1", resnet, (1, 3, side, side))):
        x = mx.nd.array(rng.normal(size=shape).astype(np.float32))
        block.hybridize()
        block(x).wait_to_read()
        yield name, block, x


def mxnet_case(name: str, block, x, convert) -> Case:
    """FP32 (the hybridized block), mixprec memory and performance, and MXNet's own AMP
    (``mx.contrib.amp.convert_hybrid_block`` to bfloat16), each call waiting for its output."""
    from mixprec.dialects.mxnet import error_text, import_mxnet
    mx = import_mxnet()
    case = Case(name, "mxnet")
    memory, performance, case.conversion = converted_pair(block, (x,), convert)

    def call(m):
        def run():
            with mx.autograd.predict_mode():
                return m(x).wait_to_read()
        return run
    case.variants = {"fp32": call(block), "memory": call(memory.model), "performance": call(performance.model)}
    try:
        from mxnet.contrib import amp
        case.variants["amp"] = call(amp.convert_hybrid_block(block, target_dtype="bfloat16", ctx=mx.cpu()))
    except Exception as exc:  # an AMP this build cannot run: the row says so
        case.notes.append(f"mx.contrib.amp failed: {error_text(exc, 120)}")
    case.notes = _decisions(performance) + case.notes
    case.returned_fp32 = performance.model is block
    return case


# ------------------------------------------------------------------------- probe ---
def probe(quick: bool, reps: int) -> list[dict[str, Any]]:
    """BF16 vs FP32 for the MLP's two GEMMs (F.linear) at batch 1 and 4."""
    import torch
    d, hidden = (512, 1376) if quick else (4096, 11008)
    rows = []
    for batch in (1, 4):
        for k, n in ((d, hidden), (hidden, d)):
            x, w, b = torch.randn(batch, k), torch.randn(n, k), torch.randn(n)
            xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
            with torch.no_grad():
                t = interleaved({"fp32": lambda: torch.nn.functional.linear(x, w, b),
                                 "bf16": lambda: torch.nn.functional.linear(xb, wb, bb)}, reps)
            rows.append({"shape": f"{batch}x{k}->{n}", "fp32_ms": t["fp32"], "bf16_ms": t["bf16"],
                         "speedup": t["fp32"] / t["bf16"]})
    return rows


# -------------------------------------------------------------------------- main ---
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 reps: checks that everything runs")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 20, quick 3)")
    parser.add_argument("--only", default="", help="comma-separated: mlp, encoder, resnet50, keras, mxnet")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--convert-in-this-process", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.convert_in_this_process:
        return _convert_in_this_process(args.convert_in_this_process, args.quick)
    reps = args.reps or (3 if args.quick else 20)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    cache = tempfile.mkdtemp(prefix="mixprec-bench-cache-")
    os.environ["MIXPREC_CACHE_DIR"] = cache  # a cold cache: the first conversion times, the second does not
    if args.quick:
        os.environ.setdefault("MIXPREC_PROFILE_SECONDS", "0.3")

    from mixprec import machine, mix_precision
    from mixprec.config import MixedPrecisionConfig

    def convert(model, example, objective):
        """fit(model) with ``objective``; (the converted model, its seconds)."""
        config = MixedPrecisionConfig(example_inputs=example, objective=objective) if example is not None \
            else MixedPrecisionConfig(objective=objective)
        started = time.perf_counter()
        converted = mix_precision.fit(model, config=config)
        return converted, time.perf_counter() - started

    print(f"machine: {machine.summary_line()}")
    results: dict[str, Any] = {"machine": machine.env_report(probe=True), "reps": reps, "models": [], "probe": []}
    if not only or "mlp" in only:
        results["probe"] = probe(args.quick, reps)
    cases: list[Case] = []
    for name, module, example in torch_models(args.quick):
        if only and name.split()[0] not in only:
            continue
        print(f"converting {name} ...", flush=True)
        cases.append(torch_case(name, module, example, convert))
        cases[-1].conversion["fresh_process_s"] = fresh_process_seconds(name, args.quick, cache)
    if not only or "keras" in only:
        print("converting keras mobilenetv2 ...", flush=True)
        cases.append(keras_case(args.quick, convert))
    if not only or "mxnet" in only:
        for name, block, x in mxnet_models(args.quick):
            print(f"converting {name} ...", flush=True)
            cases.append(mxnet_case(name, block, x, convert))
    for case in cases:
        print(f"timing {case.name} ({reps} interleaved reps) ...", flush=True)
        times = interleaved(case.variants, reps)
        results["models"].append({"model": case.name, "framework": case.framework, "ms": times, "notes": case.notes,
                                  "conversion": case.conversion, "returned_fp32": case.returned_fp32})
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def report(results: dict[str, Any]) -> None:
    print()
    print("| model | FP32 ms | memory | performance | AMP (autocast / grappler / mx.contrib.amp) | notes |")
    print("|---|---|---|---|---|---|")
    checks = []
    for row in results["models"]:
        t = row["ms"]
        cell = {k: f"{t[k]:.2f} ({t[k] / t['fp32']:.2f}x)" if k in t else "n/a"
                for k in ("memory", "performance", "amp")}
        print(f"| {row['model']} | {t['fp32']:.2f} | {cell['memory']} | {cell['performance']} | {cell['amp']} | "
              f"{'; '.join(row['notes'])} |")
        ratio = t["performance"] / t["fp32"]
        if row.get("returned_fp32"):  # the same model object as the FP32 column: any difference is noise
            checks.append((f"{row['model']}: performance <= 1.02x FP32 (it is the FP32 model itself; measured "
                           f"{ratio:.2f}x, the noise of this run)", True))
        else:
            checks.append((f"{row['model']}: performance <= 1.02x FP32 ({ratio:.2f}x)", ratio <= 1.02))
    if results["probe"]:
        print("\n| probe (F.linear) | FP32 ms | BF16 ms | BF16 speed-up |\n|---|---|---|---|")
        for p in results["probe"]:
            print(f"| {p['shape']} | {p['fp32_ms']:.3f} | {p['bf16_ms']:.3f} | {p['speedup']:.2f}x |")
        for batch in ("1", "4"):
            shapes = [p for p in results["probe"] if p["shape"].startswith(f"{batch}x")]
            pays = sum(p["fp32_ms"] for p in shapes) / sum(p["bf16_ms"] for p in shapes) >= 1.5
            mlp = next((r for r in results["models"] if r["model"].startswith("mlp") and
                        r["model"].endswith(f"b{batch}")), None)
            if pays and mlp is not None:
                speedup = mlp["ms"]["fp32"] / mlp["ms"]["performance"]
                checks.append((f"{mlp['model']}: probe >= 1.5x, so performance >= 1.3x faster ({speedup:.2f}x)",
                               speedup >= 1.3))
    checks.extend(cache_table(results["models"]))
    print()
    for what, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {what}")


def cache_table(models: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """Print, per model, the first (cold cache) and second (warm) "performance"
    conversion, whole and profiling alone; the checks of the 10x bar on both."""
    print("\n| model | memory conversion s | performance 1st s | 2nd s | ratio | 2nd s, fresh process | ratio | "
          "profiling 1st s | 2nd s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    for row in models:
        c = row.get("conversion") or {}
        if not c:
            continue
        whole = c["first_s"] / c["second_s"]
        alone = c["profile_first_s"] / max(c["profile_second_s"], 1e-3)
        fresh = c.get("fresh_process_s")
        fresh_cells = f"{fresh:.2f} | {c['first_s'] / fresh:.1f}x" if fresh else "n/a | n/a"
        print(f"| {row['model']} | {c['memory_s']:.2f} | {c['first_s']:.2f} | {c['second_s']:.2f} | {whole:.1f}x | "
              f"{fresh_cells} | {c['profile_first_s']:.2f} | {c['profile_second_s']:.3f} | {alone:.0f}x |")
        fixed = c["second_s"] - c["profile_second_s"]
        checks.append((f"{row['model']}: second conversion >= 10x faster ({whole:.1f}x whole conversion: the "
                       f"second still spends {fixed:.2f} s outside profiling; profiling alone {alone:.0f}x, "
                       f"{c['timer_calls_second']} timings)", whole >= 10))
    return checks


if __name__ == "__main__":
    sys.exit(main())
