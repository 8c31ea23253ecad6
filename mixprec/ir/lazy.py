"""Constant data that stays out of memory until it is asked for.

A :class:`LazyArray` describes a constant's data (numpy dtype, shape, byte count) without
holding it: :class:`FileSlice` is a byte range of a file (ONNX external data),
:class:`ProtoBytes` the ``raw_data`` of a tensor message that is already in memory, and
:class:`Converted` another lazy array converted to a float dtype element by element.
``Value.data`` materializes a lazy array (a read-only ndarray); ``Value.storage`` hands
it over as is, so that size, dtype and shape can be asked without reading and a writer
can stream it with :meth:`LazyArray.chunks`, one bounded piece at a time.

Invariants: ``shape``, ``dtype``, ``nbytes`` and ``size`` never read data; ``materialize()``
returns a read-only array equal to the data; ``chunks(max_bytes)`` yields the data's
elements in C order as consecutive 1-D pieces of at most ``max_bytes`` (at least one
element each) whose concatenation equals ``materialize().reshape(-1)``; ``reads`` counts
every materialize and every chunk read and ``materialized`` the materializations, so
tests can assert that nothing was read, or held whole.
Lazy arrays are immutable; a pass that changes a constant assigns a new array."""
from __future__ import annotations

import abc
import logging
import math
import os
from typing import Any, Iterator

import numpy as np

from mixprec.ir.dtypes import DType, convert_array

logger = logging.getLogger(__name__)

#: the largest piece :meth:`LazyArray.chunks` yields by default
CHUNK_BYTES = 64 * 2**20


class LazyArray(abc.ABC):
    """Read-only tensor data described by dtype and shape, read only when asked. A kind of
    storage defines ``_read_flat`` (and may define a faster ``_read_all``)."""

    def __init__(self, dtype: Any, shape: tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.reads = 0
        self.materialized = 0
        self._abs_max: float | None = None  # finite_abs_max, kept: the data never changes

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def materialize(self) -> np.ndarray:
        """The whole data as a read-only ndarray (counted in ``reads``)."""
        self.reads += 1
        self.materialized += 1
        out = self._read_all()
        out.setflags(write=False)
        return out

    def chunks(self, max_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The flattened data in consecutive pieces of at most ``max_bytes``."""
        step = max(1, max_bytes // max(1, self.dtype.itemsize))
        for start in range(0, self.size, step):
            self.reads += 1
            yield self._read_flat(start, min(self.size, start + step))

    def converted(self, target: DType) -> "Converted":
        """This data converted to ``target`` (mixprec.ir.dtypes.convert_array), lazily."""
        return Converted(self, target)

    def _read_all(self) -> np.ndarray:
        return self._read_flat(0, self.size).reshape(self.shape)

    @abc.abstractmethod
    def _read_flat(self, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of the flattened data, as a fresh 1-D array."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dtype}, {list(self.shape)})"


class FileSlice(LazyArray):
    """``nbytes`` bytes of ``path`` from ``offset``, little-endian elements of ``dtype``.

    ``materialize()`` returns a fresh read-only ``np.memmap`` (pages are read when touched
    and the mapping goes away with the array); ``chunks`` reads with plain file reads, so a
    streaming writer maps nothing. ``in_place``: the bytes are a model file's own inline
    data, read where they lie (not an external data file)."""

    def __init__(self, path: str | os.PathLike, offset: int, dtype: Any, shape: tuple[int, ...],
                 in_place: bool = False) -> None:
        super().__init__(dtype, shape)
        self.path = os.fspath(path)
        self.offset = int(offset)
        self.in_place = in_place

    def _read_all(self) -> np.ndarray:
        if self.size == 0:
            return np.zeros(self.shape, self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)

    def _read_flat(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.dtype.itemsize)
            return np.fromfile(handle, dtype=self.dtype, count=stop - start)


class ProtoBytes(LazyArray):
    """The ``raw_data`` bytes of a message ``holder`` (an ONNX TensorProto, kept alive
    anyway by the loaded model), decoded to numpy only when read."""

    def __init__(self, holder: Any, dtype: Any, shape: tuple[int, ...]) -> None:
        super().__init__(dtype, shape)
        self.holder = holder

    def _read_flat(self, start: int, stop: int) -> np.ndarray:
        raw = self.holder.raw_data
        itemsize = self.dtype.itemsize
        return np.frombuffer(raw, dtype=self.dtype, count=stop - start, offset=start * itemsize).copy()


class Converted(LazyArray):
    """``source`` converted to the float dtype ``target`` with ``convert_array`` (round to
    nearest even, the source's extremes saturated), one chunk at a time."""

    def __init__(self, source: LazyArray, target: DType) -> None:
        super().__init__(target.to_numpy(), source.shape)
        self.source = source
        self.target = target

    def _read_all(self) -> np.ndarray:
        return np.asarray(convert_array(self.source.materialize(), self.target))

    def _read_flat(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(convert_array(self.source._read_flat(start, stop), self.target))

    def chunks(self, max_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        ratio = max(1, self.source.dtype.itemsize // max(1, self.dtype.itemsize))
        for piece in self.source.chunks(max_bytes * ratio):
            self.reads += 1
            yield convert_array(piece, self.target)


def is_lazy(data: Any) -> bool:
    return isinstance(data, LazyArray)


def in_external_data(data: Any) -> bool:
    """True when lazy ``data`` is read from an external data file (a FileSlice that is not
    a model file's own inline data, or converted from one)."""
    while isinstance(data, Converted):
        data = data.source
    return isinstance(data, FileSlice) and not data.in_place


def finite_abs_max(data: "np.ndarray | LazyArray", max_bytes: int = CHUNK_BYTES) -> float:
    """The largest finite absolute value of float ``data`` below the source type's own
    maximum (the value convert_array saturates), read chunk by chunk (once per lazy array:
    the result is kept on it); 0.0 when none."""
    if is_lazy(data) and data._abs_max is not None:
        return data._abs_max
    best = 0.0
    pieces = data.chunks(max_bytes) if is_lazy(data) else [np.asarray(data).reshape(-1)]
    limit = np.finfo(np.float32).max
    for piece in pieces:
        piece = np.asarray(piece)
        if piece.dtype != np.float32:
            piece = piece.astype(np.float32)
        if not piece.size:
            continue
        top = max(float(piece.max()), -float(piece.min()))  # NaN when any is NaN; no |piece| temporary
        if not top < limit:  # inf, NaN or the saturated extreme: only then mask them out
            piece = np.abs(piece)
            finite = piece[np.isfinite(piece) & (piece < limit)]
            top = float(finite.max()) if finite.size else 0.0
        best = max(best, top)
    if is_lazy(data):
        data._abs_max = best
    return best


#: in-memory float32 arrays up to this many elements are checked or converted together
BATCH_ELEMENTS = 1 << 16


def batchable(data: Any) -> bool:
    """A small in-memory float32 array, cheaper handled in a batch than alone."""
    return isinstance(data, np.ndarray) and data.dtype == np.float32 and data.size <= BATCH_ELEMENTS


def exceeding(datas: "list[np.ndarray | LazyArray]", limit: float) -> list[bool]:
    """``finite_abs_max(data) > limit`` for each float data; the small in-memory float32
    arrays (``batchable``) are checked as one concatenation (25k small weights of a 100k-node
    graph: one reduction, not 25k), and alone only when that one exceeds."""
    result = [False] * len(datas)
    small = [i for i, data in enumerate(datas) if batchable(data)]
    if small and finite_abs_max(np.concatenate([datas[i].reshape(-1) for i in small])) > limit:
        for i in small:
            result[i] = finite_abs_max(datas[i]) > limit
    batched = set(small)
    for i, data in enumerate(datas):
        if i not in batched:
            result[i] = finite_abs_max(data) > limit
    return result
