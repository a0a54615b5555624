"""Partition ownership and outages: rebalances, a zombie consumer, Redis going away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition

from consumers.bootstrap import App, build_app
from consumers.settings import Settings
from memory_core.redis import KeyBatch, RedisMemoryStore
from tests.fault.test_redis_restart import RedisProcess
from tests.integration.test_ordering import (
    apply_consumer,
    produce_concurrently,
    until_verified,
    workload,
)


async def test_two_consumers_of_a_group_split_the_partitions_and_equal_the_model(
    app: App, names: str
) -> None:
    conversations = workload(seed=5, prefix=names, keys=24, events=20)
    first = [c.__class__(c.memory_key, c.records[:10]) for c in conversations]
    rest = [c.__class__(c.memory_key, c.records[10:]) for c in conversations]
    a, b = apply_consumer(app), apply_consumer(app)
    stop = asyncio.Event()
    await a.start()
    runs = [asyncio.create_task(a.run(stop))]
    try:
        await produce_concurrently(app, first)
        await b.start()  # joins the group: the partitions are split between a and b
        runs.append(asyncio.create_task(b.run(stop)))
        await produce_concurrently(app, rest, seed=1)
        await until_verified(app)
    finally:
        stop.set()
        await asyncio.gather(*runs)
        await a.stop()
        await b.stop()
    assert a.totals.applied > 0
    assert b.totals.applied > 0


async def test_a_consumer_that_lost_its_partition_is_fenced_and_commits_nothing(
    app: App, names: str
) -> None:
    (conv,) = workload(seed=9, prefix=names, keys=1, events=12)
    zombie = apply_consumer(app)
    await zombie.start()
    try:
        await app.producer.send_records(conv.memory_key, conv.records[:6])
        committed: dict[TopicPartition, int] = {}
        while zombie.totals.records < 6:
            committed.update((await zombie.step(timeout_ms=1000)).committed)
        (tp,) = committed  # one memory: one partition
        assert tp in zombie._epochs
        # The partition moves on: its new owner takes a newer epoch and writes the memory
        # (the zombie's lock had expired).
        await app.redis.delete(app.store.keys(conv.memory_key).lock)
        new_owner = RedisMemoryStore(app.redis, prefix=app.settings.key_prefix)
        epoch = await new_owner.new_epoch(f"{tp.topic}:{tp.partition}")
        entry = app.catalog.get("chat")
        assert entry is not None
        (outcome,) = await new_owner.apply(
            [KeyBatch(conv.memory_key, entry.policy, [], epoch=epoch)], "new-owner"
        )
        assert outcome.result is not None
        before = await app.store.read(conv.memory_key)
        await app.producer.send_records(conv.memory_key, conv.records[6:])
        report = await zombie.step(timeout_ms=5000)
        while not report.records:
            report = await zombie.step(timeout_ms=1000)
        assert tp in report.retried_partitions
        assert tp not in report.committed
        assert tp in zombie._fenced
        after = await app.store.read(conv.memory_key)
        assert after.messages == before.messages
        assert after.last_offset == before.last_offset
    finally:
        await zombie.stop()


# Small batches: steps then fetch and decode ahead when Redis goes away under them.
@pytest.mark.parametrize("max_records", [2000, 40])
async def test_the_consumer_rides_out_a_redis_outage_and_loses_nothing(
    pipeline_settings: Settings, tmp_path: Path, names: str, max_records: int
) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    settings = pipeline_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{server.port}/0", "redis_socket_timeout_s": 1.0}
    )
    try:
        async with build_app(settings) as app:
            for _ in range(100):
                try:
                    await app.redis.ping()
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            conversations = workload(seed=3, prefix=names, keys=10, events=30)
            half = [c.__class__(c.memory_key, c.records[:15]) for c in conversations]
            rest = [c.__class__(c.memory_key, c.records[15:]) for c in conversations]
            consumer = apply_consumer(app, max_records=max_records)
            stop = asyncio.Event()
            await consumer.start()
            task = asyncio.create_task(consumer.run(stop))
            try:
                await produce_concurrently(app, half)
                await until_verified(app, 60)
                server.kill()
                await produce_concurrently(app, rest, seed=2)
                await asyncio.sleep(2.0)
                assert not task.done(), "the consumer died with Redis instead of waiting"
                server.start()
                await until_verified(app, 90)
            finally:
                stop.set()
                await task
                await consumer.stop()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
