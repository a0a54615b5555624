"""RedisLockManager: per-memory locks with owner tokens, renewal and fencing tokens."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from memory_core.errors import LockNotAcquiredError
from memory_core.ports import Clock, SystemClock
from memory_core.redis.layout import MemoryKeys
from memory_core.redis.scripts import AnyRedis, Script, ScriptRunner

ACQUIRE = Script.load("acquire")
RELEASE = Script.load("release")
EXTEND = Script.load("extend")


@dataclass(slots=True)
class RedisLease:
    """A held lock; ``lost`` is set if renewal found it expired or taken."""

    memory_key: str
    owner: str
    token: int
    ttl_ms: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class RedisLockManager:
    """SET NX PX locks keyed per memory, released and extended only by their owner."""

    def __init__(
        self,
        redis: AnyRedis,
        *,
        prefix: str = "memstream",
        clock: Clock | None = None,
        on_wait: Callable[[float, bool], None] | None = None,
    ) -> None:
        """``on_wait(seconds, acquired)`` is called for each acquire that found the lock held
        by another owner: how long it waited, and whether it got the lock in the end."""
        self._scripts = ScriptRunner(redis)
        self.prefix = prefix
        self.clock = clock or SystemClock()
        self._on_wait = on_wait

    def _keys(self, memory_key: str) -> MemoryKeys:
        return MemoryKeys.of(memory_key, self.prefix)

    async def acquire(
        self,
        memory_key: str,
        *,
        ttl: timedelta,
        timeout: timedelta,
        backoff: timedelta = timedelta(milliseconds=20),
        owner: str | None = None,
    ) -> RedisLease:
        """Acquire with bounded, jittered exponential backoff; ``LockNotAcquiredError`` after."""
        k = self._keys(memory_key)
        owner = owner or uuid.uuid4().hex
        ttl_ms = int(ttl.total_seconds() * 1000)
        started = self.clock.monotonic()
        deadline = started + timeout.total_seconds()
        delay = backoff.total_seconds()
        waited = False
        while True:
            reply = await self._scripts.run(ACQUIRE, (k.lock, k.fence), (owner, ttl_ms))
            if _s(reply[0]) == "OK":
                if waited and self._on_wait is not None:
                    self._on_wait(self.clock.monotonic() - started, True)
                return RedisLease(memory_key, owner, int(reply[1]), ttl_ms)
            waited = True
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                if self._on_wait is not None:
                    self._on_wait(self.clock.monotonic() - started, False)
                raise LockNotAcquiredError(memory_key, _s(reply[1]), int(reply[2]))
            await self.clock.sleep(min(delay * (0.5 + random.random()), remaining))
            delay = min(delay * 2, 1.0)

    async def release(self, lease: RedisLease) -> bool:
        """Release if still the owner; False if the lock had expired or changed hands."""
        done = await self._scripts.run(
            RELEASE, (self._keys(lease.memory_key).lock,), (lease.owner,)
        )
        return bool(done)

    async def extend(self, lease: RedisLease, ttl: timedelta | None = None) -> bool:
        """Reset the lease's TTL if still the owner."""
        ttl_ms = lease.ttl_ms if ttl is None else int(ttl.total_seconds() * 1000)
        done = await self._scripts.run(
            EXTEND, (self._keys(lease.memory_key).lock,), (lease.owner, ttl_ms)
        )
        return bool(done)

    @contextlib.asynccontextmanager
    async def hold(
        self,
        memory_key: str,
        *,
        ttl: timedelta,
        timeout: timedelta,
        renew: bool = True,
    ) -> AsyncIterator[RedisLease]:
        """Hold the lock for the block, renewed every TTL/3 while the holding task runs."""
        lease = await self.acquire(memory_key, ttl=ttl, timeout=timeout)
        holder = asyncio.current_task()
        renewal = asyncio.create_task(self._renew(lease, holder)) if renew else None
        try:
            yield lease
        finally:
            if renewal is not None:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
            await asyncio.shield(self.release(lease))

    async def _renew(self, lease: RedisLease, holder: asyncio.Task[object] | None) -> None:
        while True:
            await self.clock.sleep(lease.ttl_ms / 3000)
            if holder is not None and holder.done():
                return
            try:
                still_held = await self.extend(lease)
            except Exception:
                # A failed renewal is not fatal by itself: the lease may outlive a blip.
                continue
            if not still_held:
                lease.lost.set()
                return


def _s(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
