"""How much memory there is, and how much the output check would take.

The output check runs the FP32 model and then the converted one in a runtime, one
session at a time, each made from a file whose weights the runtime reads itself (ONNX:
mixprec/runtimes/onnx.py); the larger is the FP32 session, its weights plus its
activations on the sample inputs. ``check_memory_need`` estimates the check's peak as
CHECK_MEMORY_FACTOR x (the FP32 weights + the activations whose shapes the graph knows).
``available_bytes`` reads psutil when it is installed, else /proc/meminfo (MemAvailable);
None when neither says. Reads no constant data (sizes come from ``Value.storage``)."""
from __future__ import annotations

import logging
import math

from mixprec.ir.graph import Model

logger = logging.getLogger(__name__)

#: one onnxruntime session of the FP32 model at a time (the emulation of a bf16 model holds
#: half of that, its weights widened one at a time): measured 2.78 GB on a 2.68 GB MLP in
#: external data (1.04x, bench/large_weights.py) and 1.21 GB on a 1.07 GB one with its
#: weights inside the .onnx file (1.12x); 1.25 leaves room for the runtime's own buffers
CHECK_MEMORY_FACTOR = 1.25


def available_bytes() -> int | None:
    """Bytes of memory available to a new allocation without swapping, or None if unknown."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # psutil not installed (or unusable here)
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fp32_weight_bytes(ir_model: Model) -> int:
    """Bytes of the model's constants with every float constant counted as float32."""
    total = 0
    for graph in ir_model.graph.all_graphs():
        for value in graph.constants.values():
            data = value.storage
            if data is None:
                continue
            total += int(data.size) * 4 if value.dtype.is_float else int(data.nbytes)
    return total


def activation_bytes(ir_model: Model) -> int:
    """Bytes of the node outputs whose shapes are static, counted as float32 (unknown
    dims count as 1: the sample inputs use batch 1)."""
    total = 0
    sizes: dict[tuple, int] = {}  # a large graph has few distinct shapes
    for node in ir_model.graph.all_nodes():
        for value in node.outputs:
            shape = value.shape
            if shape is not None:
                size = sizes.get(shape)
                if size is None:
                    size = sizes[shape] = 4 * math.prod(d if isinstance(d, int) and d > 0 else 1 for d in shape)
                total += size
    return total


def check_memory_need(ir_model: Model) -> int:
    """Estimated peak bytes of the output check on ``ir_model`` (see the module docstring)."""
    return int(CHECK_MEMORY_FACTOR * (fp32_weight_bytes(ir_model) + activation_bytes(ir_model)))


def check_skip_reason(ir_model: Model) -> str | None:
    """Why the output check must not run on this machine (it would not fit in memory), or None."""
    available = available_bytes()
    if available is None:
        return None
    need = check_memory_need(ir_model)
    if need <= available:
        return None
    return (f"output check skipped: it would need about {need / 2**30:.1f} GiB of memory (a runtime session of the "
            f"FP32 model) and {available / 2**30:.1f} GiB is available; the model passed its "
            "framework's validation only. Pass --no-check (check_outputs=False) to skip it explicitly, or "
            "check on a machine with more memory")
