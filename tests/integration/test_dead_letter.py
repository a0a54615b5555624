"""Malformed events go to the dead-letter topic, as they were, and nothing else stops."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from consumers import deadletter
from consumers.bootstrap import App, build_app
from consumers.events import appended_payload, envelope, flushed_payload
from consumers.recovery import verify
from consumers.settings import Settings
from memory_core import DeadLetterReason, Draft, Role
from memory_core.redis import RedisMemoryStore
from schemas import FLUSH_COMMAND, MEMORY_EVENT
from tests.integration.test_ordering import apply_consumer, drain, read_topic
from tests.services import MEMORIES

BASE_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Sent:
    """One record as produced: where it landed and what it was."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    reason: DeadLetterReason | None  # None: a valid event


@pytest.fixture
async def app(pipeline_settings: Settings, tmp_path: Path) -> AsyncIterator[App]:
    """The pipeline's ``chat`` memory and a ``notes`` one, whose keys ``chat`` must refuse."""
    path = tmp_path / "memories-notes.yaml"
    path.write_text(MEMORIES + '  - {id: notes, key: "notes:{owner}", max_tokens: 400}\n')
    async with build_app(pipeline_settings.model_copy(update={"memories_file": path})) as built:
        yield built


def _message(
    memory_key: str,
    message_id: str,
    role: str = "user",
    *,
    memory_id: str = "chat",
    content: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    body = appended_payload(
        Draft(message_id, Role.USER, content or f"hello from {message_id}", BASE_MS)
    )
    body[1].update(role=role, **fields)
    return envelope(memory_key, memory_id, BASE_MS, body, event_id=f"ev-{memory_key}-{message_id}")


async def test_every_kind_of_malformed_event_is_dead_lettered_between_applied_ones(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    prefix = app.settings.key_prefix
    key, other, third = (f"agent:{prefix}:user:{u}" for u in ("main", "other", "third"))
    encode = app.codec.encode
    valid = encode(MEMORY_EVENT, _message(key, "probe"))
    calls = [{"id": "call-1", "name": "search", "arguments": "{}"}]
    bad: list[tuple[DeadLetterReason, bytes | None, bytes]] = [
        (DeadLetterReason.UNDECODABLE, key.encode(), b"plain text, not Confluent-framed"),
        (DeadLetterReason.UNDECODABLE, None, b"\x00\x00\x00"),
        (DeadLetterReason.UNDECODABLE, key.encode(), valid[:-4]),
        (DeadLetterReason.UNDECODABLE, key.encode(), valid + b"\x00\x00"),
        (
            DeadLetterReason.UNDECODABLE,
            key.encode(),
            encode(
                FLUSH_COMMAND,
                {
                    "command_id": "c",
                    "memory_key": key,
                    "memory_id": "chat",
                    "flush_seq": 1,
                    "requested_at": BASE_MS,
                    "source_offset": 0,
                },
            ),
        ),
        (DeadLetterReason.UNKNOWN_SCHEMA, key.encode(), struct.pack(">bI", 0, 999) + valid[5:]),
        (
            DeadLetterReason.INVALID_KEY,
            b"agent:bad key:user:x",
            encode(MEMORY_EVENT, _message("agent:bad key:user:x", "k1")),
        ),
        (
            DeadLetterReason.INVALID_KEY,
            b"agent:{x}:user:*",
            encode(MEMORY_EVENT, _message("agent:{x}:user:*", "k2")),
        ),
        # A key no resource's template renders.
        (DeadLetterReason.INVALID_KEY, b"foo", encode(MEMORY_EVENT, _message("foo", "k4"))),
        # The record key must be the event's memory key (it decides the partition).
        (DeadLetterReason.KEY_MISMATCH, key.encode(), encode(MEMORY_EVENT, _message(other, "k3"))),
        (DeadLetterReason.KEY_MISMATCH, None, encode(MEMORY_EVENT, _message(key, "k5"))),
        # A key of the `notes` resource sent as a `chat` event.
        (
            DeadLetterReason.MEMORY_MISMATCH,
            b"notes:x",
            encode(MEMORY_EVENT, _message("notes:x", "k6")),
        ),
        (
            DeadLetterReason.INVALID_TIMESTAMP,
            key.encode(),
            encode(MEMORY_EVENT, {**_message(key, "old"), "occurred_at": -1}),
        ),
        (
            DeadLetterReason.UNREQUESTED_FLUSH,
            key.encode(),
            encode(
                MEMORY_EVENT,
                envelope(key, "chat", BASE_MS, flushed_payload(5, None, 0), event_id="fl5"),
            ),
        ),
        (
            DeadLetterReason.UNKNOWN_MEMORY,
            key.encode(),
            encode(MEMORY_EVENT, _message(key, "u1", memory_id="no-such-memory")),
        ),
        (
            DeadLetterReason.OVERSIZED_MESSAGE,
            key.encode(),
            encode(MEMORY_EVENT, _message(key, "big", content="word " * 400)),
        ),
        (
            DeadLetterReason.ORPHAN_TOOL_RESULT,
            key.encode(),
            encode(MEMORY_EVENT, _message(key, "orphan", "tool", tool_call_id="never-called")),
        ),
        (
            DeadLetterReason.DUPLICATE_MESSAGE_ID,
            key.encode(),
            # A new event (new event id) appending a message id the memory already holds.
            encode(MEMORY_EVENT, {**_message(key, "v0"), "event_id": "another-event"}),
        ),
        (
            DeadLetterReason.INVALID_EVENT,
            key.encode(),
            encode(MEMORY_EVENT, _message(key, "t1", "tool")),
        ),
        (
            DeadLetterReason.INVALID_EVENT,
            key.encode(),
            encode(MEMORY_EVENT, _message(key, "r1", "wizard")),
        ),
        (DeadLetterReason.INVALID_EVENT, key.encode(), encode(MEMORY_EVENT, _message(key, ""))),
    ]
    # wrong_partition has its own tests (tests/integration/test_home_partition.py).
    assert {reason for reason, _, _ in bad} == set(DeadLetterReason) - {
        DeadLetterReason.WRONG_PARTITION
    }

    sent: list[Sent] = []

    async def send(k: bytes | None, value: bytes, reason: DeadLetterReason | None) -> None:
        meta = await raw_producer.send_and_wait(app.settings.events_topic, value, key=k)
        sent.append(Sent(k, value, meta.partition, meta.offset, reason))

    expected: dict[str, list[str]] = {key: [], other: [], third: []}

    async def send_valid(
        memory_key: str, message_id: str, role: str = "user", **fields: Any
    ) -> None:
        record = _message(memory_key, message_id, role, **fields)
        await send(memory_key.encode(), encode(MEMORY_EVENT, record), None)
        expected[memory_key].append(message_id)

    await send_valid(key, "v0")
    await send_valid(key, "call", "assistant", tool_calls=calls)
    await send_valid(key, "result", "tool", tool_call_id="call-1")
    for i, (reason, k, value) in enumerate(bad, start=1):
        await send_valid(other if i % 2 else third, f"o{i}")
        await send(k, value, reason)
        await send_valid(key, f"v{i}")

    async with apply_consumer(app, max_records=7) as consumer:
        await drain(consumer, len(sent))
        assert consumer.totals.dead_lettered == len(bad)
        assert consumer.totals.applied == len(sent) - len(bad)

    for memory_key, ids in expected.items():
        assert [m.id for m in (await app.store.read(memory_key)).messages] == ids
    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.ok, report.mismatches

    dead = await read_topic(app.settings.kafka_bootstrap, app.settings.dlq_topic)
    assert len(dead) == len(bad)
    by_source = {(s.partition, s.offset): s for s in sent}
    seen: list[tuple[DeadLetterReason, bytes]] = []
    for record in dead:
        headers = deadletter.header_map(record.headers)
        assert headers[deadletter.TOPIC] == app.settings.events_topic
        origin = by_source[(int(headers[deadletter.PARTITION]), int(headers[deadletter.OFFSET]))]
        assert origin.reason is not None, f"a valid event was dead-lettered: {headers}"
        assert headers[deadletter.REASON] == origin.reason.value
        assert headers[deadletter.DETAIL]
        assert record.value == origin.value
        assert record.key == origin.key
        seen.append((origin.reason, origin.value))
    assert sorted(seen) == sorted((reason, value) for reason, _, value in bad)


async def test_a_rejected_event_is_dead_lettered_even_when_the_first_publish_failed(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    # A dead-letter topic that refuses every record (a broker-side limit smaller than any
    # record): the first consumer writes the batch to Redis, then its publish fails.
    refusing = app.settings.model_copy(update={"dlq_topic": app.settings.dlq_topic + ".refusing"})
    admin = AIOKafkaAdminClient(bootstrap_servers=app.settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(refusing.dlq_topic, 1, 1, topic_configs={"max.message.bytes": "64"})]
        )
    finally:
        await admin.close()

    key = f"agent:{app.settings.key_prefix}:user:main"
    orphan = app.codec.encode(MEMORY_EVENT, _message(key, "orphan", "tool", tool_call_id="none"))
    garbage = b"not a record"
    for value in (
        app.codec.encode(MEMORY_EVENT, _message(key, "v0")),
        orphan,
        garbage,
        app.codec.encode(MEMORY_EVENT, _message(key, "v1")),
    ):
        await raw_producer.send_and_wait(app.settings.events_topic, value, key=key.encode())

    first_store = RedisMemoryStore(app.redis, prefix=app.settings.key_prefix)
    async with apply_consumer(app, settings=refusing, store=first_store) as first:
        deadline = time.monotonic() + 30
        with pytest.raises(KafkaError):
            while time.monotonic() < deadline:
                await first.step(timeout_ms=100)
    # Redis took the batch before the publish failed; nothing was committed.
    assert [m.id for m in (await app.store.read(key)).messages] == ["v0", "v1"]

    async with apply_consumer(app) as restarted:
        await drain(restarted, 4)
    dead = await read_topic(app.settings.kafka_bootstrap, app.settings.dlq_topic)
    reasons = {deadletter.header_map(r.headers)[deadletter.REASON]: r.value for r in dead}
    assert reasons.get(DeadLetterReason.UNDECODABLE.value) == garbage
    # The orphan tool result was rejected by the first attempt; its redelivery is skipped as an
    # applied offset, so nothing dead-letters it again.
    assert reasons.get(DeadLetterReason.ORPHAN_TOOL_RESULT.value) == orphan, (
        f"the rejected orphan tool result never reached the dead-letter topic: {sorted(reasons)}"
    )
