"""Reading a whole topic, from its beginning to the end it had when the read began."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping

from aiokafka.structs import ConsumerRecord, TopicPartition

from consumers.connections import kafka_consumer
from consumers.generations import MissingTopicError, topic_partition_count
from consumers.settings import Settings


async def read_to_end(
    settings: Settings,
    topic: str,
    *,
    missing_ok: bool = False,
    partitions: Iterable[int] | None = None,
    ends: dict[int, int] | None = None,
    starts: Mapping[int, int] | None = None,
    firsts: dict[int, int] | None = None,
) -> AsyncGenerator[list[ConsumerRecord[bytes, bytes]], None]:
    """Every record of ``topic`` (of ``partitions`` only, when given) up to its current end,
    a fetched batch of one partition at a time (offset order within a partition). No group,
    nothing committed. ``starts`` gives partitions an offset to start from instead of their
    beginning. ``ends`` and ``firsts``, when given, receive each partition's end offset and
    the offset of its oldest record still kept (above 0 once retention deleted some) before
    the first batch. A missing topic yields nothing with ``missing_ok``, else raises
    ``MissingTopicError``."""
    count = await topic_partition_count(settings, topic)
    if count is None:
        if missing_ok:
            return
        raise MissingTopicError(topic)
    # Large fetches: dead letters carry records of almost 1 MB.
    consumer = kafka_consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    try:
        await consumer.start()
        chosen = range(count) if partitions is None else [p for p in partitions if p < count]
        tps = [TopicPartition(topic, p) for p in chosen]
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        first = await consumer.beginning_offsets(tps)
        for tp in tps:
            start = (starts or {}).get(tp.partition)
            if start is not None and start > first[tp]:
                consumer.seek(tp, start)
        last = await consumer.end_offsets(tps)
        if ends is not None:
            ends.update({tp.partition: last[tp] for tp in tps})
        if firsts is not None:
            firsts.update({tp.partition: first[tp] for tp in tps})
        begin = {tp: max(first[tp], (starts or {}).get(tp.partition, 0)) for tp in tps}
        remaining = {tp for tp in tps if last[tp] > begin[tp]}
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, records in fetched.items():
                batch = [r for r in records if r.offset < last[tp]]
                if batch:
                    yield batch
                if records and records[-1].offset + 1 >= last[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
