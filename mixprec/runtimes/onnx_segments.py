"""Running a large ONNX graph in onnxruntime as consecutive segments.

onnxruntime's session creation grows faster than the graph: measured with onnxruntime
1.32 on a transformer-like chain with graph optimizations off, 0.4 s at 10k nodes and
9-17 s at 100k (and 197 s at 100k with the default basic optimizations). Cutting the
node list into segments of at most ``SEGMENT_NODES`` nodes and running them one after
another, each segment's outputs feeding the next, makes the cost linear, and the values
computed are the same: every node runs the same kernel on the same inputs (graph
optimizations are off, so no fusion spans a cut either way).

Invariants: segments are cut only at node boundaries of a topologically ordered main
graph; a segment's inputs are the values it reads (subgraph bodies' outer-scope reads
included) that earlier segments or the graph inputs produce, its outputs the values it
produces that a later segment or the graph's outputs read; a value is dropped once no
later segment reads it. A graph that is not topologically ordered is run whole."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from mixprec.backends import onnx as backend

logger = logging.getLogger(__name__)

#: the most nodes one onnxruntime session of a segmented run holds
SEGMENT_NODES = 5000
#: the standard ops with graph attributes (any other domain's op may have them too)
_WITH_SUBGRAPHS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


@dataclass
class Segment:
    """Nodes ``start``..``stop`` of the main graph: the names they read from outside
    (``inputs``, graph inputs or earlier segments' values; initializers excluded), the
    initializers they read, and the names later segments or the graph outputs read."""

    start: int
    stop: int
    inputs: list[str]
    initializers: list[str]
    outputs: list[str]


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The names ``node`` reads: its inputs and the outer-scope names its subgraph
    bodies read (names they use but do not define)."""
    reads = list(node.input)  # one C-level copy; omitted optional inputs ("") are rare
    if "" in reads:
        reads = [name for name in reads if name]
    if node.op_type not in _WITH_SUBGRAPHS and node.domain in ("", "ai.onnx"):
        return reads
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            reads.extend(_outer_reads(graph))
    return reads


def _outer_reads(graph: onnx.GraphProto) -> list[str]:
    defined = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    outer: list[str] = []
    for node in graph.node:
        outer.extend(name for name in node_reads(node) if name not in defined)
        defined.update(name for name in node.output if name)
    outer.extend(vi.name for vi in graph.output if vi.name not in defined)
    return outer


def plan(graph: onnx.GraphProto, max_nodes: int | None = None,
         known: Mapping[str, onnx.ValueInfoProto] | None = None) -> list[Segment] | None:
    """The segments of ``graph``'s node list (at most ``max_nodes``, default
    ``SEGMENT_NODES``, each), or None when it fits in one segment or is not
    topologically ordered (a node reads a name a later node produces). ``known`` is
    ``typed_values(graph)`` when the caller has it already."""
    max_nodes = max_nodes if max_nodes is not None else SEGMENT_NODES
    count = len(graph.node)
    if count <= max_nodes:
        return None
    # flat name lists with per-node offsets (node i: names[at[i]:at[i + 1]]): a few big
    # lists instead of one list per node keeps the garbage collector's work small
    outs, out_at, reads, read_at = _names_by_node(graph)
    produced_at: dict[str, int] = {}
    for index in range(count):
        for name in outs[out_at[index]:out_at[index + 1]]:
            if name:
                produced_at[name] = index
    last_read: dict[str, int] = {}
    for index in range(count):
        for name in reads[read_at[index]:read_at[index + 1]]:
            if produced_at.get(name, -1) >= index:
                logger.info("the graph is not topologically ordered (%s); running it whole", name)
                return None
            last_read[name] = index
    for vi in graph.output:
        last_read[vi.name] = count
    initializers = {t.name for t in graph.initializer}
    typed = set(known if known is not None else typed_values(graph)) | {vi.name for vi in graph.input}
    segments = []
    start = 0
    while start < count:
        stop = _cut(outs, out_at, start + max_nodes, last_read, typed)
        inputs: dict[str, None] = {}
        inits: dict[str, None] = {}
        for name in reads[read_at[start]:read_at[stop]]:
            if name in initializers and name not in produced_at:
                inits[name] = None
            elif produced_at.get(name, -1) < start:
                inputs[name] = None
        outputs = [name for name in outs[out_at[start]:out_at[stop]] if name and last_read.get(name, -1) >= stop]
        segments.append(Segment(start, stop, list(inputs), list(inits), outputs))
        start = stop
    return segments


def _names_by_node(graph: onnx.GraphProto) -> tuple[list[str], list[int], list[str], list[int]]:
    """(output names, their offsets, read names, their offsets) of ``graph``'s nodes:
    node i writes ``outs[out_at[i]:out_at[i + 1]]`` (omitted outputs as "") and reads
    ``node_reads(node) == reads[read_at[i]:read_at[i + 1]]``."""
    outs: list[str] = []
    out_at = [0]
    reads: list[str] = []
    read_at = [0]
    for node in graph.node:
        outs.extend(node.output)
        out_at.append(len(outs))
        reads.extend(node_reads(node))
        read_at.append(len(reads))
    return outs, out_at, reads, read_at


#: how far past the wanted cut ``_cut`` looks for a clean one (nodes)
_CUT_SLACK = 64


def _cut(outs: Sequence[str], out_at: Sequence[int], wanted: int, last_read: Mapping[str, int],
         typed: set[str]) -> int:
    """The first position at or after ``wanted`` (within ``_CUT_SLACK`` nodes) where no
    value without a declared type, made just before it, is read after it: onnxruntime
    gives such a value the type it infers, which may be one numpy has no type for (an
    emulation's bf16 rounding step). ``wanted`` itself when there is none. Node i's
    output names are ``outs[out_at[i]:out_at[i + 1]]``."""
    count = len(out_at) - 1
    if wanted >= count:
        return count
    for cut in range(wanted, min(wanted + _CUT_SLACK, count)):
        recent = outs[out_at[max(0, cut - 8)]:out_at[cut]]
        if not any(name and name not in typed and last_read.get(name, -1) >= cut for name in recent):
            return cut
    return wanted


def _value_info(name: str, array: np.ndarray | None, known: Mapping[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    if array is not None:
        elem = helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)
        return helper.make_tensor_value_info(name, elem, list(np.shape(array)))
    if name in known:
        return known[name]
    return helper.make_empty_tensor_value_info(name)


def segment_model(model: onnx.ModelProto, segment: Segment, env: Mapping[str, np.ndarray],
                  known: Mapping[str, onnx.ValueInfoProto],
                  by_name: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    """A model of ``segment``'s nodes alone: its inputs typed from the arrays in ``env``
    that will feed them, its outputs typed where ``known`` (value_info) says, its
    initializers taken from ``by_name``."""
    graph = model.graph
    nodes = graph.node[segment.start:segment.stop]
    sub = helper.make_graph(nodes, f"{graph.name}_{segment.start}",
                            [_value_info(n, env.get(n), known) for n in segment.inputs],
                            [_value_info(n, None, known) for n in segment.outputs],
                            [by_name[n] for n in segment.initializers])
    out = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out


def run_segments(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 run: Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], Sequence[np.ndarray]],
                 segments: Sequence[Segment], on_segment: Callable[[int, int], None] | None = None,
                 known: Mapping[str, onnx.ValueInfoProto] | None = None) -> list[np.ndarray]:
    """Every graph output of ``model`` on ``feeds``, computed by ``run(segment_model,
    segment_feeds)`` segment after segment; ``on_segment(i, count)`` after each."""
    graph = model.graph
    known = known if known is not None else typed_values(graph)
    env: dict[str, np.ndarray] = dict(feeds)
    last_use = _last_segment_use(segments, [vi.name for vi in graph.output])
    initializers = {t.name: t for t in graph.initializer}
    for index, segment in enumerate(segments):
        proto = segment_model(model, segment, env, known, initializers)
        outputs = run(proto, {name: env[name] for name in segment.inputs})
        env.update(zip(segment.outputs, outputs))
        for name in [n for n in env if last_use.get(n, -1) <= index]:
            del env[name]
        if on_segment is not None:
            on_segment(index + 1, len(segments))
    return [env[vi.name] if vi.name in env else backend.initializer_array(initializers[vi.name])
            for vi in graph.output]


def typed_values(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    """name -> value info, for the values and outputs of ``graph`` declared with a
    tensor element type."""
    out = {}
    for infos in (graph.value_info, graph.output):
        for vi in infos:
            elem = vi.type.tensor_type.elem_type
            if elem:
                out[vi.name] = vi
    return out


def _last_segment_use(segments: Iterable[Segment], graph_outputs: Iterable[str]) -> dict[str, int]:
    """name -> the last segment that reads it (graph outputs: never dropped)."""
    last: dict[str, int] = {}
    for index, segment in enumerate(segments):
        for name in segment.inputs:
            last[name] = index
    for name in graph_outputs:
        last[name] = 1 << 30
    return last
