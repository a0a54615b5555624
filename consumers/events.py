"""Wire records (Avro dicts) to and from domain events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from consumers.catalog import CatalogEntry, MemoryCatalog
from memory_core import (
    DeadLetterReason,
    Draft,
    FlushRequested,
    Kind,
    MemoryCleared,
    MemoryEvent,
    MemoryFlushed,
    Message,
    MessageAppended,
    RejectedEventError,
    Role,
    ToolCall,
)
from memory_core.models import NO_METADATA
from memory_core.values import Value

NS = "memstream.v1."
APPENDED, CLEARED, FLUSH_REQUESTED, FLUSHED = (
    NS + "MessageAppended",
    NS + "MemoryCleared",
    NS + "FlushRequested",
    NS + "MemoryFlushed",
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # Avro timestamps are UTC; a naive one is read as UTC
            value = value.replace(tzinfo=UTC)
        return int((value - _EPOCH) // _MILLISECOND)
    return int(value)


def envelope(
    memory_key: str,
    memory_id: str,
    occurred_at_ms: int,
    payload: tuple[str, dict[str, Any]],
    event_id: str | None = None,
) -> dict[str, Any]:
    """A memory-event record around ``payload`` (a ``(record name, fields)`` union branch)."""
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "memory_key": memory_key,
        "memory_id": memory_id,
        "occurred_at": occurred_at_ms,
        "payload": payload,
    }


def appended_payload(draft: Draft) -> tuple[str, dict[str, Any]]:
    """The MessageAppended branch for ``draft``."""
    return APPENDED, {
        "id": draft.id,
        "role": draft.role.value,
        "content": draft.content,
        "name": draft.name,
        "metadata": dict(draft.metadata),
        "tool_call_id": draft.tool_call_id,
        "tool_calls": [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in draft.tool_calls
        ],
    }


def flushed_payload(
    flush_seq: int, summary: Message | None, tokens_saved: int
) -> tuple[str, dict[str, Any]]:
    """The MemoryFlushed branch."""
    body = (
        None
        if summary is None
        else {"id": summary.id, "content": summary.content, "covers": list(summary.covers)}
    )
    return FLUSHED, {"flush_seq": flush_seq, "summary": body, "tokens_saved": tokens_saved}


class Decoded(Value, frozen=True):
    """A decoded event ready to apply, or None when privacy rules drop it."""

    memory_key: str
    entry: CatalogEntry
    event: MemoryEvent | None


def to_domain(record: dict[str, Any], record_key: bytes | None, catalog: MemoryCatalog) -> Decoded:
    """Validate a decoded record and build its domain event (redacted, token-counted).

    Raises ``RejectedEventError`` with the dead-letter reason for anything that can never apply.
    """
    memory_key = record.get("memory_key", "")
    entry = catalog.entry_for(memory_key, record_key, record.get("memory_id", ""))
    event_id = record["event_id"]
    kind, body = record["payload"]
    try:
        if kind == APPENDED:
            return Decoded(memory_key, entry, _appended(event_id, body, record, entry))
        if kind == CLEARED:
            return Decoded(memory_key, entry, MemoryCleared(event_id))
        if kind == FLUSH_REQUESTED:
            return Decoded(memory_key, entry, FlushRequested(event_id))
        if kind == FLUSHED:
            return Decoded(memory_key, entry, _flushed(event_id, body, record, entry))
    except (KeyError, ValueError, TypeError) as exc:
        raise RejectedEventError(DeadLetterReason.INVALID_EVENT, f"{kind}: {exc}") from None
    raise RejectedEventError(DeadLetterReason.INVALID_EVENT, f"unknown payload {kind}")


_ROLES = {r.value: r for r in Role}
_TOOL, _MESSAGE = Role.TOOL, Kind.MESSAGE  # module names: cheaper per event on CPython 3.11


def _appended(
    event_id: str, body: dict[str, Any], record: dict[str, Any], entry: CatalogEntry
) -> MessageAppended | None:
    # The hot path of the consumer: positional construction, dict lookups over enum calls.
    role = _ROLES.get(body["role"])
    if role is None:
        raise ValueError(f"{body['role']!r} is not a valid Role")
    message_id = body["id"]
    if not message_id:
        raise ValueError("message id is empty")
    privacy = entry.policy.privacy
    if role in privacy.blocked:  # privacy.persists(role), inline: checked for every event
        return None
    tool_call_id = body.get("tool_call_id")
    if role is _TOOL and not tool_call_id:
        raise ValueError("a tool message needs tool_call_id")
    name = body.get("name")
    raw_calls = body.get("tool_calls")
    calls = (
        tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in raw_calls) if raw_calls else ()
    )
    content = body["content"]
    if privacy.redacts:
        content = privacy.redact(content)
    message = Message(
        message_id,
        role,
        content,
        entry.counter.message_tokens(body["role"], content, name, calls),
        _ms(record["occurred_at"]),
        _MESSAGE,
        name,
        body.get("metadata") or NO_METADATA,
        tool_call_id,
        calls,
    )
    return MessageAppended(event_id, message)


def _flushed(
    event_id: str, body: dict[str, Any], record: dict[str, Any], entry: CatalogEntry
) -> MemoryFlushed:
    at = _ms(record["occurred_at"])
    raw = body.get("summary")
    summary = None
    if raw is not None:
        content = entry.policy.privacy.redact(raw["content"])
        summary = Message(
            id=raw["id"],
            role=Role.SYSTEM,
            content=content,
            tokens=entry.counter.message_tokens(Role.SYSTEM.value, content),
            created_at_ms=at,
            kind=Kind.SUMMARY,
            covers=tuple(raw["covers"]),
        )
    return MemoryFlushed(event_id, int(body["flush_seq"]), summary, at)
