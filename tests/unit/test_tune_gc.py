"""tune_gc and gc_paused: how a long-running consumer drives the cycle collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from consumers.lifecycle import gc_paused, tune_gc


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
