"""The apply consumer rides out a Kafka broker crash: it waits, commits nothing unapplied,
and resumes when the broker is back. Runs its own broker so the shared one is untouched."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.bootstrap import build_app
from consumers.settings import Settings
from consumers.stack import LocalStack
from consumers.stack.kafka import KafkaService
from consumers.stack.process import read_pid
from consumers.topics import ensure_topics
from tests.integration.test_ordering import (
    apply_consumer,
    produce_concurrently,
    until_verified,
    workload,
)
from tests.ports import free_port_block


@pytest.fixture
async def own_stack(pipeline_settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    """A second local stack (Kafka, Redis, Temporal) on free ports, only for this test."""
    base = free_port_block(8)
    settings = pipeline_settings.model_copy(
        update={
            "stack_dir": tmp_path / "stack",
            "kafka_bootstrap": f"127.0.0.1:{base}",
            "kafka_controller_port": base + 1,
            "redis_url": f"redis://127.0.0.1:{base + 2}/0",
            "temporal_address": f"127.0.0.1:{base + 3}",
            "stack_kafka_secure_port": base + 6,
        }
    )
    stack = LocalStack(settings, echo=lambda _line: None, only={"kafka", "redis", "temporal"})
    try:
        statuses = await stack.up_async()
        assert all(s.up for s in statuses), statuses
        yield settings
    finally:  # also when starting failed half-way: nothing is left running
        await stack.down_async()


async def test_the_consumer_rides_out_a_kafka_crash_and_loses_nothing(
    own_stack: Settings, names: str
) -> None:
    await ensure_topics(own_stack)
    conversations = workload(seed=8, prefix=names, keys=8, events=30)
    half = [c.__class__(c.memory_key, c.records[:15]) for c in conversations]
    rest = [c.__class__(c.memory_key, c.records[15:]) for c in conversations]
    async with build_app(own_stack) as app:
        consumer = apply_consumer(app)
        stop = asyncio.Event()
        await consumer.start()
        task = asyncio.create_task(consumer.run(stop))
        try:
            await produce_concurrently(app, half)
            await until_verified(app, 60)
            applied_before = consumer.totals.applied
            record = read_pid(KafkaService(own_stack).pid_path)
            assert record is not None
            os.kill(record.pid, signal.SIGKILL)
            await asyncio.sleep(3)
            assert not task.done(), "the consumer died with the broker instead of waiting"
            restart = LocalStack(own_stack, echo=lambda _line: None, only={"kafka"})
            statuses = await restart.up_async()
            assert all(s.up for s in statuses)
            await produce_concurrently(app, rest, seed=3)
            await until_verified(app, 120)
            assert consumer.totals.applied > applied_before
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
            await consumer.stop()
