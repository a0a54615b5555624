"""Lifecycle plumbing shared by the long-lived components."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Tune CPython's cycle collector for a long-running stream processor; call once at start.

    The apply path allocates a few objects per event and keeps states cached, so with the
    default thresholds (a young collection every 700 allocations) collections cost 10-15 % of
    its CPU. Objects alive at start are frozen out of every collection, young collections run
    every 50,000 allocations, and full ones 100 times more rarely than the default.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cycle collection inside (restored after): for the processing of one batch.

    A batch's objects stay alive until it ends, so a collection midway scans them all for
    nothing; the first one after the batch finds them freed (by reference counting) already.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class BatchCollection:
    """Cycle collection for a loop of batches: none inside a batch, and what a batch leaves
    alive (the cached states of its memories, the next batch fetched ahead) frozen out of
    later collections instead of scanned by them.

    With collection merely paused, the first young collection after each batch scanned
    everything the batch left alive: up to 116 ms a batch, 7 % of a live stream's CPU
    (docs/decisions/0011). Freezing is O(1). Objects frozen that later become cyclic garbage
    (the apply path makes almost none: its values cannot form cycles) are given back to the
    collector every ``thaw_every_s``, as old objects, for the next full collection.
    """

    def __init__(self, thaw_every_s: float = 300.0, *, freeze: bool = True) -> None:
        self.thaw_every_s = thaw_every_s
        # False: collection is only paused inside a batch (a process that also runs the
        # Temporal SDK, whose objects must stay collectable).
        self.freeze = freeze
        self._thawed_at = time.monotonic()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Process one batch inside: no collection; its survivors frozen after."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if self.freeze:
                gc.freeze()
            now = time.monotonic()
            if self.freeze and now - self._thawed_at >= self.thaw_every_s:
                self._thawed_at = now
                gc.unfreeze()
            if enabled:
                gc.enable()


class Component(ABC):
    """Explicit, idempotent ``start``/``stop``; also an async context manager."""

    @abstractmethod
    async def start(self) -> None:
        """Connect and begin (idempotent)."""

    @abstractmethod
    async def stop(self) -> None:
        """Finish in-flight work and disconnect (idempotent)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.stop()


async def run_steps(
    step: Callable[[], Awaitable[object]],
    *,
    stopped: Callable[[], bool],
    retriable: tuple[type[BaseException], ...],
    what: str,
    first_backoff_s: float = 0.1,
    max_backoff_s: float = 5.0,
) -> None:
    """Call ``step`` until ``stopped()``; a retriable failure backs off exponentially.

    Any other exception ends the loop (the caller's role dies loudly). A back-off ends early
    once ``stopped()``, so a stop during an outage is not delayed by it.
    """
    backoff = first_backoff_s
    while not stopped():
        try:
            await step()
            backoff = first_backoff_s
        except retriable as exc:
            log.warning("%s failed, retrying in %.1fs: %s", what, backoff, exc)
            await _pause(backoff, stopped)
            backoff = min(backoff * 2, max_backoff_s)


async def _pause(seconds: float, stopped: Callable[[], bool], *, tick_s: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # ``stopped`` is a predicate over the caller's flags, not an event this could wait on.
    while not stopped() and (left := deadline - loop.time()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(min(left, tick_s))
