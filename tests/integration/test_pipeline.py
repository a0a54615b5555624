"""The whole pipeline on real Kafka, Redis and Temporal."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers.bootstrap import App
from consumers.deadletter import REASON, TOPIC, header_map
from consumers.runner import Runner
from memory_core import AsyncSafeMemoryInstance, Kind, Role


def _instance(app: App, key: str) -> AsyncSafeMemoryInstance:
    entry = app.catalog.get("chat")
    assert entry is not None
    return AsyncSafeMemoryInstance(key, entry.config, store=app.store, publisher=app.producer)


async def _until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_an_appended_message_is_readable_once_applied(app: App, pipeline: Runner) -> None:
    memory = _instance(app, "agent:a1:user:u1")
    await memory.append(Role.USER, "hello, my mail is bob@example.com")
    messages = await memory.read()
    assert [m.content for m in messages] == ["hello, my mail is [REDACTED]"]
    assert messages[0].tokens > 0


async def test_crossing_the_threshold_runs_a_flush_that_replaces_the_oldest_messages(
    app: App, pipeline: Runner
) -> None:
    memory = _instance(app, "agent:a1:user:flush")
    for i in range(14):
        await memory.append(
            Role.USER if i % 2 == 0 else Role.ASSISTANT, f"message {i} " + "word " * 12
        )

    async def summarized() -> bool:
        return any(m.kind is Kind.SUMMARY for m in await memory.read())

    await _until(summarized, 60)
    health = await memory.health()
    assert health.tokens_saved_total > 0
    assert health.within_budget


async def test_a_malformed_flush_command_is_dead_lettered_and_dispatch_goes_on(
    app: App, pipeline: Runner
) -> None:
    settings = app.settings
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(settings.flush_topic, b"\x00\x00\x00\x00\x02garbage", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    headers = header_map(list(record.headers))
    assert headers[REASON] == "undecodable"
    assert headers[TOPIC] == settings.flush_topic
    assert record.value == b"\x00\x00\x00\x00\x02garbage"
    memory = _instance(app, "agent:a1:user:after-poison")
    for i in range(14):
        await memory.append(Role.USER, f"message {i} " + "word " * 12)

    async def summarized() -> bool:
        return any(m.kind is Kind.SUMMARY for m in await memory.read())

    await _until(summarized, 60)


async def test_consumer_lag_counts_what_is_left_and_drops_to_zero(app: App, names: str) -> None:
    from tests.integration.test_ordering import apply_consumer, drain, workload

    (conv,) = workload(seed=4, prefix=names, keys=1, events=30)
    await app.producer.send_records(conv.memory_key, conv.records)
    consumer = apply_consumer(app, max_records=5)
    await consumer.start()
    try:
        while not (await consumer.step(timeout_ms=1000)).records:
            pass
        # Lag counts from the committed position: the step's commit follows in the background.
        assert await consumer.settle()
        assert sum(consumer.lag().values()) == 30 - consumer.totals.records
        await drain(consumer, 30)
        assert consumer.lag()
        assert sum(consumer.lag().values()) == 0
    finally:
        await consumer.stop()
