"""MXNet adapter: Gluon HybridBlocks, ``(Symbol, arg_params, aux_params)`` triples and
``prefix-symbol.json`` + ``prefix-NNNN.params`` pairs.

The converted model is a gluon SymbolBlock (what ``SymbolBlock.imports`` gives for the
saved files); MXNet's type and shape inference validate it first. Both models run on the
CPU through Gluon and their outputs are compared as float32.

Runtime capability: MXNet 1.9.1's CPU build runs bf16 through oneDNN for some ops only.
:data:`BF16_CPU` records what was measured on an AVX-512 machine (each op run alone on bf16
inputs, repeatedly, against its FP32 result). Ops measured to fail stay FP32 (they raise
"Unknown type enum 12", or, like ``transpose``, corrupt the heap); an op that was never
measured stays FP32 too, node by node, so that every converted model runs. On a CPU
without AVX-512 oneDNN runs no bf16 at all, and the ops whose bf16 kernel is oneDNN's
(:data:`ONEDNN_BF16_OPS`) stay FP32 as well: :func:`kernel_table` gives the table for the
machine it runs on, measured once a process (:func:`onednn_runs_bf16`). FP16 on the CPU
lacks Convolution and FullyConnected kernels altogether (:data:`FP16_CPU`).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from mixprec.runtimes.base import Adapter, RuntimeLimits
from mixprec.runtimes.fingerprint import Fingerprint, Unfingerprintable
from mixprec.backends import mxnet as backend
from mixprec.config import MixedPrecisionConfig
from mixprec.dialects.mxnet import META, dtype_from_mx, dtype_to_mx, import_mxnet, ndarray_to_numpy, numpy_to_ndarray
from mixprec.errors import ConfigError
from mixprec.frontends import mxnet as frontend
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Node
from mixprec.sample_inputs import InputSpec, input_bytes_limit, make_arrays, shape_ladder

logger = logging.getLogger(__name__)

mx = import_mxnet()

RUNTIME = "mxnet 1.9.1 on CPU"
SAMPLE_SEED = 0


@dataclass(frozen=True)
class KernelTable:
    """What one low precision can run on the CPU: ``ops`` measured to work,
    ``conditional`` ops that work only for some values of one attribute
    (op -> (attr, default value, working values)), ``missing`` ops measured to fail."""
    precision: str
    ops: frozenset[str]
    conditional: dict[str, tuple[str, str, frozenset[str]]] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()
    runtime: str = RUNTIME

    def why_not(self, node: Node) -> str | None:
        """Why ``node`` cannot run in this precision, or None when it can."""
        if node.op in self.missing:
            return f"{self.runtime} has no {self.precision} kernel for {node.op}"
        rule = self.conditional.get(node.op)
        if rule is not None:
            attr, default, working = rule
            value = str(node.attrs.get(attr, default))
            if value not in working:
                return f"kept f32: {self.runtime} has no {self.precision} kernel for {node.op} with {attr}={value}"
        if node.op not in self.ops and node.op not in self.conditional:
            return f"kept f32: no {self.precision} kernel for {node.op} was verified on {self.runtime}"
        return None

    def without(self, ops: frozenset[str], runtime: str) -> "KernelTable":
        """This table with ``ops`` moved to ``missing``, for the runtime called ``runtime``."""
        return KernelTable(self.precision, self.ops - ops,
                           {op: rule for op, rule in self.conditional.items() if op not in ops},
                           self.missing | ops, runtime)


#: Measured with mxnet 1.9.1 (oneDNN, avx512_bf16, no AMX): each op on bf16 inputs,
#: six runs, result within bf16 rounding of the FP32 result.
BF16_CPU = KernelTable(
    precision="bf16",
    ops=frozenset({
        "Convolution", "FullyConnected", "Deconvolution",
        "BatchNorm", "_contrib_BatchNormWithReLU", "LRN", "relu", "sigmoid", "tanh", "softmax", "log_softmax",
        "_contrib_AdaptiveAvgPooling2D", "_contrib_BilinearResize2D",
        "elemwise_add", "elemwise_sub", "elemwise_mul", "elemwise_div", "_maximum", "_minimum", "_mod",
        "_equal", "_greater", "broadcast_add", "broadcast_sub", "broadcast_mul", "broadcast_div",
        "broadcast_maximum", "broadcast_minimum", "broadcast_equal", "broadcast_greater", "broadcast_mod",
        "broadcast_power", "where", "add_n", "_plus_scalar", "_minus_scalar", "_mul_scalar", "_div_scalar",
        "abs", "sqrt", "square", "clip", "negative", "exp", "log", "erf", "rsqrt", "reciprocal", "cos",
        "Concat", "stack", "Flatten", "Reshape", "SliceChannel", "expand_dims", "slice_axis", "slice", "squeeze",
        "tile", "flip", "repeat", "SwapAxis", "depth_to_space", "broadcast_to", "_shuffle", "_copy", "BlockGrad",
        "zeros_like", "ones_like", "Embedding", "take", "SequenceMask", "mean", "sum", "max", "norm",
        "amp_cast", "amp_multicast", "Cast",
    }),
    conditional={
        "Activation": ("act_type", "relu", frozenset({"relu", "sigmoid", "tanh", "softrelu"})),
        "LeakyReLU": ("act_type", "leaky", frozenset({"leaky", "gelu", "elu"})),
        "Pooling": ("pool_type", "max", frozenset({"max", "avg"})),
    },
    missing=frozenset({
        "dot", "batch_dot", "Correlation", "transpose", "Pad", "UpSampling", "LayerNorm", "GroupNorm",
        "InstanceNorm", "L2Normalization", "Dropout", "SoftmaxActivation", "Crop",
    }),
)

#: FP16 on the CPU: "FP16 gemm on cpu not implemented" for Convolution and FullyConnected.
FP16_CPU = KernelTable(
    precision="fp16",
    ops=frozenset({"BatchNorm", "elemwise_add", "Concat", "softmax", "amp_cast", "amp_multicast"}),
    conditional={"Activation": ("act_type", "relu", frozenset({"relu"})),
                 "Pooling": ("pool_type", "max", frozenset({"max", "avg"}))},
    missing=frozenset({"Convolution", "FullyConnected", "dot", "batch_dot"}),
)

KERNELS = {"bf16": BF16_CPU, "fp16": FP16_CPU}

#: Ops of :data:`BF16_CPU` whose bf16 kernel is oneDNN's alone. oneDNN runs bf16 only on
#: AVX-512 CPUs; measured on an AVX2-only AMD EPYC, each of these fails on bf16 inputs
#: ("could not create a primitive descriptor iterator"), while the rest of the table runs.
ONEDNN_BF16_OPS = frozenset({"Convolution", "Deconvolution", "FullyConnected", "BatchNorm",
                             "_contrib_BatchNormWithReLU", "LRN", "Activation", "LeakyReLU", "Pooling"})


@functools.lru_cache(maxsize=None)
def onednn_runs_bf16() -> bool:
    """Whether MXNet runs its oneDNN bf16 kernels on this CPU: one small bf16
    FullyConnected, run once a process (a failed kernel raises MXNetError and leaves
    the engine usable)."""
    try:
        data = mx.nd.amp_cast(mx.nd.ones((2, 8)), dtype="bfloat16")
        weight = mx.nd.amp_cast(mx.nd.ones((4, 8)), dtype="bfloat16")
        out = mx.nd.FullyConnected(data, weight, no_bias=True, num_hidden=4)
        mx.nd.amp_cast(out, dtype="float32").asnumpy()
    except mx.base.MXNetError as exc:
        logger.info("mxnet runs no oneDNN bf16 kernel on this CPU: %s", str(exc).splitlines()[0])
        return False
    return True


def kernel_table(precision: str) -> KernelTable | None:
    """The kernels ``precision`` has on this machine: :data:`KERNELS`' table, less the
    oneDNN bf16 kernels where this CPU cannot run them; None for a precision with no table."""
    table = KERNELS.get(precision)
    if table is None or precision != "bf16" or onednn_runs_bf16():
        return table
    return table.without(ONEDNN_BF16_OPS, f"{RUNTIME} without AVX-512 (oneDNN's bf16 kernels need it)")


class MxnetAdapter(Adapter):
    name = "mxnet"

    def __init__(self) -> None:
        self._native: dict[str, Any] = {}
        self._input_dtypes: dict[str, DType] = {}

    # ---- loading ------------------------------------------------------------------------
    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        if isinstance(model, mx.gluon.HybridBlock) and config.example_inputs is None and not config.input_shapes:
            raise ConfigError("an MXNet Gluon block needs example inputs to be traced: "
                              "MixedPrecisionConfig(example_inputs=(mx.nd.array(...),))")
        shapes = config.input_shapes if config.example_inputs is None and config.input_shapes else None
        return frontend.load(model, example_inputs=config.example_inputs, input_shapes=shapes)

    def fingerprint(self, model: Any, digest: Fingerprint) -> None:
        """A gluon block by its structure (``repr``), its blocks' code and its parameters
        by structural name (``0.weight``), shape, dtype and values; a ``(symbol,
        arg_params, aux_params)`` triple by the symbol's JSON and the parameters."""
        if isinstance(model, (tuple, list)) and len(model) == 3:
            symbol, args, aux = model
            digest.text("symbol", symbol.tojson())
            for kind, params in (("arg", args or {}), ("aux", aux or {})):
                for name in sorted(params):
                    digest.text(kind, name)
                    digest.array(host_view(params[name]))
            return
        if not isinstance(model, mx.gluon.Block):
            raise Unfingerprintable(f"a {type(model).__qualname__} is not an MXNet gluon block")
        digest.text("block", repr(model))
        stack = [model]
        while stack:
            block = stack.pop()
            digest.code(type(block))
            stack.extend(reversed(list(block._children.values())))
        params = model._collect_params_with_prefix() if hasattr(model, "_collect_params_with_prefix") \
            else model.collect_params()
        for name in sorted(params):
            param = params[name]
            try:
                data = param.data()
            except Exception as exc:  # deferred initialization: no values yet
                raise Unfingerprintable(f"parameter {name} has no value ({type(exc).__name__})") from None
            digest.text("param", name, str(param.dtype))
            digest.array(host_view(data))

    def hash_value(self, digest: Fingerprint, value: Any, where: str, depth: int) -> bool:
        if isinstance(value, mx.nd.NDArray):
            digest.array(host_view(value))
            return True
        return False

    def native(self, model: Any) -> Any:
        """A callable gluon block: the block itself, or a SymbolBlock for files and triples."""
        if isinstance(model, mx.gluon.Block):
            return model
        key = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
        if key is not None and key in self._native:
            return self._native[key]
        if key is not None:
            symbol_path, params_path = frontend.model_files(key)
            symbol = frontend.load_symbol(symbol_path)
            args, aux = frontend.read_params(params_path)
        elif isinstance(model, (tuple, list)) and len(model) == 3:
            symbol, args, aux = model
        else:
            raise ConfigError(f"cannot run an MXNet model given as {type(model).__name__}")
        block = backend.to_block(symbol, args or {}, aux or {})
        if key is not None:
            self._native[key] = block
        return block

    # ---- converting ---------------------------------------------------------------------
    def runtime_limits(self, ir_model: Model, config: MixedPrecisionConfig) -> RuntimeLimits:
        table = kernel_table(config.precision)
        ops = {node.op for node in ir_model.graph.iter_nodes()}
        nodes = {}
        for node in ir_model.graph.iter_nodes():
            if node.op in table.missing:
                continue
            why = table.why_not(node)
            if why is not None:
                nodes[node.name] = why
        return RuntimeLimits(sorted(ops & table.missing), nodes, table.runtime)

    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        symbol, args, aux = backend.emit(ir_model)
        graph = ir_model.graph
        self._input_dtypes = {v.name: v.dtype for v in graph.inputs}
        shapes = {v.name: v.shape for v in graph.inputs
                  if v.shape is not None and all(isinstance(d, int) for d in v.shape)}
        backend.validate(symbol, args, aux, self._input_dtypes, shapes)
        return backend.to_block(symbol, args, aux, [v.name for v in graph.inputs], self._input_dtypes)

    def store_native(self, native: Any, directory: Path) -> None:
        """A SymbolBlock's parameters in MXNet's own format: loading them takes a third of
        the time of making bf16 NDArrays from the IR's arrays again (the symbol is made
        from the IR, which is fast)."""
        if isinstance(native, mx.gluon.SymbolBlock):
            mx.nd.save(str(directory / _CACHED_PARAMS), {n: p.data() for n, p in native.collect_params().items()})

    def load_native(self, directory: Path, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        if not (directory / _CACHED_PARAMS).is_file():
            return self.emit_unvalidated(ir_model, config)
        loaded = mx.nd.load(str(directory / _CACHED_PARAMS))
        symbol = backend.symbol(ir_model)
        aux_names = set(symbol.list_auxiliary_states())
        args = {k: v for k, v in loaded.items() if k not in aux_names}
        aux = {k: v for k, v in loaded.items() if k in aux_names}
        graph = ir_model.graph
        self._input_dtypes = {v.name: v.dtype for v in graph.inputs}
        return backend.to_block(symbol, args, aux, [v.name for v in graph.inputs], self._input_dtypes)

    # ---- running ------------------------------------------------------------------------
    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        return next(iter(self.candidate_inputs(original, ir_model, config)))

    def candidate_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Iterator[Any]:
        """The user's sample inputs alone when given; else the example inputs, then
        generated inputs along ``shape_ladder`` (see :func:`input_specs`)."""
        if config.sample_inputs is not None:
            yield config.sample_inputs
            return
        if config.example_inputs is not None:
            yield config.example_inputs
        graph = ir_model.graph
        specs = input_specs(ir_model)
        weights = sum(v.data.nbytes for v in graph.constants.values() if v.data is not None)
        for shapes in shape_ladder(specs, given=config.input_shapes, limit_bytes=input_bytes_limit(weights)):
            arrays = make_arrays(specs, shapes, seed=SAMPLE_SEED)
            yield tuple(numpy_to_ndarray(arrays[v.name], _array_dtype(v.dtype)) for v in graph.inputs)

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        return run_block(self.native(original), inputs)

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        return run_block(converted, inputs, self._input_dtypes)

    def converted_args(self, inputs: Any) -> list[Any]:
        """``inputs`` as the NDArrays the latest emitted block is called with (cast to its input dtypes)."""
        return block_args(inputs, self._input_dtypes)

    def input_files(self, path: Path, external: bool = True) -> list[Path]:
        """The -symbol.json and -0000.params pair."""
        return list(frontend.model_files(path))

    def output_targets(self, path: Path) -> list[tuple[str, Path]]:
        return [("file", p) for p in backend.output_files(path)]

    def output_names(self, ir_model: Model) -> list[str]:
        return [v.name for v in ir_model.graph.outputs]

    # ---- saving -------------------------------------------------------------------------
    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        protected = list(frontend.model_files(input_path)) if input_path is not None else []
        backend.save(ir_model, path, protected=protected)


#: the conversion cache's file of an emitted SymbolBlock's parameters (Adapter.store_native)
_CACHED_PARAMS = "block.params"


class _DLPack:
    """A DLPack capsule as the object ``np.from_dlpack`` takes."""

    def __init__(self, capsule: Any) -> None:
        self.capsule = capsule

    def __dlpack__(self, stream: Any = None) -> Any:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def host_view(array: Any) -> np.ndarray:
    """A CPU NDArray's data as numpy without a copy (DLPack; ``asnumpy`` copies at about
    1 GB/s), or a copy where DLPack cannot carry it (bf16). Valid while ``array`` lives."""
    try:
        return np.from_dlpack(_DLPack(array.to_dlpack_for_read()))
    except (TypeError, ValueError, BufferError, AttributeError, RuntimeError, mx.base.MXNetError):
        return ndarray_to_numpy(array)


def input_specs(ir_model: Model) -> list[InputSpec]:
    """One InputSpec per graph input: the shape the model declares, except where the
    frontend guessed it (``meta["mxnet"]["input_specs"]``: guessed dims are None, so the
    ladder of conventional sizes fills them; token ids that an Embedding reads are
    integers below its table's row count, whatever dtype the input has)."""
    guessed = ir_model.meta.get(META, {}).get("input_specs", {})
    specs = []
    for value in ir_model.graph.inputs:
        hint = guessed.get(value.name)
        if hint is None:
            specs.append(InputSpec(value.name, _array_dtype(value.dtype), value.shape))
            continue
        dtype = DType.INT32 if hint.get("high") is not None else _array_dtype(value.dtype)
        specs.append(InputSpec(value.name, dtype, tuple(hint["dims"]), high=hint.get("high"), image=hint.get("image")))
    return specs


def _array_dtype(dtype: DType) -> DType:
    return DType.FLOAT32 if dtype == DType.UNKNOWN else dtype


def run_block(block: Any, inputs: Any, dtypes: Mapping[str, DType] | None = None) -> list[np.ndarray]:
    """Call ``block`` on ``inputs`` (an array, a sequence, or a dict in input order) in
    inference mode; the outputs, flattened, as numpy (floats as float32). With
    ``dtypes`` ({input name: DType}, in input order) inputs are cast to them first."""
    args = block_args(inputs, dtypes)
    with mx.autograd.predict_mode():
        out = block(*args)
    return [_to_numpy(a) for a in _flatten(out)]


def block_args(inputs: Any, dtypes: Mapping[str, DType] | None = None) -> list[Any]:
    """``inputs`` (an array, a sequence, or a dict in input order) as a list of NDArrays,
    cast to ``dtypes`` ({input name: DType}, in input order) when given."""
    args = [frontend.to_ndarray(x) for x in _as_list(inputs)]
    if dtypes:
        args = [_cast(x, d) for x, d in zip(args, dtypes.values())]
    return args


def _as_list(inputs: Any) -> list[Any]:
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    if isinstance(inputs, (tuple, list)):
        return list(inputs)
    return [inputs]


def _cast(array: Any, dtype: DType) -> Any:
    if dtype == DType.UNKNOWN or dtype_from_mx(array.dtype) == dtype:
        return array
    return array.astype(dtype_to_mx(dtype))


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return [a for item in out for a in _flatten(item)]
    return [out]


def _to_numpy(array: Any) -> np.ndarray:
    dtype = dtype_from_mx(array.dtype)
    if dtype.is_float:
        return array.astype("float32").asnumpy()
    return array.asnumpy()
