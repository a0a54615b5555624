"""Hypothesis strategies and small builders for memory tests.

Messages carry their ``tokens`` directly (the manager trusts the stored count), so the
strategies can aim at budget edges without going through a tokenizer. Thresholds are dyadic
fractions (exact in binary), so a product ``threshold × budget`` means the same thing in
floating point and in exact arithmetic; float rounding has its own example tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import pairwise

from hypothesis import strategies as st

from memory_core import (
    Budget,
    Category,
    FlushRequested,
    Kind,
    LoggedEvent,
    MemoryCleared,
    MemoryConfig,
    MemoryEvent,
    MemoryFlushed,
    Message,
    MessageAppended,
    Role,
    TokenMemoryManager,
    ToolCall,
    parse_config,
)
from memory_core.values import replace
from tests.reference_model import ReferenceMemory

# --- builders ----------------------------------------------------------------------------------


def message(
    id: str,
    role: Role | str = Role.USER,
    tokens: int = 10,
    *,
    content: str | None = None,
    name: str | None = None,
    calls: Sequence[str] = (),
    answers: str | None = None,
    kind: Kind = Kind.MESSAGE,
    covers: Sequence[str] = (),
    created_at_ms: int = 0,
) -> Message:
    """A message with ``tokens`` stored as given; ``calls`` are tool-call ids it makes."""
    return Message(
        id=id,
        role=Role(role),
        content=f"content of {id}" if content is None else content,
        tokens=tokens,
        created_at_ms=created_at_ms,
        kind=kind,
        name=name,
        tool_call_id=answers,
        tool_calls=tuple(ToolCall(id=c, name=f"fn_{c}", arguments="{}") for c in calls),
        covers=tuple(covers),
    )


def summary(id: str, tokens: int, covers: Sequence[str], *, content: str = "summary") -> Message:
    """A summary message as a flush would write it."""
    return message(
        id, Role.SYSTEM, tokens, content=content, kind=Kind.SUMMARY, covers=tuple(covers)
    )


def appended(msg: Message, event_id: str | None = None) -> MessageAppended:
    """The event appending ``msg`` (event id derived from the message id unless given)."""
    return MessageAppended(event_id=event_id or f"ev-{msg.id}", message=msg)


def flushed(
    flush_seq: int,
    summary_msg: Message | None,
    *,
    event_id: str | None = None,
    created_at_ms: int = 1_000,
) -> MemoryFlushed:
    """The event carrying a flush result."""
    return MemoryFlushed(
        event_id=event_id or f"flush-{flush_seq}-{summary_msg.id if summary_msg else 'none'}",
        flush_seq=flush_seq,
        summary=summary_msg,
        created_at_ms=created_at_ms,
    )


def cleared(event_id: str = "clear") -> MemoryCleared:
    """The event clearing a memory."""
    return MemoryCleared(event_id=event_id)


def log(*events: MemoryEvent, start: int = 0) -> list[LoggedEvent]:
    """``events`` at consecutive offsets from ``start``."""
    return [LoggedEvent(offset=start + i, event=e) for i, e in enumerate(events)]


def budget(
    system: int = 100,
    short_term: int = 100,
    long_term: int = 100,
    max_messages: int | None = None,
) -> Budget:
    """A budget given per category."""
    return Budget(
        max_tokens=system + short_term + long_term,
        system=system,
        short_term=short_term,
        long_term=long_term,
        max_messages=max_messages,
    )


# --- configs and budgets -----------------------------------------------------------------------

# Token allocations that sum to exactly 1 in binary floating point.
ALLOCATIONS: tuple[tuple[float, float, float], ...] = (
    (0.125, 0.625, 0.25),
    (0.25, 0.5, 0.25),
    (0.0, 1.0, 0.0),
    (0.0, 0.75, 0.25),
    (0.5, 0.25, 0.25),
    (0.25, 0.75, 0.0),
)

thresholds = st.sampled_from((0.25, 0.5, 0.625, 0.75, 0.875, 1.0))


@st.composite
def budgets(draw: st.DrawFn) -> Budget:
    """Budgets from none to roomy, some with a message cap."""
    return budget(
        system=draw(st.integers(0, 60)),
        short_term=draw(st.integers(0, 150)),
        long_term=draw(st.integers(0, 80)),
        max_messages=draw(st.none() | st.integers(1, 12)),
    )


@st.composite
def memory_configs(draw: st.DrawFn) -> MemoryConfig:
    """Valid memory configs with dyadic allocations and varied flushing settings."""
    system, short, long_ = draw(st.sampled_from(ALLOCATIONS))
    return parse_config(
        {
            "id": "prop",
            "key": "agent:{agent_id}:user:{user_id}",
            "model": draw(st.sampled_from(["gpt-4o", "gpt-4", "gpt-4.1"])),
            "max_tokens": draw(st.integers(64, 4_000)),
            "max_messages": draw(st.none() | st.integers(2, 50)),
            "token_allocation": {"system": system, "short_term": short, "long_term": long_},
            "flushing": {
                "threshold": draw(thresholds),
                "summarize_oldest_percent": draw(st.sampled_from([0.125, 0.25, 0.3, 0.5, 1.0])),
                "summary_recent_messages": draw(st.integers(0, 5)),
                "summary_tokens": draw(st.integers(1, 400)),
            },
        }
    )


# --- conversations -----------------------------------------------------------------------------

contents = st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["hello", "What is the weather in Paris?", "", "ok", "a" * 200]
)


@st.composite
def conversations(draw: st.DrawFn, *, min_size: int = 0, max_size: int = 12) -> list[Message]:
    """A well-formed memory: tool results always follow the assistant message that called them.

    Tokens are stored as drawn (1..60): the caller counts them if it needs real counts.
    """
    out: list[Message] = []
    open_calls: list[str] = []
    size = draw(st.integers(min_size, max_size))
    for i in range(size):
        choice = draw(st.sampled_from(["user", "user", "assistant", "call", "result", "system"]))
        tokens = draw(st.integers(1, 60))
        content = draw(contents)
        if choice == "result" and open_calls:
            call = draw(st.sampled_from(open_calls))
            open_calls.remove(call)
            out.append(message(f"m{i}", Role.TOOL, tokens, content=content, answers=call))
        elif choice == "call":
            calls = [f"c{i}.{j}" for j in range(draw(st.integers(1, 3)))]
            open_calls.extend(calls)
            out.append(message(f"m{i}", Role.ASSISTANT, tokens, content=content, calls=calls))
        elif choice == "system":
            out.append(message(f"m{i}", Role.SYSTEM, tokens, content=content))
        else:
            role = Role.ASSISTANT if choice == "assistant" else Role.USER
            name = draw(st.none() | st.sampled_from(["alice", "bob"]))
            out.append(message(f"m{i}", role, tokens, content=content, name=name))
    return out


# --- event logs --------------------------------------------------------------------------------

_STEPS = (
    ["user"] * 6
    + ["assistant"] * 2
    + ["system"] * 2
    + ["call"] * 3
    + ["result"] * 4
    + ["orphan", "dup_message_id", "summary_message", "clear"]
    + ["flush"] * 3
    + ["request_flush"] * 3
    + ["redeliver_same_offset", "redeliver_new_offset", "redeliver_new_offset"]
)


@st.composite
def flush_results(
    draw: st.DrawFn, *, known_ids: Sequence[str], summary_id: str, max_seq: int = 6
) -> tuple[int, Message | None]:
    """A flush result: a sequence number and a summary covering some known (or unknown) ids."""
    seq = draw(st.integers(0, max_seq))
    if draw(st.integers(0, 5)) == 0:
        return seq, None
    covered: list[str] = []
    as_run = draw(st.booleans())
    if known_ids and as_run:
        # A block as a flush snapshot would take it: a run of recent messages.
        start = draw(st.integers(max(0, len(known_ids) - 10), len(known_ids) - 1))
        covered = list(known_ids[start : start + draw(st.integers(1, 4))])
    elif known_ids:
        covered = draw(st.lists(st.sampled_from(known_ids), unique=True))
    if not covered or draw(st.integers(0, 3)) == 0:
        covered.append(f"unknown-{summary_id}")
    return seq, summary(summary_id, draw(st.integers(1, 50)), covered)


@st.composite
def event_logs(
    draw: st.DrawFn, *, max_events: int = 40, summary_ids_may_collide: bool = False
) -> list[LoggedEvent]:
    """A log of appends (with tool-call groups), clears and flush results, with redeliveries.

    Offsets usually grow with gaps; a redelivery repeats an earlier event either at its own
    offset (a duplicate offset) or at a new one (a duplicate id within the window). Event times
    (``at_ms``) grow by a second per event, except that an event published again keeps its
    time. With ``summary_ids_may_collide`` a flush result's summary may reuse a message id of
    the log.
    """
    events: list[LoggedEvent] = []
    message_ids: list[str] = []
    calls_made: list[str] = []
    offset = -1
    for i in range(draw(st.integers(0, max_events))):
        step = draw(st.sampled_from(_STEPS))
        # One draw for the cost (1..45) and the offset gap (1..3): generation is the bulk of
        # a property test's time.
        shape = draw(st.integers(0, 3 * 45 - 1))
        tokens, gap = shape % 45 + 1, shape // 45 + 1
        at = i * 1_000
        event: MemoryEvent
        if step in ("redeliver_same_offset", "redeliver_new_offset") and events:
            earlier = draw(st.sampled_from(events))
            if step == "redeliver_same_offset":
                events.append(earlier)
                continue
            event, at = earlier.event, earlier.at_ms
        elif step == "call":
            calls = [f"c{i}.{j}" for j in range(draw(st.integers(1, 3)))]
            calls_made.extend(calls)
            event = appended(message(f"m{i}", Role.ASSISTANT, tokens, calls=calls), f"e{i}")
        elif step == "result" and calls_made:
            call = draw(st.sampled_from(calls_made))
            event = appended(message(f"m{i}", Role.TOOL, tokens, answers=call), f"e{i}")
        elif step == "orphan":
            answers = draw(st.sampled_from([None, f"never-called-{i}"]))
            event = appended(message(f"m{i}", Role.TOOL, tokens, answers=answers), f"e{i}")
        elif step == "dup_message_id" and message_ids:
            reused = draw(st.sampled_from(message_ids))
            event = appended(message(reused, Role.USER, tokens), f"e{i}")
        elif step == "summary_message":
            event = appended(summary(f"m{i}", tokens, ()), f"e{i}")
        elif step == "clear":
            event = cleared(f"e{i}")
        elif step == "request_flush":
            event = FlushRequested(event_id=f"e{i}")
        elif step == "flush":
            summary_id = f"s{i}"
            if summary_ids_may_collide and message_ids and draw(st.booleans()):
                summary_id = draw(st.sampled_from(message_ids))
            seq, summary_msg = draw(flush_results(known_ids=message_ids, summary_id=summary_id))
            event = flushed(seq, summary_msg, event_id=f"e{i}", created_at_ms=at)
        else:
            role = {"assistant": Role.ASSISTANT, "system": Role.SYSTEM}.get(step, Role.USER)
            event = appended(message(f"m{i}", role, tokens, created_at_ms=at), f"e{i}")
        if isinstance(event, MessageAppended) and event.message.id not in message_ids:
            message_ids.append(event.message.id)
        offset += gap
        events.append(LoggedEvent(offset=offset, event=event, at_ms=at))
    return events


@st.composite
def batches(draw: st.DrawFn, events: Sequence[LoggedEvent]) -> list[list[LoggedEvent]]:
    """``events`` cut into consecutive batches at arbitrary points (empty batches allowed)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    bounds = [0, *cuts, len(events)]
    return [list(events[a:b]) for a, b in pairwise(bounds)]


# --- memories with a log -----------------------------------------------------------------------

id_windows = st.sampled_from([2, 3, 256])
# Logged events are a second apart: a pending flush retried at every event, two seconds on,
# or (5m) never.
retry_afters = st.sampled_from(
    [timedelta(milliseconds=1), timedelta(seconds=2), timedelta(minutes=5)]
)
# How a flush result's sequence is set: the memory's current one (most often), the one before
# or after it, or as ``event_logs`` drew it.
_SEQ_SHIFTS = (0, 0, 0, -1, 1, None)


@dataclass(frozen=True)
class Memory:
    """A memory's limits and a log to apply to it."""

    budget: Budget
    threshold: float
    window: int
    retry_after: timedelta
    events: list[LoggedEvent]

    def manager(self) -> TokenMemoryManager:
        """The manager of these limits."""
        return TokenMemoryManager(
            self.budget,
            flush_threshold=self.threshold,
            id_window=self.window,
            flush_retry_after=self.retry_after,
        )

    def reference(self) -> ReferenceMemory:
        """A fresh reference model of these limits."""
        return ReferenceMemory(
            self.budget, self.threshold, window=self.window, retry_after=self.retry_after
        )


@st.composite
def memories(
    draw: st.DrawFn,
    *,
    max_events: int = 40,
    summary_ids_may_collide: bool = False,
    retry_after: st.SearchStrategy[timedelta] = retry_afters,
) -> Memory:
    """Limits and an ``event_logs`` log whose flush results mostly answer the memory's flushes.

    A flush result drawn blind would nearly always name a sequence never requested: each
    (first) copy of one takes, most often, the flush sequence the memory is at when it
    arrives, as the reference model counts it, and then may cover the oldest short-term
    messages, as a flush's block would (a redelivered copy stays the same event).
    """
    m = Memory(
        draw(budgets()),
        draw(thresholds),
        draw(id_windows),
        draw(retry_after),
        [],
    )
    raw = draw(event_logs(max_events=max_events, summary_ids_may_collide=summary_ids_may_collide))
    reference = m.reference()
    answered: dict[int, MemoryEvent] = {}
    for logged in raw:
        event = logged.event
        if isinstance(event, MemoryFlushed):
            if id(event) not in answered:
                answered[id(event)] = draw(_answer(event, reference))
            logged = replace(logged, event=answered[id(event)])
        reference.apply(logged)
        m.events.append(logged)
    return m


@st.composite
def _answer(draw: st.DrawFn, event: MemoryFlushed, memory: ReferenceMemory) -> MemoryFlushed:
    shift = draw(st.sampled_from(_SEQ_SHIFTS))
    if shift is None:
        return event
    answer = replace(event, flush_seq=max(0, memory.flush_seq + shift))
    short = [m.id for m in memory.messages if m.category is Category.SHORT_TERM]
    if shift == 0 and answer.summary is not None and len(short) >= 2 and draw(st.booleans()):
        block = short[: draw(st.integers(2, 4))]
        answer = replace(answer, summary=replace(answer.summary, covers=tuple(block)))
    return answer
