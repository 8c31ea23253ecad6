"""The torch region timer for ``objective="performance"`` (mixprec.profiling).

A region's standalone graphs are emitted through the torch backend (the same eager fx
execution the converted module uses, so per-op dispatch and cast costs are counted as
they will be paid) and run under ``torch.no_grad`` at the model's shapes, interleaved
(mixprec.profiling.timing.measure_pair). The version key includes the thread count:
timings at 2 threads say nothing about 16."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils import _pytree as pytree

from mixprec.backends import torch as backend
from mixprec.dialects.torch import META_KEY, split_inputs
from mixprec.ir.graph import Graph, Model
from mixprec.profiling.timing import FrameworkTimer, Measurement, TimingPolicy, TimingUnavailable, measure_pair, \
    model_policy

logger = logging.getLogger(__name__)


class TorchTimer(FrameworkTimer):
    """Times regions of one torch model (``loaded``: its FP32 IR) on this machine."""
    framework = "torch"

    def version(self) -> str:
        return f"{torch.__version__}-threads{torch.get_num_threads()}"

    def sample_shapes(self) -> list[tuple[int, ...]]:
        leaves = pytree.tree_leaves(self.sample_inputs())
        return [tuple(leaf.shape) for leaf in leaves if isinstance(leaf, torch.Tensor)]

    def capture(self, names: Sequence[str]) -> dict[str, Any]:
        """The FP32 model's values ``names`` on the sample inputs (one run of the model
        emitted with them as its outputs)."""
        model = self._with_outputs(names)
        meta = dict(model.meta.get(META_KEY, {}))
        meta["out_spec"] = pytree.tree_flatten(tuple(range(len(names))))[1]
        meta["constant_outputs"] = {}
        model.meta[META_KEY] = meta
        args, kwargs = split_inputs(self.sample_inputs())
        try:
            with torch.no_grad():
                out = backend.emit(model)(*args, **kwargs)
        except Exception as exc:
            raise TimingUnavailable(f"the FP32 model does not run with its intermediate values as outputs: "
                                    f"{type(exc).__name__}: {exc}") from None
        return dict(zip(names, out))

    def time(self, fp32: Graph, low: Graph, inputs: Sequence[Any], policy: TimingPolicy) -> Measurement:
        reference = backend.emit(Model(fp32))
        converted = backend.emit(Model(low))
        args = [torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x for x in inputs]
        with torch.no_grad():
            return measure_pair(lambda: reference(*args), lambda: converted(*args), policy)

    def time_models(self, original: Any, converted: Any, policy: TimingPolicy) -> Measurement:
        """The whole FP32 model against the converted one on the sample inputs."""
        native = self.native(original)
        args, kwargs = split_inputs(self.sample_inputs())
        with torch.no_grad():
            return measure_pair(lambda: native(*args, **kwargs), lambda: converted(*args, **kwargs),
                                model_policy(policy))
