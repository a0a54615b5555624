"""The apply consumer: memory events from Kafka into Redis, exactly-once in effect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from consumers.catalog import MemoryCatalog
from consumers.deadletter import dead_letter_headers
from consumers.events import to_domain
from consumers.lifecycle import Component, gc_paused, run_steps
from consumers.settings import Settings
from consumers.telemetry import Telemetry, extract_context, sampled_link
from memory_core import (
    DeadLetterReason,
    LoggedEvent,
    MemstreamError,
    MessageAppended,
    Outcome,
    RejectedEventError,
)
from memory_core.redis import KeyBatch, KeyOutcome, RedisMemoryStore, WriteStatus
from schemas import FLUSH_COMMAND, MEMORY_EVENT, AvroCodec, DecodeError, UnknownSchemaError

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


@dataclass(slots=True)
class _KeyWork:
    memory_id: str
    partition: TopicPartition
    batch_events: list[LoggedEvent] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)  # the record of each batch event


@dataclass(slots=True)
class _Batch:
    """Fetched records, decoded into events per partition and memory as far as ``decoded``."""

    fetched: dict[TopicPartition, list[Record]]
    work: dict[TopicPartition, dict[str, _KeyWork]] = field(default_factory=dict)
    decoded: dict[TopicPartition, int] = field(default_factory=dict)  # records, per partition
    dead: list[tuple[Record, DeadLetterReason, str]] = field(default_factory=list)

    def drop(self, partitions: set[TopicPartition]) -> int:
        """Forget the records of ``partitions`` (fetched again from their position); returns
        how many there were."""
        dropped = 0
        for tp in partitions:
            dropped += len(self.fetched.pop(tp, ()))
            self.work.pop(tp, None)
            self.decoded.pop(tp, None)
        self.dead = [d for d in self.dead if _tp(d[0]) not in partitions]
        return dropped


def _tp(rec: Record) -> TopicPartition:
    return TopicPartition(rec.topic, rec.partition)


_NEVER = 2**63
# Records decoded between two turns of the event loop while writes are under way: a few
# milliseconds of work, so Redis is never left idle for long.
_SLICE = 256
# Members as module names: cheaper in the per-event loop on CPython 3.11.
_APPLIED, _REJECTED = Outcome.APPLIED, Outcome.REJECTED
_DUPLICATE_OFFSET, _DUPLICATE_ID = Outcome.DUPLICATE_OFFSET, Outcome.DUPLICATE_ID


@dataclass(slots=True)
class BatchReport:
    """What one fetched batch did (for progress views, metrics and tests)."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    evicted: int = 0
    flushes_requested: int = 0
    flushes_completed: int = 0
    tokens_saved: int = 0
    tokens_appended: int = 0
    tokens_evicted: int = 0
    oldest_event_ms: int = _NEVER
    applied_by_memory: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    retried_partitions: list[TopicPartition] = field(default_factory=list)
    # Records the previous step had decoded already (while its own writes finished).
    decoded_ahead: int = 0
    # Records fetched ahead for the next batch but dropped: their partition was rewound.
    refetched: int = 0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: ApplyConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.owner._on_assigned(assigned)


class ApplyConsumer(Component):
    """Consumes memory events, applies them per key under lock, commits only what Redis holds."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: MemoryCatalog,
        store: RedisMemoryStore,
        codec: AvroCodec,
        telemetry: Telemetry,
        max_records: int | None = None,
        revoke_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.codec = codec
        self.telemetry = telemetry
        self.max_records = settings.apply_max_records if max_records is None else max_records
        self.revoke_timeout_s = revoke_timeout_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._epochs: dict[TopicPartition, int] = {}
        self._fenced: set[TopicPartition] = set()
        self._next_offsets: dict[TopicPartition, int] = {}  # committed position per partition
        self._processing = asyncio.Lock()
        # The next batch, fetched and partly decoded while Redis finished the previous one.
        self._ahead: _Batch | None = None
        self._stopping = asyncio.Event()
        self.totals = BatchReport()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, join the group (idempotent)."""
        if self._consumer is not None:
            return
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_idempotence=True, acks="all"
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self._consumer.subscribe([self.settings.events_topic], listener=_Rebalance(self))
        await self._consumer.start()
        self.telemetry.add_lag_source(self.lag)

    async def stop(self) -> None:
        """Finish the in-flight batch, then leave the group and disconnect (idempotent)."""
        self._stopping.set()
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            async with self._processing:
                self._ahead = None  # fetched, not applied: redelivered to the next owner
                await consumer.stop()
            with contextlib.suppress(MemstreamError):
                await self.store.release(self.owner)
        if producer is not None:
            await producer.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process batches until ``stop`` is set or ``stop()`` is called; outages back off."""
        await run_steps(
            self.step,
            stopped=lambda: self._stopping.is_set() or (stop is not None and stop.is_set()),
            retriable=(MemstreamError, KafkaError, OSError),
            what="apply batch",
        )

    # -- rebalance -----------------------------------------------------------------------------

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._epochs[tp] = await self.store.new_epoch(f"{tp.topic}:{tp.partition}")
            self._fenced.discard(tp)
            if self._consumer is not None:
                self._next_offsets[tp] = await self._consumer.committed(tp) or 0

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        # Let the in-flight batch finish and commit (bounded); after that it would be abandoned
        # uncommitted and redelivered to the new owner, which is safe.
        try:
            await asyncio.wait_for(self._processing.acquire(), self.revoke_timeout_s)
        except TimeoutError:
            log.warning("revoke: in-flight batch still running after %ss", self.revoke_timeout_s)
        else:
            self._processing.release()
        if self._ahead is not None:
            self._ahead.drop(set(revoked))
        for tp in revoked:
            self._epochs.pop(tp, None)
            self._fenced.discard(tp)
            self._next_offsets.pop(tp, None)
        # The new owner of these partitions must not wait for our locks to expire.
        with contextlib.suppress(MemstreamError):
            await self.store.release(self.owner)
        self.store.forget()

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions the group gave this consumer (empty before it joined)."""
        return frozenset(self._consumer.assignment()) if self._consumer is not None else frozenset()

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between the committed position and the high watermark, per partition."""
        consumer = self._consumer
        if consumer is None:
            return {}
        out: dict[tuple[str, int], int] = {}
        for tp, next_offset in list(self._next_offsets.items()):
            high = consumer.highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = max(high - next_offset, 0)
        return out

    # -- the batch -----------------------------------------------------------------------------

    async def step(self, timeout_ms: int = 200) -> BatchReport:
        """Fetch one batch and process it fully (apply, dead-letter, flush commands, commit).

        The batch may have been fetched by the previous step, which decodes the next records
        while its last writes run in Redis; they are applied here, as their own batch.
        """
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("ApplyConsumer.start() was not called")
        async with self._processing:
            batch, self._ahead = self._ahead, None
        if batch is None:
            fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records)
            batch = _Batch({tp: recs for tp, recs in fetched.items() if recs})
        async with self._processing:
            # Partitions fenced or given away since their records were fetched are not ours.
            assigned = consumer.assignment()
            batch.drop({tp for tp in batch.fetched if tp in self._fenced or tp not in assigned})
            if not batch.fetched:
                return BatchReport()
            try:
                with gc_paused():
                    report = await self._process(consumer, batch)
            except BaseException:
                # Nothing of this batch (nor of the next, fetched ahead) is committed: rewind
                # so they are fetched again.
                starts: dict[TopicPartition, int] = {}
                for b in (self._ahead, batch):
                    for tp, recs in (b.fetched if b is not None else {}).items():
                        starts[tp] = recs[0].offset
                self._ahead = None
                for tp, offset in starts.items():
                    if tp in consumer.assignment():
                        consumer.seek(tp, offset)
                raise
        _accumulate(self.totals, report)
        return report

    async def _process(self, consumer: AIOKafkaConsumer, batch: _Batch) -> BatchReport:
        started = time.perf_counter()
        fetched = batch.fetched
        report = BatchReport(
            records=sum(len(r) for r in fetched.values()),
            decoded_ahead=sum(batch.decoded.values()),
        )
        work: dict[str, _KeyWork] = {}
        # Each partition's memories are written as soon as its records are decoded (a memory
        # key lives in one partition), and the next partition is decoded meanwhile; once all
        # are written, the next batch is fetched and decoded until the writes are answered.
        # Redis runs the writes while this process decodes, instead of idling through every
        # decode and then holding the batch up.
        applying: list[asyncio.Task[list[KeyOutcome]]] = []

        def written() -> bool:
            return all(task.done() for task in applying)

        try:
            for tp in fetched:
                await self._decode(batch, tp, until=(lambda: False) if applying else None)
                part = batch.work.get(tp, {})
                work.update(part)
                epoch = self._epochs.get(tp, -1)
                batches = [
                    KeyBatch(key, entry.policy, w.batch_events, epoch=epoch)
                    for key, w in part.items()
                    if (entry := self.catalog.get(w.memory_id)) is not None
                ]
                if batches:
                    applying.append(
                        asyncio.create_task(self.store.apply(batches, self.owner, hold=True))
                    )
            if not written():
                await self._decode_ahead(consumer, written)
            outcomes = [outcome for task in applying for outcome in await task]
        finally:
            # After an error, writes still running are cancelled (their chunks abandoned):
            # nothing of this batch is committed, and the retry deduplicates what they wrote.
            for task in applying:
                task.cancel()
            await asyncio.gather(*applying, return_exceptions=True)
        dead = batch.dead

        failed: set[TopicPartition] = set()
        out: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        for outcome in outcomes:
            w = work[outcome.memory_key]
            if outcome.status is not WriteStatus.APPLIED or outcome.result is None:
                failed.add(w.partition)
                self._refused(w.partition, outcome)
                continue
            self._record_outcome(outcome, w, report, dead, out)

        for rec, reason, detail in dead:
            report.dead_lettered += 1
            self.telemetry.events_dead_lettered.add(1, {"reason": reason.value})  # rare
            out.append(
                (
                    self.settings.dlq_topic,
                    rec.key,
                    rec.value,
                    dead_letter_headers(rec, reason, detail),
                )
            )
        await self._send_all(out)

        commit: dict[TopicPartition, int] = {}
        for tp, records in fetched.items():
            if tp in failed:
                consumer.seek(tp, records[0].offset)
                report.retried_partitions.append(tp)
                if self._ahead is not None:
                    report.refetched += self._ahead.drop({tp})
            else:
                commit[tp] = records[-1].offset + 1
        if commit:
            await asyncio.shield(consumer.commit(commit))
            report.committed = commit
            self._next_offsets.update(commit)
        self._metrics(report, (time.perf_counter() - started) * 1000)
        return report

    async def _decode_ahead(self, consumer: AIOKafkaConsumer, done: Callable[[], bool]) -> None:
        """Fetch the records already buffered for the next batch and decode them until
        ``done``; the next step applies them."""
        fetched = await consumer.getmany(timeout_ms=0, max_records=self.max_records)
        fetched = {tp: recs for tp, recs in fetched.items() if recs}
        if not fetched:
            return
        ahead = self._ahead = _Batch(fetched)
        for tp in fetched:
            if not await self._decode(ahead, tp, until=done):
                return

    async def _decode(
        self, batch: _Batch, tp: TopicPartition, *, until: Callable[[], bool] | None
    ) -> bool:
        """Decode the records of ``tp`` on from where the batch stopped, grouped by memory in
        log order; True once all are.

        With ``until``, it gives the event loop a turn every ``_SLICE`` records (so writes
        under way are read and the next ones sent meanwhile) and stops once ``until()``.
        """
        records = batch.fetched[tp]
        work = batch.work.setdefault(tp, {})
        dead = batch.dead
        decode, catalog = self.codec.decode, self.catalog
        start = batch.decoded.get(tp, 0)
        for i in range(start, len(records)):
            if until is not None and i % _SLICE == 0 and i > start:
                await asyncio.sleep(0)
                if until():
                    batch.decoded[tp] = i
                    return False
            rec = records[i]
            try:
                decoded = to_domain(decode(MEMORY_EVENT, rec.value), rec.key, catalog)
            except UnknownSchemaError as exc:
                dead.append((rec, DeadLetterReason.UNKNOWN_SCHEMA, str(exc)))
                continue
            except DecodeError as exc:
                dead.append((rec, DeadLetterReason.UNDECODABLE, str(exc)))
                continue
            except RejectedEventError as exc:
                dead.append((rec, exc.reason, exc.detail))
                continue
            event = decoded.event
            if event is None:
                continue
            w = work.get(decoded.memory_key)
            if w is None:
                w = work[decoded.memory_key] = _KeyWork(decoded.entry.policy.config.id, tp)
            w.batch_events.append(LoggedEvent(rec.offset, event))
            w.records.append(rec)
        batch.decoded[tp] = len(records)
        return True

    def _refused(self, tp: TopicPartition, outcome: KeyOutcome) -> None:
        if outcome.status is WriteStatus.FENCED:
            # A newer owner of this partition wrote the memory: we are a zombie for it.
            log.warning("partition %s fenced on %s (%s)", tp, outcome.memory_key, outcome.detail)
            self._fenced.add(tp)
            # Stop fetching it; the rebalance that gave it away will take it from us.
            if self._consumer is not None:
                self._consumer.pause(tp)
        else:
            self.telemetry.lock_contention.add(1, {"status": outcome.status.value})
            log.info("memory %s refused (%s); retrying", outcome.memory_key, outcome.status)

    def _record_outcome(
        self,
        outcome: KeyOutcome,
        w: _KeyWork,
        report: BatchReport,
        dead: list[tuple[Record, DeadLetterReason, str]],
        out: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]],
    ) -> None:
        assert outcome.result is not None
        now_ms = time.time_ns() // 1_000_000
        # Spans only for events a sampled producer trace asked for: untraced traffic must not
        # pay for a span per memory. The span continues the first traced event's trace (so one
        # trace shows an append, its flush and the flush's application) and links the others.
        traced = [
            (rec, link)
            for rec in w.records[:32]
            if rec.headers and (link := sampled_link(rec.headers)) is not None
        ]
        span_cm = (
            self.telemetry.tracer.start_as_current_span(
                "memstream.apply",
                context=extract_context(traced[0][0].headers),
                links=[link for _, link in traced[1:]],
                attributes={
                    "memstream.memory_id": w.memory_id,
                    "memstream.events": len(w.batch_events),
                    "memstream.flushes_requested": len(outcome.result.flush_requests),
                },
            )
            if traced
            else contextlib.nullcontext()
        )
        with span_cm:
            applied = tokens = 0
            oldest = _NEVER
            # One result per event, in the events' order. Counted in locals, added to the
            # report once per memory.
            for r, rec, logged in zip(
                outcome.result.results, w.records, w.batch_events, strict=True
            ):
                if r.outcome is _APPLIED:
                    applied += 1
                    event = logged.event
                    if isinstance(event, MessageAppended):
                        message = event.message
                        tokens += message.tokens
                        if message.created_at_ms < oldest:
                            oldest = message.created_at_ms
                elif r.outcome is _DUPLICATE_OFFSET or r.outcome is _DUPLICATE_ID:
                    report.duplicates += 1
                elif r.outcome is _REJECTED and r.reason is not None:
                    dead.append((rec, r.reason, r.detail))
                if r.tokens_saved:
                    report.tokens_saved += r.tokens_saved
                    report.flushes_completed += 1
                if r.evicted:
                    report.evicted += len(r.evicted)
                    report.tokens_evicted += sum(m.tokens for m in r.evicted)
            if applied:
                report.applied += applied
                report.applied_by_memory[w.memory_id] += applied
                report.tokens_appended += tokens
                report.oldest_event_ms = min(report.oldest_event_ms, oldest)
            state = outcome.result.state
            for seq in outcome.result.flush_requests:
                report.flushes_requested += 1
                command = {
                    "command_id": f"{outcome.memory_key}:{seq}",
                    "memory_key": outcome.memory_key,
                    "memory_id": w.memory_id,
                    "flush_seq": seq,
                    "requested_at": now_ms,
                    "source_offset": state.flush_offset,
                }
                # The command carries the trace of the event that requested the flush.
                origin = next((r for r in w.records if r.offset == state.flush_offset), None)
                headers = list(origin.headers or ()) if origin is not None else []
                value = self.codec.encode(FLUSH_COMMAND, command)
                out.append((self.settings.flush_topic, outcome.memory_key.encode(), value, headers))

    def _metrics(self, report: BatchReport, latency_ms: float) -> None:
        """Record one batch's metrics: one call per instrument, not one per event."""
        t = self.telemetry
        for memory_id, count in report.applied_by_memory.items():
            t.events_applied.add(count, {"memory_id": memory_id})
        if report.duplicates:
            t.events_deduplicated.add(report.duplicates)
        if report.tokens_appended:
            t.tokens_appended.add(report.tokens_appended)
        if report.evicted:
            t.evictions.add(report.evicted)
            t.tokens_evicted.add(report.tokens_evicted)
        if report.tokens_saved:
            t.tokens_saved.add(report.tokens_saved)
            t.flushes_completed.add(report.flushes_completed)
        if report.flushes_requested:
            t.flushes_requested.add(report.flushes_requested)
        if report.oldest_event_ms < _NEVER:
            # End-to-end latency of the batch's oldest event: the worst of the batch.
            t.end_to_end_latency.record(
                max(time.time_ns() // 1_000_000 - report.oldest_event_ms, 0)
            )
        t.batch_size.record(report.records)
        t.apply_latency.record(latency_ms)

    async def _send_all(
        self, out: Sequence[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]
    ) -> None:
        if not out:
            return
        producer = self._producer
        if producer is None:
            raise RuntimeError("ApplyConsumer is stopped")
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in out
        ]
        await asyncio.gather(*futures)


def _accumulate(total: BatchReport, r: BatchReport) -> None:
    for name in (
        "records",
        "applied",
        "duplicates",
        "dead_lettered",
        "evicted",
        "flushes_requested",
        "flushes_completed",
        "tokens_saved",
        "tokens_appended",
        "tokens_evicted",
        "decoded_ahead",
        "refetched",
    ):
        setattr(total, name, getattr(total, name) + getattr(r, name))
