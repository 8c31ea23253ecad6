"""An ir.Model as bytes and back: ``dumps(model)`` / ``loads(data)``, and as a file whose
constant data is memory-mapped when read: ``write(model, path)`` / ``read(path)``.

The graph is a doubly linked node list with use-lists both ways, so pickling it as it is
recurses once per node and overflows the stack on any deep graph. Here each graph becomes
a flat table (every value once, by index; nodes as tuples of value indices; nested graphs
as tables inside their node's attributes) and loading rebuilds the links through the Graph
methods, so use-lists, producers and the name registry come out as ``Graph.clone`` makes
them. Invariants: ``dump(loads(dumps(m))) == dump(m)`` (mixprec.ir.text), node meta and
attributes and ``Model.meta`` round-trip, lazily stored constant data is read into the bytes.

The file is the pickle with every array's bytes out of band (pickle protocol 5), each at a
64-byte aligned offset: ``read`` maps the file copy-on-write, so the arrays are views of
the page cache, writable without changing the file, and reading costs no copy.

The bytes are a pickle: only load what mixprec itself wrote (the conversion cache checks
who owns its files before it loads one)."""
from __future__ import annotations

import logging
import mmap
import os
import pickle
import struct
import warnings
from typing import Any

import numpy as np

from mixprec.ir.gcpause import paused_gc
from mixprec.ir.graph import Graph, Model, Node, Value

logger = logging.getLogger(__name__)

FORMAT = ("mixprec-ir", 1)
_GRAPH = "\u0000graph"  # marks a nested graph's table inside a node attribute
_VIEW = "\u0000view"  # marks an array stored as unsigned integers of its item size


_MAGIC = b"MPIRMAP1"
_ALIGN = 64


def dumps(model: Model, buffer_callback: Any = None) -> bytes:
    """``model`` as bytes (pickle protocol 5; arrays handed to ``buffer_callback`` when
    given); the model is not changed."""
    values: list[tuple] = []
    index: dict[int, int] = {}
    with paused_gc(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree specs warn about their own pickling
        table = _graph_table(model.graph, values, index)
        return pickle.dumps((FORMAT, values, table, model.meta), protocol=5, buffer_callback=buffer_callback)


def loads(data: Any, buffers: Any = None) -> Model:
    """The Model ``dumps`` wrote. ValueError when ``data`` is not such bytes."""
    try:
        with paused_gc(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            form, values, table, meta = pickle.loads(data, buffers=buffers)
    except Exception as exc:
        raise ValueError(f"not a serialized mixprec IR ({type(exc).__name__}: {exc})") from None
    if form != FORMAT:
        raise ValueError(f"serialized IR format {form!r}, expected {FORMAT!r}")
    with paused_gc():
        made = [Value(name, dtype, shape, _restored(array)) for name, dtype, shape, array in values]
        return Model(_build(table, made, None), meta)


def write(model: Model, path: str | os.PathLike) -> int:
    """Write ``model`` to ``path`` (the caller makes it atomic); returns the bytes written."""
    buffers: list[pickle.PickleBuffer] = []
    header = dumps(model, buffers.append)
    raws = [b.raw() for b in buffers]
    offset = _aligned(len(_MAGIC) + 16 + 16 * len(raws) + len(header))
    table = []
    for raw in raws:
        table.append((offset, raw.nbytes))
        offset = _aligned(offset + raw.nbytes)
    with open(path, "wb") as handle:
        handle.write(_MAGIC + struct.pack("<QQ", len(header), len(raws)))
        handle.write(b"".join(struct.pack("<QQ", o, n) for o, n in table))
        handle.write(header)
        for (start, _), raw in zip(table, raws):
            handle.write(b"\0" * (start - handle.tell()))
            handle.write(raw)
        return handle.tell()


def read(path: str | os.PathLike) -> Model:
    """The Model ``write`` wrote, its arrays mapped from the file copy-on-write.
    ValueError when the file is not one (truncated, or another format)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < len(_MAGIC) + 16:
            raise ValueError(f"{path} is truncated")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    view = memoryview(mapped)
    if view[:len(_MAGIC)] != _MAGIC:
        raise ValueError(f"{path} is not a mixprec IR file")
    header_size, count = struct.unpack_from("<QQ", view, len(_MAGIC))
    start = len(_MAGIC) + 16
    table = [struct.unpack_from("<QQ", view, start + 16 * i) for i in range(count)]
    header_start = start + 16 * count
    if header_start + header_size > size or any(o + n > size for o, n in table):
        raise ValueError(f"{path} is truncated")
    return loads(view[header_start:header_start + header_size], [view[o:o + n] for o, n in table])


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _value_id(value: Value, values: list[tuple], index: dict[int, int]) -> int:
    key = id(value)
    found = index.get(key)
    if found is None:
        data = value.data
        found = index[key] = len(values)
        values.append((value.name, value.dtype, value.shape, _portable(data)))
    return found


def _portable(data: Any) -> Any:
    """An array as pickle can hand out of band: one of a dtype numpy does not know itself
    (ml_dtypes' bfloat16, float8, int4) as same-sized unsigned integers with its dtype beside."""
    if data is None:
        return None
    array = np.asarray(data)
    if array.dtype.num < 256 or array.dtype.itemsize not in (1, 2, 4, 8):  # numpy's own (NPY_USERDEF is 256)
        return array
    return (_VIEW, array.dtype, array.view(np.dtype(f"u{array.dtype.itemsize}")))


def _restored(data: Any) -> Any:
    if isinstance(data, tuple) and len(data) == 3 and data[0] == _VIEW:
        return data[2].view(data[1])
    return data


def _graph_table(graph: Graph, values: list[tuple], index: dict[int, int]) -> dict[str, Any]:
    ids = lambda vs: [_value_id(v, values, index) for v in vs]  # noqa: E731
    nodes = []
    for node in graph.iter_nodes():
        inputs = [-1 if v is None else _value_id(v, values, index) for v in node._inputs]
        attrs = {k: _attr_table(a, values, index) for k, a in node.attrs.items()} if node.attrs else {}
        nodes.append((node.op, node.domain, node.name, inputs, ids(node._outputs), attrs, node.meta))
    return {"name": graph.name, "framework": graph.framework, "inputs": ids(graph.inputs),
            "constants": ids(graph.constants.values()), "nodes": nodes, "outputs": ids(graph.outputs),
            "names": sorted(graph._names), "counters": dict(graph._name_counter)}


def _attr_table(attr: Any, values: list[tuple], index: dict[int, int]) -> Any:
    if isinstance(attr, Graph):
        return (_GRAPH, _graph_table(attr, values, index))
    if isinstance(attr, list) and any(isinstance(item, Graph) for item in attr):
        return [_attr_table(item, values, index) for item in attr]
    return attr


def _build(table: dict[str, Any], made: list[Value], parent: Graph | None) -> Graph:
    graph = Graph(table["name"], table["framework"], parent)
    for i in table["inputs"]:
        graph.add_input(made[i])
    for i in table["constants"]:
        graph.add_constant(made[i])
    for op, domain, name, inputs, outputs, attrs, meta in table["nodes"]:
        attrs = {k: _attr_value(a, made, graph) for k, a in attrs.items()} if attrs else None
        node = Node(op, [made[i] if i >= 0 else None for i in inputs], [made[i] for i in outputs], attrs, domain,
                    name)
        node.meta = meta
        graph.append(node)
    graph.outputs = [made[i] for i in table["outputs"]]
    graph._names |= set(table["names"])
    graph._name_counter.update(table["counters"])
    return graph


def _attr_value(attr: Any, made: list[Value], parent: Graph) -> Any:
    if isinstance(attr, tuple) and len(attr) == 2 and attr[0] == _GRAPH:
        return _build(attr[1], made, parent)
    if isinstance(attr, list) and any(isinstance(item, tuple) and len(item) == 2 and item[0] == _GRAPH
                                      for item in attr):
        return [_attr_value(item, made, parent) for item in attr]
    return attr
