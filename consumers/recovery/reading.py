"""Reading the events topic for recovery: as the apply consumer decodes it, partition by
partition, holding per memory its folded state or last write time, never its events beyond
one fetched batch, and starting from the partition's snapshots when it has them
(docs/semantics.md, "Recovery" and "Snapshots")."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from consumers.catalog import MemoryCatalog
from consumers.events import to_domain
from consumers.generations import Generation, TruncatedLogError, existing_generation
from consumers.settings import Settings
from consumers.snapshots import MemorySnapshot, read_snapshots
from consumers.topic_reader import read_to_end
from memory_core import LoggedEvent, MemoryPolicy, MemoryState, MemstreamError
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
class FoldedMemory:
    """What a fold of one memory's events holds: never the events themselves."""

    policy: MemoryPolicy
    home: str
    state: MemoryState = field(default_factory=MemoryState)
    events: int = 0
    last_ms: int = 0  # the Kafka timestamp of its last event
    # The snapshot state the fold started from (None: the memory's first event).
    base: MemoryState | None = None

    def expired(self, now_ms: int) -> bool:
        """Whether its TTL ran out since its last event (docs/semantics.md, "Recovery")."""
        return self.last_ms + self.policy.ttl_ms <= now_ms


@dataclass(slots=True)
class BatchGroup:
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
    # Records before the partitions' watermarks, not read: their snapshots stand for them.
    skipped: int = 0
    snapshots: int = 0  # memories started from a snapshot
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
            + (
                f", {self.snapshots:,} memories from snapshots ({self.skipped:,} records "
                "before the watermarks not read)"
                if self.snapshots or self.skipped
                else ""
            )
        )


ProgressFn = Callable[[Progress], None]


@dataclass(slots=True)
class FoldedPartition:
    """A partition's memories folded, and the offset its read started at (0 without a
    usable watermark)."""

    memories: dict[str, FoldedMemory]
    start: int


class LogReader:
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
        *,
        snapshots: bool = True,
    ) -> None:
        """With ``snapshots`` False, every partition is read from its beginning."""
        self.settings, self.catalog, self.codec, self.gen = settings, catalog, codec, gen
        self.progress = progress
        self.snapshots = snapshots
        self._report = report
        self._reported = 0.0

    async def batches(
        self, partition: int, keys: set[str] | None, upto: int | None = None, start: int = 0
    ) -> AsyncGenerator[dict[str, BatchGroup], None]:
        """Each fetched batch of ``partition`` from offset ``start``: its valid events per
        memory, in log order (up to offset ``upto`` inclusive, when given). Raises
        ``MemstreamError`` when retention deleted records at or after ``start``."""
        gen, codec, catalog = self.gen, self.codec, self.catalog
        ends: dict[int, int] = {}
        firsts: dict[int, int] = {}
        counted = False

        def count() -> None:
            nonlocal counted
            counted = True
            first = firsts.get(partition, 0)
            if first > start:
                raise TruncatedLogError(gen.topic, partition, first, start)
            self.progress.total_records += max(ends.get(partition, 0) - start, 0)

        # Closed even when the caller stops early (a point in time): its consumer stops.
        fetched = read_to_end(
            self.settings,
            gen.topic,
            partitions=[partition],
            ends=ends,
            starts={partition: start},
            firsts=firsts,
        )
        async with contextlib.aclosing(fetched) as stream:
            async for records in stream:
                if not counted:
                    count()
                if upto is not None and records[0].offset > upto:
                    return
                grouped: dict[str, BatchGroup] = {}
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
                        group = grouped[key] = BatchGroup(decoded.entry.policy)
                    group.events.append(LoggedEvent(rec.offset, decoded.event, decoded.at_ms))
                    group.last_ms = max(group.last_ms, rec.timestamp)
                self.progress.records += len(records)
                yield grouped
                self.tick()
        if not counted:
            count()

    def tick(self, force: bool = False) -> None:
        """Report progress (at most once a second unless ``force``)."""
        now = time.monotonic()
        if self._report is not None and (force or now - self._reported >= 1.0):
            self._reported = now
            self._report(self.progress)

    async def fold(
        self, partition: int, keys: set[str] | None, upto: int | None = None
    ) -> FoldedPartition:
        """Every memory of ``partition`` (of ``keys`` only, when given) folded from its
        events (states, not events, kept), up to offset ``upto`` when given. Snapshotted
        memories start from their snapshots, and the read from the latest usable watermark;
        with ``keys``, from the earliest of what each key needs: the offset after its own
        snapshot, the watermark when it has none, else the beginning."""
        memories: dict[str, FoldedMemory] = {}
        home = f"{self.gen.topic}:{partition}"
        start = 0
        if self.snapshots:
            snaps = await read_snapshots(
                self.settings, self.codec, self.gen, partition, upto=upto, keys=keys
            )
            mark = snaps.watermark if snaps.usable else None
            if keys is None:
                start = mark or 0
            else:
                start = min((_needed(k, snaps.memories, mark) for k in keys), default=0)
            if keys is not None or mark is not None:
                for key, snap in snaps.memories.items():
                    entry = self.catalog.get(snap.memory_id)
                    if entry is None:
                        continue  # its resource is gone: its events are dead letters now
                    memories[key] = FoldedMemory(
                        entry.policy, home, snap.state, 0, snap.last_event_ms, snap.state
                    )
                self.progress.memories += len(memories)
                self.progress.snapshots += len(memories)
            self.progress.skipped += start
        async for grouped in self.batches(partition, keys, upto, start):
            for key, group in grouped.items():
                memory = memories.get(key)
                if memory is None:
                    memory = memories[key] = FoldedMemory(group.policy, home)
                    self.progress.memories += 1
                # Events up to a snapshot's offset are skipped as redelivered: not counted.
                after = memory.state.last_offset
                read = sum(1 for e in group.events if e.offset > after)
                memory.state = memory.policy.manager.apply(memory.state, group.events).state
                memory.events += read
                memory.last_ms = max(memory.last_ms, group.last_ms)
                self.progress.events += read
        return FoldedPartition(memories, start)


def _needed(key: str, snapshots: dict[str, MemorySnapshot], watermark: int | None) -> int:
    """Where a rebuild of ``key`` must start reading: after its snapshot, at the watermark
    when it has none (it had no events before it), else at the beginning."""
    snap = snapshots.get(key)
    if snap is not None:
        return snap.last_offset + 1
    return watermark or 0


async def each_partition(
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
