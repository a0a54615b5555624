"""Replay and verify: rebuild the expected state of every memory from the log, compare Redis."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from consumers.catalog import MemoryCatalog
from consumers.events import to_domain
from consumers.generations import existing_generation
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
    """The outcome of ``verify``."""

    memories: int
    events: int
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        """Every memory equals its replay."""
        return not self.mismatches


async def read_log(settings: Settings, catalog: MemoryCatalog, codec: AvroCodec) -> LogContents:
    """Read the active generation of the events topic from its beginning to its current end
    (no consumer group), keeping what the apply consumer applies: records in their memory's
    home partition, valid."""
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


async def verify(
    settings: Settings,
    catalog: MemoryCatalog,
    codec: AvroCodec,
    store: RedisMemoryStore,
    keys: list[str] | None = None,
) -> VerifyReport:
    """Compare every memory in Redis with the pure model applied to the log."""
    await store.ping()  # a verify that never reached Redis must not pass
    log = await read_log(settings, catalog, codec)
    mismatches: list[Mismatch] = []
    chosen = keys if keys is not None else sorted(log.events)
    for key in chosen:
        events = log.events.get(key, [])
        policy = log.policies.get(key)
        snap = await store.read(key)
        if policy is None:
            if snap.exists:
                mismatches.append(Mismatch(key, "stored but has no events in the log"))
            continue
        expected = policy.manager.apply(MemoryState(), events).state
        if snap.home is not None and snap.home != log.homes[key]:
            mismatches.append(Mismatch(key, f"home {snap.home} != {log.homes[key]} of the log"))
            continue
        recent = await store.recent_event_ids(key)
        if list(recent) != list(expected.recent_event_ids):
            mismatches.append(Mismatch(key, "recent event ids differ from the log"))
            continue
        if [m.id for m in snap.messages] != [m.id for m in expected.messages]:
            mismatches.append(
                Mismatch(
                    key,
                    f"messages {[m.id for m in snap.messages]} != "
                    f"expected {[m.id for m in expected.messages]}",
                )
            )
        elif snap.messages != expected.messages:
            mismatches.append(Mismatch(key, "message bodies differ"))
        elif snap.tokens != expected.tokens_by_category():
            mismatches.append(Mismatch(key, f"counters {snap.tokens} != messages"))
        else:
            # Everything else of the state: offsets, flush sequence and pending flag, savings.
            want = replace(expected, recent_event_ids=())
            got = snap.state()
            diffs = [
                f"{name} {getattr(got, name)!r} != {getattr(want, name)!r}"
                for name in want.__struct_fields__
                if name != "messages" and getattr(got, name) != getattr(want, name)
            ]
            if diffs:
                mismatches.append(Mismatch(key, "; ".join(diffs)))
    return VerifyReport(len(chosen), sum(len(log.events.get(k, [])) for k in chosen), mismatches)


async def replay(
    settings: Settings, catalog: MemoryCatalog, codec: AvroCodec, store: RedisMemoryStore
) -> int:
    """Rebuild every memory of the log into Redis (idempotent: applied offsets are skipped).

    To recover a lost Redis, run it against the empty Redis while the apply consumer is
    stopped; returns how many memories were written.
    """
    await store.ping()
    log = await read_log(settings, catalog, codec)
    batches = [
        KeyBatch(k, log.policies[k], events, home=log.homes[k]) for k, events in log.events.items()
    ]
    for start in range(0, len(batches), 500):
        outcomes = await store.apply(batches[start : start + 500], "replay")
        refused = [o for o in outcomes if o.result is None]
        if refused:
            raise MemstreamError(
                f"replay refused for {len(refused)} memories, e.g. {refused[0].memory_key}: "
                f"{refused[0].status.value}"
            )
    return len(batches)
