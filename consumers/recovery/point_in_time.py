"""A memory as it was at an offset or a time, folded from its home partition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka.structs import TopicPartition

from consumers.catalog import MemoryCatalog
from consumers.connections import kafka_consumer
from consumers.generations import existing_generation
from consumers.recovery.reading import LogReader, Progress
from consumers.settings import Settings
from memory_core import MemoryState
from schemas import AvroCodec


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds of ``text``: digits (already ms) or ISO 8601 (UTC when no zone);
    ``ValueError`` otherwise."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class PointInTime:
    """A memory as it was: its state after every event of its home partition up to
    ``offset`` (inclusive; -1: before any), folded from the log: ``events`` of them read,
    after the snapshot at ``snapshot_offset`` when it started from one."""

    memory_key: str
    state: MemoryState
    offset: int
    events: int
    snapshot_offset: int | None = None

    @property
    def found(self) -> bool:
        """Whether the memory had any event up to ``offset``."""
        return self.events > 0 or self.snapshot_offset is not None


async def memory_at(
    settings: Settings,
    catalog: MemoryCatalog,
    codec: AvroCodec,
    memory_key: str,
    *,
    offset: int | None = None,
    at_ms: int | None = None,
    snapshots: bool = True,
) -> PointInTime:
    """``memory_key`` as it was after the event at ``offset`` of its home partition, or
    after every event appended before ``at_ms`` (Kafka timestamps; docs/semantics.md,
    "Recovery"). Reads the partition up to that point only, from the memory's latest
    snapshot at or before it (``snapshots`` False, or none kept: from the beginning)."""
    if (offset is None) == (at_ms is None):
        raise ValueError("give exactly one of offset and at_ms")
    gen = await existing_generation(settings)
    partition = gen.home(memory_key.encode())
    if at_ms is not None:
        offset = await _last_offset_before(settings, gen.topic, partition, at_ms)
    assert offset is not None
    reader = LogReader(
        settings, catalog, codec, gen, Progress("point in time", 1), None, snapshots=snapshots
    )
    memory = (await reader.fold(partition, {memory_key}, upto=offset)).memories.get(memory_key)
    if memory is None:
        return PointInTime(memory_key, MemoryState(), offset, 0)
    base = memory.base.last_offset if memory.base is not None else None
    return PointInTime(memory_key, memory.state, offset, memory.events, base)


async def _last_offset_before(settings: Settings, topic: str, partition: int, at_ms: int) -> int:
    """The offset of the last record of ``topic:partition`` appended before ``at_ms``."""
    consumer = kafka_consumer(settings, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    try:
        await consumer.start()
        found = await consumer.offsets_for_times({tp: at_ms})
        at = found.get(tp)
        if at is not None:
            return int(at.offset) - 1
        return int((await consumer.end_offsets([tp]))[tp]) - 1  # nothing at or after it
    finally:
        await consumer.stop()
