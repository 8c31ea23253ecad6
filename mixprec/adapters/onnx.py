"""ONNX adapter: .onnx files and ModelProtos.

The converted model is checked with onnx.checker (full_check). Its outputs come from
onnxruntime when it can run the model (FP16, or target=onnxruntime) and otherwise from
onnx.reference.ReferenceEvaluator, which runs BF16; the FP32 model runs in onnxruntime."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import onnx

from mixprec.adapters.base import Adapter
from mixprec.backends import onnx as backend
from mixprec.backends import onnx_runtime as runtime
from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConversionError
from mixprec.frontends import onnx as frontend
from mixprec.ir.graph import Model
from mixprec.passes.common import target_dtype

logger = logging.getLogger(__name__)


class OnnxAdapter(Adapter):
    name = "onnx"

    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        return frontend.load(model)

    def runtime_fp32_ops(self, ir_model: Model, config: MixedPrecisionConfig) -> tuple[list[str], str]:
        if config.target != "onnxruntime":
            return [], "the ONNX spec"
        ops = sorted({(n.domain, n.op) for n in ir_model.graph.all_nodes()})
        missing = runtime.missing_kernels(ops, target_dtype(config.precision))
        return sorted(missing), "onnxruntime (CPUExecutionProvider)"

    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        proto = backend.emit(ir_model)
        backend.validate(proto)
        return proto

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        if config.sample_inputs is not None:
            return dict(config.sample_inputs)
        return runtime.make_sample_inputs(ir_model)

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        proto = onnx.load(os.fspath(original)) if isinstance(original, (str, os.PathLike)) else original
        try:
            return runtime.run_onnxruntime(proto, inputs)
        except ConversionError:
            return runtime.run_reference(proto, inputs)

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        try:
            return runtime.run_onnxruntime(converted, inputs)
        except ConversionError as exc:
            if config.target == "onnxruntime":
                raise ConversionError(f"the converted model does not run in onnxruntime although "
                                      f"target='onnxruntime': {exc}") from None
            logger.info("onnxruntime cannot run the converted model (%s); using the reference evaluator", exc)
            return runtime.run_reference(converted, inputs)

    def output_names(self, ir_model: Model) -> list[str]:
        return [frontend.onnx_name(ir_model, v) for v in ir_model.graph.outputs]

    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        backend.save(converted, path, input_path=input_path)
