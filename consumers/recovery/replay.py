"""``replay``: the memories of the log written into Redis, streamed, converging over a
partly written Redis."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from consumers.catalog import MemoryCatalog
from consumers.generations import Generation
from consumers.recovery.reading import LogReader, ProgressFn, each_partition
from consumers.recovery.verify import compare
from consumers.settings import Settings
from memory_core import MemstreamError
from memory_core.redis import KeyBatch, RedisMemoryStore
from schemas import AvroCodec


@dataclass
class ReplayReport:
    """What ``replay`` found (and wrote, unless ``dry_run``): ``memories`` live in the log,
    with ``events``; ``expired`` not brought back; ``unchanged`` already as the log has
    them; ``rewritten`` held otherwise by Redis (deleted, then written from the log);
    ``snapshots`` started from a snapshot; ``skipped`` records before the watermarks, not read."""

    memories: int
    events: int
    expired: int
    dry_run: bool = False
    unchanged: int = 0
    rewritten: int = 0
    snapshots: int = 0
    skipped: int = 0


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
    snapshots: bool = True,
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
    gen, chosen, state = await each_partition(settings, keys, partitions, "replay", generation)
    reader = LogReader(settings, catalog, codec, gen, state, progress, snapshots=snapshots)
    wanted = set(keys) if keys is not None else None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    report = ReplayReport(0, 0, 0, dry_run)
    limit = asyncio.Semaphore(max(parallel, 1))

    async def one(partition: int) -> None:
        async with limit:
            folded = await reader.fold(partition, wanted, upto)
            memories = folded.memories
            alive = {k: m for k, m in memories.items() if not m.expired(now)}
            report.expired += len(memories) - len(alive)
            report.memories += len(alive)
            report.events += sum(m.events for m in alive.values())
            # What Redis holds already as the log does is left alone; a memory it holds
            # otherwise (partly written, or diverged) is deleted and written again.
            stale: list[str] = []
            for key, memory in sorted(alive.items()):
                snap = await store.read(key)
                if not snap.exists:
                    stale.append(key)
                elif await compare(store, key, memory, snap) is not None:
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

            async def write(batches: list[KeyBatch]) -> None:
                for start in range(0, len(batches), 500):
                    outcomes = await store.apply(batches[start : start + 500], owner)
                    refused = [o for o in outcomes if o.result is None]
                    if refused:
                        raise MemstreamError(
                            f"replay refused for {len(refused)} memories, e.g. "
                            f"{refused[0].memory_key}: {refused[0].status.value}"
                        )

            # Snapshotted memories are written from their snapshots first; the tail's events
            # up to a snapshot's offset then deduplicate (applied offsets are skipped).
            await write(
                [
                    KeyBatch(k, alive[k].policy, (), home=home, ttl_ms=max(remaining[k], 1), base=b)
                    for k in stale
                    if (b := alive[k].base) is not None
                ]
            )
            async for grouped in reader.batches(partition, set(stale), upto, folded.start):
                batches = [
                    KeyBatch(key, g.policy, g.events, home=home, ttl_ms=max(remaining[key], 1))
                    for key, g in grouped.items()
                ]
                await write(batches)
                state.events += sum(len(b.events) for b in batches)
            state.partitions_done += 1

    await asyncio.gather(*(one(p) for p in chosen))
    reader.tick(force=True)
    report.snapshots, report.skipped = state.snapshots, state.skipped
    return report
