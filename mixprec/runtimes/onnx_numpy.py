"""The output check's runtime for large ONNX graphs: direct numpy kernels for the common
ops (``onnx_numpy_kernels``) and onnx.reference's for the rest, driven node by node,
low-precision types emulated in float32.

Why: onnxruntime pays 14-26 us a node to create a session, whatever the options, and more
than linearly (mixprec/runtimes/onnx_segments.py cuts big graphs for that reason). On the
100k-node transformer-like graph of ``bench/scale.py`` its FP32 run took 4.3 s and the run
of the converted model's float32 emulation 14.5 s (building the emulation, 250k nodes, and
its sessions), where this runner takes about 1.5 s and 1.7 s (building its plan 0.9 s,
running 0.45 s); on the 10k graph the whole check takes 0.3 s instead of 1.5 s.

When (``suited``): at least ``MIN_NODES`` nodes, every one a standard op of ``OPS``
(elementwise, matmul, normalizations, reductions and data movement, whose reference kernels
are vectorized numpy; no convolution, pooling, recurrence or control flow, which are slow or
absent there), no local functions, and at most ``MAX_WEIGHT_BYTES`` of initializers (they
are held in memory, low-precision ones widened to float32).

Exactness: the same values ``emulate_in_float`` makes onnxruntime compute: every value
of the low-precision type is held as the float32 of it (exact), each op computes in float32,
and its outputs declared of the low type are rounded to it (round to nearest even, as
onnxruntime's Cast) where they are produced; a Cast or an op that yields the low type
itself (a tensor attribute) is widened exactly. The kernels differ from onnxruntime's (numpy
against MLAS) only in float32 rounding: on the 100k graph both emulations read cosine
0.99996 / 0.99997 to the FP32 outputs."""
from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping

import numpy as np
import onnx

from mixprec.backends import onnx as backend
from mixprec.dialects.onnx import NodeTable
from mixprec.runtimes import onnx_numpy_kernels
from mixprec.ir.dtypes import DType
from mixprec.ir.gcpause import paused_gc

logger = logging.getLogger(__name__)

#: below this many nodes onnxruntime, the runtime the model is for, runs them (its sessions
#: then cost a few tenths of a second); from here its session costs more than this whole run
MIN_NODES = 5000
#: initializers held in memory (float32) at most
MAX_WEIGHT_BYTES = 512 << 20
#: standard ops with vectorized reference kernels
OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Cos", "CumSum", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf",
    "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "Greater",
    "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "LogSoftmax", "MatMul", "Max", "Mean", "Min", "Mod", "Mul", "Neg", "Not", "Or",
    "Pad", "Pow", "PRelu", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Round",
    "ScatterElements", "ScatterND", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softmax",
    "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "Transpose", "Trilu", "Unsqueeze",
    "Where", "Xor"})
#: ops whose float outputs copy input elements: of low-precision inputs, low-precision outputs
_EXACT_OPS = frozenset({
    "Abs", "Concat", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "Max", "Min", "Neg",
    "ReduceMax", "ReduceMin", "Relu", "Reshape", "Slice", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze",
    "Where"})
#: the numpy type a value declared of a low-precision ONNX type is rounded to
_ROUNDING = {onnx.TensorProto.BFLOAT16: DType.BFLOAT16.to_numpy(), onnx.TensorProto.FLOAT16: np.dtype(np.float16)}
_LOW_NUMPY = frozenset(_ROUNDING.values())


def suited(proto: onnx.ModelProto, table: NodeTable | None = None) -> str | None:
    """None when this runner should run ``proto`` (see the module docstring); else why not.
    ``table``: what the emitter wrote or the lowering read of its nodes (``NodeTable``),
    read instead of the protos where it covers them."""
    nodes = proto.graph.node
    if len(nodes) < MIN_NODES:
        return f"{len(nodes)} nodes (onnxruntime below {MIN_NODES})"
    if proto.functions:
        return "the model has local functions"
    written = table is not None and table.covers(proto)
    kinds = {(row[1], row[0]) for row in table.rows} if written else set()
    kinds.update((node.domain, node.op_type) for node in (nodes[:table.start] if written else nodes))
    for domain, op in sorted(kinds):
        if domain not in ("", "ai.onnx") or op not in OPS:
            return f"op {domain + '.' if domain else ''}{op} has no fast reference kernel"
    weights = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    if weights > MAX_WEIGHT_BYTES:
        return f"{weights >> 20} MiB of weights (at most {MAX_WEIGHT_BYTES >> 20} MiB are held as float32)"
    return None


class NumpyRunner:
    """One model, ready to run many times: its float32 weights, one reference kernel per
    distinct (op, attributes, inputs given) -- nodes alike share one, so a 100k-node graph
    of a few dozen kinds of node makes a few dozen -- and its plan: per node the values it
    reads, how each output is rounded, and the values it reads last (freed after it).
    ``proto`` holds its weights (a file's model loaded with its external data; pending data
    of an emitted model is resolved here). ``table``: what the emitter wrote or the lowering
    read of its nodes (``NodeTable``), read instead of the NodeProtos where it covers them
    (the same names, attributes and types; reading 121k protos back costs about a second)."""

    def __init__(self, proto: onnx.ModelProto, table: NodeTable | None = None) -> None:
        with paused_gc():  # a plan of long-lived tuples
            self._build(backend.resolved(proto), table)

    def _build(self, proto: onnx.ModelProto, table: NodeTable | None) -> None:
        graph = proto.graph
        types = _LazyTypes(graph)  # every declared element type, read only for onnx.reference kernels
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.weights = {init.name: _widened(_initializer(init)) for init in graph.initializer}
        written = table is not None and table.covers(proto)
        start = table.start if written else len(graph.node)
        protos = graph.node
        # per node: (op, domain, inputs, outputs, attribute key or None, its outputs' low types or _DECLARED)
        nodes = [(node.op_type, node.domain, tuple(node.input), tuple(node.output), None, _DECLARED)
                 for node in protos[:start]]
        if written:
            lows_of: dict[Any, Any] = {None: _DECLARED}  # output dtypes -> their low types (a few distinct)
            for op, domain, inputs, outputs, attrs, dtypes in table.rows:
                lows = lows_of.get(dtypes, lows_of)
                if lows is lows_of:
                    lows = lows_of[dtypes] = _written_lows(dtypes)
                nodes.append((op, domain, inputs, outputs, attrs, lows))
        last_read: dict[str, int] = {}
        for index, row in enumerate(nodes):
            for name in row[2]:
                last_read[name] = index
        keep = {vi.name for vi in graph.output}
        freed_after: dict[int, list[str]] = {}
        for name, index in last_read.items():
            if name and name not in keep and name not in self.weights:
                freed_after.setdefault(index, []).append(name)
        # the declared low types, for the nodes whose types the table does not hold
        low_types = _low_types(graph) if any(row[5] is _DECLARED for row in nodes) else {}
        kernels: dict[Any, tuple[bool, Any]] = {}
        self.plan = []
        for index, (op, domain, inputs, outputs, attrs, lows) in enumerate(nodes):
            if attrs is None:  # read from the proto
                attributes = protos[index].attribute
                attrs = b"".join(a.SerializeToString() for a in attributes) if attributes else b""
            key = (op, domain, tuple(map(bool, inputs)) if "" in inputs else len(inputs), len(outputs), attrs)
            made = kernels.get(key)
            if made is None:
                made = kernels[key] = _make_kernel(proto, protos[index], types, opset)
            # per output the low type it is rounded to (None: none is)
            if op in _EXACT_OPS:
                lows = None
            elif lows is _DECLARED:
                lows = tuple(low_types.get(name) for name in outputs) if low_types and (
                    outputs[0] in low_types if len(outputs) == 1 else any(name in low_types for name in outputs)) \
                    else None
            self.plan.append((made[0], made[1], inputs, outputs, lows, freed_after.get(index, ())))
        self.kernels = len(kernels)
        self.direct = sum(1 for step in self.plan if step[0])
        self.outputs = [vi.name for vi in graph.output]

    def __len__(self) -> int:
        return len(self.plan)

    def run(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """The outputs on ``feeds`` (low-precision outputs as float32, exact)."""
        env: dict[str, Any] = {"": None}
        env.update(self.weights)
        env.update({k: _widened(np.asarray(v)) for k, v in feeds.items()})
        with np.errstate(all="ignore"):  # as onnxruntime: log(0) is -inf, no warning
            return self._run(env)

    def _run(self, env: dict[str, Any]) -> list[np.ndarray]:
        ndarray, asarray = np.ndarray, np.asarray
        for direct, kernel, inputs, outputs, lows, freed in self.plan:
            if direct:  # one named output, an array or a numpy scalar
                value = kernel(*[env[name] for name in inputs])
                if value.__class__ is not ndarray:
                    value = asarray(value)
                if lows is not None or value.dtype in _LOW_NUMPY:
                    value = _rounded(value, lows[0] if lows is not None else None)
                env[outputs[0]] = value
            else:
                values = kernel.run(*[env[name] for name in inputs])
                for position, (name, value) in enumerate(zip(outputs, values)):
                    if name:  # an omitted output: "" stays the omitted input
                        env[name] = _rounded(value, lows[position] if lows is not None else None) \
                            if isinstance(value, ndarray) else value
            for name in freed:
                del env[name]
        return [np.asarray(env[name]) for name in self.outputs]


class _LazyTypes(Mapping[str, int]):
    """Value name -> its declared ONNX element type (initializers, inputs, outputs,
    value_info), read from the graph on first use: only kernels of onnx.reference need it."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._graph = graph
        self._types: dict[str, int] | None = None

    def _all(self) -> dict[str, int]:
        if self._types is None:
            graph = self._graph
            types = {init.name: init.data_type for init in graph.initializer}
            for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
                if vi.type.HasField("tensor_type"):
                    types[vi.name] = vi.type.tensor_type.elem_type
            self._types = types
        return self._types

    def __getitem__(self, name: str) -> int:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


#: a plan row's low types are the proto's declared ones (looked up by output name)
_DECLARED = object()
#: the numpy type a value of a low-precision IR dtype is rounded to
_WRITTEN_ROUNDING = {DType.BFLOAT16: _ROUNDING[onnx.TensorProto.BFLOAT16],
                     DType.FLOAT16: _ROUNDING[onnx.TensorProto.FLOAT16]}


def _written_lows(dtypes: tuple[DType, ...]) -> tuple[np.dtype | None, ...] | None:
    """Per output of a written node the low type it is rounded to; None when none is."""
    lows = tuple([_WRITTEN_ROUNDING.get(dtype) for dtype in dtypes])
    return lows if any(low is not None for low in lows) else None


def _low_types(graph: onnx.GraphProto) -> dict[str, np.dtype]:
    """Values declared of a low-precision float type -> the numpy type they are rounded to
    (the element type read alone: a non-tensor type reads 0, no low type)."""
    low: dict[str, np.dtype] = {}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        rounding = _ROUNDING.get(vi.type.tensor_type.elem_type)
        if rounding is not None:
            low[vi.name] = rounding
    for init in graph.initializer:
        rounding = _ROUNDING.get(init.data_type)
        if rounding is not None:
            low[init.name] = rounding
    return low


#: element types read straight from raw_data (little-endian, as ONNX stores them)
_RAW_NUMPY = {onnx.TensorProto.FLOAT: np.dtype("<f4"), onnx.TensorProto.BFLOAT16: DType.BFLOAT16.to_numpy(),
              onnx.TensorProto.FLOAT16: np.dtype("<f2"), onnx.TensorProto.INT64: np.dtype("<i8"),
              onnx.TensorProto.INT32: np.dtype("<i4")}


def _initializer(init: onnx.TensorProto) -> np.ndarray:
    """The initializer's values: an inline raw_data tensor of a common type read with
    ``np.frombuffer`` (numpy_helper's checks cost 7 us a tensor, 0.25 s on 32k weights), any
    other as the backend reads it."""
    dtype = _RAW_NUMPY.get(init.data_type)
    if dtype is not None and init.data_location == onnx.TensorProto.DEFAULT and init.HasField("raw_data"):
        raw = init.raw_data
        shape = tuple(init.dims)
        count = 1
        for dim in shape:
            count *= dim
        if len(raw) == count * dtype.itemsize:
            return np.frombuffer(raw, dtype).reshape(shape)
    return np.asarray(backend.initializer_array(init))


def _rounded(value: np.ndarray, low: np.dtype | None) -> np.ndarray:
    """``value`` as the runner holds it: a value of a low type as its float32 (exact), a
    float value declared of a low type (``low``) rounded to it, then widened."""
    if value.dtype in _LOW_NUMPY:  # a Cast to the low type, or a tensor attribute of it: exact
        return value.astype(np.float32)
    if low is not None and value.dtype.kind == "f":
        return value.astype(low).astype(np.float32)
    return value


class _GatherElements:
    """GatherElements as ``np.take_along_axis`` (the reference kernel uses ``np.choose``,
    which takes at most 32 choices: it fails on real index tensors)."""

    def __init__(self, node: onnx.NodeProto) -> None:
        self.axis = next((a.i for a in node.attribute if a.name == "axis"), 0)

    def run(self, data: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray]:
        axis = self.axis % data.ndim
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


#: ops run by mixprec's own kernels where the reference one cannot take real inputs
_OWN_KERNELS = {"GatherElements": _GatherElements}


def _make_kernel(proto: onnx.ModelProto, node: onnx.NodeProto, types: Mapping[str, int],
                 opset: int) -> tuple[bool, Any]:
    """(True, a direct kernel of ``onnx_numpy_kernels``) where one computes ``node``, else
    (False, mixprec's own or onnx.reference's kernel object, whose ``run`` returns a tuple)."""
    own = _OWN_KERNELS.get(node.op_type)
    if own is not None:
        return False, own(node)
    reference: list[Any] = []

    def run_reference(*inputs: Any) -> tuple:
        if not reference:  # made on first use: most direct kernels never need it
            reference.append(_kernel(proto, node, types))
        return reference[0].run(*inputs)
    direct = onnx_numpy_kernels.kernel(node, opset, run_reference)
    if direct is not None:
        return True, direct
    return False, _kernel(proto, node, types)


def _kernel(proto: onnx.ModelProto, node: onnx.NodeProto, types: Mapping[str, int]) -> Any:
    """onnx.reference's kernel of ``node``: the one node of a model with the model's opsets
    and the types of its inputs (some kernels are chosen by them)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    inputs = [helper.make_tensor_value_info(n, types[n], None) if n in types else helper.make_empty_tensor_value_info(n)
              for n in dict.fromkeys(node.input) if n]
    outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
    graph = helper.make_graph([node], "node", inputs, outputs)
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return ReferenceEvaluator(model).rt_nodes_[0]


def _is_low(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype in _LOW_NUMPY


def _widened(array: np.ndarray) -> np.ndarray:
    """Low-precision float arrays as float32 (exact); others as they are."""
    return array.astype(np.float32) if _is_low(array) else array


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * 4
