"""What a batch did: write outcomes into the batch report, spans, outputs and metrics."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition
from opentelemetry.trace import SpanKind

from consumers.apply.decoding import KeyWork
from consumers.apply.outputs import BatchOutputs
from consumers.telemetry import (
    Telemetry,
    consumer_attributes,
    extract_context,
    redis_attributes,
    sampled_link,
)
from memory_core import ApplyResult, MessageAppended, Outcome
from memory_core.redis import KeyOutcome

NEVER = 2**63
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
    oldest_event_ms: int = NEVER
    applied_by_memory: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    created_by_memory: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    # How long each memory that found its lock held by another owner waited for it (s).
    lock_waits: list[float] = field(default_factory=list)
    dead_by_reason: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    retried_partitions: list[TopicPartition] = field(default_factory=list)
    # Records the previous step had decoded already (while its own writes finished).
    decoded_ahead: int = 0
    # Records fetched ahead for the next batch but dropped: their partition was rewound.
    refetched: int = 0


_SUMMED = (
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
)


def accumulate(total: BatchReport, r: BatchReport) -> None:
    """Add the counts of ``r`` to ``total``."""
    for name in _SUMMED:
        setattr(total, name, getattr(total, name) + getattr(r, name))
    for reason, n in r.dead_by_reason.items():
        total.dead_by_reason[reason] += n


@dataclass(slots=True, frozen=True)
class WriteTiming:
    """When a batch began and when its write of one partition ran (``time.time_ns()``)."""

    batch_started: int
    write_started: int
    write_ended: int


def account(
    outcome: KeyOutcome,
    w: KeyWork,
    report: BatchReport,
    outputs: BatchOutputs,
    telemetry: Telemetry,
    group: str = "",
    timing: WriteTiming | None = None,
) -> None:
    """Record an applied memory's outcome: counts, rejections to dead-letter, flush commands.

    Spans only for events a sampled producer trace asked for: untraced traffic must not pay
    for a span per memory. The span continues the first traced event's trace (so one trace
    shows an append, its flush and the flush's application) and links the others; it begins
    with the batch, and its child span is the Redis write of the memory's partition.
    """
    result = outcome.result
    assert result is not None
    if outcome.lock_wait_s:
        report.lock_waits.append(outcome.lock_wait_s)
    if outcome.created:
        report.created_by_memory[w.memory_id] += 1
    traced = [
        (rec, link)
        for rec in w.records[:32]
        if rec.headers and (link := sampled_link(rec.headers)) is not None
    ]
    span_cm = (
        telemetry.tracer.start_as_current_span(
            "memstream.apply",
            context=extract_context(traced[0][0].headers),
            links=[link for _, link in traced[1:]],
            kind=SpanKind.CONSUMER,
            attributes={
                **consumer_attributes(w.partition, group, w.records[0].offset, len(w.events)),
                "memstream.memory_id": w.memory_id,
                "memstream.events": len(w.events),
                "memstream.flushes_requested": len(result.flush_requests),
            },
            start_time=timing.batch_started if timing is not None else None,
        )
        if traced
        else contextlib.nullcontext()
    )
    with span_cm:
        if traced and timing is not None:
            telemetry.tracer.start_span(
                "memstream.redis.write",
                kind=SpanKind.CLIENT,
                attributes=redis_attributes(len(w.events), outcome.lock_wait_s),
                start_time=timing.write_started,
            ).end(end_time=timing.write_ended)
        _account(outcome, result, w, report, outputs)


def _account(
    outcome: KeyOutcome,
    result: ApplyResult,
    w: KeyWork,
    report: BatchReport,
    outputs: BatchOutputs,
) -> None:
    applied = tokens = 0
    oldest = NEVER
    # One result per event, in the events' order. Counted in locals, added to the report
    # once per memory.
    for r, rec, logged in zip(result.results, w.records, w.events, strict=True):
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
            outputs.dead_letter(rec, r.reason, r.detail)
            report.dead_lettered += 1
            report.dead_by_reason[r.reason.value] += 1
        if r.tokens_saved > 0:
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
    if result.flush_requests:
        now_ms = time.time_ns() // 1_000_000
        state = result.state
        # The command carries the trace of the event that requested the flush.
        origin = next((r for r in w.records if r.offset == state.flush_offset), None)
        headers = list(origin.headers or ()) if origin is not None else []
        for seq in result.flush_requests:
            report.flushes_requested += 1
            outputs.flush_command(
                outcome.memory_key,
                w.memory_id,
                seq,
                requested_at_ms=now_ms,
                source_offset=state.flush_offset,
                headers=headers,
            )


def record_metrics(telemetry: Telemetry, report: BatchReport, latency_ms: float) -> None:
    """Record one batch's metrics: one call per instrument, not one per event."""
    t = telemetry
    for memory_id, count in report.applied_by_memory.items():
        t.events_applied.add(count, {"memory_id": memory_id})
    for reason, count in report.dead_by_reason.items():
        t.events_dead_lettered.add(count, {"reason": reason})
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
    if report.oldest_event_ms < NEVER:
        # End-to-end latency of the batch's oldest event: the worst of the batch.
        age_ms = max(time.time_ns() // 1_000_000 - report.oldest_event_ms, 0)
        t.end_to_end_latency.record(age_ms / 1000)
    for name, count in report.created_by_memory.items():
        t.memories_created.add(count, {"memory_id": name})
    for wait in report.lock_waits:
        t.record_lock_wait(wait, acquired=True)
    t.batch_size.record(report.records)
    t.apply_latency.record(latency_ms / 1000)
