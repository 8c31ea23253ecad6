"""A large .onnx file's structure, read without its large inline tensors.

``onnx.load`` of a file that keeps its weights inline (``raw_data``, the common case below
2 GiB) holds the file's bytes and the parsed message at once (2x the file), and every
later copy of the proto (shape inference, onnx.checker on the path) adds the model again:
a 1.07 GB model peaked at 5.2 GB. :func:`read_structure` walks the file's protobuf wire
format instead (memory-mapped, nothing decoded but field headers) and parses a copy in
which every large initializer of the main graph is an external-data reference into the
file itself (``location``: the file's own name, ``offset`` and ``length``: where its
``raw_data`` bytes lie), so the weights are read in place, one tensor at a time, like any
external data.

Invariants: the structure parses to the same model as ``onnx.load(path,
load_external_data=False)`` except that those initializers hold their data by reference
(``data_location`` EXTERNAL, the same dims, type and bytes); everything else, field order
included, is copied byte for byte; nothing is written. A file that does not parse as
expected at the wire level (groups, a length past the end, a tensor that already names
external data or holds its data twice) gives None, and the caller loads it the usual way,
which reports what is wrong with it."""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Callable, Iterator

import onnx

logger = logging.getLogger(__name__)

#: files smaller than this are parsed whole (the copy costs less than the walk)
MIN_FILE_BYTES = 64 * 2**20

# field numbers (onnx.proto3): ModelProto.graph, GraphProto.initializer, TensorProto.raw_data,
# TensorProto.external_data, TensorProto.data_location; wire types varint and length-delimited
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 7, 5, 9, 13, 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _Malformed(Exception):
    """The bytes are not the protobuf messages the walk expects."""


def read_structure(path: str | os.PathLike, min_tensor_bytes: int) -> onnx.ModelProto | None:
    """The model in ``path`` with each main-graph initializer whose ``raw_data`` holds at
    least ``min_tensor_bytes`` turned into a reference to those bytes in the file itself
    (see the module docstring); None when the file is smaller than MIN_FILE_BYTES, holds
    no such initializer, or does not walk as expected."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size < MIN_FILE_BYTES:
            return None
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            rebuilt = _model(data, path.name, min_tensor_bytes)  # slices of an mmap are copies: no views
    except (OSError, ValueError, _Malformed) as exc:
        logger.debug("%s: reading it whole (%s)", path, exc)
        return None
    if rebuilt is None:
        return None
    try:
        return onnx.ModelProto.FromString(rebuilt)
    except Exception as exc:  # protobuf DecodeError: let the usual load report it
        logger.debug("%s: the rebuilt structure does not parse (%s); reading it whole", path, exc)
        return None


def _model(view: mmap.mmap, location: str, min_bytes: int) -> bytes | None:
    def initializer(begin: int, stop: int) -> bytes | None:
        return _tensor(view, begin, stop, location, min_bytes) if stop - begin >= min_bytes else None

    def graph(begin: int, stop: int) -> bytes | None:
        return _rebuilt(view, begin, stop, _GRAPH_INITIALIZER, initializer)

    return _rebuilt(view, 0, len(view), _MODEL_GRAPH, graph)


def _rebuilt(view: mmap.mmap, begin: int, stop: int, number: int,
             rebuild: Callable[[int, int], bytes | None]) -> bytes | None:
    """The message in ``view[begin:stop]`` with each length-delimited field ``number``
    replaced by ``rebuild(value start, value end)`` where that is not None; None when no
    field was replaced."""
    parts: list[bytes] = []
    changed = False
    for field, wire, start, value, end in _fields(view, begin, stop):
        if field == number and wire == _LENGTH:
            payload = rebuild(value, end)
            if payload is not None:
                parts.append(_length_field(number, payload))
                changed = True
                continue
        parts.append(view[start:end])
    return b"".join(parts) if changed else None


def _tensor(view: mmap.mmap, begin: int, stop: int, location: str, min_bytes: int) -> bytes | None:
    """The tensor's fields without ``raw_data``, plus the reference to it; None when the
    tensor holds less than ``min_bytes`` of raw_data (it stays as it is)."""
    kept: list[bytes] = []
    raw: tuple[int, int] | None = None
    for number, wire, start, value, end in _fields(view, begin, stop):
        if number in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            return None  # already external (or odd): the usual load handles it
        if number == _TENSOR_RAW_DATA and wire == _LENGTH:
            if raw is not None:
                raise _Malformed("a tensor holds raw_data twice")
            raw = (value, end - value)
            continue
        kept.append(view[start:end])
    if raw is None or raw[1] < min_bytes:
        return None
    offset, length = raw
    reference = [_varint_field(_TENSOR_DATA_LOCATION, onnx.TensorProto.EXTERNAL)]
    for key, text in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = _length_field(1, key.encode()) + _length_field(2, text.encode())
        reference.append(_length_field(_TENSOR_EXTERNAL_DATA, entry))
    return b"".join([*kept, *reference])


def _fields(view: mmap.mmap, begin: int, stop: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, field end) of each field of the
    message in ``view[begin:stop]``."""
    pos = begin
    while pos < stop:
        start = pos
        key, pos = _read_varint(view, pos, stop)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, end = _read_varint(view, pos, stop)
            value = pos
        elif wire == _LENGTH:
            length, value = _read_varint(view, pos, stop)
            end = value + length
        elif wire == _FIXED64:
            value, end = pos, pos + 8
        elif wire == _FIXED32:
            value, end = pos, pos + 4
        else:
            raise _Malformed(f"wire type {wire} (groups are not ONNX)")
        if number == 0 or end > stop:
            raise _Malformed("a field runs past its message")
        yield number, wire, start, value, end
        pos = end


def _read_varint(view: mmap.mmap, pos: int, stop: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= stop or shift > 63:
            raise _Malformed("a truncated varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | _VARINT) + _varint(value)


def _length_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH) + _varint(len(payload)) + payload
