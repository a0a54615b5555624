"""A SIGKILL campaign: an apply consumer process killed at dozens of random points (before it
joins, mid-batch, between batches) ends exactly where a consumer that never stopped ends.

The campaign is seeded: the seed is printed (shown when the test fails) and
``MEMSTREAM_TEST_KILL_SEED=<seed>`` replays the same log and the same kill plan (the kill points
are times, so a replay lands near, not exactly on, the same instructions).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import LeaveGroupRequest

from consumers.bootstrap import App, build_app
from consumers.recovery import read_log, verify
from consumers.settings import Settings
from memory_core.redis import RedisMemoryStore
from tests.fault.test_consumer_kill import ConsumerProcess
from tests.integration.test_interop import home
from tests.integration.test_ordering import (
    Conversation,
    apply_consumer,
    drain,
    read_topic,
    stored_state,
    workload,
)
from tests.services import MEMORIES

KILLS = 54
KEYS = 40
EVENTS = 40  # per memory: 1,600 events in all
# Small batches: a process under a backlog spends its time inside batches, so a kill at a
# random moment usually lands between a batch's fetch and its commit.
MAX_RECORDS = 6
# The killed process holds its memories' locks; a short lease lets the next process take them
# after a second instead of ten (the lease length is not what this test is about).
CAMPAIGN_MEMORIES = MEMORIES.replace(
    "locking: {ttl: 5s, acquire_timeout: 5s}", "locking: {ttl: 1s, acquire_timeout: 4s}"
)
assert CAMPAIGN_MEMORIES != MEMORIES, "tests.services.MEMORIES changed its locking line"

BEFORE_JOIN, MID_BATCH, BETWEEN_BATCHES = "before_join", "mid_batch", "between_batches"
PLAN = (BEFORE_JOIN, MID_BATCH, MID_BATCH, BETWEEN_BATCHES)


def _seed() -> int:
    chosen = os.environ.get("MEMSTREAM_TEST_KILL_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


@pytest.fixture
async def app(test_settings: Settings, tmp_path: Path) -> AsyncIterator[App]:
    """This test's adapters: the small ``chat`` memory with short lock leases, small batches."""
    path = tmp_path / "memories.yaml"
    path.write_text(CAMPAIGN_MEMORIES)
    settings = test_settings.model_copy(
        update={"memories_file": path, "apply_max_records": MAX_RECORDS}
    )
    async with build_app(settings) as built:
        yield built


@pytest.fixture
async def admin(app: App) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client of the stack's Kafka."""
    client = AIOKafkaAdminClient(bootstrap_servers=app.settings.kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


@pytest.fixture
async def consumer_process(app: App, tmp_path: Path) -> AsyncIterator[ConsumerProcess]:
    """The consumer process handle; whatever is still running at the end is killed and reaped."""
    process = ConsumerProcess(app.settings, tmp_path / "consumer.log")
    yield process
    if process.proc is not None:
        await process.stop(signal.SIGKILL)


class ApplyGroup:
    """The apply consumer group as its coordinator sees it."""

    def __init__(self, admin: AIOKafkaAdminClient, group: str) -> None:
        self.admin = admin
        self.group = group

    async def committed(self) -> dict[int, int]:
        """The committed next offset of every partition the group has committed."""
        offsets = await self.admin.list_consumer_group_offsets(self.group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def forget_dead_members(self) -> int:
        """Tell the coordinator that every member has left; returns how many there were.

        Called only once the member's process is reaped. A SIGKILLed member never leaves: the
        coordinator would wait for its session to expire (10 s) before the next process could
        join, which for fifty kills is most of ten minutes. Removing it is what that expiry
        does, sooner. (A process killed between its two JoinGroup calls leaves a pending member
        that no DescribeGroups shows: the next join then waits out the session.)
        """
        described = await self.admin.describe_consumer_groups([self.group])
        members = [m[0] for g in described[0].groups for m in g[5]]
        if members:
            coordinator = await self.admin.find_coordinator(self.group)
            for member in members:
                await self.admin._send_request_to_node(
                    coordinator, LeaveGroupRequest(self.group, member)
                )
        return len(members)


@dataclass
class Log:
    """What the test has produced so far, and where it landed."""

    conversations: Sequence[Conversation]
    produced: dict[str, list[int]] = field(default_factory=dict)  # offsets per memory key
    next_record: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(c.records) for c in self.conversations)

    @property
    def count(self) -> int:
        return sum(len(o) for o in self.produced.values())


async def _produce_wave(app: App, log: Log, rng: random.Random, per_memory: float) -> int:
    """The next 0..2 records of each memory (``per_memory`` on average); returns how many."""

    async def one(conv: Conversation, n: int) -> int:
        at = log.next_record.get(conv.memory_key, 0)
        chunk = conv.records[at : at + n]
        if chunk:
            offsets = await app.producer.send_records(conv.memory_key, chunk)
            log.produced.setdefault(conv.memory_key, []).extend(offsets)
            log.next_record[conv.memory_key] = at + len(chunk)
        return len(chunk)

    counts = [
        min(2, int(rng.random() < per_memory / 2) + int(rng.random() < per_memory / 2))
        for _ in log.conversations
    ]
    return sum(
        await asyncio.gather(*(one(c, n) for c, n in zip(log.conversations, counts, strict=True)))
    )


async def _produce_the_rest(app: App, log: Log) -> None:
    async def one(conv: Conversation) -> None:
        at = log.next_record.get(conv.memory_key, 0)
        if at < len(conv.records):
            offsets = await app.producer.send_records(conv.memory_key, conv.records[at:])
            log.produced.setdefault(conv.memory_key, []).extend(offsets)
            log.next_record[conv.memory_key] = len(conv.records)

    await asyncio.gather(*(one(c) for c in log.conversations))


async def _last_offsets(app: App, keys: Sequence[str]) -> dict[str, int]:
    """Each memory's last applied offset in Redis (-1: none), in one round trip."""
    pipe = app.redis.pipeline(transaction=False)
    for key in keys:
        pipe.hget(app.store.keys(key).meta, "last_offset")
    raw = await pipe.execute()
    return {k: -1 if v is None else int(v) for k, v in zip(keys, raw, strict=True)}


async def _applied(app: App, log: Log) -> int:
    """How many produced events the memories in Redis have applied."""
    last = await _last_offsets(app, list(log.produced))
    return sum(sum(1 for o in offs if o <= last[k]) for k, offs in log.produced.items())


@dataclass
class Kill:
    """One kill point: what was intended and what the process had done by then."""

    intended: str
    lived_s: float
    applied_before: int
    applied_after: int
    written_not_committed: bool  # Redis held records of a partition beyond its commit


async def test_fifty_sigkills_at_random_points_end_as_one_unbroken_run(
    app: App, admin: AIOKafkaAdminClient, consumer_process: ConsumerProcess
) -> None:
    seed = _seed()
    print(f"kill campaign seed={seed} (replay: MEMSTREAM_TEST_KILL_SEED={seed})")
    rng = random.Random(seed)
    started = time.monotonic()
    conversations = workload(seed=seed, prefix=app.settings.key_prefix, keys=KEYS, events=EVENTS)
    log = Log(conversations)
    group = ApplyGroup(admin, app.settings.consumer_group)
    partitions = app.settings.topic_partitions
    kills: list[Kill] = []
    startups: list[float] = []  # seconds from spawn to the first applied event
    context = f"seed={seed}"

    async def wait_for(
        condition: str, check: Callable[[], Awaitable[bool]], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            assert consumer_process.alive(), (
                f"{context}: the consumer exited:\n{consumer_process.output()}"
            )
            if time.monotonic() >= deadline:
                applied, committed = await _applied(app, log), await group.committed()
                pytest.fail(
                    f"{context}: {condition} not reached in {timeout}s after {len(kills)} kills "
                    f"({applied} of {log.count} produced events applied, "
                    f"{sum(committed.values())} offsets committed):\n{consumer_process.output()}"
                )
            await asyncio.sleep(0.01)

    for n in range(KILLS):
        intended = rng.choice(PLAN)
        # About KILLS waves spread the log over the campaign; the last process gets the rest.
        await _produce_wave(app, log, rng, per_memory=len(conversations[0].records) / KILLS)
        applied_before = await _applied(app, log)
        spawned = time.monotonic()
        await consumer_process.start()
        if intended == BEFORE_JOIN:
            # Well within the start-up time (imports, encodings, topics, join) seen so far.
            await asyncio.sleep(rng.uniform(0.0, 0.7 * min(startups, default=1.0)))
        elif intended == MID_BATCH:

            async def progressed(before: int = applied_before) -> bool:
                return await _applied(app, log) > before

            await wait_for("progress", progressed, 60)
            startups.append(time.monotonic() - spawned)
            await asyncio.sleep(rng.uniform(0.0, 0.05))
        else:

            async def caught_up() -> bool:
                if await _applied(app, log) < log.count:
                    return False
                return sum((await group.committed()).values()) == log.count

            await wait_for("catching up", caught_up, 60)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        assert await consumer_process.stop(signal.SIGKILL) == -signal.SIGKILL, context
        lived = time.monotonic() - spawned
        await group.forget_dead_members()

        # Where the process stopped: a memory that holds an offset its partition's commit
        # does not cover was written and then killed before the commit.
        committed = await group.committed()
        last = await _last_offsets(app, list(log.produced))
        applied_after = await _applied(app, log)
        ahead = applied_after > applied_before and any(
            last[k] >= committed.get(home(k, partitions), 0) for k in log.produced if last[k] >= 0
        )
        kills.append(Kill(intended, lived, applied_before, applied_after, ahead))
        print(f"kill {n}: {kills[-1]}")

    await _produce_the_rest(app, log)
    assert log.count == log.total
    await consumer_process.start()

    async def all_applied() -> bool:
        return await _applied(app, log) == log.total

    async def all_committed() -> bool:
        return sum((await group.committed()).values()) == log.total

    await wait_for("every event applied", all_applied, 90)
    await wait_for("every offset committed", all_committed, 30)
    assert await consumer_process.stop(signal.SIGTERM) == 0, consumer_process.output()
    campaign_s = time.monotonic() - started

    summary = Counter(k.intended for k in kills)
    observed = Counter(
        "no progress" if k.applied_after == k.applied_before else "applied some" for k in kills
    )
    context = (
        f"seed={seed}: {len(kills)} kills in {campaign_s:.0f}s, intended {dict(summary)}, "
        f"observed {dict(observed)}, written-not-committed "
        f"{sum(k.written_not_committed for k in kills)}"
    )
    print(context)
    # The campaign did what it says: enough kills of each kind, some of them after a batch
    # was written to Redis and before its offsets were committed (the window where a
    # redelivery must be deduplicated), some before the process had applied anything.
    assert len(kills) >= 50, context
    assert min(summary[m] for m in (BEFORE_JOIN, MID_BATCH, BETWEEN_BATCHES)) >= 5, context
    assert observed["no progress"] >= 5, context
    assert any(k.written_not_committed for k in kills if k.intended == MID_BATCH), context

    # The same log applied once by a consumer that never stopped, into its own key prefix,
    # ends in the same states...
    unbroken = app.settings.model_copy(
        update={
            "consumer_group": app.settings.consumer_group + ".unbroken",
            "key_prefix": app.settings.key_prefix + "u",
        }
    )
    store = RedisMemoryStore(app.redis, prefix=unbroken.key_prefix)
    async with apply_consumer(app, settings=unbroken, store=store) as consumer:
        await drain(consumer, log.total)
        assert consumer.totals.dead_lettered == 0
    for conv in conversations:
        killed = await app.store.read(conv.memory_key)
        reference = await store.read(conv.memory_key)
        assert stored_state(killed) == stored_state(reference), f"{context}: {conv.memory_key}"
        assert killed.state() == reference.state(), f"{context}: {conv.memory_key}"
        assert await app.store.recent_event_ids(conv.memory_key) == await store.recent_event_ids(
            conv.memory_key
        ), f"{context}: {conv.memory_key}"

    # ...and every memory equals the pure model over the log: nothing lost, nothing applied
    # twice...
    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.mismatches == [], context
    assert (report.memories, report.events) == (len(conversations), log.total), context
    contents = await read_log(app.settings, app.catalog, app.codec)
    for conv in conversations:
        assert [e.event.event_id for e in contents.events[conv.memory_key]] == conv.event_ids
        ids = await app.store.recent_event_ids(conv.memory_key)
        assert len(ids) == len(set(ids)), f"{context}: an event id applied twice"
    # ...and no valid event was dead-lettered by a retried batch.
    dead = await read_topic(app.settings.kafka_bootstrap, app.settings.dlq_topic)
    assert dead == [], f"{context}: {len(dead)} dead letters from a valid log"
