"""Produced → visible in Redis at fixed rates, against Kafka alone; the consumer's RSS.

Every figure comes from one run on this machine:

- the backlog throughput of the apply consumer over the benchmark's memories (measured as
  ``pipeline._memstream`` does, on a topic filled beforehand); the rates are its half and
  quarter;
- at each rate, ``latency_producer`` (its own process) sends one message per memory per
  round for ``seconds``, each stamped with its send time. memstream: an ``ApplyConsumer``
  in this process, its store wrapped so that each event's latency is the time ``apply()``
  returned (the write acknowledged by Redis) minus its send time. The floor: a plain
  ``AIOKafkaConsumer`` decoding every record with the same codec, its latency the time the
  record was decoded minus its send time. Same producer, rate and keys, fresh topics;
- a threshold storm: the quarter rate on memories whose flush threshold every memory crosses
  on the same round (within ``memories / rate`` seconds), so the consumer produces a flush
  command for each of them at once (no dispatcher runs: producing them is the cost); its p99
  from the first flush request to a second after the last, against the same run's over as
  long just before, and the quarter-rate run's over the same seconds;
- RSS of a ``memstream run --roles apply`` process idle, then once it applied events for
  ``rss_memories`` distinct memories.

Send times are the producer's wall clock in ns, matched to what each consumer saw by
partition and offset; both consumers read the same clock (one machine). The memstream side
is an upper bound within one ``apply()`` call: the store writes a call's memories in chunks,
each acknowledged before the call returns.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import Any, Protocol, cast

from aiokafka.admin import AIOKafkaAdminClient

from benchmarks import pipeline
from benchmarks.common import Result
from benchmarks.latency_producer import SENT_NS_HEADER, Summary, read_stamps
from benchmarks.latency_stats import (
    KEEPS_UP_BACKLOG_S,
    KEEPS_UP_DRAIN_S,
    NS,
    Lag,
    Latency,
    Second,
    matched,
    timeline,
)
from consumers.apply import ApplyConsumer
from consumers.bootstrap import build_app, make_catalog, make_redis
from consumers.connections import kafka_admin, kafka_consumer
from consumers.generations import generations_topic
from consumers.settings import Settings
from consumers.topics import ensure_topics, topic_names
from memory_core import LoggedEvent, MemoryPolicy, MemoryState, Message, MessageAppended, Role
from memory_core.redis import KeyBatch, KeyOutcome, RedisMemoryStore, WriteStatus
from schemas import MEMORY_EVENT

ROOT = Path(__file__).parent.parent
# The producer kept the rate: it sent at least this share of it over the run.
RATE_KEPT = 0.98
# After the producer stops, how long every record has to show up before it counts as missing.
DRAIN_TIMEOUT_S = 30.0
STORM_LINE = "please summarize what we agreed so far"
# The targets that gate ``make bench`` once the apply path meets them on this machine; the
# others report only. None yet: RSS meets its target only with batches of 10,000 records,
# which cost the pipeline benchmark its target (docs/decisions/0011).
GATING: tuple[str, ...] = ()
# pipeline.py's memory resource.
BENCH = {
    "id": "bench",
    "key": "bench:{user}",
    "model": "gpt-4o",
    "max_tokens": 3000,
    "max_messages": 50,
}


async def _polled(
    ok: Callable[[], bool | Awaitable[bool]], *, timeout_s: float, every_s: float = 0.01
) -> bool:
    """Whether ``ok()`` came true within ``timeout_s`` (what it watches offers no event)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = ok()
        if await answer if inspect.isawaitable(answer) else answer:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every_s)


# -- observers -----------------------------------------------------------------------------


class _Observer(Protocol):
    seen: dict[int, tuple[array[int], array[int]]]

    @property
    def count(self) -> int: ...

    async def start(self) -> None: ...
    def ready(self) -> bool: ...
    async def stop(self) -> None: ...


def _partitions(n: int) -> dict[int, tuple[array[int], array[int]]]:
    return {p: (array("q"), array("q")) for p in range(n)}


class _Floor:
    """Kafka alone: a plain consumer of the topic decoding every record with the codec."""

    def __init__(self, settings: Settings, codec: Any) -> None:
        self.settings = settings
        self.codec = codec
        self.seen = _partitions(settings.topic_partitions)
        self.count = 0
        # The send time each record's header carries, in the order seen (a check of the stamps).
        self.headers = {p: array("q") for p in self.seen}
        self._consumer = kafka_consumer(
            settings,
            settings.events_topic,
            group_id=f"floor-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,  # as the apply consumer
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._loop())

    def ready(self) -> bool:
        tps = self._consumer.assignment()
        return bool(tps) and all(self._consumer.highwater(tp) is not None for tp in tps)

    async def _loop(self) -> None:
        decode, max_records = self.codec.decode, self.settings.apply_max_records
        while not self._stopping:
            fetched = await self._consumer.getmany(timeout_ms=200, max_records=max_records)
            for tp, records in fetched.items():
                offsets, times = self.seen[tp.partition]
                headers = self.headers[tp.partition]
                for rec in records:
                    decode(MEMORY_EVENT, rec.value)
                    times.append(time.time_ns())
                    offsets.append(rec.offset)
                    headers.append(int(dict(rec.headers)[SENT_NS_HEADER]))
                self.count += len(records)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await self._task
        await self._consumer.stop()


class _VisibleStore:
    """The apply consumer's store, noting when each applied event's write was acknowledged
    (and when flushes were requested); everything else goes to the real store."""

    def __init__(self, store: RedisMemoryStore, partitions: int) -> None:
        self._store = store
        self.seen = _partitions(partitions)
        self.count = self.calls = 0
        self.flushes: list[tuple[int, int]] = []  # (ns, flush requests)

    async def apply(
        self, batches: Sequence[KeyBatch], owner: str, *, hold: bool = False
    ) -> list[KeyOutcome]:
        outcomes = await self._store.apply(batches, owner, hold=hold)
        now = time.time_ns()
        self.calls += 1
        flushes = 0
        for b, outcome in zip(batches, outcomes, strict=True):
            if outcome.status is WriteStatus.APPLIED and outcome.result is not None:
                offsets, times = self.seen[int(b.home.rpartition(":")[2])]
                offsets.extend(e.offset for e in b.events)
                times.extend(repeat(now, len(b.events)))
                self.count += len(b.events)
                flushes += len(outcome.result.flush_requests)
        if flushes:
            self.flushes.append((now, flushes))
        return outcomes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _Memstream:
    """An apply consumer (``run``) in this process, its store a ``_VisibleStore``."""

    def __init__(self, settings: Settings, app: Any) -> None:
        self.store = _VisibleStore(app.store, settings.topic_partitions)
        self.consumer = ApplyConsumer(
            settings=settings,
            catalog=app.catalog,
            store=cast(RedisMemoryStore, self.store),
            codec=app.codec,
            telemetry=app.telemetry,
        )
        self.seen = self.store.seen
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return self.store.count

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self.consumer.run(self._stop))

    def ready(self) -> bool:
        c = self.consumer
        return bool(c.assignment) and len(c.lag()) == len(c.assignment)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.consumer.stop()


# -- one rate ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """The memory resource a run writes to, and the message text (None: pipeline's lines)."""

    key: str
    id: str
    content: str | None = None


@dataclass
class RateRun:
    """One consumer at one rate: every event's send and first-seen time (``-1``: never),
    what the producer did, the latencies, lag and timeline; ``storm`` is the window (ns from
    the producer's start) from the first flush requested to a second after the last."""

    consumer: str
    rate: float
    producer: Summary
    sent: list[int]
    seen: list[int]
    storm: tuple[int, int] | None = None
    flushes: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @cached_property
    def latency(self) -> Latency:
        """Of every event seen."""
        return Latency.of([v - s for s, v in zip(self.sent, self.seen, strict=True) if v >= 0])

    def visible_within(self, start_ns: int, end_ns: int) -> Latency:
        """Of the events seen from ``start_ns`` to ``end_ns`` after the producer's start."""
        lo, hi = self.producer.started_ns + start_ns, self.producer.started_ns + end_ns
        return Latency.of(
            [v - s for s, v in zip(self.sent, self.seen, strict=True) if lo <= v <= hi]
        )

    @cached_property
    def lag(self) -> Lag:
        """How far behind it was."""
        return Lag.of(self.sent, self.seen, self.producer.stopped_ns)

    @property
    def keeps_up(self) -> bool:
        """``Lag.keeps_up`` at the run's rate."""
        return self.lag.keeps_up(self.rate)

    @property
    def rate_kept(self) -> bool:
        """Whether the producer sent at the rate asked (else the run says nothing of it)."""
        return self.producer.rate >= RATE_KEPT * self.rate

    @cached_property
    def timeline(self) -> list[Second]:
        """Per second since the producer's start."""
        return timeline(self.sent, self.seen, self.producer.started_ns)


class _Usage:
    """CPU used by this process and by Redis from ``start`` to ``stop``, in % of one core."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._wall, self._process, self._redis_cpu = time.monotonic(), time.process_time(), 0.0
        self.shares: dict[str, float] = {}

    @classmethod
    async def start(cls, run: Settings) -> _Usage:
        usage = cls(make_redis(run))
        usage._redis_cpu = await usage._redis_seconds()
        return usage

    async def _redis_seconds(self) -> float:
        info = await self._redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def stop(self) -> None:
        wall = time.monotonic() - self._wall
        redis = await self._redis_seconds() - self._redis_cpu
        await self._redis.aclose()
        self.shares = {
            "this process CPU %": 100 * (time.process_time() - self._process) / wall,
            "redis CPU %": 100 * redis / wall,
        }


def _stage(settings: Settings, tag: str) -> Settings:
    """Fresh topics, group and key prefix for one run."""
    name = f"{tag}{uuid.uuid4().hex[:6]}"
    return settings.model_copy(
        update={
            "events_topic": f"latency.{name}.events",
            "dlq_topic": f"latency.{name}.dlq",
            "flush_topic": f"latency.{name}.flush",
            "consumer_group": f"latency-{name}",
            "key_prefix": f"lat{name}",
        }
    )


async def _cleanup(run: Settings) -> None:
    """Drop the run's topics and Redis keys (tens of MB each: kept, they add up)."""
    admin = kafka_admin(run)
    try:
        await admin.start()
        names = [*topic_names(run), generations_topic(run)]
        await admin.delete_topics([n for n in names if n in set(await admin.list_topics())])
    finally:
        await admin.close()
    redis = make_redis(run)
    try:
        # The prefix and those derived from it (``_backlog``'s): random, so nobody else's.
        keys = [k async for k in redis.scan_iter(match=f"{run.key_prefix}*", count=5000)]
        for i in range(0, len(keys), 5000):
            await redis.unlink(*keys[i : i + 5000])
    finally:
        await redis.aclose()


async def _produce(
    run: Settings, memory: Memory, memories: int, rate: float, seconds: float
) -> tuple[Summary, dict[int, array[int]]]:
    """Run the producer process; its summary and the send stamps."""
    with tempfile.TemporaryDirectory() as tmp:
        stamps = Path(tmp) / "stamps.bin"
        args = [
            *("--topic", run.events_topic, "--key-template", memory.key),
            *("--memory-id", memory.id, "--memories", str(memories)),
            *("--rate", repr(rate), "--duration", repr(seconds), "--stamps", str(stamps)),
            *(("--content", memory.content) if memory.content else ()),
        ]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.latency_producer", *args,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"latency_producer exited with {proc.returncode}")
        return Summary(**json.loads(out.decode().strip().splitlines()[-1])), read_stamps(stamps)


async def _rated(
    settings: Settings,
    kind: str,
    memory: Memory,
    *,
    memories: int,
    rate: float,
    seconds: float,
) -> RateRun:
    run = _stage(settings, kind[0])
    await ensure_topics(run)
    try:
        async with build_app(run) as app:
            observer: _Observer = (
                _Floor(run, app.codec) if kind == "floor" else _Memstream(run, app)
            )
            await observer.start()
            try:
                if not await _polled(observer.ready, timeout_s=60):
                    raise TimeoutError(f"{kind} consumer not fetching after 60 s")
                usage = await _Usage.start(run)
                summary, stamps = await _produce(run, memory, memories, rate, seconds)
                await _polled(lambda: observer.count >= summary.sent, timeout_s=DRAIN_TIMEOUT_S)
                await usage.stop()
            finally:
                await observer.stop()
    finally:
        await _cleanup(run)
    sent, seen = matched(stamps, observer.seen)
    result = RateRun(kind, rate, summary, sent, seen, extra=dict(usage.shares))
    if isinstance(observer, _Floor):
        result.extra["stamp mismatches"] = sum(
            1
            for p, headers in observer.headers.items()
            for offset, ns in zip(observer.seen[p][0], headers, strict=True)
            if stamps[p][offset] != ns
        )
    if isinstance(observer, _Memstream):
        store = observer.store
        result.extra["apply calls"] = store.calls
        result.extra["store rounds"] = getattr(store._store, "round_trips", -1)
        result.extra["store cached MiB"] = getattr(store._store, "cached_bytes", -1) / 2**20
        if store.flushes:
            first, last = store.flushes[0][0], store.flushes[-1][0]
            result.storm = (first - summary.started_ns, last - summary.started_ns + NS)
            result.flushes = sum(n for _, n in store.flushes)
    return result


# -- backlog throughput -----------------------------------------------------------------------


async def _backlog(settings: Settings, *, memories: int, per_memory: int, runs: int = 2) -> float:
    """The best of ``runs`` apply rates over a topic filled beforehand, as ``pipeline.py``
    measures them (each into fresh keys), under the run's key prefix so they are dropped."""
    run = _stage(settings, "b")
    await ensure_topics(run)
    try:
        total = await pipeline._produce(run, memories, per_memory)
        rates = []
        for i in range(runs):
            fresh = run.model_copy(
                update={
                    "consumer_group": f"{run.consumer_group}-{i}",
                    "key_prefix": f"{run.key_prefix}-{i}",
                }
            )
            rates.append(await _applied_rate(fresh, total))
        return max(rates)
    finally:
        await _cleanup(run)


async def _applied_rate(run: Settings, total: int) -> float:
    # pipeline._memstream's measure (it writes under a random prefix nobody drops).
    async with build_app(run) as app:
        consumer = ApplyConsumer(
            settings=run,
            catalog=app.catalog,
            store=app.store,
            codec=app.codec,
            telemetry=app.telemetry,
        )
        await consumer.start()
        try:
            await pipeline._fetching(
                lambda: (
                    bool(consumer.assignment) and len(consumer.lag()) == len(consumer.assignment)
                )
            )
            started = time.perf_counter()
            while consumer.totals.records < total:
                await consumer.step(timeout_ms=1000)
            return consumer.totals.records / (time.perf_counter() - started)
        finally:
            await consumer.stop()


# -- the threshold storm's memory ------------------------------------------------------------


def storm_config(counter: Any, turn: int) -> dict[str, Any]:
    """The benchmark's memory resource with a flush threshold its memories cross on the event
    of ``turn`` (from 0), every event carrying ``STORM_LINE``, roles alternating from user (as
    produced): the same budgets, so the same states and evictions as the other runs."""
    for ten_thousandths in range(1, 10_001):
        threshold = ten_thousandths / 10_000
        config = {
            **BENCH,
            "id": "storm",
            "key": "storm:{user}",
            "flushing": {"threshold": threshold},
        }
        if _first_flush(config, counter) == turn:
            return config
    raise ValueError(f"no flush threshold makes turn {turn} request the first flush")


def _first_flush(data: dict[str, Any], counter: Any) -> int | None:
    from memory_core import parse_config

    manager = MemoryPolicy.of(parse_config(data)).manager
    state = MemoryState()
    for turn in range(10_000):
        role = Role.USER if turn % 2 == 0 else Role.ASSISTANT
        tokens = counter.message_tokens(role.value, STORM_LINE)
        message = Message(f"m{turn}", role, STORM_LINE, tokens, 0)
        result = manager.apply(state, [LoggedEvent(turn, MessageAppended(f"e{turn}", message))])
        if result.flush_requests:
            return turn
        state = result.state
    return None


# -- RSS -----------------------------------------------------------------------------------


def rss_mib(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (the peak) of process ``pid``, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[f].split()[0]) / 1024 for f in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


async def _stable(admin: AIOKafkaAdminClient, group: str) -> bool:
    (response,) = await admin.describe_consumer_groups([group])
    return bool(response.groups[0][2] == "Stable")


async def _caught_up(admin: AIOKafkaAdminClient, group: str, ends: dict[int, int]) -> bool:
    offsets = await admin.list_consumer_group_offsets(group)
    committed = {tp.partition: meta.offset for tp, meta in offsets.items()}
    return all(committed.get(p, 0) >= end for p, end in ends.items())


async def _rss(settings: Settings, *, memories: int, per_memory: int) -> dict[str, float]:
    """RSS of ``memstream run --roles apply``, idle and once it applied ``per_memory`` events
    for each of ``memories`` memories."""
    run = _stage(settings, "r")
    await ensure_topics(run)
    env = {
        **os.environ,
        "MEMSTREAM_EVENTS_TOPIC": run.events_topic,
        "MEMSTREAM_DLQ_TOPIC": run.dlq_topic,
        "MEMSTREAM_FLUSH_TOPIC": run.flush_topic,
        "MEMSTREAM_CONSUMER_GROUP": run.consumer_group,
        "MEMSTREAM_KEY_PREFIX": run.key_prefix,
        "MEMSTREAM_MEMORIES_FILE": str(run.memories_file),
    }
    memstream = Path(sys.executable).parent / "memstream"
    proc = await asyncio.create_subprocess_exec(memstream, "run", "--roles", "apply", env=env)
    admin = kafka_admin(run)
    try:
        await admin.start()
        if not await _polled(lambda: _stable(admin, run.consumer_group), timeout_s=60):
            raise TimeoutError("memstream run --roles apply did not join its group in 60 s")
        await asyncio.sleep(1.0)  # settled after joining
        idle, _ = rss_mib(proc.pid)
        events = memories * per_memory
        rate = 150_000.0  # flat out: the producer sends what it can
        _, stamps = await _produce(
            run, Memory("bench:{user}", "bench"), memories, rate, events / rate
        )
        ends = {p: len(ns) for p, ns in stamps.items()}
        if not await _polled(lambda: _caught_up(admin, run.consumer_group, ends), timeout_s=120):
            raise TimeoutError(f"memstream run --roles apply did not apply {events} in 120 s")
        await asyncio.sleep(1.0)
        applied, peak = rss_mib(proc.pid)
    finally:
        await admin.close()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await _cleanup(run)
    return {"idle": idle, "applied": applied, "peak": peak}


# -- the benchmark ---------------------------------------------------------------------------


@dataclass
class LatencyResult(Result):
    """A ``Result`` whose targets gate only when named in ``gating``: the others are reported
    (``targets_met`` says whether all are met) until the apply path meets them."""

    gating: tuple[str, ...] = GATING
    targets_met: bool = False
    timelines: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    # Per run: what its producer did, CPU shares, checks.
    runs: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.targets_met = Result.passed.fget(self)  # type: ignore[attr-defined]

    @property
    def passed(self) -> bool:
        """Every gating target met."""
        return all(self.ratios[k] >= self.targets[k] for k in self.gating)

    def report(self) -> str:
        """Result's lines, each memstream run's timeline, and the verdict on the targets."""
        lines = [super().report()]
        for name, r in self.runs.items():
            extra = ", ".join(f"{k} {v:,.1f}" for k, v in r.items() if not k.startswith("producer"))
            lines.append(
                f"   {name}: producer sent {r['producer rate']:,.0f}/s, late p99 "
                f"{r['producer late_p99_ms']:.1f} ms, CPU {r['producer cpu_percent']:.0f} %; "
                + extra
            )
        for name, seconds in self.timelines.items():
            if "memstream" in name:
                lines.append(f"   {name}: s, sent, visible, p99 ms, backlog at the end")
                lines += [
                    f"     {s['second']:>3} {s['sent']:>7} {s['visible']:>7} "
                    f"{s['p99_ms']:>8.1f} {s['backlog']:>7}"
                    for s in seconds
                ]
        met = sum(self.ratios[k] >= v for k, v in self.targets.items())
        gated = ", ".join(sorted(self.gating)) or "none"
        lines.append(
            f"   targets met: {met} of {len(self.targets)}; gating: {gated} (the others "
            "report only until the apply path meets them)"
        )
        return "\n".join(lines)


def _memories_file(settings: Settings, storm: dict[str, Any] | None = None) -> Path:
    path = Path(settings.stack_dir) / "latency-memories.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"memories": [BENCH, *([storm] if storm else [])]}))  # YAML ⊃ JSON
    return path


async def _run(
    settings: Settings, *, memories: int, seconds: float, rss_memories: int, rss_per_memory: int
) -> LatencyResult:
    started = time.monotonic()
    settings = settings.model_copy(update={"memories_file": _memories_file(settings)})
    backlog = await _backlog(settings, memories=memories, per_memory=5)
    half, quarter = backlog / 2, backlog / 4
    bench = Memory("bench:{user}", "bench")
    runs: dict[str, RateRun] = {}
    for label, rate in (("half", half), ("quarter", quarter)):
        for kind in ("floor", "memstream"):
            runs[f"{label} {kind}"] = await _rated(
                settings, kind, bench, memories=memories, rate=rate, seconds=seconds
            )
    # The storm: every memory's first flush requested on the round a quarter into the run
    # (before the quarter-rate run's states have grown much).
    storm_turn = max(2, round(seconds / 4 * quarter / memories))
    counter = make_catalog(settings).get("bench").counter  # type: ignore[union-attr]
    storm_memory = storm_config(counter, storm_turn)
    storm_settings = settings.model_copy(
        update={"memories_file": _memories_file(settings, storm_memory)}
    )
    runs["storm memstream"] = await _rated(
        storm_settings,
        "memstream",
        Memory(storm_memory["key"], "storm", STORM_LINE),
        memories=memories,
        rate=quarter,
        seconds=seconds,
    )
    rss = await _rss(settings, memories=rss_memories, per_memory=rss_per_memory)
    return _result(backlog, runs, rss, params={
        "memories": memories,
        "seconds per rate": seconds,
        "rates (events/s)": {"half": half, "quarter": quarter},
        "keeps up": f"backlog never above {KEEPS_UP_BACKLOG_S:g} s of production and all "
        f"visible within {KEEPS_UP_DRAIN_S:g} s of the producer's stop",
        "storm": {"first flush at turn": storm_turn, "memory": storm_memory},
        "rss": {"memories": rss_memories, "events per memory": rss_per_memory},
        "took s": time.monotonic() - started,
    })  # fmt: skip


def _result(
    backlog: float, runs: dict[str, RateRun], rss: dict[str, float], params: dict[str, Any]
) -> LatencyResult:
    figures: dict[str, float] = {"backlog apply events/s": backlog}
    for name, r in runs.items():
        figures[f"{name} sent events/s"] = r.producer.rate
        figures[f"{name} p50 ms"] = r.latency.p50_ms
        figures[f"{name} p99 ms"] = r.latency.p99_ms
        figures[f"{name} max ms"] = r.latency.max_ms
        if r.consumer == "memstream":
            figures[f"{name} max backlog"] = r.lag.max_backlog
            figures[f"{name} behind at stop"] = r.lag.behind_at_stop
            figures[f"{name} caught up after s"] = r.lag.caught_up_after_s
    half, quarter, storm = (
        runs["half memstream"],
        runs["quarter memstream"],
        runs["storm memstream"],
    )
    # What the flush commands cost: the storm's p99 against the same run's just before it,
    # over as long (the gate: one run, one regime; a consumer near saturation settles in small
    # or large batches, which differs between runs), and against the quarter-rate run's over
    # the same seconds (the same rounds, so memories of the same size).
    start, end = storm.storm or (0, 0)
    in_storm, same_seconds = storm.visible_within(start, end), quarter.visible_within(start, end)
    before = storm.visible_within(max(0, 2 * start - end), start)
    figures["storm flush requests"] = storm.flushes
    figures["storm flush requests over s"] = (end - NS - start) / NS
    figures["storm window p99 ms"] = in_storm.p99_ms
    figures["quarter memstream p99 ms, same seconds"] = same_seconds.p99_ms
    figures["storm run p99 ms just before the storm"] = before.p99_ms
    figures["RSS idle MiB"] = rss["idle"]
    figures["RSS applied MiB"] = rss["applied"]
    figures["RSS peak MiB"] = rss["peak"]

    def over(a: float, b: float) -> float:
        return a / b if b > 0 else 0.0

    ratios = {
        "half keeps up (1 = yes)": float(half.keeps_up),
        "half 50 ms / p99": over(50, half.latency.p99_ms),
        "quarter 25 ms / p99": over(25, quarter.latency.p99_ms),
        "quarter floor p50 / p50": over(
            runs["quarter floor"].latency.p50_ms, quarter.latency.p50_ms
        ),
        "p99 before / in the storm": over(before.p99_ms, in_storm.p99_ms),
        "quarter p99 / storm p99 (same seconds)": over(same_seconds.p99_ms, in_storm.p99_ms),
        "300 MiB / RSS applied": over(300, rss["applied"]),
        "producer kept every rate (1 = yes)": float(all(r.rate_kept for r in runs.values())),
        "half floor p99 / p99": over(runs["half floor"].latency.p99_ms, half.latency.p99_ms),
        "quarter floor p99 / p99": over(
            runs["quarter floor"].latency.p99_ms, quarter.latency.p99_ms
        ),
    }
    targets = {
        "half keeps up (1 = yes)": 1.0,
        "half 50 ms / p99": 1.0,
        "quarter 25 ms / p99": 1.0,
        "quarter floor p50 / p50": 1 / 3,
        "p99 before / in the storm": 0.5,
        "300 MiB / RSS applied": 1.0,
        # Not a target of the issue: a run whose producer fell short measured another rate.
        "producer kept every rate (1 = yes)": 1.0,
    }
    return LatencyResult(
        name="latency",
        figures=figures,
        ratios=ratios,
        targets=targets,
        params=params,
        timelines={name: [asdict(s) for s in r.timeline] for name, r in runs.items()},
        runs={
            name: {**{f"producer {k}": v for k, v in asdict(r.producer).items()}, **r.extra}
            for name, r in runs.items()
        },
    )


def run(
    settings: Settings,
    *,
    memories: int = 20_000,
    seconds: float = 20.0,
    rss_memories: int = 100_000,
    rss_per_memory: int = 3,
) -> Result:
    """Latency at half and a quarter of the backlog throughput, the storm, and RSS."""
    return asyncio.run(
        _run(
            settings,
            memories=memories,
            seconds=seconds,
            rss_memories=rss_memories,
            rss_per_memory=rss_per_memory,
        )
    )
