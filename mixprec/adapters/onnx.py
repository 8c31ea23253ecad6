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

from mixprec.adapters.base import Adapter, RuntimeLimits
from mixprec.backends import onnx as backend
from mixprec.backends import onnx_runtime as runtime
from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConversionError, OutputCheckUnavailable
from mixprec.frontends import onnx as frontend
from mixprec.ir.graph import Model
from mixprec.passes.common import target_dtype

logger = logging.getLogger(__name__)


class OnnxAdapter(Adapter):
    name = "onnx"

    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        return frontend.load(model)

    def runtime_limits(self, ir_model: Model, config: MixedPrecisionConfig) -> RuntimeLimits:
        nodes = _onnxruntime_crashers(ir_model) if config.precision == "fp16" else {}
        if config.target != "onnxruntime":
            return RuntimeLimits([], nodes, "onnxruntime")
        ops = sorted({(n.domain, n.op) for n in ir_model.graph.all_nodes()})
        missing = runtime.missing_kernels(ops, target_dtype(config.precision))
        return RuntimeLimits(sorted(missing), nodes, "onnxruntime (CPUExecutionProvider)")

    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        proto = backend.emit(ir_model)
        backend.validate(proto)
        return proto

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        if config.sample_inputs is not None:
            return dict(config.sample_inputs)
        return runtime.make_sample_inputs(ir_model)

    def native(self, model: Any) -> Any:
        return onnx.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        proto = self.native(original)
        try:
            return runtime.run_onnxruntime(proto, inputs)
        except ConversionError:
            return runtime.run_reference(proto, inputs)

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        """onnxruntime when it runs the model; else the reference evaluator; else (BF16/FP16)
        onnxruntime on a float32 emulation that rounds every low-precision value."""
        try:
            return runtime.run_onnxruntime(converted, inputs)
        except ConversionError as exc:
            if config.target == "onnxruntime":
                raise ConversionError(f"the converted model does not run in onnxruntime although "
                                      f"target='onnxruntime': {exc}") from None
            ort_error = _first_line(exc)
        logger.info("onnxruntime cannot run the converted model (%s); using the reference evaluator", ort_error)
        try:
            return runtime.run_reference(converted, inputs)
        except Exception as exc:  # the evaluator's own gaps (Loop without cond, GatherElements, ...)
            ref_error = f"{type(exc).__name__}: {_first_line(exc)}"
        logger.info("the reference evaluator fails (%s); using onnxruntime on a float emulation", ref_error)
        try:
            outputs = runtime.run_onnxruntime(runtime.emulate_in_float(converted, target_dtype(config.precision)),
                                              inputs)
        except ConversionError as exc:
            raise OutputCheckUnavailable(f"onnxruntime cannot run the converted model ({ort_error}), the reference "
                                         f"evaluator fails on it ({ref_error}) and so does the float emulation "
                                         f"({_first_line(exc)})") from None
        self.last_check_note = ("outputs checked in onnxruntime on a float32 emulation that rounds every "
                                f"{config.precision} value (the reference evaluator fails on this model: {ref_error})")
        return outputs

    def output_names(self, ir_model: Model) -> list[str]:
        return [frontend.onnx_name(ir_model, v) for v in ir_model.graph.outputs]

    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        backend.save(converted, path, input_path=input_path)


def _onnxruntime_crashers(ir_model: Model) -> dict[str, str]:
    """Nodes whose FP16 form crashes onnxruntime's CPU provider (segmentation fault when
    the session is created with default optimizations; seen with onnxruntime 1.32): a
    Transpose swapping the two leading axes of a 3-D tensor read by a MatMul, which the
    optimizer fuses into a batch-transposing FusedMatMul. Keeping the Transpose in FP32
    puts a cast between the two and the fusion does not happen."""
    out = {}
    for node in ir_model.graph.all_nodes():
        if node.op != "Transpose" or node.domain or list(node.attrs.get("perm", [])) != [1, 0, 2]:
            continue
        if any(reader.op == "MatMul" for value in node.outputs for reader, _ in value.uses()):
            out[node.name] = ("kept f32: onnxruntime's CPU provider crashes on an f16 Transpose(perm=[1,0,2]) "
                              "feeding MatMul (its FusedMatMul fusion)")
    return out


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:limit]
