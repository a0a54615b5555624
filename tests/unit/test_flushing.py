"""HybridFlushingStrategy: the block it picks, the summary it writes, and when it gives up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace as replace_dataclass

import pytest
from hypothesis import given, settings

from memory_core import (
    Budget,
    FlushingConfig,
    HybridFlushingStrategy,
    Kind,
    LoggedEvent,
    MemoryConfig,
    MemoryFlushed,
    MemoryState,
    Message,
    NothingToFlushError,
    Role,
    TokenCounter,
    TokenMemoryManager,
    ToolCall,
)
from memory_core.values import replace
from tests.strategies import budget, conversations, memory_configs, summary


def _msg(
    counter: TokenCounter,
    id: str,
    role: Role = Role.USER,
    content: str | None = None,
    *,
    name: str | None = None,
    calls: Sequence[str] = (),
    answers: str | None = None,
) -> Message:
    """A message with its real chat-format cost."""
    text = f"content of {id}" if content is None else content
    tool_calls = tuple(ToolCall(c, f"fn_{c}", '{"q": 1}') for c in calls)
    return Message(
        id=id,
        role=role,
        content=text,
        tokens=counter.message_tokens(role.value, text, name, tool_calls),
        created_at_ms=0,
        name=name,
        tool_call_id=answers,
        tool_calls=tool_calls,
    )


def _users(counter: TokenCounter, n: int, prefix: str = "u") -> list[Message]:
    return [_msg(counter, f"{prefix}{i}") for i in range(n)]


def _strategy(
    counter: TokenCounter,
    *,
    percent: float = 0.3,
    recent: int = 3,
    summary_tokens: int = 500,
    threshold: float = 0.8,
    b: Budget | None = None,
) -> HybridFlushingStrategy:
    config = FlushingConfig(
        threshold=threshold,
        summarize_oldest_percent=percent,
        summary_recent_messages=recent,
        summary_tokens=summary_tokens,
    )
    return HybridFlushingStrategy(config, b or budget(1000, 1000, 1000), counter)


def _state(messages: Sequence[Message], seq: int = 1) -> MemoryState:
    return MemoryState(messages=tuple(messages), flush_seq=seq, flush_pending=True)


def _block_ids(strategy: HybridFlushingStrategy, messages: Sequence[Message]) -> list[str]:
    return [m.id for m in strategy.block(_state(messages))]


# --- the block ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "n", "expected"),
    [(0.3, 10, 3), (0.25, 10, 3), (0.5, 4, 2), (1.0, 6, 6), (0.125, 8, 2), (0.1, 10, 2)],
)
def test_block_is_the_rounded_up_percent_of_short_term_messages_at_least_two(
    counter: TokenCounter, percent: float, n: int, expected: int
) -> None:
    strategy = _strategy(counter, percent=percent)
    assert _block_ids(strategy, _users(counter, n)) == [f"u{i}" for i in range(expected)]


def test_block_rounds_up_the_exact_decimal_product(counter: TokenCounter) -> None:
    # 0.56 × 25 is 14 exactly; in binary floating point it is 14.000000000000002.
    strategy = _strategy(counter, percent=0.56)
    block = strategy.block(_state(_users(counter, 25)))
    assert [m.id for m in block] == [f"u{i}" for i in range(14)]


def test_block_counts_and_takes_only_short_term_messages(counter: TokenCounter) -> None:
    messages = [
        _msg(counter, "sys", Role.SYSTEM),
        summary("sum", 5, ["old"]),
        _msg(counter, "u0"),
        _msg(counter, "sys2", Role.SYSTEM),
        _msg(counter, "a1", Role.ASSISTANT),
        _msg(counter, "u2"),
        _msg(counter, "u3"),
    ]
    strategy = _strategy(counter, percent=0.5)
    assert _block_ids(strategy, messages) == ["u0", "a1"]


def test_block_keeps_tool_units_whole(counter: TokenCounter) -> None:
    messages = [
        _msg(counter, "a", Role.ASSISTANT, calls=["c1", "c2"]),
        _msg(counter, "t1", Role.TOOL, answers="c1"),
        _msg(counter, "t2", Role.TOOL, answers="c2"),
        *_users(counter, 7),
    ]
    strategy = _strategy(counter, percent=0.1)
    assert _block_ids(strategy, messages) == ["a", "t1", "t2"]


def test_block_adds_a_callers_later_results_in_memory_order(counter: TokenCounter) -> None:
    messages = [
        _msg(counter, "u0"),
        _msg(counter, "a", Role.ASSISTANT, calls=["c1"]),
        _msg(counter, "u2"),
        _msg(counter, "t", Role.TOOL, answers="c1"),
        _msg(counter, "u4"),
        _msg(counter, "u5"),
    ]
    strategy = _strategy(counter, percent=0.1)
    assert _block_ids(strategy, messages) == ["u0", "a", "t"]


@pytest.mark.parametrize("n_users", [0, 1])
def test_fewer_than_two_short_term_messages_is_nothing_to_flush(
    counter: TokenCounter, n_users: int
) -> None:
    messages = [_msg(counter, "sys", Role.SYSTEM), summary("sum", 5, ["x"])]
    messages += _users(counter, n_users)
    strategy = _strategy(counter)
    assert strategy.block(_state(messages)) == []
    with pytest.raises(NothingToFlushError) as info:
        strategy.plan(_state(messages), memory_key="agent:a", summary_id="s", now_ms=1)
    assert info.value.memory_key == "agent:a"


# --- the summary --------------------------------------------------------------------------------


LONG = "the customer described the issue in great detail " * 8


def test_summary_quotes_the_first_and_most_recent_messages(counter: TokenCounter) -> None:
    messages = [
        _msg(counter, "m0", content="I need help with my order", name="alice"),
        _msg(counter, "m1", Role.ASSISTANT, content=LONG),
        _msg(counter, "m2", content=LONG),
        _msg(counter, "m3", Role.ASSISTANT, content=LONG),
        _msg(counter, "m4", content="It arrived broken"),
        _msg(counter, "m5", Role.ASSISTANT, content="I will send a new one", name="bot"),
    ]
    strategy = _strategy(counter, percent=1.0, recent=2)
    plan = strategy.plan(_state(messages), memory_key="k", summary_id="s", now_ms=5)
    assert plan.summary.content == (
        "Summary of 6 earlier messages:\n"
        "[user alice] I need help with my order\n"
        "… 3 messages omitted …\n"
        "[user] It arrived broken\n"
        "[assistant bot] I will send a new one"
    )


def test_summary_with_no_recent_messages_quotes_only_the_first(counter: TokenCounter) -> None:
    messages = [_msg(counter, "m0", content="line 0")]
    messages += [_msg(counter, f"m{i}", content=LONG) for i in range(1, 4)]
    strategy = _strategy(counter, percent=1.0, recent=0)
    plan = strategy.plan(_state(messages), memory_key="k", summary_id="s", now_ms=5)
    assert plan.summary.content == (
        "Summary of 4 earlier messages:\n[user] line 0\n… 3 messages omitted …"
    )


def test_summary_omits_nothing_when_every_message_is_quoted(counter: TokenCounter) -> None:
    messages = [_msg(counter, f"m{i}", content=LONG) for i in range(3)]
    strategy = _strategy(counter, percent=1.0, recent=5)
    plan = strategy.plan(_state(messages), memory_key="k", summary_id="s", now_ms=5)
    lines = plan.summary.content.split("\n")
    assert lines[0] == "Summary of 3 earlier messages:"
    assert len(lines) == 4
    assert all(line.startswith("[user] the customer") for line in lines[1:])
    assert "omitted" not in plan.summary.content


def test_quoted_contents_are_cut_to_keep_the_summary_smaller(counter: TokenCounter) -> None:
    # Two messages quoted whole would cost more than the block: each content is cut.
    messages = [_msg(counter, f"m{i}", content=f"line {i} " + LONG) for i in range(2)]
    plan = _strategy(counter, percent=1.0, recent=1).plan(
        _state(messages), memory_key="k", summary_id="s", now_ms=5
    )
    lines = plan.summary.content.split("\n")
    assert lines[0] == "Summary of 2 earlier messages:"
    assert lines[1].startswith("[user] line 0")
    assert plan.summary.tokens < sum(m.tokens for m in messages)


def test_summary_is_a_long_term_system_message_covering_the_block(counter: TokenCounter) -> None:
    messages = _users(counter, 10)
    strategy = _strategy(counter, percent=0.3)
    plan = strategy.plan(_state(messages, seq=7), memory_key="k", summary_id="sum-7", now_ms=42)
    s = plan.summary
    assert (s.id, s.role, s.kind, s.created_at_ms) == ("sum-7", Role.SYSTEM, Kind.SUMMARY, 42)
    assert s.covers == ("u0", "u1", "u2")
    assert [m.id for m in plan.covered] == ["u0", "u1", "u2"]
    assert plan.flush_seq == 7


def test_summary_cost_is_counted_like_any_system_message(counter: TokenCounter) -> None:
    plan = _strategy(counter, percent=0.5).plan(
        _state(_users(counter, 6)), memory_key="k", summary_id="s", now_ms=0
    )
    assert plan.summary.tokens == counter.message_tokens("system", plan.summary.content)


def test_tokens_saved_is_the_block_cost_minus_the_summary_cost(counter: TokenCounter) -> None:
    messages = [_msg(counter, f"m{i}", content="word " * 50) for i in range(6)]
    plan = _strategy(counter, percent=0.5, recent=1).plan(
        _state(messages), memory_key="k", summary_id="s", now_ms=0
    )
    assert plan.tokens_before == sum(m.tokens for m in messages[:3])
    assert plan.tokens_saved == plan.tokens_before - plan.summary.tokens
    assert plan.tokens_saved > 0


@pytest.mark.parametrize(
    ("summary_tokens", "long_term", "bound"),
    [(30, 1000, 30), (1000, 25, 25), (12, 12, 12)],
)
def test_summary_fits_summary_tokens_and_the_long_term_budget(
    counter: TokenCounter, summary_tokens: int, long_term: int, bound: int
) -> None:
    messages = [_msg(counter, f"m{i}", content="long words repeated " * 40) for i in range(8)]
    strategy = _strategy(
        counter, percent=1.0, summary_tokens=summary_tokens, b=budget(long_term=long_term)
    )
    plan = strategy.plan(_state(messages), memory_key="k", summary_id="s", now_ms=0)
    assert 0 < plan.summary.tokens <= bound
    assert plan.summary.content.startswith("Summary of 8")


def test_summary_is_smaller_than_a_block_of_tiny_messages(counter: TokenCounter) -> None:
    messages = [_msg(counter, "a", content="hi"), _msg(counter, "b", content="ok")]
    plan = _strategy(counter, percent=1.0).plan(
        _state(messages), memory_key="k", summary_id="s", now_ms=0
    )
    assert plan.summary.tokens < messages[0].tokens + messages[1].tokens
    assert plan.tokens_saved >= 1


@pytest.mark.parametrize(
    ("summary_tokens", "long_term"),
    [(4, 1000), (1, 1000), (1000, 4), (1000, 0)],
)
def test_no_room_for_any_summary_text_is_nothing_to_flush(
    counter: TokenCounter, summary_tokens: int, long_term: int
) -> None:
    # An empty system message already costs 4 tokens in the chat format.
    strategy = _strategy(
        counter, percent=1.0, summary_tokens=summary_tokens, b=budget(long_term=long_term)
    )
    with pytest.raises(NothingToFlushError, match="cannot fit"):
        strategy.plan(_state(_users(counter, 4)), memory_key="k", summary_id="s", now_ms=0)


# --- should_flush and applying the plan ---------------------------------------------------------


def test_should_flush_follows_the_flush_rule(counter: TokenCounter) -> None:
    strategy = _strategy(counter, threshold=0.5, b=budget(short_term=20))
    two = [summary(f"u{i}", 5, ()) for i in range(2)]  # long-term: never counted
    assert not strategy.should_flush(MemoryState(messages=tuple(two)))
    users = [Message(f"u{i}", Role.USER, "x", 5, 0) for i in range(2)]
    assert strategy.should_flush(MemoryState(messages=tuple(users)))
    assert not strategy.should_flush(MemoryState(messages=tuple(users), flush_pending=True))
    assert not strategy.should_flush(MemoryState(messages=tuple(users[:1])))


def test_applying_a_plan_replaces_exactly_its_block(counter: TokenCounter) -> None:
    messages = [
        _msg(counter, "sys", Role.SYSTEM),
        _msg(counter, "a", Role.ASSISTANT, calls=["c1"]),
        _msg(counter, "t", Role.TOOL, answers="c1"),
        *_users(counter, 5),
    ]
    state = MemoryState(messages=tuple(messages), last_offset=9, flush_seq=1, flush_pending=True)
    b = budget(1000, 1000, 1000)
    plan = _strategy(counter, percent=0.3, b=b).plan(
        state, memory_key="k", summary_id="s", now_ms=0
    )
    event = MemoryFlushed("f", plan.flush_seq, plan.summary, 0)
    result = TokenMemoryManager(b).apply(state, [LoggedEvent(10, event)])
    assert [m.id for m in result.state.messages] == ["sys", "s", "u1", "u2", "u3", "u4"]
    assert result.state.messages[1].covers == ("a", "t", "u0")
    assert result.state.last_tokens_saved == plan.tokens_saved
    assert result.state.flush_pending is False


# --- the summary, as docs/semantics.md ("Flushing") states it -----------------------------------


def _doc_cut(counter: TokenCounter, s: str, n: int) -> str:
    """``cut(s, n)`` of the doc."""
    enc = counter.encoding
    if n <= 0:
        return ""
    if len(enc.encode_ordinary(s)) <= n:
        return s
    for c in range(n, 0, -1):
        p = enc.decode(enc.encode_ordinary(s)[:c], errors="ignore")
        if len(enc.encode_ordinary(p)) <= n:
            return p
    return ""


def _doc_content(
    counter: TokenCounter, config: MemoryConfig, b: Budget, block: Sequence[Message]
) -> str:
    """The summary content of ``block`` by the doc's formula ("" for nothing to flush)."""

    def t(s: str) -> int:
        return len(counter.encoding.encode_ordinary(s))

    limit = min(config.flushing.summary_tokens, b.long_term, sum(m.tokens for m in block) - 1)
    empty = counter.chat_format.tokens_per_message + t("system")
    room = limit - empty
    if room <= 0:
        return ""
    first, rest = block[0], list(block[1:])
    r = config.flushing.summary_recent_messages
    recent = rest[len(rest) - min(r, len(rest)) :] if r else []
    omitted = len(rest) - len(recent)
    q = 1 + len(recent)
    header = f"Summary of {len(block)} earlier messages:"
    per_line = max(math.floor((room - t(header) - 8 * (q + 1)) / q), 0)

    def quote(m: Message) -> str:
        who = m.role.value if m.name is None else f"{m.role.value} {m.name}"
        return "[" + who + "] " + _doc_cut(counter, m.content, per_line)

    lines = [header, quote(first)]
    if omitted > 0:
        lines.append(f"\u2026 {omitted} messages omitted \u2026")
    lines += [quote(m) for m in recent]
    return _doc_cut(counter, "\n".join(lines), room)


@settings(max_examples=150, deadline=None)
@given(config=memory_configs(), conversation=conversations(max_size=14))
def test_summary_is_the_documented_formula_token_for_token(
    counter: TokenCounter, config: MemoryConfig, conversation: list[Message]
) -> None:
    b = replace_dataclass(config.budget, system=10**6, short_term=10**6, max_messages=None)
    messages = tuple(
        replace(m, tokens=counter.message_tokens(m.role.value, m.content, m.name, m.tool_calls))
        for m in conversation
    )
    state = MemoryState(messages=messages, flush_seq=3, flush_pending=True)
    strategy = HybridFlushingStrategy(config.flushing, b, counter)
    block = strategy.block(state)
    expected = _doc_content(counter, config, b, block) if len(block) >= 2 else ""
    try:
        plan = strategy.plan(state, memory_key="k", summary_id="summary:3:k", now_ms=7)
    except NothingToFlushError:
        assert expected == ""
        return
    assert plan.summary.content == expected
    assert plan.summary.tokens == (
        counter.chat_format.tokens_per_message
        + counter.text_tokens("system")
        + counter.text_tokens(expected)
    )
    assert 1 <= plan.tokens_saved == sum(m.tokens for m in block) - plan.summary.tokens
