"""Messages and state as stored in Redis: the stored format, round trips, and older formats."""

from __future__ import annotations

from types import MappingProxyType

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_core import Kind, Message, Role, ToolCall
from memory_core.eviction import TokenMemoryManager
from memory_core.models import NO_METADATA, Category, MemoryState
from memory_core.redis.codec import (
    changed_meta,
    decode_message,
    encode_message,
    encode_messages,
    state_from,
    state_meta,
)
from tests.strategies import batches, budgets, event_logs

_text = st.text(max_size=30)
_ids = st.text(min_size=1, max_size=12)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(Kind))
    metadata = draw(st.dictionaries(_ids, _text, max_size=3))
    return Message(
        id=draw(_ids),
        role=draw(st.sampled_from(Role)),
        content=draw(_text),
        tokens=draw(st.integers(0, 10**6)),
        created_at_ms=draw(st.integers(0, 2**62)),
        kind=kind,
        name=draw(st.none() | _ids),
        # Any mapping: the read-only view a producer may hand over is stored as a dict.
        metadata=draw(st.sampled_from([metadata, MappingProxyType(metadata)])),
        tool_call_id=draw(st.none() | _ids),
        tool_calls=tuple(
            ToolCall(*c) for c in draw(st.lists(st.tuples(_ids, _ids, _text), max_size=2))
        ),
        covers=tuple(draw(st.lists(_ids, max_size=3))) if kind is Kind.SUMMARY else (),
    )


@given(messages())
def test_a_message_reads_back_as_it_was_stored(m: Message) -> None:
    back = decode_message(encode_message(m))
    assert back == msgspec.structs.replace(m, metadata=dict(m.metadata))
    assert back.category is m.category


@given(st.lists(messages(), max_size=5))
def test_appended_bodies_are_newline_delimited(ms: list[Message]) -> None:
    # write.lua cuts the appended bodies at newlines: none may occur inside a body.
    raw = encode_messages(ms)
    assert raw == b"".join(encode_message(m) + b"\n" for m in ms)
    assert [decode_message(line) for line in raw.splitlines()] == [
        decode_message(encode_message(m)) for m in ms
    ]


def test_a_plain_message_stores_only_its_own_fields() -> None:
    m = Message("m1", Role.USER, "where is my order?", 9, 1700000000000, metadata=NO_METADATA)
    assert encode_message(m) == (
        b'{"id":"m1","role":"user","content":"where is my order?","tokens":9,"ts":1700000000000}'
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            # The bodies written before messages were encoded by msgspec (hand-built dicts).
            {"id": "a", "role": "user", "content": "hi", "tokens": 3, "ts": 5},
            Message("a", Role.USER, "hi", 3, 5),
        ),
        (
            {
                "id": "t",
                "role": "assistant",
                "content": "",
                "tokens": 7,
                "ts": 6,
                "name": "bot",
                "meta": {"k": "v"},
                "tool_calls": [["c1", "lookup", '{"q": 1}']],
            },
            Message(
                "t",
                Role.ASSISTANT,
                "",
                7,
                6,
                name="bot",
                metadata={"k": "v"},
                tool_calls=(ToolCall("c1", "lookup", '{"q": 1}'),),
            ),
        ),
        (
            {
                "id": "s",
                "role": "system",
                "content": "sum",
                "tokens": 4,
                "ts": 7,
                "kind": "summary",
                "covers": ["a", "b"],
            },
            Message("s", Role.SYSTEM, "sum", 4, 7, kind=Kind.SUMMARY, covers=("a", "b")),
        ),
    ],
)
def test_bodies_of_the_earlier_format_read_back(raw: dict[str, object], expected: Message) -> None:
    back = decode_message(orjson.dumps(raw))
    assert back == expected


def test_a_stored_category_is_derived_again_on_read() -> None:
    body = {"id": "s", "role": "user", "content": "x", "tokens": 1, "ts": 0}
    back = decode_message(orjson.dumps({**body, "category": "system"}))
    assert back.category is Category.SHORT_TERM


def test_a_malformed_body_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_message(b'{"id":"a","role":"user","content":"x","tokens":"many","ts":0}')


# --- the meta hash ------------------------------------------------------------------------------


@pytest.mark.parametrize("requested_at", [None, 0, 1_700_000_000_123])
def test_a_state_reads_back_from_its_meta_as_it_was_stored(requested_at: int | None) -> None:
    m = Message("m1", Role.USER, "hi", 3, 5)
    state = MemoryState(
        messages=(m,),
        last_offset=41,
        recent_event_ids=("e1", "e2"),
        flush_seq=3,
        flush_pending=True,
        flush_offset=40,
        flush_requested_at_ms=requested_at,
        last_flush_at_ms=17,
        last_tokens_saved=9,
        tokens_saved_total=90,
        recent_rejections=((7, "oversized_message"), (8, "duplicate_id")),
    )
    meta = state_meta(state, {"config": "abc"})
    assert meta["config"] == "abc"
    assert meta["flush_requested_at_ms"] == ("" if requested_at is None else str(requested_at))
    assert state_from(meta, (m,), ("e1", "e2")) == state


def test_a_meta_written_before_flush_request_times_reads_as_unknown() -> None:
    meta = state_meta(MemoryState(flush_seq=2, flush_pending=True, flush_requested_at_ms=5), {})
    del meta["flush_requested_at_ms"]
    state = state_from(meta, ())
    assert (state.flush_seq, state.flush_pending, state.flush_requested_at_ms) == (2, True, None)


@given(data=st.data())
def test_changed_meta_is_exactly_the_fields_whose_stored_value_changes(data: st.DataObject) -> None:
    # The store finds a write's changed meta fields by comparing states; it must send exactly
    # what comparing the stored strings would.
    manager = TokenMemoryManager(data.draw(budgets()), id_window=3)
    state, tokens = MemoryState(), MemoryState().tokens_by_category()
    for batch in data.draw(batches(data.draw(event_logs()))):
        result = manager.apply(state, batch, totals=tokens)
        old, new = state_meta(state, {}, tokens), state_meta(result.state, {}, result.tokens)
        expected = {f: v for f, v in new.items() if old[f] != v}
        assert changed_meta(state, tokens, result.state, result.tokens) == expected
        state, tokens = result.state, result.tokens
