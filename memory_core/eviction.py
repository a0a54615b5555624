"""TokenMemoryManager: applies events to a memory under its budget (allocation + FIFO eviction)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from datetime import timedelta
from enum import StrEnum

from memory_core.config import DEFAULT_FLUSH_RETRY_AFTER, Budget
from memory_core.errors import DeadLetterReason
from memory_core.flushing import FlushRule
from memory_core.models import (
    CATEGORIES,
    Category,
    FlushRequested,
    LoggedEvent,
    MemoryCleared,
    MemoryFlushed,
    MemoryState,
    Message,
    MessageAppended,
    Role,
)
from memory_core.toolcalls import has_caller, tool_unit
from memory_core.values import Value, replace

DEFAULT_ID_WINDOW = 256
# Batches of at most this many events look event ids up in the window without a set.
_FEW_EVENTS = 4
REJECTION_WINDOW = 64


class Outcome(StrEnum):
    """What applying one event did."""

    APPLIED = "applied"
    DUPLICATE_OFFSET = "duplicate_offset"
    DUPLICATE_ID = "duplicate_id"
    REJECTED = "rejected"
    STALE_FLUSH = "stale_flush"


class EventResult(Value, frozen=True):
    """The outcome of one event; ``reason`` is set when it was rejected."""

    offset: int
    event_id: str
    outcome: Outcome
    reason: DeadLetterReason | None = None
    detail: str = ""
    evicted: tuple[Message, ...] = ()
    # For an applied flush result: > 0 (a result that would save nothing is a stale flush).
    tokens_saved: int = 0
    # A rejection repeated because its event was redelivered (the state did not change).
    redelivered: bool = False


class ApplyResult(Value, frozen=True):
    """The state after a batch, per-event outcomes, and the flush sequences requested.

    ``flush_requests`` may repeat a pending sequence: when its requesting event is redelivered,
    and when the flush is retried (still pending ``retry_after`` after it was requested).
    """

    state: MemoryState
    results: tuple[EventResult, ...]
    flush_requests: tuple[int, ...]
    # ``state.tokens_by_category()``, as the manager counted it along.
    tokens: dict[Category, int]

    @property
    def evicted(self) -> tuple[Message, ...]:
        """Every message evicted by the batch, in eviction order."""
        return tuple(m for r in self.results for m in r.evicted)

    @property
    def applied(self) -> int:
        """How many events changed (or were meant to change) the memory."""
        return sum(1 for r in self.results if r.outcome is Outcome.APPLIED)


# Members as module names: cheaper on the per-event path (see memory_core.models).
_APPLIED, _REJECTED = Outcome.APPLIED, Outcome.REJECTED
_DUPLICATE_OFFSET, _DUPLICATE_ID = Outcome.DUPLICATE_OFFSET, Outcome.DUPLICATE_ID
_STALE = Outcome.STALE_FLUSH
# How a duplicate-id skip is recorded among the recent rejections (not a dead-letter reason).
DUPLICATE_ID_ENTRY = Outcome.DUPLICATE_ID.value
_TOOL, _SHORT = Role.TOOL, Category.SHORT_TERM


class _Work:
    """Mutable working copy of a state while one batch is applied."""

    def __init__(
        self, state: MemoryState, totals: Mapping[Category, int] | None, few: bool
    ) -> None:
        self.messages = list(state.messages)
        self.ids = {m.id for m in state.messages}
        self.totals = dict(totals) if totals is not None else state.tokens_by_category()
        self.last_offset = state.last_offset
        self.recent_ids = list(state.recent_event_ids)
        # For a few events, scanning the window (in C) is cheaper than hashing all of it:
        # the live case, one event per memory per batch.
        self.recent_set: set[str] | None = None if few else set(state.recent_event_ids)
        self.flush_seq = state.flush_seq
        self.flush_pending = state.flush_pending
        self.flush_offset = state.flush_offset
        self.flush_requested_at_ms = state.flush_requested_at_ms
        self.last_flush_at_ms = state.last_flush_at_ms
        self.last_tokens_saved = state.last_tokens_saved
        self.tokens_saved_total = state.tokens_saved_total
        self.rejections = list(state.recent_rejections)
        # Every budget and the message cap held after the last eviction check: then an
        # append needs to check only its own category and the cap. False until checked once
        # (a stored state can exceed a budget that was lowered since).
        self.within = False

    def short_messages(self) -> int:
        return sum(1 for m in self.messages if m.category is _SHORT)

    def freeze(self) -> MemoryState:
        return MemoryState(
            messages=tuple(self.messages),
            last_offset=self.last_offset,
            recent_event_ids=tuple(self.recent_ids),
            flush_seq=self.flush_seq,
            flush_pending=self.flush_pending,
            flush_offset=self.flush_offset,
            flush_requested_at_ms=self.flush_requested_at_ms,
            last_flush_at_ms=self.last_flush_at_ms,
            last_tokens_saved=self.last_tokens_saved,
            tokens_saved_total=self.tokens_saved_total,
            recent_rejections=tuple(self.rejections),
        )

    def remove(self, indices: list[int]) -> list[Message]:
        if len(indices) == 1:
            m = self.messages.pop(indices[0])
            self.totals[m.category] -= m.tokens
            self.ids.discard(m.id)
            return [m]
        gone = sorted(set(indices))
        removed = [self.messages[i] for i in gone]
        for i in reversed(gone):
            del self.messages[i]
        for m in removed:
            self.totals[m.category] -= m.tokens
            self.ids.discard(m.id)
        return removed


class TokenMemoryManager:
    """Applies logged events to a ``MemoryState``: deterministic, pure, no I/O."""

    def __init__(
        self,
        budget: Budget,
        *,
        flush_threshold: float = 0.8,
        id_window: int = DEFAULT_ID_WINDOW,
        flush_retry_after: timedelta = DEFAULT_FLUSH_RETRY_AFTER,
    ) -> None:
        self.budget = budget
        self.flush_threshold = flush_threshold
        self.id_window = id_window
        self.flush_retry_after = flush_retry_after
        # Whole milliseconds, as the events' times are.
        self._retry_ms = flush_retry_after // timedelta(milliseconds=1)
        self._limits = {c: budget.of(c) for c in CATEGORIES}
        self._flush_rule = FlushRule(budget, flush_threshold)

    def apply(
        self,
        state: MemoryState,
        events: Iterable[LoggedEvent],
        *,
        totals: Mapping[Category, int] | None = None,
    ) -> ApplyResult:
        """Apply ``events`` in order; the same state and events always give the same result.

        ``totals``, when given, must be ``state.tokens_by_category()`` (a caller that kept
        the last result's ``tokens`` saves counting them again).
        """
        few = isinstance(events, Sized) and len(events) <= _FEW_EVENTS
        work = _Work(state, totals, few)
        results: list[EventResult] = []
        flushes: list[int] = []
        for logged in events:
            offset = logged.offset
            redelivered = offset <= work.last_offset
            result = self._decide(work, logged)
            outcome = result.outcome
            if outcome is _REJECTED:
                if result.reason is not None and not result.redelivered:
                    work.rejections.append((offset, result.reason.value))
                    del work.rejections[:-REJECTION_WINDOW]
            elif outcome is _DUPLICATE_ID:
                work.rejections.append((offset, DUPLICATE_ID_ENTRY))
                del work.rejections[:-REJECTION_WINDOW]
            results.append(result)
            if redelivered:
                if work.flush_pending and offset == work.flush_offset:
                    # Redelivery of the event that requested the pending flush: request it
                    # again (same sequence; the dispatcher collapses duplicates by workflow id).
                    flushes.append(work.flush_seq)
            elif work.flush_pending:
                requested = work.flush_requested_at_ms
                if requested is None or logged.at_ms >= requested + self._retry_ms:
                    # Still pending retry_after later (its workflow failed, or its command was
                    # lost): request it again, from this event.
                    work.flush_offset = offset
                    work.flush_requested_at_ms = logged.at_ms
                    flushes.append(work.flush_seq)
            elif self._should_request_flush(
                work, forced=outcome is _APPLIED and isinstance(logged.event, FlushRequested)
            ):
                work.flush_seq += 1
                work.flush_pending = True
                work.flush_offset = offset
                work.flush_requested_at_ms = logged.at_ms
                flushes.append(work.flush_seq)
        return ApplyResult(work.freeze(), tuple(results), tuple(flushes), dict(work.totals))

    def _should_request_flush(self, work: _Work, *, forced: bool = False) -> bool:
        return self._flush_rule.due(
            work.totals[_SHORT] if not forced else None, work.short_messages, work.flush_pending
        )

    def _decide(self, work: _Work, logged: LoggedEvent) -> EventResult:
        event = logged.event
        if logged.offset <= work.last_offset:
            for offset, reason in work.rejections:
                if offset == logged.offset and reason != DUPLICATE_ID_ENTRY:
                    # Rejected before: reject again (re-dead-letter), record nothing new.
                    return EventResult(
                        offset,
                        event.event_id,
                        Outcome.REJECTED,
                        DeadLetterReason(reason),
                        "rejected when first applied; dead-lettered again on redelivery",
                        redelivered=True,
                    )
            return EventResult(logged.offset, event.event_id, _DUPLICATE_OFFSET)
        work.last_offset = logged.offset
        recent_set = work.recent_set
        event_id = event.event_id
        if event_id in (work.recent_ids if recent_set is None else recent_set):
            return EventResult(logged.offset, event_id, _DUPLICATE_ID)
        work.recent_ids.append(event_id)
        if recent_set is not None:
            recent_set.add(event_id)
        if len(work.recent_ids) > self.id_window:
            oldest = work.recent_ids.pop(0)
            if recent_set is not None:
                recent_set.discard(oldest)
        if isinstance(event, MessageAppended):
            return self._append(work, logged.offset, event)
        if isinstance(event, FlushRequested):
            return EventResult(logged.offset, event.event_id, Outcome.APPLIED)
        if isinstance(event, MemoryCleared):
            work.messages.clear()
            work.ids.clear()
            work.totals = dict.fromkeys(CATEGORIES, 0)
            work.flush_pending = False
            return EventResult(logged.offset, event.event_id, Outcome.APPLIED)
        return self._flushed(work, logged.offset, event)

    def _reject(
        self, offset: int, event_id: str, reason: DeadLetterReason, detail: str
    ) -> EventResult:
        return EventResult(offset, event_id, Outcome.REJECTED, reason, detail)

    def _append(self, work: _Work, offset: int, event: MessageAppended) -> EventResult:
        msg = event.message
        limit = self._limits[msg.category]
        if msg.tokens > limit:
            return self._reject(
                offset,
                event.event_id,
                DeadLetterReason.OVERSIZED_MESSAGE,
                f"message {msg.id} costs {msg.tokens} tokens, its {msg.category.value} "
                f"budget is {limit}",
            )
        if msg.id in work.ids:
            return self._reject(
                offset,
                event.event_id,
                DeadLetterReason.DUPLICATE_MESSAGE_ID,
                f"message id {msg.id} is already in memory",
            )
        if msg.role is _TOOL and not has_caller(work.messages, msg.tool_call_id):
            return self._reject(
                offset,
                event.event_id,
                DeadLetterReason.ORPHAN_TOOL_RESULT,
                f"tool result {msg.id} answers call {msg.tool_call_id!r}, "
                "which no assistant message in memory made",
            )
        work.messages.append(msg)
        work.ids.add(msg.id)
        totals = work.totals
        totals[msg.category] += msg.tokens
        cap = self.budget.max_messages
        if (
            work.within
            and totals[msg.category] <= limit
            and (cap is None or len(work.messages) <= cap)
        ):
            return EventResult(offset, event.event_id, _APPLIED)  # within budget: the common case
        return EventResult(offset, event.event_id, _APPLIED, evicted=tuple(self._evict(work)))

    def _flushed(self, work: _Work, offset: int, event: MemoryFlushed) -> EventResult:
        seq = event.flush_seq
        if seq > work.flush_seq:
            return self._reject(
                offset,
                event.event_id,
                DeadLetterReason.UNREQUESTED_FLUSH,
                f"flush {seq} was never requested (the last requested is {work.flush_seq})",
            )
        if seq < work.flush_seq or not work.flush_pending:
            # A result of an older flush, or of one that ended (applied, or cleared meanwhile).
            return EventResult(offset, event.event_id, _STALE)
        # The pending flush ended, however its result fares below.
        work.flush_pending = False
        summary = event.summary
        if summary is None:
            return EventResult(offset, event.event_id, Outcome.APPLIED)
        if summary.tokens > self.budget.long_term:
            return self._reject(
                offset,
                event.event_id,
                DeadLetterReason.OVERSIZED_MESSAGE,
                f"summary {summary.id} costs {summary.tokens} tokens, the long_term budget "
                f"is {self.budget.long_term}",
            )
        covered = set(summary.covers)
        present = [i for i, m in enumerate(work.messages) if m.id in covered]
        if not present:
            return EventResult(offset, event.event_id, _STALE)
        saved = sum(work.messages[i].tokens for i in present) - summary.tokens
        if saved <= 0:
            # Most of what it covered was evicted meanwhile: it would not make memory smaller.
            return EventResult(offset, event.event_id, _STALE)
        if summary.id in work.ids and summary.id not in covered:
            return self._reject(
                offset,
                event.event_id,
                DeadLetterReason.DUPLICATE_MESSAGE_ID,
                f"summary id {summary.id} is already in memory",
            )
        removed_ids = {work.messages[i].id for i in present}
        # A tool result that arrived after the flush's snapshot would lose its caller: it leaves
        # with the caller, as an eviction.
        orphans = [
            i
            for i, m in enumerate(work.messages)
            if m.role is Role.TOOL
            and m.id not in removed_ids
            and any(
                work.messages[j].role is Role.ASSISTANT
                and any(c.id == m.tool_call_id for c in work.messages[j].tool_calls)
                for j in present
            )
        ]
        # Orphans follow their caller, so they all sit after present[0]: the position holds.
        position = present[0]
        gone = work.remove(present + orphans)
        removed = [m for m in gone if m.id in removed_ids]
        evicted = [m for m in gone if m.id not in removed_ids]
        stored = replace(summary, covers=tuple(m.id for m in removed))
        work.messages.insert(position, stored)
        work.ids.add(stored.id)
        work.totals[Category.LONG_TERM] += stored.tokens
        work.last_flush_at_ms = event.created_at_ms
        work.last_tokens_saved = saved
        work.tokens_saved_total += saved
        evicted.extend(self._evict(work))
        return EventResult(
            offset, event.event_id, Outcome.APPLIED, evicted=tuple(evicted), tokens_saved=saved
        )

    def _evict(self, work: _Work) -> list[Message]:
        """Evict oldest first until every budget and the cap hold again (``work.within``)."""
        evicted: list[Message] = []
        totals = work.totals
        cap = self.budget.max_messages
        work.within = True
        for category, limit in self._limits.items():
            if totals[category] > limit:
                break
        else:
            if cap is None or len(work.messages) <= cap:
                return evicted
        for category, limit in self._limits.items():
            while totals[category] > limit:
                oldest = next(i for i, m in enumerate(work.messages) if m.category is category)
                evicted.extend(work.remove(tool_unit(work.messages, oldest)))
        if cap is not None:
            while len(work.messages) > cap:
                oldest = next(
                    (i for i, m in enumerate(work.messages) if m.category is not Category.SYSTEM),
                    0,
                )
                evicted.extend(work.remove(tool_unit(work.messages, oldest)))
        return evicted
