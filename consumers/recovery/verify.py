"""``verify``: every memory in Redis against the pure model applied to the log, streamed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from consumers.catalog import MemoryCatalog
from consumers.recovery.reading import FoldedMemory, LogReader, ProgressFn, each_partition
from consumers.settings import Settings
from memory_core import Snapshot
from memory_core.redis import RedisMemoryStore
from memory_core.values import replace
from schemas import AvroCodec


@dataclass
class Mismatch:
    """One memory whose stored state differs from the replayed log."""

    memory_key: str
    detail: str


@dataclass
class VerifyReport:
    """The outcome of ``verify``; ``expired``: memories whose TTL ran out since their last
    event, not compared; ``snapshots``: started from a snapshot; ``skipped``: records before
    the watermarks, not read."""

    memories: int
    events: int
    mismatches: list[Mismatch]
    expired: int = 0
    snapshots: int = 0
    skipped: int = 0

    @property
    def ok(self) -> bool:
        """Every memory equals its replay."""
        return not self.mismatches


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
    snapshots: bool = True,
) -> VerifyReport:
    """Compare every memory in Redis with the pure model applied to the log, streamed
    partition by partition (``parallel`` at a time), holding one memory state per memory of
    the partitions being read, never their events. Memories whose TTL ran out since their
    last event are not compared (``expired``). Each partition is read from its latest
    watermark, snapshotted memories starting from their snapshots (``snapshots`` False: from
    its beginning)."""
    await store.ping()  # a verify that never reached Redis must not pass
    gen, chosen, state = await each_partition(settings, keys, partitions, "verify")
    reader = LogReader(settings, catalog, codec, gen, state, progress, snapshots=snapshots)
    wanted = set(keys) if keys is not None else None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    report = VerifyReport(0, 0, [])
    seen: set[str] = set()
    limit = asyncio.Semaphore(max(parallel, 1))

    async def one(partition: int) -> None:
        async with limit:
            memories = (await reader.fold(partition, wanted)).memories
            seen.update(memories)
            for key, memory in sorted(memories.items()):
                report.memories += 1
                report.events += memory.events
                if memory.expired(now):
                    report.expired += 1
                    continue
                mismatch = await compare(store, key, memory)
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
    report.snapshots, report.skipped = state.snapshots, state.skipped
    return report


async def compare(
    store: RedisMemoryStore, key: str, memory: FoldedMemory, snap: Snapshot | None = None
) -> Mismatch | None:
    """How the stored memory (``snap``, when already read whole) differs from the fold of
    its events (None: it does not)."""
    expected = memory.state
    if snap is None:
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
