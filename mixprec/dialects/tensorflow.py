"""The TensorFlow dialect of the IR: its registration record."""
from __future__ import annotations

import logging

from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec

logger = logging.getLogger(__name__)

FRAMEWORK = Framework(
    name="tensorflow", suffixes=(".pb", ".keras"), module_roots=("tensorflow", "keras", "tf_keras"),
    cast=CastSpec("Cast", "DstT", "SrcT", extra={"Truncate": False}), policy="tensorflow",
    adapter="mixprec.runtimes.tensorflow:TensorflowAdapter", directory_marker="saved_model.pb",
    description="TensorFlow SavedModel directories, frozen .pb graphs and .keras files")
