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


def test_tune_gc_freezes_startup_objects_and_collects_far_less_often(restore_gc: None) -> None:
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 0  # objects alive at start leave every later collection
    young, middle, old = gc.get_threshold()
    default_young, default_middle, default_old = 700, 10, 10
    assert young >= 10 * default_young
    assert young * middle >= 10 * default_young * default_middle
    assert young * middle * old >= 10 * default_young * default_middle * default_old
