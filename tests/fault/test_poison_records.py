"""Poison records among valid ones: null or foreign keys, implausible times, a record too large
to dead-letter whole. Each goes to the dead-letter topic, changes no memory, and neither the
memory's next events nor its partition's commits wait for it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord, TopicPartition

from consumers import deadletter
from consumers.bootstrap import App
from consumers.events import CLEARED, FLUSH_REQUESTED, appended_payload, envelope
from consumers.recovery import verify
from memory_core import Draft, Role
from schemas import MEMORY_EVENT
from tests.integration.test_interop import home
from tests.integration.test_ordering import apply_consumer, drain, read_topic

KEY_MISMATCH = "key_mismatch"  # memory_core.DeadLetterReason.KEY_MISMATCH
INVALID_TIMESTAMP = "invalid_timestamp"  # memory_core.DeadLetterReason.INVALID_TIMESTAMP
TRUNCATED = "memstream.dlq.truncated"
Y2000_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
Y2100_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
Y3000_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z
AT_MS = 1_700_000_000_000
# The DLQ producer's default max request size (aiokafka and librdkafka: 1 MiB).
DEFAULT_MAX_REQUEST = 1_048_576


@dataclass(frozen=True)
class Sent:
    """One record as produced."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int


@pytest.fixture
async def raw_producer(app: App) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer on the events topic, allowed records of a few MB."""
    producer = AIOKafkaProducer(
        bootstrap_servers=app.settings.kafka_bootstrap, acks="all", max_request_size=4 << 20
    )
    await producer.start()
    yield producer
    await producer.stop()


def _keys_in_one_partition(app: App, count: int, tag: str) -> tuple[int, list[str]]:
    """``count`` memory keys sharing one home partition (and that partition)."""
    partitions = app.settings.topic_partitions
    by_home: dict[int, list[str]] = {}
    i = 0
    while True:
        key = f"agent:{app.settings.key_prefix}:user:{tag}{i}"
        keys = by_home.setdefault(home(key, partitions), [])
        keys.append(key)
        if len(keys) == count:
            return home(key, partitions), keys
        i += 1


def _appended(
    memory_key: str, message_id: str, *, at_ms: int = AT_MS, event_id: str | None = None, **kw: Any
) -> dict[str, Any]:
    content = kw.pop("content", f"hello from {message_id}")
    return envelope(
        memory_key,
        "chat",
        at_ms,
        appended_payload(Draft(message_id, Role.USER, content, at_ms)),
        event_id=event_id or f"ev-{memory_key}-{message_id}",
    )


def _ids(records: list[ConsumerRecord[bytes, bytes]]) -> list[tuple[int, int]]:
    out = []
    for r in records:
        h = deadletter.header_map(r.headers)
        out.append((int(h[deadletter.PARTITION]), int(h[deadletter.OFFSET])))
    return sorted(out)


async def test_null_and_foreign_keyed_records_are_dead_lettered_and_the_memory_goes_on(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    partition, (key, foreign, neighbour) = _keys_in_one_partition(app, 3, "nk")
    topic, encode = app.settings.events_topic, app.codec.encode
    sent: list[Sent] = []
    poison: list[Sent] = []

    async def send(rec: dict[str, Any], record_key: bytes | None, bad: bool = False) -> None:
        value = encode(MEMORY_EVENT, rec)
        # In the memory's home partition: the key, not the partition, is what is wrong.
        meta = await raw_producer.send_and_wait(topic, value, key=record_key, partition=partition)
        sent.append(s := Sent(record_key, value, meta.partition, meta.offset))
        if bad:
            poison.append(s)

    await send(_appended(key, "v0"), key.encode())
    await send(_appended(key, "null1"), None, bad=True)
    await send(_appended(neighbour, "n0"), neighbour.encode())
    await send(_appended(key, "v1"), key.encode())
    # Keyed with another memory's key (of the same partition): it would be ordered against
    # that memory's events, not its own.
    await send(_appended(key, "foreign1"), foreign.encode(), bad=True)
    # A producer that forgot the key, then resent the same event (same event id) with it: the
    # rejected attempt must not have recorded the id, or the fixed one is skipped as a repeat.
    await send(_appended(key, "resent", event_id="ev-resent"), None, bad=True)
    await send(_appended(key, "resent", event_id="ev-resent"), key.encode())
    await send(_appended(neighbour, "n1"), neighbour.encode())
    await send(_appended(key, "v2"), key.encode())

    async with apply_consumer(app, max_records=3) as consumer:
        await drain(consumer, len(sent))
        assert consumer.totals.dead_lettered == len(poison)

    assert [m.id for m in (await app.store.read(key)).messages] == ["v0", "v1", "resent", "v2"]
    assert [m.id for m in (await app.store.read(neighbour)).messages] == ["n0", "n1"]
    assert not (await app.store.read(foreign)).exists
    dead = await read_topic(app.settings.kafka_bootstrap, app.settings.dlq_topic)
    assert _ids(dead) == sorted((s.partition, s.offset) for s in poison)
    by_offset = {s.offset: s for s in poison}
    for rec in dead:
        headers = deadletter.header_map(rec.headers)
        assert headers[deadletter.REASON] == KEY_MISMATCH
        origin = by_offset[int(headers[deadletter.OFFSET])]
        assert (rec.key, rec.value) == (origin.key, origin.value)
    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.mismatches == []
    assert report.events == len(sent) - len(poison)


async def test_events_with_implausible_times_are_dead_lettered_invalid_timestamp(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    partition, (key,) = _keys_in_one_partition(app, 1, "ts")
    topic, encode = app.settings.events_topic, app.codec.encode
    valid_at = {"first": Y2000_MS, "v1": AT_MS, "last": Y2100_MS - 1}
    invalid_at = {
        "negative": -1,
        "year1": -62_135_596_800_000,
        "y1999": Y2000_MS - 1,
        "y2100": Y2100_MS,
        "y3000": Y3000_MS,
    }
    records: list[tuple[dict[str, Any], bool]] = [
        (_appended(key, "first", at_ms=valid_at["first"]), False)
    ]
    for name, at in invalid_at.items():
        records.append((_appended(key, name, at_ms=at), True))
        if name == "y1999":
            records.append((_appended(key, "v1", at_ms=valid_at["v1"]), False))
    # Every kind of payload: a clear from the year 3000 must not empty the memory, nor a flush
    # request from before the epoch ask for a flush.
    records.append((envelope(key, "chat", Y3000_MS, (CLEARED, {"reason": "x"})), True))
    records.append((envelope(key, "chat", -5, (FLUSH_REQUESTED, {"reason": "x"})), True))
    records.append((_appended(key, "last", at_ms=valid_at["last"]), False))

    poison: list[Sent] = []
    for rec, bad in records:
        value = encode(MEMORY_EVENT, rec)
        meta = await raw_producer.send_and_wait(topic, value, key=key.encode())
        assert meta.partition == partition
        if bad:
            poison.append(Sent(key.encode(), value, meta.partition, meta.offset))

    async with apply_consumer(app, max_records=4) as consumer:
        await drain(consumer, len(records))
        assert consumer.totals.dead_lettered == len(poison)

    snap = await app.store.read(key)
    assert [(m.id, m.created_at_ms) for m in snap.messages] == list(valid_at.items())
    assert not snap.flush_pending
    dead = await read_topic(app.settings.kafka_bootstrap, app.settings.dlq_topic)
    assert _ids(dead) == sorted((s.partition, s.offset) for s in poison)
    for rec in dead:
        assert deadletter.header_map(rec.headers)[deadletter.REASON] == INVALID_TIMESTAMP
    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.mismatches == []
    assert report.events == len(records) - len(poison)


async def _committed(admin: AIOKafkaAdminClient, group: str, tp: TopicPartition) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    meta = offsets.get(tp)
    return -1 if meta is None else int(meta.offset)


async def test_a_record_too_large_to_dead_letter_whole_is_truncated_and_never_blocks_commits(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    settings = app.settings
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        # The events topic takes records of a few MB (a producer allowed to send them); the
        # dead-letter topic and the consumer's producer keep their defaults.
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    settings.events_topic,
                    {"max.message.bytes": str(8 << 20), "retention.ms": "-1"},
                )
            ]
        )
        partition, (key, neighbour) = _keys_in_one_partition(app, 2, "big")
        encode = app.codec.encode
        rng = random.Random(5)
        # Framed like a memory event, but its body is noise: undecodable.
        garbage = b"\x00\x00\x00\x00\x01" + rng.randbytes(1_100_000)
        # A well-formed event whose message is far over the memory's budget: rejected by the
        # model (oversized_message) after Redis recorded its offset.
        huge = encode(MEMORY_EVENT, _appended(key, "huge", content="word " * 230_000))
        assert len(garbage) > DEFAULT_MAX_REQUEST and len(huge) > DEFAULT_MAX_REQUEST

        sent: list[Sent] = []
        big: list[Sent] = []
        for name, value in (
            ("v0", None),
            ("garbage", garbage),
            ("v1", None),
            ("huge", huge),
            ("v2", None),
        ):
            for memory_key in (key, neighbour) if value is None else (key,):
                value_bytes = value or encode(MEMORY_EVENT, _appended(memory_key, name))
                meta = await raw_producer.send_and_wait(
                    settings.events_topic, value_bytes, key=memory_key.encode()
                )
                assert meta.partition == partition
                sent.append(Sent(memory_key.encode(), value_bytes, meta.partition, meta.offset))
                if value is not None:
                    big.append(sent[-1])
        last = sent[-1].offset
        tp = TopicPartition(settings.events_topic, partition)

        consumer = apply_consumer(app, max_records=2)
        async with consumer:
            running = asyncio.create_task(consumer.run())
            try:
                started = time.monotonic()
                while (committed := await _committed(admin, settings.consumer_group, tp)) <= last:
                    assert not running.done(), running
                    assert time.monotonic() - started < 30, (
                        f"partition {partition} committed up to {committed}, its last record "
                        f"is at {last}; the large records are at {[b.offset for b in big]}"
                    )
                    await asyncio.sleep(0.1)
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        assert committed == last + 1
    finally:
        await admin.close()

    assert [m.id for m in (await app.store.read(key)).messages] == ["v0", "v1", "v2"]
    assert [m.id for m in (await app.store.read(neighbour)).messages] == ["v0", "v1", "v2"]
    dead = await read_topic(settings.kafka_bootstrap, settings.dlq_topic)
    assert _ids(dead) == sorted((b.partition, b.offset) for b in big)
    by_offset = {b.offset: b for b in big}
    reasons = {}
    for rec in dead:
        headers = deadletter.header_map(rec.headers)
        origin = by_offset[int(headers[deadletter.OFFSET])]
        # What the letter carries of the value: nothing, or its beginning; its size is said.
        carried = rec.value or b""
        assert len(carried) < len(origin.value)
        assert origin.value.startswith(carried)
        assert headers.get(TRUNCATED) is not None, headers
        assert rec.key == origin.key
        reasons[origin.offset] = headers[deadletter.REASON]
    assert [reasons[b.offset] for b in big] == ["undecodable", "oversized_message"]
    report = await verify(settings, app.catalog, app.codec, app.store)
    assert report.mismatches == []
