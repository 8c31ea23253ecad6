"""Element types of IR values, framework-neutral, with short text names (f32, bf16, ...)."""
from __future__ import annotations

import enum
import functools
import logging

import numpy as np

from mixprec.errors import MissingDependencyError

logger = logging.getLogger(__name__)


class DType(enum.Enum):
    """An element type. The value is the short name used in the IR text. Hashed by
    identity (members are singletons; Enum's own hash is a Python call, a million of them
    in the passes over a 100k-node graph)."""

    __hash__ = object.__hash__

    FLOAT32 = "f32"
    BFLOAT16 = "bf16"
    FLOAT16 = "f16"
    FLOAT64 = "f64"
    FLOAT8E4M3 = "f8e4m3"
    FLOAT8E5M2 = "f8e5m2"
    INT4 = "i4"
    INT8 = "i8"
    INT16 = "i16"
    INT32 = "i32"
    INT64 = "i64"
    UINT4 = "u4"
    UINT8 = "u8"
    UINT16 = "u16"
    UINT32 = "u32"
    UINT64 = "u64"
    BOOL = "bool"
    STRING = "str"
    COMPLEX64 = "c64"
    COMPLEX128 = "c128"
    UNKNOWN = "unk"

    @property
    def short(self) -> str:
        return self.value

    @property
    def is_float(self) -> bool:
        return self._value_ in _FLOAT_NAMES

    @property
    def is_low_precision(self) -> bool:
        return self in (DType.BFLOAT16, DType.FLOAT16)

    @classmethod
    def parse(cls, name: str) -> "DType":
        """Accepts the short name (``bf16``) or the member name (``BFLOAT16``)."""
        try:
            return cls(name)
        except ValueError:
            try:
                return cls[name.upper()]
            except KeyError:
                raise ValueError(f"unknown dtype {name!r}; expected one of "
                                 f"{', '.join(d.value for d in cls)}") from None

    def to_numpy(self) -> np.dtype:
        """The numpy dtype that holds this type's data (bf16/fp8 through ml_dtypes)."""
        known = _TO_NUMPY.get(self)
        if known is None:
            known = _TO_NUMPY[self] = self._numpy_dtype()
        return known

    def _numpy_dtype(self) -> np.dtype:
        if self in _NUMPY:
            return np.dtype(_NUMPY[self])
        if self == DType.STRING:
            return np.dtype(object)
        ml = _ml_dtypes()
        name = {DType.BFLOAT16: "bfloat16", DType.FLOAT8E4M3: "float8_e4m3fn",
                DType.FLOAT8E5M2: "float8_e5m2", DType.INT4: "int4", DType.UINT4: "uint4"}.get(self)
        if name is None:
            raise ValueError(f"{self.value} has no numpy representation")
        return np.dtype(getattr(ml, name))

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> "DType":
        dtype = np.dtype(dtype)
        for member, np_type in _NUMPY.items():
            if dtype == np.dtype(np_type):
                return member
        if dtype.kind in ("U", "S", "O"):
            return DType.STRING
        name = dtype.name
        for member, ml_name in ((DType.BFLOAT16, "bfloat16"), (DType.FLOAT8E4M3, "float8_e4m3fn"),
                                (DType.FLOAT8E5M2, "float8_e5m2"), (DType.INT4, "int4"), (DType.UINT4, "uint4")):
            if name == ml_name:
                return member
        raise ValueError(f"numpy dtype {dtype} has no IR equivalent")


_FLOATS = frozenset({DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16, DType.FLOAT64,
                     DType.FLOAT8E4M3, DType.FLOAT8E5M2})

_FLOAT_NAMES = frozenset(d.value for d in _FLOATS)

_NUMPY = {
    DType.FLOAT32: np.float32, DType.FLOAT16: np.float16, DType.FLOAT64: np.float64,
    DType.INT8: np.int8, DType.INT16: np.int16, DType.INT32: np.int32, DType.INT64: np.int64,
    DType.UINT8: np.uint8, DType.UINT16: np.uint16, DType.UINT32: np.uint32, DType.UINT64: np.uint64,
    DType.BOOL: np.bool_, DType.COMPLEX64: np.complex64, DType.COMPLEX128: np.complex128,
}
#: DType -> its numpy dtype, filled on first use (to_numpy)
_TO_NUMPY: dict[DType, np.dtype] = {}

# a -> set of types that hold every value of a exactly (used to find lossless round trips)
_EXACT_WIDENINGS = {
    DType.BOOL: {DType.INT8, DType.INT16, DType.INT32, DType.INT64, DType.UINT8, DType.UINT16,
                 DType.UINT32, DType.UINT64, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64},
    DType.BFLOAT16: {DType.FLOAT32, DType.FLOAT64},
    DType.FLOAT16: {DType.FLOAT32, DType.FLOAT64},
    DType.FLOAT32: {DType.FLOAT64},
    DType.INT8: {DType.INT16, DType.INT32, DType.INT64, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64},
    DType.UINT8: {DType.INT16, DType.INT32, DType.INT64, DType.UINT16, DType.UINT32, DType.UINT64,
                  DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64},
    DType.INT16: {DType.INT32, DType.INT64, DType.FLOAT32, DType.FLOAT64},
    DType.UINT16: {DType.INT32, DType.INT64, DType.UINT32, DType.UINT64, DType.FLOAT32, DType.FLOAT64},
    DType.INT32: {DType.INT64, DType.FLOAT64},
    DType.UINT32: {DType.INT64, DType.UINT64, DType.FLOAT64},
}


def holds_exactly(src: DType, dst: DType) -> bool:
    """True when every value of ``src`` is represented exactly in ``dst``."""
    return src == dst or dst in _EXACT_WIDENINGS.get(src, ())


def _ml_dtypes():
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - ml_dtypes ships with every framework
        raise MissingDependencyError("bf16/fp8 data needs the ml_dtypes package: pip install ml-dtypes") from exc
    return ml_dtypes


@functools.lru_cache(maxsize=None)
def finite_max(dtype: DType) -> float:
    """Largest finite value of a float dtype."""
    if dtype == DType.BFLOAT16:
        return float(_ml_dtypes().finfo(_ml_dtypes().bfloat16).max)
    return float(np.finfo(dtype.to_numpy()).max)


def convert_array(data: np.ndarray, dtype: DType, saturate_extremes: bool = True) -> np.ndarray:
    """Convert float data to ``dtype`` with round-to-nearest-even.

    Invariant: ±inf and NaN stay what they are; with ``saturate_extremes`` the source type's
    own finite extremes (±FLT_MAX, the attention-mask sentinel) map to the target's finite
    extremes instead of overflowing to ±inf. Other values beyond the target's range are the
    caller's business (assign-precision keeps such constants in FP32)."""
    target = dtype.to_numpy()
    src = np.asarray(data)
    with np.errstate(over="ignore"):  # overflow to inf is expected here and handled below
        out = src.astype(target)
    if saturate_extremes and src.dtype.kind == "f" and dtype.is_float and src.size:
        src_max = np.finfo(src.dtype).max
        tmax = finite_max(dtype)
        # two reductions tell most arrays hold no extreme (a NaN fails both tests: masked below)
        if tmax < src_max and not (-src_max < src.min() and src.max() < src_max):
            pos = src == src_max
            neg = src == -src_max
            if pos.any() or neg.any():
                out = np.where(pos, np.asarray(tmax).astype(target), out)
                out = np.where(neg, np.asarray(-tmax).astype(target), out).astype(target)
    return out
