"""The ONNX dialect of the IR: its registration record."""
from __future__ import annotations

import logging

from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec

logger = logging.getLogger(__name__)

FRAMEWORK = Framework(
    name="onnx", suffixes=(".onnx",), module_roots=("onnx",), cast=CastSpec("Cast", "to"), policy="onnx",
    adapter="mixprec.runtimes.onnx:OnnxAdapter", description=".onnx files (external data too)")
