"""The MXNet dialect of the IR (symbol JSON): its registration record and what the MXNet
frontend, backend and runtime share: the meta key of the round-trip data, the cast op
(``amp_cast``) and its dtype spelling, MXNet's type flags and names, dtype and data
conversions between numpy/the IR and NDArrays, and the patched ``import mxnet``.

Invariant: importing this module imports no mxnet (the framework registry imports every
dialect to read its record); :func:`import_mxnet` imports it, once, with numpy patched
first, and the frontend, backend and runtime call it at their module top."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import sys
import warnings
from typing import Any, Iterator

import numpy as np

from mixprec.errors import MissingDependencyError, ModelLoadError
from mixprec.fileio import first_line
from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec
from mixprec.ir.dtypes import DType

logger = logging.getLogger(__name__)

FRAMEWORK = Framework(
    name="mxnet", suffixes=(".json", ".params"), module_roots=("mxnet",), cast=CastSpec("amp_cast", "dtype"),
    policy="mxnet", adapter="mixprec.runtimes.mxnet:MxnetAdapter",
    description="MXNet -symbol.json/.params pairs", timer="mixprec.runtimes.mxnet_timing:MXNetTimer")

#: key of model.meta holding the round-trip data:
#:   json_attrs:  the symbol JSON's top-level "attrs" (mxnet_version)
#:   null_attrs:  {variable name: its node's attrs} for inputs and constants
#:   aux:         names of constants that are auxiliary states
#:   versions:    {"<node name>\x00<value name>": version} of non-zero input versions
#:   subgraphs:   {node name: the node's raw "subgraphs" list} (control-flow ops)
#:   shapes_from: where the input shapes came from (example inputs, __shape__, guessed, ...)
#:   input_specs: {input name: {"dims", "high", "image"}} for inputs whose shape was
#:                guessed: dims None where guessed, high the table rows token ids index
META = "mxnet"
CAST_OP = "amp_cast"

#: MXNet's type flags (mshadow) and names, as used in ``__dtype__`` attributes and by
#: ``amp_cast``'s ``dtype`` attribute.
_FLAG_TO_DTYPE = {0: DType.FLOAT32, 1: DType.FLOAT64, 2: DType.FLOAT16, 3: DType.UINT8, 4: DType.INT32,
                  5: DType.INT8, 6: DType.INT64, 7: DType.BOOL, 8: DType.INT16, 9: DType.UINT16,
                  10: DType.UINT32, 11: DType.UINT64, 12: DType.BFLOAT16}
DTYPE_TO_FLAG = {v: k for k, v in _FLAG_TO_DTYPE.items()}
_NAME_TO_DTYPE = {"float32": DType.FLOAT32, "float64": DType.FLOAT64, "float16": DType.FLOAT16,
                  "bfloat16": DType.BFLOAT16, "uint8": DType.UINT8, "int8": DType.INT8, "int16": DType.INT16,
                  "int32": DType.INT32, "int64": DType.INT64, "uint16": DType.UINT16, "uint32": DType.UINT32,
                  "uint64": DType.UINT64, "bool": DType.BOOL}
DTYPE_TO_NAME = {v: k for k, v in _NAME_TO_DTYPE.items()}


# ----------------------------------------------------------------------------- mxnet ---
@functools.cache
def import_mxnet() -> Any:
    """Import mxnet 1.9.1 (once; later calls return the module). Its Python code uses
    ``np.bool``, which numpy >= 1.24 removed, so the alias is restored first (a no-op where
    numpy still has it); the warnings the import itself raises are silenced. Raises
    MissingDependencyError when mxnet is not installed."""
    if "bool" not in np.__dict__:
        np.bool = np.bool_  # type: ignore[attr-defined]
    openmp = _openmp()
    threads = openmp.omp_get_max_threads() if openmp is not None else 0
    try:
        with warnings.catch_warnings():  # mxnet probes numpy names that numpy deprecated
            warnings.simplefilter("ignore")
            import mxnet
            from mxnet.contrib.amp import amp  # noqa: F401  (imported here, under the same filter)
    except ImportError as exc:
        raise MissingDependencyError(f"MXNet models need the mxnet package (pip install mxnet==1.9.1): {exc}") from None
    if openmp is not None and threads > 0 and openmp.omp_get_max_threads() != threads:
        # importing mxnet sets the calling thread's OpenMP threads to 1 (its engine runs ops on
        # its own threads): torch in the same process would then run single-threaded (a 2x
        # slower BF16 MLP on 2 cores), whether imported before mxnet or after
        openmp.omp_set_num_threads(threads)
        logger.debug("restored %d OpenMP threads after importing mxnet", threads)
    return mxnet


@functools.cache
def _openmp() -> Any:
    """The process's GNU OpenMP runtime (the one torch and mxnet share), or None."""
    try:
        return ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None


@functools.cache
def mx_bfloat16() -> Any:
    """The numpy dtype MXNet uses for bf16 NDArrays (a structured uint16 type)."""
    import_mxnet()
    from mxnet.contrib.amp import amp

    return amp.bfloat16


def dtype_from_mx(dtype: Any) -> DType:
    """The IR dtype of a dtype MXNet reports (numpy type, bf16's structured type, or
    None for an unknown one)."""
    if dtype is None:
        return DType.UNKNOWN
    np_dtype = np.dtype(dtype)
    if np_dtype.names == ("bfloat16",):
        return DType.BFLOAT16
    try:
        return DType.from_numpy(np_dtype)
    except ValueError:
        return DType.UNKNOWN


def dtype_to_mx(dtype: DType) -> Any:
    """The dtype MXNet's NDArray calls take for ``dtype`` (bf16: amp's dtype object)."""
    return mx_bfloat16() if dtype == DType.BFLOAT16 else dtype.to_numpy()


def ndarray_to_numpy(array: Any) -> np.ndarray:
    """An NDArray's data as numpy; bf16 becomes ml_dtypes.bfloat16 (exactly)."""
    if dtype_from_mx(array.dtype) == DType.BFLOAT16:
        return array.astype("float32").asnumpy().astype(DType.BFLOAT16.to_numpy())
    return array.asnumpy()


def numpy_to_ndarray(data: np.ndarray, dtype: DType) -> Any:
    """numpy data as an NDArray of ``dtype`` on the CPU (bf16 values survive exactly:
    they travel as float32, which holds every bf16 value)."""
    mx = import_mxnet()
    if dtype == DType.BFLOAT16:  # widened into a fresh array that MXNet takes without a copy, then cast
        wide = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
        low = mx.nd.from_numpy(wide, zero_copy=True).astype(mx_bfloat16())
        low.wait_to_read()  # the cast has read ``wide`` before it goes
        return low
    arr = np.asarray(data, dtype=dtype.to_numpy())
    return mx.nd.array(arr, dtype=arr.dtype)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what MXNet's Python inference helpers print to stdout ("infer_shape
    error. Arguments: ...") and warn about; their errors still raise."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def parse_cast_dtype(text: str, node_name: str) -> DType:
    """The IR dtype of an ``amp_cast`` node's ``dtype`` attribute (an MXNet type name);
    ModelLoadError for a name MXNet does not have."""
    dtype = _NAME_TO_DTYPE.get(str(text))
    if dtype is None:
        raise ModelLoadError(f"amp_cast node {node_name!r} has an unknown dtype {text!r}")
    return dtype


def version_key(node_name: str, value_name: str) -> str:
    """The key of ``meta["mxnet"]["versions"]`` for the input ``value_name`` of ``node_name``."""
    return f"{node_name}\x00{value_name}"


_TRACEBACK = "Traceback (most recent call last): "


def error_text(exc: BaseException, limit: int = 300) -> str:
    """An MXNet error on one line (:func:`mixprec.fileio.first_line`), without the
    ``Traceback (most recent call last):`` lead that MXNet's C++ errors carry, shortened
    to ``limit`` characters afterwards."""
    text = first_line(exc, limit=sys.maxsize).replace(_TRACEBACK, "")
    return text[:limit] if text else type(exc).__name__
