"""The ``objective="performance"`` guarantee: never slower than the FP32 model.

Each region kept low was measured faster on its own, but the emitted model can still lose
as a whole: it runs op by op, where the user's model may run fused kernels (torch's
``nn.TransformerEncoderLayer`` fast path, for one). So ``fit`` measures the converted
model against the FP32 model it was given (mixprec.profiling.session.finish) and, when the
converted one is slower beyond the measurement's noise (:func:`slower_than_fp32`), returns
the FP32 model as given instead (:func:`fp32_result`): its ``.model`` is the user's model
as its framework runs it, its ``.ir`` the FP32 IR, and ``save`` writes it the way a
converted model is written (a .pt2 program, a frozen graph or SavedModel, an .onnx file).
The report says so in a note and in ``report.profile["returned"]``."""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict
from typing import Any

from mixprec.profiling.timing import Measurement

logger = logging.getLogger(__name__)

#: the bar: a converted model more than this much slower than FP32 (and slower beyond
#: the measurement's 95% interval) is not returned
SLOWER = 1.02


#: the note of a measurement pooled from two (see :func:`pooled`)
POOLED = "pooled from two measurements"


def _ratio(measured: Measurement) -> float:
    return measured.low_ms / measured.fp32_ms if measured.fp32_ms > 0 else 1.0


def ambiguous(measured: Measurement) -> bool:
    """Slower than the bar by its median, but its 95% interval reaches 1 (a busy
    machine): worth measuring again before deciding."""
    ratio = _ratio(measured)
    return ratio > SLOWER and ratio - measured.spread <= 1.0 and POOLED not in measured.notes


def pooled(first: Measurement, second: Measurement) -> Measurement:
    """Two measurements of the same pair as one: the reps-weighted mean of their medians,
    the smaller of their spreads, marked :data:`POOLED`."""
    total = first.reps + second.reps

    def mean(a: float, b: float) -> float:
        return (a * first.reps + b * second.reps) / total
    return Measurement(mean(first.fp32_ms, second.fp32_ms), mean(first.low_ms, second.low_ms), total,
                       min(first.spread, second.spread), notes=[
                           POOLED, f"{_ratio(first):.3f}x +-{first.spread:.3f}, {_ratio(second):.3f}x "
                                   f"+-{second.spread:.3f}"])


def slower_than_fp32(measured: Measurement) -> bool:
    """The converted (low) model is slower than FP32: its median ratio is above ``SLOWER``
    and either the ratio's 95% interval (``measured.spread``) lies above 1, or the
    measurement was already taken twice (:func:`pooled`) and still says slower: then the
    FP32 model, as fast at worst, is the answer that keeps the guarantee."""
    ratio = _ratio(measured)
    return ratio > SLOWER and (ratio - measured.spread > 1.0 or POOLED in measured.notes)


def describe(measured: Measurement) -> str:
    how = f"; {measured.notes[1]}" if POOLED in measured.notes and len(measured.notes) > 1 else ""
    return (f"the converted model measured {measured.low_ms:.4g} ms against {measured.fp32_ms:.4g} ms for the FP32 "
            f"model ({_ratio(measured):.2f}x, 95% interval +-{measured.spread:.2f}, {measured.reps} reps{how})")


def nothing_low(result: Any, precision: str) -> bool:
    """No node of the converted IR runs in ``precision`` (every region lost or was unknown)."""
    return not any(node.meta.get("precision") == precision for node in result.ir.graph.all_nodes())


def fp32_result(result: Any, adapter: Any, original: Any, fp32_ir: Any, config: Any,
                measured: Measurement | None) -> Any:
    """A ConvertedModel holding the FP32 model as given in place of ``result``: its
    conversion measured slower (``measured``), or it converted nothing, so that the
    emitted graph could only match the FP32 model or lose to it. The report keeps the
    regions, the passes and the notes; its node table shows every node FP32 (the inserted
    casts are gone: the FP32 model has none) and the rejected conversion's output checks
    move to ``profile["rejected"]``."""
    from mixprec.mix_precision import ConvertedModel
    report = copy.copy(result.report)
    if nothing_low(result, report.precision):
        why = (f"objective='performance': no region runs faster in {report.precision.upper()} here, so nothing "
               "was converted and the FP32 model is returned as given")
        detail = ("the model as given is returned, not the emitted FP32 graph, whose speed can differ from it "
                  "(it may run without fused kernels the original uses, or with others)"
                  + (f" ({describe(measured)})" if measured is not None else ""))
    else:
        assert measured is not None
        why = f"objective='performance': {describe(measured)}, so the FP32 model is returned as given"
        detail = ("each region kept low was measured faster on its own, so the difference is outside them (the "
                  "emitted graph runs op by op, without the fused kernels the original model may use)")
    report.nodes = [_as_fp32(n, report.precision, why) for n in result.report.nodes
                    if not (n.category == "cast" and n.reason.startswith("inserted"))]
    profile = dict(report.profile or {})
    profile["rejected"] = {"checks": [asdict(c) for c in result.report.checks],
                           "failed_check": result.report.failed_check}
    if measured is not None:
        profile["rejected"].update(measured_ms=measured.low_ms, fp32_ms=measured.fp32_ms, spread=measured.spread)
    profile["returned"] = "fp32"
    report.profile = profile
    report.checks = []
    report.failed_check = None
    report.notes = list(result.report.notes) + [
        f"{why}: {detail}; the model written is the FP32 model (no output check needed: it is the reference)"]
    logger.warning("%s", why)
    input_path = os.fspath(original) if isinstance(original, (str, os.PathLike)) else None
    return ConvertedModel(adapter.native(original), fp32_ir, report, adapter, config, input_path)


def _as_fp32(node: Any, precision: str, why: str) -> Any:
    if node.precision != precision:
        return node
    changed = copy.copy(node)
    changed.precision = "f32"
    changed.reason = f"{why} (the conversion had it {precision}: {node.reason})"
    return changed
