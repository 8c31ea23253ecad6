"""The MXNet dialect of the IR (symbol JSON): its registration record."""
from __future__ import annotations

import logging

from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec

logger = logging.getLogger(__name__)

FRAMEWORK = Framework(
    name="mxnet", suffixes=(".json", ".params"), module_roots=("mxnet",), cast=CastSpec("amp_cast", "dtype"),
    policy="mxnet", adapter="mixprec.runtimes.mxnet:MxnetAdapter",
    description="MXNet -symbol.json/.params pairs")
