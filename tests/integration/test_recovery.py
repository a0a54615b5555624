"""Streaming verify and replay against the real stack: a memory whose TTL ran out since its
last event is not brought back, a live one gets what remains of its TTL, --key/--partition
narrow the read, --dry-run writes nothing, progress is reported."""

from __future__ import annotations

import random
import time
import uuid

from aiokafka import AIOKafkaProducer

from consumers.bootstrap import App
from consumers.events import appended_payload, envelope
from consumers.generations import active_generation
from consumers.recovery import Progress, memory_at, read_log, replay, verify
from memory_core import Draft, Role
from memory_core.redis import KeyBatch
from schemas import MEMORY_EVENT
from tests.integration.test_ordering import produce_concurrently, workload
from tests.reference_model import ReferenceMemory

DAY_MS = 24 * 3600 * 1000


async def _send(app: App, key: str, count: int, timestamp_ms: int | None) -> None:
    """``count`` appends to ``key``, with the Kafka timestamp given (None: now)."""
    gen = await active_generation(app.settings)
    producer = AIOKafkaProducer(bootstrap_servers=app.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(count):
            draft = Draft(f"m{i}", Role.USER, f"turn {i} of {key}", int(time.time() * 1000))
            record = envelope(key, "chat", draft.created_at_ms, appended_payload(draft))
            value = app.codec.encode(MEMORY_EVENT, record)
            await producer.send_and_wait(
                gen.topic,
                value,
                key=key.encode(),
                partition=gen.home(key.encode()),
                timestamp_ms=timestamp_ms,
            )
    finally:
        await producer.stop()


async def test_replay_skips_expired_memories_and_gives_live_ones_their_remaining_ttl(
    app: App, names: str
) -> None:
    now = int(time.time() * 1000)
    expired, aging, fresh = (f"agent:{names}:user:{u}" for u in ("old", "aging", "new"))
    await _send(app, expired, 3, now - 8 * DAY_MS)  # TTL 7 days: ran out a day ago
    await _send(app, aging, 2, now - 7 * DAY_MS + 3_600_000)  # an hour of TTL left
    await _send(app, fresh, 4, None)

    dry = await replay(app.settings, app.catalog, app.codec, app.store, dry_run=True)
    assert (dry.memories, dry.events, dry.expired) == (2, 6, 1)
    assert not (await app.store.read(fresh, start=0, stop=0)).exists  # nothing written

    seen: list[Progress] = []
    done = await replay(app.settings, app.catalog, app.codec, app.store, progress=seen.append)
    assert (done.memories, done.events, done.expired) == (2, 6, 1)
    assert not (await app.store.read(expired, start=0, stop=0)).exists
    assert (await app.store.read(fresh)).total_messages == 4
    ttl = (await app.store.read(aging, start=0, stop=0)).key_ttl_ms
    assert ttl is not None and 3_000_000 < ttl <= 3_600_000
    ttl = (await app.store.read(fresh, start=0, stop=0)).key_ttl_ms
    assert ttl is not None and ttl > 6 * DAY_MS
    final = seen[-1]
    # Both passes read: the 9 records, then again the partitions holding live memories.
    gen = await active_generation(app.settings)
    counts = {expired: 3, aging: 2, fresh: 4}
    live = {gen.home(k.encode()) for k in (aging, fresh)}
    again = sum(n for k, n in counts.items() if gen.home(k.encode()) in live)
    assert final.records == final.total_records == 9 + again
    assert final.partitions_done == final.partitions == app.settings.topic_partitions
    assert f"{9 + again}/{9 + again} records (100%)" in final.line() and final.memories == 3

    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.ok, report.mismatches
    assert (report.memories, report.expired) == (3, 1)


async def test_key_and_partition_options_read_and_write_only_what_they_name(
    app: App, names: str
) -> None:
    keys = [f"agent:{names}:user:u{i}" for i in range(6)]
    for key in keys:
        await _send(app, key, 2, None)
    gen = await active_generation(app.settings)
    one = await replay(app.settings, app.catalog, app.codec, app.store, keys=[keys[0]])
    assert (one.memories, one.events) == (1, 2)
    assert [k for k in keys if (await app.store.read(k, start=0, stop=0)).exists] == [keys[0]]
    home = gen.home(keys[1].encode())
    same = [k for k in keys if gen.home(k.encode()) == home]
    part = await replay(app.settings, app.catalog, app.codec, app.store, partitions=[home])
    assert part.memories == len(same)
    stored = {k for k in keys if (await app.store.read(k, start=0, stop=0)).exists}
    assert stored == {keys[0], *same}
    checked = await verify(app.settings, app.catalog, app.codec, app.store, [keys[1]])
    assert checked.ok and checked.memories == 1
    # A key asked for that the log does not hold, and Redis does not either, is fine; an
    # unknown partition is an error naming the range.
    absent = await verify(
        app.settings, app.catalog, app.codec, app.store, [f"agent:{uuid.uuid4().hex[:8]}:user:x"]
    )
    assert absent.ok
    try:
        await verify(app.settings, app.catalog, app.codec, app.store, partitions=[99])
    except Exception as exc:
        assert "partitions 0-" in str(exc)
    else:
        raise AssertionError("partition 99 was accepted")


async def test_a_memory_at_any_point_equals_the_model_of_its_events_up_to_there(
    app: App, names: str
) -> None:
    conversations = workload(seed=41, prefix=names, keys=3, events=40)
    await produce_concurrently(app, conversations)
    log = await read_log(app.settings, app.catalog, app.codec)
    entry = app.catalog.get("chat")
    assert entry is not None
    rng = random.Random(5)
    for conv in conversations:
        events = log.events[conv.memory_key]
        for cut in sorted(rng.sample(range(len(events)), 4)):
            point = await memory_at(
                app.settings, app.catalog, app.codec, conv.memory_key, offset=events[cut].offset
            )
            reference = ReferenceMemory(entry.config.budget, entry.config.flushing.threshold)
            reference.apply_all(events[: cut + 1])
            assert point.events == cut + 1
            assert [m.id for m in point.state.messages] == [m.id for m in reference.messages]
            assert point.state.last_offset == events[cut].offset
    # By time: before the first event, nothing; now, everything.
    key = conversations[0].memory_key
    before = await memory_at(app.settings, app.catalog, app.codec, key, at_ms=1)
    assert before.events == 0 and before.state.messages == ()
    now = await memory_at(
        app.settings, app.catalog, app.codec, key, at_ms=int(time.time() * 1000) + 60_000
    )
    assert now.events == len(log.events[key])


async def test_replay_over_a_partly_written_redis_converges_to_the_log(
    app: App, names: str
) -> None:
    diverged, behind, intact = (f"agent:{names}:user:{u}" for u in ("div", "behind", "ok"))
    for key in (diverged, behind, intact):
        await _send(app, key, 6, None)
    assert (await replay(app.settings, app.catalog, app.codec, app.store, keys=[intact])).memories
    # As a consumer that went on writing onto a wiped Redis leaves it: only the newest events
    # of one memory (its offsets past every older one), and the oldest of another.
    log = await read_log(app.settings, app.catalog, app.codec)
    gen = await active_generation(app.settings)
    for key, events in ((diverged, log.events[diverged][-2:]), (behind, log.events[behind][:3])):
        home = f"{gen.topic}:{gen.home(key.encode())}"
        [done] = await app.store.apply([KeyBatch(key, log.policies[key], events, home=home)], "t")
        assert done.result is not None
    assert not (await verify(app.settings, app.catalog, app.codec, app.store)).ok
    dry = await replay(app.settings, app.catalog, app.codec, app.store, dry_run=True)
    assert (dry.unchanged, dry.rewritten) == (1, 2)
    assert not (await verify(app.settings, app.catalog, app.codec, app.store)).ok
    done = await replay(app.settings, app.catalog, app.codec, app.store)
    assert (done.memories, done.unchanged, done.rewritten) == (3, 1, 2)
    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.ok, report.mismatches
