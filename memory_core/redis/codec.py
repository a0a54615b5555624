"""Messages and memory state as stored in Redis (JSON bodies, a flat ``meta`` hash)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import orjson

from memory_core.models import CATEGORIES, Category, MemoryState, Message


def _plain(obj: Any) -> Any:
    # Metadata may be any mapping (a read-only view, say); msgspec encodes dicts.
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot store {type(obj).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)
_DECODER = msgspec.json.Decoder(Message)


def encode_message(m: Message) -> bytes:
    """One message as compact JSON (UTF-8): msgspec's encoding of ``Message``.

    Fields at their default are left out (a summary's derived ``category`` is written, and
    ignored when read back).
    """
    return _ENCODER.encode(m)


def encode_messages(messages: Sequence[Message]) -> bytes:
    """Messages as newline-delimited JSON: each ``encode_message``, then a newline."""
    return _ENCODER.encode_lines(messages)


def decode_message(raw: str | bytes) -> Message:
    """The inverse of ``encode_message``."""
    return _DECODER.decode(raw)


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
        "flush_requested_at_ms": ""
        if state.flush_requested_at_ms is None
        else str(state.flush_requested_at_ms),
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


def changed_meta(
    old: MemoryState,
    old_tokens: Mapping[Category, int],
    new: MemoryState,
    new_tokens: Mapping[Category, int],
) -> dict[str, str]:
    """The fields of ``state_meta(new, …, new_tokens)`` that differ from those of
    ``state_meta(old, …, old_tokens)`` (compared as values, without building both)."""
    fields: dict[str, str] = {}
    if new.last_offset != old.last_offset:
        fields["last_offset"] = str(new.last_offset)
    if new.flush_seq != old.flush_seq:
        fields["flush_seq"] = str(new.flush_seq)
    if new.flush_pending != old.flush_pending:
        fields["flush_pending"] = "1" if new.flush_pending else "0"
    if new.flush_offset != old.flush_offset:
        fields["flush_offset"] = str(new.flush_offset)
    if new.flush_requested_at_ms != old.flush_requested_at_ms:
        at = new.flush_requested_at_ms
        fields["flush_requested_at_ms"] = "" if at is None else str(at)
    if new.last_flush_at_ms != old.last_flush_at_ms:
        at = new.last_flush_at_ms
        fields["last_flush_at_ms"] = "" if at is None else str(at)
    if new.last_tokens_saved != old.last_tokens_saved:
        fields["last_tokens_saved"] = str(new.last_tokens_saved)
    if new.tokens_saved_total != old.tokens_saved_total:
        fields["tokens_saved_total"] = str(new.tokens_saved_total)
    if len(new.messages) != len(old.messages):
        fields["messages"] = str(len(new.messages))
    if new.recent_rejections is not old.recent_rejections and (
        new.recent_rejections != old.recent_rejections
    ):
        fields["rejections"] = (
            orjson.dumps([list(r) for r in new.recent_rejections]).decode()
            if new.recent_rejections
            else "[]"
        )
    for category, name in _TOKEN_FIELDS:
        if new_tokens[category] != old_tokens[category]:
            fields[name] = str(new_tokens[category])
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
        flush_requested_at_ms=_opt_int(meta.get("flush_requested_at_ms")),
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
