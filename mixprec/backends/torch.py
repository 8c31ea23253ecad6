"""PyTorch backend: ``mixprec.ir.Model`` -> a runnable ``torch.nn.Module``, and a
``torch.export`` program (``.pt2``) that runs without mixprec.

It reads the IR conventions documented in ``mixprec.dialects.torch``: each node calls
the ATen op named by ``node.op`` with the schema's argument layout rebuilt from the node's
inputs and attributes. With no pass in between, ``emit(load(m, x))(x)`` computes exactly
what ``m(x)`` computes (same kernels, same arguments), so outputs are bit-identical.
"""
from __future__ import annotations

import copy
import functools
import importlib
import keyword
import logging
import operator
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from mixprec.dialects.torch import (COMPLEX_TAG, INPUT_REF, META_KEY, NAME, TENSOR_LISTS_ATTR, dynamic_batch_shapes,
                                    load_spec, split_inputs, tensor_kind, torch_dtype)
from mixprec.errors import ConversionError, UnsupportedModelError
from mixprec.fileio import atomic_write
from mixprec.ir.dtypes import DType, convert_array
from mixprec.ir.graph import Graph, Model, Node, Value

logger = logging.getLogger(__name__)

# Python modules whose callables may appear as ops (symbolic-shape arithmetic).
_PYTHON_OP_MODULES = {"_operator", "operator", "math", "builtins", "torch"}


# ---------------------------------------------------------------------- public API ---
@dataclass
class CallConvention:
    """How the original module was called and what it returned.

    ``in_spec`` / ``out_spec`` are the pytree specs of ``(args, kwargs)`` and of the output;
    ``arg_names`` name the positional arguments of the capture, ``kwarg_names`` its keyword
    arguments and ``forward_params`` every positional parameter of the original forward.
    ``specialized_inputs`` maps flat input positions that held python scalars at capture
    time to those values (the graph is specialized to them); ``constant_outputs`` maps flat
    output positions to the python constants the module returned there."""
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    arg_names: list[str]
    kwarg_names: list[str]
    forward_params: list[str]
    specialized_inputs: dict[int, Any] = field(default_factory=dict)
    constant_outputs: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: Model) -> "CallConvention":
        meta = model.meta.get(META_KEY, {})
        graph = model.graph
        arg_names = list(meta.get("arg_names", [f"arg{i}" for i in range(len(graph.inputs))]))
        kwarg_names = list(meta.get("kwarg_names", []))
        if "in_spec" in meta and "out_spec" in meta:
            in_spec, out_spec = load_spec(meta["in_spec"]), load_spec(meta["out_spec"])
        else:  # a hand-built graph: positional tensors in, a tuple out
            in_spec = pytree.tree_flatten((tuple(range(len(graph.inputs))), {}))[1]
            out_spec = pytree.tree_flatten(tuple(range(len(graph.outputs))))[1]
        return cls(in_spec, out_spec, arg_names, kwarg_names,
                   list(meta.get("forward_params") or arg_names + kwarg_names),
                   dict(meta.get("specialized_inputs", {})), dict(meta.get("constant_outputs", {})))


class EmittedModule(torch.nn.Module):
    """Runs an IR graph eagerly.

    Invariants: every IR constant is a parameter or buffer of this module, registered under
    its FQN (``layer1.0.conv1.weight``) through plain container submodules, or under a
    sanitized top-level name when the FQN clashes with another attribute; its dtype is the
    IR constant's dtype (bf16 constants are bf16 tensors). The compiled fx graph lives
    outside the module tree (it holds no state) and takes the constants, then the flattened
    user inputs. ``forward`` accepts the original module's positional/keyword arguments and
    returns the original output structure. :func:`emit` returns a subclass whose
    ``forward`` spells out the captured parameters (so ``inspect.signature`` and
    ``torch.export``'s dynamic shapes by name work); this base class binds ``*args,
    **kwargs`` by name itself."""

    _mixprec_signature: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def __init__(self, graph_module: fx.GraphModule, call: CallConvention) -> None:
        super().__init__()
        self.__dict__["_mixprec_graph_module"] = graph_module
        self._mixprec_call = call
        self._mixprec_constant_paths: list[str] = []

    @property
    def graph_module(self) -> fx.GraphModule:
        """The fx graph that runs the IR (``.code`` shows it as Python)."""
        return self.__dict__["_mixprec_graph_module"]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._mixprec_run(*self._bind(args, kwargs))

    def _mixprec_run(self, call_args: tuple, call_kwargs: dict) -> Any:
        call = self._mixprec_call
        flat = self._flatten((call_args, call_kwargs))
        for index, expected in call.specialized_inputs.items():
            if flat[index] != expected:
                raise ValueError(f"input leaf {index} was {expected!r} when the model was captured and the graph "
                                 f"is specialized to it; got {flat[index]!r}")
        constants = [self._constant(path) for path in self._mixprec_constant_paths]
        computed = iter(self.graph_module(*constants, *flat))
        flat_out = [call.constant_outputs[i] if i in call.constant_outputs else next(computed)
                    for i in range(call.out_spec.num_leaves)]
        return pytree.tree_unflatten(flat_out, call.out_spec)

    def __reduce__(self) -> tuple:
        return _restore_emitted, (type(self)._mixprec_signature, self.__getstate__())

    def _constant(self, path: str) -> torch.Tensor:
        return functools.reduce(getattr, path.split("."), self)

    def _bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        call = self._mixprec_call
        params = call.forward_params
        if len(args) > len(params):
            raise TypeError(f"forward() takes {len(params)} positional arguments ({', '.join(params)}) "
                            f"but {len(args)} were given")
        values = dict(zip(params, args))
        for key, value in kwargs.items():
            if key in values:
                raise TypeError(f"forward() got multiple values for argument {key!r}")
            values[key] = value
        expected = call.arg_names + call.kwarg_names
        missing = [n for n in expected if n not in values]
        extra = [n for n in values if n not in expected]
        if missing or extra:
            raise TypeError(f"forward() expects arguments {expected}; missing {missing}, unexpected {extra}")
        return _split_named(self, values)

    def _flatten(self, tree: Any) -> list[Any]:
        in_spec = self._mixprec_call.in_spec
        flat, spec = pytree.tree_flatten(tree)
        if spec == in_spec:
            return flat
        from torch.fx._pytree import tree_flatten_spec
        try:
            flat = tree_flatten_spec(tree, in_spec)
        except Exception as exc:
            raise TypeError(f"inputs do not match the captured structure {in_spec}: {exc}") from exc
        if len(flat) != in_spec.num_leaves:
            raise TypeError(f"inputs do not match the captured structure {in_spec}")
        return flat


@functools.lru_cache(maxsize=None)
def _signature_class(positional: tuple[str, ...], keyword_only: tuple[str, ...]) -> type:
    """An EmittedModule subclass whose forward is ``forward(self, <positional>, *, <keyword_only>)``."""
    names = positional + keyword_only
    if not names or not all(n.isidentifier() and not keyword.iskeyword(n) and n != "self" for n in names):
        return EmittedModule
    params = ", ".join(("self",) + positional + (("*",) + keyword_only if keyword_only else ()))
    source = (f"def forward({params}):\n"
              f"    return self._mixprec_run(*self._mixprec_split({{{', '.join(f'{n!r}: {n}' for n in names)}}}))\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<mixprec emitted forward {names}>", "exec"), namespace)  # noqa: S102 - names checked above
    return type("EmittedModule", (EmittedModule,), {
        "forward": namespace["forward"], "_mixprec_signature": (positional, keyword_only),
        "_mixprec_split": _split_named, "__module__": __name__, "__doc__": EmittedModule.__doc__})


def _split_named(self: EmittedModule, values: dict[str, Any]) -> tuple[tuple, dict]:
    """Named argument values -> the captured ``(args, kwargs)``."""
    call = self._mixprec_call
    return tuple(values[n] for n in call.arg_names), {k: values[k] for k in call.kwarg_names}


def _restore_emitted(signature: tuple[tuple[str, ...], tuple[str, ...]], state: dict) -> EmittedModule:
    cls = _signature_class(*signature)
    module = cls.__new__(cls)
    module.__setstate__(state)
    return module


def _forward_signature(arg_names: list[str], kwarg_names: list[str],
                       forward_params: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Captured names that the original forward takes by position, in its order and up to
    the first one not captured; every other captured name is keyword-only."""
    used = set(arg_names) | set(kwarg_names)
    positional = []
    for name in forward_params:
        if name not in used:
            break
        positional.append(name)
    if positional[:len(arg_names)] != list(arg_names):
        positional = list(arg_names)
    keyword_only = [n for n in kwarg_names if n not in positional]
    return tuple(positional), tuple(keyword_only)


def emit(model: Model, probe_outputs: int | None = None, copy: bool = True) -> torch.nn.Module:
    """A module that runs ``model``'s graph in eager mode (see :class:`EmittedModule`).
    Its tensors own their memory, except with ``copy=False``, where constants already in
    their dtype and layout become tensors over the same memory (the conversion cache
    hands over an IR read for this module alone).

    ``probe_outputs`` (default: ``model.meta["probe_outputs"]``, else 0) is the number of
    trailing graph outputs that are probes of intermediate values (error attribution):
    the module then returns ``(original outputs, probe 1, ..., probe n)``. Off by default."""
    graph = model.graph
    if graph.framework != NAME:
        raise ConversionError(f"the torch backend emits torch graphs, not {graph.framework!r} ones")
    meta = model.meta.get(META_KEY, {})
    call = CallConvention.from_model(model)
    probes = int(model.meta.get("probe_outputs", 0) if probe_outputs is None else probe_outputs)
    if probes:
        call = replace(call, out_spec=pytree.tree_flatten(
            (pytree.tree_unflatten(list(range(call.out_spec.num_leaves)), call.out_spec), *range(probes)))[1])
    cls = _signature_class(*_forward_signature(call.arg_names, call.kwarg_names, call.forward_params))
    module = cls(_build_graph_module(graph), call)
    kinds = meta.get("constant_kinds", {})
    paths = [_register_constant(module, value, kinds.get(name), copy) for name, value in graph.constants.items()]
    module._mixprec_constant_paths = paths
    logger.info("emitted torch module: %d nodes, %d constants", len(graph), len(paths))
    return module.eval()


def save(model_or_module: Model | torch.nn.Module, path: str | os.PathLike, example_inputs: tuple | dict,
         dynamic_batch: bool | None = None) -> Path:
    """Write ``model_or_module`` (an IR model is emitted first) as a torch.export program.

    ``torch.export.load(path).module()`` runs it without mixprec. The file is written to a
    temporary name in the same directory and moved into place, so ``path`` is either the
    old file or the complete new one. ``dynamic_batch`` defaults to what the model was
    loaded with. Missing parent directories are made (mixprec.fileio.atomic_write)."""
    if isinstance(model_or_module, Model):
        module = emit(model_or_module)
    elif isinstance(model_or_module, EmittedModule):
        module = model_or_module
    else:  # export may assign attributes on the module it traces (nn.LSTM does): never on the user's
        module = copy.deepcopy(model_or_module)
    _warn_unloadable_names(module)
    if dynamic_batch is None:
        dynamic_batch = bool(isinstance(model_or_module, Model)
                             and model_or_module.meta.get(META_KEY, {}).get("dynamic_batch"))
    args, kwargs = split_inputs(example_inputs)
    dynamic_shapes = dynamic_batch_shapes(args, kwargs) if dynamic_batch else None
    try:
        program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise ConversionError(f"torch.export failed on the module to save: {str(exc).strip().splitlines()[0]}") from exc
    target = atomic_write(path, lambda tmp: _export_save(program, tmp))
    logger.info("saved torch.export program to %s (%d bytes)", target, target.stat().st_size)
    return target


def _export_save(program: "torch.export.ExportedProgram", path: str) -> None:
    """torch.export.save into the file ``path`` (through a handle: torch warns about a
    path that does not end in .pt2, which a temporary's name does not)."""
    with open(path, "wb") as handle:
        torch.export.save(program, handle)


def _warn_unloadable_names(module: torch.nn.Module) -> None:
    """torch 2.13's ``ExportedProgram.module()`` rebuilds state on an fx.GraphModule, so a
    top-level submodule or tensor named like a GraphModule attribute (``meta``, ``graph``,
    ``code``) makes ``torch.export.load(path).module()`` fail; say so before writing."""
    names = {name.split(".")[0] for name, _ in module.named_parameters()}
    names |= {name.split(".")[0] for name, _ in module.named_buffers()}
    clashes = sorted(n for n in names if hasattr(fx.GraphModule, n) or n in ("meta", "graph", "code"))
    if clashes:
        logger.warning("top-level module/tensor names %s shadow torch.fx.GraphModule attributes: torch.export can "
                       "save this program but torch.export.load(...).module() will fail to rebuild it; rename them",
                       clashes)


# ------------------------------------------------------------------------- constants ---
def numpy_to_tensor(data: np.ndarray, dtype: DType, copy: bool = True) -> torch.Tensor:
    """A tensor (own memory) with ``data`` converted to ``dtype`` (bf16/fp8 via ml_dtypes);
    ``copy=False``: over ``data``'s memory when it is writable, C-ordered and in ``dtype``."""
    expected = dtype.to_numpy()
    data = np.asarray(data)
    if data.dtype != expected:
        data = convert_array(data, dtype) if dtype.is_float and data.dtype.kind == "f" else data.astype(expected)
    if copy or not (data.flags.c_contiguous and data.flags.writeable):
        data = np.array(data, copy=True, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
    if data.size == 0:  # a view of an empty buffer makes torch.export.save overflow (numel) on bf16
        return torch.empty(data.shape, dtype=torch_dtype(dtype))
    if dtype in (DType.BFLOAT16, DType.FLOAT16):
        return torch.from_numpy(data.view(np.int16)).view(torch_dtype(dtype))
    if dtype in (DType.FLOAT8E4M3, DType.FLOAT8E5M2):
        return torch.from_numpy(data.view(np.uint8)).view(torch_dtype(dtype))
    return torch.from_numpy(data)


def _register_constant(root: torch.nn.Module, value: Value, kind: str | None, copy: bool = True) -> str:
    """Register ``value`` on ``root`` under its FQN (or a sanitized name) and return the path."""
    if value.data is None:
        raise ConversionError(f"constant %{value.name} has no data (was the IR parsed from elided text?)")
    tensor = numpy_to_tensor(value.data, value.dtype, copy)
    found = _owner_for(root, value.name)
    owner, prefix, leaf = found if found is not None else (root, "", _fallback_name(root, value.name))
    if kind == "parameter":
        owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=tensor.is_floating_point()))
    else:
        owner.register_buffer(leaf, tensor, persistent=kind not in ("buffer_nonpersistent", "constant"))
    return f"{prefix}.{leaf}" if prefix else leaf


def _free(module: torch.nn.Module, name: str) -> bool:
    """``name`` can be registered on ``module`` without shadowing anything."""
    return bool(name) and "." not in name and not name.startswith("_mixprec") and not hasattr(module, name)


def _owner_for(root: torch.nn.Module, fqn: str) -> tuple[torch.nn.Module, str, str] | None:
    """(owner, owner path, leaf name) to register ``fqn`` under, creating plain container
    modules on the way; None when a part of the path is taken by something else."""
    *parts, leaf = fqn.split(".")
    owner = root
    for part in parts:
        child = owner._modules.get(part)
        if child is None:
            if not _free(owner, part):
                return None
            child = torch.nn.Module()
            owner.add_module(part, child)
        elif type(child) is not torch.nn.Module:
            return None
        owner = child
    return (owner, ".".join(parts), leaf) if _free(owner, leaf) else None


def _fallback_name(root: torch.nn.Module, fqn: str) -> str:
    base = re.sub(r"\W", "_", fqn)
    base = base if base and not base[0].isdigit() else f"c_{base}"
    name, counter = base, 0
    while not _free(root, name):
        counter += 1
        name = f"{base}_{counter}"
    logger.debug("constant %s registered as %s (its FQN clashes with another attribute)", fqn, name)
    return name


# ------------------------------------------------------------------------ fx graph ---
def _build_graph_module(graph: Graph) -> fx.GraphModule:
    """An fx graph whose placeholders are the IR constants then the IR inputs."""
    fx_graph = fx.Graph()
    env: dict[int, fx.Node] = {}
    for value in list(graph.constants.values()) + list(graph.inputs):
        env[id(value)] = fx_graph.placeholder(_py_name(value.name))
    for node in graph.iter_nodes():
        _emit_node(fx_graph, node, env)
    fx_graph.output(tuple(env[id(v)] for v in graph.outputs))
    fx_graph.lint()
    return fx.GraphModule(torch.nn.Module(), fx_graph, class_name="MixprecGraph")


def _emit_node(fx_graph: fx.Graph, node: Node, env: dict[int, fx.Node]) -> None:
    target = resolve_op(node.op)
    if isinstance(target, torch._ops.OpOverload):
        args, kwargs = _schema_call(node, target, env)
        multi = _returns_sequence(target) or len(node.outputs) > 1
    else:
        args, kwargs = _plain_call(node, env)
        multi = len(node.outputs) > 1
    call = fx_graph.call_function(target, tuple(args), kwargs)
    if multi:
        for index, out in enumerate(node.outputs):
            env[id(out)] = fx_graph.call_function(operator.getitem, (call, index))
    elif node.outputs:
        env[id(node.outputs[0])] = call


def _returns_sequence(target: torch._ops.OpOverload) -> bool:
    returns = target._schema.returns
    return len(returns) > 1 or (len(returns) == 1 and isinstance(returns[0].type, torch.ListType))


@functools.lru_cache(maxsize=None)
def resolve_op(op: str) -> Callable:
    """The callable an IR torch op names: ``aten.add.Tensor`` -> ``torch.ops.aten.add.Tensor``,
    ``_operator.mul`` -> ``operator.mul``."""
    if op.split(".", 1)[0] in _PYTHON_OP_MODULES:
        found = _python_callable(op)
        if found is not None:
            return found
    try:
        namespace, rest = op.split(".", 1)
        name, overload = rest.rsplit(".", 1)
        return getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (ValueError, AttributeError, RuntimeError) as exc:
        raise UnsupportedModelError(f"op {op!r} is not a torch operator known to this process") from exc


def _python_callable(op: str) -> Callable | None:
    module_name, _, attr = op.partition(".")
    if module_name not in _PYTHON_OP_MODULES:
        return None
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if callable(obj) else None


def _ref_slots(value: Any) -> set[int]:
    if isinstance(value, dict) and set(value) == {INPUT_REF}:
        return {value[INPUT_REF]}
    if isinstance(value, dict):
        return set().union(*(_ref_slots(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_ref_slots(v) for v in value)) if value else set()
    return set()


def _tensor_slots(node: Node) -> list[int]:
    """Input indices that hold tensor arguments (those not referenced from an attribute)."""
    referenced = set().union(*(_ref_slots(v) for v in node.attrs.values())) if node.attrs else set()
    return [i for i in range(len(node.inputs)) if i not in referenced]


def _fx_input(node: Node, index: int, env: dict[int, fx.Node]) -> fx.Node | None:
    value = node.inputs[index]
    return None if value is None else env[id(value)]


def _attr_value(value: Any, node: Node, env: dict[int, fx.Node], schema_type: Any = None) -> Any:
    """An IR attribute back as a torch argument (refs resolved, DType -> torch.dtype, strings
    back to devices / layouts / memory formats as the schema type says)."""
    if isinstance(value, dict) and set(value) == {INPUT_REF}:
        return _fx_input(node, value[INPUT_REF], env)
    if isinstance(value, dict) and set(value) == {COMPLEX_TAG}:
        return complex(*value[COMPLEX_TAG])
    if isinstance(value, DType):
        return torch_dtype(value)
    if isinstance(value, list):
        elem = _element_type(schema_type)
        return [_attr_value(v, node, env, elem) for v in value]
    if isinstance(value, str) and schema_type is not None:
        base = schema_type.getElementType() if isinstance(schema_type, torch.OptionalType) else schema_type
        if isinstance(base, torch.DeviceObjType):
            return torch.device(value)
        if isinstance(base, torch.IntType) and hasattr(torch, value):
            return getattr(torch, value)
    return value


def _element_type(schema_type: Any) -> Any:
    base = schema_type.getElementType() if isinstance(schema_type, torch.OptionalType) else schema_type
    return base.getElementType() if isinstance(base, torch.ListType) else None


def _schema_call(node: Node, target: torch._ops.OpOverload, env: dict[int, fx.Node]) -> tuple[list, dict]:
    """Rebuild (args, kwargs) in the schema's layout; positional arguments after the last one
    the IR gives are left to their defaults, as are absent keyword-only ones."""
    slots = iter(_tensor_slots(node))
    lists = node.attrs.get(TENSOR_LISTS_ATTR, {})
    positional: list[tuple[Any, bool, Any]] = []
    kwargs: dict[str, Any] = {}
    for arg in target._schema.arguments:
        given, value = _schema_argument(node, arg, slots, lists, env)
        if arg.kwarg_only:
            if given:
                kwargs[arg.name] = value
        else:
            positional.append((arg, given, value))
    last = max((i for i, (_, given, _) in enumerate(positional) if given), default=-1)
    args = []
    for arg, given, value in positional[:last + 1]:
        if not given:
            if not arg.has_default_value():
                raise ConversionError(f"node {node.name!r} ({node.op}) lacks required argument {arg.name!r}")
            value = arg.default_value
        args.append(value)
    return args, kwargs


def _schema_argument(node: Node, arg: Any, slots: Any, lists: dict, env: dict[int, fx.Node]) -> tuple[bool, Any]:
    kind = tensor_kind(arg.type)
    if kind == "tensor":
        slot = next(slots, None)
        tensor = None if slot is None else _fx_input(node, slot, env)
        if tensor is not None:
            return True, tensor
        if arg.name in node.attrs:
            return True, _attr_value(node.attrs[arg.name], node, env, arg.type)
        return False, None
    if kind == "list" and arg.name in lists:
        return True, [_fx_input(node, next(slots), env) for _ in range(lists[arg.name])]
    if arg.name in node.attrs:
        return True, _attr_value(node.attrs[arg.name], node, env, arg.type)
    return False, None


def _plain_call(node: Node, env: dict[int, fx.Node]) -> tuple[list, dict]:
    args = []
    for position, slot in enumerate(_tensor_slots(node)):
        tensor = _fx_input(node, slot, env)
        args.append(tensor if tensor is not None else _attr_value(node.attrs.get(f"arg{position}"), node, env))
    kwargs = {k: _attr_value(v, node, env) for k, v in node.attrs.items() if not re.fullmatch(r"arg\d+", k)}
    return args, kwargs


def _py_name(name: str) -> str:
    text = re.sub(r"\W", "_", name)
    return text if text and not text[0].isdigit() else f"v_{text}"
