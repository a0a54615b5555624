"""A reference model of docs/semantics.md ("Applying events"), written from the doc alone.

It shares only the data types of ``memory_core.models`` (and ``Budget`` as a record of four
numbers); every rule is re-implemented here as literally as the doc states it: plain lists,
linear scans, exact arithmetic for ``threshold × budget``. Property tests compare
``TokenMemoryManager`` with it event by event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction

import msgspec

from memory_core.config import Budget
from memory_core.models import (
    FlushRequested,
    Kind,
    LoggedEvent,
    MemoryCleared,
    MemoryEvent,
    MemoryFlushed,
    MemoryState,
    Message,
    MessageAppended,
    Role,
)

WINDOW = 256  # W
ORDER = ("system", "short_term", "long_term")
REJECTION_WINDOW = 64  # R
DEAD_LETTER_REASONS = (
    "oversized_message",
    "duplicate_message_id",
    "orphan_tool_result",
    "unrequested_flush",
)


@dataclass(frozen=True)
class RefResult:
    """What one event did: outcome and reason as the doc names them, evicted ids in order."""

    outcome: str
    reason: str | None = None
    evicted: tuple[str, ...] = ()
    redelivered: bool = False
    tokens_saved: int = 0


def category(m: Message) -> str:
    """`long_term` if a summary; else `system` if role system; else `short_term`."""
    if m.kind is Kind.SUMMARY:
        return "long_term"
    if m.role is Role.SYSTEM:
        return "system"
    return "short_term"


def position(messages: list[Message], m: Message) -> int:
    """Where ``m`` itself is in ``messages`` (by identity: equal copies stay distinct)."""
    return next(i for i, x in enumerate(messages) if x is m)


def without(messages: list[Message], gone: list[Message]) -> list[Message]:
    """``messages`` minus the very objects in ``gone``."""
    return [x for x in messages if all(x is not g for g in gone)]


def unit(messages: list[Message], m: Message) -> list[Message]:
    """The tool unit of ``m``: a caller with every later result of its calls, in memory order."""
    if m.role is Role.ASSISTANT and m.tool_calls:
        calls = {c.id for c in m.tool_calls}
        after = messages[position(messages, m) + 1 :]
        return [m] + [t for t in after if t.role is Role.TOOL and t.tool_call_id in calls]
    if m.role is Role.TOOL:
        callers = [
            a
            for a in messages[: position(messages, m)]
            if a.role is Role.ASSISTANT and any(c.id == m.tool_call_id for c in a.tool_calls)
        ]
        if callers:
            return unit(messages, callers[-1])
    return [m]


@dataclass
class ReferenceMemory:
    """One memory's state and the flush sequences requested so far."""

    budget: Budget
    threshold: float
    window: int = WINDOW
    retry_after: timedelta = timedelta(minutes=5)
    messages: list[Message] = field(default_factory=list)
    last_offset: int = -1
    recent_event_ids: list[str] = field(default_factory=list)
    flush_seq: int = 0
    flush_pending: bool = False
    flush_offset: int = -1
    flush_requested_at_ms: int | None = None
    last_flush_at_ms: int | None = None
    last_tokens_saved: int = 0
    tokens_saved_total: int = 0
    recent_rejections: list[tuple[int, str]] = field(default_factory=list)
    flush_requests: list[int] = field(default_factory=list)

    def state(self) -> MemoryState:
        """The state as the code's ``MemoryState`` record, for comparison."""
        return MemoryState(
            messages=tuple(self.messages),
            last_offset=self.last_offset,
            recent_event_ids=tuple(self.recent_event_ids),
            flush_seq=self.flush_seq,
            flush_pending=self.flush_pending,
            flush_offset=self.flush_offset,
            flush_requested_at_ms=self.flush_requested_at_ms,
            last_flush_at_ms=self.last_flush_at_ms,
            last_tokens_saved=self.last_tokens_saved,
            tokens_saved_total=self.tokens_saved_total,
            recent_rejections=tuple(self.recent_rejections),
        )

    def budget_of(self, c: str) -> int:
        return {
            "system": self.budget.system,
            "short_term": self.budget.short_term,
            "long_term": self.budget.long_term,
        }[c]

    def tokens_of(self, c: str) -> int:
        return sum(m.tokens for m in self.messages if category(m) == c)

    # -- the event loop --------------------------------------------------------------------------

    def apply_all(self, events: list[LoggedEvent]) -> list[RefResult]:
        """Apply ``events`` one at a time, in log order."""
        return [self.apply(e) for e in events]

    def apply(self, logged: LoggedEvent) -> RefResult:
        """Steps 1-5 of "Applying events" for one event."""
        offset, event = logged.offset, logged.event
        # 1. Offset check: a redelivery changes nothing; a dead-lettered one is rejected again;
        # the one at flush_offset requests the pending flush again.
        if offset <= self.last_offset:
            result = RefResult("duplicate_offset")
            for o, reason in self.recent_rejections:
                if o == offset and reason in DEAD_LETTER_REASONS:
                    result = RefResult("rejected", reason, redelivered=True)
            if self.flush_pending and offset == self.flush_offset:
                self.flush_requests.append(self.flush_seq)
            return result
        # 2. Id check.
        self.last_offset = offset
        if event.event_id in self.recent_event_ids:
            result = RefResult("duplicate_id")
            self._record(offset, "duplicate_id")
        else:
            self.recent_event_ids = [*self.recent_event_ids, event.event_id][-self.window :]
            # 3. The event itself; a rejection is recorded.
            result = self._event(event)
            if result.outcome == "rejected":
                assert result.reason is not None
                self._record(offset, result.reason)
        # 4. The flush rule; an applied FlushRequested skips the threshold.
        forced = result.outcome == "applied" and isinstance(event, FlushRequested)
        short = [m for m in self.messages if category(m) == "short_term"]
        limit = math.ceil(Fraction(str(self.threshold)) * self.budget.short_term)
        if (
            not self.flush_pending
            and self.budget.short_term > 0
            and (forced or sum(m.tokens for m in short) >= limit)
            and len(short) >= 2
        ):
            self.flush_seq += 1
            self.flush_pending = True
            self.flush_offset = offset
            self.flush_requested_at_ms = logged.at_ms
            self.flush_requests.append(self.flush_seq)
        # 5. The flush retry.
        elif self.flush_pending and (
            self.flush_requested_at_ms is None
            or logged.at_ms >= self.flush_requested_at_ms + self.retry_after_ms()
        ):
            self.flush_requests.append(self.flush_seq)
            self.flush_offset = offset
            self.flush_requested_at_ms = logged.at_ms
        return result

    def retry_after_ms(self) -> int:
        """``flushing.retry_after`` in whole milliseconds."""
        return math.floor(self.retry_after / timedelta(milliseconds=1))

    def _record(self, offset: int, reason: str) -> None:
        """Append to ``recent_rejections``, dropping the oldest past R."""
        self.recent_rejections = [*self.recent_rejections, (offset, reason)][-REJECTION_WINDOW:]

    def _event(self, event: MemoryEvent) -> RefResult:
        if isinstance(event, MessageAppended):
            return self._append(event.message)
        if isinstance(event, FlushRequested):
            return RefResult("applied")
        if isinstance(event, MemoryCleared):
            self.messages = []
            self.flush_pending = False
            return RefResult("applied")
        assert isinstance(event, MemoryFlushed)
        return self._flushed(event)

    def _append(self, m: Message) -> RefResult:
        if m.tokens > self.budget_of(category(m)):
            return RefResult("rejected", "oversized_message")
        if any(x.id == m.id for x in self.messages):
            return RefResult("rejected", "duplicate_message_id")
        if m.role is Role.TOOL and not any(
            a.role is Role.ASSISTANT and any(c.id == m.tool_call_id for c in a.tool_calls)
            for a in self.messages
        ):
            return RefResult("rejected", "orphan_tool_result")
        self.messages.append(m)
        return RefResult("applied", evicted=tuple(x.id for x in self._evict()))

    def _flushed(self, event: MemoryFlushed) -> RefResult:
        s = event.flush_seq
        # 1. Never requested.
        if s > self.flush_seq:
            return RefResult("rejected", "unrequested_flush")
        # 2. An older flush, or one no longer pending.
        if s < self.flush_seq or not self.flush_pending:
            return RefResult("stale_flush")
        # 3. The pending flush's result: it ends first, whatever follows.
        self.flush_pending = False
        summary = event.summary
        if summary is None:
            return RefResult("applied")
        if summary.tokens > self.budget.long_term:
            return RefResult("rejected", "oversized_message")
        present = [m for m in self.messages if m.id in summary.covers]
        saved = sum(m.tokens for m in present) - summary.tokens
        if not present or saved <= 0:
            return RefResult("stale_flush")
        if any(m.id == summary.id for m in self.messages) and summary.id not in summary.covers:
            return RefResult("rejected", "duplicate_message_id")
        removed_calls = {c.id for m in present if m.role is Role.ASSISTANT for c in m.tool_calls}
        orphans = [
            m
            for m in self.messages
            if m.role is Role.TOOL
            and m.tool_call_id in removed_calls
            and all(m is not p for p in present)
        ]
        stored = msgspec.structs.replace(summary, covers=tuple(m.id for m in present))
        at = position(self.messages, present[0])
        kept = without(self.messages, present + orphans)
        # Everything before the first covered message stays, so it keeps its position.
        self.messages = [*kept[:at], stored, *kept[at:]]
        self.last_flush_at_ms = event.created_at_ms
        self.last_tokens_saved = saved
        self.tokens_saved_total += saved
        evicted = orphans + self._evict()
        return RefResult("applied", evicted=tuple(x.id for x in evicted), tokens_saved=saved)

    def _evict(self) -> list[Message]:
        evicted: list[Message] = []

        def remove_unit(m: Message) -> None:
            gone = unit(self.messages, m)
            evicted.extend(gone)
            self.messages = without(self.messages, gone)

        for c in ORDER:
            while self.tokens_of(c) > self.budget_of(c):
                remove_unit(next(m for m in self.messages if category(m) == c))
        cap = self.budget.max_messages
        while cap is not None and len(self.messages) > cap:
            non_system = [m for m in self.messages if category(m) != "system"]
            remove_unit(non_system[0] if non_system else self.messages[0])
        return evicted
