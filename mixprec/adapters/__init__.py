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

_SUFFIXES = {".onnx": "onnx", ".pt2": "torch"}
_MODULE_PREFIXES = {"onnx": "onnx", "torch": "torch"}
_NOT_YET = {".pb": "TensorFlow", ".h5": "TensorFlow", ".keras": "TensorFlow", ".json": "MXNet", ".params": "MXNet"}


def framework_of(model: Any) -> str:
    """'onnx' or 'torch' for a model object or path; a clear error otherwise."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file or directory")
        if path.is_dir() and (path / "saved_model.pb").exists():
            raise UnsupportedModelError(f"{path}: TensorFlow SavedModels are not supported yet; export to ONNX "
                                        "with tf2onnx and convert the .onnx file")
        suffix = path.suffix.lower()
        if suffix in _SUFFIXES:
            return _SUFFIXES[suffix]
        if suffix in _NOT_YET:
            raise UnsupportedModelError(f"{path}: {_NOT_YET[suffix]} models are not supported yet; export to ONNX "
                                        "and convert the .onnx file")
        raise UnsupportedModelError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; mixprec reads "
                                    ".onnx files and torch.export .pt2 programs")
    for cls in type(model).__mro__:
        root = (cls.__module__ or "").split(".")[0]
        if root in _MODULE_PREFIXES:
            return _MODULE_PREFIXES[root]
        if root in ("tensorflow", "keras", "tf_keras", "mxnet"):
            raise UnsupportedModelError(f"{type(model).__name__} ({root}) models are not supported yet; export to "
                                        "ONNX and convert that")
    raise UnsupportedModelError(f"cannot tell which framework a {type(model).__module__}.{type(model).__name__} "
                                "belongs to; pass an onnx.ModelProto, a torch.nn.Module, or a .onnx/.pt2 path")


def get_adapter(framework: str) -> Adapter:
    if framework == "onnx":
        from mixprec.adapters.onnx import OnnxAdapter
        return OnnxAdapter()
    if framework == "torch":
        from mixprec.adapters.torch import TorchAdapter
        return TorchAdapter()
    raise UnsupportedModelError(f"no adapter for framework {framework!r}")


def adapter_for(model: Any) -> Adapter:
    return get_adapter(framework_of(model))


__all__ = ["Adapter", "adapter_for", "framework_of", "get_adapter"]
