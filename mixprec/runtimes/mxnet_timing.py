"""The MXNet region timer for ``objective="performance"`` (mixprec.profiling).

A region's standalone graphs are emitted by the MXNet backend as gluon SymbolBlocks (what
the converted model is: a CachedOp over oneDNN/MKLDNN kernels on x86) and called on
NDArrays made once, interleaved (mixprec.profiling.timing.measure_pair). MXNet runs
asynchronously, so every timed call waits for its outputs (``wait_to_read``): what is
measured is the compute, not the enqueueing.

Invariants:

- a low twin is run only when every node of it that touches the low precision has a
  kernel the runtime table (mixprec.runtimes.mxnet.kernel_table) verified; otherwise
  TimingUnavailable, before MXNet sees it (some ops without a bf16 kernel corrupt the
  heap instead of raising), so such a region is unknown and stays FP32;
- an MXNet error while building or running a region is TimingUnavailable, never a crash;
- the version key holds mxnet's version, the oneDNN build flag and every thread and
  engine setting (OMP_NUM_THREADS, MXNET_*, the CPUs this process may use): timings at
  2 threads say nothing about 16."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import numpy as np

from mixprec.backends import mxnet as backend
from mixprec.dialects.mxnet import error_text, import_mxnet, numpy_to_ndarray
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model
from mixprec.profiling.timing import FrameworkTimer, Measurement, TimingPolicy, TimingUnavailable, measure_pair, \
    model_policy
from mixprec.runtimes import mxnet as runtime

logger = logging.getLogger(__name__)

mx = import_mxnet()

#: the environment that changes how fast MXNet runs on the CPU (besides any MXNET_* variable)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "KMP_AFFINITY", "OMP_PROC_BIND")
_LOW = (DType.BFLOAT16, DType.FLOAT16)


def thread_setting() -> str:
    """The thread and engine settings MXNet reads, as one deterministic string: the CPUs
    this process may run on, then each of OMP_NUM_THREADS, KMP_AFFINITY, OMP_PROC_BIND
    and every MXNET_* variable that is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 0
    names = sorted({n for n in os.environ if n.startswith("MXNET_")} | set(_THREAD_VARIABLES))
    parts = [f"cpus{cpus}"] + [f"{n}={os.environ[n]}" for n in names if n in os.environ]
    return ",".join(parts)


def onednn_enabled() -> bool:
    """Whether this mxnet build has oneDNN (MKLDNN) kernels."""
    try:
        return bool(mx.runtime.Features().is_enabled("MKLDNN"))
    except Exception as exc:  # an mxnet build without the runtime feature list
        logger.info("cannot read mxnet's build features: %s", error_text(exc))
        return False


def unsupported(graph: Graph, precision: str) -> str | None:
    """Why ``graph`` (a region's low twin) cannot run on this runtime in ``precision``
    (the first node touching a low precision whose kernel the table has not verified),
    or None when it can."""
    table = runtime.kernel_table(precision)
    for node in graph.iter_nodes():
        values = [v for v in (*node.inputs, *node.outputs) if v is not None]
        if not any(v.dtype in _LOW for v in values):
            continue
        why = table.why_not(node) if table is not None else f"{runtime.RUNTIME} has no {precision} kernels"
        if why is not None:
            return why
    return None


def wait(outputs: Any) -> None:
    """Block until MXNet has computed ``outputs`` (an NDArray or nested sequences of them)."""
    if isinstance(outputs, (list, tuple)):
        for item in outputs:
            wait(item)
    else:
        outputs.wait_to_read()


class MXNetTimer(FrameworkTimer):
    """Times regions of one MXNet model (``loaded``: its FP32 IR) on this machine."""
    framework = "mxnet"

    def version(self) -> str:
        dnn = "onednn" if onednn_enabled() else "native"
        return f"{mx.__version__}-{dnn}-{thread_setting()}"

    def sample_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(x.shape) for x in runtime.block_args(self.sample_inputs())]

    def capture(self, names: Sequence[str]) -> dict[str, Any]:
        """The FP32 model's values ``names`` on the sample inputs, as numpy: graph inputs
        from the sample inputs themselves, the others from one run of the FP32 model
        emitted with them as its outputs."""
        sample = runtime.block_args(self.sample_inputs())
        given = {v.name: x.asnumpy() for v, x in zip(self._loaded.graph.inputs, sample)}
        computed = [n for n in names if n not in given]
        found = {n: given[n] for n in names if n in given}
        if not computed:
            return found
        model = self._with_outputs(computed)
        try:
            block = _block(model)
            outputs = runtime.run_block(block, sample, {v.name: v.dtype for v in model.graph.inputs})
        except Exception as exc:  # MXNetError, ConversionError: the values cannot be had
            raise TimingUnavailable(f"the FP32 model does not run with its intermediate values as outputs: "
                                    f"{type(exc).__name__}: {error_text(exc, 200)}") from None
        found.update(zip(computed, outputs))
        return found

    def time(self, fp32: Graph, low: Graph, inputs: Sequence[Any], policy: TimingPolicy) -> Measurement:
        why = unsupported(low, self._config.precision)
        if why is not None:
            raise TimingUnavailable(f"not run: {why}")
        reference = _runner(Model(fp32), inputs)
        converted = _runner(Model(low), inputs)
        return measure_pair(reference, converted, policy)

    def time_models(self, original: Any, converted: Any, policy: TimingPolicy) -> Measurement:
        """The whole FP32 model (as given: a user's block runs as the user runs it)
        against the converted SymbolBlock on the sample inputs."""
        native = self.native(original)
        args = runtime.block_args(self.sample_inputs())
        converted_args = self._adapter.converted_args(self.sample_inputs())

        def fp32() -> None:
            with mx.autograd.predict_mode():
                wait(native(*args))

        def low() -> None:
            with mx.autograd.predict_mode():
                wait(converted(*converted_args))
        return measure_pair(fp32, low, model_policy(policy))


def _block(model: Model) -> Any:
    """``model`` as a SymbolBlock (the converted model's own form)."""
    symbol, args, aux = backend.emit(model)
    graph = model.graph
    return backend.to_block(symbol, args, aux, [v.name for v in graph.inputs], {v.name: v.dtype for v in graph.inputs})


def _runner(model: Model, inputs: Sequence[Any]) -> Callable[[], None]:
    """A call of ``model`` (a region's standalone graph) on ``inputs`` made NDArrays once,
    waiting for its outputs; it is run once here, so that an MXNet error is
    TimingUnavailable before anything is timed."""
    try:
        block = _block(model)
        args = [_ndarray(x, v.dtype) for x, v in zip(inputs, model.graph.inputs)]

        def run() -> None:
            with mx.autograd.predict_mode():
                wait(block(*args))
        run()
    except Exception as exc:  # MXNetError, ConversionError: this region cannot run here
        raise TimingUnavailable(f"MXNet cannot run the region: {type(exc).__name__}: {error_text(exc, 200)}") \
            from None
    return run


def _ndarray(value: Any, dtype: DType) -> Any:
    """A region input as an NDArray of ``dtype`` (of its own dtype where the IR does not know it)."""
    array = np.asarray(value)
    return numpy_to_ndarray(array, DType.from_numpy(array.dtype) if dtype == DType.UNKNOWN else dtype)
