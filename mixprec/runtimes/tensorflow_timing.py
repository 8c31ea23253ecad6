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
from mixprec.profiling.timing import FrameworkTimer, Measurement, TimingPolicy, TimingUnavailable, measure_pair, \
    model_policy

logger = logging.getLogger(__name__)


class TensorFlowTimer(FrameworkTimer):
    """Times regions of one TensorFlow model (``loaded``: its FP32 IR) on this machine."""
    framework = "tensorflow"

    def version(self) -> str:
        threads = tf.config.threading.get_intra_op_parallelism_threads() or "default"
        return f"{tf.__version__}-threads{threads}"

    def sample_shapes(self) -> list[tuple[int, ...]]:
        sample = self.sample_inputs()
        leaves = sample.values() if isinstance(sample, dict) else sample if isinstance(sample, (list, tuple)) \
            else [sample]
        return [tuple(np.shape(leaf)) for leaf in leaves]

    def capture(self, names: Sequence[str]) -> dict[str, Any]:
        model = self._with_outputs(names)
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
        native, inputs = self.native(original), self.sample_inputs()
        return measure_pair(lambda: self._adapter.run_original(native, inputs),
                            lambda: self._adapter.run_converted(converted, inputs, self._config),
                            model_policy(policy))
