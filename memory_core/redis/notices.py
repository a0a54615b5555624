"""Applied notices: the apply consumer announces on Redis pub/sub, per partition, the last
offset each batch applied; writers waiting for their events wake on it instead of polling.

Pub/sub delivers at most once (a subscriber that reconnects misses what was published
meanwhile), so a notice is a hint: the waiter re-reads the memory after each one and at
least every ``fallback_s`` (docs/decisions/0014).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio import RedisCluster

from memory_core.redis.layout import glob_escape
from memory_core.redis.scripts import AnyRedis

log = logging.getLogger(__name__)


class AppliedNotices:
    """One pattern subscription per process, shared by every waiter (``AppliedSignal``)."""

    def __init__(self, redis: AnyRedis, *, prefix: str = "memstream", fallback_s: float = 0.5):
        self.redis = redis
        self.prefix = prefix
        self.fallback_s = fallback_s
        self._channel_head = f"{prefix}:applied:"
        # The highest offset announced per (topic, partition) since the subscription began.
        self._latest: dict[tuple[str, int], int] = {}
        self._waiters: dict[tuple[str, int], list[tuple[int, asyncio.Future[None]]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._starting = asyncio.Lock()

    def channel(self, topic: str, partition: int) -> str:
        """The channel of ``topic:partition``'s notices."""
        return f"{self._channel_head}{topic}:{partition}"

    async def announce(self, applied: Mapping[tuple[str, int], int]) -> None:
        """Publish the last applied offset of each partition (one round trip; on a cluster,
        one command per partition, all at once)."""
        if not applied:
            return
        if isinstance(self.redis, RedisCluster):
            # A cluster pipeline refuses PUBLISH; PUBLISH reaches every node from any node.
            await asyncio.gather(
                *(self.redis.publish(self.channel(t, p), str(o)) for (t, p), o in applied.items())
            )
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for (topic, partition), offset in applied.items():
                pipe.publish(self.channel(topic, partition), str(offset))
            await pipe.execute()

    async def start(self) -> None:
        """Subscribe (once; again after the connection was lost)."""
        if self._reader is not None and not self._reader.done():
            await self._subscribed.wait()
            return
        async with self._starting:
            if self._reader is None or self._reader.done():
                self._subscribed.clear()
                self._reader = asyncio.create_task(self._read(), name="memstream-applied")
        subscribed = asyncio.ensure_future(self._subscribed.wait())
        try:
            await asyncio.wait([subscribed, self._reader], return_when=asyncio.FIRST_COMPLETED)
        finally:
            subscribed.cancel()  # not left pending when the subscription failed
        if self._reader.done():
            self._reader.result()  # the subscription failed: raise why

    async def wait(self, topic: str, partition: int, offset: int, timeout_s: float) -> None:
        """Return once ``offset`` of ``topic:partition`` is announced, or after ``timeout_s``."""
        tp = (topic, partition)
        if self._latest.get(tp, -1) >= offset:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (offset, future)
        self._waiters.setdefault(tp, []).append(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout_s)
        finally:
            waiting = self._waiters.get(tp)
            if waiting is not None and entry in waiting:
                waiting.remove(entry)
                if not waiting:
                    del self._waiters[tp]

    async def close(self) -> None:
        """Stop listening."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self) -> None:
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()  # its pub/sub needs the slot map
        pubsub: Any = self.redis.pubsub()
        try:
            await pubsub.psubscribe(f"{glob_escape(self._channel_head)}*")
            self._subscribed.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None:
                    self._notice(message["channel"], message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next start() subscribes again; waiters fall back
            log.info("applied notices: subscription lost (%s); waiters fall back to reads", exc)
            raise
        finally:
            self._subscribed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _notice(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        topic, _, partition = name[len(self._channel_head) :].rpartition(":")
        try:
            tp, offset = (topic, int(partition)), int(data)
        except ValueError:
            return
        if offset <= self._latest.get(tp, -1):
            return
        self._latest[tp] = offset
        waiting = self._waiters.get(tp)
        if not waiting:
            return
        for target, future in waiting:
            if target <= offset and not future.done():
                future.set_result(None)
