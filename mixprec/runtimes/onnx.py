"""ONNX adapter: .onnx files and ModelProtos.

The converted model is checked with onnx.checker (full_check). The output check feeds
sample inputs fitted to the model (``runtime.candidate_feeds``) and runs the converted
model in onnxruntime: directly where it has the kernels (FP16, target=onnxruntime), else
on an exact float32 emulation of the low-precision model; the reference evaluator only
with ``check_runtime="reference"``. The FP32 model runs in onnxruntime."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from mixprec.runtimes.base import Adapter, RuntimeLimits
from mixprec.backends import onnx as backend
from mixprec.backends import onnx_runtime as runtime
from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConversionError, OutputCheckUnavailable
from mixprec.fileio import first_line
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
        """The validated ModelProto, every node legal at its opset (``backend.emit_legal``:
        the opset raised, or a node kept in float32). What was done is logged and kept in
        ``ir_model.meta["notes"]`` for the report."""
        proto, notes = backend.emit_legal(ir_model)
        for note in notes:
            logger.warning(note)
        ir_model.meta.setdefault("notes", []).extend(notes)
        backend.validate(proto)
        return proto

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        return next(iter(self.candidate_inputs(original, ir_model, config)))

    def candidate_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Iterator[Any]:
        """The user's ``sample_inputs`` alone (checked against the model's inputs), else
        ``runtime.candidate_feeds``: the shape ladder over the model's inputs with their
        unknown dims resolved from the model, ``input_shapes`` first."""
        if config.sample_inputs is not None:
            yield runtime.check_feeds(ir_model, config.sample_inputs)
            return
        yield from runtime.candidate_feeds(ir_model, config.input_shapes)

    def native(self, model: Any) -> Any:
        return onnx.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        """onnxruntime; a model that already holds bf16/f16 values (mixprec's own output)
        runs on its exact float32 emulation; the reference evaluator only as a fallback."""
        proto = self.native(original)
        try:
            return runtime.run_onnxruntime(proto, inputs)
        except ConversionError as exc:
            ort_error = first_line(exc)
        if runtime.low_precision_dtypes(proto):
            try:
                return runtime.run_emulated(proto, inputs)
            except ConversionError:
                pass
        logger.info("onnxruntime cannot run the FP32 model (%s); using the reference evaluator", ort_error)
        return runtime.run_reference(proto, inputs)

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        """The converted model's outputs, by ``config.check_runtime``: ``"reference"`` runs
        onnx.reference.ReferenceEvaluator; ``"auto"`` runs onnxruntime directly where it
        has the kernels (FP16, or target='onnxruntime') and otherwise onnxruntime on the
        exact emulation (``runtime.emulate_in_float``). Any failure of the runtime is
        OutputCheckUnavailable with a one-line reason."""
        if config.check_runtime == "reference":
            self.last_check_note = "outputs checked with onnx.reference.ReferenceEvaluator (check_runtime='reference')"
            return _unavailable_on_error("the reference evaluator", runtime.run_reference, converted, inputs)
        if config.precision == "fp16" or config.target == "onnxruntime":
            try:
                return runtime.run_onnxruntime(converted, inputs)
            except ConversionError as exc:
                if config.target == "onnxruntime":
                    raise OutputCheckUnavailable(f"the converted model does not run in onnxruntime although "
                                                 f"target='onnxruntime' ({first_line(exc)})") from None
                logger.info("onnxruntime cannot run the fp16 model (%s); checking its emulation", first_line(exc))
        self.last_check_note = (f"outputs checked in onnxruntime on an exact float32 emulation of the "
                                f"{config.precision} model (every {config.precision} value rounded where it "
                                "is produced)")
        return _unavailable_on_error("onnxruntime on the float32 emulation", runtime.run_emulated, converted,
                                     inputs, [target_dtype(config.precision)])

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


def _unavailable_on_error(what: str, run: Callable[..., list[np.ndarray]], *args: Any) -> list[np.ndarray]:
    """``run(*args)``; any failure is OutputCheckUnavailable naming ``what`` in one line."""
    try:
        return run(*args)
    except Exception as exc:  # a runtime's own gap on this model, never a conversion failure
        reason = first_line(exc) if isinstance(exc, ConversionError) else f"{type(exc).__name__}: {first_line(exc)}"
        raise OutputCheckUnavailable(f"{what} cannot run the converted model ({reason})") from None
