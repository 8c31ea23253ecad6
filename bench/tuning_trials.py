"""Trials the accuracy tuning needs on digits-trained MLPs with k planted sensitive Adds
((h + 4096) - 4096, the same op type as the innocent bias Adds), tolerable_loss 0.01, in
each framework (the models of tests/tuning/digits_models.py).

    PYTHONPATH=. .venv/bin/python bench/tuning_trials.py [--frameworks onnx,torch,tensorflow,mxnet]
                                                         [--sizes 10,40,160] [--ks 1,2,4]

Prints a markdown table: framework, layers, k, converted nodes n, trials, the bound
2*ceil(log2 n) + 4k + 4, the one-node-at-a-time search's trials (measured on ONNX before
the group-testing search replaced it; quoted from issue 10), FP32 fallbacks, duplicates
skipped, seconds."""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.config import AccuracyCriterion  # noqa: E402
from tests.tuning.digits_models import FRAMEWORKS, mlp_spec  # noqa: E402

#: trials of the one-node-at-a-time search (ONNX, the same kind of models), by (layers, k)
ONE_AT_A_TIME = {(10, 1): 7, (40, 1): 22, (160, 1): 82, (10, 2): 21, (40, 2): 74, (160, 2): 284,
                 (10, 4): 26, (40, 4): 83, (160, 4): 308}


def row(framework: str, layers: int, k: int) -> str:
    """One table row: tune the planted MLP in ``framework`` and count."""
    fw = FRAMEWORKS[framework]
    model = fw.build(mlp_spec(layers, sorted(random.Random(layers + k).sample(range(layers), k))))
    start = time.perf_counter()
    result = mix_precision.fit(model, MixedPrecisionConfig(accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01),
                                                           **fw.config(model)), eval_func=fw.top1)
    seconds = time.perf_counter() - start
    tuning = result.report.tuning
    n = sum(1 for d in result.report.nodes if d.category != "cast")
    return (f"| {framework} | {layers} | {k} | {n} | {len(tuning['trials'])} | {2 * math.ceil(math.log2(n)) + 4 * k + 4} "
            f"| {ONE_AT_A_TIME.get((layers, k), '')} | {len(tuning['fallback_nodes'])} | "
            f"{tuning['duplicates_skipped']} | {seconds:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default=",".join(sorted(FRAMEWORKS)))
    parser.add_argument("--sizes", default="10,40,160")
    parser.add_argument("--ks", default="1,2,4")
    args = parser.parse_args(argv)
    print("| framework | layers | k | n | trials | bound | one node at a time | fallbacks | duplicates skipped "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for framework in args.frameworks.split(","):
        for layers in map(int, args.sizes.split(",")):
            for k in map(int, args.ks.split(",")):
                print(row(framework, layers, k), flush=True)


if __name__ == "__main__":
    main()
