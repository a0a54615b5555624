"""A memory as a prompt: the Chat Completions shape, the exact bill, trimming by tool units."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.cli import _chat_messages
from memory_core import Kind, Message, Role, TokenCounter, ToolCall
from memory_core.prompt import PromptBudgetError, build_prompt, chat_message


def _m(
    counter: TokenCounter,
    i: int,
    role: Role,
    content: str,
    *,
    kind: Kind = Kind.MESSAGE,
    **extra: object,
) -> Message:
    calls = extra.get("tool_calls", ())
    name = extra.get("name")
    tokens = counter.message_tokens(role.value, content, name, calls)  # type: ignore[arg-type]
    return Message(f"m{i}", role, content, tokens, 1_000 + i, kind=kind, **extra)  # type: ignore[arg-type]


@pytest.fixture
def memory(counter: TokenCounter) -> list[Message]:
    call = ToolCall("call-1", "weather", '{"city": "Oslo"}')
    return [
        _m(counter, 0, Role.SYSTEM, "You are terse."),
        _m(counter, 1, Role.SYSTEM, "Summary of 4 earlier messages: hello", kind=Kind.SUMMARY),
        _m(counter, 2, Role.USER, "what is the weather in Oslo today", name="ann"),
        _m(counter, 3, Role.ASSISTANT, "", tool_calls=(call,)),
        _m(counter, 4, Role.TOOL, "rain, 4 degrees", tool_call_id="call-1"),
        _m(counter, 5, Role.ASSISTANT, "It rains; 4 °C."),
        _m(counter, 6, Role.USER, "thanks"),
    ]


def test_messages_take_the_chat_completions_shape(memory: list[Message]) -> None:
    assert chat_message(memory[1]) == {
        "role": "system",
        "content": "Summary of 4 earlier messages: hello",
    }
    assert chat_message(memory[2]) == {
        "role": "user",
        "content": "what is the weather in Oslo today",
        "name": "ann",
    }
    assert chat_message(memory[3]) == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call-1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    }
    assert chat_message(memory[4]) == {
        "role": "tool",
        "content": "rain, 4 degrees",
        "tool_call_id": "call-1",
    }


def test_prompt_tokens_are_what_tokens_count_bills_for_the_same_json(
    memory: list[Message], counter: TokenCounter
) -> None:
    prompt = build_prompt(memory, counter)
    assert prompt.omitted == ()
    # Through JSON, as `memstream tokens count` reads it (a list, or the prompt object).
    body = json.loads(json.dumps(prompt.as_dict()))
    assert counter.prompt_tokens(_chat_messages(body["messages"])) == prompt.prompt_tokens
    assert counter.prompt_tokens(_chat_messages(body)) == prompt.prompt_tokens
    # The stored costs plus the reply priming: the counts agree with the apply path's.
    assert prompt.prompt_tokens == sum(m.tokens for m in memory) + 3


def test_max_tokens_keeps_system_messages_and_the_newest_whole_tool_units(
    memory: list[Message], counter: TokenCounter
) -> None:
    full = build_prompt(memory, counter)
    system = memory[0].tokens + memory[1].tokens + 3
    last_two = memory[5].tokens + memory[6].tokens
    unit = memory[3].tokens + memory[4].tokens
    # Room for the last two messages and half of the tool unit: the unit is left out whole.
    prompt = build_prompt(memory, counter, max_tokens=system + last_two + unit - 1)
    assert [m["content"] for m in prompt.messages] == [
        "You are terse.",
        "Summary of 4 earlier messages: hello",
        "It rains; 4 °C.",
        "thanks",
    ]
    assert prompt.omitted == ("m2", "m3", "m4")
    assert prompt.prompt_tokens == system + last_two <= prompt.max_tokens  # type: ignore[operator]
    # With the unit's room it comes in whole, the older user message still not.
    prompt = build_prompt(memory, counter, max_tokens=system + last_two + unit)
    assert prompt.omitted == ("m2",)
    exact = build_prompt(memory, counter, max_tokens=full.prompt_tokens)
    assert (exact.messages, exact.prompt_tokens, exact.omitted) == (
        full.messages, full.prompt_tokens, (),
    )  # fmt: skip


def test_max_tokens_below_the_system_messages_is_an_error_naming_the_minimum(
    memory: list[Message], counter: TokenCounter
) -> None:
    required = memory[0].tokens + memory[1].tokens + 3
    with pytest.raises(PromptBudgetError, match=f"at least {required}"):
        build_prompt(memory, counter, max_tokens=required - 1)
    assert build_prompt(memory, counter, max_tokens=required).omitted == (
        "m2", "m3", "m4", "m5", "m6",
    )  # fmt: skip
    with pytest.raises(ValueError, match="at least 1"):
        build_prompt(memory, counter, max_tokens=0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_trimmed_prompt_never_holds_an_orphan_tool_result_nor_exceeds_its_budget(
    data: st.DataObject, counter: TokenCounter
) -> None:
    messages: list[Message] = []
    n = data.draw(st.integers(0, 12))
    for i in range(n):
        kind = data.draw(st.sampled_from(["user", "system", "call"]))
        if kind == "call":
            calls = tuple(
                ToolCall(f"c{i}-{j}", "f", "{}") for j in range(data.draw(st.integers(1, 2)))
            )
            messages.append(_m(counter, len(messages), Role.ASSISTANT, "", tool_calls=calls))
            for c in calls:
                messages.append(
                    _m(counter, len(messages), Role.TOOL, "result " * i, tool_call_id=c.id)
                )
        else:
            role = Role.USER if kind == "user" else Role.SYSTEM
            messages.append(
                _m(counter, len(messages), role, "words " * data.draw(st.integers(0, 9)))
            )
    full = build_prompt(messages, counter)
    budget = data.draw(st.integers(1, full.prompt_tokens + 5))
    try:
        prompt = build_prompt(messages, counter, max_tokens=budget)
    except PromptBudgetError:
        assert sum(m.tokens for m in messages if m.role is Role.SYSTEM) + 3 > budget
        return
    assert prompt.prompt_tokens <= budget
    assert counter.prompt_tokens(_chat_messages(list(prompt.messages))) == prompt.prompt_tokens
    call_ids = {c["id"] for m in prompt.messages for c in m.get("tool_calls", [])}
    results = {m["tool_call_id"] for m in prompt.messages if m["role"] == "tool"}
    assert results == call_ids  # every result has its call, every call its results
    # System messages are never left out; the rest kept are in memory order.
    assert all(m.role is not Role.SYSTEM for m in messages if m.id in prompt.omitted)
    kept = [chat_message(m) for m in messages if m.id not in prompt.omitted]
    assert kept == list(prompt.messages)
