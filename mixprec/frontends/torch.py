"""PyTorch frontend: a ``torch.nn.Module`` (or a saved ``.pt2`` program) -> ``mixprec.ir.Model``.

Capture: ``torch.export.export`` (non-strict) followed by ``run_decompositions({})``, which
functionalizes the graph (no in-place ops, ``batch_norm`` -> its no-training kernel) but
keeps composite ops such as ``aten.linear`` and ``aten.conv2d`` whole. With
``fallback_fx=True`` a module that export cannot capture is traced with ``make_fx`` on the
real example inputs instead (see :func:`load`).

IR conventions for torch graphs and the ``Model.meta["torch"]`` keys: see ``mixprec.dialects.torch``.

The user's module is never mutated: everything happens on a deep copy in eval mode.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import operator
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from mixprec.config import TRUST_PICKLE
from mixprec.dialects.torch import (BATCH_DIM, CAST_OP, COMPLEX_TAG, INPUT_REF, META_KEY, NAME, TENSOR_LISTS_ATTR,
                                    dynamic_batch_shapes, ir_dtype, split_inputs, tensor_kind)
from mixprec.errors import ModelLoadError, UnsupportedModelError, UntrustedPickleError
from mixprec.fileio import first_line
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model, Node, Value

logger = logging.getLogger(__name__)

# Nodes that only check or set tracing state; they carry no computation. Dropping
# _assert_tensor_metadata matters: it pins a dtype that a cast-inserting pass may change.
_DROPPED_TARGETS = {torch.ops.aten._assert_tensor_metadata.default, torch._C._set_grad_enabled}
_TO_OPS = {torch.ops.aten.to.dtype, torch.ops.aten.to.dtype_layout, torch.ops.aten.to.device,
           torch.ops.aten._to_copy.default}


# ---------------------------------------------------------------------- public API ---
def load(module: torch.nn.Module, example_inputs: tuple | dict | torch.Tensor, dynamic_batch: bool = False,
         fallback_fx: bool = False) -> Model:
    """Capture ``module`` called with ``example_inputs`` (a tuple of positional arguments or a
    dict of keyword arguments) and lower it to the IR (conventions in the module docstring).

    ``dynamic_batch`` marks dim 0 of every tensor input as one shared dynamic dimension
    (the example batch must be >= 2). A module torch.export cannot capture raises
    UnsupportedModelError naming the failing construct; with ``fallback_fx=True`` it is
    traced with ``make_fx`` on the real example inputs instead: python control flow is then
    specialized to the path the example inputs take, shapes are static, and in-place ops
    are rewritten to their functional forms where that is provably safe.

    The user's module is not mutated (its copy is put in eval mode)."""
    args, kwargs = split_inputs(example_inputs)
    work = _private_copy(module)
    arg_names = _positional_names(work, len(args))
    forward_params = _forward_params(work)
    try:
        capture = _capture_export(work, args, kwargs, dynamic_batch)
        return _lower(capture, arg_names, list(kwargs), forward_params)
    except UnsupportedModelError as exc:
        if not fallback_fx:
            raise
        logger.warning("%s -- tracing with make_fx on the example inputs instead", str(exc).splitlines()[0])
    if dynamic_batch:
        logger.warning("fallback_fx traces with the example shapes; dynamic_batch is ignored")
    capture = _capture_make_fx(_private_copy(module), args, kwargs)
    return _lower(capture, arg_names, list(kwargs), forward_params)


def read_program(path: str | os.PathLike, trust_pickle: bool | None = None) -> "torch.export.ExportedProgram":
    """The ExportedProgram saved at ``path`` (``.pt2``); ModelLoadError when missing or bad.

    Invariant: unless ``trust_pickle`` (default: ``mixprec.config.TRUST_PICKLE``, which
    ``fit`` sets from ``config.trust_pickle``), nothing in the archive is unpickled in a
    way that can run code. Before torch reads it, every pickle torch would load is
    checked: weights and constants stored as pickles (``use_pickle``, custom/opaque
    objects) and sample inputs or legacy state dicts that ``torch.load(weights_only=True)``
    refuses make it an UntrustedPickleError; while torch reads it, any
    ``torch.load(weights_only=False)`` (torch's own fallback) raises the same."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    trusted = TRUST_PICKLE.get() if trust_pickle is None else bool(trust_pickle)
    if not trusted:
        _refuse_pickles(path)
    try:
        with _quiet_export_loggers(), (contextlib.nullcontext() if trusted else _weights_only_torch_load(path)):
            return torch.export.load(path)
    except UntrustedPickleError:
        raise
    except Exception as exc:  # torch raises many types for a bad archive
        raise ModelLoadError(f"{path}: not a torch.export program ({first_line(exc)})") from exc


_ARCHIVE_CONFIG_RE = re.compile(r"(?:^|/)data/(?:weights|constants)/[^/]+_(?:weights|constants)_config\.json$")
#: members torch unpickles whole: sample inputs, legacy weight/constant files, the 2.7 format
_ARCHIVE_PICKLE_RE = re.compile(r"(?:^|/)(?:data/(?:sample_inputs|weights|constants)/[^/]+\.pt"
                                r"|serialized_(?:state_dict|constants|example_inputs)\.pt)$")
_PICKLED_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")
_UNTRUSTED_ADVICE = ("unpickling it can run arbitrary code; if you trust the file's source, pass --trust-pickle "
                     "(trust_pickle=True), or re-save the program with plain tensors")


def _refuse_pickles(path: str) -> None:
    """UntrustedPickleError naming the first thing in the archive at ``path`` that only
    an unrestricted unpickler can load; nothing when it is not a zip (torch says why)."""
    import zipfile
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        return
    reasons: list[str] = []
    with archive:
        for member in archive.namelist():
            if _ARCHIVE_CONFIG_RE.search(member):
                reasons.extend(_pickled_payloads(archive, member))
            elif _ARCHIVE_PICKLE_RE.search(member):
                reason = _unsafe_pickle(archive, member)
                if reason:
                    reasons.append(reason)
    if reasons:
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        raise UntrustedPickleError(f"{path}: refusing to load it: {reasons[0]}{more}; {_UNTRUSTED_ADVICE}")


def _pickled_payloads(archive: Any, member: str) -> list[str]:
    import json
    try:
        config = json.loads(archive.read(member)).get("config", {})
    except (ValueError, AttributeError, OSError) as exc:
        raise ModelLoadError(f"{archive.filename}: {member} is not a payload config ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{archive.filename}: {member} is not a payload config")
    kind = "weight" if "/weights/" in f"/{member}" else "constant"
    found = []
    for fqn, meta in config.items():
        meta = meta if isinstance(meta, dict) else {}
        name = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or name.startswith(_PICKLED_OBJECT_PREFIXES):
            found.append(f"{kind} {fqn!r} is stored as a pickle")
    return found


def _unsafe_pickle(archive: Any, member: str) -> str | None:
    import io
    try:
        torch.load(io.BytesIO(archive.read(member)), weights_only=True)
    except Exception as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"WeightsUnpickler error: ([^.\n]+)", text)
        detail = f"it calls {found[1]}" if found and found.re.pattern.startswith("Unsupported") else \
            (found[1] if found else first_line(exc, limit=120))
        return f"{member} is a pickle that torch.load(weights_only=True) refuses ({detail})"
    return None


@contextlib.contextmanager
def _weights_only_torch_load(path: str) -> Iterator[None]:
    """Within the block, ``torch.load(..., weights_only=False)`` raises
    UntrustedPickleError and every other call is made with ``weights_only=True`` (torch
    falls back to an unrestricted load of sample inputs when the safe one fails)."""
    original = torch.load

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("weights_only") is False:
            raise UntrustedPickleError(f"{path}: refusing to load it: torch wanted to unpickle part of it without "
                                       f"weights_only; {_UNTRUSTED_ADVICE}")
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with _TORCH_LOAD_LOCK:
        torch.load = guarded
        try:
            yield
        finally:
            torch.load = original


_TORCH_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_export_loggers() -> Iterator[None]:
    """torch logs tracebacks (and malformed records) while it tries older formats."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_program(path: str | os.PathLike) -> Model:
    """Lower a program saved with ``torch.export.save`` (``.pt2``) to the IR."""
    return from_exported_program(read_program(path))


def from_exported_program(program: "torch.export.ExportedProgram") -> Model:
    """Lower an ``ExportedProgram`` (training or inference IR) to the IR."""
    capture = _capture_from_program(program, source="export")
    capture.dynamic_batch = bool(capture.batch_symbols)
    signature = program.module_call_graph[0].signature if program.module_call_graph else None
    in_spec = capture.in_spec
    n_args = in_spec.child(0).num_children if _is_args_kwargs_spec(in_spec) else 0
    kwarg_names = list(in_spec.child(1).context) if _is_args_kwargs_spec(in_spec) else []
    names = list(getattr(signature, "forward_arg_names", None) or [])
    arg_names = names[:n_args] if len(names) >= n_args else [f"arg{i}" for i in range(n_args)]
    return _lower(capture, arg_names, kwarg_names, names)


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array with the tensor's data; bf16/fp8 through ml_dtypes (shares memory
    where torch allows)."""
    t = tensor.detach().cpu().contiguous()
    dtype = ir_dtype(t.dtype)
    if dtype in (DType.BFLOAT16, DType.FLOAT16):
        return t.view(torch.int16).numpy().view(dtype.to_numpy())
    if dtype in (DType.FLOAT8E4M3, DType.FLOAT8E5M2):
        return t.view(torch.uint8).numpy().view(dtype.to_numpy())
    return t.numpy()


# ------------------------------------------------------------------------- capture ---
@dataclass
class _Capture:
    """A captured fx graph plus what it needs: placeholder roles, tensors by FQN, specs.

    Invariant: ``roles`` names every placeholder of ``graph`` as ``("input", index)`` for the
    index-th flattened user input or ``(kind, fqn)`` for a state tensor in ``tensors``;
    ``outputs`` are the fx arguments of the flattened user outputs, in ``out_spec`` order."""
    graph: fx.Graph
    roles: dict[fx.Node, tuple[str, Any]]
    tensors: dict[str, torch.Tensor]
    outputs: list[Any]
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    source: str
    dynamic_batch: bool = False
    batch_symbols: set = field(default_factory=set)


def _private_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode: capture may set modes or mutate state, never on the user's module."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    try:
        work = copy.deepcopy(module)
    except Exception as exc:
        raise UnsupportedModelError(f"cannot copy {type(module).__name__} ({first_line(exc)}); mixprec never "
                                    f"captures the user's module itself") from exc
    return work.eval()


def _signature_params(module: torch.nn.Module) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return []


def _positional_names(module: torch.nn.Module, count: int) -> list[str]:
    """Names of the first ``count`` positional parameters of ``module.forward``."""
    names = [p.name for p in _signature_params(module)
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:count]
    return names + [f"arg{i}" for i in range(len(names), count)]


def _forward_params(module: torch.nn.Module) -> list[str]:
    """Parameters of ``module.forward`` that can be passed by position, in order."""
    return [p.name for p in _signature_params(module) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _capture_export(module: torch.nn.Module, args: tuple, kwargs: dict, dynamic_batch: bool) -> _Capture:
    dynamic_shapes = dynamic_batch_shapes(args, kwargs) if dynamic_batch else None
    try:
        program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise UnsupportedModelError(_export_failure_message(module, exc, dynamic_batch)) from exc
    capture = _capture_from_program(program, source="export")
    capture.dynamic_batch = dynamic_batch
    return capture


def _capture_from_program(program: "torch.export.ExportedProgram", source: str) -> _Capture:
    try:
        program = program.run_decompositions({})
        functional = True
    except Exception as exc:  # e.g. a submodule named like a GraphModule attribute ("meta")
        logger.warning("run_decompositions failed (%s); functionalizing in-place ops by hand", first_line(exc))
        functional = False
    graph = program.graph_module.graph
    roles, tensors = _program_state(program)
    outputs = _program_outputs(program)
    if not functional:
        _functionalize_inplace(graph)
    capture = _Capture(graph, roles, tensors, outputs, program.call_spec.in_spec, program.call_spec.out_spec, source)
    capture.batch_symbols = _batch_symbols(capture)
    return capture


def _program_state(program: "torch.export.ExportedProgram") -> tuple[dict, dict]:
    from torch.export.graph_signature import InputKind
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    roles: dict[fx.Node, tuple[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    user_index = 0
    for spec in program.graph_signature.input_specs:
        node = placeholders[spec.arg.name]
        if spec.kind == InputKind.USER_INPUT:
            roles[node] = ("input", user_index)
            user_index += 1
        elif spec.kind == InputKind.PARAMETER:
            roles[node] = ("parameter", spec.target)
            tensors[spec.target] = program.state_dict[spec.target]
        elif spec.kind == InputKind.BUFFER:
            kind = "buffer" if spec.persistent else "buffer_nonpersistent"
            roles[node] = (kind, spec.target)
            source = program.state_dict if spec.persistent else program.constants
            tensors[spec.target] = source[spec.target]
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            roles[node] = ("constant", spec.target)
            tensors[spec.target] = program.constants[spec.target]
        else:
            raise UnsupportedModelError(f"exported program input {spec.arg.name!r} is a {spec.kind.name} "
                                        f"(script objects and effect tokens are not supported)")
    return roles, tensors


def _program_outputs(program: "torch.export.ExportedProgram") -> list[Any]:
    from torch.export.graph_signature import OutputKind
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = list(output_node.args[0])
    outputs = []
    for spec, value in zip(program.graph_signature.output_specs, values):
        if spec.kind != OutputKind.USER_OUTPUT:
            raise UnsupportedModelError(f"forward mutates {spec.target or spec.arg.name!r} ({spec.kind.name}); "
                                        f"mixprec captures side-effect-free inference graphs only")
        outputs.append(value)
    return outputs


def _batch_symbols(capture: _Capture) -> set:
    """Sympy symbols of dim 0 of the user inputs (named ``batch`` in the IR)."""
    symbols = set()
    for node, (kind, _) in capture.roles.items():
        val = node.meta.get("val")
        if kind == "input" and isinstance(val, torch.Tensor) and val.dim() >= 1 and isinstance(val.shape[0], torch.SymInt):
            expr = val.shape[0].node.expr
            if getattr(expr, "is_Symbol", False):
                symbols.add(expr)
    return symbols


def _export_failure_message(module: torch.nn.Module, exc: BaseException, dynamic_batch: bool) -> str:
    where = _user_frame(str(exc))
    message = f"torch.export cannot capture {type(module).__name__}: {first_line(exc)}"
    if where:
        message += f"\n  raised at: {where}"
    if dynamic_batch and "Constraints violated" in str(exc):
        message += "\n  dynamic_batch needs example inputs whose batch is >= 2 and a model whose batch is not fixed"
    return message + ("\n  Pass fallback_fx=True to trace it with make_fx on the example inputs instead "
                      "(python control flow is then specialized to the path these inputs take).")


def _user_frame(text: str) -> str:
    """The 'File ..., line N' and code lines that export reports after 'The following call
    raised this error:' (empty when absent)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "The following call raised this error" in line:
            frame = [ln.strip() for ln in lines[i + 1:i + 3] if ln.strip()]
            return " | ".join(frame)
    return ""


# -------------------------------------------------------------------- make_fx path ---
def _capture_make_fx(module: torch.nn.Module, args: tuple, kwargs: dict) -> _Capture:
    """Trace ``module`` with make_fx (pre-dispatch ATen ops, real example inputs).

    Parameters and buffers are passed as explicit arguments (functional_call) so that each
    becomes a placeholder with a known FQN; module scopes are recorded with forward hooks."""
    from torch.fx.experimental.proxy_tensor import make_fx
    import torch.fx.traceback as fx_traceback

    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    names = list(state)
    flat_inputs, in_spec = pytree.tree_flatten((args, kwargs))
    if not all(isinstance(x, torch.Tensor) for x in flat_inputs):
        raise UnsupportedModelError("fallback_fx needs example inputs whose leaves are all tensors")
    out_specs: list[pytree.TreeSpec] = []

    def run(*tensors: torch.Tensor) -> list[torch.Tensor]:
        params = dict(zip(names, tensors[:len(names)]))
        call_args, call_kwargs = pytree.tree_unflatten(list(tensors[len(names):]), in_spec)
        out = torch.func.functional_call(module, params, call_args, call_kwargs)
        flat_out, spec = pytree.tree_flatten(out)
        out_specs.append(spec)
        return flat_out

    hooks = _scope_hooks(module, fx_traceback)
    try:
        with fx_traceback.preserve_node_meta():
            gm = make_fx(run, tracing_mode="real", pre_dispatch=True,
                         _error_on_data_dependent_ops=False)(*state.values(), *flat_inputs)
    except Exception as exc:
        raise UnsupportedModelError(f"make_fx cannot trace {type(module).__name__} either: {first_line(exc)}") from exc
    finally:
        for hook in hooks:
            hook.remove()
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    roles: dict[fx.Node, tuple[str, Any]] = {}
    buffers = {name for name, _ in module.named_buffers()}
    for i, node in enumerate(placeholders):
        if i < len(names):
            roles[node] = ("buffer" if names[i] in buffers else "parameter", names[i])
        else:
            roles[node] = ("input", i - len(names))
    _functionalize_inplace(graph)
    graph.eliminate_dead_code()
    output_node = next(n for n in graph.nodes if n.op == "output")
    outputs = list(output_node.args[0])
    return _Capture(graph, roles, dict(state), outputs, in_spec, out_specs[-1], "make_fx")


def _scope_hooks(module: torch.nn.Module, fx_traceback: Any) -> list:
    """Forward hooks that keep ``nn_module_stack`` in fx's current node meta up to date."""
    stack: list[tuple[str, str]] = []

    def publish() -> None:
        fx_traceback.get_current_meta()["nn_module_stack"] = {
            path or "<root>": (path, cls) for path, cls in stack}

    def pre(path: str, cls: str):
        def hook(_module, _inputs):
            stack.append((path, cls))
            publish()
        return hook

    def post(_module, _inputs, _output):
        if stack:
            stack.pop()
        publish()

    handles = []
    for path, sub in module.named_modules():
        cls = f"{type(sub).__module__}.{type(sub).__qualname__}"
        handles.append(sub.register_forward_pre_hook(pre(path, cls)))
        handles.append(sub.register_forward_hook(post))
    return handles


def _functional_variant(target: Any) -> Any:
    """``aten.relu_.default`` -> ``aten.relu.default`` (None when there is none)."""
    if not isinstance(target, torch._ops.OpOverload):
        return None
    packet = target.overloadpacket.__name__
    if not packet.endswith("_") or packet.endswith("__"):
        return None
    namespace = getattr(torch.ops, target.namespace)
    try:
        return getattr(getattr(namespace, packet[:-1]), target._overloadname)
    except AttributeError:
        return None


def _is_view(node: Any) -> bool:
    return (isinstance(node, fx.Node) and isinstance(node.target, torch._ops.OpOverload)
            and bool(node.target._schema.returns) and node.target._schema.returns[0].alias_info is not None
            and not node.target._schema.is_mutable)


def _functionalize_inplace(graph: fx.Graph) -> None:
    """Rewrite ``y = x.op_()`` into ``y = op(x)`` and let later readers of ``x`` read ``y``.

    Only provably safe cases: the mutated tensor is computed in the graph (not an input or
    parameter), is not a view, and has no view taken before the mutation. Anything else
    raises UnsupportedModelError naming the op."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        schema = node.target._schema
        if not schema.is_mutable:
            continue
        written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
        functional = _functional_variant(node.target)
        base = node.args[0] if node.args else None
        if functional is None or written != [0] or not isinstance(base, fx.Node):
            raise UnsupportedModelError(f"in-place op {node.target} ({node.name}) has no safe functional form")
        if base.op == "placeholder" or _is_view(base) or any(
                _is_view(user) and order[user] < order[node] for user in base.users):
            raise UnsupportedModelError(f"in-place op {node.target} ({node.name}) mutates an input, a parameter "
                                        f"or a view; mixprec cannot functionalize it")
        node.target = functional
        for user in list(base.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(base, node)


# -------------------------------------------------------------------------- lowering ---
class _Lowering:
    """Turns a _Capture into an ir.Model. One instance per capture."""

    def __init__(self, capture: _Capture, arg_names: list[str], kwarg_names: list[str]) -> None:
        self.capture = capture
        self.arg_names = arg_names
        self.kwarg_names = kwarg_names
        self.graph = Graph("main", framework=NAME)
        self.env: dict[fx.Node, Value | list[Value] | None] = {}
        self.specialized_inputs: dict[int, Any] = {}
        self.constant_outputs: dict[int, Any] = {}
        self.rename = {sym: _symbol(BATCH_DIM) for sym in capture.batch_symbols} if capture.batch_symbols else {}

    # ---- values ----------------------------------------------------------------------
    def dim(self, d: Any) -> int | str:
        if isinstance(d, int):
            return d
        expr = d.node.expr if isinstance(d, torch.SymInt) else d
        if getattr(expr, "is_Integer", False):
            return int(expr)
        return str(expr.xreplace(self.rename) if self.rename else expr)

    def value_type(self, val: Any) -> tuple[DType, tuple | None]:
        if isinstance(val, torch.Tensor):
            return ir_dtype(val.dtype), tuple(self.dim(d) for d in val.shape)
        if isinstance(val, (torch.SymBool, bool)):
            return DType.BOOL, ()
        if isinstance(val, (torch.SymInt, int)):
            return DType.INT64, ()
        if isinstance(val, (torch.SymFloat, float)):
            return DType.FLOAT64, ()
        return DType.UNKNOWN, None

    def new_value(self, name: str, val: Any) -> Value:
        dtype, shape = self.value_type(val)
        return Value(self.graph.unique_name(name), dtype, shape)

    # ---- graph boundary ---------------------------------------------------------------
    def add_state(self) -> dict[str, str]:
        kinds: dict[str, str] = {}
        for node, (kind, fqn) in self.capture.roles.items():
            if kind == "input":
                continue
            tensor = self.capture.tensors[fqn]
            value = Value(fqn, ir_dtype(tensor.dtype), tuple(tensor.shape), tensor_to_numpy(tensor))
            self.env[node] = self.graph.add_constant(value)
            kinds[fqn] = kind
        return kinds

    def add_inputs(self) -> None:
        names = _input_names(self.capture.in_spec, self.arg_names)
        inputs = sorted(((idx, node) for node, (kind, idx) in self.capture.roles.items() if kind == "input"),
                        key=lambda pair: pair[0])
        for idx, node in inputs:
            val = node.meta.get("val")
            if val is None or isinstance(val, (bool, int, float, str)):
                self.specialized_inputs[idx] = val
            value = self.new_value(names[idx] if idx < len(names) else node.name, val)
            self.env[node] = self.graph.add_input(value)

    def add_outputs(self) -> None:
        for index, arg in enumerate(self.capture.outputs):
            if not isinstance(arg, fx.Node) and (arg is None or isinstance(arg, (bool, int, float, str))):
                self.constant_outputs[index] = arg
                continue
            value = self.env.get(arg) if isinstance(arg, fx.Node) else None
            if not isinstance(value, Value):
                raise UnsupportedModelError(f"model output {arg!r} is neither computed by the graph nor a "
                                            f"python constant")
            self.graph.outputs.append(value)

    # ---- nodes ------------------------------------------------------------------------
    def lower_nodes(self) -> None:
        for node in self.capture.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            if node.op != "call_function":
                raise UnsupportedModelError(f"fx node {node.name} ({node.op} {node.target}) is not supported; "
                                            f"only ATen calls are (pass fallback_fx=True to retrace)")
            if node.target in _DROPPED_TARGETS:
                continue
            if node.target is operator.getitem and isinstance(self.env.get(node.args[0]), list):
                self.env[node] = self.env[node.args[0]][node.args[1]]
                continue
            if isinstance(node.target, torch._ops.HigherOrderOperator):
                raise UnsupportedModelError(f"higher-order op {node.target.name()} ({node.name}) is not supported "
                                            f"(control flow / wrapped regions); pass fallback_fx=True to trace "
                                            f"through it with the example inputs")
            self.lower_call(node)

    def lower_call(self, node: fx.Node) -> None:
        target = node.target
        if target in _TO_OPS:
            op, inputs, attrs = self.cast_call(node)
        elif isinstance(target, torch._ops.OpOverload):
            op, (inputs, attrs) = str(target), self.schema_call(node)
        else:
            op, (inputs, attrs) = _qualified_name(target), self.plain_call(node)
        outputs = self.make_outputs(node)
        out_list = outputs if isinstance(outputs, list) else ([] if outputs is None else [outputs])
        ir_node = self.graph.append(Node(op, inputs, out_list, attrs, name=node.name))
        self.env[node] = outputs
        self.set_scope(ir_node, node)

    def make_outputs(self, node: fx.Node) -> Value | list[Value] | None:
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            names = _getitem_names(node)
            return [self.new_value(names.get(i, f"{node.name}.{i}"), v) for i, v in enumerate(val)]
        if val is None and not _returns_something(node.target):
            return None
        return self.new_value(node.name, val)

    def set_scope(self, ir_node: Node, node: fx.Node) -> None:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            return
        path, cls = list(stack.values())[-1]
        ir_node.meta["scope"] = _normalize_scope(path)
        ir_node.meta["module_type"] = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"

    # ---- arguments ----------------------------------------------------------------------
    def schema_call(self, node: fx.Node) -> tuple[list[Value | None], dict[str, Any]]:
        inputs: list[Value | None] = []
        attrs: dict[str, Any] = {}
        lists: dict[str, int] = {}
        for i, arg in enumerate(node.target._schema.arguments):
            present, value = _argument(node, i, arg)
            kind = tensor_kind(arg.type)
            if kind == "tensor":
                if isinstance(value, fx.Node):
                    inputs.append(self.lookup(value))
                else:
                    inputs.append(None)
                    if present and value is not None:
                        attrs[arg.name] = self.attr(value, inputs)
            elif kind == "list" and present and value is not None:
                lists[arg.name] = len(value)
                inputs.extend(self.lookup(v) if isinstance(v, fx.Node) else None for v in value)
            elif present:
                attrs[arg.name] = self.attr(value, inputs)
        if lists:
            attrs[TENSOR_LISTS_ATTR] = lists
        return inputs, attrs

    def plain_call(self, node: fx.Node) -> tuple[list[Value | None], dict[str, Any]]:
        inputs: list[Value | None] = []
        attrs: dict[str, Any] = {}
        for i, value in enumerate(node.args):
            if isinstance(value, fx.Node):
                inputs.append(self.lookup(value))
            else:
                inputs.append(None)
                attrs[f"arg{i}"] = self.attr(value, inputs)
        for key, value in node.kwargs.items():
            attrs[key] = self.attr(value, inputs)
        return inputs, attrs

    def cast_call(self, node: fx.Node) -> tuple[str, list[Value | None], dict[str, Any]]:
        """Every aten.to / _to_copy as ``aten._to_copy.default`` with only the kwargs that do
        something (a device/layout equal to the input's, pin_memory/non_blocking False,
        preserve_format and ``copy`` are dropped)."""
        schema = node.target._schema
        source = node.args[0]
        kwargs = {}
        for i, arg in enumerate(schema.arguments[1:], start=1):
            present, value = _argument(node, i, arg)
            if present:
                kwargs[arg.name] = value
        kwargs.pop("copy", None)
        src_val = source.meta.get("val") if isinstance(source, fx.Node) else None
        for key in list(kwargs):
            if _is_noop_to_kwarg(key, kwargs[key], src_val):
                del kwargs[key]
        inputs: list[Value | None] = [self.lookup(source)]
        attrs = {key: self.attr(value, inputs) for key, value in kwargs.items()}
        return CAST_OP, inputs, attrs

    def lookup(self, node: fx.Node) -> Value:
        value = self.env.get(node)
        if not isinstance(value, Value):
            raise UnsupportedModelError(f"fx node {node.name} is used as a tensor but produced {value!r}")
        return value

    def attr(self, value: Any, inputs: list[Value | None]) -> Any:
        """A non-tensor argument as an IR attribute; graph-computed scalars become input slots."""
        if isinstance(value, fx.Node):
            inputs.append(self.lookup(value))
            return {INPUT_REF: len(inputs) - 1}
        if isinstance(value, (list, tuple)):
            return [self.attr(v, inputs) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, complex):
            return {COMPLEX_TAG: [value.real, value.imag]}
        if isinstance(value, torch.dtype):
            return ir_dtype(value)
        if isinstance(value, torch.device):
            return str(value)
        if isinstance(value, (torch.layout, torch.memory_format)):
            return str(value).removeprefix("torch.")
        if isinstance(value, torch.Tensor):
            raise UnsupportedModelError(f"a tensor constant is baked into a non-tensor argument ({value.shape})")
        raise UnsupportedModelError(f"argument {value!r} of type {type(value).__name__} has no IR form")


def _lower(capture: _Capture, arg_names: list[str], kwarg_names: list[str], forward_params: list[str]) -> Model:
    if forward_params[:len(arg_names)] != arg_names:  # forward(*args) or an unknown signature
        forward_params = arg_names + kwarg_names
    lowering = _Lowering(capture, arg_names, kwarg_names)
    kinds = lowering.add_state()
    lowering.add_inputs()
    lowering.lower_nodes()
    lowering.add_outputs()
    meta = {
        "in_spec": _dump_spec(capture.in_spec), "out_spec": _dump_spec(capture.out_spec),
        "arg_names": list(arg_names), "kwarg_names": list(kwarg_names), "forward_params": list(forward_params),
        "constant_kinds": kinds, "specialized_inputs": lowering.specialized_inputs,
        "constant_outputs": lowering.constant_outputs,
        "dynamic_batch": capture.dynamic_batch, "capture": capture.source,
    }
    logger.info("lowered torch graph: %d nodes, %d constants, %d inputs", len(lowering.graph),
                len(lowering.graph.constants), len(lowering.graph.inputs))
    return Model(lowering.graph, {META_KEY: meta})


# ---------------------------------------------------------------------------- helpers ---
def _argument(node: fx.Node, index: int, arg: Any) -> tuple[bool, Any]:
    """(given, value) of schema argument ``arg`` in the fx call."""
    if not arg.kwarg_only and index < len(node.args):
        return True, node.args[index]
    if arg.name in node.kwargs:
        return True, node.kwargs[arg.name]
    return False, None


def _is_noop_to_kwarg(key: str, value: Any, src: Any) -> bool:
    if value is None:
        return True
    if key in ("non_blocking", "pin_memory"):
        return value is False
    if key == "memory_format":
        return value == torch.preserve_format
    if isinstance(src, torch.Tensor):
        if key == "device":
            return torch.device(value) == src.device
        if key == "layout":
            return value == src.layout
    return False


def _returns_something(target: Any) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        return bool(target._schema.returns)
    return True


def _getitem_names(node: fx.Node) -> dict[int, str]:
    names: dict[int, str] = {}
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            names.setdefault(user.args[1], user.name)
    return names


def _qualified_name(target: Any) -> str:
    module = getattr(target, "__module__", None) or "builtins"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    if module == "operator":
        module = "_operator"
    return f"{module}.{name}"


_SCOPE_INDEX = re.compile(r"\[(?:'([^']*)'|(\d+))\]")


def _normalize_scope(path: str) -> str:
    """``layer1.0.conv1`` stays; dynamo-style ``L['self'].layer1[0].conv1`` becomes it too."""
    if path.startswith("L['self']"):
        path = path[len("L['self']"):]
        path = path.replace("._modules", "")
        path = _SCOPE_INDEX.sub(lambda m: "." + (m.group(1) if m.group(1) is not None else m.group(2)), path)
        path = path.lstrip(".")
    return path


def _symbol(name: str) -> Any:
    import sympy
    return sympy.Symbol(name, integer=True, positive=True)


def _is_args_kwargs_spec(spec: pytree.TreeSpec) -> bool:
    return (spec.type is tuple and spec.num_children == 2 and spec.child(0).type is tuple
            and spec.child(1).type is dict)


def _input_names(in_spec: pytree.TreeSpec, arg_names: list[str]) -> list[str]:
    """One name per flattened user input: the forward parameter's name for a plain tensor
    argument, the key for a dict entry (the full dotted path when keys repeat)."""
    dummy = pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
    paths = [path for path, _ in pytree.tree_flatten_with_path(dummy)[0]]
    short, full = [], []
    for path in paths:
        parts = list(_path_parts(path, arg_names))
        full.append(".".join(parts))
        short.append(parts[-1] if len(parts) > 1 and isinstance(path[-1], pytree.MappingKey) else ".".join(parts))
    return short if len(set(short)) == len(short) else full


def _path_parts(path: tuple, arg_names: list[str]) -> Iterator[str]:
    keys = list(path)
    if len(keys) >= 2 and isinstance(keys[0], pytree.SequenceKey):
        top, second = keys[0].idx, keys[1]
        if top == 0 and isinstance(second, pytree.SequenceKey):
            yield arg_names[second.idx] if second.idx < len(arg_names) else f"arg{second.idx}"
        else:
            yield str(second.key) if isinstance(second, pytree.MappingKey) else str(getattr(second, "idx", second))
        keys = keys[2:]
    for key in keys:
        if isinstance(key, pytree.MappingKey):
            yield str(key.key)
        elif isinstance(key, pytree.SequenceKey):
            yield str(key.idx)
        elif isinstance(key, pytree.GetAttrKey):
            yield key.name
        else:
            yield str(key)


def _dump_spec(spec: pytree.TreeSpec) -> str | pytree.TreeSpec:
    """The spec as JSON text when every node type is serializable, else the spec itself."""
    try:
        return pytree.treespec_dumps(spec)
    except Exception:  # unregistered container types cannot be serialized
        return spec
