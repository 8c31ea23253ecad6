"""The PyTorch dialect of the IR (torch.export ATen graphs): what the frontend
(``mixprec.frontends.torch``) writes and the backend (``mixprec.backends.torch``) reads, and
the framework's registration record ``FRAMEWORK``.

Importing this module imports no torch (the registry imports every dialect to read its
record): the functions that need torch import it when they are called.

IR conventions for torch graphs (the frontend writes exactly these; the backend reads them):

- ``Graph(framework="torch")``; ``node.op`` is the fx target as a string, overload kept
  (``aten.conv2d.default``); python callables on symbolic ints are named by their
  qualified name (``_operator.mul``). ``node.domain`` is empty. ``node.name`` is the fx
  node name; ``node.meta["scope"]`` is the fully qualified name of the innermost module
  that ran the op (``""`` for the root module) and ``node.meta["module_type"]`` its class.
- Inputs follow the op schema's argument order. Every ``Tensor`` / ``Tensor?`` argument is
  exactly one input slot (``None`` when omitted or None). A ``Tensor[]`` / ``Tensor?[]``
  argument is flattened into consecutive slots and ``attrs["_tensor_lists"][name]`` holds
  its length. A python number passed where the schema says Tensor (``aten.add.Tensor(x,
  1)``) leaves the slot ``None`` and is kept in ``attrs[name]``.
- Every other argument that the fx node spells out is ``attrs[name]`` (schema argument
  name): ints, floats, bools, strings, None and lists of them; ``torch.dtype`` ->
  ``mixprec.ir.DType``; ``torch.device`` -> ``"cpu"``; layouts and memory formats -> their
  short names (``"strided"``, ``"contiguous_format"``). A symbolic scalar computed in the
  graph (a SymInt from ``aten.sym_size.int``) inside such an argument becomes an extra
  input slot, referenced from the attribute as ``{"$input": slot}``; the slots no
  attribute references are exactly the tensor arguments, in schema order. A complex
  number is ``{"$complex": [real, imag]}``. Ops without a schema (python callables) name
  their positional arguments ``arg0``, ``arg1``, ... the same way.
- ``aten._assert_tensor_metadata`` checks are dropped (they pin dtypes that passes change).
- A multi-output op (tuple or list result) has one IR output per element; the fx
  ``operator.getitem`` nodes are folded away and give the outputs their names.
- Every value's dtype and shape come from the fake tensor in ``fx_node.meta["val"]``;
  symbolic dims are strings (dim 0 of the inputs is ``"batch"`` with ``dynamic_batch``).
  Symbolic scalars are values of dtype ``i64`` / ``f64`` / ``bool`` and shape ``()``.
- Parameters, buffers and lifted tensor constants are graph constants named by their FQN
  (``layer1.0.conv1.weight``) holding numpy data (bf16 through ml_dtypes); user inputs are
  graph inputs named from the forward signature (a dict input contributes its keys).
- ``aten.to.*`` / ``aten._to_copy`` dtype conversions are the canonical cast
  ``aten._to_copy.default`` with ``attrs["dtype"]: DType`` and nothing else, unless they
  carry kwargs that change something besides the dtype (then kept as extra attrs).
- ``Model.meta["torch"]`` records what the backend needs to rebuild the user-facing call:
  ``in_spec`` / ``out_spec`` (pytree specs, serialized with ``treespec_dumps`` when
  possible), ``arg_names`` (positional parameters of ``forward`` that were given),
  ``kwarg_names``, ``forward_params`` (every positional parameter of ``forward``),
  ``constant_kinds`` (FQN -> parameter | buffer | buffer_nonpersistent |
  constant), ``specialized_inputs`` (flat input index -> the python scalar the graph was
  specialized to; such inputs stay graph inputs of a scalar type), ``constant_outputs``
  (flat output index -> a python constant the module returned, not a graph output),
  ``dynamic_batch`` and ``capture`` (``export`` or ``make_fx``).
"""
from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from mixprec.errors import UnsupportedModelError
from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec
from mixprec.ir.dtypes import DType

if TYPE_CHECKING:
    import torch
    from torch.utils import _pytree as pytree

logger = logging.getLogger(__name__)

#: the IR's ``graph.framework`` of torch graphs
NAME = "torch"
#: the key of ``Model.meta`` for torch (see the module docstring)
META_KEY = "torch"
CAST_OP = "aten._to_copy.default"
#: the attribute holding the lengths of the flattened ``Tensor[]`` arguments
TENSOR_LISTS_ATTR = "_tensor_lists"
#: ``{INPUT_REF: slot}``: an attribute that reads a graph-computed scalar from input ``slot``
INPUT_REF = "$input"
#: ``{COMPLEX_TAG: [real, imag]}``: a complex number attribute
COMPLEX_TAG = "$complex"
#: the name of the shared dynamic dim 0 of the inputs (``dynamic_batch``)
BATCH_DIM = "batch"

FRAMEWORK = Framework(
    name=NAME, suffixes=(".pt2",), module_roots=("torch",), cast=CastSpec(CAST_OP, "dtype"),
    policy="torch", adapter="mixprec.runtimes.torch:TorchAdapter", description="torch.export .pt2 programs",
    timer="mixprec.runtimes.torch_timing:TorchTimer")


# ------------------------------------------------------------------------- dtypes ---
@functools.cache
def _dtype_tables() -> tuple[dict[torch.dtype, DType], dict[DType, torch.dtype]]:
    """(torch dtype -> IR dtype, IR dtype -> torch dtype), built on first use."""
    import torch
    to_ir = {
        torch.float32: DType.FLOAT32, torch.float16: DType.FLOAT16, torch.bfloat16: DType.BFLOAT16,
        torch.float64: DType.FLOAT64, torch.int8: DType.INT8, torch.int16: DType.INT16, torch.int32: DType.INT32,
        torch.int64: DType.INT64, torch.uint8: DType.UINT8, torch.uint16: DType.UINT16, torch.uint32: DType.UINT32,
        torch.uint64: DType.UINT64, torch.bool: DType.BOOL, torch.complex64: DType.COMPLEX64,
        torch.complex128: DType.COMPLEX128, torch.float8_e4m3fn: DType.FLOAT8E4M3,
        torch.float8_e5m2: DType.FLOAT8E5M2,
    }
    return to_ir, {v: k for k, v in to_ir.items()}


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype of an IR dtype (UnsupportedModelError when torch has none)."""
    try:
        return _dtype_tables()[1][dtype]
    except KeyError:
        raise UnsupportedModelError(f"torch has no dtype for {dtype.value}") from None


def ir_dtype(dtype: torch.dtype) -> DType:
    """The IR dtype of a torch dtype (UnsupportedModelError for quantized and other exotics)."""
    try:
        return _dtype_tables()[0][dtype]
    except KeyError:
        raise UnsupportedModelError(f"torch dtype {dtype} has no IR equivalent") from None


# --------------------------------------------------------------------- inputs ---
def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from example inputs: a tuple/list is positional, a dict keywords."""
    import torch
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(f"example_inputs must be a tuple of positional arguments or a dict of keyword "
                    f"arguments, not {type(example_inputs).__name__}")


def dynamic_batch_shapes(args: tuple, kwargs: dict) -> tuple | dict:
    """torch.export ``dynamic_shapes`` making dim 0 of every tensor one shared ``batch`` Dim."""
    import torch
    from torch.utils import _pytree as pytree
    batch = torch.export.Dim(BATCH_DIM, min=1)

    def spec(x: Any) -> Any:
        return {0: batch} if isinstance(x, torch.Tensor) and x.dim() >= 1 else None
    if kwargs:
        return {k: pytree.tree_map(spec, v) for k, v in kwargs.items()}
    return tuple(pytree.tree_map(spec, a) for a in args)


# -------------------------------------------------------------------- schemas ---
def tensor_kind(schema_type: Any) -> str:
    """'tensor' for Tensor / Tensor?, 'list' for Tensor[] / Tensor?[], else 'other'."""
    import torch
    inner = schema_type.getElementType() if isinstance(schema_type, torch.OptionalType) else schema_type
    if isinstance(inner, torch.TensorType):
        return "tensor"
    if isinstance(inner, torch.ListType):
        elem = inner.getElementType()
        elem = elem.getElementType() if isinstance(elem, torch.OptionalType) else elem
        if isinstance(elem, torch.TensorType):
            return "list"
    return "other"


def load_spec(spec: str | pytree.TreeSpec) -> pytree.TreeSpec:
    """Inverse of the spec encoding used in ``Model.meta["torch"]``."""
    from torch.utils import _pytree as pytree
    return pytree.treespec_loads(spec) if isinstance(spec, str) else spec
