"""AsyncSafeMemoryInstance: one memory as agents use it (reads: store; writes: the log)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from memory_core.config import MemoryConfig
from memory_core.errors import MemstreamError
from memory_core.health import MemoryHealth, budget_by_category
from memory_core.keys import validate_memory_key
from memory_core.models import Draft, Message, Role, ToolCall
from memory_core.ports import Clock, EventPublisher, MemoryStore, SystemClock


class NoPublisherError(MemstreamError):
    """A write was attempted on an instance built without an event publisher."""


class WriteTimeoutError(MemstreamError):
    """The consumer did not apply a write within the wait timeout (the write is still logged)."""

    retriable = True

    def __init__(self, memory_key: str, offset: int, timeout: timedelta) -> None:
        super().__init__(
            f"{memory_key}: offset {offset} not applied within {timeout.total_seconds():g}s"
        )
        self.memory_key = memory_key
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a memory's messages."""

    messages: tuple[Message, ...]
    offset: int
    limit: int
    total: int


class AsyncSafeMemoryInstance:
    """One memory: reads go to the store; writes are events on the log (read-your-writes)."""

    def __init__(
        self,
        memory_key: str,
        config: MemoryConfig,
        *,
        store: MemoryStore,
        publisher: EventPublisher | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.memory_key = validate_memory_key(memory_key)
        self.config = config
        self._store = store
        self._publisher = publisher
        self._clock = clock or SystemClock()

    async def read(self) -> list[Message]:
        """Every message, oldest first."""
        return list((await self._store.read(self.memory_key)).messages)

    async def read_paginated(self, offset: int = 0, limit: int = 50) -> Page:
        """Messages ``offset`` .. ``offset + limit - 1``, oldest first."""
        if offset < 0 or limit <= 0:
            raise ValueError("offset must be >= 0 and limit > 0")
        snap = await self._store.read(self.memory_key, start=offset, stop=offset + limit - 1)
        return Page(snap.messages, offset, limit, snap.total_messages)

    async def len(self) -> int:
        """How many messages the memory holds."""
        return (await self._store.read(self.memory_key, start=0, stop=-1)).total_messages

    async def token_count(self) -> int:
        """Tokens held, all categories."""
        snap = await self._store.read(self.memory_key, start=0, stop=0)
        return sum(snap.tokens.values())

    async def health(self) -> MemoryHealth:
        """Usage against budget, flush and lock state, TTL and last applied offset."""
        snap = await self._store.read(self.memory_key, start=0, stop=0)
        fingerprint = self.config.fingerprint()
        return MemoryHealth(
            memory_key=self.memory_key,
            memory_id=snap.memory_id or self.config.id,
            exists=snap.exists,
            messages=snap.total_messages,
            max_messages=self.config.max_messages,
            tokens=dict(snap.tokens),
            budget=budget_by_category(self.config.budget),
            last_flush_at_ms=snap.last_flush_at_ms,
            last_tokens_saved=snap.last_tokens_saved,
            tokens_saved_total=snap.tokens_saved_total,
            flush_seq=snap.flush_seq,
            flush_pending=snap.flush_pending,
            lock_holder=snap.lock_holder,
            lock_ttl_ms=snap.lock_ttl_ms,
            key_ttl_ms=snap.key_ttl_ms,
            last_applied_offset=snap.last_offset,
            config_matches=None if not snap.exists else snap.config_fingerprint == fingerprint,
        )

    async def append(
        self,
        role: Role | str,
        content: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tool_call_id: str | None = None,
        tool_calls: Sequence[ToolCall] = (),
        message_id: str | None = None,
        wait: timedelta | None = timedelta(seconds=10),
    ) -> str:
        """Publish one message; with ``wait``, return once it is applied. Returns its id."""
        draft = Draft(
            id=message_id or uuid.uuid4().hex,
            role=Role(role),
            content=content,
            created_at_ms=self._clock.now_ms(),
            name=name,
            metadata=dict(metadata or {}),
            tool_call_id=tool_call_id,
            tool_calls=tuple(tool_calls),
        )
        await self.append_many([draft], wait=wait)
        return draft.id

    async def append_many(
        self, drafts: Sequence[Draft], *, wait: timedelta | None = timedelta(seconds=10)
    ) -> list[int]:
        """Publish several messages in order; returns their log offsets."""
        offsets = await self._require_publisher().append(self.memory_key, self.config.id, drafts)
        if wait is not None and offsets:
            await self.wait_applied(max(offsets), wait)
        return offsets

    async def clear(self, *, wait: timedelta | None = timedelta(seconds=10)) -> int:
        """Publish a clear of every message."""
        offset = await self._require_publisher().clear(self.memory_key, self.config.id)
        if wait is not None:
            await self.wait_applied(offset, wait)
        return offset

    async def flush(self, *, wait: timedelta | None = timedelta(seconds=10)) -> int:
        """Request a flush now (it runs in the background as a workflow)."""
        offset = await self._require_publisher().request_flush(self.memory_key, self.config.id)
        if wait is not None:
            await self.wait_applied(offset, wait)
        return offset

    async def wait_applied(self, offset: int, timeout: timedelta) -> None:
        """Wait until the consumer has applied ``offset`` of this memory."""
        deadline = self._clock.monotonic() + timeout.total_seconds()
        delay = 0.005
        while await self._store.applied_offset(self.memory_key) < offset:
            if self._clock.monotonic() >= deadline:
                raise WriteTimeoutError(self.memory_key, offset, timeout)
            await self._clock.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _require_publisher(self) -> EventPublisher:
        if self._publisher is None:
            raise NoPublisherError(
                f"{self.memory_key}: this instance was built without a publisher; "
                "build it with consumers.MemoryProducer to write"
            )
        return self._publisher
