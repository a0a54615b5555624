"""The exception hierarchy: one base, specific subclasses carrying their context."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class DeadLetterReason(StrEnum):
    """Why an event went to the dead-letter topic (written to the DLQ record headers)."""

    UNDECODABLE = "undecodable"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID_KEY = "invalid_key"
    INVALID_EVENT = "invalid_event"
    UNKNOWN_MEMORY = "unknown_memory"
    OVERSIZED_MESSAGE = "oversized_message"
    ORPHAN_TOOL_RESULT = "orphan_tool_result"
    DUPLICATE_MESSAGE_ID = "duplicate_message_id"
    # The record's key is null or differs from the event's memory_key.
    KEY_MISMATCH = "key_mismatch"
    # The event's memory key belongs to another memory resource than the one it names.
    MEMORY_MISMATCH = "memory_mismatch"
    # The event's time is outside the accepted range.
    INVALID_TIMESTAMP = "invalid_timestamp"
    # The record is not in its memory's home partition (see docs/semantics.md, "Home").
    WRONG_PARTITION = "wrong_partition"
    # A MemoryFlushed for a flush sequence the memory did not request (or no longer awaits).
    UNREQUESTED_FLUSH = "unrequested_flush"


class MemstreamError(Exception):
    """Base of every memstream error; ``retriable`` tells the consume loop retry vs dead-letter."""

    retriable: ClassVar[bool] = False


class ConfigError(MemstreamError):
    """A memory resource config broke a rule; ``field`` is its dotted path."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class ConfigErrors(MemstreamError):
    """Several config fields broke their rules at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("invalid memory config: " + "; ".join(str(e) for e in errors))
        self.errors = errors


class InvalidKeyError(MemstreamError):
    """A memory key or a key-template value is unsafe or malformed."""

    def __init__(self, message: str, *, value: str | None = None) -> None:
        super().__init__(message)
        self.value = value


class EncodingUnavailableError(MemstreamError):
    """A tiktoken encoding file is missing, corrupt or unsupported."""

    def __init__(self, encoding: str, reason: str) -> None:
        super().__init__(f"encoding {encoding}: {reason}")
        self.encoding = encoding
        self.reason = reason


class RejectedEventError(MemstreamError):
    """An event that can never be applied (it goes to the DLQ with ``reason``)."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class NothingToFlushError(MemstreamError):
    """A flush found no block it could summarize into something smaller."""

    def __init__(self, memory_key: str, detail: str) -> None:
        super().__init__(f"nothing to flush in {memory_key}: {detail}")
        self.memory_key = memory_key


class StoreUnavailableError(MemstreamError):
    """The state store (Redis) cannot be reached; retry later, commit nothing."""

    retriable = True


class LockNotAcquiredError(MemstreamError):
    """A lock stayed held by another owner for the whole acquire timeout."""

    retriable = True

    def __init__(self, memory_key: str, holder: str, remaining_ms: int) -> None:
        super().__init__(f"lock of {memory_key} held by {holder} for {remaining_ms} ms more")
        self.memory_key = memory_key
        self.holder = holder
        self.remaining_ms = remaining_ms


class LockLostError(MemstreamError):
    """A held lock expired or was taken over before its owner finished."""

    def __init__(self, memory_key: str) -> None:
        super().__init__(f"lock of {memory_key} was lost")
        self.memory_key = memory_key
