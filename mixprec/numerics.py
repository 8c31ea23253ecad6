"""Comparing a converted model's outputs with the FP32 model's."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from mixprec.report import OutputCheck

logger = logging.getLogger(__name__)


def compare_outputs(names: Sequence[str], reference: Sequence[np.ndarray],
                    converted: Sequence[np.ndarray]) -> list[OutputCheck]:
    """One OutputCheck per float output: cosine similarity of the flattened tensors, max
    absolute and relative error, and for [N, C] logits the argmax agreement."""
    checks = []
    for name, ref, got in zip(names, reference, converted):
        ref = np.asarray(ref)
        got = np.asarray(got)
        if ref.dtype.kind not in "fc" and got.dtype.kind not in "fc":
            continue
        a = ref.astype(np.float64).ravel()
        b = got.astype(np.float64).ravel()
        if a.shape != b.shape:
            checks.append(OutputCheck(name, float("inf"), float("inf"), 0.0))
            continue
        diff = np.abs(a - b)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(a).max()) if a.size else 0.0
        max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf"))
        checks.append(OutputCheck(name, max_abs, max_rel, cosine(a, b), _argmax_agreement(ref, got)))
    return checks


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    if not np.all(np.isfinite(b)):
        return 0.0 if np.all(np.isfinite(a)) else float("nan")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _argmax_agreement(ref: np.ndarray, got: np.ndarray) -> float | None:
    if ref.ndim != 2 or ref.shape[1] < 2 or ref.shape != got.shape:
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(got.astype(np.float64), axis=1)))
