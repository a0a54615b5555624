"""MemoryProducer: the SDK side — publishes memory events keyed by memory key."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from opentelemetry.trace import SpanKind

from consumers.catalog import MemoryCatalog
from consumers.connections import kafka_producer
from consumers.events import CLEARED, FLUSH_REQUESTED, appended_payload, envelope, flushed_payload
from consumers.generations import Generation, topic_sealed
from consumers.lifecycle import Component
from consumers.settings import Settings
from consumers.telemetry import Telemetry, inject_headers, producer_attributes
from memory_core import Draft, MemstreamError, Message, Published, SystemClock, validate_memory_key
from schemas import MEMORY_EVENT, AvroCodec

log = logging.getLogger(__name__)

GenerationSource = Callable[[], Awaitable[Generation]]


class GenerationSealedError(MemstreamError):
    """The events topic is sealed for a repartition and no newer generation is active yet."""

    retriable = True


class MemoryProducer(Component):
    """Idempotent, ``acks=all`` publisher of memory events, each to its memory's home partition.

    With ``generation`` (how to look up the active generation of the events topic), every
    event goes to the home partition of its key in that generation, whatever the topic's
    current partition count; a topic sealed by a repartition makes it look the generation up
    again and resend there. Without it, events go to ``topic`` by the client's partitioner.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        topic: str,
        codec: AvroCodec,
        telemetry: Telemetry,
        catalog: MemoryCatalog | None = None,
        linger_ms: int = 5,
        generation: GenerationSource | None = None,
    ) -> None:
        self.topic = topic
        self._codec = codec
        self._telemetry = telemetry
        self._catalog = catalog
        self._clock = SystemClock()
        self._resolve = generation
        self._settings = settings
        self.generation: Generation | None = None
        # How long a write waits for a repartition to activate the new generation.
        self.sealed_wait_s = 60.0
        self._producer = kafka_producer(
            settings,
            enable_idempotence=True,
            acks="all",
            linger_ms=linger_ms,
        )
        self._started = False

    async def start(self) -> None:
        """Connect, look up the active generation (idempotent)."""
        if not self._started:
            try:
                await self._producer.start()
            except BaseException:
                await self._producer.stop()  # aiokafka leaves its connections open otherwise
                raise
            self._started = True
            if self._resolve is not None:
                self.generation = await self._resolve()
                self.topic = self.generation.topic

    async def stop(self) -> None:
        """Flush pending sends and disconnect (idempotent)."""
        if self._started:
            self._started = False
            await self._producer.stop()

    async def send_records(self, memory_key: str, records: Sequence[dict[str, Any]]) -> list[int]:
        """Publish encoded records of one memory in order; returns their offsets once durable."""
        return [p.offset for p in await self.publish(memory_key, records)]

    async def publish(self, memory_key: str, records: Sequence[dict[str, Any]]) -> list[Published]:
        """Publish records of one memory in order; returns where each landed once durable."""
        validate_memory_key(memory_key)
        key = memory_key.encode()
        values = [self._codec.encode(MEMORY_EVENT, r) for r in records]
        with self._telemetry.tracer.start_as_current_span(
            "memstream.publish",
            kind=SpanKind.PRODUCER,
            attributes={
                **producer_attributes(self.topic, len(records)),
                "memstream.events": len(records),
            },
        ) as span:
            headers = inject_headers()
            landed = await self._send(key, values, headers)
            refused = [i for i, r in enumerate(landed) if isinstance(r, BaseException)]
            if refused and self._resolve is not None:
                error = landed[refused[0]]
                if isinstance(error, MessageSizeTooLargeError) and await topic_sealed(
                    self._settings, self.topic
                ):
                    # Only the refused records are sent again: the others are in the old
                    # topic, which the repartition copies.
                    await self._refresh()
                    again = await self._send(key, [values[i] for i in refused], headers)
                    for i, resent in zip(refused, again, strict=True):
                        landed[i] = resent
            first = landed[0] if landed else None
            if isinstance(first, tuple):
                span.set_attribute("messaging.destination.partition.id", str(first[1]))
        out: list[Published] = []
        for record, result in zip(records, landed, strict=True):
            if isinstance(result, BaseException):
                raise result
            topic, partition, offset = result
            out.append(Published(str(record["event_id"]), topic, partition, offset))
        return out

    async def _send(
        self, key: bytes, values: list[bytes], headers: list[tuple[str, bytes]]
    ) -> list[tuple[str, int, int] | BaseException]:
        gen = self.generation
        partition = gen.home(key) if gen is not None else None
        futures = [
            await self._producer.send(self.topic, v, key=key, headers=headers, partition=partition)
            for v in values
        ]
        out: list[tuple[str, int, int] | BaseException] = []
        for f in futures:
            try:
                meta = await f
            except MessageSizeTooLargeError as exc:
                out.append(exc)
            else:
                out.append((meta.topic, meta.partition, meta.offset))
        return out

    async def _refresh(self) -> None:
        """After a send refused by a sealed topic: wait until a newer generation is active.

        A repartition seals the old topic (its records are refused, so nothing was written)
        and activates the new generation once the old one is copied: wait for it, a bounded
        time, then fail as retriable.
        """
        assert self._resolve is not None
        deadline = self._clock.monotonic() + self.sealed_wait_s
        delay = 0.1
        while True:
            newer = await self._resolve()
            if self.generation is None or newer.number > self.generation.number:
                break
            if self._clock.monotonic() >= deadline:
                raise GenerationSealedError(
                    f"{self.topic} refuses records (sealed by a repartition, or a record over "
                    "its size limit) and no newer generation is active; retry later"
                )
            await self._clock.sleep(delay)
            delay = min(delay * 2, 2.0)
        log.warning("events topic moved to generation %d (%s)", newer.number, newer.topic)
        self.generation, self.topic = newer, newer.topic

    async def send_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] = (),
        home: bool = False,
    ) -> Published:
        """Publish raw bytes (operators' tools, re-drives and tests of the dead-letter path);
        with ``home``, to the key's home partition."""
        gen = self.generation
        partition = gen.home(key) if home and gen is not None and key is not None else None
        meta = await (
            await self._producer.send(
                self.topic, value, key=key, headers=list(headers), partition=partition
            )
        )
        return Published("", meta.topic, meta.partition, int(meta.offset))

    async def append(
        self,
        memory_key: str,
        memory_id: str,
        drafts: Sequence[Draft],
        *,
        event_ids: Sequence[str] | None = None,
    ) -> list[Published]:
        """Publish one MessageAppended per draft, redacted first when the memory is known.

        Drafts the memory's privacy policy never persists are not published: the result has
        one entry per published draft (compare message ids).
        """
        if event_ids is not None and len(event_ids) != len(drafts):
            raise ValueError("event_ids must give one id per draft")
        now = self._clock.now_ms()
        ids: list[str | None] = list(event_ids) if event_ids is not None else [None] * len(drafts)
        records = [
            envelope(memory_key, memory_id, d.created_at_ms or now, appended_payload(d), eid)
            for d, eid in self._private(memory_id, drafts, ids)
        ]
        return await self.publish(memory_key, records) if records else []

    async def clear(
        self, memory_key: str, memory_id: str, *, event_id: str | None = None
    ) -> Published:
        """Publish a MemoryCleared."""
        payload = (CLEARED, {"reason": None})
        record = envelope(memory_key, memory_id, self._clock.now_ms(), payload, event_id)
        return (await self.publish(memory_key, [record]))[0]

    async def request_flush(
        self, memory_key: str, memory_id: str, *, event_id: str | None = None
    ) -> Published:
        """Publish a FlushRequested."""
        payload = (FLUSH_REQUESTED, {"reason": "requested"})
        record = envelope(memory_key, memory_id, self._clock.now_ms(), payload, event_id)
        return (await self.publish(memory_key, [record]))[0]

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

    def _private(
        self, memory_id: str, drafts: Sequence[Draft], event_ids: list[str | None]
    ) -> list[tuple[Draft, str | None]]:
        entry = self._catalog.get(memory_id) if self._catalog is not None else None
        if entry is None:
            return list(zip(drafts, event_ids, strict=True))
        privacy = entry.policy.privacy
        return [
            (privacy.redact_draft(d), eid)
            for d, eid in zip(drafts, event_ids, strict=True)
            if privacy.persists(d.role)
        ]
