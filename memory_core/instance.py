"""AsyncSafeMemoryInstance: one memory as agents use it (reads: store; writes: the log).

A write publishes its events and, with ``wait``, reports what the apply consumer did with
them: one ``WriteOutcome`` per event (per message for appends). Rejected events raise
``RejectedWriteError`` (a ``RejectedEventError``); events durable in the log whose fate could
not be confirmed raise ``UnconfirmedWriteError``, to be retried with the same ids.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from memory_core.config import MemoryConfig
from memory_core.errors import (
    DeadLetterReason,
    InvalidKeyError,
    MemstreamError,
    StoreUnavailableError,
)
from memory_core.health import MemoryHealth, budget_by_category
from memory_core.keys import KeyTemplate, validate_memory_key
from memory_core.models import Draft, Message, Role, Snapshot, ToolCall
from memory_core.ports import AppliedSignal, Clock, EventPublisher, MemoryStore, SystemClock
from memory_core.prompt import Prompt, build_prompt
from memory_core.tokens import TokenCounter
from memory_core.writes import (
    RejectedWriteError,
    UnconfirmedWriteError,
    WriteOutcome,
    WriteOutcomeStatus,
    WriteTimeoutError,
    settle_outcome,
)

DEFAULT_WAIT = timedelta(seconds=10)


class NoPublisherError(MemstreamError):
    """A write was attempted on an instance built without an event publisher."""


class NoCounterError(MemstreamError):
    """A prompt was asked of an instance built without a token counter."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a memory's messages."""

    messages: tuple[Message, ...]
    offset: int
    limit: int
    total: int
    exists: bool = True  # False: the memory was never written, or expired

    @property
    def has_more(self) -> bool:
        """Whether messages follow this page."""
        return self.offset + len(self.messages) < self.total


class AsyncSafeMemoryInstance:
    """One memory: reads go to the store; writes are events on the log (read-your-writes).

    Every write takes ``wait``: None returns once its events are durable (status
    ``published``); a duration waits until the consumer applied them and returns their
    outcome (``applied`` or ``duplicate``), raising ``RejectedWriteError`` or
    ``UnconfirmedWriteError``. Writes take the ids of an earlier attempt (``message_id``,
    ``event_id``) so a retry after an unconfirmed write is applied at most once.
    """

    def __init__(
        self,
        memory_key: str,
        config: MemoryConfig,
        *,
        store: MemoryStore,
        publisher: EventPublisher | None = None,
        clock: Clock | None = None,
        counter: TokenCounter | None = None,
        signal: AppliedSignal | None = None,
    ) -> None:
        self.memory_key = validate_memory_key(memory_key)
        self.config = config
        self._store = store
        self._publisher = publisher
        self._counter = counter
        self._signal = signal
        self._clock = clock or SystemClock()
        # Only the roles matter here (redaction is the producer's and the consumer's): no
        # patterns compiled per instance.
        self._blocked = frozenset(config.privacy.non_persistable_roles)
        self._renders = KeyTemplate(config.key).matches(self.memory_key)

    async def read(self) -> list[Message]:
        """Every message, oldest first."""
        return list((await self._store.read(self.memory_key)).messages)

    async def read_paginated(self, offset: int = 0, limit: int = 50) -> Page:
        """Messages ``offset`` .. ``offset + limit - 1``, oldest first."""
        if offset < 0 or limit <= 0:
            raise ValueError("offset must be >= 0 and limit > 0")
        snap = await self._store.read(self.memory_key, start=offset, stop=offset + limit - 1)
        return Page(snap.messages, offset, limit, snap.total_messages, snap.exists)

    async def prompt(self, max_tokens: int | None = None) -> Prompt:
        """The memory as OpenAI Chat Completions messages with ``prompt_tokens``, the exact
        bill for them; ``max_tokens`` keeps system messages and the newest whole tool units
        that fit (``PromptBudgetError`` if the system messages alone do not).

        Needs the instance built with the memory's ``counter``
        (``MemoryCatalog.instance`` passes it).
        """
        if self._counter is None:
            raise NoCounterError(
                f"{self.memory_key}: this instance was built without a token counter; pass "
                f"counter= (encoding {self.config.encoding_name}) to read it as a prompt"
            )
        return build_prompt(await self.read(), self._counter, max_tokens)

    async def len(self) -> int:
        """How many messages the memory holds."""
        return (await self._store.read(self.memory_key, start=0, stop=-1)).total_messages

    async def token_count(self) -> int:
        """Tokens held, all categories."""
        snap = await self._store.read(self.memory_key, start=0, stop=0)
        return sum(snap.tokens.values())

    async def health(self) -> MemoryHealth:
        """Usage against budget, flush and lock state, TTL and last applied offset."""
        snap = await self._store.read(self.memory_key, start=0, stop=0)
        fingerprint = self.config.fingerprint()
        return MemoryHealth(
            memory_key=self.memory_key,
            memory_id=snap.memory_id or self.config.id,
            exists=snap.exists,
            messages=snap.total_messages,
            max_messages=self.config.max_messages,
            tokens=dict(snap.tokens),
            budget=budget_by_category(self.config.budget),
            last_flush_at_ms=snap.last_flush_at_ms,
            last_tokens_saved=snap.last_tokens_saved,
            tokens_saved_total=snap.tokens_saved_total,
            flush_seq=snap.flush_seq,
            flush_pending=snap.flush_pending,
            lock_holder=snap.lock_holder,
            lock_ttl_ms=snap.lock_ttl_ms,
            key_ttl_ms=snap.key_ttl_ms,
            last_applied_offset=snap.last_offset,
            config_matches=None if not snap.exists else snap.config_fingerprint == fingerprint,
        )

    async def append(
        self,
        role: Role | str,
        content: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tool_call_id: str | None = None,
        tool_calls: Sequence[ToolCall] = (),
        message_id: str | None = None,
        event_id: str | None = None,
        wait: timedelta | None = DEFAULT_WAIT,
    ) -> WriteOutcome:
        """Publish one message; with ``wait``, wait until applied. Returns its outcome.

        Raises ``RejectedWriteError`` or ``UnconfirmedWriteError`` (see the class).
        """
        draft = Draft(
            id=message_id or uuid.uuid4().hex,
            role=Role(role),
            content=content,
            created_at_ms=self._clock.now_ms(),
            name=name,
            metadata=dict(metadata or {}),
            tool_call_id=tool_call_id,
            tool_calls=tuple(tool_calls),
        )
        ids = None if event_id is None else [event_id]
        [outcome] = await self.append_many([draft], wait=wait, event_ids=ids)
        return outcome

    async def append_many(
        self,
        drafts: Sequence[Draft],
        *,
        wait: timedelta | None = DEFAULT_WAIT,
        event_ids: Sequence[str | None] | None = None,
    ) -> list[WriteOutcome]:
        """Publish several messages in order; one outcome per draft, in the same order.

        Drafts of a role the privacy policy never persists are not published
        (``not_persisted``). ``event_ids`` (one per draft, None: a new one) reuse an earlier
        attempt's, e.g. ``UnconfirmedWriteError.event_ids``. With ``wait``, every event is
        waited for before anything is raised: ``RejectedWriteError`` if any was rejected (its
        ``outcomes`` tell which were applied), else ``UnconfirmedWriteError`` if any could
        not be confirmed.
        """
        publisher = self._require_publisher()
        timeout = _checked(wait)
        if event_ids is not None and len(event_ids) != len(drafts):
            raise ValueError(f"{len(event_ids)} event ids for {len(drafts)} drafts")
        ids = [e or uuid.uuid4().hex for e in event_ids or [None] * len(drafts)]
        kept = [i for i, d in enumerate(drafts) if d.role not in self._blocked]
        published = (
            await publisher.append(
                self.memory_key,
                self.config.id,
                [drafts[i] for i in kept],
                event_ids=[ids[i] for i in kept],
            )
            if kept
            else []
        )
        outcomes = [
            WriteOutcome(
                WriteOutcomeStatus.NOT_PERSISTED,
                message_id=d.id,
                detail=f"role {d.role.value} is never persisted by memory {self.config.id}",
            )
            for d in drafts
        ]
        for i, where in zip(kept, published, strict=True):
            outcomes[i] = WriteOutcome.published(where, drafts[i].id)
        return outcomes if timeout is None else await self._settle(outcomes, timeout)

    async def clear(
        self, *, wait: timedelta | None = DEFAULT_WAIT, event_id: str | None = None
    ) -> WriteOutcome:
        """Publish a clear of every message; returns its outcome (see ``append``)."""
        timeout = _checked(wait)
        where = await self._require_publisher().clear(
            self.memory_key, self.config.id, event_id=event_id or uuid.uuid4().hex
        )
        return await self._settle_one(WriteOutcome.published(where), timeout)

    async def flush(
        self, *, wait: timedelta | None = DEFAULT_WAIT, event_id: str | None = None
    ) -> WriteOutcome:
        """Request a flush now; returns the request's outcome (see ``append``).

        ``applied`` means the request was applied; the flush itself (when there is something
        to summarize) runs in the background as a workflow.
        """
        timeout = _checked(wait)
        where = await self._require_publisher().request_flush(
            self.memory_key, self.config.id, event_id=event_id or uuid.uuid4().hex
        )
        return await self._settle_one(WriteOutcome.published(where), timeout)

    async def wait_applied(self, offset: int, timeout: timedelta) -> None:
        """Wait until the consumer has applied ``offset`` of this memory."""
        if (
            await self._applied(WriteOutcome(WriteOutcomeStatus.PUBLISHED, offset=offset), timeout)
            is None
        ):
            raise WriteTimeoutError(self.memory_key, offset, timeout)

    async def _settle_one(self, outcome: WriteOutcome, timeout: timedelta | None) -> WriteOutcome:
        return outcome if timeout is None else (await self._settle([outcome], timeout))[0]

    async def _settle(self, outcomes: list[WriteOutcome], timeout: timedelta) -> list[WriteOutcome]:
        pending = [o for o in outcomes if o.offset is not None]
        if not pending:
            return outcomes
        # One memory's events share its partition: the last offset settles them all.
        last = max(pending, key=lambda o: o.offset or 0)
        try:
            snap = await self._applied(last, timeout)
        except StoreUnavailableError as exc:
            raise UnconfirmedWriteError(
                self.memory_key, outcomes, why=f"the store became unavailable ({exc})"
            ) from exc
        if snap is None:
            raise WriteTimeoutError(self.memory_key, last.offset or 0, timeout, outcomes=outcomes)
        settled = [
            _wrong_partition(o, snap.home or "")
            if _misplaced(snap, o)
            else settle_outcome(o, snap.recent_rejections)
            for o in outcomes
        ]
        if any(o.status is WriteOutcomeStatus.REJECTED for o in settled):
            raise RejectedWriteError(self.memory_key, settled)
        unknown = [o for o in settled if o.status is WriteOutcomeStatus.PUBLISHED]
        if unknown:
            raise UnconfirmedWriteError(self.memory_key, settled, why=unknown[0].detail)
        return settled

    async def _applied(self, last: WriteOutcome, timeout: timedelta) -> Snapshot | None:
        """The snapshot once it settles ``last`` (see ``_settles``); None if not in time."""
        deadline = self._clock.monotonic() + timeout.total_seconds()
        delay = 0.005
        signal = self._signal
        if signal is not None:
            await signal.start()  # subscribed before the read: no notice falls in between
        while True:
            snap = await self._store.read(self.memory_key, start=0, stop=0)
            if _settles(snap, last):
                return snap
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return None
            if signal is not None and last.topic is not None and last.offset is not None:
                # Woken by the consumer's notice for the partition, else re-read anyway.
                wait = min(remaining, signal.fallback_s)
                await signal.wait(last.topic, last.partition or 0, last.offset, wait)
                continue
            await self._clock.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _require_publisher(self) -> EventPublisher:
        if not self._renders:
            # The consumer dead-letters such events before they reach the memory (invalid_key
            # or memory_mismatch): refused here, where the writer can still be told.
            raise InvalidKeyError(
                f"{self.memory_key}: memory {self.config.id}'s key template "
                f"{self.config.key!r} cannot render this key, so its events would be "
                "dead-lettered; nothing was published",
                value=self.memory_key,
            )
        if self._publisher is None:
            raise NoPublisherError(
                f"{self.memory_key}: this instance was built without a publisher; "
                "build it with consumers.MemoryProducer to write"
            )
        return self._publisher


def _checked(wait: timedelta | None) -> timedelta | None:
    if wait is not None and wait < timedelta(0):
        raise ValueError(f"wait must be None or >= 0, not {wait}")
    return wait


def _settles(snap: Snapshot, last: WriteOutcome) -> bool:
    """Whether ``snap`` tells the fate of every event up to ``last`` (in its partition).

    Offsets compare only within the memory's home (``topic:partition``, None before its first
    write): a home in another partition of the same topic settles them as misplaced; a home
    in another topic (the memory lives in another topic generation) settles nothing.
    """
    if last.offset is None:
        return True
    if snap.home is None or last.topic is None or snap.home == f"{last.topic}:{last.partition}":
        return snap.last_offset >= last.offset
    return _misplaced(snap, last)


def _misplaced(snap: Snapshot, outcome: WriteOutcome) -> bool:
    # The apply consumer dead-letters a record outside its memory's home partition.
    if snap.home is None or outcome.topic is None or outcome.offset is None:
        return False
    topic, _, partition = snap.home.rpartition(":")
    return topic == outcome.topic and partition != str(outcome.partition)


def _wrong_partition(outcome: WriteOutcome, home: str) -> WriteOutcome:
    return dataclasses.replace(
        outcome,
        status=WriteOutcomeStatus.REJECTED,
        reason=DeadLetterReason.WRONG_PARTITION,
        detail=f"it landed in partition {outcome.partition}, the memory's home is {home}",
    )
