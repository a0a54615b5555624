"""Repartition: move the events topic to a new generation with another partition count.

The steps (each resumable: running the command again continues where it stopped):

1. **Seal** the active topic: its ``max.message.bytes`` is set to 0, so every producer, in
   any language, has its writes refused (nothing is written; memstream's SDK retries on the
   new generation once it is active).
2. **Drain**: wait until the apply consumers have committed the sealed topic to its end, so
   every record it holds has been applied or dead-lettered.
3. **Copy** every record that is in its memory's home partition, partition by partition in
   offset order, to the new topic, to the memory's home there (``murmur2 mod M``); values,
   keys and headers as they were (event ids kept), plus a ``memstream.source`` header naming
   the original position. Records outside their home were dead-lettered by the consumers and
   are not copied (re-drive them from the DLQ).
4. **Re-home** every memory in Redis: its home becomes its new partition and every offset
   its state records (last applied, flush request, rejections) is translated to the position
   of the same record in the new topic; the old partition epoch is dropped. Replaying the new
   topic alone yields exactly these states.
5. **Position** the new generation's consumer group (``<group>.g<n>``) at the end of the new
   topic: everything in it is applied already.
6. **Switch**: record the new generation. Running consumers move to it by themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from consumers.connections import kafka_admin, kafka_consumer, kafka_producer
from consumers.generations import (
    SEALED_MAX_MESSAGE_BYTES,
    Generation,
    consumer_group,
    create_missing,
    events_topic_spec,
    generation_topic,
    read_generations,
    record_generation,
    topic_partition_count,
)
from consumers.settings import Settings
from consumers.topic_reader import read_to_end
from memory_core import MemstreamError
from memory_core.redis import RedisMemoryStore

SOURCE = "memstream.source"
_SEALED = {"max.message.bytes": SEALED_MAX_MESSAGE_BYTES, "retention.ms": "-1"}


class RepartitionError(MemstreamError):
    """A repartition step could not complete; run the command again once the cause is fixed."""


@dataclass
class RepartitionReport:
    """What a repartition did."""

    old: Generation
    new: Generation
    copied: int = 0
    skipped_misplaced: int = 0
    rehomed: int = 0
    # memory key -> [(old offset, new offset)], in log order
    moves: dict[bytes, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))


async def repartition(
    settings: Settings,
    store: RedisMemoryStore,
    partitions: int,
    *,
    drain_timeout_s: float = 300.0,
    echo: Callable[[str], None] = lambda _line: None,
) -> RepartitionReport:
    """Move the events topic to a new generation of ``partitions`` partitions (see module)."""
    if partitions < 1:
        raise RepartitionError("--partitions must be at least 1")
    generations = await read_generations(settings)
    if not generations:
        raise RepartitionError(
            f"no generation recorded for {settings.events_topic}: start memstream once first"
        )
    old = generations[-1]
    if old.partitions == partitions:
        raise RepartitionError(f"{old.topic} has {partitions} home partitions already")
    number = old.number + 1
    new = Generation(
        number,
        generation_topic(settings, number),
        partitions,
        time.time_ns() // 1_000_000,
        previous=old.topic,
    )
    report = RepartitionReport(old, new)
    echo(f"sealing {old.topic} (generation {old.number}): writes to it are refused from now on")
    await _seal(settings, old.topic)
    ends = await _end_offsets(settings, old.topic)
    echo(f"waiting for group {consumer_group(settings, old)} to apply {old.topic} to its end")
    try:
        await _drained(settings, consumer_group(settings, old), ends, drain_timeout_s, echo)
    except RepartitionError:
        # Nothing moved yet: writes may go on in the old generation.
        await _seal(settings, old.topic, sealed=False)
        echo(f"unsealed {old.topic}: nothing was moved")
        raise
    await create_missing(settings, [events_topic_spec(settings, new.topic, partitions)])
    echo(f"copying {sum(ends.values())} records into {new.topic} ({partitions} partitions)")
    await _copy(settings, old, new, ends, report)
    echo(f"copied {report.copied} records, skipped {report.skipped_misplaced} misplaced ones")
    report.rehomed = await _rehome(store, old, new, report.moves)
    echo(f"re-homed {report.rehomed} memories")
    await _position_group(settings, new)
    await record_generation(settings, new)
    echo(f"generation {new.number} is active: {new.topic}, {partitions} partitions")
    return report


async def _seal(settings: Settings, topic: str, *, sealed: bool = True) -> None:
    admin = kafka_admin(settings)
    try:
        await admin.start()
        # AlterConfigs replaces a topic's dynamic configs: memstream's topics have only the
        # retention set at creation, kept here.
        configs = _SEALED if sealed else {"retention.ms": "-1"}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


async def _end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    count = await topic_partition_count(settings, topic)
    if count is None:
        raise RepartitionError(f"topic {topic} does not exist")
    consumer = kafka_consumer(settings, group_id=None)
    try:
        await consumer.start()
        return dict(await consumer.end_offsets([TopicPartition(topic, p) for p in range(count)]))
    finally:
        await consumer.stop()


async def _drained(
    settings: Settings,
    group: str,
    ends: dict[TopicPartition, int],
    timeout_s: float,
    echo: Callable[[str], None],
) -> None:
    admin = kafka_admin(settings)
    deadline = time.monotonic() + timeout_s
    last = -1
    try:
        await admin.start()
        while True:
            committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
            behind = sum(
                # A partition the group never committed reads as offset -1.
                max(end - max(committed[tp].offset if tp in committed else 0, 0), 0)
                for tp, end in ends.items()
            )
            if behind == 0:
                return
            if behind != last:
                echo(f"  {behind} records not applied yet")
                last = behind
            if time.monotonic() >= deadline:
                raise RepartitionError(
                    f"group {group} still has {behind} records of the sealed topic to apply "
                    "after the timeout: run the apply consumers, then run this command again"
                )
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def _copy(
    settings: Settings,
    old: Generation,
    new: Generation,
    ends: dict[TopicPartition, int],
    report: RepartitionReport,
) -> None:
    done = await _already_copied(settings, new, report)
    consumer = kafka_consumer(settings, group_id=None, enable_auto_commit=False)
    producer = kafka_producer(settings, enable_idempotence=True, acks="all")
    try:
        await consumer.start()
        await producer.start()
        for tp, end in sorted(ends.items()):
            start = done.get(tp.partition, -1) + 1
            if start >= end:
                continue
            consumer.assign([tp])
            consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                records = (await consumer.getmany(tp, timeout_ms=1000, max_records=5000)).get(
                    tp, []
                )
                sends = []
                for rec in records:
                    if rec.offset >= end:
                        break
                    if rec.key is None or old.home(rec.key) != tp.partition:
                        report.skipped_misplaced += 1
                        continue
                    origin = f"{tp.topic}:{tp.partition}:{rec.offset}".encode()
                    headers = [*(h for h in rec.headers or () if h[0] != SOURCE), (SOURCE, origin)]
                    future = await producer.send(
                        new.topic,
                        rec.value,
                        key=rec.key,
                        headers=headers,
                        partition=new.home(rec.key),
                    )
                    sends.append((rec.key, rec.offset, future))
                for key, offset, future in sends:
                    report.moves[key].append((offset, (await future).offset))
                    report.copied += 1
    finally:
        await producer.stop()
        await consumer.stop()


async def _already_copied(
    settings: Settings, new: Generation, report: RepartitionReport
) -> dict[int, int]:
    """What an earlier, interrupted run copied: the last source offset per old partition
    (the moves of those records are recorded into ``report``)."""
    last: dict[int, int] = {}
    async for records in read_to_end(settings, new.topic, missing_ok=True):
        for rec in records:
            source = dict(rec.headers or ()).get(SOURCE)
            if source is not None and rec.key is not None:
                _, partition, offset = source.decode().rsplit(":", 2)
                p, o = int(partition), int(offset)
                last[p] = max(last.get(p, -1), o)
                report.moves[rec.key].append((o, rec.offset))
    for moves in report.moves.values():
        moves.sort()
    return last


async def _rehome(
    store: RedisMemoryStore,
    old: Generation,
    new: Generation,
    moves: dict[bytes, list[tuple[int, int]]],
) -> int:
    rehomed = 0
    for raw_key, pairs in moves.items():
        key = raw_key.decode("utf-8", "replace")
        translate = dict(pairs)
        home = f"{new.topic}:{new.home(raw_key)}"
        if await store.rehome(key, f"{old.topic}:{old.home(raw_key)}", home, translate):
            rehomed += 1
    return rehomed


async def _position_group(settings: Settings, new: Generation) -> None:
    """Commit the new generation's group at the end of the new topic: all of it is applied."""
    ends = await _end_offsets(settings, new.topic)
    consumer = kafka_consumer(
        settings,
        group_id=consumer_group(settings, new),
        enable_auto_commit=False,
    )
    try:
        await consumer.start()
        consumer.assign(list(ends))
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
    finally:
        await consumer.stop()


def describe(generations: list[Generation]) -> list[str]:
    """One line per generation, oldest first (for ``memstream topics status``)."""
    return [
        f"generation {g.number}: {g.topic}, {g.partitions} home partitions"
        + (f" (from {g.previous})" if g.previous else "")
        + (" — active" if i == len(generations) - 1 else " — sealed")
        for i, g in enumerate(generations)
    ]


def source_of(headers: list[tuple[str, bytes]]) -> str | None:
    """The original position a copied record carries, if any."""
    raw = dict(headers).get(SOURCE)
    return raw.decode() if raw is not None else None
