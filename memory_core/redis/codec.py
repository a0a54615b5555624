"""Messages and memory state as stored in Redis (JSON bodies, a flat ``meta`` hash)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from memory_core.models import CATEGORIES, Category, Kind, MemoryState, Message, Role, ToolCall

_MESSAGE = Kind.MESSAGE


def encode_message(m: Message) -> bytes:
    """One message as compact JSON (UTF-8)."""
    body: dict[str, Any] = {
        "id": m.id,
        "role": m.role,  # orjson writes a StrEnum as its value
        "content": m.content,
        "tokens": m.tokens,
        "ts": m.created_at_ms,
    }
    if m.kind is not _MESSAGE:
        body["kind"] = m.kind.value
    if m.name is not None:
        body["name"] = m.name
    if m.metadata:
        body["meta"] = dict(m.metadata)
    if m.tool_call_id is not None:
        body["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        body["tool_calls"] = [[c.id, c.name, c.arguments] for c in m.tool_calls]
    if m.covers:
        body["covers"] = list(m.covers)
    return orjson.dumps(body)


def decode_message(raw: str | bytes) -> Message:
    """The inverse of ``encode_message``."""
    body = orjson.loads(raw)
    return Message(
        id=body["id"],
        role=Role(body["role"]),
        content=body["content"],
        tokens=int(body["tokens"]),
        created_at_ms=int(body["ts"]),
        kind=Kind(body.get("kind", Kind.MESSAGE.value)),
        name=body.get("name"),
        metadata=body.get("meta", {}),
        tool_call_id=body.get("tool_call_id"),
        tool_calls=tuple(ToolCall(*c) for c in body.get("tool_calls", ())),
        covers=tuple(body.get("covers", ())),
    )


def _opt_int(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


_TOKEN_FIELDS = tuple((c, f"tokens_{c.value}") for c in CATEGORIES)


def state_meta(
    state: MemoryState,
    extra: Mapping[str, str],
    tokens: Mapping[Category, int] | None = None,
) -> dict[str, str]:
    """The ``meta`` hash fields of ``state`` as stored (counters derived from its messages,
    unless ``tokens``, their sums per category, are given)."""
    totals = state.tokens_by_category() if tokens is None else tokens
    fields = {
        "last_offset": str(state.last_offset),
        "flush_seq": str(state.flush_seq),
        "flush_pending": "1" if state.flush_pending else "0",
        "flush_offset": str(state.flush_offset),
        "last_flush_at_ms": "" if state.last_flush_at_ms is None else str(state.last_flush_at_ms),
        "last_tokens_saved": str(state.last_tokens_saved),
        "tokens_saved_total": str(state.tokens_saved_total),
        "messages": str(len(state.messages)),
        "rejections": orjson.dumps([list(r) for r in state.recent_rejections]).decode()
        if state.recent_rejections
        else "[]",
    }
    for category, name in _TOKEN_FIELDS:
        fields[name] = str(totals[category])
    fields.update(extra)
    return fields


def state_from(
    meta: Mapping[str, str], messages: tuple[Message, ...], recent_ids: tuple[str, ...] = ()
) -> MemoryState:
    """Rebuild a ``MemoryState`` from its ``meta`` hash, ordered messages and recent ids."""
    if not meta:
        return MemoryState(messages=messages, recent_event_ids=recent_ids)
    return MemoryState(
        messages=messages,
        last_offset=int(meta.get("last_offset", -1)),
        recent_event_ids=recent_ids,
        flush_seq=int(meta.get("flush_seq", 0)),
        flush_pending=meta.get("flush_pending", "0") == "1",
        flush_offset=int(meta.get("flush_offset", -1)),
        last_flush_at_ms=_opt_int(meta.get("last_flush_at_ms")),
        last_tokens_saved=int(meta.get("last_tokens_saved", 0)),
        tokens_saved_total=int(meta.get("tokens_saved_total", 0)),
        recent_rejections=tuple(
            (int(o), str(r)) for o, r in orjson.loads(meta.get("rejections", "[]"))
        ),
    )


def pairs(flat: list[Any]) -> dict[str, str]:
    """A Redis flat reply ``[k1, v1, k2, v2, …]`` as a dict of strings."""
    it = iter(_s(x) for x in flat)
    return dict(zip(it, it, strict=True))


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
