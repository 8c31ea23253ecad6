"""onnxruntime kernel probes: which ops the installed onnxruntime has kernels for.

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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mixprec.dialects.onnx import dtype_to_onnx, onnx_type_string
from mixprec.errors import ConfigError
from mixprec.fileio import atomic_write_text, first_line
from mixprec.ir.dtypes import DType

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
                         first_line(exc, 200))
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
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:
        logger.warning("cannot write the kernel cache %s (%s); probing again next time", path, exc)
