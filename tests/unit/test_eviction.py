"""TokenMemoryManager, rule by rule of docs/semantics.md ("Applying events" and "Eviction")."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from memory_core import (
    ApplyResult,
    Budget,
    Category,
    DeadLetterReason,
    FlushRequested,
    Kind,
    LoggedEvent,
    MemoryEvent,
    MemoryState,
    Message,
    Outcome,
    Role,
    TokenMemoryManager,
)
from memory_core.values import replace
from tests.strategies import appended, budget, cleared, flushed, log, message, summary


def _ids(messages: Sequence[Message]) -> list[str]:
    return [m.id for m in messages]


def _apply(
    b: Budget,
    events: list[LoggedEvent],
    *,
    state: MemoryState | None = None,
    threshold: float = 1.0,
    id_window: int = 256,
    retry_after: timedelta = timedelta(minutes=5),
) -> ApplyResult:
    manager = TokenMemoryManager(
        b, flush_threshold=threshold, id_window=id_window, flush_retry_after=retry_after
    )
    return manager.apply(state or MemoryState(), events)


def _at(at_ms: int, offset: int, event: MemoryEvent) -> LoggedEvent:
    return LoggedEvent(offset, event, at_ms)


def _users(n: int, tokens: int = 10, prefix: str = "u") -> list[Message]:
    return [message(f"{prefix}{i}", Role.USER, tokens) for i in range(n)]


# --- MessageAppended: rejections ----------------------------------------------------------------


def test_message_over_its_category_budget_is_rejected_not_truncated() -> None:
    big = message("u0", Role.USER, 31)
    result = _apply(budget(short_term=30), log(appended(big)))
    [r] = result.results
    assert (r.outcome, r.reason) == (Outcome.REJECTED, DeadLetterReason.OVERSIZED_MESSAGE)
    assert result.state.messages == ()
    assert result.state.last_offset == 0
    assert result.state.recent_event_ids == ("ev-u0",)


def test_message_exactly_at_its_budget_is_kept() -> None:
    result = _apply(budget(short_term=30), log(appended(message("u0", Role.USER, 30))))
    assert _ids(result.state.messages) == ["u0"]


def test_oversize_is_judged_against_the_messages_own_category() -> None:
    b = budget(system=10, short_term=100, long_term=5)
    result = _apply(
        b,
        log(
            appended(message("sys", Role.SYSTEM, 11)),
            appended(message("u", Role.USER, 11)),
            appended(summary("s", 6, ())),
        ),
    )
    assert [r.outcome for r in result.results] == [
        Outcome.REJECTED,
        Outcome.APPLIED,
        Outcome.REJECTED,
    ]
    assert _ids(result.state.messages) == ["u"]


def test_duplicate_message_id_is_rejected_and_memory_is_unchanged() -> None:
    first = message("m", Role.USER, 5, content="first")
    again = message("m", Role.ASSISTANT, 5, content="second")
    result = _apply(budget(), log(appended(first, "e1"), appended(again, "e2")))
    assert result.results[1].reason is DeadLetterReason.DUPLICATE_MESSAGE_ID
    assert result.state.messages == (first,)


def test_message_id_can_return_once_the_first_one_is_evicted() -> None:
    result = _apply(
        budget(short_term=10),
        log(
            appended(message("m", Role.USER, 10), "e1"),
            appended(message("n", Role.USER, 10), "e2"),
            appended(message("m", Role.USER, 5), "e3"),
        ),
    )
    assert result.results[2].outcome is Outcome.APPLIED
    assert _ids(result.state.messages) == ["m"]


def test_tool_result_without_a_caller_in_memory_is_rejected() -> None:
    result = _apply(
        budget(),
        log(
            appended(message("a", Role.ASSISTANT, 5, calls=["c1"])),
            appended(message("t-unknown", Role.TOOL, 5, answers="c9")),
            appended(message("t-none", Role.TOOL, 5, answers=None)),
        ),
    )
    reasons = [r.reason for r in result.results]
    assert reasons == [
        None,
        DeadLetterReason.ORPHAN_TOOL_RESULT,
        DeadLetterReason.ORPHAN_TOOL_RESULT,
    ]
    assert _ids(result.state.messages) == ["a"]


def test_tool_result_whose_caller_was_evicted_is_rejected() -> None:
    result = _apply(
        budget(short_term=20),
        log(
            appended(message("a", Role.ASSISTANT, 10, calls=["c1"])),
            appended(message("u1", Role.USER, 10)),
            appended(message("u2", Role.USER, 10)),  # evicts a
            appended(message("t", Role.TOOL, 5, answers="c1")),
        ),
    )
    assert result.results[3].reason is DeadLetterReason.ORPHAN_TOOL_RESULT
    assert _ids(result.state.messages) == ["u1", "u2"]


def test_tool_result_answering_a_call_in_memory_is_appended() -> None:
    result = _apply(
        budget(),
        log(
            appended(message("a", Role.ASSISTANT, 5, calls=["c1", "c2"])),
            appended(message("t2", Role.TOOL, 5, answers="c2")),
            appended(message("t1", Role.TOOL, 5, answers="c1")),
        ),
    )
    assert _ids(result.state.messages) == ["a", "t2", "t1"]


def test_oversize_is_checked_before_duplicate_id_and_orphan() -> None:
    result = _apply(
        budget(short_term=10),
        log(
            appended(message("m", Role.USER, 5), "e1"),
            appended(message("m", Role.TOOL, 50, answers="nobody"), "e2"),
            appended(message("m", Role.TOOL, 5, answers="nobody"), "e3"),
        ),
    )
    assert [r.reason for r in result.results[1:]] == [
        DeadLetterReason.OVERSIZED_MESSAGE,
        DeadLetterReason.DUPLICATE_MESSAGE_ID,
    ]


# --- eviction -----------------------------------------------------------------------------------


def test_eviction_removes_the_oldest_short_term_message_first() -> None:
    result = _apply(budget(short_term=30), log(*(appended(m) for m in _users(5))))
    assert _ids(result.state.messages) == ["u2", "u3", "u4"]
    assert [_ids(r.evicted) for r in result.results] == [[], [], [], ["u0"], ["u1"]]
    assert _ids(result.evicted) == ["u0", "u1"]


def test_eviction_removes_as_many_old_messages_as_the_new_one_needs() -> None:
    events = [appended(m) for m in _users(3)] + [appended(message("big", Role.USER, 25))]
    result = _apply(budget(short_term=30), log(*events))
    assert _ids(result.state.messages) == ["big"]
    assert _ids(result.results[-1].evicted) == ["u0", "u1", "u2"]


def test_short_term_overflow_never_evicts_system_or_summary_messages() -> None:
    b = budget(system=50, short_term=20, long_term=50)
    events = [
        appended(message("sys", Role.SYSTEM, 10)),
        appended(summary("sum", 10, ())),
        *(appended(m) for m in _users(4)),
    ]
    result = _apply(b, log(*events))
    assert _ids(result.state.messages) == ["sys", "sum", "u2", "u3"]


def test_system_messages_are_evicted_only_by_a_system_append() -> None:
    b = budget(system=20, short_term=20)
    result = _apply(
        b,
        log(
            appended(message("s0", Role.SYSTEM, 10)),
            appended(message("s1", Role.SYSTEM, 10)),
            *(appended(m) for m in _users(3)),
            appended(message("s2", Role.SYSTEM, 10)),
        ),
    )
    assert _ids(result.results[-1].evicted) == ["s0"]
    assert _ids(result.state.messages) == ["s1", "u1", "u2", "s2"]


def test_summary_overflow_evicts_the_oldest_summary() -> None:
    b = budget(long_term=20)
    result = _apply(b, log(*(appended(summary(f"s{i}", 10, ())) for i in range(3))))
    assert _ids(result.state.messages) == ["s1", "s2"]


def test_eviction_keeps_tool_call_with_its_results() -> None:
    events = [
        appended(message("a", Role.ASSISTANT, 10, calls=["c1", "c2"])),
        appended(message("t1", Role.TOOL, 5, answers="c1")),
        appended(message("u", Role.USER, 5)),
        appended(message("t2", Role.TOOL, 5, answers="c2")),
        appended(message("v", Role.USER, 10)),
    ]
    result = _apply(budget(short_term=30), log(*events))
    assert _ids(result.results[-1].evicted) == ["a", "t1", "t2"]
    assert _ids(result.state.messages) == ["u", "v"]


def test_tool_unit_larger_than_the_budget_evicts_the_message_just_appended() -> None:
    events = [
        appended(message("a", Role.ASSISTANT, 6, calls=["c1"])),
        appended(message("t", Role.TOOL, 5, answers="c1")),
    ]
    result = _apply(budget(short_term=10), log(*events))
    assert result.results[1].outcome is Outcome.APPLIED
    assert _ids(result.results[1].evicted) == ["a", "t"]
    assert result.state.messages == ()


def test_a_stored_state_over_a_lowered_budget_is_brought_back_by_the_next_append() -> None:
    # Stored under a larger budget: 50 short-term tokens, 10 over today's 40. The append is
    # a system message, within its own budget: the short-term overflow is evicted all the same.
    stored = MemoryState(messages=tuple(_users(5, tokens=10)))
    result = _apply(
        budget(short_term=40), log(appended(message("s", Role.SYSTEM, 5))), state=stored
    )
    assert _ids(result.results[0].evicted) == ["u0"]
    assert _ids(result.state.messages) == ["u1", "u2", "u3", "u4", "s"]
    assert result.state.tokens_by_category()[Category.SHORT_TERM] == 40


def test_max_messages_evicts_the_oldest_non_system_message() -> None:
    events = [
        appended(message("sys", Role.SYSTEM, 1)),
        appended(summary("sum", 1, ())),
        *(appended(m) for m in _users(3, tokens=1)),
    ]
    result = _apply(budget(max_messages=3), log(*events))
    assert _ids(result.state.messages) == ["sys", "u1", "u2"]
    assert _ids(result.evicted) == ["sum", "u0"]


def test_max_messages_evicts_a_whole_tool_unit() -> None:
    events = [
        appended(message("a", Role.ASSISTANT, 1, calls=["c1"])),
        appended(message("t", Role.TOOL, 1, answers="c1")),
        appended(message("u", Role.USER, 1)),
    ]
    result = _apply(budget(max_messages=2), log(*events))
    assert _ids(result.state.messages) == ["u"]
    assert _ids(result.results[-1].evicted) == ["a", "t"]


def test_max_messages_reached_by_system_messages_alone_evicts_the_newcomer() -> None:
    events = [
        appended(message("s0", Role.SYSTEM, 1)),
        appended(message("s1", Role.SYSTEM, 1)),
        appended(message("u", Role.USER, 1)),
    ]
    result = _apply(budget(max_messages=2), log(*events))
    assert _ids(result.state.messages) == ["s0", "s1"]
    assert _ids(result.results[-1].evicted) == ["u"]


def test_max_messages_with_only_system_messages_evicts_the_oldest() -> None:
    events = [appended(message(f"s{i}", Role.SYSTEM, 1)) for i in range(3)]
    result = _apply(budget(max_messages=2), log(*events))
    assert _ids(result.state.messages) == ["s1", "s2"]


# --- MemoryCleared ------------------------------------------------------------------------------


def test_clear_removes_every_message_and_the_pending_flush_but_keeps_counters() -> None:
    start = MemoryState(
        messages=tuple(_users(3)),
        last_offset=9,
        flush_seq=4,
        flush_pending=True,
        last_flush_at_ms=123,
        last_tokens_saved=7,
        tokens_saved_total=70,
    )
    result = _apply(budget(), log(cleared(), start=10), state=start)
    state = result.state
    assert state.messages == ()
    assert state.flush_pending is False
    assert (state.flush_seq, state.last_tokens_saved, state.tokens_saved_total) == (4, 7, 70)
    assert state.last_flush_at_ms == 123
    assert state.last_offset == 10
    assert result.results[0].outcome is Outcome.APPLIED


# --- MemoryFlushed ------------------------------------------------------------------------------


def _pending(messages: Sequence[Message], seq: int = 1) -> MemoryState:
    return MemoryState(messages=tuple(messages), last_offset=99, flush_seq=seq, flush_pending=True)


def test_flush_result_replaces_the_covered_messages_by_its_summary() -> None:
    start = _pending(_users(5))
    result = _apply(
        budget(),
        log(flushed(1, summary("s", 4, ["u0", "u1"]), created_at_ms=777), start=100),
        state=start,
    )
    state = result.state
    assert _ids(state.messages) == ["s", "u2", "u3", "u4"]
    assert state.messages[0].covers == ("u0", "u1")
    assert state.flush_pending is False
    assert (state.last_flush_at_ms, state.last_tokens_saved, state.tokens_saved_total) == (
        777,
        16,
        16,
    )
    assert result.results[0].outcome is Outcome.APPLIED
    assert result.results[0].evicted == ()


def test_summary_takes_the_position_of_the_first_covered_message() -> None:
    start = _pending([message("sys", Role.SYSTEM, 5), *_users(4)])
    result = _apply(
        budget(), log(flushed(1, summary("s", 4, ["u1", "u3"])), start=100), state=start
    )
    assert _ids(result.state.messages) == ["sys", "u0", "s", "u2"]


def test_partially_stale_flush_result_covers_only_the_messages_still_present() -> None:
    start = _pending(_users(4)[1:])  # u0 was evicted after the flush's snapshot
    result = _apply(
        budget(), log(flushed(1, summary("s", 4, ["u0", "u1"])), start=100), state=start
    )
    assert _ids(result.state.messages) == ["s", "u2", "u3"]
    assert result.state.messages[0].covers == ("u1",)
    assert result.state.last_tokens_saved == 6


def test_fully_stale_flush_result_changes_no_message_but_clears_its_pending_flag() -> None:
    start = _pending(_users(4)[2:])
    result = _apply(
        budget(), log(flushed(1, summary("s", 4, ["u0", "u1"])), start=100), state=start
    )
    assert result.results[0].outcome is Outcome.STALE_FLUSH
    assert result.state.messages == start.messages
    assert result.state.flush_pending is False
    assert result.state.last_flush_at_ms is None
    assert result.state.tokens_saved_total == 0


def test_flush_result_of_an_older_sequence_is_stale_and_keeps_the_newer_flush_pending() -> None:
    start = _pending(_users(4), seq=2)
    result = _apply(
        budget(), log(flushed(1, summary("s", 4, ["u0", "u1"])), start=100), state=start
    )
    [r] = result.results
    assert (r.outcome, r.reason) == (Outcome.STALE_FLUSH, None)
    assert result.state.messages == start.messages
    assert (result.state.flush_seq, result.state.flush_pending) == (2, True)
    assert result.state.recent_rejections == ()
    assert result.state.tokens_saved_total == 0


def test_empty_flush_result_of_an_older_sequence_is_stale() -> None:
    result = _apply(budget(), log(flushed(1, None), start=100), state=_pending(_users(3), seq=2))
    assert result.results[0].outcome is Outcome.STALE_FLUSH
    assert result.state.flush_pending is True


def test_flush_result_after_its_flush_ended_is_stale() -> None:
    # The memory was cleared (or the result already applied): the flush is no longer pending.
    start = replace(_pending(_users(4)), flush_pending=False)
    result = _apply(
        budget(), log(flushed(1, summary("s", 4, ["u0", "u1"])), start=100), state=start
    )
    assert result.results[0].outcome is Outcome.STALE_FLUSH
    assert result.state.messages == start.messages
    assert result.state.last_flush_at_ms is None
    assert result.state.recent_rejections == ()


def test_flush_result_arriving_after_a_clear_changes_nothing() -> None:
    events: list[MemoryEvent] = [
        *(appended(m) for m in _users(5)),  # requests flush 1 at offset 4
        cleared(),
        *(appended(m) for m in _users(2, prefix="v")),
        flushed(1, summary("s", 4, ["u0", "u1", "v0"])),
    ]
    result = _apply(budget(short_term=100), log(*events), threshold=0.5)
    assert result.results[-1].outcome is Outcome.STALE_FLUSH
    assert _ids(result.state.messages) == ["v0", "v1"]
    assert result.flush_requests == (1,)


@pytest.mark.parametrize("summary_msg", [summary("s", 4, ["u0"]), None])
def test_flush_result_for_a_sequence_never_requested_is_rejected(
    summary_msg: Message | None,
) -> None:
    start = _pending(_users(3), seq=1)
    result = _apply(budget(), log(flushed(2, summary_msg), start=100), state=start)
    [r] = result.results
    assert (r.outcome, r.reason) == (Outcome.REJECTED, DeadLetterReason.UNREQUESTED_FLUSH)
    assert result.state.messages == start.messages
    assert (result.state.flush_seq, result.state.flush_pending) == (1, True)
    assert result.state.recent_rejections == ((100, "unrequested_flush"),)
    assert result.state.last_offset == 100
    assert result.state.recent_event_ids == (r.event_id,)


def test_redelivered_unrequested_flush_is_rejected_again() -> None:
    start = MemoryState(messages=tuple(_users(3)), last_offset=99)
    event = flushed(1, summary("s", 4, ["u0"]))
    result = _apply(budget(), [LoggedEvent(100, event), LoggedEvent(100, event)], state=start)
    assert [(r.reason, r.redelivered) for r in result.results] == [
        (DeadLetterReason.UNREQUESTED_FLUSH, False),
        (DeadLetterReason.UNREQUESTED_FLUSH, True),
    ]
    assert result.state.recent_rejections == ((100, "unrequested_flush"),)


@pytest.mark.parametrize("summary_tokens", [10, 12])
def test_flush_result_saving_no_tokens_is_stale_and_only_ends_the_flush(
    summary_tokens: int,
) -> None:
    # The flush covered u0..u2; u0 and u1 were evicted before its result arrived: replacing the
    # 10 tokens of u2 by a summary of 10 or more tokens would not make the memory smaller.
    start = replace(
        _pending([message("u2", Role.USER, 10), message("u3", Role.USER, 10)]),
        last_tokens_saved=3,
        tokens_saved_total=30,
        last_flush_at_ms=5,
    )
    event = flushed(1, summary("s", summary_tokens, ["u0", "u1", "u2"]), created_at_ms=777)
    result = _apply(budget(), log(event, start=100), state=start)
    [r] = result.results
    assert (r.outcome, r.reason, r.tokens_saved, r.evicted) == (
        Outcome.STALE_FLUSH,
        None,
        0,
        (),
    )
    state = result.state
    assert state.messages == start.messages
    assert state.flush_pending is False
    assert (state.last_flush_at_ms, state.last_tokens_saved, state.tokens_saved_total) == (
        5,
        3,
        30,
    )
    assert state.recent_rejections == ()


def test_flush_result_saving_one_token_is_applied() -> None:
    start = _pending([message("u2", Role.USER, 10), message("u3", Role.USER, 10)])
    event = flushed(1, summary("s", 9, ["u0", "u1", "u2"]))
    result = _apply(budget(), log(event, start=100), state=start)
    assert result.results[0].tokens_saved == 1
    assert _ids(result.state.messages) == ["s", "u3"]
    assert result.state.last_tokens_saved == 1


def test_flush_result_without_summary_only_clears_the_pending_flag() -> None:
    start = _pending(_users(3))
    result = _apply(budget(), log(flushed(1, None), start=100), state=start)
    assert result.state.messages == start.messages
    assert result.state.flush_pending is False
    assert result.state.last_flush_at_ms is None


def test_summary_over_the_long_term_budget_is_rejected() -> None:
    start = _pending(_users(3))
    result = _apply(
        budget(long_term=10),
        log(flushed(1, summary("s", 11, ["u0", "u1"])), start=100),
        state=start,
    )
    [r] = result.results
    assert (r.outcome, r.reason) == (Outcome.REJECTED, DeadLetterReason.OVERSIZED_MESSAGE)
    assert result.state.messages == start.messages
    assert result.state.tokens_saved_total == 0
    # The pending flush ended (badly): it is no longer pending.
    assert result.state.flush_pending is False
    assert result.state.recent_rejections == ((100, "oversized_message"),)


def test_flush_result_runs_eviction_on_the_long_term_budget() -> None:
    old = summary("old", 8, ["x"])
    start = _pending([old, *_users(3)])
    result = _apply(
        budget(long_term=10), log(flushed(1, summary("new", 5, ["u0"])), start=100), state=start
    )
    assert _ids(result.state.messages) == ["new", "u1", "u2"]
    assert _ids(result.results[0].evicted) == ["old"]


def test_flush_result_evicts_a_late_tool_result_of_a_covered_call() -> None:
    # The flush's snapshot held [u0, a]; t answered a's call afterwards and u3 came later.
    start = _pending(
        [
            message("u0", Role.USER, 10),
            message("a", Role.ASSISTANT, 10, calls=["c1"]),
            message("t", Role.TOOL, 10, answers="c1"),
            message("u3", Role.USER, 10),
        ]
    )
    result = _apply(budget(), log(flushed(1, summary("s", 4, ["a"])), start=100), state=start)
    assert _ids(result.state.messages) == ["u0", "s", "u3"]
    assert _ids(result.results[0].evicted) == ["t"]


def test_flush_result_covering_the_first_messages_evicts_the_late_tool_result() -> None:
    start = _pending(
        [
            message("u0", Role.USER, 10),
            message("a", Role.ASSISTANT, 10, calls=["c1"]),
            message("t", Role.TOOL, 10, answers="c1"),
            message("u3", Role.USER, 10),
        ]
    )
    result = _apply(budget(), log(flushed(1, summary("s", 4, ["u0", "a"])), start=100), state=start)
    assert _ids(result.state.messages) == ["s", "u3"]
    assert _ids(result.results[0].evicted) == ["t"]


def test_flush_result_keeps_a_covered_tool_result_with_no_extra_eviction() -> None:
    start = _pending(
        [
            message("a", Role.ASSISTANT, 10, calls=["c1"]),
            message("t", Role.TOOL, 10, answers="c1"),
            message("u2", Role.USER, 10),
        ]
    )
    result = _apply(budget(), log(flushed(1, summary("s", 4, ["a", "t"])), start=100), state=start)
    assert _ids(result.state.messages) == ["s", "u2"]
    assert result.results[0].evicted == ()


def test_summary_taking_the_id_of_a_message_it_does_not_cover_is_rejected() -> None:
    start = _pending([message("s", Role.USER, 10), *_users(3)])
    result = _apply(
        budget(), log(flushed(1, summary("s", 4, ["u0", "u1"])), start=100), state=start
    )
    [r] = result.results
    assert (r.outcome, r.reason) == (Outcome.REJECTED, DeadLetterReason.DUPLICATE_MESSAGE_ID)
    assert result.state.messages == start.messages
    assert result.state.flush_pending is False


def test_summary_may_reuse_the_id_of_a_message_it_covers() -> None:
    start = _pending(_users(3))
    result = _apply(
        budget(), log(flushed(1, summary("u0", 4, ["u0", "u1"])), start=100), state=start
    )
    assert _ids(result.state.messages) == ["u0", "u2"]
    assert result.state.messages[0].covers == ("u0", "u1")


def test_a_repeated_flush_result_is_a_harmless_stale_flush() -> None:
    # A retried publish of the same result under a new event id (or a redelivery older than
    # the id window): what it covered is gone, so it changes nothing and is not dead-lettered.
    start = _pending(_users(4))
    s = summary("s", 4, ["u0", "u1"])
    events = log(flushed(1, s, event_id="f"), flushed(1, s, event_id="f-retry"), start=100)
    result = _apply(budget(), events, state=start)
    assert [(r.outcome, r.reason) for r in result.results] == [
        (Outcome.APPLIED, None),
        (Outcome.STALE_FLUSH, None),
    ]
    assert _ids(result.state.messages) == ["s", "u2", "u3"]


def test_a_summary_taking_the_id_of_a_live_message_it_does_not_cover_is_rejected() -> None:
    start = _pending([message("s", Role.USER, 10), *_users(3)])
    result = _apply(
        budget(), log(flushed(1, summary("s", 4, ["u0", "u1"])), start=100), state=start
    )
    [r] = result.results
    assert (r.outcome, r.reason) == (Outcome.REJECTED, DeadLetterReason.DUPLICATE_MESSAGE_ID)
    assert _ids(result.state.messages) == ["s", "u0", "u1", "u2"]


# --- deduplication ------------------------------------------------------------------------------


def test_event_at_an_offset_already_applied_is_skipped() -> None:
    first = appended(message("u0", Role.USER, 5), "e0")
    again = appended(message("u1", Role.USER, 5), "e1")
    events = [LoggedEvent(5, first), LoggedEvent(5, again), LoggedEvent(3, again)]
    result = _apply(budget(), events)
    assert [r.outcome for r in result.results] == [
        Outcome.APPLIED,
        Outcome.DUPLICATE_OFFSET,
        Outcome.DUPLICATE_OFFSET,
    ]
    assert _ids(result.state.messages) == ["u0"]
    assert result.state.last_offset == 5
    assert result.state.recent_event_ids == ("e0",)


def test_event_id_seen_recently_is_skipped_at_a_new_offset() -> None:
    event = appended(message("u0", Role.USER, 5), "e0")
    result = _apply(budget(), [LoggedEvent(1, event), LoggedEvent(4, event)])
    assert result.results[1].outcome is Outcome.DUPLICATE_ID
    assert _ids(result.state.messages) == ["u0"]
    assert result.state.last_offset == 4
    assert result.state.recent_event_ids == ("e0",)


def test_event_id_older_than_the_window_is_applied_again() -> None:
    e0 = cleared("e0")
    events = log(e0, cleared("e1"), cleared("e2"), e0)
    result = _apply(budget(), events, id_window=2)
    assert [r.outcome for r in result.results] == [Outcome.APPLIED] * 4
    assert result.state.recent_event_ids == ("e2", "e0")


def test_recent_event_ids_hold_the_last_256_ids_oldest_first() -> None:
    events = log(*(cleared(f"e{i}") for i in range(300)))
    state = _apply(budget(), events).state
    assert state.recent_event_ids == tuple(f"e{i}" for i in range(44, 300))


def test_rejected_event_still_records_its_offset_and_id() -> None:
    bad = appended(message("u0", Role.USER, 500), "bad")
    result = _apply(budget(short_term=10), [LoggedEvent(7, bad), LoggedEvent(8, bad)])
    assert [r.outcome for r in result.results] == [Outcome.REJECTED, Outcome.DUPLICATE_ID]
    assert result.state.last_offset == 8


def test_a_duplicate_event_id_is_recorded_among_recent_rejections() -> None:
    event = appended(message("u0", Role.USER, 5), "e0")
    result = _apply(budget(), [LoggedEvent(1, event), LoggedEvent(4, event)])
    assert [r.outcome for r in result.results] == [Outcome.APPLIED, Outcome.DUPLICATE_ID]
    assert result.results[1].reason is None
    assert result.state.recent_rejections == ((4, "duplicate_id"),)


def test_a_redelivered_duplicate_is_a_duplicate_offset_not_a_rejection() -> None:
    event = appended(message("u0", Role.USER, 5), "e0")
    bad = appended(message("big", Role.USER, 500), "bad")
    first = _apply(
        budget(short_term=10), [LoggedEvent(1, event), LoggedEvent(4, event), LoggedEvent(6, bad)]
    )
    again = _apply(
        budget(short_term=10),
        [LoggedEvent(1, event), LoggedEvent(4, event), LoggedEvent(6, bad)],
        state=first.state,
    )
    assert [(r.outcome, r.reason) for r in again.results] == [
        (Outcome.DUPLICATE_OFFSET, None),
        (Outcome.DUPLICATE_OFFSET, None),
        (Outcome.REJECTED, DeadLetterReason.OVERSIZED_MESSAGE),
    ]
    assert again.state == first.state
    assert again.state.recent_rejections == ((4, "duplicate_id"), (6, "oversized_message"))


def test_duplicates_and_rejections_share_the_window_of_the_last_64() -> None:
    event = cleared("e0")
    big = message("big", Role.USER, 500)
    events = [LoggedEvent(0, event)]
    events += [LoggedEvent(i, event if i % 2 else appended(big, f"bad{i}")) for i in range(1, 101)]
    state = _apply(budget(short_term=10), events).state
    assert state.recent_rejections == tuple(
        (i, "duplicate_id" if i % 2 else "oversized_message") for i in range(37, 101)
    )


def test_duplicate_skip_reports_nothing_evicted() -> None:
    event = appended(message("u0", Role.USER, 30), "e0")
    result = _apply(budget(short_term=30), [LoggedEvent(1, event), LoggedEvent(1, event)])
    assert result.results[1].evicted == ()


# --- the flush rule -----------------------------------------------------------------------------


def test_flush_is_requested_once_when_short_term_tokens_cross_the_threshold() -> None:
    events = [appended(m) for m in _users(8)]
    result = _apply(budget(short_term=100), log(*events), threshold=0.5)
    assert result.flush_requests == (1,)
    assert result.state.flush_seq == 1
    assert result.state.flush_pending is True
    assert result.state.flush_offset == 4


def test_flush_is_requested_at_exactly_the_threshold() -> None:
    result = _apply(budget(short_term=100), log(*(appended(m) for m in _users(5))), threshold=0.5)
    assert result.flush_requests == (1,)
    assert result.state.flush_offset == 4


def test_flush_is_requested_at_exactly_a_decimal_threshold() -> None:
    # 0.55 × 100 is 55 exactly; in binary floating point it is 55.00000000000001.
    result = _apply(
        budget(short_term=100), log(*(appended(m) for m in _users(11, tokens=5))), threshold=0.55
    )
    assert result.flush_requests == (1,)


def test_no_flush_is_requested_below_the_threshold() -> None:
    result = _apply(budget(short_term=100), log(*(appended(m) for m in _users(4))), threshold=0.5)
    assert result.flush_requests == ()
    assert result.state.flush_pending is False


def test_no_flush_is_requested_for_a_single_short_term_message() -> None:
    result = _apply(
        budget(short_term=100), log(appended(message("u", Role.USER, 90))), threshold=0.5
    )
    assert result.flush_requests == ()


def test_system_and_summary_tokens_do_not_count_towards_the_threshold() -> None:
    events = [
        appended(message("sys", Role.SYSTEM, 90)),
        appended(summary("sum", 90, ())),
        *(appended(m) for m in _users(2, tokens=10)),
    ]
    result = _apply(budget(100, 100, 100), log(*events), threshold=0.5)
    assert result.flush_requests == ()


def test_no_flush_is_requested_without_a_short_term_budget() -> None:
    events = [appended(message(f"s{i}", Role.SYSTEM, 10)) for i in range(5)]
    result = _apply(budget(short_term=0), log(*events), threshold=0.25)
    assert result.flush_requests == ()


def test_flush_result_clearing_the_flag_lets_the_next_crossing_request_again() -> None:
    events: list[MemoryEvent] = [
        *(appended(m) for m in _users(6)),
        flushed(1, summary("s", 4, ["u0", "u1"])),
        *(appended(m) for m in _users(3, prefix="v")),
    ]
    result = _apply(budget(short_term=100), log(*events), threshold=0.5)
    assert result.flush_requests == (1, 2)
    assert result.state.flush_offset == 7


def test_flush_result_of_an_older_sequence_does_not_allow_a_new_request() -> None:
    start = MemoryState(
        messages=tuple(_users(8)),
        last_offset=9,
        flush_seq=3,
        flush_pending=True,
        flush_requested_at_ms=0,
    )
    events = log(flushed(2, None), appended(message("x", Role.USER, 10)), start=10)
    result = _apply(budget(short_term=100), events, state=start, threshold=0.5)
    assert result.flush_requests == ()


def test_clear_during_a_pending_flush_allows_the_next_crossing_to_request() -> None:
    events: list[MemoryEvent] = [
        *(appended(m) for m in _users(5)),
        cleared(),
        *(appended(m) for m in _users(5, prefix="v")),
    ]
    result = _apply(budget(short_term=100), log(*events), threshold=0.5)
    assert result.flush_requests == (1, 2)


def test_flush_request_event_asks_for_a_flush_below_the_threshold() -> None:
    events: list[MemoryEvent] = [*(appended(m) for m in _users(2, tokens=1)), FlushRequested("req")]
    result = _apply(budget(short_term=100), log(*events), threshold=1.0)
    assert result.flush_requests == (1,)
    assert result.state.flush_offset == 2
    assert result.results[2].outcome is Outcome.APPLIED


def test_flush_request_event_needs_two_short_term_messages() -> None:
    events: list[MemoryEvent] = [appended(message("u", Role.USER, 1)), FlushRequested("req")]
    assert _apply(budget(), log(*events)).flush_requests == ()


def test_flush_request_event_does_not_stack_on_a_pending_flush() -> None:
    events: list[MemoryEvent] = [
        *(appended(m) for m in _users(2)),
        FlushRequested("r1"),
        FlushRequested("r2"),
    ]
    assert _apply(budget(), log(*events)).flush_requests == (1,)


def test_redelivered_flush_request_event_is_skipped_without_a_new_flush() -> None:
    request = FlushRequested("req")
    events = [
        *log(*(appended(m) for m in _users(2))),
        LoggedEvent(2, request),
        LoggedEvent(3, flushed(1, None)),
        LoggedEvent(4, request),
    ]
    result = _apply(budget(), events)
    assert result.results[-1].outcome is Outcome.DUPLICATE_ID
    assert result.flush_requests == (1,)


def test_redelivering_the_requesting_event_requests_the_pending_flush_again() -> None:
    first = _apply(budget(short_term=100), log(*(appended(m) for m in _users(5))), threshold=0.5)
    assert first.flush_requests == (1,)
    # A crash lost the flush command: the consumer re-reads from an older offset.
    replay = log(*(appended(m) for m in _users(5)))[2:]
    again = _apply(budget(short_term=100), replay, state=first.state, threshold=0.5)
    assert again.flush_requests == (1,)
    assert again.state == first.state


def test_redelivery_after_the_flush_finished_requests_nothing() -> None:
    first = _apply(budget(short_term=100), log(*(appended(m) for m in _users(5))), threshold=0.5)
    done = _apply(
        budget(short_term=100), log(flushed(1, None), start=5), state=first.state, threshold=0.5
    )
    # Still over the threshold: the flush result itself requests the next flush.
    assert done.flush_requests == (2,)
    replay = log(*(appended(m) for m in _users(5)))
    again = _apply(budget(short_term=100), replay, state=done.state, threshold=0.5)
    assert again.flush_requests == ()


def test_redelivering_a_rejected_event_that_requested_the_flush_requests_it_again() -> None:
    # A lowered threshold made a rejected event request the flush; the command was lost.
    start = MemoryState(messages=tuple(_users(5)), last_offset=4)
    bad = LoggedEvent(5, appended(message("big", Role.USER, 500), "bad"))
    first = _apply(budget(short_term=100), [bad], state=start, threshold=0.5)
    assert (first.flush_requests, first.state.flush_offset) == ((1,), 5)
    again = _apply(budget(short_term=100), [bad], state=first.state, threshold=0.5)
    assert again.results[0].reason is DeadLetterReason.OVERSIZED_MESSAGE
    assert again.results[0].redelivered
    assert again.flush_requests == (1,)
    assert again.state == first.state


# --- retrying a pending flush -------------------------------------------------------------------

_MINUTE = 60_000


def test_a_flush_request_records_the_time_of_the_requesting_event() -> None:
    events = [_at(1_000 + i, i, appended(m)) for i, m in enumerate(_users(5))]
    state = _apply(budget(short_term=100), events, threshold=0.5).state
    assert (state.flush_seq, state.flush_offset, state.flush_requested_at_ms) == (1, 4, 1_004)


def test_a_pending_flush_is_requested_again_once_retry_after_has_passed() -> None:
    events = [_at(1_000, i, appended(m)) for i, m in enumerate(_users(5))]
    events += [
        _at(1_000 + _MINUTE - 1, 5, appended(message("x0", Role.USER, 1))),
        _at(1_000 + _MINUTE, 6, appended(message("x1", Role.USER, 1))),
        _at(1_000 + _MINUTE + 1, 7, appended(message("x2", Role.USER, 1))),
    ]
    result = _apply(budget(short_term=100), events, threshold=0.5, retry_after=timedelta(minutes=1))
    assert result.flush_requests == (1, 1)
    state = result.state
    assert (state.flush_seq, state.flush_pending) == (1, True)
    assert (state.flush_offset, state.flush_requested_at_ms) == (6, 1_000 + _MINUTE)


def test_a_retried_flush_is_retried_again_after_another_retry_after() -> None:
    start = MemoryState(
        messages=tuple(_users(2)),
        last_offset=9,
        flush_seq=3,
        flush_pending=True,
        flush_offset=9,
        flush_requested_at_ms=0,
    )
    events = [_at(t, 10 + i, FlushRequested(f"r{i}")) for i, t in enumerate([10, 15, 19, 20, 31])]
    result = _apply(budget(), events, state=start, retry_after=timedelta(milliseconds=10))
    assert result.flush_requests == (3, 3, 3)
    assert (result.state.flush_offset, result.state.flush_requested_at_ms) == (14, 31)


def test_a_retry_fires_on_any_event_past_the_offset_check() -> None:
    start = MemoryState(
        messages=tuple(_users(2)),
        last_offset=9,
        recent_event_ids=("seen",),
        flush_seq=1,
        flush_pending=True,
        flush_offset=9,
        flush_requested_at_ms=0,
    )
    retry = timedelta(milliseconds=1)
    cases: list[tuple[MemoryEvent, Outcome]] = [
        (cleared("seen"), Outcome.DUPLICATE_ID),
        (appended(message("big", Role.USER, 500)), Outcome.REJECTED),
        (flushed(0, None), Outcome.STALE_FLUSH),
        (flushed(5, None), Outcome.REJECTED),
    ]
    for event, outcome in cases:
        result = _apply(budget(), [_at(1, 10, event)], state=start, retry_after=retry)
        assert result.results[0].outcome is outcome
        assert result.flush_requests == (1,), event
        assert (result.state.flush_offset, result.state.flush_requested_at_ms) == (10, 1)


def test_a_redelivered_event_never_starts_a_retry() -> None:
    start = MemoryState(
        messages=tuple(_users(2)),
        last_offset=9,
        flush_seq=1,
        flush_pending=True,
        flush_offset=3,
        flush_requested_at_ms=0,
    )
    event = _at(10 * _MINUTE, 8, appended(message("late", Role.USER, 1)))
    result = _apply(budget(), [event], state=start)
    assert result.results[0].outcome is Outcome.DUPLICATE_OFFSET
    assert result.flush_requests == ()
    assert result.state == start


def test_redelivering_the_retrying_event_requests_the_flush_again() -> None:
    start = MemoryState(
        messages=tuple(_users(2)),
        last_offset=9,
        flush_seq=1,
        flush_pending=True,
        flush_offset=3,
        flush_requested_at_ms=0,
    )
    event = _at(10 * _MINUTE, 10, FlushRequested("r"))
    first = _apply(budget(), [event], state=start)
    assert first.flush_requests == (1,)
    again = _apply(budget(), [event], state=first.state)
    assert again.results[0].outcome is Outcome.DUPLICATE_OFFSET
    assert again.flush_requests == (1,)
    assert again.state == first.state


def test_the_result_that_ends_the_flush_does_not_retry_it() -> None:
    start = MemoryState(
        messages=tuple(_users(2)),
        last_offset=9,
        flush_seq=1,
        flush_pending=True,
        flush_offset=3,
        flush_requested_at_ms=0,
    )
    result = _apply(budget(), [_at(10 * _MINUTE, 10, flushed(1, None))], state=start)
    assert result.flush_requests == ()
    assert result.state.flush_pending is False
    assert result.state.flush_requested_at_ms == 0


def test_event_times_before_the_request_never_retry() -> None:
    start = MemoryState(
        messages=tuple(_users(2)),
        last_offset=9,
        flush_seq=1,
        flush_pending=True,
        flush_offset=9,
        flush_requested_at_ms=10 * _MINUTE,
    )
    events = [_at(t, 10 + i, FlushRequested(f"r{i}")) for i, t in enumerate([0, 5 * _MINUTE])]
    assert _apply(budget(), events, state=start).flush_requests == ()


def test_a_pending_flush_without_a_request_time_is_requested_again_at_the_next_event() -> None:
    # Stored by a version that did not record when the flush was requested.
    start = MemoryState(
        messages=tuple(_users(2)), last_offset=9, flush_seq=2, flush_pending=True, flush_offset=4
    )
    assert start.flush_requested_at_ms is None
    result = _apply(budget(), [_at(0, 10, FlushRequested("r"))], state=start)
    assert result.flush_requests == (2,)
    assert (result.state.flush_offset, result.state.flush_requested_at_ms) == (10, 0)


def test_a_clear_keeps_the_request_time_of_the_ended_flush() -> None:
    start = MemoryState(
        messages=tuple(_users(2)),
        last_offset=9,
        flush_seq=1,
        flush_pending=True,
        flush_offset=9,
        flush_requested_at_ms=7,
    )
    result = _apply(budget(), [_at(10 * _MINUTE, 10, cleared())], state=start)
    assert result.flush_requests == ()
    assert (result.state.flush_pending, result.state.flush_requested_at_ms) == (False, 7)


def test_applying_a_log_twice_from_the_same_state_gives_the_same_result() -> None:
    events = log(*(appended(m) for m in _users(6)), flushed(1, summary("s", 3, ["u0", "u1"])))
    a = _apply(budget(short_term=50), events, threshold=0.5)
    b = _apply(budget(short_term=50), events, threshold=0.5)
    assert a == b


def test_a_copied_message_derives_its_category_again() -> None:
    m = message("m", Role.USER, 5)
    assert m.category is Category.SHORT_TERM
    assert replace(m, role=Role.SYSTEM).category is Category.SYSTEM
    assert replace(m, kind=Kind.SUMMARY).category is Category.LONG_TERM
    # Values are frozen at run time too.
    with pytest.raises(AttributeError):
        m.tokens = 6  # type: ignore[misc]
