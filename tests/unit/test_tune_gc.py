"""tune_gc and gc_paused: how a long-running consumer drives the cycle collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from consumers.lifecycle import BatchCollection, gc_paused, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_startup_objects_and_collects_far_less_often(restore_gc: None) -> None:
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 0  # objects alive at start leave every later collection
    young, middle, old = gc.get_threshold()
    default_young, default_middle, default_old = 700, 10, 10
    assert young >= 10 * default_young
    assert young * middle >= 10 * default_young * default_middle
    assert young * middle * old >= 10 * default_young * default_middle * default_old


def test_gc_paused_disables_collection_inside_and_restores_it_after() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_gc_paused_restores_collection_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_batch_freezes_what_it_leaves_alive_and_thaws_it_periodically(restore_gc: None) -> None:
    gc.unfreeze()
    collection = BatchCollection(thaw_every_s=3600)
    with collection.batch():
        assert not gc.isenabled()
        kept = [[i] for i in range(1000)]  # tracked objects the batch leaves alive
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    # Young collections no longer see them.
    assert all(not any(x is o for o in gc.get_objects(0)) for x in kept[:5])
    collection.thaw_every_s = 0
    with collection.batch():
        pass
    assert gc.get_freeze_count() == 0  # given back to the collector, as old objects
    assert any(kept[0] is o for o in gc.get_objects(2))


def test_a_batch_that_raises_still_restores_collection(restore_gc: None) -> None:
    with pytest.raises(RuntimeError), BatchCollection().batch():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_batch_that_must_not_freeze_only_pauses_collection(restore_gc: None) -> None:
    gc.unfreeze()
    with BatchCollection(freeze=False).batch():
        assert not gc.isenabled()
        kept = [[i] for i in range(100)]
    assert gc.isenabled() and gc.get_freeze_count() == 0 and kept
