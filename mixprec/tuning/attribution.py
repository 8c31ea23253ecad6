"""Error attribution: where in the converted model does the error come from?

Framework-free: the FP32 IR and the converted IR each get the outputs of the converted
nodes as extra graph outputs (low-precision ones cast to FP32), are emitted by their
framework's backend and run on the same sample inputs by its runtime (through the
adapter), and the intermediate tensors are compared at the IR's value names. (ONNX emits
extra graph outputs as they are; the torch backend returns them after the module's own
outputs when ``meta["probe_outputs"]`` says how many there are.)

For a node, ``rel_error`` is the relative L2 error of its output against FP32; ``local`` is
the error it adds: its ``rel_error`` minus the largest ``rel_error`` among its inputs. The
ranking puts the nodes with the largest local error first, each followed by its converted
producers (the error of ``(h + 4096) - 4096`` shows at the Sub, but it is made by the Add
before it).

Invariants: the given IR models are never modified (clones are probed); only values of
the main graph that exist in both models are compared; the probed models are emitted
without the framework's own validation (``emit_unvalidated``: they are only run, and an
ONNX graph output of unknown rank, which onnx.checker rejects, runs in onnxruntime); a
framework that cannot run the probes raises ``AttributionUnavailable`` (callers fall
back to graph order)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mixprec.errors import MixprecError
from mixprec.ir.cast import is_cast, make_cast
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Value

logger = logging.getLogger(__name__)


class AttributionUnavailable(MixprecError):
    """The intermediate tensors of this model could not be compared."""


@dataclass
class NodeError:
    """One converted node's measured error on the sample inputs."""
    name: str
    op: str
    rel_error: float
    local: float


def probe_names(fp32: Model, converted: Model, lowered: Sequence[str]) -> list[str]:
    """Output value names of the ``lowered`` nodes (main graph, non-cast) that are float
    tensors in both models and not already graph outputs."""
    fp32_values = {v.name: v for v in fp32.graph.values()}
    wanted = set(lowered)
    outputs = {v.name for v in converted.graph.outputs}
    names = []
    for node in converted.graph.iter_nodes():
        if node.name not in wanted or is_cast(node):
            continue
        for value in node.outputs:
            twin = fp32_values.get(value.name)
            if twin is not None and twin.dtype.is_float and value.dtype.is_float and value.name not in outputs:
                names.append(value.name)
    return names


def with_outputs(model: Model, names: Sequence[str]) -> Model:
    """A clone of ``model`` whose main graph also outputs ``names`` (as FP32), after its own
    outputs; ``meta["probe_outputs"]`` counts them (for backends whose native model returns
    a structured output, such as torch's, to return them too)."""
    copy = model.clone()
    copy.meta["probe_outputs"] = len(names)
    graph = copy.graph
    values = {v.name: v for v in graph.values()}
    for name in names:
        value: Value = values[name]
        if value.dtype != DType.FLOAT32:
            producer = value.producer
            cast = make_cast(graph, value, DType.FLOAT32, name=f"{name}.probe")
            cast.meta.update({"precision": "f32", "category": "cast", "reason": "inserted: error attribution probe"})
            if producer is not None:
                graph.insert_after(producer, cast)
            else:
                graph.insert_before(graph.first_node, cast) if graph.first_node else graph.append(cast)
            value = cast.outputs[0]
        graph.outputs.append(value)
    return copy


def measure(adapter: Any, fp32: Model, converted: Model, lowered: Sequence[str], inputs: Any,
            config: Any) -> list[NodeError]:
    """The error of every probed node on ``inputs``; see the module docstring."""
    names = probe_names(fp32, converted, lowered)
    if not names:
        return []
    try:
        ref = adapter.run_converted(adapter.emit_unvalidated(with_outputs(fp32, names), config), inputs, config)
        got = adapter.run_converted(adapter.emit_unvalidated(with_outputs(converted, names), config), inputs, config)
    except MixprecError as exc:
        raise AttributionUnavailable(f"the probed models do not run: {exc}") from None
    except Exception as exc:  # a framework rejecting the probe outputs: attribution is best effort
        raise AttributionUnavailable(f"the probed models do not run: {type(exc).__name__}: {exc}") from None
    start = len(converted.graph.outputs)
    if len(ref) != start + len(names) or len(got) != start + len(names):
        raise AttributionUnavailable(f"the {adapter.name} runtime returned {len(got)} outputs for "
                                     f"{start + len(names)} probed ones")
    errors = {name: _rel_error(r, g) for name, r, g in zip(names, ref[start:], got[start:])}
    producers = {v.name: v.producer for v in fp32.graph.values()}
    out = []
    for name in names:
        node = producers.get(name)
        upstream = [errors.get(v.name, 0.0) for v in (node.inputs if node is not None else ()) if v is not None]
        out.append(NodeError(node.name if node is not None else name, node.op if node is not None else "?",
                             errors[name], _added(errors[name], max(upstream, default=0.0))))
    return out


def rank(errors: Sequence[NodeError], fp32: Model, lowered: Sequence[str]) -> list[str]:
    """Node names, most likely to blame first: by local error, each followed by its
    converted producers (nearest first)."""
    nodes = {n.name: n for n in fp32.graph.iter_nodes()}
    low = set(lowered)
    order: list[str] = []
    for error in sorted(errors, key=lambda e: -e.local):
        order.append(error.name)
        node = nodes.get(error.name)
        for value in (node.inputs if node is not None else ()):
            producer = value.producer if value is not None else None
            if producer is not None and producer.name in low:
                order.append(producer.name)
    return list(dict.fromkeys(order))


def _added(error: float, upstream: float) -> float:
    """The error a node adds to what it read (inf when it turns finite inputs non-finite)."""
    if error == float("inf"):
        return float("inf") if upstream < float("inf") else 0.0
    return error - upstream


def _rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(got, dtype=np.float64).ravel()
    if a.shape != b.shape or not np.all(np.isfinite(b)):
        return float("inf")
    scale = float(np.linalg.norm(a))
    diff = float(np.linalg.norm(a - b))
    return diff / scale if scale else (0.0 if diff == 0.0 else float("inf"))
