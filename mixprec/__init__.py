"""mixprec: convert FP32 models into BF16/FP16 mixed-precision models.

``import mixprec`` needs only numpy and networkx; a framework loads when a model of its
kind is converted.

    from mixprec import mix_precision
    from mixprec.config import MixedPrecisionConfig
    mix_precision.fit("model.onnx", config=MixedPrecisionConfig()).save("model_bf16.onnx")
"""
from __future__ import annotations

from typing import Any

from mixprec import mix_precision
from mixprec.config import MixedPrecisionConfig
from mixprec.mix_precision import ConvertedModel, fit

__version__ = "0.1.0"


def load(model: Any, config: MixedPrecisionConfig | None = None):
    """The model (object or path) as an ``ir.Model``, without converting it."""
    from mixprec.runtimes import adapter_for
    return adapter_for(model).load(model, config or MixedPrecisionConfig())


def emit(ir_model, config: MixedPrecisionConfig | None = None) -> Any:
    """An ``ir.Model`` back as a native, validated model of its framework."""
    from mixprec.runtimes import get_adapter
    return get_adapter(ir_model.framework).emit(ir_model, config or MixedPrecisionConfig())


__all__ = ["fit", "load", "emit", "mix_precision", "MixedPrecisionConfig", "ConvertedModel", "__version__"]
