"""Invariants of docs/semantics.md checked on random logs, and the code against the reference."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from memory_core import (
    Budget,
    Category,
    DeadLetterReason,
    EventResult,
    FlushRequested,
    HybridFlushingStrategy,
    LoggedEvent,
    MemoryCleared,
    MemoryConfig,
    MemoryFlushed,
    MemoryState,
    Message,
    MessageAppended,
    NothingToFlushError,
    Outcome,
    Role,
    TokenCounter,
    TokenMemoryManager,
)
from tests.strategies import (
    Memory,
    appended,
    batches,
    budget,
    conversations,
    flushed,
    log,
    memories,
    memory_configs,
    message,
    summary,
)

# Whole-log comparisons get 200 logs; the per-event invariants, which check every event of
# every log, get 100 each (generating logs is most of the time; the folder stays fast).
PROPERTY = settings(max_examples=100, deadline=None)
WHOLE_LOG = settings(max_examples=200, deadline=None)


@dataclass(frozen=True)
class Step:
    """One event applied alone: the state before and after, and what the manager reported."""

    before: MemoryState
    event: LoggedEvent
    result: EventResult
    after: MemoryState
    flush_requests: tuple[int, ...]


def _steps(mem: Memory) -> Iterator[Step]:
    manager = mem.manager()
    state = MemoryState()
    for logged in mem.events:
        applied = manager.apply(state, [logged])
        yield Step(state, logged, applied.results[0], applied.state, applied.flush_requests)
        state = applied.state


def _contains(messages: Sequence[Message], m: Message) -> bool:
    return any(x is m for x in messages)


def _stored_summary(step: Step) -> Message:
    """The summary a flush result put in memory (even if eviction took it out again)."""
    [stored] = [
        m
        for m in (*step.after.messages, *step.result.evicted)
        if not _contains(step.before.messages, m)
    ]
    return stored


def _budget_of(b: Budget, c: Category) -> int:
    return {Category.SYSTEM: b.system, Category.SHORT_TERM: b.short_term}.get(c, b.long_term)


def _outcome(r: EventResult) -> tuple[str, str | None, tuple[str, ...], bool, int]:
    return (
        r.outcome.value,
        r.reason.value if r.reason else None,
        tuple(m.id for m in r.evicted),
        r.redelivered,
        r.tokens_saved,
    )


# --- invariants of every step -------------------------------------------------------------------


@PROPERTY
@given(memories())
def test_budgets_are_never_exceeded_after_any_event(mem: Memory) -> None:
    b = mem.budget
    for step in _steps(mem):
        for category, tokens in step.after.tokens_by_category().items():
            assert tokens <= _budget_of(b, category), (category, step.event)
        if b.max_messages is not None:
            assert len(step.after.messages) <= b.max_messages


@PROPERTY
@given(memories())
def test_surviving_messages_keep_their_relative_order(mem: Memory) -> None:
    for step in _steps(mem):
        kept_before = [m for m in step.before.messages if _contains(step.after.messages, m)]
        kept_after = [m for m in step.after.messages if _contains(step.before.messages, m)]
        assert [m.id for m in kept_before] == [m.id for m in kept_after]
        event = step.event.event
        applied = step.result.outcome is Outcome.APPLIED
        if (
            isinstance(event, MessageAppended)
            and applied
            and _contains(step.after.messages, event.message)
        ):
            assert step.after.messages[-1] is event.message


@PROPERTY
@given(memories())
def test_an_append_evicts_the_oldest_messages_of_a_category_first(mem: Memory) -> None:
    for step in _steps(mem):
        event = step.event.event
        if not isinstance(event, MessageAppended) or step.result.outcome is not Outcome.APPLIED:
            continue
        prior = [*step.before.messages, event.message]
        age = {id(m): i for i, m in enumerate(prior)}
        survivors = [m for m in prior if _contains(step.after.messages, m)]
        # Tool results leave with their caller, whatever their age.
        for gone in (m for m in step.result.evicted if m.role is not Role.TOOL):
            younger = [s for s in survivors if s.category is gone.category]
            assert all(age[id(s)] > age[id(gone)] for s in younger), (gone.id, step.event)


@PROPERTY
@given(memories())
def test_system_messages_are_never_evicted_by_a_non_system_event(mem: Memory) -> None:
    for step in _steps(mem):
        event = step.event.event
        if isinstance(event, MessageAppended) and event.message.category is Category.SYSTEM:
            continue
        assert not [m.id for m in step.result.evicted if m.category is Category.SYSTEM]


@PROPERTY
@given(memories())
def test_a_tool_result_is_never_held_without_the_call_it_answers(mem: Memory) -> None:
    for step in _steps(mem):
        messages = step.after.messages
        for j, m in enumerate(messages):
            if m.role is Role.TOOL:
                assert any(
                    a.role is Role.ASSISTANT and any(c.id == m.tool_call_id for c in a.tool_calls)
                    for a in messages[:j]
                ), (m.id, [x.id for x in messages])


@PROPERTY
@given(memories())
def test_messages_leave_memory_only_by_eviction_summary_or_clear(mem: Memory) -> None:
    for step in _steps(mem):
        event, result = step.event.event, step.result
        before, after = step.before.messages, step.after.messages
        gone = [m for m in before if not _contains(after, m)]
        new = [m for m in after if not _contains(before, m)]
        if result.outcome is not Outcome.APPLIED:
            assert (before, result.evicted) == (after, ())
            continue
        if isinstance(event, MemoryCleared):
            assert after == ()
            continue
        assert not any(_contains(after, m) for m in result.evicted)
        if isinstance(event, MessageAppended):
            assert all(m is event.message for m in new)
            assert sorted(m.id for m in gone) == sorted(
                m.id for m in result.evicted if m is not event.message
            )
        elif isinstance(event, MemoryFlushed) and event.summary is not None:
            stored = _stored_summary(step)
            assert all(m is stored for m in new)
            covered = [m.id for m in gone if m.id in stored.covers]
            evicted = [m.id for m in result.evicted if m is not stored]
            assert sorted(m.id for m in gone) == sorted(covered + evicted)
        else:
            assert (gone, new) == ([], [])


@PROPERTY
@given(memories())
def test_applied_summary_covers_exactly_the_messages_it_removed(mem: Memory) -> None:
    for step in _steps(mem):
        event = step.event.event
        if not isinstance(event, MemoryFlushed) or step.result.outcome is not Outcome.APPLIED:
            continue
        if event.summary is None:
            continue
        present = [m for m in step.before.messages if m.id in event.summary.covers]
        stored = _stored_summary(step)
        assert stored.covers == tuple(m.id for m in present)
        assert not any(_contains(step.after.messages, m) for m in present)
        assert step.after.last_tokens_saved == sum(m.tokens for m in present) - stored.tokens


# A flush result whose summary reuses the id of a message it does not cover, tried first (a
# failure here shows at once, without a long shrink).
_SUMMARY_ID_TAKEN = log(
    appended(message("m0", Role.USER, 5)),
    appended(message("m1", Role.USER, 5)),
    FlushRequested("flush-now"),
    flushed(1, summary("m0", 3, ["m1"])),
)


@PROPERTY
@given(memories(summary_ids_may_collide=True))
@example(Memory(budget(), 1.0, 256, timedelta(minutes=5), _SUMMARY_ID_TAKEN))
def test_message_ids_stay_unique_in_memory(mem: Memory) -> None:
    for step in _steps(mem):
        ids = [m.id for m in step.after.messages]
        assert len(ids) == len(set(ids)), (ids, step.event)


@PROPERTY
@given(memories())
def test_flush_sequences_are_requested_in_order_and_only_repeated_on_redelivery_or_retry(
    mem: Memory,
) -> None:
    last = 0
    retry_ms = mem.retry_after // timedelta(milliseconds=1)
    for step in _steps(mem):
        before, after = step.before, step.after
        for seq in step.flush_requests:
            if seq == last:
                assert before.flush_pending and after.flush_pending
                if step.event.offset <= before.last_offset:
                    # The redelivered event that requested the still-pending flush repeats it.
                    assert step.event.offset == before.flush_offset
                    assert after == before
                else:
                    # A retry: the flush is still pending retry_after after its request.
                    requested = before.flush_requested_at_ms
                    assert requested is None or step.event.at_ms >= requested + retry_ms
                    assert after.flush_offset == step.event.offset
                    assert after.flush_requested_at_ms == step.event.at_ms
            else:
                assert seq == last + 1
                assert after.flush_requested_at_ms == step.event.at_ms
                if before.flush_pending:
                    # Only a clear or the pending flush's own result ends a pending flush.
                    event = step.event.event
                    assert isinstance(event, MemoryCleared) or (
                        isinstance(event, MemoryFlushed) and event.flush_seq == before.flush_seq
                    )
            last = seq
        assert after.flush_seq == last


@PROPERTY
@given(memories())
def test_a_flush_result_never_makes_a_memory_larger(mem: Memory) -> None:
    total = 0
    for step in _steps(mem):
        assert step.result.tokens_saved >= 0
        assert step.after.last_tokens_saved >= 0
        assert step.after.tokens_saved_total == total + step.result.tokens_saved
        total = step.after.tokens_saved_total
        event = step.event.event
        if not isinstance(event, MemoryFlushed):
            continue
        before, after = step.before.tokens(), step.after.tokens()
        assert after <= before, step.event
        if step.result.outcome is Outcome.APPLIED and event.summary is not None:
            assert step.result.tokens_saved >= 1
            assert after <= before - step.result.tokens_saved
        else:
            assert step.result.tokens_saved == 0
            assert step.after.messages == step.before.messages


@PROPERTY
@given(memories())
def test_only_a_result_of_the_pending_flush_changes_anything(mem: Memory) -> None:
    for step in _steps(mem):
        event, before, after = step.event.event, step.before, step.after
        if (
            not isinstance(event, MemoryFlushed)
            or step.event.offset <= before.last_offset  # a redelivery: nothing changes
            or step.result.outcome is Outcome.DUPLICATE_ID
        ):
            continue
        if event.flush_seq > before.flush_seq:
            assert step.result.reason is DeadLetterReason.UNREQUESTED_FLUSH
        elif event.flush_seq < before.flush_seq or not before.flush_pending:
            assert step.result.outcome is Outcome.STALE_FLUSH
        else:
            assert not after.flush_pending or after.flush_seq == before.flush_seq + 1
            continue
        assert after.messages == before.messages
        assert after.flush_pending == before.flush_pending
        assert after.last_flush_at_ms == before.last_flush_at_ms


def _found(state: MemoryState, offset: int) -> str:
    """An event's outcome as a writer reads it from the state (docs: "Finding an event's
    outcome")."""
    for o, reason in state.recent_rejections:
        if o == offset:
            return "duplicate" if reason == "duplicate_id" else "rejected"
    rejections = state.recent_rejections
    if len(rejections) == 64 and all(o > offset for o, _ in rejections):
        return "unknown"
    return "applied"


@PROPERTY
@given(memories(max_events=120))
def test_a_writer_finds_its_events_outcome_in_the_state(mem: Memory) -> None:
    result = mem.manager().apply(MemoryState(), mem.events)
    first: dict[int, str] = {}
    for logged, r in zip(mem.events, result.results, strict=True):
        if r.outcome is Outcome.DUPLICATE_OFFSET or r.redelivered:
            continue
        first[logged.offset] = {
            Outcome.REJECTED: "rejected",
            Outcome.DUPLICATE_ID: "duplicate",
        }.get(r.outcome, "applied")
    for offset, outcome in first.items():
        assert _found(result.state, offset) in (outcome, "unknown"), offset
    # Only an entry that left the window is unknown.
    kept = len(result.state.recent_rejections)
    assert kept == min(64, sum(1 for o in first.values() if o != "applied"))


# --- whole logs ---------------------------------------------------------------------------------


@WHOLE_LOG
@given(memories())
def test_same_state_and_log_always_give_the_same_result(mem: Memory) -> None:
    manager, events = mem.manager(), mem.events
    assert manager.apply(MemoryState(), events) == manager.apply(MemoryState(), events)
    assert manager.apply(MemoryState(), events) == mem.manager().apply(MemoryState(), events)


@WHOLE_LOG
@given(memories(), st.data())
def test_cutting_a_log_into_batches_changes_nothing(mem: Memory, data: st.DataObject) -> None:
    manager, events = mem.manager(), mem.events
    whole = manager.apply(MemoryState(), events)
    state = MemoryState()
    results: list[EventResult] = []
    requests: list[int] = []
    for batch in data.draw(batches(events)):
        part = manager.apply(state, batch)
        state = part.state
        results.extend(part.results)
        requests.extend(part.flush_requests)
    assert state == whole.state
    assert tuple(results) == whole.results
    assert tuple(requests) == whole.flush_requests


@WHOLE_LOG
@given(memories())
def test_manager_agrees_with_the_reference_model(mem: Memory) -> None:
    result = mem.manager().apply(MemoryState(), mem.events)
    reference = mem.reference()
    expected = reference.apply_all(mem.events)
    assert [_outcome(r) for r in result.results] == [
        (r.outcome, r.reason, r.evicted, r.redelivered, r.tokens_saved) for r in expected
    ]
    assert result.state == reference.state()
    assert list(result.flush_requests) == reference.flush_requests
    # The counters the manager kept along are the sums over the messages it ended with.
    assert result.tokens == result.state.tokens_by_category()


# --- flushing -----------------------------------------------------------------------------------


def _recount(counter: TokenCounter, m: Message) -> Message:
    return msgspec.structs.replace(
        m, tokens=counter.message_tokens(m.role.value, m.content, m.name, m.tool_calls)
    )


@WHOLE_LOG
@given(memory_configs(), conversations(max_size=14))
def test_flush_plan_is_smaller_than_its_block_and_covers_it_exactly(
    counter: TokenCounter, config: MemoryConfig, conversation: list[Message]
) -> None:
    # Room for everything but the summary, whose bound is the config's long-term budget.
    b = replace(config.budget, system=10**6, short_term=10**6, max_messages=None)
    messages = tuple(_recount(counter, m) for m in conversation)
    state = MemoryState(messages=messages, last_offset=0, flush_seq=1, flush_pending=True)
    strategy = HybridFlushingStrategy(config.flushing, b, counter)
    short = [m for m in messages if m.category is Category.SHORT_TERM]
    try:
        plan = strategy.plan(state, memory_key="k", summary_id="sum", now_ms=1)
    except NothingToFlushError:
        block = strategy.block(state)
        limit = min(config.flushing.summary_tokens, b.long_term, sum(m.tokens for m in block) - 1)
        assert len(short) < 2 or limit <= counter.message_tokens("system", "")
        return
    block = list(plan.covered)
    before = sum(m.tokens for m in block)
    # The block: the oldest short-term messages, at least k of them, tool units whole.
    k = max(2, math.ceil(config.flushing.summarize_oldest_percent * len(short)))
    assert len(block) >= k
    assert all(m.category is Category.SHORT_TERM for m in block)
    assert [m.id for m in block] == [m.id for m in messages if _contains(block, m)]
    for m in messages:
        for t in messages:
            if t.role is Role.TOOL and any(c.id == t.tool_call_id for c in m.tool_calls):
                assert _contains(block, m) == _contains(block, t), (m.id, t.id)
    # The summary: within every bound, never larger than what it replaces.
    assert plan.summary.tokens <= min(config.flushing.summary_tokens, b.long_term, before - 1)
    assert plan.summary.tokens == counter.message_tokens("system", plan.summary.content)
    assert plan.summary.covers == tuple(m.id for m in block)
    assert plan.tokens_saved == before - plan.summary.tokens > 0
    # Applied, it replaces exactly its block.
    event = LoggedEvent(1, MemoryFlushed("f", 1, plan.summary, 5))
    after = TokenMemoryManager(b).apply(state, [event]).state
    covered = set(plan.summary.covers)
    survivors = [m.id for m in after.messages if m.id != "sum"]
    assert survivors == [m.id for m in messages if m.id not in covered]
    assert after.last_tokens_saved == plan.tokens_saved
