"""MXNet frontend: ``load(model, params=None, input_shapes=None) -> ir.Model``.

Accepted models: a Gluon ``HybridBlock`` (traced symbolically; example inputs or input
shapes tell it how many inputs there are and finish deferred initialization), a
``(Symbol, arg_params, aux_params)`` triple, or the path of either file of a
``prefix-symbol.json`` + ``prefix-NNNN.params`` pair.

Lowering rules (the MXNet backend, mixprec.backends.mxnet, is the exact inverse):
- the symbol is first round-tripped through ``mx.sym.load_json``/``tojson`` so that the
  lowered JSON is MXNet's canonical one (canonical op names, ``attrs`` key, node order
  equal to the order of ``get_internals()``);
- an ``op: "null"`` node with a parameter becomes a graph constant of the same name
  holding the parameter's data as numpy (bf16 through ml_dtypes); one without becomes a
  graph input; auxiliary states (BatchNorm running statistics) are constants too and are
  remembered in ``model.meta["mxnet"]["aux"]``;
- every other node becomes one IR node: ``op`` and ``name`` verbatim, attributes kept as
  the strings MXNet stores, except ``amp_cast``'s ``dtype``, which becomes a DType (the
  IR's canonical cast); one IR output per *visible* output (BatchNorm with
  ``output_mean_var=True`` has three, SliceChannel ``num_outputs``), named as
  ``get_internals().list_outputs()`` names them;
- dtypes come from ``infer_type`` and shapes from ``infer_shape_partial`` given the input
  dtypes/shapes (example inputs, ``input_shapes``, the inputs' ``__shape__`` attributes,
  or shapes guessed from the first layer's weights); an unknown dim is ``None``;
- what the IR does not model is kept in ``model.meta["mxnet"]`` (see :data:`mixprec.dialects.mxnet.META`).

Invariants: the user's block, symbol and parameter dicts are never modified; every
failure to read the model is a ModelLoadError saying what to do.
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mixprec.dialects.mxnet import (CAST_OP, META, dtype_from_mx, dtype_to_mx, error_text, import_mxnet,
                                    ndarray_to_numpy, parse_cast_dtype, quiet, version_key)
from mixprec.errors import ModelLoadError
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model, Node, Value
from mixprec.naming import claim

logger = logging.getLogger(__name__)

mx = import_mxnet()

FRAMEWORK = "mxnet"

_PARAMS_RE = re.compile(r"^(?P<prefix>.*)-(?P<epoch>\d+)\.params$")
_SYMBOL_SUFFIX = "-symbol.json"
#: spatial sizes tried, in order, when an input's shape has to be guessed
_GUESS_SIZES = (32, 224, 28, 64, 16, 8, 96, 128, 256, 299)
#: ops that keep their input's shape, looked through when guessing an input's shape
_SHAPE_KEEPING = frozenset({"amp_cast", "Cast", "_copy", "BlockGrad"})


def to_ndarray(value: Any) -> Any:
    """An example input (NDArray, numpy array or nested list) as an NDArray."""
    if isinstance(value, mx.nd.NDArray):
        return value
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return mx.nd.array(arr, dtype=arr.dtype)


# ----------------------------------------------------------------------------- files ---
def model_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(symbol JSON, params) of the pair that ``path`` (either file) belongs to.

    ``prefix-symbol.json`` pairs with ``prefix-0000.params`` or, failing that, the
    ``prefix-NNNN.params`` of the highest epoch; ``prefix-NNNN.params`` pairs with
    ``prefix-symbol.json``; ``name.json`` pairs with ``name.params`` as well."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; pass the path of a prefix-symbol.json or prefix-NNNN.params file")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory; pass the prefix-symbol.json file inside it")
    match = _PARAMS_RE.match(path.name)
    if match:
        symbol = path.with_name(match["prefix"] + _SYMBOL_SUFFIX)
        if not symbol.exists():
            raise ModelLoadError(f"{path}: the symbol file {symbol.name} is missing next to it")
        return symbol, path
    if path.suffix == ".params":
        symbol = path.with_suffix(".json")
        if not symbol.exists():
            raise ModelLoadError(f"{path}: no symbol file {symbol.name} next to it")
        return symbol, path
    return path, _params_for(path)


def _params_for(symbol: Path) -> Path:
    name = symbol.name
    prefix = name[: -len(_SYMBOL_SUFFIX)] if name.endswith(_SYMBOL_SUFFIX) else symbol.stem
    first = symbol.with_name(f"{prefix}-0000.params")
    if first.exists():
        return first
    epochs = sorted((int(m["epoch"]), p) for p in symbol.parent.glob(f"{prefix}-*.params")
                    if (m := _PARAMS_RE.match(p.name)) and m["prefix"] == prefix)
    if epochs:
        return epochs[-1][1]
    plain = symbol.with_name(f"{prefix}.params")
    if plain.exists():
        return plain
    raise ModelLoadError(f"{symbol}: no parameter file next to it (expected {first.name}); "
                         "pass the .params file's path as params=")


def load_symbol(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not a symbol JSON file ({exc.msg} at line {exc.lineno}); "
                             "pass the prefix-symbol.json written by export/save_checkpoint") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or "heads" not in doc:
        raise ModelLoadError(f"{path} is JSON but not an MXNet symbol (no 'nodes'/'heads')")
    return _load_json(text, str(path))


def _load_json(text: str, where: str) -> Any:
    try:
        return mx.sym.load_json(text)
    except mx.base.MXNetError as exc:
        raise ModelLoadError(f"MXNet cannot read the symbol in {where}: {error_text(exc)}") from None


def read_params(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        loaded = mx.nd.load(str(path))
    except mx.base.MXNetError as exc:
        raise ModelLoadError(f"{path} is not an MXNet parameter file ({error_text(exc)}); the file may be "
                             "truncated: re-export the model") from None
    if isinstance(loaded, list) and not loaded:  # nd.save of an empty dict reads back as []
        return {}, {}
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path} holds a list of arrays, not named parameters")
    return split_params(loaded)


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{"arg:w": ..., "aux:m": ...}`` (or unprefixed names, taken as args) -> (args, aux)."""
    args: dict[str, Any] = {}
    aux: dict[str, Any] = {}
    for key, value in params.items():
        kind, _, name = key.partition(":")
        if kind == "aux" and name:
            aux[name] = value
        elif kind == "arg" and name:
            args[name] = value
        else:
            args[key] = value
    return args, aux


# ----------------------------------------------------------------------------- input ---
@dataclass
class _Source:
    """What every form of model comes down to: a symbol, its parameters as NDArrays (new
    dicts: the user's stay untouched), its input names and what is known of them."""
    symbol: Any
    args: dict[str, Any]
    aux: dict[str, Any]
    input_names: list[str] | None = None
    shapes: dict[str, tuple] = field(default_factory=dict)
    dtypes: dict[str, DType] = field(default_factory=dict)
    shapes_from: str = ""

    def __post_init__(self) -> None:
        self.args = {str(k): to_ndarray(v) for k, v in self.args.items()}
        self.aux = {str(k): to_ndarray(v) for k, v in self.aux.items()}


def load(model: Any, params: Any = None, input_shapes: Any = None, *, example_inputs: Any = None) -> Model:
    """Lower an MXNet model to an IR Model (see the module docstring).

    ``params``: for a Symbol, ``(arg_params, aux_params)`` or a dict with ``arg:``/``aux:``
    keys; for a path, the .params file (default: the one next to the symbol file).
    ``input_shapes``: ``{name: shape}`` or shapes in input order. ``example_inputs``:
    arrays in input order (or ``{name: array}``); they fix shapes and dtypes and, for a
    Gluon block, finish deferred parameter initialization."""
    source = _source(model, params, example_inputs, input_shapes)
    _fill_input_info(source, example_inputs, input_shapes)
    return _Lowerer(source).lower()


def _source(model: Any, params: Any, example_inputs: Any, input_shapes: Any) -> _Source:
    if isinstance(model, (str, os.PathLike)):
        symbol_path, params_path = model_files(model)
        if params is not None:
            params_path = Path(params)
            if not params_path.is_file():
                raise ModelLoadError(f"{params_path}: no such parameter file")
        symbol = load_symbol(symbol_path)
        args, aux = read_params(params_path)
        return _Source(symbol, args, aux)
    if isinstance(model, mx.gluon.HybridBlock):
        return _trace_block(model, example_inputs, input_shapes)
    if isinstance(model, mx.gluon.Block):
        raise ModelLoadError(f"{type(model).__name__} is a gluon Block, not a HybridBlock: only hybridizable "
                             "blocks have a symbol; derive it from HybridBlock")
    if isinstance(model, mx.sym.Symbol):
        args, aux = _params_arg(params)
        return _Source(model, args, aux)
    if isinstance(model, (tuple, list)) and len(model) == 3 and isinstance(model[0], mx.sym.Symbol):
        return _Source(model[0], dict(model[1] or {}), dict(model[2] or {}))
    raise ModelLoadError(f"cannot load an MXNet model from {type(model).__name__}; pass a gluon HybridBlock, "
                         "a (Symbol, arg_params, aux_params) triple or the path of a prefix-symbol.json file")


def _params_arg(params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if params is None:
        return {}, {}
    if isinstance(params, (str, os.PathLike)):
        return read_params(Path(params))
    if isinstance(params, (tuple, list)) and len(params) == 2:
        return dict(params[0] or {}), dict(params[1] or {})
    if isinstance(params, Mapping):
        return split_params(params)
    raise ModelLoadError("params must be (arg_params, aux_params), a dict with arg:/aux: keys or a .params path")


def _example_list(example_inputs: Any) -> list[Any] | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Mapping):
        return list(example_inputs.values())
    if isinstance(example_inputs, (tuple, list)):
        return list(example_inputs)
    return [example_inputs]


def block_input_names(count: int) -> list[str]:
    """The names HybridBlock.export gives a block's inputs: ``data``, or ``data0``..."""
    return ["data"] if count == 1 else [f"data{i}" for i in range(count)]


def _trace_block(block: Any, example_inputs: Any, input_shapes: Any) -> _Source:
    """The block's symbol (``block(*vars)``, as ``export`` builds it) and parameters. A
    forward pass on the example inputs (or zeros of ``input_shapes``) runs first so that
    deferred initialization completes; it changes no parameter value."""
    examples = _example_list(example_inputs)
    if isinstance(example_inputs, Mapping):
        names = [str(k) for k in example_inputs]
    elif examples is not None:
        names = block_input_names(len(examples))
    elif isinstance(input_shapes, Mapping):
        names = [str(k) for k in input_shapes]
    else:
        names = block_input_names(len(input_shapes) if _is_shape_list(input_shapes) else 1)
    if examples is None and input_shapes is not None:
        examples = [mx.nd.zeros(tuple(s)) for s in _shape_list(input_shapes, names)]
    if examples is not None:
        try:
            with mx.autograd.predict_mode():
                block(*[to_ndarray(x) for x in examples])
        except Exception as exc:  # the user's forward failed on the user's inputs
            raise ModelLoadError(f"the block's forward pass on the example inputs failed: {error_text(exc)}") from None
    try:
        out = block(*[mx.sym.var(n) for n in names])
    except Exception as exc:
        raise ModelLoadError(f"cannot trace the block symbolically ({error_text(exc)}); check that hybrid_forward "
                             "uses only F.* operators") from None
    symbol = out if isinstance(out, mx.sym.Symbol) else mx.sym.Group(_flatten_symbols(out))
    by_name = {p.name: p for p in block.collect_params().values()}
    args, aux = {}, {}
    for kind, wanted in (("arg", symbol.list_arguments()), ("aux", symbol.list_auxiliary_states())):
        for name in wanted:
            if name in names:
                continue
            param = by_name.get(name)
            if param is None:
                raise ModelLoadError(f"the block's symbol reads {name!r}, which is no parameter of the block")
            try:
                data = param.list_data()[0]
            except (mx.gluon.parameter.DeferredInitializationError, RuntimeError):
                raise ModelLoadError(f"parameter {name!r} is not initialized yet; pass example inputs "
                                     "(MixedPrecisionConfig(example_inputs=(mx.nd.array(...),)))") from None
            (args if kind == "arg" else aux)[name] = data
    return _Source(symbol, args, aux, input_names=names)


def _flatten_symbols(out: Any) -> list[Any]:
    if isinstance(out, mx.sym.Symbol):
        return [out]
    if isinstance(out, (tuple, list)):
        return [s for item in out for s in _flatten_symbols(item)]
    raise ModelLoadError(f"the block returned {type(out).__name__}; MXNet blocks return symbols or tuples of them")


def _is_shape_list(shapes: Any) -> bool:
    return isinstance(shapes, (tuple, list)) and bool(shapes) and all(isinstance(s, (tuple, list)) for s in shapes)


def _shape_list(shapes: Any, names: list[str]) -> list[tuple]:
    if isinstance(shapes, Mapping):
        return [tuple(shapes[n]) for n in names]
    if _is_shape_list(shapes):
        return [tuple(s) for s in shapes]
    return [tuple(shapes)]


def _fill_input_info(source: _Source, example_inputs: Any, input_shapes: Any) -> None:
    """Input names (in order), and their shapes and dtypes where known."""
    params = set(source.args) | set(source.aux)
    if source.input_names is None:
        source.input_names = [n for n in source.symbol.list_arguments() if n not in params]
    names = source.input_names
    examples = _example_list(example_inputs)
    if examples is not None:
        if isinstance(example_inputs, Mapping):
            pairs = [(str(k), v) for k, v in example_inputs.items()]
        else:
            if len(examples) != len(names):
                raise ModelLoadError(f"{len(examples)} example inputs for a model with {len(names)} inputs "
                                     f"({', '.join(names)})")
            pairs = list(zip(names, examples))
        for name, value in pairs:
            array = to_ndarray(value)
            source.shapes[name] = tuple(array.shape)
            source.dtypes[name] = dtype_from_mx(array.dtype)
        source.shapes_from = "example inputs"
    elif input_shapes is not None:
        source.shapes.update(zip(names, _shape_list(input_shapes, names)) if not isinstance(input_shapes, Mapping)
                             else {str(k): tuple(v) for k, v in input_shapes.items()})
        source.shapes_from = "input_shapes"
    unknown = sorted(set(source.shapes) - set(names))
    if unknown:
        raise ModelLoadError(f"shapes given for {', '.join(unknown)}, which are not inputs of the model "
                             f"(its inputs: {', '.join(names) or 'none'})")


# --------------------------------------------------------------------------- lowering ---
class _Lowerer:
    """Lowers one canonical symbol JSON into a Graph."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.symbol = _load_json(source.symbol.tojson(remove_amp_cast=False), "the symbol")
        self.doc = json.loads(self.symbol.tojson(remove_amp_cast=False))
        self.nodes: list[dict[str, Any]] = self.doc["nodes"]
        self.internals = self.symbol.get_internals()
        self.graph = Graph("main", FRAMEWORK)
        self.values: dict[tuple[int, int], Value] = {}
        self.meta: dict[str, Any] = {"json_attrs": self.doc.get("attrs", {}), "null_attrs": {},
                                     "aux": sorted(source.aux), "versions": {}, "subgraphs": {}}

    def lower(self) -> Model:
        self._check_params()
        self._complete_shapes()
        types, shapes = self._infer()
        names = self.internals.list_outputs()
        counts = self._output_counts(len(names))
        position = 0
        used = {n["name"] for n in self.nodes if n["op"] == "null"}
        for nid, node in enumerate(self.nodes):
            count = counts[nid]
            info = [(names[position + i], types[position + i], shapes[position + i]) for i in range(count)]
            position += count
            if node["op"] == "null":
                self._lower_variable(nid, node, info[0])
            else:
                self._lower_op(nid, node, info, used)
        self._order_inputs()
        for head in self.doc["heads"]:
            self.graph.outputs.append(self._ref(head, "the graph outputs"))
        self.meta["shapes_from"] = self.source.shapes_from or "unknown"
        return Model(self.graph, {META: self.meta})

    # ---- checks and inference -----------------------------------------------------------
    def _check_params(self) -> None:
        variables = collections.Counter(n["name"] for n in self.nodes if n["op"] == "null")
        duplicates = sorted(n for n, count in variables.items() if count > 1)
        if duplicates:
            raise ModelLoadError(f"the symbol has several variables named {', '.join(duplicates)}")
        args, aux = set(self.symbol.list_arguments()), set(self.symbol.list_auxiliary_states())
        extra = sorted((set(self.source.args) - args) | (set(self.source.aux) - aux))
        if extra:
            raise ModelLoadError(f"the parameters do not belong to this symbol: it has no variable "
                                 f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; pair the symbol "
                                 "file with the parameter file saved with it")
        missing_aux = sorted(aux - set(self.source.aux))
        if missing_aux:
            raise ModelLoadError(f"the parameters lack the auxiliary states {', '.join(missing_aux[:5])}; pair the "
                                 "symbol file with the parameter file saved with it")

    def _param(self, name: str) -> Any:
        return self.source.args[name] if name in self.source.args else self.source.aux.get(name)

    def _complete_shapes(self) -> None:
        """Input shapes from ``__shape__`` attributes, else guessed from the weights."""
        source = self.source
        missing = [n for n in source.input_names if n not in source.shapes]
        if not missing:
            return
        declared = {n["name"]: _declared_shape(n) for n in self.nodes if n["op"] == "null"}
        if all(declared.get(n) for n in missing):
            source.shapes.update({n: declared[n] for n in missing})
            source.shapes_from = source.shapes_from or "__shape__ attributes"
            return
        guessed = self._guess_shapes(missing)
        if guessed:
            source.shapes.update(guessed)
            source.shapes_from = "guessed from the first layers' weights"
            logger.warning("input shapes guessed from the weights: %s; pass example inputs for other shapes",
                           ", ".join(f"{n}={list(s)}" for n, s in guessed.items()))

    def _guess_shapes(self, missing: list[str]) -> dict[str, tuple]:
        """Shapes for inputs the model does not declare, from the first layer that reads
        each (see :class:`_Template`): the first combination of layouts and the first
        size in :data:`_GUESS_SIZES` for which shape inference succeeds. What was a guess
        goes to ``meta["input_specs"]`` (guessed dims None, the index bound of token ids)
        so that sample inputs can follow the conventional ladder instead. {} on failure."""
        templates: dict[str, _Template] = {}
        for name in missing:
            template = self._shape_template(name)
            if template is None:
                return {}
            templates[name] = template
        for layouts in itertools.product(*(t.layouts for t in templates.values())):
            for size in _GUESS_SIZES:
                shapes = {n: t.shape(layout, size) for (n, t), layout in zip(templates.items(), layouts)}
                if self._shapes_work({**self.source.shapes, **shapes}):
                    self.meta["input_specs"] = {n: t.spec(layout) for (n, t), layout in
                                                zip(templates.items(), layouts)}
                    return shapes
        return {}

    def _shape_template(self, name: str) -> "_Template | None":
        """What the first reader of input ``name`` says about its shape."""
        same = {next(i for i, n in enumerate(self.nodes) if n["op"] == "null" and n["name"] == name)}
        for nid, node in enumerate(self.nodes):
            inputs = node.get("inputs", [])
            if not inputs or inputs[0][0] not in same:
                continue
            if node["op"] in _SHAPE_KEEPING and len(inputs) == 1:
                same.add(nid)  # a cast of the input: look at its readers instead
                continue
            if len(inputs) < 2:
                return None
            weight = self._param(self.nodes[inputs[1][0]]["name"])
            if weight is None:
                return None
            return _template(node["op"], node.get("attrs", {}), tuple(int(d) for d in weight.shape))
        return None

    def _shapes_work(self, shapes: dict[str, tuple]) -> bool:
        try:
            with quiet():
                _, outs, _ = self.symbol.infer_shape(**shapes, **self._param_shapes())
        except mx.base.MXNetError:
            return False
        return outs is not None and all(s and all(d > 0 for d in s) for s in outs)

    def _param_shapes(self) -> dict[str, tuple]:
        return {n: tuple(v.shape) for n, v in {**self.source.args, **self.source.aux}.items()}

    def _infer(self) -> tuple[list[Any], list[Any]]:
        """Per internal output: its dtype (from infer_type) and shape (infer_shape_partial)."""
        source = self.source
        dtypes = {n: dtype_to_mx(d) for n, d in source.dtypes.items() if d != DType.UNKNOWN}
        for name in source.input_names:
            dtypes.setdefault(name, np.float32)
        dtypes.update({n: v.dtype for n, v in {**source.args, **source.aux}.items()})
        try:
            with quiet():
                _, types, _ = self.internals.infer_type_partial(**dtypes)
        except mx.base.MXNetError as exc:
            raise ModelLoadError(f"MXNet type inference fails on this model: {error_text(exc)}") from None
        shapes = {**source.shapes, **self._param_shapes()}
        try:
            with quiet():
                _, out_shapes, _ = self.internals.infer_shape_partial(**shapes)
        except mx.base.MXNetError as exc:
            raise ModelLoadError(f"the parameters or input shapes do not fit the symbol: {error_text(exc)}") from None
        count = len(self.internals.list_outputs())
        return list(types or [None] * count), list(out_shapes or [()] * count)

    def _output_counts(self, total: int) -> list[int]:
        """Visible outputs per JSON node; they add up to the internals' outputs."""
        rows = self.doc.get("node_row_ptr") or []
        counts = [1 if n["op"] == "null" else
                  rows[i + 1] - rows[i] if n.get("subgraphs") and len(rows) > i + 1 else  # control flow
                  visible_outputs(n) for i, n in enumerate(self.nodes)]
        if sum(counts) != total:
            raise ModelLoadError(f"cannot match the symbol's {total} internal outputs to its {len(self.nodes)} "
                                 "nodes; please report this model")
        return counts

    # ---- nodes --------------------------------------------------------------------------
    def _lower_variable(self, nid: int, node: dict[str, Any], info: tuple) -> None:
        name = node["name"]
        if node.get("attrs"):
            self.meta["null_attrs"][name] = dict(node["attrs"])
        data = self._param(name)
        if data is not None:
            array = ndarray_to_numpy(data)
            value = Value(name, dtype_from_mx(data.dtype), tuple(array.shape), array)
            self.graph.add_constant(value)
        else:
            value = Value(name, dtype_from_mx(info[1]), _shape(info[2]))
            self.graph.add_input(value)
        self.values[(nid, 0)] = value

    def _lower_op(self, nid: int, node: dict[str, Any], info: list[tuple], used: set[str]) -> None:
        name = node["name"]
        inputs = [self._ref(entry, f"node {name!r}") for entry in node.get("inputs", [])]
        for entry, value in zip(node.get("inputs", []), inputs):
            if len(entry) > 2 and entry[2]:
                self.meta["versions"][version_key(name, value.name)] = int(entry[2])
        outputs = []
        for out_name, dtype, shape in info:
            unique = claim(out_name, used, sep=".")
            outputs.append(Value(unique, dtype_from_mx(dtype), _shape(shape)))
        attrs: dict[str, Any] = dict(node.get("attrs", {}))
        if node["op"] == CAST_OP and "dtype" in attrs:
            attrs["dtype"] = parse_cast_dtype(attrs["dtype"], name)
        if node.get("subgraphs"):
            self.meta["subgraphs"][name] = node["subgraphs"]
        self.graph.append(Node(node["op"], inputs, outputs, attrs, name=name))
        for index, value in enumerate(outputs):
            self.values[(nid, index)] = value

    def _ref(self, entry: Sequence[int], where: str) -> Value:
        value = self.values.get((int(entry[0]), int(entry[1])))
        if value is None:
            raise ModelLoadError(f"{where} reads output {entry[1]} of node {entry[0]}, which the symbol does not have")
        return value

    def _order_inputs(self) -> None:
        """Graph inputs in the block's argument order (for a traced block) or the symbol's."""
        order = {n: i for i, n in enumerate(self.source.input_names)}
        self.graph.inputs.sort(key=lambda v: order.get(v.name, len(order)))


@dataclass(frozen=True)
class _Template:
    """An undeclared input's shape as its first reader implies it: ``features`` at axis
    1 (channels or features; None for token ids), then one of ``layouts`` (the number of
    spatial dims after the features, or for token ids the rank), each guessed dim of one
    size. ``high``: the rows of the table that token ids index."""
    features: int | None
    layouts: tuple[int, ...]
    high: int | None = None

    def shape(self, layout: int, size: int) -> tuple[int, ...]:
        if self.features is None:
            return (1,) * (layout - 1) + (size,)
        return (1, self.features) + (size,) * layout

    def spec(self, layout: int) -> dict[str, Any]:
        """The input as ``mixprec.sample_inputs.InputSpec`` fields: dims (None where
        guessed), high and image."""
        if self.features is None:
            return {"dims": [None] * layout, "high": self.high, "image": False}
        return {"dims": [None, self.features] + [None] * layout, "high": None, "image": layout == 2}


#: first layers whose weight (input 1) gives the channels of their data input: op -> how
#: many spatial dims to try, most likely first
_CHANNEL_FIRST_LAYERS = {"BatchNorm": (2, 0, 1, 3), "_contrib_BatchNormWithReLU": (2, 0, 1, 3),
                         "InstanceNorm": (2, 1, 3)}
#: ranks tried for token ids read by an Embedding
_TOKEN_RANKS = (2, 1, 3)


def _template(op: str, attrs: Mapping[str, Any], weight: tuple[int, ...]) -> _Template | None:
    """The template a first layer with this weight shape implies, or None."""
    if op == "Convolution" and len(weight) >= 3:
        return _Template(weight[1] * int(attrs.get("num_group", "1")), (len(weight) - 2,))
    if op == "FullyConnected" and len(weight) == 2:
        return _Template(weight[1], (0,))
    if op in _CHANNEL_FIRST_LAYERS and len(weight) == 1 and str(attrs.get("axis", "1")) == "1":
        return _Template(weight[0], _CHANNEL_FIRST_LAYERS[op])
    if op == "Embedding" and len(weight) == 2:
        return _Template(None, _TOKEN_RANKS, high=weight[0])
    return None


def visible_outputs(node: Mapping[str, Any]) -> int:
    """How many outputs of a JSON op node a symbol exposes (BatchNorm: 1, or 3 with
    output_mean_var; SliceChannel: num_outputs), asked of MXNet with a one-node graph."""
    attrs = node.get("attrs", {}) or {}
    return _visible_outputs(node["op"], json.dumps(attrs, sort_keys=True), len(node.get("inputs", [])))


_VISIBLE_CACHE: dict[tuple[str, str, int], int] = {}


def _visible_outputs(op: str, attrs_json: str, num_inputs: int) -> int:
    key = (op, attrs_json, num_inputs)
    if key not in _VISIBLE_CACHE:
        nodes = [{"op": "null", "name": f"in{i}", "inputs": []} for i in range(num_inputs)]
        nodes.append({"op": op, "name": "node", "attrs": json.loads(attrs_json),
                      "inputs": [[i, 0, 0] for i in range(num_inputs)]})
        doc = {"nodes": nodes, "arg_nodes": list(range(num_inputs)), "heads": [[num_inputs, 0, 0]],
               "attrs": {"mxnet_version": ["int", 10901]}}
        symbol = _load_json(json.dumps(doc), f"a one-node {op} graph")
        _VISIBLE_CACHE[key] = len(symbol.get_internals().list_outputs()) - num_inputs
    return _VISIBLE_CACHE[key]



def _declared_shape(node: Mapping[str, Any]) -> tuple | None:
    """A variable's ``__shape__`` attribute when it is fully known."""
    text = (node.get("attrs") or {}).get("__shape__")
    if not text:
        return None
    dims = tuple(int(d) for d in re.findall(r"-?\d+", text))
    return dims if dims and all(d > 0 for d in dims) else None


def _shape(shape: Any) -> tuple | None:
    """An inferred shape in IR form: unknown rank -> None, unknown dim (0) -> None."""
    if not shape:
        return None
    return tuple(int(d) if d > 0 else None for d in shape)


