"""MemoryProducer: the SDK side — publishes memory events keyed by memory key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from consumers.catalog import MemoryCatalog
from consumers.events import CLEARED, FLUSH_REQUESTED, appended_payload, envelope, flushed_payload
from consumers.lifecycle import Component
from consumers.telemetry import Telemetry, inject_headers
from memory_core import Draft, Message, SystemClock, validate_memory_key
from memory_core.values import replace
from schemas import MEMORY_EVENT, AvroCodec


class MemoryProducer(Component):
    """Idempotent, ``acks=all`` publisher of memory events; one partition per memory key."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        codec: AvroCodec,
        telemetry: Telemetry,
        catalog: MemoryCatalog | None = None,
        linger_ms: int = 5,
    ) -> None:
        self.topic = topic
        self._codec = codec
        self._telemetry = telemetry
        self._catalog = catalog
        self._clock = SystemClock()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=linger_ms,
        )
        self._started = False

    async def start(self) -> None:
        """Connect (idempotent)."""
        if not self._started:
            await self._producer.start()
            self._started = True

    async def stop(self) -> None:
        """Flush pending sends and disconnect (idempotent)."""
        if self._started:
            self._started = False
            await self._producer.stop()

    async def send_records(self, memory_key: str, records: Sequence[dict[str, Any]]) -> list[int]:
        """Publish encoded records of one memory in order; returns their offsets once durable."""
        validate_memory_key(memory_key)
        key = memory_key.encode()
        with self._telemetry.tracer.start_as_current_span(
            "memstream.publish", attributes={"memstream.events": len(records)}
        ):
            headers = inject_headers()
            futures = [
                await self._producer.send(
                    self.topic,
                    self._codec.encode(MEMORY_EVENT, r),
                    key=key,
                    headers=headers,
                )
                for r in records
            ]
            return [(await f).offset for f in futures]

    async def send_raw(self, key: bytes | None, value: bytes | None) -> int:
        """Publish raw bytes (operators' tools and tests of the dead-letter path)."""
        meta = await (await self._producer.send(self.topic, value, key=key))
        return int(meta.offset)

    async def append(self, memory_key: str, memory_id: str, drafts: Sequence[Draft]) -> list[int]:
        """Publish one MessageAppended per draft (redacted first when the memory is known)."""
        now = self._clock.now_ms()
        records = [
            envelope(memory_key, memory_id, d.created_at_ms or now, appended_payload(d))
            for d in self._private(memory_id, drafts)
        ]
        return await self.send_records(memory_key, records)

    async def clear(self, memory_key: str, memory_id: str) -> int:
        """Publish a MemoryCleared."""
        record = envelope(memory_key, memory_id, self._clock.now_ms(), (CLEARED, {"reason": None}))
        return (await self.send_records(memory_key, [record]))[0]

    async def request_flush(self, memory_key: str, memory_id: str) -> int:
        """Publish a FlushRequested."""
        payload = (FLUSH_REQUESTED, {"reason": "requested"})
        record = envelope(memory_key, memory_id, self._clock.now_ms(), payload)
        return (await self.send_records(memory_key, [record]))[0]

    async def flushed(
        self,
        memory_key: str,
        memory_id: str,
        flush_seq: int,
        summary: Message | None,
        tokens_saved: int,
        event_id: str,
    ) -> int:
        """Publish a flush result; a retry reuses ``event_id`` so it applies once."""
        payload = flushed_payload(flush_seq, summary, tokens_saved)
        record = envelope(memory_key, memory_id, self._clock.now_ms(), payload, event_id=event_id)
        return (await self.send_records(memory_key, [record]))[0]

    def _private(self, memory_id: str, drafts: Sequence[Draft]) -> list[Draft]:
        entry = self._catalog.get(memory_id) if self._catalog is not None else None
        if entry is None:
            return list(drafts)
        privacy = entry.policy.privacy
        return [
            replace(d, content=privacy.redact(d.content))
            for d in drafts
            if privacy.persists(d.role)
        ]
