"""tune_gc: the collector settings a long-running consumer starts with."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from consumers.lifecycle import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_startup_objects_and_raises_the_thresholds(restore_gc: None) -> None:
    survivor = [object()]  # alive at start: moved out of every later collection
    tune_gc()
    assert gc.get_freeze_count() > 0
    young, middle, old = gc.get_threshold()
    assert young >= 10_000 > 700
    assert middle * young >= 10 * 700 * 10
    assert old >= 10
    assert survivor
