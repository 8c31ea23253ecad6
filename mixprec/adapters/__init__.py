"""Framework adapters: the glue between ``mix_precision.fit`` and one framework's
frontend and backend (load, runtime capability, emit, validate, run, save).

``adapter_for(model)`` picks one from the model object's type or the file's suffix
without importing any framework the model does not need."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mixprec.adapters.base import Adapter
from mixprec.errors import ModelLoadError, UnsupportedModelError

logger = logging.getLogger(__name__)

_SUFFIXES = {".onnx": "onnx", ".pt2": "torch", ".pb": "tensorflow", ".keras": "tensorflow", ".json": "mxnet",
             ".params": "mxnet"}
_MODULE_PREFIXES = {"onnx": "onnx", "torch": "torch", "tensorflow": "tensorflow", "keras": "tensorflow",
                    "tf_keras": "tensorflow", "mxnet": "mxnet"}


def framework_of(model: Any) -> str:
    """'onnx' or 'torch' for a model object or path; a clear error otherwise."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file or directory")
        if path.is_dir() and (path / "saved_model.pb").exists():
            return "tensorflow"
        suffix = path.suffix.lower()
        if suffix in _SUFFIXES:
            return _SUFFIXES[suffix]
        raise UnsupportedModelError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; mixprec reads "
                                    ".onnx files, torch.export .pt2 programs, TensorFlow SavedModel directories, "
                                    "frozen .pb graphs and .keras files, and MXNet -symbol.json/.params pairs")
    if isinstance(model, tuple) and model:  # MXNet's (symbol, arg_params, aux_params)
        model = model[0]
    for cls in type(model).__mro__:
        root = (cls.__module__ or "").split(".")[0]
        if root in _MODULE_PREFIXES:
            return _MODULE_PREFIXES[root]
    raise UnsupportedModelError(f"cannot tell which framework a {type(model).__module__}.{type(model).__name__} "
                                "belongs to; pass an onnx.ModelProto, a torch.nn.Module, a Keras model or "
                                "tf.function, an MXNet block, or a model file path")


def get_adapter(framework: str) -> Adapter:
    if framework == "onnx":
        from mixprec.adapters.onnx import OnnxAdapter
        return OnnxAdapter()
    if framework == "torch":
        from mixprec.adapters.torch import TorchAdapter
        return TorchAdapter()
    if framework == "tensorflow":
        from mixprec.adapters.tensorflow import TensorflowAdapter
        return TensorflowAdapter()
    if framework == "mxnet":
        from mixprec.adapters.mxnet import MxnetAdapter
        return MxnetAdapter()
    raise UnsupportedModelError(f"no adapter for framework {framework!r}")


def adapter_for(model: Any) -> Adapter:
    return get_adapter(framework_of(model))


__all__ = ["Adapter", "adapter_for", "framework_of", "get_adapter"]
