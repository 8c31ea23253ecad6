"""paused_gc(): pause Python's cyclic garbage collector while building or rewriting big
graphs. Graph objects are long-lived, so generation-2 collections triggered by their
allocation rescan the whole heap again and again and make large graphs superlinear.

At the end of a pause the objects made during it are moved to the oldest generation
unscanned (``gc.freeze`` then ``gc.unfreeze``): otherwise the first young collection after
the pause walks all of them (0.26 s after lowering the 100k-node graph of bench/scale.py,
0.65 s over a convert). Nothing is kept from collection: a cycle among them is collected
by the next full collection, as any long-lived object's. Skipped while objects are frozen
by someone else (``gc.get_freeze_count()``), whose freeze must not be undone."""
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
            if not gc.get_freeze_count():
                gc.freeze()  # every tracked object into the permanent generation ...
                gc.unfreeze()  # ... and back into the oldest one, unscanned
            gc.enable()
