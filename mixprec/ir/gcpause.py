"""paused_gc(): pause Python's cyclic garbage collector while building or rewriting big
graphs. Graph objects are long-lived, so generation-2 collections triggered by their
allocation rescan the whole heap again and again and make large graphs superlinear."""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
