"""Growing partitions is a migration: 6 → 12 with writes before, during and after, none lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from consumers.apply import ApplyConsumer
from consumers.bootstrap import App, build_app
from consumers.generations import active_generation, consumer_group, read_generations
from consumers.recovery import verify
from consumers.repartition import RepartitionError, repartition, source_of
from consumers.settings import Settings
from consumers.topics import ensure_topics, topic_names
from memory_core import AsyncSafeMemoryInstance, Role
from tests.integration.test_ordering import read_topic


@pytest.fixture
async def six(pipeline_settings: Settings) -> AsyncIterator[App]:
    """An app whose events topic starts with 6 partitions."""
    base = pipeline_settings.events_topic
    settings = pipeline_settings.model_copy(
        update={
            "topic_partitions": 6,
            "events_topic": f"{base}6",
            "dlq_topic": f"{base}6.dlq",
            "flush_topic": f"{base}6.flush",
        }
    )
    await ensure_topics(settings, topic_names(settings))
    async with build_app(settings) as built:
        yield built


async def _run(consumer: ApplyConsumer, stop: asyncio.Event) -> None:
    await consumer.run(stop)


async def _stored(app: App, key: str) -> list[str]:
    return [m.id for m in (await app.store.read(key)).messages]


async def test_six_to_twelve_partitions_keeps_every_acknowledged_message(six: App) -> None:
    app = six
    settings = app.settings
    assert (await active_generation(settings)).partitions == 6
    keys = [f"agent:{settings.key_prefix}:user:u{i}" for i in range(20)]
    memories = [
        AsyncSafeMemoryInstance(
            k, app.catalog.config("chat"), store=app.store, publisher=app.producer
        )
        for k in keys
    ]
    acknowledged: dict[str, list[str]] = {k: [] for k in keys}
    consumer = ApplyConsumer(
        settings=settings,
        catalog=app.catalog,
        store=app.store,
        codec=app.codec,
        telemetry=app.telemetry,
        max_records=50,
    )
    stop = asyncio.Event()
    await consumer.start()
    running = asyncio.create_task(_run(consumer, stop))
    try:
        wait = timedelta(seconds=30)
        for round_ in range(2):
            for k, memory in zip(keys, memories, strict=True):
                mid = f"{k}-before{round_}"
                await memory.append(Role.USER, f"before {round_}", message_id=mid, wait=wait)
                acknowledged[k].append(mid)

        # Writes keep coming while the topic is sealed and copied: they wait for the new
        # generation and land there, in order.
        async def writer() -> None:
            for n in range(3):
                for k, memory in zip(keys[:5], memories[:5], strict=True):
                    mid = f"{k}-during{n}"
                    await memory.append(Role.USER, f"during {n}", message_id=mid, wait=None)
                    acknowledged[k].append(mid)
                await asyncio.sleep(0.05)

        during = asyncio.create_task(writer())
        report = await repartition(settings, app.store, 12, drain_timeout_s=60)
        await during
        assert report.new.partitions == 12 and report.new.number == 2
        assert report.rehomed == len(keys)
        assert (await active_generation(settings)).topic == report.new.topic

        for k, memory in zip(keys, memories, strict=True):
            mid = f"{k}-after"
            await memory.append(Role.USER, "after", message_id=mid, wait=wait)
            acknowledged[k].append(mid)
        deadline = time.monotonic() + 60
        while (stored := {k: await _stored(app, k) for k in keys}) != acknowledged:
            assert time.monotonic() < deadline, {
                k: (stored[k], acknowledged[k]) for k in keys if stored[k] != acknowledged[k]
            }
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await running
        await consumer.stop()

    gen = await active_generation(settings)
    for k in keys:
        snap = await app.store.read(k)
        assert snap.home == f"{gen.topic}:{gen.home(k.encode())}"
    # The new topic alone holds every memory: replaying it gives what Redis holds.
    report_v = await verify(settings, app.catalog, app.codec, app.store)
    assert report_v.ok, report_v.mismatches[:3]
    copied = [
        source
        for r in await read_topic(settings.kafka_bootstrap, gen.topic)
        if (source := source_of(list(r.headers))) is not None
    ]
    assert len(copied) >= 2 * len(keys)
    assert all(s.startswith(f"{report.old.topic}:") for s in copied)
    assert consumer.generation is not None and consumer.generation.number == 2


async def test_repartition_waits_for_the_consumers_and_says_so(six: App) -> None:
    app = six
    settings = app.settings
    key = f"agent:{settings.key_prefix}:user:solo"
    memory = AsyncSafeMemoryInstance(
        key, app.catalog.config("chat"), store=app.store, publisher=app.producer
    )
    await memory.append(Role.USER, "nobody applies me", wait=None)
    with pytest.raises(RepartitionError, match="run the apply consumers"):
        await repartition(settings, app.store, 12, drain_timeout_s=1)
    # The old topic takes writes again (it was unsealed).
    await memory.append(Role.USER, "still writable", wait=None)
    # Nothing switched: the old generation is still the active one.
    assert [g.number for g in await read_generations(settings)] == [1]
    assert consumer_group(settings, (await read_generations(settings))[0]) == (
        settings.consumer_group
    )


async def test_an_empty_topic_moves_at_once_without_any_consumer(six: App) -> None:
    # A group that never committed reads as offset -1 per partition: nothing is behind.
    report = await repartition(six.settings, six.store, 3, drain_timeout_s=2)
    assert (report.copied, report.new.partitions) == (0, 3)
    assert (await active_generation(six.settings)).number == 2
