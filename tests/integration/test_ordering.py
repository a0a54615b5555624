"""A randomized multi-key workload through the real apply consumer keeps per-key order.

The workload, producer and consumer helpers here are shared by the redelivery, dead-letter,
flush and consumer-kill tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from consumers.apply import ApplyConsumer
from consumers.bootstrap import App
from consumers.events import CLEARED, FLUSH_REQUESTED, appended_payload, envelope
from consumers.recovery import read_log, verify
from consumers.settings import Settings
from memory_core import Draft, Role, Snapshot, StoreUnavailableError, ToolCall
from memory_core.redis import RedisMemoryStore
from tests.reference_model import ReferenceMemory

WORDS = ("sun", "river", "stone", "cloud", "quick", "brown", "fox", "jumps", "lazy", "dog", "tea")
BASE_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Conversation:
    """The records produced to one memory, in production order."""

    memory_key: str
    records: tuple[dict[str, Any], ...]

    @property
    def event_ids(self) -> list[str]:
        """Event ids in production order."""
        return [r["event_id"] for r in self.records]


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def conversation(
    rng: random.Random, memory_key: str, events: int, *, memory_id: str = "chat"
) -> Conversation:
    """``events`` seeded events of one memory: users, assistants, system prompts, tool call
    groups (an assistant call and its results back to back), a few flush requests and
    sometimes a clear."""
    records: list[dict[str, Any]] = []
    clear_at = rng.randrange(events) if rng.random() < 0.3 else -1

    def add(payload: tuple[str, dict[str, Any]]) -> None:
        n = len(records)
        event_id = f"ev{n}-{rng.getrandbits(48):012x}"
        records.append(envelope(memory_key, memory_id, BASE_MS + n, payload, event_id=event_id))

    def draft(role: Role, content: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        n = len(records)
        return appended_payload(Draft(f"m{n}", role, content, BASE_MS + n, **extra))

    while len(records) < events:
        if len(records) == clear_at:
            add((CLEARED, {"reason": "test"}))
            continue
        roll = rng.random()
        room = events - len(records)
        if roll < 0.03:
            add((FLUSH_REQUESTED, {"reason": "test"}))
        elif roll < 0.1:
            add(draft(Role.SYSTEM, _text(rng, 2, 8)))
        elif roll < 0.28 and room >= 2:
            calls = [
                ToolCall(f"call{len(records)}-{i}", rng.choice(WORDS), f'{{"q": "{i}"}}')
                for i in range(rng.randint(1, min(2, room - 1)))
            ]
            add(draft(Role.ASSISTANT, _text(rng, 0, 6), tool_calls=tuple(calls)))
            for call in calls:
                add(draft(Role.TOOL, _text(rng, 3, 20), tool_call_id=call.id))
        elif roll < 0.64:
            name = rng.choice([None, None, "ann", "bob"])
            add(draft(Role.USER, _text(rng, 3, 30), name=name))
        else:
            add(draft(Role.ASSISTANT, _text(rng, 3, 30)))
    return Conversation(memory_key, tuple(records))


def workload(seed: int, prefix: str, keys: int, events: int) -> list[Conversation]:
    """A seeded workload of ``keys`` memories with ``events`` events each."""
    rng = random.Random(seed)
    return [conversation(rng, f"agent:{prefix}:user:u{k}", events) for k in range(keys)]


async def produce_concurrently(
    app: App, conversations: Sequence[Conversation], seed: int = 0
) -> None:
    """Publish every conversation at once, each in order in small random chunks."""
    rng = random.Random(seed)

    async def one(conv: Conversation, chunks: list[int]) -> None:
        at = 0
        for size in chunks:
            await app.producer.send_records(conv.memory_key, conv.records[at : at + size])
            at += size
            await asyncio.sleep(0)

    plans = []
    for conv in conversations:
        chunks: list[int] = []
        while sum(chunks) < len(conv.records):
            chunks.append(min(rng.randint(1, 5), len(conv.records) - sum(chunks)))
        plans.append(one(conv, chunks))
    await asyncio.gather(*plans)


def apply_consumer(
    app: App,
    *,
    settings: Settings | None = None,
    store: RedisMemoryStore | None = None,
    max_records: int = 2000,
) -> ApplyConsumer:
    """An apply consumer on ``app``'s adapters (or the given settings and store)."""
    return ApplyConsumer(
        settings=settings or app.settings,
        catalog=app.catalog,
        store=store or app.store,
        codec=app.codec,
        telemetry=app.telemetry,
        max_records=max_records,
    )


async def drain(consumer: ApplyConsumer, records: int, timeout: float = 60.0) -> None:
    """Step ``consumer`` until it has processed ``records`` records in total."""
    deadline = time.monotonic() + timeout
    while consumer.totals.records < records:
        assert time.monotonic() < deadline, (
            f"consumer processed {consumer.totals.records} of {records} records in {timeout}s"
        )
        await consumer.step(timeout_ms=100)
    # Its dead letters, flush commands and commits are sent in the background: wait for them.
    assert await consumer.settle()


async def until_verified(app: App, timeout: float = 90.0) -> None:
    """Wait until ``verify`` finds every memory of the log equal to its replay."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            report = await verify(app.settings, app.catalog, app.codec, app.store)
        except StoreUnavailableError as exc:  # a Redis the test restarts is not up yet
            assert time.monotonic() < deadline, exc
            await asyncio.sleep(0.5)
            continue
        if report.ok and report.memories:
            return
        assert time.monotonic() < deadline, report.mismatches[:3]
        await asyncio.sleep(0.5)


def stored_state(snap: Snapshot) -> dict[str, Any]:
    """What a memory holds, without lock, TTL and write-version bookkeeping."""
    return {
        "messages": snap.messages,
        "tokens": snap.tokens,
        "last_offset": snap.last_offset,
        "flush_seq": snap.flush_seq,
        "flush_pending": snap.flush_pending,
        "flush_offset": snap.flush_offset,
        "tokens_saved_total": snap.tokens_saved_total,
    }


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its current end (no consumer group)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        # Without a group, the consumer takes every partition once metadata arrives.
        deadline = time.monotonic() + 10
        while not consumer.assignment():
            assert time.monotonic() < deadline, f"no partitions of {topic}"
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            assert time.monotonic() < deadline + 20, f"{topic} not read to its end"
            fetched = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in fetched.items():
                out.extend(records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def test_concurrent_keys_keep_per_key_order_and_equal_the_model(app: App) -> None:
    conversations = workload(seed=20240611, prefix=app.settings.key_prefix, keys=40, events=25)
    total = sum(len(c.records) for c in conversations)
    async with apply_consumer(app, max_records=64) as consumer:
        producing = asyncio.create_task(produce_concurrently(app, conversations, seed=7))
        await drain(consumer, total)
        await producing
        assert consumer.totals.dead_lettered == 0
        assert consumer.totals.duplicates == 0
        assert consumer.totals.evicted > 0

    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.mismatches == []
    assert report.ok
    assert report.memories == len(conversations)
    assert report.events == total

    # Kafka kept each key's production order.
    log = await read_log(app.settings, app.catalog, app.codec)
    for conv in conversations:
        assert [e.event.event_id for e in log.events[conv.memory_key]] == conv.event_ids

    # Independently of the engine: the reference model written from docs/semantics.md names
    # what eviction removed, and Redis holds the produced order minus exactly that.
    entry = app.catalog.get("chat")
    assert entry is not None
    checked = [c for c in conversations if any(r["payload"][0] == CLEARED for r in c.records)][:3]
    checked += [c for c in conversations if c not in checked][:3]
    for conv in checked:
        reference = ReferenceMemory(entry.config.budget, entry.config.flushing.threshold)
        results = reference.apply_all(log.events[conv.memory_key])
        assert all(r.outcome == "applied" for r in results)
        evicted = {i for r in results for i in r.evicted}
        produced: list[str] = []
        for record in conv.records:
            name, body = record["payload"]
            if name == CLEARED:
                produced = []
            elif name != FLUSH_REQUESTED:
                produced.append(body["id"])
        expected = [i for i in produced if i not in evicted]
        snap = await app.store.read(conv.memory_key)
        stored = [m.id for m in snap.messages]
        assert stored == expected
        assert stored == [m.id for m in reference.messages]
        assert snap.tokens == reference.state().tokens_by_category()
        assert snap.flush_seq == reference.flush_seq


async def test_verify_reports_a_memory_whose_flush_state_differs_from_the_log(app: App) -> None:
    [conv] = workload(seed=4, prefix=app.settings.key_prefix, keys=1, events=25)
    await app.producer.send_records(conv.memory_key, conv.records)
    async with apply_consumer(app) as consumer:
        await drain(consumer, len(conv.records))
    snap = await app.store.read(conv.memory_key)
    assert snap.flush_pending
    assert (await verify(app.settings, app.catalog, app.codec, app.store)).ok

    # A lost write of the pending flag: Redis now says no flush is pending, so the threshold
    # would request another one, while the log says the first is still running.
    await app.redis.hset(app.store.keys(conv.memory_key).meta, "flush_pending", "0")
    assert not (await app.store.read(conv.memory_key)).flush_pending
    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert [m.memory_key for m in report.mismatches] == [conv.memory_key]
