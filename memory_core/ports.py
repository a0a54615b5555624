"""Ports: what the memory engine needs from the outside world, as Protocols."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from memory_core.models import Draft, Snapshot


class Clock(Protocol):
    """Time, injected so tests can control it."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch."""
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        await asyncio.sleep(seconds)


class Lease(Protocol):
    """A held lock: its owner and fencing token."""

    @property
    def memory_key(self) -> str:
        """The locked memory."""
        ...

    @property
    def owner(self) -> str:
        """The owner token."""
        ...

    @property
    def token(self) -> int:
        """The fencing token drawn at acquire (strictly increasing per memory)."""
        ...


class LockManager(Protocol):
    """Distributed per-memory locks with fencing tokens."""

    def hold(
        self, memory_key: str, *, ttl: timedelta, timeout: timedelta
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold the lock of ``memory_key`` for the ``async with`` block, renewing it."""
        ...


class MemoryStore(Protocol):
    """Reads of the materialized memory state."""

    async def read(self, memory_key: str, *, start: int = 0, stop: int = -1) -> Snapshot:
        """A consistent snapshot; ``start``/``stop`` select a page of messages (inclusive)."""
        ...

    async def applied_offset(self, memory_key: str) -> int:
        """The last log offset applied to ``memory_key`` (-1 if none)."""
        ...


class AppliedSignal(Protocol):
    """Wakes a writer waiting for its events to be applied (instead of polling the store).

    A hint, not a guarantee: the waiter re-reads the store after each wake-up and at least
    every ``fallback_s``, so a lost signal only delays it.
    """

    fallback_s: float

    async def start(self) -> None:
        """Be ready to deliver signals (call before the first read the wait relies on)."""
        ...

    async def wait(self, topic: str, partition: int, offset: int, timeout_s: float) -> None:
        """Return once ``offset`` of ``topic:partition`` was announced applied, or after
        ``timeout_s``."""
        ...


@dataclass(frozen=True, slots=True)
class Published:
    """Where one published event landed in the log (durable: acknowledged by every replica)."""

    event_id: str
    topic: str
    partition: int
    offset: int


class EventPublisher(Protocol):
    """Publishes memory events to the log; each call returns once the events are durable.

    ``event_id``/``event_ids`` reuse the ids of an earlier attempt, so a retry after an
    unconfirmed write is applied at most once (the consumer skips a repeated event id).
    """

    async def append(
        self,
        memory_key: str,
        memory_id: str,
        drafts: Sequence[Draft],
        *,
        event_ids: Sequence[str] | None = None,
    ) -> list[Published]:
        """Publish one MessageAppended per draft, in order."""
        ...

    async def clear(
        self, memory_key: str, memory_id: str, *, event_id: str | None = None
    ) -> Published:
        """Publish a MemoryCleared."""
        ...

    async def request_flush(
        self, memory_key: str, memory_id: str, *, event_id: str | None = None
    ) -> Published:
        """Publish a FlushRequested."""
        ...
