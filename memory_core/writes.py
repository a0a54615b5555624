"""What became of a write: outcomes of published events and the errors that report them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from memory_core.errors import DeadLetterReason, MemstreamError, RejectedEventError
from memory_core.eviction import DUPLICATE_ID_ENTRY, REJECTION_WINDOW
from memory_core.ports import Published


class WriteOutcomeStatus(StrEnum):
    """What became of one written event."""

    APPLIED = "applied"
    # The event id was seen before: an earlier attempt with this id was processed (its
    # outcome stands); this copy changed nothing.
    DUPLICATE = "duplicate"
    # Dead-lettered with ``reason``; only found in ``RejectedWriteError.outcomes``.
    REJECTED = "rejected"
    # Durable in the log, not (yet) known to be applied: not waited for, or not confirmed.
    PUBLISHED = "published"
    # Dropped by the memory's privacy policy (a non-persistable role): never published.
    NOT_PERSISTED = "not_persisted"


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """The outcome of one event of a write, and where it landed in the log.

    ``message_id`` is set for appends; the position (``event_id``, ``topic``, ``partition``,
    ``offset``) for every published event (None when ``NOT_PERSISTED``).
    """

    status: WriteOutcomeStatus
    event_id: str | None = None
    message_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    reason: DeadLetterReason | None = None
    detail: str = ""

    @classmethod
    def published(cls, where: Published, message_id: str | None = None) -> WriteOutcome:
        """A ``PUBLISHED`` outcome at ``where``."""
        return cls(
            WriteOutcomeStatus.PUBLISHED,
            event_id=where.event_id,
            message_id=message_id,
            topic=where.topic,
            partition=where.partition,
            offset=where.offset,
        )

    @property
    def position(self) -> str:
        """``partition:offset``, or ``-`` when never published."""
        return "-" if self.offset is None else f"{self.partition}:{self.offset}"

    def describe(self) -> str:
        """``message M, event E at P:O``: the parts that are known."""
        parts = [] if self.message_id is None else [f"message {self.message_id}"]
        if self.event_id is not None:
            parts.append(f"event {self.event_id} at {self.position}")
        return ", ".join(parts) or "nothing"


_REASONS: dict[DeadLetterReason, str] = {
    DeadLetterReason.OVERSIZED_MESSAGE: "it costs more tokens than its category's budget",
    DeadLetterReason.DUPLICATE_MESSAGE_ID: "a message with its id is already in memory",
    DeadLetterReason.ORPHAN_TOOL_RESULT: (
        "it answers a tool call no assistant message in memory made"
    ),
}


def settle_outcome(
    outcome: WriteOutcome,
    recent_rejections: Sequence[tuple[int, str]],
    *,
    window: int = REJECTION_WINDOW,
) -> WriteOutcome:
    """What became of a published event, once its memory applied up to its offset.

    ``recent_rejections`` is the memory's window of skipped and rejected events, as
    ``(offset, reason)``, oldest first, at most ``window`` long. Listed with a dead-letter
    reason: rejected; with ``duplicate_id``: duplicate; absent: applied, unless the window is
    full and starts after the offset (the entry may have left it): then the outcome is
    unknown and stays ``PUBLISHED``.
    """
    offset = outcome.offset
    if offset is None or outcome.status is not WriteOutcomeStatus.PUBLISHED:
        return outcome
    for at, reason in recent_rejections:
        if at != offset:
            continue
        if reason == DUPLICATE_ID_ENTRY:
            return dataclasses.replace(outcome, status=WriteOutcomeStatus.DUPLICATE)
        try:
            why = DeadLetterReason(reason)
        except ValueError:  # a reason newer than this code: rejected, but for what?
            return dataclasses.replace(outcome, detail=f"recorded as {reason!r}")
        return dataclasses.replace(
            outcome,
            status=WriteOutcomeStatus.REJECTED,
            reason=why,
            detail=_REASONS.get(why, "see its dead-letter record"),
        )
    if len(recent_rejections) >= window and min(at for at, _ in recent_rejections) > offset:
        return dataclasses.replace(
            outcome, detail=f"its offset left the memory's window of the last {window} rejections"
        )
    return dataclasses.replace(outcome, status=WriteOutcomeStatus.APPLIED)


class UnconfirmedWriteError(MemstreamError):
    """Events durable in the log whose application could not be confirmed.

    Nothing is lost: the consumer applies them in log order. Retry with the same message
    ids and event ids to learn the outcome: the consumer skips a repeated event id, so the
    retry is applied at most once and reports ``duplicate``. ``outcomes`` holds every
    event's outcome in order (``published`` for the unconfirmed ones, listed in
    ``unconfirmed``); ``event_ids`` are ready to pass back to ``append_many``.
    ``message_id``, ``event_id``, ``topic``, ``partition`` and ``offset`` are those of the
    first unconfirmed event.
    """

    retriable = True

    def __init__(self, memory_key: str, outcomes: Sequence[WriteOutcome], *, why: str) -> None:
        self.memory_key = memory_key
        self.outcomes = tuple(outcomes)
        self.unconfirmed = tuple(o for o in outcomes if o.status is WriteOutcomeStatus.PUBLISHED)
        self.why = why
        first = (
            self.unconfirmed[0] if self.unconfirmed else WriteOutcome(WriteOutcomeStatus.PUBLISHED)
        )
        self.message_id = first.message_id
        self.event_id = first.event_id
        self.topic = first.topic
        self.partition = first.partition
        self.offset = first.offset
        if not self.unconfirmed:
            super().__init__(f"{memory_key}: {why}")
            return
        n = len(self.unconfirmed)
        more = f" and {n - 1} more" if n > 1 else ""
        ids = "message id and event id" if first.message_id is not None else "event id"
        super().__init__(
            f"{memory_key}: {first.describe()}{more} is durable in the log, but its "
            f"application was not confirmed: {why}; retry with the same {ids} "
            "(it is applied at most once)"
        )

    @property
    def event_ids(self) -> list[str | None]:
        """One event id per outcome, in order (None: never published, any id will do)."""
        return [o.event_id for o in self.outcomes]


class WriteTimeoutError(UnconfirmedWriteError):
    """The consumer did not apply a write within the wait timeout (the write is still logged)."""

    def __init__(
        self,
        memory_key: str,
        offset: int,
        timeout: timedelta,
        *,
        outcomes: Sequence[WriteOutcome] = (),
    ) -> None:
        super().__init__(
            memory_key,
            outcomes,
            why=f"offset {offset} not applied within {timeout.total_seconds():g}s",
        )
        self.offset = offset
        self.timeout = timeout


class RejectedWriteError(RejectedEventError):
    """Events of a write that were rejected (dead-lettered); ``outcomes`` holds every event's.

    ``reason`` and ``detail`` are the first rejected event's; ``rejected`` lists them all.
    """

    def __init__(self, memory_key: str, outcomes: Sequence[WriteOutcome]) -> None:
        self.memory_key = memory_key
        self.outcomes = tuple(outcomes)
        self.rejected = tuple(o for o in outcomes if o.status is WriteOutcomeStatus.REJECTED)
        first = self.rejected[0]
        assert first.reason is not None
        detail = f"{first.describe()}: {first.detail}"
        if len(self.outcomes) > 1:
            listed = ", ".join(f"{o.message_id or o.event_id} {o.reason}" for o in self.rejected)
            detail += f" ({len(self.rejected)} of {len(self.outcomes)} rejected: {listed})"
        super().__init__(first.reason, detail)
        self.message_id = first.message_id
        self.event_id = first.event_id
        self.partition = first.partition
        self.offset = first.offset
