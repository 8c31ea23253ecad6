"""MXNet backend: ``emit(model) -> (Symbol, arg_params, aux_params)``, ``to_block`` (a
gluon SymbolBlock that runs it) and ``save(model, prefix)`` (``prefix-symbol.json`` +
``prefix-NNNN.params``, loadable by plain MXNet).

Emission is the inverse of mixprec.frontends.mxnet: graph inputs and constants become
``op: "null"`` variables (constants also become parameters: auxiliary states go to
aux_params, the others to arg_params, unread ones nowhere; bf16 data becomes bf16
NDArrays); every node becomes a JSON node with its op, name and string
attributes (``amp_cast``'s DType back to MXNet's dtype name); graph outputs become the
heads. A variable keeps the attributes it was read with, and its ``__dtype__`` follows
its value's dtype (a weight stored in bf16 says ``"12"``, as MXNet's own AMP writes it).

Output files (``output_files``): ``X-symbol.json`` or ``X-NNNN.params`` name the pair
with prefix ``X`` (epoch ``NNNN``, default 0); any other path is taken as the prefix, so
``-o out/model_bf16`` writes ``out/model_bf16-symbol.json`` and
``out/model_bf16-0000.params``. The JSON is written with the amp_cast nodes kept (MXNet's
own ``export``/``save`` drop them by default); each file appears atomically.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from mixprec.dialects.mxnet import (CAST_OP, DTYPE_TO_FLAG, DTYPE_TO_NAME, META, dtype_to_mx, error_text,
                                    import_mxnet, numpy_to_ndarray, quiet, version_key)
from mixprec.errors import ConfigError, ConversionError
from mixprec.fileio import atomic_write, atomic_write_text, same_file
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model, Node, Value
from mixprec.naming import claim


logger = logging.getLogger(__name__)

mx = import_mxnet()

DEFAULT_JSON_ATTRS = {"mxnet_version": ["int", 10901]}
_PARAMS_RE = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)\.params$")
_SYMBOL_SUFFIX = "-symbol.json"

Triple = tuple[Any, dict[str, Any], dict[str, Any]]


# ---------------------------------------------------------------------------- emit ---
def emit(model: Model) -> Triple:
    """The model as ``(Symbol, arg_params, aux_params)``; parameters are NDArrays on the
    CPU and only those the symbol reads. Raises ConversionError when MXNet rejects it."""
    symbol_ = symbol(model)
    args, aux = _params(model, symbol_)
    return symbol_, args, aux


def symbol(model: Model) -> Any:
    """The model's Symbol (without parameters). ConversionError when MXNet rejects it."""
    try:
        return mx.sym.load_json(json.dumps(to_json(model)))
    except mx.base.MXNetError as exc:
        raise ConversionError(f"MXNet rejects the emitted symbol: {error_text(exc)}") from None


def to_json(model: Model) -> dict[str, Any]:
    """The symbol JSON document of ``model`` (MXNet's node-list format)."""
    return _Emitter(model).run()


class _Emitter:
    """Writes one graph as JSON nodes. Inputs come first, in graph order; a constant's
    variable is written right before its first reader, as MXNet orders them."""

    def __init__(self, model: Model) -> None:
        self.graph: Graph = model.graph
        self.meta: dict[str, Any] = model.meta.get(META, {})
        self.nodes: list[dict[str, Any]] = []
        self.entries: dict[int, tuple[int, int]] = {}
        self.names: set[str] = set()

    def run(self) -> dict[str, Any]:
        if len(list(self.graph.all_graphs())) > 1:
            raise ConversionError("the MXNet backend cannot write nested IR graphs")
        self.names = {v.name for v in self.graph.inputs} | set(self.graph.constants)
        for value in self.graph.inputs:
            self._variable(value)
        for node in self.graph.iter_nodes():
            self._op(node)
        heads = [self._entry(v) + [0] for v in self.graph.outputs]
        arg_nodes = [i for i, n in enumerate(self.nodes) if n["op"] == "null"]
        return {"nodes": self.nodes, "arg_nodes": arg_nodes, "heads": heads,
                "attrs": self.meta.get("json_attrs") or DEFAULT_JSON_ATTRS}

    def _variable(self, value: Value) -> None:
        attrs = dict(self.meta.get("null_attrs", {}).get(value.name, {}))
        flag = DTYPE_TO_FLAG.get(value.dtype)
        if flag is not None and ("__dtype__" in attrs or value.dtype != DType.FLOAT32):
            attrs["__dtype__"] = str(flag)
        node: dict[str, Any] = {"op": "null", "name": value.name}
        if attrs:
            node["attrs"] = attrs
        node["inputs"] = []
        self.entries[id(value)] = (len(self.nodes), 0)
        self.nodes.append(node)

    def _op(self, node: Node) -> None:
        name = self._node_name(node.name)
        inputs = []
        for value in node.inputs:
            if value is None:
                raise ConversionError(f"node {node.name!r} ({node.op}) has an omitted input, which MXNet "
                                      "cannot express")
            version = self.meta.get("versions", {}).get(version_key(node.name, value.name), 0)
            inputs.append(self._entry(value) + [version])
        out: dict[str, Any] = {"op": node.op, "name": name}
        attrs = {key: _attr_text(node, key, val) for key, val in node.attrs.items()}
        _set_output_dtype(node, attrs)
        if attrs:
            out["attrs"] = attrs
        out["inputs"] = inputs
        subgraphs = self.meta.get("subgraphs", {}).get(node.name)
        if subgraphs:
            out["subgraphs"] = subgraphs
        nid = len(self.nodes)
        self.nodes.append(out)
        for index, value in enumerate(node.outputs):
            self.entries[id(value)] = (nid, index)

    def _entry(self, value: Value) -> list[int]:
        if id(value) not in self.entries:
            if not value.is_constant:
                raise ConversionError(f"value %{value.name} is read before it is defined")
            self._variable(value)
        nid, index = self.entries[id(value)]
        return [nid, index]

    def _node_name(self, name: str) -> str:
        """Op node names stay as they are unless they collide (with a variable or an
        earlier node: a collision would confuse MXNet's argument and output names)."""
        return claim(name, self.names)


#: ops whose ``dtype`` attribute is the type of their output (and of their table)
_DTYPE_ATTR_OPS = frozenset({"Embedding", "_contrib_SparseEmbedding", "_sparse_Embedding"})


def _set_output_dtype(node: Node, attrs: dict[str, str]) -> None:
    """An Embedding whose output a pass retyped (a bf16 table) says so in its ``dtype``
    attribute, which MXNet's type inference reads; an unchanged one is left as read."""
    if node.op not in _DTYPE_ATTR_OPS or not node.outputs:
        return
    dtype = node.outputs[0].dtype
    name = DTYPE_TO_NAME.get(dtype)
    if name is not None and ("dtype" in attrs or dtype != DType.FLOAT32):
        attrs["dtype"] = name


def _attr_text(node: Node, key: str, value: Any) -> str:
    if isinstance(value, DType):
        name = DTYPE_TO_NAME.get(value)
        if name is None:
            raise ConversionError(f"node {node.name!r}: MXNet has no dtype for {value.value}")
        return name
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return str(tuple(value))
    return str(value)


def _params(model: Model, symbol: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The constants the symbol reads, as NDArrays: auxiliary states (as the symbol
    lists them) apart from the other arguments."""
    wanted_args = set(symbol.list_arguments())
    wanted_aux = set(symbol.list_auxiliary_states())
    args: dict[str, Any] = {}
    aux: dict[str, Any] = {}
    for name, value in model.graph.constants.items():
        if name not in wanted_args and name not in wanted_aux:
            continue
        if value.data is None:
            raise ConversionError(f"constant %{name} has no data (was the IR parsed from an elided dump?)")
        (aux if name in wanted_aux else args)[name] = numpy_to_ndarray(value.data, value.dtype)
    return args, aux


def validate(symbol: Any, arg_params: Mapping[str, Any], aux_params: Mapping[str, Any],
             input_dtypes: Mapping[str, DType], input_shapes: Mapping[str, tuple] | None = None) -> None:
    """MXNet's type (and, given every input shape, shape) inference must accept the
    symbol with these parameters; raises ConversionError with MXNet's message."""
    params = {**arg_params, **aux_params}
    types = {n: dtype_to_mx(d) for n, d in input_dtypes.items() if d != DType.UNKNOWN}
    types.update({n: v.dtype for n, v in params.items()})
    try:
        with quiet():
            _, out_types, _ = symbol.infer_type(**types)
            if input_shapes and all(input_shapes.get(n) for n in input_dtypes):
                shapes = {n: tuple(s) for n, s in input_shapes.items()}
                shapes.update({n: tuple(v.shape) for n, v in params.items()})
                symbol.infer_shape(**shapes)
    except mx.base.MXNetError as exc:
        raise ConversionError(f"MXNet rejects the converted model: {error_text(exc)}") from None
    if out_types is None:
        raise ConversionError("MXNet cannot infer the converted model's output types")


# --------------------------------------------------------------------------- running ---
def to_block(symbol: Any, arg_params: Mapping[str, Any], aux_params: Mapping[str, Any],
             input_names: Sequence[str] | None = None,
             input_dtypes: Mapping[str, DType] | None = None) -> Any:
    """A gluon SymbolBlock running ``symbol`` with these parameters (in their own dtypes,
    bf16 included) on the CPU. Inputs default to the symbol's non-parameter arguments.
    The block is for inference: its parameters have ``grad_req="null"`` (no gradient
    buffers; set ``block.collect_params().setattr("grad_req", "write")`` to train it)."""
    params = {**arg_params, **aux_params}
    names = list(input_names) if input_names is not None else \
        [n for n in symbol.list_arguments() if n not in params]
    dtypes = input_dtypes or {}
    inputs = [mx.sym.var(n, dtype=dtype_to_mx(dtypes.get(n, DType.FLOAT32))) for n in names]
    try:
        with quiet():
            block = mx.gluon.SymbolBlock(symbol, inputs)
        block.collect_params().setattr("grad_req", "null")  # for inference: no gradient buffers to allocate
        loaded = {**{f"arg:{k}": v for k, v in arg_params.items()}, **{f"aux:{k}": v for k, v in aux_params.items()}}
        block.collect_params().load_dict(loaded, ctx=mx.cpu(), cast_dtype=True, dtype_source="saved")
    except (mx.base.MXNetError, AssertionError, ValueError) as exc:
        raise ConversionError(f"cannot build a SymbolBlock from the converted model: {error_text(exc)}") from None
    return block


# ------------------------------------------------------------------------------ save ---
def output_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(symbol JSON, params) that ``save`` writes for the output path ``path`` (see the
    module docstring)."""
    text = os.fspath(path)
    if text.endswith(os.sep) or os.path.isdir(text):
        raise ConfigError(f"{text} is a directory; give a file prefix such as {os.path.join(text, 'model_bf16')}")
    p = Path(text)
    if p.name.endswith(_SYMBOL_SUFFIX) and len(p.name) > len(_SYMBOL_SUFFIX):
        prefix, epoch = p.name[: -len(_SYMBOL_SUFFIX)], 0
    elif (match := _PARAMS_RE.match(p.name)):
        prefix, epoch = match["prefix"], int(match["epoch"])
    else:
        prefix, epoch = p.name, 0
    return p.with_name(prefix + _SYMBOL_SUFFIX), p.with_name(f"{prefix}-{epoch:04d}.params")


def save(model: Model, path: str | os.PathLike, *, protected: Sequence[str | os.PathLike] = ()) -> tuple[Path, Path]:
    """Write ``model`` as the pair :func:`output_files` names for ``path`` and return
    their paths. Each file is written to a temporary file in its directory first and
    then moved into place. Refuses (ConfigError) to overwrite any ``protected`` file."""
    symbol_path, params_path = output_files(path)
    for target in (symbol_path, params_path):
        for guarded in protected:
            if same_file(target, Path(guarded)):
                raise ConfigError(f"refusing to overwrite the input model file {guarded}; choose another output path")
    symbol, args, aux = emit(model)
    text = symbol.tojson(remove_amp_cast=False)
    _check_casts_kept(model, text)
    arrays = {**{f"arg:{k}": v for k, v in args.items()}, **{f"aux:{k}": v for k, v in aux.items()}}
    atomic_write(params_path, lambda tmp: mx.nd.save(tmp, arrays))
    atomic_write_text(symbol_path, text)
    logger.info("wrote %s and %s", symbol_path, params_path)
    return symbol_path, params_path


def _check_casts_kept(model: Model, text: str) -> None:
    """Invariant: every amp_cast of the IR is in the written JSON."""
    written = sum(1 for n in json.loads(text)["nodes"] if n["op"] == CAST_OP)
    expected = sum(1 for n in model.graph.iter_nodes() if n.op == CAST_OP)
    if written != expected:
        raise ConversionError(f"the symbol JSON holds {written} amp_cast nodes instead of {expected}")


__all__ = ["emit", "to_json", "to_block", "validate", "save", "output_files"]
