"""A step decodes the next batch while its writes finish: that batch still applies in order."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from consumers.apply import BatchReport
from consumers.bootstrap import App, build_app
from consumers.settings import Settings
from consumers.topics import ensure_topics, topic_names
from memory_core.redis import RedisLockManager
from tests.integration.test_ordering import (
    apply_consumer,
    drain,
    produce_concurrently,
    until_verified,
    workload,
)
from tests.services import MEMORIES


async def test_batches_decoded_ahead_apply_in_log_order_and_equal_the_model(
    app: App, names: str
) -> None:
    conversations = workload(seed=21, prefix=names, keys=40, events=30)
    await produce_concurrently(app, conversations)
    total = sum(len(c.records) for c in conversations)
    consumer = apply_consumer(app, max_records=150)
    await consumer.start()
    try:
        await drain(consumer, total)
    finally:
        await consumer.stop()
    assert consumer.totals.records == total
    # A backlog is there to decode ahead; those records were applied by the next step.
    assert consumer.totals.decoded_ahead > 0
    await until_verified(app)


async def test_a_partition_refused_mid_stream_drops_its_records_fetched_ahead(
    pipeline_settings: Settings, tmp_path: Path, names: str
) -> None:
    # One partition: whatever a step fetches ahead belongs to the partition it then refuses.
    memories = tmp_path / "fast-refusal.yaml"
    memories.write_text(MEMORIES.replace("acquire_timeout: 5s", "acquire_timeout: 200ms"))
    settings = pipeline_settings.model_copy(
        update={
            "events_topic": f"t.{names}.single",
            "topic_partitions": 1,
            "memories_file": memories,
        }
    )
    await ensure_topics(settings, topic_names(settings))
    async with build_app(settings) as app:
        conversations = workload(seed=22, prefix=names, keys=30, events=30)
        await produce_concurrently(app, conversations)
        consumer = apply_consumer(app, max_records=120)
        await consumer.start()
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        try:
            for _ in range(2):
                await consumer.step(timeout_ms=1000)
            # Another owner takes one memory: each batch holding its events is refused, and the
            # partition is fetched again from that batch on. What the step fetched ahead must
            # be dropped, not applied (the rewound events would then count as applied).
            locks = RedisLockManager(app.redis, prefix=settings.key_prefix)
            lease = await locks.acquire(
                conversations[0].memory_key,
                ttl=timedelta(seconds=30),
                timeout=timedelta(seconds=5),
            )
            reports: list[BatchReport] = []
            deadline = time.monotonic() + 30
            while not any(r.refetched for r in reports):
                assert time.monotonic() < deadline, "no records fetched ahead were dropped"
                reports.append(await consumer.step(timeout_ms=1000))
            assert reports[-1].retried_partitions
            await locks.release(lease)
            task = asyncio.create_task(consumer.run(stop))
            await until_verified(app)
        finally:
            stop.set()
            if task is not None:
                await task
            await consumer.stop()
