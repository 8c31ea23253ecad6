"""Sample inputs that fit a model, framework-free.

A frontend or adapter describes each graph input as an ``InputSpec`` (its dtype, its dims
as far as the model says — ints, symbolic names, or None for unknown/-1 — and, for integer
inputs that index a table, the table size). ``shape_ladder`` turns the specs into a short
sequence of concrete shape assignments to try, in order: the user's ``input_shapes`` win;
dims the model fixes stay; a symbolic name gets one value everywhere it appears; unknown
dims follow a ladder of conventional sizes (batch 1; image sides 224, 320, 640, 32;
sequence lengths 16, 128). ``make_arrays`` fills one assignment with seeded values in the
range each input's consumers accept; images (``InputSpec.is_image``) get values with the
statistics of a normalized photo (``photo_like_image``: a power-law spectrum, colour channels
that share most of their content, standardized), since i.i.d. noise makes a classifier's
softmax peaky and over-estimates how well a conversion does on real images.
The caller runs the FP32 model on each candidate until one runs with finite outputs.

Invariants: every candidate respects the bytes bound (``input_bytes_limit``), derived from
the model's own weights so a declared ``[1000, 1000000]`` input cannot make the check
allocate gigabytes; a spec whose fixed dims alone exceed it raises ``SampleInputError``.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mixprec.errors import ConfigError, SampleInputError
from mixprec.ir.dtypes import DType

logger = logging.getLogger(__name__)

SEED = 0
#: conventional sizes for an unknown image side (the first that the FP32 model runs on wins)
IMAGE_SIDES = (224, 320, 640, 32)
#: conventional sizes for an unknown sequence length
SEQUENCE_LENGTHS = (16, 128)
#: the smallest bound on all sample inputs together, whatever the weights
MIN_INPUT_BYTES = 64 << 20
#: sample images (``photo_like_image``) are random-phase fields whose amplitude spectrum falls
#: as 1/f**IMAGE_ALPHA, as the bundled photos' does (resized to 96-320 px: 1.2-1.6 per
#: octave), and whose colour channels share a common field so that they correlate at
#: IMAGE_CHANNEL_CORRELATION (photos: 0.70-0.96). The correlation matters most: a network
#: whose BatchNorm statistics come from photos sees few colour-opponent patterns, and
#: independent channels drive it off its calibrated range (keras ResNet50, default BF16,
#: 1 - cosine on 3 draws vs photos: independent smooth 0.014 vs 0.071, these 0.074; its
#: error-budget fallback read 0.0003-0.0045 per smooth image while photos gave 0.0007-0.0017,
#: these 0.0009-0.0014; EfficientNetB0: smooth 0.20 vs photos 0.0003, these 0.003;
#: gluon mobilenet1.0: 0.0097 / 0.033 / 0.021; MobileNetV2: 0.0095 / 0.0137 / 0.0101).
#: Amplitude 1/f (alpha 1) under-estimated as the smooth images did (ResNet50 0.011)
IMAGE_ALPHA = 1.5
IMAGE_CHANNEL_CORRELATION = 0.85
#: ``smooth_image`` (the sample images before ``photo_like_image``): white noise low-passed by
#: a gaussian whose sigma is this fraction of the longer side, channels independent
IMAGE_SIGMA = 0.03

Dim = int | str | None
#: which draw of sample values ``make_arrays`` makes: 0 for the check's own inputs, others
#: for held-out inputs (``held_out``)
_VARIANT: contextvars.ContextVar[int] = contextvars.ContextVar("mixprec_sample_variant", default=0)


#: what ``make_arrays`` fills images with: "photo" (``photo_like_image``, the default),
#: "smooth" (``smooth_image``) or "noise" (i.i.d. standard normal, like any float input)
IMAGE_KINDS = ("photo", "smooth", "noise")
_IMAGE_KIND: contextvars.ContextVar[str] = contextvars.ContextVar("mixprec_image_kind", default="photo")


@contextlib.contextmanager
def image_kind(kind: str) -> Iterator[None]:
    """Within the block, ``make_arrays`` fills images with ``kind`` (one of ``IMAGE_KINDS``)."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image kind {kind!r}; one of {', '.join(IMAGE_KINDS)}")
    token = _IMAGE_KIND.set(kind)
    try:
        yield
    finally:
        _IMAGE_KIND.reset(token)


def noise_images() -> contextlib.AbstractContextManager[None]:
    """Within the block, ``make_arrays`` fills images with i.i.d. standard normal noise like
    any other float input: for models whose FP32 outputs are flat on photo-like images (a
    text detector finds nothing in them)."""
    return image_kind("noise")


@contextlib.contextmanager
def held_out(variant: int = 1) -> Iterator[None]:
    """Within the block, ``make_arrays`` draws other values (same shapes and ranges) than
    the output check's: inputs a search on the sample inputs has not seen."""
    token = _VARIANT.set(variant)
    try:
        yield
    finally:
        _VARIANT.reset(token)


@dataclass
class InputSpec:
    """One graph input as the model declares it. ``shape`` is None when even the rank is
    unknown; a dim is an int (fixed, >= 0), a str (a symbolic name shared with other
    inputs), or None (unknown, e.g. ONNX ``dim_value: -1`` or a TF ``None``). ``high``
    bounds integer values (exclusive), e.g. the rows of the embedding table the input
    indexes; ``image`` says the input is an image batch (NCHW or NHWC) when known."""
    name: str
    dtype: DType
    shape: tuple[Dim, ...] | None
    high: int | None = None
    image: bool | None = None

    def is_image(self) -> bool:
        if self.image is not None:
            return self.image
        if self.shape is None or len(self.shape) != 4 or not self.dtype.is_float:
            return False
        return self.shape[1] in (1, 3, 4) or self.shape[3] in (1, 3, 4)


def input_bytes_limit(weight_bytes: int) -> int:
    """The most bytes all sample inputs together may take: 4x the model's weights, at
    least ``MIN_INPUT_BYTES``."""
    return max(MIN_INPUT_BYTES, 4 * int(weight_bytes))


def shape_ladder(specs: Sequence[InputSpec], given: Mapping[str, Sequence[int]] | None = None,
                 limit_bytes: int | None = None) -> Iterator[dict[str, tuple[int, ...]]]:
    """Concrete shapes to try, most conventional first (see the module docstring).
    Raises SampleInputError for an input whose rank is unknown and that ``given`` does
    not name, or whose smallest candidate is over ``limit_bytes``."""
    given = {k: tuple(int(d) for d in v) for k, v in (given or {}).items()}
    unknown = [s.name for s in specs if s.shape is None and s.name not in given]
    if unknown:
        raise SampleInputError(f"the rank of input {unknown[0]!r} is unknown, so no sample input can be made; "
                               f"give its shape with --input-shape {unknown[0]}=1,3,224,224 (input_shapes=) or "
                               "the inputs with --sample-inputs FILE.npz (sample_inputs=)")
    steps = max(len(IMAGE_SIDES), len(SEQUENCE_LENGTHS))
    seen: list[dict[str, tuple[int, ...]]] = []
    too_big: int | None = None
    for step in range(steps):
        named: dict[str, int] = {}
        for spec in specs:  # symbolic names fixed by a given shape bind everywhere
            if spec.name in given and spec.shape is not None and len(spec.shape) == len(given[spec.name]):
                for dim, value in zip(spec.shape, given[spec.name]):
                    if isinstance(dim, str):
                        named.setdefault(dim, value)
        shapes = {spec.name: given.get(spec.name) or _fill(spec, step, named) for spec in specs}
        if shapes in seen:
            continue
        seen.append(shapes)
        total = sum(_nbytes(spec.dtype, shapes[spec.name]) for spec in specs)
        if limit_bytes is not None and total > limit_bytes:
            too_big = total if too_big is None else min(too_big, total)
            continue
        yield shapes
    if not seen or (too_big is not None and len(seen) == 1):
        raise SampleInputError(f"the model's declared inputs need {_human(too_big or 0)} for one sample, more than "
                               f"the {_human(limit_bytes or 0)} the output check allows for a model of this size; "
                               "give smaller inputs with --input-shape NAME=DIMS or --sample-inputs FILE.npz, "
                               "or skip the check with --no-check")


def _fill(spec: InputSpec, step: int, named: dict[str, int]) -> tuple[int, ...]:
    assert spec.shape is not None
    image = spec.is_image()
    out = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            out.append(dim)
            continue
        if isinstance(dim, str) and dim in named:
            out.append(named[dim])
            continue
        if axis == 0 and len(spec.shape) >= 2:
            value = 1
        elif image and axis == _channel_axis(spec):
            value = 3
        elif image:
            value = IMAGE_SIDES[step % len(IMAGE_SIDES)]
        else:
            value = SEQUENCE_LENGTHS[step % len(SEQUENCE_LENGTHS)]
        if isinstance(dim, str):
            named[dim] = value
        out.append(value)
    return tuple(out)


def _channel_axis(spec: InputSpec) -> int:
    assert spec.shape is not None
    return 1 if spec.shape[1] in (1, 3, 4) else 3


def make_arrays(specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]],
                seed: int = SEED) -> dict[str, np.ndarray]:
    """Seeded arrays for one shape assignment: images (``InputSpec.is_image``, 4-D) photo-like
    (``photo_like_image``) unless inside ``image_kind``/``noise_images``; other floats standard normal;
    integers in ``[0, high)`` (``high`` defaults to 2, safe for masks and type ids); bools
    True. Inside ``held_out`` the values come from another draw."""
    variant = _VARIANT.get()
    rng = np.random.default_rng([seed, variant] if variant else seed)
    kind = _IMAGE_KIND.get()
    out = {}
    for spec in specs:
        dims = tuple(int(d) for d in shapes[spec.name])
        if kind != "noise" and len(dims) == 4 and spec.dtype.is_float and spec.is_image():
            make = photo_like_image if kind == "photo" else smooth_image
            out[spec.name] = make(rng, dims, _concrete_channel_axis(spec, dims)).astype(spec.dtype.to_numpy())
        else:
            out[spec.name] = random_array(rng, spec.dtype, dims, spec.high)
    return out


def photo_like_image(rng: np.random.Generator, dims: tuple[int, ...], channel_axis: int = 1,
                     alpha: float = IMAGE_ALPHA, correlation: float = IMAGE_CHANNEL_CORRELATION) -> np.ndarray:
    """A batch of images of shape ``dims`` (NCHW when ``channel_axis`` is 1, NHWC when 3) with
    the statistics of a photo normalized by its data set's mean and std: each channel is
    ``sqrt(correlation)`` times a field shared by all channels plus ``sqrt(1 - correlation)``
    times its own, every field white noise shaped to an amplitude spectrum of
    ``1/f**alpha`` (in the frequency domain, so the images tile; no DC term); then each
    image's each channel standardized to mean 0, std 1. Float64. Images of fewer than 4
    pixels are plain standard normal noise. See ``IMAGE_ALPHA``."""
    n, c, h, w = (dims[0], dims[3], dims[1], dims[2]) if channel_axis == 3 else dims
    if h * w < 4:
        return rng.standard_normal(dims)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    radius[0, 0] = 1.0
    amplitude = radius ** -float(alpha)
    amplitude[0, 0] = 0.0
    shared = _standardized(np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, 1, h, w))) * amplitude, s=(h, w)))
    own = _standardized(np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, c, h, w))) * amplitude, s=(h, w)))
    mix = min(max(float(correlation), 0.0), 1.0) if c > 1 else 1.0
    x = _standardized(np.sqrt(mix) * shared + np.sqrt(1.0 - mix) * own)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if channel_axis == 3 else x)


def _standardized(x: np.ndarray) -> np.ndarray:
    """``x`` (N, C, H, W) with each image's each channel at mean 0, std 1 (a constant one at 0)."""
    x = x - x.mean(axis=(2, 3), keepdims=True)
    std = x.std(axis=(2, 3), keepdims=True)
    return x / np.where(std > 0, std, 1.0)


def smooth_image(rng: np.random.Generator, dims: tuple[int, ...], channel_axis: int = 1,
                 sigma: float = IMAGE_SIGMA) -> np.ndarray:
    """A batch of images of shape ``dims`` (NCHW when ``channel_axis`` is 1, NHWC when 3):
    white noise low-passed by a gaussian of ``sigma`` times the longer side, channels
    independent (the sample images before ``photo_like_image``; in the
    frequency domain, so the images tile), then each image's each channel standardized to
    mean 0, std 1 like a photo normalized by its data set's mean and std. Float64.
    Images of fewer than 4 pixels are plain standard normal noise."""
    if channel_axis == 3:
        n, h, w, c = dims
    else:
        n, c, h, w = dims
    if h * w < 4:
        return rng.standard_normal(dims)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    s = sigma * max(h, w)
    transfer = np.exp(-2.0 * np.pi ** 2 * s * s * (fy * fy + fx * fx))
    x = _standardized(np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, c, h, w))) * transfer, s=(h, w)))
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if channel_axis == 3 else x)


def _concrete_channel_axis(spec: InputSpec, dims: tuple[int, ...]) -> int:
    """1 (NCHW) or 3 (NHWC) for an image input of concrete ``dims``."""
    if spec.shape is not None and len(spec.shape) == 4 and (spec.shape[1] in (1, 3, 4) or spec.shape[3] in (1, 3, 4)):
        return _channel_axis(spec)
    if dims[1] in (1, 3, 4):
        return 1
    return 3 if dims[3] in (1, 3, 4) or dims[3] < dims[1] else 1


def random_array(rng: np.random.Generator, dtype: DType, dims: tuple[int, ...], high: int | None = None) -> np.ndarray:
    """One seeded array of ``dtype``: see ``make_arrays``."""
    np_dtype = dtype.to_numpy()
    if dtype.is_float:
        return rng.standard_normal(dims).astype(np_dtype)
    if dtype == DType.BOOL:
        return np.ones(dims, dtype=bool)
    if np.issubdtype(np_dtype, np.integer):
        return rng.integers(0, max(1, int(high or 2)), size=dims).astype(np_dtype)
    return np.zeros(dims, dtype=np_dtype)


def _nbytes(dtype: DType, dims: Sequence[int]) -> int:
    try:
        item = np.dtype(dtype.to_numpy()).itemsize
    except (TypeError, ValueError):
        item = 8
    return int(np.prod([max(0, int(d)) for d in dims], dtype=np.float64)) * item


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def check_sample_inputs(given: Any, declared: Sequence[tuple[str, Sequence[Any] | None]]) -> None:
    """ConfigError when the user's sample inputs cannot be the model's inputs: a dict
    whose names are not the declared ones, a sequence of the wrong length, or an array
    whose rank or a fixed dim differs from the declaration. ``declared`` is ``[(name,
    dims or None)]``; a dim that is not an int is free. The message lists the expected
    inputs. Adapters may call it with their own names."""
    expected = "; the model's inputs are " + ", ".join(f"{n} {_dims_text(d)}" for n, d in declared)
    if isinstance(given, dict):
        names = [n for n, _ in declared]
        keys = {_bare_name(k): k for k in given}
        missing = [n for n in names if _bare_name(n) not in keys]
        extra = [k for b, k in keys.items() if b not in {_bare_name(n) for n in names}]
        if missing or extra:
            parts = ([f"has no {', '.join(map(repr, missing))}"] if missing else []) + \
                    ([f"names unknown input(s) {', '.join(map(repr, extra))}"] if extra else [])
            raise ConfigError(f"sample_inputs {' and '.join(parts)}{expected}")
        pairs = [(n, given[keys[_bare_name(n)]], d) for n, d in declared]
    elif isinstance(given, (list, tuple)):
        if len(given) != len(declared):
            raise ConfigError(f"sample_inputs has {len(given)} array(s) for {len(declared)} input(s){expected}")
        pairs = [(n, a, d) for (n, d), a in zip(declared, given)]
    else:
        pairs = [(declared[0][0], given, declared[0][1])] if len(declared) == 1 else []
    for name, array, dims in pairs:
        shape = tuple(int(d) for d in (array.shape if hasattr(array, "shape") else np.shape(array)))
        if dims is None:
            continue
        if len(shape) != len(dims) or any(isinstance(d, int) and d >= 0 and d != s for d, s in zip(dims, shape)):
            raise ConfigError(f"sample input {name!r} has shape {list(shape)}, which does not fit {_dims_text(dims)}"
                              f"{expected}")


def _bare_name(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _dims_text(dims: Sequence[Any] | None) -> str:
    if dims is None:
        return "[unknown rank]"
    return "[" + ",".join(str(d) if isinstance(d, int) and d >= 0 else "?" if d is None or isinstance(d, int)
                          else str(d) for d in dims) + "]"
