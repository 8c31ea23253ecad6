"""The TensorFlow region timer for ``objective="performance"`` (mixprec.profiling).

A region's standalone graphs are emitted as frozen GraphDefs by the TensorFlow backend
and run as pruned concrete functions (oneDNN behind them on x86, as for the converted
model), fed with tensors made once, interleaved (mixprec.profiling.timing.measure_pair).
The version key includes the intra-op thread setting."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from mixprec.backends import tensorflow as backend
from mixprec.ir.graph import Graph, Model
from mixprec.profiling.timing import Measurement, TimingPolicy, TimingUnavailable, measure_pair

logger = logging.getLogger(__name__)

MODEL_POLICY = TimingPolicy(min_reps=5, max_reps=30, max_seconds=4.0, min_sample_s=0.0)


class TensorFlowTimer:
    """Times regions of one TensorFlow model (``loaded``: its FP32 IR) on this machine."""
    framework = "tensorflow"

    def __init__(self, adapter: Any, original: Any, loaded: Model, config: Any) -> None:
        self._adapter = adapter
        self._original = original
        self._loaded = loaded
        self._config = config
        self._sample: Any = None
        self._native: Any = None

    def version(self) -> str:
        threads = tf.config.threading.get_intra_op_parallelism_threads() or "default"
        return f"{tf.__version__}-threads{threads}"

    def sample_inputs(self) -> Any:
        if self._sample is None:
            from mixprec.mix_precision import reference_run
            self._sample, _ = reference_run(self._adapter, self._original, self._loaded, self._config)
        return self._sample

    def sample_shapes(self) -> list[tuple[int, ...]]:
        sample = self.sample_inputs()
        leaves = sample.values() if isinstance(sample, dict) else sample if isinstance(sample, (list, tuple)) \
            else [sample]
        return [tuple(np.shape(leaf)) for leaf in leaves]

    def capture(self, names: Sequence[str]) -> dict[str, Any]:
        model = self._loaded.clone()
        graph = model.graph
        values = {v.name: v for v in graph.values()}
        missing = [n for n in names if n not in values]
        if missing:
            raise TimingUnavailable(f"no values named {missing[:3]} in the FP32 model")
        graph.outputs = [values[n] for n in names]
        model.meta[backend.TF_META] = {k: v for k, v in model.meta.get(backend.TF_META, {}).items()
                                       if k != "output_keys"}
        try:
            outputs = self._adapter.run_converted(backend.graph_model(model).load(), self.sample_inputs(),
                                                  self._config)
        except Exception as exc:
            raise TimingUnavailable(f"the FP32 graph does not run with its intermediate values as outputs: "
                                    f"{type(exc).__name__}: {exc}") from None
        return dict(zip(names, outputs))

    def time(self, fp32: Graph, low: Graph, inputs: Sequence[Any], policy: TimingPolicy) -> Measurement:
        reference = backend.graph_model(Model(fp32)).load()
        converted = backend.graph_model(Model(low)).load()
        feeds = [tf.convert_to_tensor(np.asarray(x)) for x in inputs]
        return measure_pair(lambda: reference.function(*feeds), lambda: converted.function(*feeds), policy)

    def time_models(self, original: Any, converted: Any, policy: TimingPolicy) -> Measurement:
        if self._native is None:
            self._native = self._adapter.native(original)
        inputs = self.sample_inputs()
        return measure_pair(lambda: self._adapter.run_original(self._native, inputs),
                            lambda: self._adapter.run_converted(converted, inputs, self._config), MODEL_POLICY)
