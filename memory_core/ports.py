"""Ports: what the memory engine needs from the outside world, as Protocols."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
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


class EventPublisher(Protocol):
    """Publishes memory events to the log; each call returns once the events are durable."""

    async def append(self, memory_key: str, memory_id: str, drafts: Sequence[Draft]) -> list[int]:
        """Publish one MessageAppended per draft, in order; returns their offsets."""
        ...

    async def clear(self, memory_key: str, memory_id: str) -> int:
        """Publish a MemoryCleared; returns its offset."""
        ...

    async def request_flush(self, memory_key: str, memory_id: str) -> int:
        """Publish a FlushRequested; returns its offset."""
        ...
