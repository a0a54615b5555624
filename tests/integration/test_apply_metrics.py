"""The apply consumer's dashboard metrics against real Kafka and Redis: lag as the age of the
oldest unapplied event, memories created by resource, and waits for a lock another owner
held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from consumers.bootstrap import App, build_app
from consumers.settings import Settings
from consumers.telemetry import Telemetry
from memory_core import LockNotAcquiredError
from memory_core.redis import RedisLockManager
from tests.integration.test_ordering import apply_consumer, drain, produce_concurrently, workload


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """Every data point of the instrument ``name`` in one collection."""
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
async def metered_app(
    pipeline_settings: Settings, reader: InMemoryMetricReader
) -> AsyncIterator[App]:
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    async with build_app(pipeline_settings, telemetry) as app:
        yield app


async def test_lag_age_is_the_age_of_the_oldest_unapplied_event_and_zero_once_applied(
    metered_app: App, reader: InMemoryMetricReader, names: str
) -> None:
    conversations = workload(seed=31, prefix=names, keys=24, events=10)
    await produce_concurrently(metered_app, conversations)
    total = sum(len(c.records) for c in conversations)
    await asyncio.sleep(1.5)  # the backlog ages
    consumer = apply_consumer(metered_app, max_records=10)
    await consumer.start()
    try:
        report = await consumer.step(timeout_ms=2000)
        assert 0 < report.records < total
        ages = consumer.lag_age()
        lag = consumer.lag()
        behind = [age for part, age in ages.items() if lag[part]]
        assert behind, (ages, lag)
        # Every partition still behind whose next events were fetched has events produced
        # at least 1.5 s ago unapplied; one of which nothing was fetched yet has no age.
        assert min(behind) >= 1.4, ages
        assert all(ages[part] == 0.0 for part, n in lag.items() if not n and part in ages)
        gauge = points(reader, "memstream.consumer.lag.age")
        assert max(p.value for p in gauge) >= 1.4
        assert {p.attributes["group"] for p in gauge} == {consumer.group()}

        await drain(consumer, total)
        assert all(lag == 0 for lag in consumer.lag().values()), consumer.lag()
        assert set(consumer.lag_age().values()) == {0.0}
    finally:
        await consumer.stop()
    # One memory created per conversation, counted once (by the resource), whatever the
    # number of batches that wrote it.
    created = points(reader, "memstream.memories.created")
    assert {p.attributes["memory_id"]: p.value for p in created} == {"chat": len(conversations)}


async def test_a_memory_whose_lock_another_owner_holds_waits_and_the_wait_is_recorded(
    metered_app: App, reader: InMemoryMetricReader, names: str
) -> None:
    conversations = workload(seed=32, prefix=names, keys=3, events=6)
    held = conversations[0].memory_key
    locks = RedisLockManager(metered_app.redis, prefix=metered_app.settings.key_prefix)
    lease = await locks.acquire(held, ttl=timedelta(seconds=30), timeout=timedelta(seconds=1))

    async def release_later() -> None:
        await asyncio.sleep(0.6)
        assert await locks.release(lease)

    await produce_concurrently(metered_app, conversations)
    consumer = apply_consumer(metered_app)
    await consumer.start()
    releasing = asyncio.create_task(release_later())
    started = time.monotonic()
    try:
        await drain(consumer, sum(len(c.records) for c in conversations))
    finally:
        await releasing
        await consumer.stop()
    assert time.monotonic() - started >= 0.5
    waits = [p for p in points(reader, "memstream.lock.wait") if p.count]
    acquired = [p for p in waits if p.attributes["outcome"] == "acquired"]
    assert acquired and acquired[0].count == 1, waits
    # It waited from its first refusal until the holder let go (and at most the retry backoff).
    assert 0.3 <= acquired[0].sum <= 3.0, acquired[0].sum
    contention = {
        p.attributes["outcome"]: p.value for p in points(reader, "memstream.lock.contention")
    }
    assert contention == {"acquired": 1, "refused": 0}


async def test_the_lock_manager_reports_each_contended_acquire(metered_app: App) -> None:
    waits: list[tuple[float, bool]] = []
    locks = RedisLockManager(
        metered_app.redis,
        prefix=metered_app.settings.key_prefix,
        on_wait=lambda s, ok: waits.append((s, ok)),
    )
    first = await locks.acquire("agent:t:user:lockwait", ttl=timedelta(seconds=5),
                                timeout=timedelta(seconds=1))  # fmt: skip
    assert waits == []  # not contended
    with pytest.raises(LockNotAcquiredError):
        await locks.acquire("agent:t:user:lockwait", ttl=timedelta(seconds=5),
                            timeout=timedelta(milliseconds=100))  # fmt: skip
    assert len(waits) == 1 and waits[0][1] is False and waits[0][0] >= 0.1

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        await locks.release(first)

    releasing = asyncio.create_task(release_later())
    second = await locks.acquire("agent:t:user:lockwait", ttl=timedelta(seconds=5),
                                 timeout=timedelta(seconds=5))  # fmt: skip
    await releasing
    await locks.release(second)
    assert len(waits) == 2 and waits[1][1] is True and waits[1][0] >= 0.25
