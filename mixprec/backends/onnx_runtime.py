"""Running ONNX models: onnxruntime capability probes, inference helpers, sample inputs,
and the exact low-precision emulation the output check runs.

``missing_kernels`` answers "which of these ops has no kernel for this dtype in the
installed onnxruntime?" by building a one-node model per op and creating an
InferenceSession (NOT_IMPLEMENTED means no kernel). Ops it cannot build a valid probe
for are reported missing (conservative). Answers are cached per (onnxruntime version,
provider, dtype, opset) in ``$MIXPREC_CACHE_DIR/ort_kernels.json`` (default
``~/.cache/mixprec``).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mixprec.errors import ConfigError, ConversionError, SampleInputError
from mixprec.frontends.onnx import LARGE_MODEL_BYTES, _oneline, dtype_to_onnx, onnx_name, onnx_type_string
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Node, Value
from mixprec.sample_inputs import Dim, InputSpec, check_sample_inputs, input_bytes_limit, make_arrays, shape_ladder

logger = logging.getLogger(__name__)

CACHE_FILE = "ort_kernels.json"

#: attribute values a probe cannot leave out (required by the schema or by the kernel)
_PROBE_ATTRS: dict[str, dict[str, Any]] = {
    "AveragePool": {"kernel_shape": [1, 1]},
    "MaxPool": {"kernel_shape": [1, 1]},
    "LpPool": {"kernel_shape": [1, 1]},
    "MaxRoiPool": {"pooled_shape": [1, 1]},
    "MaxUnpool": {"kernel_shape": [1, 1]},
    "GroupNormalization": {"num_groups": 1},
    "LSTM": {"hidden_size": 1},
    "GRU": {"hidden_size": 1},
    "RNN": {"hidden_size": 1},
    "Concat": {"axis": 0},
    "Cast": {"to": onnx.TensorProto.FLOAT},
    "LRN": {"size": 1},
    "Einsum": {"equation": "ij->ji"},
    "DepthToSpace": {"blocksize": 1},
    "SpaceToDepth": {"blocksize": 1},
}
#: optional inputs (by index) a probe must give for the kernel to construct
_PROBE_OPTIONAL_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (2,), "Upsample": (1,)}
#: preference order for type parameters other than the probed one
_SIDE_TYPES = ("tensor(int64)", "tensor(float)", "tensor(int32)", "tensor(bool)")


# ------------------------------------------------------------------ kernel probes ---
#: an op to probe: (domain, op_type) or (domain, op_type, attrs); domain "" is ONNX's
OpSpec = tuple[str, str] | tuple[str, str, Mapping[str, Any]]


def missing_kernels(ops: Iterable[OpSpec], dtype: DType, provider: str = "CPUExecutionProvider",
                    opset: int | None = None) -> set[str]:
    """The ops (``op`` or ``domain::op``) that ``provider`` has no kernel for when their
    main type parameter is ``dtype``. ``ops`` holds ``(domain, op_type)`` or
    ``(domain, op_type, attrs)`` tuples; ``opset`` defaults to the newest opset both onnx
    and onnxruntime support. Unprobeable ops count as missing."""
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        raise ConfigError(f"onnxruntime provider {provider!r} is not available; installed: "
                          f"{', '.join(ort.get_available_providers())}")
    opset = opset or probe_opset()
    bucket = f"{ort.__version__}|{provider}|{dtype.value}|opset{opset}"
    cache = _read_cache()
    answers = cache.get(bucket)
    if not isinstance(answers, dict):
        answers = cache[bucket] = {}
    missing: set[str] = set()
    changed = False
    for spec in ops:
        domain, op, attrs = _split_spec(spec)
        label = f"{domain}::{op}" if domain else op
        key = label if not attrs else f"{label} {json.dumps(_jsonable(attrs), sort_keys=True, default=repr)}"
        if not isinstance(answers.get(key), bool):
            answers[key] = _probe(domain, op, attrs, dtype, provider, opset)
            changed = True
        if answers[key]:
            missing.add(label)
    if changed:
        _write_cache(cache)
    return missing


def _split_spec(spec: OpSpec | str) -> tuple[str, str, dict[str, Any]]:
    if isinstance(spec, str):  # a bare op name: the default domain
        return "", spec, {}
    if len(spec) == 2:
        return spec[0] or "", spec[1], {}
    return spec[0] or "", spec[1], dict(spec[2] or {})


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, DType):
            v = v.value
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v if isinstance(v, (int, float, str, list, bool)) or v is None else repr(v)
    return out


@functools.lru_cache(maxsize=1)
def probe_opset() -> int:
    """The newest default-domain opset that both onnx and onnxruntime accept."""
    import onnxruntime as ort

    for version in range(onnx.defs.onnx_opset_version(), 12, -1):
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        try:
            ort.InferenceSession(model.SerializeToString(), _quiet_options(), providers=["CPUExecutionProvider"])
            return version
        except Exception:
            continue
    return 13


def _quiet_options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failed probes are expected; keep them off stderr
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def _probe(domain: str, op: str, attrs: dict[str, Any], dtype: DType, provider: str, opset: int) -> bool:
    """True when ``op`` has no kernel for ``dtype`` (or cannot be probed)."""
    import onnxruntime as ort

    model = build_probe_model(domain, op, attrs, dtype, opset)
    if model is None:
        logger.debug("cannot build a probe for %s::%s in %s; reporting it missing", domain, op, dtype.value)
        return True
    try:
        ort.InferenceSession(model.SerializeToString(), _quiet_options(), providers=[provider])
        return False
    except Exception as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            logger.debug("probe of %s::%s in %s failed (%s); reporting it missing", domain, op, dtype.value,
                         _oneline(exc, 200))
        return True


def build_probe_model(domain: str, op: str, attrs: Mapping[str, Any], dtype: DType,
                      opset: int) -> onnx.ModelProto | None:
    """A one-node model running ``op`` with its main type parameter (that of the first
    input whose type parameter allows it) set to ``dtype``; other inputs get int64/float
    types, shapes are left unknown and outputs untyped. If, Loop, Scan and
    ConstantOfShape have hand-made probes. None when the schema is unknown, the op needs
    an attribute the probe has no value for, or no input can take ``dtype`` at ``opset``."""
    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except Exception:
        return None
    special = _SPECIAL_PROBES.get((domain, op))
    if special is not None:
        node, inputs = special(_elem(onnx_type_string(dtype)), dtype)
        if node is None:
            return None
        return _probe_model(node, inputs, list(node.output), domain, schema, opset)
    node_attrs = {**_PROBE_ATTRS.get(op, {}), **{k: _attr(v) for k, v in attrs.items()}}
    if any(attr.required and name not in node_attrs for name, attr in schema.attributes.items()):
        return None
    probe_inputs = _probe_inputs(schema, op, onnx_type_string(dtype))
    if probe_inputs is None:
        return None
    names, inputs = probe_inputs
    Option = onnx.defs.OpSchema.FormalParameterOption
    outputs = [f"out{i}" for i, f in enumerate(schema.outputs) if f.option != Option.Optional or i == 0]
    try:
        node = helper.make_node(op, names, outputs, domain=domain, **node_attrs)
    except (TypeError, ValueError):  # an attribute value onnx.helper cannot write
        return None
    return _probe_model(node, inputs, outputs, domain, schema, opset)


def _probe_inputs(schema: Any, op: str, target: str) -> tuple[list[str], list[onnx.ValueInfoProto]] | None:
    """(node input names, graph inputs) for a probe: the main type parameter (that of the
    first input allowing ``target``) gets ``target``, other parameters int64/float/...;
    optional inputs are left out unless the kernel needs them. None when no input takes
    ``target``."""
    constraints = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}
    main = next((f.type_str for f in schema.inputs if target in constraints.get(f.type_str, ())), None)
    if main is None:
        return None
    Option = onnx.defs.OpSchema.FormalParameterOption
    wanted_optional = _PROBE_OPTIONAL_INPUTS.get(op, ())
    names: list[str] = []
    inputs: list[onnx.ValueInfoProto] = []
    for index, formal in enumerate(schema.inputs):
        if formal.option == Option.Optional and index not in wanted_optional:
            names.append("")
            continue
        allowed = constraints.get(formal.type_str, [formal.type_str])
        type_str = target if formal.type_str == main else _side_type(allowed)
        if type_str is None:
            return None
        names.append(f"in{index}")
        inputs.append(helper.make_tensor_value_info(f"in{index}", _elem(type_str), None))
    while names and names[-1] == "":
        names.pop()
    return names, inputs


def _probe_model(node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto], outputs: list[str], domain: str,
                 schema: Any, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph([node], "probe", inputs, [onnx.ValueInfoProto(name=n) for n in outputs])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, schema.since_version)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return model


def _vi(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def _probe_if(elem: int, dtype: DType) -> tuple[onnx.NodeProto, list[onnx.ValueInfoProto]]:
    branches = {f"{b}_branch": helper.make_graph([helper.make_node("Identity", ["x"], [f"{b}_y"])], b, [],
                                                 [_vi(f"{b}_y", elem)]) for b in ("then", "else")}
    node = helper.make_node("If", ["cond"], ["y"], **branches)
    return node, [_vi("cond", onnx.TensorProto.BOOL), _vi("x", elem)]


def _probe_loop(elem: int, dtype: DType) -> tuple[onnx.NodeProto, list[onnx.ValueInfoProto]]:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", onnx.TensorProto.BOOL, []), _vi("v_in", elem)],
        [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []), _vi("v_out", elem)])
    node = helper.make_node("Loop", ["m", "cond", "v"], ["y"], body=body)
    return node, [helper.make_tensor_value_info("m", onnx.TensorProto.INT64, []),
                  helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []), _vi("v", elem)]


def _probe_scan(elem: int, dtype: DType) -> tuple[onnx.NodeProto, list[onnx.ValueInfoProto]]:
    body = helper.make_graph([helper.make_node("Identity", ["x_t"], ["y_t"])], "body",
                             [_vi("x_t", elem)], [_vi("y_t", elem)])
    node = helper.make_node("Scan", ["x"], ["y"], body=body, num_scan_inputs=1)
    return node, [_vi("x", elem)]


def _probe_constant_of_shape(elem: int, dtype: DType) -> tuple[onnx.NodeProto | None, list[onnx.ValueInfoProto]]:
    try:
        value = numpy_helper.from_array(np.zeros(1, dtype=dtype.to_numpy()))
    except ValueError:
        return None, []
    node = helper.make_node("ConstantOfShape", ["shape"], ["y"], value=value)
    return node, [helper.make_tensor_value_info("shape", onnx.TensorProto.INT64, [1])]


_SPECIAL_PROBES = {("", "If"): _probe_if, ("", "Loop"): _probe_loop, ("", "Scan"): _probe_scan,
                   ("", "ConstantOfShape"): _probe_constant_of_shape}


def _attr(value: Any) -> Any:
    if isinstance(value, DType):
        return dtype_to_onnx(value)
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    return value


def _side_type(allowed: Sequence[str]) -> str | None:
    for preferred in _SIDE_TYPES:
        if preferred in allowed:
            return preferred
    tensors = [t for t in allowed if t.startswith("tensor(")]
    return tensors[0] if tensors else None


def _elem(type_str: str) -> int:
    return onnx.TensorProto.DataType.Value(type_str[len("tensor("):-1].upper())


# ---- cache ------------------------------------------------------------------------------
def cache_path() -> Path:
    """``$MIXPREC_CACHE_DIR/ort_kernels.json``, default ``~/.cache/mixprec/ort_kernels.json``."""
    base = os.environ.get("MIXPREC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mixprec")
    return Path(base) / CACHE_FILE


def _read_cache() -> dict[str, dict[str, bool]]:
    path = cache_path()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if isinstance(data, dict):
            return data
        logger.warning("ignoring malformed kernel cache %s", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable kernel cache %s (%s)", path, exc)
    return {}


def _write_cache(data: dict[str, dict[str, bool]]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot write the kernel cache %s (%s); probing again next time", path, exc)


# ----------------------------------------------------------------------- running ---
def run_onnxruntime(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                    provider: str = "CPUExecutionProvider") -> list[np.ndarray]:
    """Run ``proto`` in onnxruntime and return every graph output. Raises
    ConversionError when onnxruntime cannot load the model (a missing kernel is
    NOT_IMPLEMENTED) or fails running it. Large models are run from a temporary file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are raised, with onnxruntime's message
    try:
        if _size(proto) >= LARGE_MODEL_BYTES:
            from mixprec.backends.onnx import save
            with tempfile.TemporaryDirectory(prefix="mixprec-ort-") as tmp:
                path = save(proto, Path(tmp) / "model.onnx", external_data=True)
                session = ort.InferenceSession(str(path), options, providers=[provider])
                return _run_session(session, feeds)
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=[provider])
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"onnxruntime cannot load the model: {_oneline(exc, 500)}") from None
    return _run_session(session, feeds)


#: the longest one onnxruntime run of a check may take (a Loop with neither a trip count
#: nor a condition never ends); MIXPREC_RUN_TIMEOUT overrides it, in seconds
RUN_TIMEOUT_S = 300.0


def _run_session(session: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run``, stopped (RunOptions.terminate) after the run timeout: a
    ConversionError either way."""
    import threading

    import onnxruntime as ort

    limit = float(os.environ.get("MIXPREC_RUN_TIMEOUT") or RUN_TIMEOUT_S)
    run_options = ort.RunOptions()
    timer = threading.Timer(limit, lambda: setattr(run_options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        return list(session.run(None, dict(feeds), run_options))
    except Exception as exc:
        if run_options.terminate:
            raise ConversionError(f"onnxruntime did not finish running the model within {limit:.0f} s (set "
                                  "MIXPREC_RUN_TIMEOUT to allow more, or skip the check with --no-check)") from None
        raise ConversionError(f"onnxruntime failed running the model: {_oneline(exc, 500)}") from None
    finally:
        timer.cancel()


def run_reference(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``proto`` with onnx.reference.ReferenceEvaluator (slow, but runs bf16)."""
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(out) for out in ReferenceEvaluator(proto).run(None, dict(feeds))]


def _size(proto: onnx.ModelProto) -> int:
    try:
        return proto.ByteSize()
    except Exception:  # pragma: no cover
        return LARGE_MODEL_BYTES


# ---------------------------------------------------------------- sample inputs ---
#: ops whose first output has the shape of the input read at these positions (elementwise
#: ops broadcast, so a static output dim fixes an unknown input dim of the same rank)
_SAME_SHAPE_UNARY = frozenset({
    "Abs", "Acos", "Asin", "Atan", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos",
    "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax",
    "LpNormalization", "MeanVarianceNormalization", "Mish", "Neg", "Not", "PRelu", "Reciprocal", "Relu",
    "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Softmax", "Softplus", "Softsign", "Sqrt",
    "Tan", "Tanh", "ThresholdedRelu", "GroupNormalization"})
_SAME_SHAPE_BINARY = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "Sub", "Sum",
    "Where", "Xor"})
#: ops that pass integer values through unchanged on their way to an index consumer
_VALUE_PRESERVING = frozenset({"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand"})
#: (op, index input) -> data input whose dim along ``axis`` bounds the indices
_INDEX_CONSUMERS = {("Gather", 1): 0, ("GatherElements", 1): 0}
_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
#: how far the same-shape closure of a graph input is followed
_MAX_CLOSURE = 256


def input_specs(model: Model) -> list[InputSpec]:
    """One ``InputSpec`` per graph input of ``model`` (the ONNX names), its unknown dims
    resolved from what the model says about them (see ``_resolve_dims``) and ``high``
    set for integer inputs used as Gather/GatherElements indices (the table's rows).
    Raises SampleInputError for an input of a non-tensor or unknown type."""
    specs = []
    for value in model.graph.inputs:
        name = onnx_name(model, value)
        if value.dtype == DType.UNKNOWN:
            raise SampleInputError(f"input {name!r} has a non-tensor or unknown type, so no sample input can be "
                                   "made for it; give the inputs with --sample-inputs FILE.npz (sample_inputs=)")
        shape = None if value.shape is None else _resolve_dims(value)
        high = _index_bound(value) if not value.dtype.is_float and value.dtype != DType.BOOL else None
        specs.append(InputSpec(name, value.dtype, shape, high=high))
    return specs


def weight_bytes(model: Model) -> int:
    """Bytes of every constant in the model's graph tree (bounds the sample inputs)."""
    return sum(int(np.asarray(c.data).nbytes) for g in model.graph.all_graphs() for c in g.constants.values()
               if c.data is not None)


def candidate_feeds(model: Model, input_shapes: Mapping[str, Sequence[int]] | None = None,
                    seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Sample feeds to try for the output check, most likely first: the shapes of
    ``mixprec.sample_inputs.shape_ladder`` (the user's ``input_shapes`` first), filled by
    ``make_arrays``; integer inputs named like masks are all ones."""
    specs = input_specs(model)
    given = _checked_shapes(specs, input_shapes or {})
    for shapes in shape_ladder(specs, given, input_bytes_limit(weight_bytes(model))):
        feeds = make_arrays(specs, shapes, seed=seed)
        for spec in specs:
            if _MASK_NAME.search(spec.name) and not spec.dtype.is_float:
                feeds[spec.name] = np.ones_like(feeds[spec.name])
        yield feeds


def check_feeds(model: Model, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The user's sample inputs (a dict by input name, or arrays in input order), checked
    against the model's inputs (names, rank, fixed dims: ``check_sample_inputs``, a
    ConfigError naming the model's inputs); values of another dtype of the same kind
    (float64 for float32) are converted."""
    specs = {s.name: s for s in input_specs(model)}
    check_sample_inputs(feeds, [(spec.name, spec.shape) for spec in specs.values()])
    if not isinstance(feeds, Mapping):  # arrays in the order of the model's inputs
        feeds = dict(zip(specs, feeds if isinstance(feeds, (list, tuple)) else [feeds]))
    return {name: _as_input_dtype(specs[name], feeds[name]) for name in specs}


def _as_input_dtype(spec: InputSpec, value: Any) -> np.ndarray:
    array = np.asarray(value)
    wanted = np.dtype(spec.dtype.to_numpy())
    if array.dtype != wanted:
        same_kind = (spec.dtype.is_float and array.dtype.kind == "f") or \
                    (array.dtype.kind in "iu" and wanted.kind in "iu") or (array.dtype.kind == wanted.kind)
        if not same_kind:
            raise ConfigError(f"sample input {spec.name!r} is {array.dtype}, but the model's input is "
                              f"{spec.dtype.value}")
        array = array.astype(wanted)
    return array


def _checked_shapes(specs: Sequence[InputSpec], given: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ConfigError(f"input_shapes names {unknown}, which are not inputs of the model; its inputs "
                          f"are {sorted(by_name)}")
    out = {name: tuple(int(d) for d in dims) for name, dims in given.items()}
    for name, dims in out.items():
        _check_dims(by_name[name], dims, "the given shape of")
    return out


def _check_dims(spec: InputSpec, dims: tuple[int, ...], what: str) -> None:
    if spec.shape is None:
        return
    fixed = [d if isinstance(d, int) else None for d in spec.shape]
    if len(dims) != len(fixed) or any(f is not None and f != d for f, d in zip(fixed, dims)):
        declared = ",".join("?" if f is None else str(f) for f in fixed)
        raise ConfigError(f"{what} {spec.name!r} is {list(dims)}, but the model declares [{declared}]")


def _resolve_dims(value: Value) -> tuple[Dim, ...]:
    """The input's dims, each unknown one (None, ``-1``, or a name) fixed where the model
    says what it must be: a static dim of a value of the same shape downstream
    (elementwise ops, as ONNX shape inference broadcasts constants into them), the
    channels a Conv weight reads, the rows a MatMul/Gemm weight reads, or the one dim a
    Reshape to a static shape leaves open. Symbolic names stay names otherwise."""
    dims: list[Dim] = [None if isinstance(d, int) and d < 0 else d for d in value.shape]
    for current in _same_shape_closure(value, len(dims)):
        if current is not value and current.shape is not None:
            for axis, dim in enumerate(current.shape):
                if not _fixed(dims[axis]) and _fixed(dim):
                    dims[axis] = dim
        for node, index in current.uses():
            for axis, dim in _dims_from_consumer(node, index, dims).items():
                if not _fixed(dims[axis]):
                    dims[axis] = dim
    return tuple(dims)


def _fixed(dim: Dim) -> bool:
    return isinstance(dim, int) and dim >= 0


def _same_shape_closure(value: Value, rank: int) -> list[Value]:
    """``value`` and the values computed from it by elementwise ops that keep its rank."""
    seen, order, todo = {id(value)}, [value], [value]
    while todo and len(order) < _MAX_CLOSURE:
        current = todo.pop()
        for node, index in current.uses():
            if node.domain or not node.outputs:
                continue
            if node.op in _SAME_SHAPE_UNARY and index == 0 or node.op in _SAME_SHAPE_BINARY:
                out = node.outputs[0]
                if out.shape is not None and len(out.shape) == rank and id(out) not in seen:
                    seen.add(id(out))
                    order.append(out)
                    todo.append(out)
    return order


def _dims_from_consumer(node: Node, index: int, dims: list[Dim]) -> dict[int, int]:
    """Dims of the input a consumer fixes (axis -> size); see ``_resolve_dims``."""
    if node.domain:
        return {}
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    wshape = weight.shape if weight is not None and weight.shape is not None else None
    rank = len(dims)
    if index != 0 or wshape is None or not all(_fixed(d) for d in wshape):
        return {}
    if node.op == "Conv" and rank >= 3 and len(wshape) == rank:
        return {1: int(wshape[1]) * int(node.attrs.get("group", 1))}
    if node.op == "ConvTranspose" and rank >= 3 and len(wshape) == rank:
        return {1: int(wshape[0])}
    if node.op == "MatMul" and rank >= 2 and len(wshape) >= 2:
        return {rank - 1: int(wshape[-2])}
    if node.op == "Gemm" and rank == 2 and len(wshape) == 2:
        k = wshape[1] if node.attrs.get("transB", 0) else wshape[0]
        return {0 if node.attrs.get("transA", 0) else 1: int(k)}
    if node.op == "Reshape" and weight is not None and weight.is_constant and weight.data is not None:
        return _reshape_dims(dims, np.asarray(weight.data).reshape(-1), bool(node.attrs.get("allowzero", 0)))
    return {}


def _reshape_dims(dims: list[Dim], target: np.ndarray, allowzero: bool) -> dict[int, int]:
    """A Reshape to a fully static target fixes the product of the input's dims: one
    unknown dim is solved (two when one of them is the batch, taken as 1)."""
    if target.size == 0 or np.any(target < 0) or (np.any(target == 0) and not allowzero):
        return {}
    total = int(np.prod(target, dtype=np.int64))
    unknown = [axis for axis, d in enumerate(dims) if not _fixed(d)]
    out = {}
    if len(unknown) == 2 and unknown[0] == 0:
        out[0] = 1
        unknown = unknown[1:]
    if len(unknown) != 1:
        return {}
    known = int(np.prod([d for d in dims if _fixed(d)] or [1], dtype=np.int64)) * out.get(0, 1)
    if known == 0 or total % known:
        return {}
    out[unknown[0]] = total // known
    return out


def _index_bound(value: Value) -> int | None:
    """The rows of the smallest table ``value`` indexes (through Cast/Reshape/...), or
    None when it indexes none."""
    bounds: list[int] = []
    seen = {id(value)}
    todo = [value]
    while todo:
        current = todo.pop()
        for node, index in current.uses():
            data_at = _INDEX_CONSUMERS.get((node.op, index)) if not node.domain else None
            if data_at is not None:
                data = node.inputs[data_at]
                axis = int(node.attrs.get("axis", 0))
                if data is not None and data.shape is not None and -len(data.shape) <= axis < len(data.shape) \
                        and _fixed(data.shape[axis]):
                    bounds.append(int(data.shape[axis]))
            elif node.op in _VALUE_PRESERVING and index == 0 and not node.domain and node.outputs:
                out = node.outputs[0]
                if id(out) not in seen:
                    seen.add(id(out))
                    todo.append(out)
    return min(bounds) if bounds else None


# ------------------------------------------------------------- bf16 emulation ---
_LOW_ELEMS = {onnx.TensorProto.BFLOAT16: DType.BFLOAT16, onnx.TensorProto.FLOAT16: DType.FLOAT16}


def low_precision_dtypes(proto: onnx.ModelProto) -> set[DType]:
    """The low-precision float types (bf16, f16) any tensor, value or cast of ``proto``
    uses (its graph tree included)."""
    found: set[int] = set()
    for graph in _graphs(proto.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                found.add(vi.type.tensor_type.elem_type)
        found.update(t.data_type for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    found.add(attr.t.data_type)
                elif attr.name in _DTYPE_ATTRS and attr.type == onnx.AttributeProto.INT:
                    found.add(attr.i)
    return {_LOW_ELEMS[e] for e in found if e in _LOW_ELEMS}


def run_emulated(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 lows: Iterable[DType] | None = None) -> list[np.ndarray]:
    """Run ``proto`` in onnxruntime on its exact float32 emulation (``emulate_in_float``
    for each low-precision type it uses); feeds of a low-precision graph input are given
    as float32 (they are exact). Raises ConversionError like ``run_onnxruntime``."""
    lows = sorted(low_precision_dtypes(proto) if lows is None else set(lows), key=lambda d: d.value)
    model = proto
    for low in lows:
        model = emulate_in_float(model, low)
    low_inputs = {vi.name for vi in proto.graph.input if vi.type.tensor_type.elem_type in
                  {dtype_to_onnx(d) for d in lows}}
    fed = {k: (np.asarray(v).astype(np.float32) if k in low_inputs else v) for k, v in feeds.items()}
    return run_onnxruntime(model, fed)


#: INT attributes that name an output element type (Cast's ``to``, EyeLike's ``dtype``, ...)
_DTYPE_ATTRS = ("to", "dtype")


def emulate_in_float(proto: onnx.ModelProto, low: DType = DType.BFLOAT16) -> onnx.ModelProto:
    """A float32 copy of ``proto`` that onnxruntime's CPU provider can run, computing
    exactly the values of the low-precision model (as a CPU kernel that accumulates in
    float32 and rounds its result once does):

    - every initializer, tensor attribute and declared value of type ``low`` becomes
      float32 (exact: float32 holds every bf16/f16 value);
    - casts to ``low`` (and ``dtype`` attributes naming it) become float32, and every
      node output of type ``low`` is rounded to ``low`` and back
      (``Cast(to=low) -> Cast(to=float)``) where it is produced, so every value any
      consumer reads is the low-precision value;
    - the arithmetic inside each op runs in float32, rounded once at its output.

    It differs from ``onnx.reference.ReferenceEvaluator`` only where the evaluator's
    numpy kernels round inside an op (see tests/test_onnx_check.py): both round every
    value where it is produced."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    low_elem, f32 = dtype_to_onnx(low), onnx.TensorProto.FLOAT
    types: dict[str, int] = {}
    for graph in _graphs(model.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
    for graph in _graphs(model.graph):
        _emulate_graph(graph, types, low_elem, f32)
    return model


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _emulate_graph(graph: onnx.GraphProto, types: dict[str, int], low: int, f32: int) -> None:
    for i, init in enumerate(graph.initializer):
        if init.data_type == low:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == low:
            vi.type.tensor_type.elem_type = f32
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.name in _DTYPE_ATTRS and attr.type == onnx.AttributeProto.INT and attr.i == low:
                attr.i = f32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == low:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        nodes.append(node)
        for k, name in enumerate(node.output):
            if name and types.get(name) == low:
                raw = f"{name}__computed"
                node.output[k] = raw
                nodes.append(helper.make_node("Cast", [raw], [f"{name}__rounded"], to=low))
                nodes.append(helper.make_node("Cast", [f"{name}__rounded"], [name], to=f32))
    del graph.node[:]
    graph.node.extend(nodes)
