"""Replay and verify: rebuild the expected state of every memory from the log, compare Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition

from consumers.catalog import MemoryCatalog
from consumers.connections import kafka_consumer
from consumers.events import to_domain
from consumers.generations import Generation, existing_generation
from consumers.settings import Settings
from consumers.topic_reader import read_to_end
from memory_core import LoggedEvent, MemoryPolicy, MemoryState, MemstreamError
from memory_core.redis import KeyBatch, RedisMemoryStore
from memory_core.values import replace
from schemas import MEMORY_EVENT, AvroCodec, DecodeError


@dataclass
class LogContents:
    """Every valid event of the topic, per memory key in log order, and the poison count."""

    events: dict[str, list[LoggedEvent]] = field(default_factory=lambda: defaultdict(list))
    policies: dict[str, MemoryPolicy] = field(default_factory=dict)
    homes: dict[str, str] = field(default_factory=dict)  # "<topic>:<partition>"
    invalid: int = 0
    misplaced: int = 0
    records: int = 0


@dataclass
class Mismatch:
    """One memory whose stored state differs from the replayed log."""

    memory_key: str
    detail: str


@dataclass
class VerifyReport:
    """The outcome of ``verify``; ``expired``: memories whose TTL ran out since their last
    event, not compared."""

    memories: int
    events: int
    mismatches: list[Mismatch]
    expired: int = 0

    @property
    def ok(self) -> bool:
        """Every memory equals its replay."""
        return not self.mismatches


async def read_log(settings: Settings, catalog: MemoryCatalog, codec: AvroCodec) -> LogContents:
    """Read the active generation of the events topic from its beginning to its current end
    (no consumer group), keeping what the apply consumer applies: records in their memory's
    home partition, valid. Holds every event: for tests and small logs (``verify`` and
    ``replay`` stream instead)."""
    out = LogContents()
    gen = await existing_generation(settings)
    async for records in read_to_end(settings, gen.topic):
        for rec in records:
            out.records += 1
            if rec.key is not None and gen.home(rec.key) != rec.partition:
                out.misplaced += 1
                continue
            try:
                decoded = to_domain(codec.decode(MEMORY_EVENT, rec.value), rec.key, catalog)
            except (DecodeError, MemstreamError):
                out.invalid += 1
                continue
            if decoded.event is not None:
                out.events[decoded.memory_key].append(
                    LoggedEvent(rec.offset, decoded.event, decoded.at_ms)
                )
                out.policies[decoded.memory_key] = decoded.entry.policy
                out.homes[decoded.memory_key] = f"{rec.topic}:{rec.partition}"
    return out


@dataclass(slots=True)
class _Memory:
    """What a fold of one memory's events holds: never the events themselves."""

    policy: MemoryPolicy
    home: str
    state: MemoryState = field(default_factory=MemoryState)
    events: int = 0
    last_ms: int = 0  # the Kafka timestamp of its last event

    def expired(self, now_ms: int) -> bool:
        """Whether its TTL ran out since its last event (docs/semantics.md, "Recovery")."""
        return self.last_ms + self.policy.ttl_ms <= now_ms


@dataclass(slots=True)
class _Group:
    """One memory's events in one fetched batch, and the Kafka timestamp of the last."""

    policy: MemoryPolicy
    events: list[LoggedEvent] = field(default_factory=list)
    last_ms: int = 0


@dataclass
class Progress:
    """How far a verify or replay is; ``line()`` for a progress view."""

    action: str
    partitions: int
    total_records: int = 0  # the partitions' end offsets, as each one starts
    records: int = 0
    events: int = 0
    memories: int = 0
    partitions_done: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        """Records read per second so far."""
        return self.records / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        """One line: records read of the total, partitions, memories, rate and ETA."""
        rate = self.rate
        left = max(self.total_records - self.records, 0)
        eta = f"{left / rate:,.0f} s" if rate > 0 and self.total_records else "?"
        share = f" ({self.records / self.total_records:.0%})" if self.total_records else ""
        return (
            f"{self.action}: {self.records:,}/{self.total_records:,} records{share}, "
            f"{self.partitions_done}/{self.partitions} partitions, {self.memories:,} memories, "
            f"{self.events:,} events, {rate:,.0f} records/s, ETA {eta}"
        )


ProgressFn = Callable[[Progress], None]


@dataclass
class ReplayReport:
    """What ``replay`` found (and wrote, unless ``dry_run``): ``memories`` live in the log,
    with ``events``; ``expired`` not brought back; ``unchanged`` already as the log has
    them; ``rewritten`` held otherwise by Redis (deleted, then written from the log)."""

    memories: int
    events: int
    expired: int
    dry_run: bool = False
    unchanged: int = 0
    rewritten: int = 0


class _Reader:
    """Streams the events topic partition by partition, decoded as the apply consumer
    decodes it, and reports progress at most once a second."""

    def __init__(
        self,
        settings: Settings,
        catalog: MemoryCatalog,
        codec: AvroCodec,
        gen: Generation,
        progress: Progress,
        report: ProgressFn | None,
    ) -> None:
        self.settings, self.catalog, self.codec, self.gen = settings, catalog, codec, gen
        self.progress = progress
        self._report = report
        self._reported = 0.0

    async def batches(
        self, partition: int, keys: set[str] | None, upto: int | None = None
    ) -> AsyncGenerator[dict[str, _Group], None]:
        """Each fetched batch of ``partition``: its valid events per memory, in log order
        (up to offset ``upto`` inclusive, when given)."""
        gen, codec, catalog = self.gen, self.codec, self.catalog
        ends: dict[int, int] = {}
        counted = False
        # Closed even when the caller stops early (a point in time): its consumer stops.
        fetched = read_to_end(self.settings, gen.topic, partitions=[partition], ends=ends)
        async with contextlib.aclosing(fetched) as stream:
            async for records in stream:
                if not counted:
                    self.progress.total_records += ends.get(partition, 0)
                    counted = True
                if upto is not None and records[0].offset > upto:
                    return
                grouped: dict[str, _Group] = {}
                for rec in records:
                    if upto is not None and rec.offset > upto:
                        break
                    if rec.key is None or gen.home(rec.key) != rec.partition:
                        continue  # misplaced: the apply consumer dead-letters it
                    try:
                        decoded = to_domain(codec.decode(MEMORY_EVENT, rec.value), rec.key, catalog)
                    except (DecodeError, MemstreamError):
                        continue
                    key = decoded.memory_key
                    if decoded.event is None or (keys is not None and key not in keys):
                        continue
                    group = grouped.get(key)
                    if group is None:
                        group = grouped[key] = _Group(decoded.entry.policy)
                    group.events.append(LoggedEvent(rec.offset, decoded.event, decoded.at_ms))
                    group.last_ms = max(group.last_ms, rec.timestamp)
                self.progress.records += len(records)
                yield grouped
                self.tick()

    def tick(self, force: bool = False) -> None:
        """Report progress (at most once a second unless ``force``)."""
        now = time.monotonic()
        if self._report is not None and (force or now - self._reported >= 1.0):
            self._reported = now
            self._report(self.progress)

    async def fold(
        self, partition: int, keys: set[str] | None, upto: int | None = None
    ) -> dict[str, _Memory]:
        """Every memory of ``partition`` folded from its events (states, not events, kept),
        up to offset ``upto`` when given."""
        memories: dict[str, _Memory] = {}
        home = f"{self.gen.topic}:{partition}"
        async for grouped in self.batches(partition, keys, upto):
            for key, group in grouped.items():
                memory = memories.get(key)
                if memory is None:
                    memory = memories[key] = _Memory(group.policy, home)
                    self.progress.memories += 1
                memory.state = memory.policy.manager.apply(memory.state, group.events).state
                memory.events += len(group.events)
                memory.last_ms = max(memory.last_ms, group.last_ms)
                self.progress.events += len(group.events)
        return memories


async def _each_partition(
    settings: Settings,
    keys: list[str] | None,
    partitions: list[int] | None,
    action: str,
    generation: Generation | None = None,
) -> tuple[Generation, list[int], Progress]:
    gen = generation or await existing_generation(settings)
    if keys is not None:
        chosen = sorted({gen.home(k.encode()) for k in keys})
    elif partitions is not None:
        bad = [p for p in partitions if not 0 <= p < gen.partitions]
        if bad:
            raise MemstreamError(f"{gen.topic} has partitions 0-{gen.partitions - 1}, not {bad[0]}")
        chosen = sorted(set(partitions))
    else:
        chosen = list(range(gen.partitions))
    return gen, chosen, Progress(action, len(chosen))


async def verify(
    settings: Settings,
    catalog: MemoryCatalog,
    codec: AvroCodec,
    store: RedisMemoryStore,
    keys: list[str] | None = None,
    *,
    partitions: list[int] | None = None,
    progress: ProgressFn | None = None,
    parallel: int = 2,
    now_ms: int | None = None,
) -> VerifyReport:
    """Compare every memory in Redis with the pure model applied to the log, streamed
    partition by partition (``parallel`` at a time), holding one memory state per memory of
    the partitions being read, never their events. Memories whose TTL ran out since their
    last event are not compared (``expired``)."""
    await store.ping()  # a verify that never reached Redis must not pass
    gen, chosen, state = await _each_partition(settings, keys, partitions, "verify")
    reader = _Reader(settings, catalog, codec, gen, state, progress)
    wanted = set(keys) if keys is not None else None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    report = VerifyReport(0, 0, [])
    seen: set[str] = set()
    limit = asyncio.Semaphore(max(parallel, 1))

    async def one(partition: int) -> None:
        async with limit:
            memories = await reader.fold(partition, wanted)
            seen.update(memories)
            for key, memory in sorted(memories.items()):
                report.memories += 1
                report.events += memory.events
                if memory.expired(now):
                    report.expired += 1
                    continue
                mismatch = await _compare(store, key, memory)
                if mismatch is not None:
                    report.mismatches.append(mismatch)
            state.partitions_done += 1
            reader.tick()

    await asyncio.gather(*(one(p) for p in chosen))
    for key in sorted((wanted or set()) - seen):
        # Asked for, without events in the log: it must not be stored either.
        report.memories += 1
        if (await store.read(key, start=0, stop=0)).exists:
            report.mismatches.append(Mismatch(key, "stored but has no events in the log"))
    reader.tick(force=True)
    return report


async def _compare(store: RedisMemoryStore, key: str, memory: _Memory) -> Mismatch | None:
    """How the stored memory differs from the fold of its events (None: it does not)."""
    expected = memory.state
    snap = await store.read(key)
    if snap.home is not None and snap.home != memory.home:
        return Mismatch(key, f"home {snap.home} != {memory.home} of the log")
    recent = await store.recent_event_ids(key)
    if list(recent) != list(expected.recent_event_ids):
        return Mismatch(key, "recent event ids differ from the log")
    if [m.id for m in snap.messages] != [m.id for m in expected.messages]:
        return Mismatch(
            key,
            f"messages {[m.id for m in snap.messages]} != "
            f"expected {[m.id for m in expected.messages]}",
        )
    if snap.messages != expected.messages:
        return Mismatch(key, "message bodies differ")
    if snap.tokens != expected.tokens_by_category():
        return Mismatch(key, f"counters {snap.tokens} != messages")
    # Everything else of the state: offsets, flush sequence and pending flag, savings.
    want = replace(expected, recent_event_ids=())
    got = snap.state()
    diffs = [
        f"{name} {getattr(got, name)!r} != {getattr(want, name)!r}"
        for name in want.__struct_fields__
        if name != "messages" and getattr(got, name) != getattr(want, name)
    ]
    return Mismatch(key, "; ".join(diffs)) if diffs else None


async def replay(
    settings: Settings,
    catalog: MemoryCatalog,
    codec: AvroCodec,
    store: RedisMemoryStore,
    *,
    keys: list[str] | None = None,
    partitions: list[int] | None = None,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    parallel: int = 2,
    now_ms: int | None = None,
    upto: int | None = None,
    owner: str = "replay",
    generation: Generation | None = None,
) -> ReplayReport:
    """Rebuild the memories of the log into Redis (idempotent: applied offsets are skipped),
    streamed partition by partition (``parallel`` at a time) in two passes: the first folds
    each memory's events into its state and compares it with Redis, the second writes each
    fetched batch's events of the memories whose TTL has not run out since their last event,
    with what remains of it, and that Redis does not hold as the log does (one it holds
    otherwise is deleted first, so a partly written Redis converges). Holds one state per
    memory of the partitions being read, never their events beyond a batch. ``dry_run``
    writes nothing; ``upto`` stops at that offset (inclusive; an apply consumer restoring
    one partition).

    To recover a lost Redis, run it while the apply consumers are stopped.
    """
    await store.ping()
    gen, chosen, state = await _each_partition(settings, keys, partitions, "replay", generation)
    reader = _Reader(settings, catalog, codec, gen, state, progress)
    wanted = set(keys) if keys is not None else None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    report = ReplayReport(0, 0, 0, dry_run)
    limit = asyncio.Semaphore(max(parallel, 1))

    async def one(partition: int) -> None:
        async with limit:
            memories = await reader.fold(partition, wanted, upto)
            alive = {k: m for k, m in memories.items() if not m.expired(now)}
            report.expired += len(memories) - len(alive)
            report.memories += len(alive)
            report.events += sum(m.events for m in alive.values())
            # What Redis holds already as the log does is left alone; a memory it holds
            # otherwise (partly written, or diverged) is deleted and written again.
            stale: list[str] = []
            for key, memory in sorted(alive.items()):
                if not (await store.read(key, start=0, stop=0)).exists:
                    stale.append(key)
                elif await _compare(store, key, memory) is not None:
                    report.rewritten += 1
                    stale.append(key)
                    if not dry_run:
                        await store.delete(key)
                else:
                    report.unchanged += 1
            if dry_run or not stale:
                state.partitions_done += 1
                return
            remaining = {k: alive[k].last_ms + alive[k].policy.ttl_ms - now for k in stale}
            home = f"{gen.topic}:{partition}"
            async for grouped in reader.batches(partition, set(stale), upto):
                batches = [
                    KeyBatch(key, g.policy, g.events, home=home, ttl_ms=max(remaining[key], 1))
                    for key, g in grouped.items()
                ]
                for start in range(0, len(batches), 500):
                    outcomes = await store.apply(batches[start : start + 500], owner)
                    refused = [o for o in outcomes if o.result is None]
                    if refused:
                        raise MemstreamError(
                            f"replay refused for {len(refused)} memories, e.g. "
                            f"{refused[0].memory_key}: {refused[0].status.value}"
                        )
                state.events += sum(len(b.events) for b in batches)
            state.partitions_done += 1

    await asyncio.gather(*(one(p) for p in chosen))
    reader.tick(force=True)
    return report


@dataclass(frozen=True, slots=True)
class PointInTime:
    """A memory as it was: its state after every event of its home partition up to
    ``offset`` (inclusive; -1: before any), folded from the log."""

    memory_key: str
    state: MemoryState
    offset: int
    events: int


async def memory_at(
    settings: Settings,
    catalog: MemoryCatalog,
    codec: AvroCodec,
    memory_key: str,
    *,
    offset: int | None = None,
    at_ms: int | None = None,
) -> PointInTime:
    """``memory_key`` as it was after the event at ``offset`` of its home partition, or
    after every event appended before ``at_ms`` (Kafka timestamps; docs/semantics.md,
    "Recovery"). Reads the partition from its beginning up to that point only."""
    if (offset is None) == (at_ms is None):
        raise ValueError("give exactly one of offset and at_ms")
    gen = await existing_generation(settings)
    partition = gen.home(memory_key.encode())
    if at_ms is not None:
        offset = await _last_offset_before(settings, gen.topic, partition, at_ms)
    assert offset is not None
    progress = Progress("point in time", 1)
    reader = _Reader(settings, catalog, codec, gen, progress, None)
    memory: _Memory | None = None
    home = f"{gen.topic}:{partition}"
    async with contextlib.aclosing(reader.batches(partition, {memory_key}, upto=offset)) as it:
        async for grouped in it:
            group = grouped.get(memory_key)
            if group is None:
                continue
            if memory is None:
                memory = _Memory(group.policy, home)
            memory.state = memory.policy.manager.apply(memory.state, group.events).state
            memory.events += len(group.events)
    state = memory.state if memory is not None else MemoryState()
    return PointInTime(memory_key, state, offset, memory.events if memory is not None else 0)


async def _last_offset_before(settings: Settings, topic: str, partition: int, at_ms: int) -> int:
    """The offset of the last record of ``topic:partition`` appended before ``at_ms``."""
    consumer = kafka_consumer(settings, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    try:
        await consumer.start()
        found = await consumer.offsets_for_times({tp: at_ms})
        at = found.get(tp)
        if at is not None:
            return int(at.offset) - 1
        return int((await consumer.end_offsets([tp]))[tp]) - 1  # nothing at or after it
    finally:
        await consumer.stop()
