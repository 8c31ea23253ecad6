"""PyTorch BF16: mixprec against its peers, in one process on the same models.

Compared on each model (FP32 eager is the reference):

- ``mixprec``: ``mix_precision.fit`` -> the converted module (casts only where the
  painting changes precision; weights stored in bf16);
- ``autocast``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the FP32 module
  (no converted model: it casts activations and weights on every forward);
- ``INC-style``: what Intel Neural Compressor's PyTorch bf16 conversion does -- every
  ``nn.Linear`` / ``nn.Conv2d`` is replaced by a wrapper that casts its input to bf16,
  runs a bf16 copy of the layer and casts the output back to fp32 (written here; unlike
  INC it wraps a copy, not the user's module).

Columns: dtype-changing casts executed in one forward pass (counted with a
``TorchDispatchMode``), size of the ``torch.export`` ``.pt2`` on disk, median latency of
``--runs`` forward passes after ``--warmup`` (methods interleaved round-robin, fixed
thread count; the interquartile range over the median in brackets says how noisy the
machine was) and its ratio to FP32, max abs error and cosine against FP32 over all
float outputs. Prints one Markdown table. Run:

    python bench/torch_peers.py [--runs 100] [--warmup 10] [--threads 2] [--models resnet bert linear_stack]
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import _pytree
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.backends.torch import save as save_program  # noqa: E402
from tests import torch_models as tm  # noqa: E402

logger = logging.getLogger("bench.torch_peers")

FP32, MIXPREC, AUTOCAST, INC = "FP32 eager", "mixprec", "autocast", "INC-style"
METHODS = (FP32, MIXPREC, AUTOCAST, INC)
_CAST_PACKETS = (torch.ops.aten._to_copy, torch.ops.aten.to)


# ----------------------------------------------------------------------- models ---
class LinearStack(nn.Module):
    """``depth`` square Linear layers with ReLU between them (He-scaled init)."""

    def __init__(self, width: int = 1024, depth: int = 8, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2.0 / width) ** 0.5)
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index + 1 < len(self.layers):
                x = torch.relu(x)
        return x


def linear_stack(batch: int = 64, width: int = 1024, depth: int = 8) -> tm.Built:
    model = LinearStack(width, depth).eval()
    return model, (torch.randn(batch, width, generator=torch.Generator().manual_seed(1)),)


MODELS: dict[str, tuple[str, Callable[[], tm.Built]]] = {
    "resnet": ("ResNet (width 64, 8x3x32x32)", lambda: tm.resnet(batch=8, size=32, width=64)),
    "bert": ("BERT encoder (2 layers, hidden 64, 8x32 tokens)", lambda: tm.bert(batch=8, seq=32)),
    "linear_stack": ("Linear stack (8 x 1024x1024, batch 64)", linear_stack),
}


# ------------------------------------------------------------------ INC-style wrap ---
class BF16Wrapper(nn.Module):
    """INC's ``BF16ModuleWrapper``: cast the input to bf16, run a bf16 copy of the layer,
    cast the output back to fp32."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(layer).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(torch.bfloat16)).float()


def inc_style(module: nn.Module, types: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> nn.Module:
    """A copy of ``module`` with every layer of ``types`` wrapped in :class:`BF16Wrapper`."""
    converted = copy.deepcopy(module)

    def wrap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, types):
                setattr(parent, name, BF16Wrapper(child))
            else:
                wrap(child)

    wrap(converted)
    return converted.eval()


# -------------------------------------------------------------------- measurement ---
class CastCounter(TorchDispatchMode):
    """Counts ATen casts that change a tensor's dtype (``_to_copy`` / ``to``)."""

    def __init__(self) -> None:
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket in _CAST_PACKETS and isinstance(args[0], torch.Tensor) \
                and isinstance(out, torch.Tensor) and out.dtype != args[0].dtype:
            self.casts += 1
        return out


@dataclass
class Result:
    """One method on one model."""
    method: str
    casts: int = 0
    size_bytes: int | None = None
    times: list[float] = field(default_factory=list)
    max_abs_error: float = 0.0
    cosine: float = 1.0

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range over the median: how noisy the timing was."""
        q1, _, q3 = statistics.quantiles(self.times, n=4)
        return (q3 - q1) / statistics.median(self.times)


def call(module: nn.Module, inputs: Any, autocast: bool = False) -> Any:
    """One forward pass, optionally inside a fresh bf16 CPU autocast region."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return tm.call(module, inputs)


def float_leaves(outputs: Any) -> torch.Tensor:
    """Every float output, as one flat float64 vector."""
    leaves = [t for t in _pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return torch.cat([t.detach().double().flatten() for t in leaves])


def count_casts(run: Callable[[], Any]) -> int:
    with CastCounter() as counter:
        run()
    return counter.casts


def export_size(module: nn.Module, inputs: Any, path: Path) -> int:
    """Bytes of ``module`` saved as a torch.export program."""
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
    torch.export.save(torch.export.export(module, args, kwargs), str(path))
    return path.stat().st_size


def bench_model(name: str, runs: int, warmup: int, workdir: Path) -> list[Result]:
    """Convert ``name`` every way, then measure all methods in the same process."""
    module, inputs = MODELS[name][1]()
    logger.info("%s: converting", name)
    start = time.perf_counter()
    converted = mix_precision.fit(module, config=MixedPrecisionConfig(example_inputs=inputs))
    logger.info("%s: mixprec fit took %.1f s", name, time.perf_counter() - start)
    wrapped = inc_style(module)
    runners: dict[str, Callable[[], Any]] = {
        FP32: lambda: call(module, inputs),
        MIXPREC: lambda: call(converted.model, inputs),
        AUTOCAST: lambda: call(module, inputs, autocast=True),
        INC: lambda: call(wrapped, inputs),
    }
    results = {method: Result(method) for method in METHODS}
    results[FP32].size_bytes = save_program(module, workdir / f"{name}_fp32.pt2", inputs).stat().st_size
    results[MIXPREC].size_bytes = Path(converted.save(workdir / f"{name}_mixprec.pt2")).stat().st_size
    results[INC].size_bytes = export_size(wrapped, inputs, workdir / f"{name}_inc.pt2")

    reference = float_leaves(runners[FP32]())
    for method, run in runners.items():
        result = results[method]
        result.casts = count_casts(run)
        out = float_leaves(run())
        result.max_abs_error = float((out - reference).abs().max())
        result.cosine = float(torch.nn.functional.cosine_similarity(out, reference, dim=0))
    logger.info("%s: timing %d runs after %d warm-up runs", name, runs, warmup)
    for step in range(warmup + runs):
        for method, run in runners.items():  # interleaved, so drift hits every method alike
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if step >= warmup:
                results[method].times.append(elapsed)
    return [results[m] for m in METHODS]


# ------------------------------------------------------------------------- report ---
def markdown(tables: dict[str, list[Result]]) -> str:
    lines = ["| model | method | casts / forward | .pt2 size | median ms (IQR) | latency / FP32 | max abs err | cosine |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, results in tables.items():
        fp32 = results[0]
        for r in results:
            if r.size_bytes is None:
                size = "n/a (same as FP32)"
            else:
                size = f"{r.size_bytes / 2**20:.2f} MiB ({r.size_bytes / fp32.size_bytes:.2f}x)"
            lines.append(f"| {MODELS[name][0]} | {r.method} | {r.casts} | {size} | {r.median_ms:.2f} ({100 * r.spread:.0f}%) | "
                         f"{r.median_ms / fp32.median_ms:.2f}x | {r.max_abs_error:.3g} | {r.cosine:.6f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--runs", type=int, default=100, help="timed forward passes per method")
    ap.add_argument("--warmup", type=int, default=10, help="untimed forward passes per method first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("mixprec").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            tables[name] = bench_model(name, args.runs, args.warmup, Path(tmp))
    print(f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads, median of {args.runs} runs after {args.warmup} warm-up runs\n")
    print(markdown(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
