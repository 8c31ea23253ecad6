"""The PyTorch dialect of the IR (torch.export ATen graphs): its registration record."""
from __future__ import annotations

import logging

from mixprec.frameworks import Framework
from mixprec.ir.cast import CastSpec

logger = logging.getLogger(__name__)

FRAMEWORK = Framework(
    name="torch", suffixes=(".pt2",), module_roots=("torch",), cast=CastSpec("aten._to_copy.default", "dtype"),
    policy="torch", adapter="mixprec.runtimes.torch:TorchAdapter", description="torch.export .pt2 programs")
