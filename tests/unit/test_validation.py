"""Decode-time validation: every record that can never apply is refused with its reason."""

from __future__ import annotations

from datetime import datetime
from types import EllipsisType
from typing import Any

import pytest

from consumers.catalog import MemoryCatalog
from consumers.events import (
    CLEARED,
    FLUSH_REQUESTED,
    MAX_OCCURRED_AT_MS,
    MIN_OCCURRED_AT_MS,
    Decoded,
    appended_payload,
    envelope,
    flushed_payload,
    to_domain,
)
from memory_core import (
    DeadLetterReason,
    Draft,
    EncodingRegistry,
    Kind,
    MemoryFlushed,
    Message,
    MessageAppended,
    RejectedEventError,
    Role,
    ToolCall,
    load_configs,
)

AT = 1_700_000_000_000
MEMORIES = r"""
memories:
  - id: chat
    key: "agent:{agent_id}:user:{user_id}"
    max_tokens: 400
    privacy:
      redact_patterns: ['\b[\w.+-]+@[\w-]+\.[\w.]+\b', '\b\d(?:[ -]?\d){12,15}\b']
  - id: research
    key: "research:{team}:{session}"
    max_tokens: 400
  # Overlaps both below: "user:1" matches "user:{id}" and "{kind}:{id}".
  - id: users
    key: "user:{id}"
    max_tokens: 400
  - id: private
    key: "private:{id}"
    max_tokens: 400
    privacy: {non_persistable_roles: [tool]}
  # Last: listed before the others, it would own every key of two segments.
  - id: anything
    key: "{kind}:{id}"
    max_tokens: 400
"""
CHAT_KEY = "agent:a1:user:u1"


@pytest.fixture(scope="module")
def catalog(encodings: EncodingRegistry) -> MemoryCatalog:
    """A catalog of the memories above."""
    return MemoryCatalog(load_configs(MEMORIES), encodings)


def _draft(**fields: Any) -> Draft:
    return Draft(
        **{"id": "m1", "role": Role.USER, "content": "hello", "created_at_ms": AT, **fields}
    )


def _record(
    key: str = CHAT_KEY,
    memory_id: str = "chat",
    payload: tuple[str, dict[str, Any]] | None = None,
    at: Any = AT,
) -> dict[str, Any]:
    return envelope(key, memory_id, at, payload or appended_payload(_draft()), event_id="e1")


def _decode(
    catalog: MemoryCatalog, record: dict[str, Any], record_key: bytes | EllipsisType | None = ...
) -> Decoded:
    """``record`` decoded as if keyed by ``record_key`` (by its own memory key if not given)."""
    if isinstance(record_key, EllipsisType):
        record_key = record["memory_key"].encode()
    return to_domain(record, record_key, catalog)


def _rejected(
    catalog: MemoryCatalog, record: dict[str, Any], record_key: bytes | EllipsisType | None = ...
) -> RejectedEventError:
    with pytest.raises(RejectedEventError) as info:
        _decode(catalog, record, record_key)
    return info.value


def _appended(decoded: Decoded) -> Message:
    assert isinstance(decoded.event, MessageAppended)
    return decoded.event.message


# --- record keys --------------------------------------------------------------------------------


def test_a_record_without_a_key_is_a_key_mismatch(catalog: MemoryCatalog) -> None:
    error = _rejected(catalog, _record(), None)
    assert error.reason is DeadLetterReason.KEY_MISMATCH
    assert "no key" in error.detail
    assert CHAT_KEY in error.detail


def test_a_record_keyed_by_another_memory_key_is_a_key_mismatch(catalog: MemoryCatalog) -> None:
    error = _rejected(catalog, _record(), b"agent:a1:user:other")
    assert error.reason is DeadLetterReason.KEY_MISMATCH
    assert "agent:a1:user:other" in error.detail
    assert CHAT_KEY in error.detail


def test_a_null_key_is_refused_even_after_the_memory_was_accepted(
    catalog: MemoryCatalog,
) -> None:
    assert _decode(catalog, _record()).memory_key == CHAT_KEY
    assert _rejected(catalog, _record(), None).reason is DeadLetterReason.KEY_MISMATCH


def test_the_record_key_is_checked_before_the_memory_key(catalog: MemoryCatalog) -> None:
    error = _rejected(catalog, _record(key="agent:{x}:user:*"), CHAT_KEY.encode())
    assert error.reason is DeadLetterReason.KEY_MISMATCH


def test_a_key_mismatch_detail_keeps_control_characters_out(catalog: MemoryCatalog) -> None:
    error = _rejected(catalog, _record(), b"evil\x1b[31m\nkey")
    assert error.reason is DeadLetterReason.KEY_MISMATCH
    assert "\x1b" not in error.detail
    assert "\n" not in error.detail


# --- memory keys and their resource -------------------------------------------------------------


@pytest.mark.parametrize("key", ["agent:bad key:user:x", "agent:{x}:user:*", ""])
def test_an_unsafe_memory_key_is_an_invalid_key(catalog: MemoryCatalog, key: str) -> None:
    assert _rejected(catalog, _record(key=key)).reason is DeadLetterReason.INVALID_KEY


def test_a_key_matching_no_template_is_an_invalid_key_naming_the_template(
    catalog: MemoryCatalog,
) -> None:
    error = _rejected(catalog, _record(key="foo"))
    assert error.reason is DeadLetterReason.INVALID_KEY
    assert "agent:{agent_id}:user:{user_id}" in error.detail
    assert "'foo'" in error.detail


def test_a_key_of_another_resource_is_a_memory_mismatch_naming_it(
    catalog: MemoryCatalog,
) -> None:
    error = _rejected(catalog, _record(key="research:t1:s1", memory_id="chat"))
    assert error.reason is DeadLetterReason.MEMORY_MISMATCH
    assert "'research'" in error.detail


def test_a_key_matching_two_templates_belongs_to_the_first_in_the_file(
    catalog: MemoryCatalog,
) -> None:
    assert _decode(catalog, _record(key="user:1", memory_id="users")).entry.config.id == "users"
    error = _rejected(catalog, _record(key="user:1", memory_id="anything"))
    assert error.reason is DeadLetterReason.MEMORY_MISMATCH
    assert "'users'" in error.detail


def test_a_key_matching_only_another_template_is_a_memory_mismatch(
    catalog: MemoryCatalog,
) -> None:
    assert _decode(catalog, _record(key="bot:1", memory_id="anything")).entry.config.id == (
        "anything"
    )
    error = _rejected(catalog, _record(key="bot:1", memory_id="users"))
    assert error.reason is DeadLetterReason.MEMORY_MISMATCH
    assert "'anything'" in error.detail


def test_a_key_cannot_switch_resources_between_events(catalog: MemoryCatalog) -> None:
    assert _decode(catalog, _record(key="user:7", memory_id="users")).entry.config.id == "users"
    for _ in range(2):  # the accepted combination is remembered; the other is never accepted
        error = _rejected(catalog, _record(key="user:7", memory_id="anything"))
        assert error.reason is DeadLetterReason.MEMORY_MISMATCH


def test_an_unknown_memory_is_named(catalog: MemoryCatalog) -> None:
    error = _rejected(catalog, _record(memory_id="no-such-memory"))
    assert error.reason is DeadLetterReason.UNKNOWN_MEMORY
    assert "no-such-memory" in error.detail


def test_the_resource_of_a_key_is_the_first_whose_template_renders_it(
    catalog: MemoryCatalog,
) -> None:
    def owner(key: str) -> str | None:
        config = catalog.resource_for_key(key)
        return None if config is None else config.id

    assert owner(CHAT_KEY) == "chat"
    assert owner("research:t:s") == "research"
    assert owner("user:1") == "users"
    assert owner("private:1") == "private"
    assert owner("bot:1") == "anything"
    assert owner("foo") is None
    assert owner("agent:a:user:b:c") is None


def test_many_keys_are_checked_right_past_the_memo_bound(catalog: MemoryCatalog) -> None:
    for i in range(70_000):  # past the memo's bound: it starts over, checks stay right
        assert _decode(catalog, _record(key=f"agent:a:user:{i}")).entry.config.id == "chat"
    error = _rejected(catalog, _record(key="agent:a:user:1", memory_id="research"))
    assert error.reason is DeadLetterReason.MEMORY_MISMATCH


# --- timestamps ---------------------------------------------------------------------------------

_PAYLOADS = {
    "appended": appended_payload(_draft()),
    "cleared": (CLEARED, {"reason": None}),
    "flush_requested": (FLUSH_REQUESTED, {"reason": "requested"}),
    "flushed": flushed_payload(1, None, 0),
}
_OUT_OF_RANGE = {
    "negative": -1,
    "epoch": 0,
    "just-before-2000": MIN_OCCURRED_AT_MS - 1,
    "2100": MAX_OCCURRED_AT_MS,
    "year-9999": 253_402_300_799_000,
    "centuries-past-datetime": 2**62,
    "centuries-before": -(2**62),
}


@pytest.mark.parametrize("payload", _PAYLOADS.values(), ids=_PAYLOADS.keys())
@pytest.mark.parametrize("at", _OUT_OF_RANGE.values(), ids=_OUT_OF_RANGE.keys())
def test_an_event_time_outside_2000_to_2100_is_an_invalid_timestamp(
    catalog: MemoryCatalog, payload: tuple[str, dict[str, Any]], at: int
) -> None:
    error = _rejected(catalog, _record(payload=payload, at=at))
    assert error.reason is DeadLetterReason.INVALID_TIMESTAMP
    assert str(at) in error.detail
    assert "2000-01-01" in error.detail


@pytest.mark.parametrize("payload", _PAYLOADS.values(), ids=_PAYLOADS.keys())
@pytest.mark.parametrize("at", [MIN_OCCURRED_AT_MS, MAX_OCCURRED_AT_MS - 1])
def test_the_first_and_last_millisecond_of_the_range_are_accepted(
    catalog: MemoryCatalog, payload: tuple[str, dict[str, Any]], at: int
) -> None:
    assert _decode(catalog, _record(payload=payload, at=at)).event is not None


@pytest.mark.parametrize("payload", _PAYLOADS.values(), ids=_PAYLOADS.keys())
def test_every_decoded_event_carries_its_time(
    catalog: MemoryCatalog, payload: tuple[str, dict[str, Any]]
) -> None:
    assert _decode(catalog, _record(payload=payload, at=AT + 5)).at_ms == AT + 5


def test_a_datetime_event_time_is_read_as_utc_and_checked_too(catalog: MemoryCatalog) -> None:
    message = _appended(_decode(catalog, _record(at=datetime(2024, 1, 2, 3, 4, 5))))
    assert message.created_at_ms == 1_704_164_645_000
    error = _rejected(catalog, _record(at=datetime(1999, 12, 31, 23, 59, 59)))
    assert error.reason is DeadLetterReason.INVALID_TIMESTAMP


def test_the_keys_are_checked_before_the_time(catalog: MemoryCatalog) -> None:
    error = _rejected(catalog, _record(at=-1), None)
    assert error.reason is DeadLetterReason.KEY_MISMATCH


# --- the event itself ---------------------------------------------------------------------------


def _with(**fields: Any) -> tuple[str, dict[str, Any]]:
    kind, body = appended_payload(_draft())
    return kind, {**body, **fields}


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        pytest.param(_with(role="wizard"), "wizard", id="unknown-role"),
        pytest.param(_with(role="tool"), "tool_call_id", id="tool-without-tool-call-id"),
        pytest.param(_with(role="tool", tool_call_id=""), "tool_call_id", id="empty-tool-call-id"),
        pytest.param(_with(id=""), "id is empty", id="empty-message-id"),
        pytest.param(("memstream.v1.Unheard", {}), "unknown payload", id="unknown-payload"),
    ],
)
def test_an_event_that_can_never_apply_is_an_invalid_event(
    catalog: MemoryCatalog, payload: tuple[str, dict[str, Any]], detail: str
) -> None:
    error = _rejected(catalog, _record(payload=payload))
    assert error.reason is DeadLetterReason.INVALID_EVENT
    assert detail in error.detail


def test_an_invalid_tool_message_is_refused_even_where_tool_messages_are_dropped(
    catalog: MemoryCatalog,
) -> None:
    valid = _record(
        key="private:1", memory_id="private", payload=_with(role="tool", tool_call_id="c")
    )
    assert _decode(catalog, valid).event is None
    invalid = _record(key="private:1", memory_id="private", payload=_with(role="tool"))
    assert _rejected(catalog, invalid).reason is DeadLetterReason.INVALID_EVENT


# --- empty name, redaction ----------------------------------------------------------------------


def test_an_empty_name_is_dropped_and_not_counted(catalog: MemoryCatalog) -> None:
    named = _appended(_decode(catalog, _record(payload=appended_payload(_draft(name="")))))
    plain = _appended(_decode(catalog, _record(payload=appended_payload(_draft()))))
    assert named.name is None
    assert named.tokens == plain.tokens


def test_every_free_text_field_is_redacted_before_it_is_counted(
    catalog: MemoryCatalog, encodings: EncodingRegistry
) -> None:
    draft = _draft(
        role=Role.ASSISTANT,
        content="mail bob@example.com now",
        name="bob@example.com",
        metadata={"contact": "reach me at bob@example.com", "lang": "en"},
        tool_calls=(ToolCall("call_1", "charge", '{"card": "4111 1111 1111 1111", "n": 2}'),),
    )
    message = _appended(_decode(catalog, _record(payload=appended_payload(draft))))
    assert message.content == "mail [REDACTED] now"
    assert message.name == "[REDACTED]"
    assert dict(message.metadata) == {"contact": "reach me at [REDACTED]", "lang": "en"}
    assert message.tool_calls == (ToolCall("call_1", "charge", '{"card": "[REDACTED]", "n": 2}'),)
    counter = encodings.counter("o200k_base")
    assert message.tokens == counter.message_tokens(
        "assistant", message.content, message.name, message.tool_calls
    )


def test_identifiers_are_not_redacted(catalog: MemoryCatalog) -> None:
    draft = _draft(role=Role.TOOL, id="bob@example.com", tool_call_id="bob@example.com")
    message = _appended(_decode(catalog, _record(payload=appended_payload(draft))))
    assert (message.id, message.tool_call_id) == ("bob@example.com", "bob@example.com")


def test_a_summary_is_redacted_before_it_is_counted(catalog: MemoryCatalog) -> None:
    summary = Message("s1", Role.SYSTEM, "user bob@example.com asked", 0, AT, kind=Kind.SUMMARY)
    decoded = _decode(catalog, _record(payload=flushed_payload(1, summary, 5)))
    assert isinstance(decoded.event, MemoryFlushed)
    assert decoded.event.summary is not None
    assert decoded.event.summary.content == "user [REDACTED] asked"
    assert decoded.event.summary.created_at_ms == AT


def test_a_memory_without_patterns_keeps_text_as_written(catalog: MemoryCatalog) -> None:
    draft = _draft(content="mail bob@example.com", metadata={"m": "bob@example.com"})
    record = _record(key="research:t:s", memory_id="research", payload=appended_payload(draft))
    message = _appended(_decode(catalog, record))
    assert message.content == "mail bob@example.com"
    assert dict(message.metadata) == {"m": "bob@example.com"}
