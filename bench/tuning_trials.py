"""Trials the accuracy tuning needs on digits-trained ONNX MLPs with k planted sensitive
Adds ((h + 4096) - 4096, the same op type as the innocent bias Adds), tolerable_loss 0.01.

    PYTHONPATH=. .venv/bin/python bench/tuning_trials.py

Prints a markdown table: layers, k, converted nodes n, trials, the bound
2*ceil(log2 n) + 4k + 4, FP32 fallbacks, duplicates skipped, seconds."""
from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.config import AccuracyCriterion  # noqa: E402
from tests.tuning.digits_models import digits, onnx_mlp, onnx_top1  # noqa: E402


def main() -> None:
    _, _, x, y = digits()
    print("| layers | k | n | trials | bound | fallbacks | duplicates skipped | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for layers in (10, 40, 160):
        for k in (1, 2, 4):
            planted = sorted(random.Random(layers + k).sample(range(layers), k))
            start = time.perf_counter()
            result = mix_precision.fit(onnx_mlp(layers, planted), MixedPrecisionConfig(
                accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01)), eval_func=lambda m: onnx_top1(m, x, y))
            tuning = result.report.tuning
            n = sum(1 for d in result.report.nodes if d.category != "cast")
            print(f"| {layers} | {k} | {n} | {len(tuning['trials'])} | {2 * math.ceil(math.log2(n)) + 4 * k + 4} | "
                  f"{len(tuning['fallback_nodes'])} | {tuning['duplicates_skipped']} | "
                  f"{time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
