"""Running each framework: ``runtimes/X.py`` holds framework X's adapter, the glue between
``mix_precision.fit`` and its frontend and backend (load, runtime capability, emit,
validate, run, make sample inputs, save).

``adapter_for(model)`` picks one through the framework registry (mixprec.frameworks) from
the model object's type or the file's suffix, without importing any framework the model
does not need."""
from __future__ import annotations

import logging
from typing import Any

from mixprec import frameworks
from mixprec.runtimes.base import Adapter

logger = logging.getLogger(__name__)


def framework_of(model: Any) -> str:
    """The registered framework's name for a model object or path; a clear error otherwise."""
    return frameworks.framework_of(model).name


def get_adapter(framework: str) -> Adapter:
    """A new adapter of the registered framework ``framework``."""
    return frameworks.get(framework).load_adapter()


def adapter_for(model: Any) -> Adapter:
    return frameworks.framework_of(model).load_adapter()


__all__ = ["Adapter", "adapter_for", "framework_of", "get_adapter"]
