"""A Redis that loses its data (FLUSHALL; SIGKILL of a Redis without persistence) while the
apply consumer runs, and while it is stopped: each lost partition is restored from the log
before anything new is applied to it, every memory ends equal to the model of the log, and
lag drains by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from consumers.bootstrap import App, build_app
from consumers.recovery import verify
from consumers.runner import Runner
from consumers.settings import Settings
from tests.fault.test_redis_restart import RedisProcess
from tests.integration.test_ordering import Conversation, until_verified, workload
from tests.services import cluster_settings


@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path, persistent=False)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


@pytest.fixture
async def app(pipeline_settings: Settings, volatile: RedisProcess) -> AsyncIterator[App]:
    settings = pipeline_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{volatile.port}/0"}
    )
    deadline = time.monotonic() + 10
    async with build_app(settings) as built:
        while True:
            try:
                await built.store.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "the test's redis-server did not start"
                await asyncio.sleep(0.1)
        yield built


async def _produce(app: App, conversations: list[Conversation], part: slice) -> None:
    for conv in conversations:
        records = conv.records[part]
        if records:
            await app.producer.send_records(conv.memory_key, records)


async def _drained(runner: Runner, timeout: float = 60.0) -> None:
    consumer = runner.consumer
    assert consumer is not None
    deadline = time.monotonic() + timeout
    while consumer.restoring or not consumer.lag() or any(consumer.lag().values()):
        assert time.monotonic() < deadline, (consumer.restoring, consumer.lag())
        await asyncio.sleep(0.2)


async def _wiped_mid_stream(
    app: App, runner: Runner, conversations: list[Conversation], applied: slice, after: slice
) -> None:
    """``applied`` produced and verified, Redis wiped (every master) while the consumer
    runs, ``after`` produced: lag drains by itself and every memory equals the log."""
    await _produce(app, conversations, applied)
    await until_verified(app)
    await app.redis.flushall()
    await _produce(app, conversations, after)
    await _drained(runner)
    await until_verified(app)


async def test_lost_partitions_are_restored_before_new_events_apply(
    app: App, volatile: RedisProcess, names: str
) -> None:
    conversations = workload(seed=51, prefix=names, keys=24, events=45)
    async with Runner(app, ("apply",)) as runner:
        # Wiped while the consumer runs: every partition's next write is refused as lost.
        await _wiped_mid_stream(app, runner, conversations, slice(0, 15), slice(15, 30))
        assert runner.consumer is not None
        wiped = len(runner.consumer.restored)
        assert wiped > 0 and all(r.memories > 0 for _, r in runner.consumer.restored)
        # A Redis without persistence killed and restarted: empty again.
        volatile.kill()
        volatile.start()
        await _produce(app, conversations, slice(30, 38))
        await _drained(runner, timeout=90)
        await until_verified(app)
        assert runner.failure is None
        assert len(runner.consumer.restored) > wiped
    # Wiped while no consumer runs: the next owner finds the partitions' epochs gone.
    await app.redis.flushall()
    await _produce(app, conversations, slice(38, 45))
    async with Runner(app, ("apply",)) as runner:
        await _drained(runner)
        await until_verified(app)
        assert runner.failure is None
        assert runner.consumer is not None and runner.consumer.restored
    for conv in conversations:
        assert (await app.store.read(conv.memory_key, start=0, stop=0)).exists


async def test_a_wiped_redis_cluster_is_detected_by_the_running_consumer_and_restored(
    pipeline_settings: Settings, names: str
) -> None:
    # The stack's Redis Cluster, wiped on every master (FLUSHALL is sent to each). There
    # write.lua cannot see the partition's epoch counter: each batch asks for it.
    conversations = workload(seed=52, prefix=names, keys=16, events=30)
    async with (
        build_app(cluster_settings(pipeline_settings)) as app,
        Runner(app, ("apply",)) as runner,
    ):
        await _wiped_mid_stream(app, runner, conversations, slice(0, 15), slice(15, 30))
        assert runner.failure is None
        assert runner.consumer is not None and runner.consumer.restored


async def test_a_wiped_redis_is_restored_from_snapshots_and_the_tail_of_the_log(
    pipeline_settings: Settings, volatile: RedisProcess, names: str
) -> None:
    # Checkpoints every 30 events or second: most of the log is behind a watermark when Redis
    # is wiped, so each restore reads only the tail after it.
    settings = pipeline_settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{volatile.port}/0",
            "snapshot_every_events": 30,
            "snapshot_every_s": 1.0,
        }
    )
    conversations = workload(seed=53, prefix=names, keys=20, events=40)
    async with build_app(settings) as app, Runner(app, ("apply",)) as runner:
        await _produce(app, conversations, slice(0, 30))
        await until_verified(app)
        consumer = runner.consumer
        assert consumer is not None
        deadline = time.monotonic() + 30
        while consumer.snapshots.checkpoints < settings.topic_partitions:
            assert time.monotonic() < deadline, consumer.snapshots.checkpoints
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # the last events' checkpoints, by time
        await app.redis.flushall()
        await _produce(app, conversations, slice(30, 40))
        await _drained(runner)
        await until_verified(app)
        assert runner.failure is None
        reports = [r for _, r in consumer.restored]
        assert reports and all(r.memories > 0 for r in reports)
        # The snapshots stood for the log before the watermarks.
        assert sum(r.snapshots for r in reports) > 0
        assert sum(r.skipped for r in reports) > 0
    # The whole log agrees with what the restore built from snapshots and tails.
    async with build_app(settings) as app:
        report = await verify(app.settings, app.catalog, app.codec, app.store, snapshots=False)
        assert report.ok, report.mismatches[:3]
        assert report.memories == len(conversations)
