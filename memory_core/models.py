"""Domain values: messages, events and memory state (frozen, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

import msgspec

from memory_core.values import Value


class Role(StrEnum):
    """Chat roles."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Kind(StrEnum):
    """A plain message or a summary written by a flush."""

    MESSAGE = "message"
    SUMMARY = "summary"


class Category(StrEnum):
    """The budget a message counts against."""

    SYSTEM = "system"
    SHORT_TERM = "short_term"
    LONG_TERM = "long_term"


CATEGORIES: tuple[Category, ...] = (Category.SYSTEM, Category.SHORT_TERM, Category.LONG_TERM)

NO_METADATA: Mapping[str, str] = MappingProxyType({})
"""The metadata of a message without any (its default: left out of the stored JSON)."""
_force_setattr = msgspec.structs.force_setattr

# Enum members bound to module names: on CPython 3.11 ``Category.SYSTEM`` costs 15× a global
# read, which shows on paths run for every event (used likewise in the apply path's modules).
_SUMMARY, _SYSTEM_ROLE = Kind.SUMMARY, Role.SYSTEM
_LONG, _SYS, _SHORT = Category.LONG_TERM, Category.SYSTEM, Category.SHORT_TERM


class ToolCall(Value, frozen=True, array_like=True):
    """One tool call requested by an assistant message (stored as ``[id, name, arguments]``)."""

    id: str
    name: str
    arguments: str = ""


class Message(
    Value,
    frozen=True,
    omit_defaults=True,
    rename={"created_at_ms": "ts", "metadata": "meta"},
):
    """A stored message; ``tokens`` is its chat-format cost, counted once at apply time.

    Stored in Redis as msgspec's JSON of it (``memory_core.redis.codec``): fields at their
    default are left out, and two take shorter names.
    """

    id: str
    role: Role
    content: str
    tokens: int
    created_at_ms: int
    kind: Kind = Kind.MESSAGE
    name: str | None = None
    metadata: Mapping[str, str] = NO_METADATA
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    # For a summary: the ids of the messages it replaced, oldest first.
    covers: tuple[str, ...] = ()
    # Summaries count as long-term, system messages as system, the rest as short-term.
    # Derived once here (a value passed in is replaced): eviction reads it for every message
    # of every batch.
    category: Category = Category.SHORT_TERM

    def __post_init__(self) -> None:
        category = _LONG if self.kind is _SUMMARY else _SYS if self.role is _SYSTEM_ROLE else _SHORT
        _force_setattr(self, "category", category)


class Draft(Value, frozen=True):
    """A message as an agent writes it: not yet redacted or token-counted."""

    id: str
    role: Role
    content: str
    created_at_ms: int
    name: str | None = None
    metadata: Mapping[str, str] = NO_METADATA
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def counted(self, content: str, tokens: int) -> Message:
        """The stored message: ``content`` after redaction, with its token cost."""
        return Message(
            id=self.id,
            role=self.role,
            content=content,
            tokens=tokens,
            created_at_ms=self.created_at_ms,
            name=self.name,
            metadata=self.metadata,
            tool_call_id=self.tool_call_id,
            tool_calls=self.tool_calls,
        )


class MessageAppended(Value, frozen=True):
    """Append one message (already redacted and token-counted)."""

    event_id: str
    message: Message


class MemoryCleared(Value, frozen=True):
    """Remove every message of the memory."""

    event_id: str


class FlushRequested(Value, frozen=True):
    """Ask for a flush now, whatever the threshold (still one at a time)."""

    event_id: str


class MemoryFlushed(Value, frozen=True):
    """A flush result: replace the covered messages by ``summary``; ``summary`` None aborts.

    Only the result of the memory's pending flush (``flush_seq`` equal to the state's) applies.
    """

    event_id: str
    flush_seq: int
    summary: Message | None
    created_at_ms: int


MemoryEvent = MessageAppended | MemoryCleared | FlushRequested | MemoryFlushed


class LoggedEvent(Value, frozen=True):
    """An event at its position (partition offset) in the log.

    ``at_ms`` is the event's ``occurred_at`` in ms since the epoch: the only time the manager
    reads (to retry a pending flush), so the state never depends on when a log is applied.
    """

    offset: int
    event: MemoryEvent
    at_ms: int = 0


class MemoryState(Value, frozen=True):
    """Everything the apply step needs to know about one memory."""

    messages: tuple[Message, ...] = ()
    last_offset: int = -1
    recent_event_ids: tuple[str, ...] = ()
    flush_seq: int = 0
    flush_pending: bool = False
    # Offset of the event whose apply requested the pending flush: its redelivery re-requests
    # the flush, so a crash between the state write and the flush command loses nothing.
    flush_offset: int = -1
    # ``at_ms`` of the event that last requested the pending flush (None: stored before this
    # was recorded); the flush is requested again once an event is ``retry_after`` later.
    flush_requested_at_ms: int | None = None
    last_flush_at_ms: int | None = None
    last_tokens_saved: int = 0
    tokens_saved_total: int = 0
    # The last rejected or duplicate-id events as (offset, reason): a redelivered rejected
    # event is rejected (dead-lettered) again, so a crash between the state write and the
    # dead-letter send loses nothing; "duplicate_id" entries let a writer find its duplicate.
    recent_rejections: tuple[tuple[int, str], ...] = ()

    def tokens(self, category: Category | None = None) -> int:
        """Tokens held in ``category`` (all categories when None)."""
        if category is None:
            return sum(m.tokens for m in self.messages)
        return sum(m.tokens for m in self.messages if m.category is category)

    def tokens_by_category(self) -> dict[Category, int]:
        """Tokens per category, every category present."""
        totals = dict.fromkeys(CATEGORIES, 0)
        for m in self.messages:
            totals[m.category] += m.tokens
        return totals


class Snapshot(Value, frozen=True):
    """A consistent read of one memory (``messages`` may be one page of them)."""

    memory_key: str
    messages: tuple[Message, ...]
    total_messages: int
    tokens: dict[Category, int]
    version: int
    last_offset: int
    flush_seq: int
    flush_pending: bool
    flush_offset: int
    last_flush_at_ms: int | None
    last_tokens_saved: int
    tokens_saved_total: int
    recent_rejections: tuple[tuple[int, str], ...]
    config_fingerprint: str | None
    memory_id: str | None
    lock_holder: str | None
    lock_ttl_ms: int | None
    key_ttl_ms: int | None
    # The memory's home, "<topic>:<partition>" (None: never written from a partition).
    home: str | None = None
    flush_requested_at_ms: int | None = None

    @property
    def exists(self) -> bool:
        """Whether the memory has ever been written (and has not expired)."""
        return self.version > 0

    def state(self) -> MemoryState:
        """The full ``MemoryState`` (only valid for an unpaginated read)."""
        return MemoryState(
            messages=self.messages,
            last_offset=self.last_offset,
            flush_seq=self.flush_seq,
            flush_pending=self.flush_pending,
            flush_offset=self.flush_offset,
            flush_requested_at_ms=self.flush_requested_at_ms,
            last_flush_at_ms=self.last_flush_at_ms,
            last_tokens_saved=self.last_tokens_saved,
            tokens_saved_total=self.tokens_saved_total,
            recent_rejections=self.recent_rejections,
        )
