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
    """A decoded event ready to apply, or None when privacy rules drop it.

    ``at_ms`` is the event's ``occurred_at`` in ms since the epoch, within the accepted range
    (``LoggedEvent.at_ms``).
    """

    memory_key: str
    entry: CatalogEntry
    event: MemoryEvent | None
    at_ms: int


# occurred_at must fall in [2000-01-01T00:00:00Z, 2100-01-01T00:00:00Z): fixed bounds (not the
# clock), so a replay of the log accepts exactly what the first run did.
MIN_OCCURRED_AT_MS = 946_684_800_000
MAX_OCCURRED_AT_MS = 4_102_444_800_000


def to_domain(record: dict[str, Any], record_key: bytes | None, catalog: MemoryCatalog) -> Decoded:
    """Validate a decoded record and build its domain event (redacted, token-counted).

    Raises ``RejectedEventError`` with the dead-letter reason for anything that can never apply,
    in the order of docs/semantics.md, "Validation".
    """
    memory_key = record.get("memory_key", "")
    entry = catalog.entry_for(memory_key, record_key, record.get("memory_id", ""))
    at = record["occurred_at"]
    if at.__class__ is not int:
        at = _ms(at)
    if not MIN_OCCURRED_AT_MS <= at < MAX_OCCURRED_AT_MS:
        raise RejectedEventError(
            DeadLetterReason.INVALID_TIMESTAMP,
            f"occurred_at {at} ms ({_iso(at)}) is outside [2000-01-01T00:00:00Z, "
            "2100-01-01T00:00:00Z)",
        )
    event_id = record["event_id"]
    kind, body = record["payload"]
    try:
        if kind == APPENDED:
            return Decoded(memory_key, entry, _appended(event_id, body, at, entry), at)
        if kind == CLEARED:
            return Decoded(memory_key, entry, MemoryCleared(event_id), at)
        if kind == FLUSH_REQUESTED:
            return Decoded(memory_key, entry, FlushRequested(event_id), at)
        if kind == FLUSHED:
            return Decoded(memory_key, entry, _flushed(event_id, body, at, entry), at)
    except (KeyError, ValueError, TypeError) as exc:
        raise RejectedEventError(DeadLetterReason.INVALID_EVENT, f"{kind}: {exc}") from None
    raise RejectedEventError(DeadLetterReason.INVALID_EVENT, f"unknown payload {kind}")


def _iso(ms: int) -> str:
    try:
        return (_EPOCH + ms * _MILLISECOND).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return "beyond the years datetime represents"


_ROLES = {r.value: r for r in Role}
_TOOL, _MESSAGE = Role.TOOL, Kind.MESSAGE  # module names: cheaper per event on CPython 3.11


def _appended(
    event_id: str, body: dict[str, Any], at: int, entry: CatalogEntry
) -> MessageAppended | None:
    # The hot path of the consumer: positional construction, dict lookups over enum calls.
    role = _ROLES.get(body["role"])
    if role is None:
        raise ValueError(f"{body['role']!r} is not a valid Role")
    message_id = body["id"]
    if not message_id:
        raise ValueError("message id is empty")
    tool_call_id = body.get("tool_call_id")
    if role is _TOOL and not tool_call_id:
        raise ValueError("a tool message needs tool_call_id")
    privacy = entry.policy.privacy
    # Checked after the rules above, so an invalid event is refused whatever the privacy rules.
    if role in privacy.blocked:  # privacy.persists(role), inline: checked for every event
        return None
    name = body.get("name") or None  # an empty name is absent (the API refuses one)
    raw_calls = body.get("tool_calls")
    calls = (
        tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in raw_calls) if raw_calls else ()
    )
    content = body["content"]
    metadata = body.get("metadata") or NO_METADATA
    if privacy.redacts:
        content = privacy.redact(content)
        name = privacy.redact_name(name)
        metadata = privacy.redact_metadata(metadata)
        calls = privacy.redact_calls(calls)
    message = Message(
        message_id,
        role,
        content,
        entry.counter.message_tokens(body["role"], content, name, calls),
        at,
        _MESSAGE,
        name,
        metadata,
        tool_call_id,
        calls,
    )
    return MessageAppended(event_id, message)


def _flushed(event_id: str, body: dict[str, Any], at: int, entry: CatalogEntry) -> MemoryFlushed:
    raw = body.get("summary")
    summary = None
    if raw is not None:
        privacy = entry.policy.privacy
        content = raw["content"]
        if privacy.redacts:
            content = privacy.redact(content)
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
