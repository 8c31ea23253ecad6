"""paused_gc: no collection inside, the objects made inside moved to the oldest generation
unscanned at the end, still collectable, and a caller's own frozen objects left frozen."""
import gc
import weakref

import pytest

from mixprec.ir.gcpause import paused_gc


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def gc_enabled():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_objects_made_in_a_pause_leave_the_young_generations_unscanned(gc_enabled):
    collections = []

    def count(phase, info):
        if phase == "stop":
            collections.append(info["generation"])
    gc.callbacks.append(count)
    try:
        with paused_gc():
            assert not gc.isenabled()
            made = [[i] for i in range(50_000)]
        assert gc.isenabled()
        young = {id(o) for o in gc.get_objects(generation=0)} | {id(o) for o in gc.get_objects(generation=1)}
        old = {id(o) for o in gc.get_objects(generation=2)}
    finally:
        gc.callbacks.remove(count)
    assert collections == []  # nothing was scanned inside the pause, nor to promote them
    assert not any(id(o) in young for o in made[:1000])
    assert all(id(o) in old for o in made[:1000])
    assert gc.get_freeze_count() == 0


def test_a_cycle_dropped_after_a_pause_is_still_collected(gc_enabled):
    with paused_gc():
        cycle = _Cycle()
    ref = weakref.ref(cycle)
    del cycle
    assert ref() is not None  # a cycle: reference counting alone does not free it
    gc.collect()
    assert ref() is None


def test_a_callers_frozen_objects_stay_frozen(gc_enabled):
    kept = [[i] for i in range(1000)]
    gc.freeze()
    try:
        with paused_gc():
            made = [[i] for i in range(1000)]
        # Not an equality with the count before: frozen objects that reference counting
        # frees meanwhile (the rest of a test session's heap) leave the count too.
        assert gc.get_freeze_count() >= len(kept)
        assert not any(id(o) in {id(k) for k in kept} for o in gc.get_objects())
        assert made
    finally:
        gc.unfreeze()


def test_a_disabled_collector_stays_disabled():
    was = gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()
