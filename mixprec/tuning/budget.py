"""The error budget: how far a converted model's outputs may be from the FP32 model's on
the sample inputs, as one number a search can drive to >= 0.

``margin`` is the smallest slack over all float outputs of two criteria: cosine
similarity at least ``min_cosine``, and, when ``max_flip_rate`` is set, at most that
fraction of task decisions flipped (the top-1 class of ``[N, C]`` logits, or which side
of 0.5 each value of a probability map in [0, 1] falls). A margin >= 0 meets the budget.
Framework-free: it reads numpy arrays only."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from mixprec.numerics import cosine

logger = logging.getLogger(__name__)


def flip_rate(reference: np.ndarray, converted: np.ndarray) -> float | None:
    """The fraction of task decisions that differ, or None for outputs that are neither
    logits nor a probability map."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(converted, dtype=np.float64)
    if ref.shape != got.shape or ref.size == 0:
        return 1.0
    if ref.ndim == 2 and ref.shape[1] >= 2 and not _probability_map(ref):
        return float(np.mean(np.argmax(ref, axis=1) != np.argmax(got, axis=1)))
    if _probability_map(ref):
        return float(np.mean((ref > 0.5) != (got > 0.5)))
    return None


def _probability_map(values: np.ndarray) -> bool:
    return bool(values.size) and float(values.min()) >= 0.0 and float(values.max()) <= 1.0 and values.ndim >= 3


def margin(reference: Sequence[np.ndarray], converted: Sequence[np.ndarray], min_cosine: float,
           max_flip_rate: float | None = None) -> float:
    """See the module docstring; -inf for a missing, misshapen or non-finite output."""
    if len(reference) != len(converted):
        return float("-inf")
    slack = float("inf")
    for ref, got in zip(reference, converted):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.dtype.kind not in "fc":
            continue
        a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            return float("-inf")
        slack = min(slack, cosine(a, b) - min_cosine)
        if max_flip_rate is not None:
            flips = flip_rate(ref, got)
            if flips is not None:
                slack = min(slack, max_flip_rate - flips)
    return slack if slack != float("inf") else 0.0


#: the search aims at this fraction of the allowed error (1 - min_cosine), so that what it
#: finds on the sample inputs also holds on held-out ones: on a ResNet-50 whose error is
#: spread over every conv, a fallback fitted to exactly min_cosine=0.999 on two draws gave
#: 0.99898 on a third
SEARCH_SLACK = 0.5

#: held-out rounds before the last resort (every converted node in FP32)
ROUNDS = 3

#: the kinds of generated images (``mixprec.sample_inputs.IMAGE_KINDS``) the search's draws
#: and every held-out check use; the budget holds when it holds on all. No one kind of
#: image predicts a network's error on photos from the side that matters: photo-like
#: images (the check's) read keras ResNet50's error on its photos right where smooth images
#: with independent channels read it 5x low; on a small photo-calibrated ResNet (stages of
#: 3, 4, 6, 3 blocks) a fallback fitted to photo-like draws alone gave 0.99877 on the
#: photos, fitted to both kinds 0.99982 (tests/tuning/test_budget_photos.py)
DRAW_KINDS = ("photo", "smooth")


def same_outputs(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    """Whether two draws' FP32 outputs (the adapters' flattened arrays) are identical: a
    draw that asked for another kind of image but got the same outputs (a model without
    image inputs, user-given inputs) adds nothing. Outputs, not inputs, are compared: they
    are numpy arrays for every framework (an MXNet NDArray input read element by element
    took minutes)."""
    if len(a) != len(b):
        return False
    pairs = [(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)]
    return all(x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(x, y)) for x, y in pairs)


def search_cosine(min_cosine: float) -> float:
    """The cosine the fallback search aims at on its draws: see ``SEARCH_SLACK``."""
    return 1.0 - (1.0 - float(min_cosine)) * SEARCH_SLACK


def trial_cap(converted_nodes: int, max_trials: int) -> int:
    """The trials one budget round may spend: enough for the galloping prefix search over
    the ranking and a few steps of minimizing it (2*ceil(log2 n) + 8), never more than
    ``max_trials``. When the cap stops the search, the smallest fallback that met the
    budget is used: with diffuse error (every node adds a little) minimizing the prefix
    one node at a time costs O(p log p) trials and buys little."""
    n = max(2, int(converted_nodes))
    return max(1, min(int(max_trials), 2 * (n - 1).bit_length() + 8))
