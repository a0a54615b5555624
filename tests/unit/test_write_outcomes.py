"""What a write reports: the outcome lookup in the memory's window, and the instance's contract."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from memory_core import (
    AsyncSafeMemoryInstance,
    Category,
    DeadLetterReason,
    Draft,
    InvalidKeyError,
    MemoryConfig,
    Published,
    RejectedEventError,
    RejectedWriteError,
    Role,
    Snapshot,
    StoreUnavailableError,
    UnconfirmedWriteError,
    WriteOutcome,
    WriteOutcomeStatus,
    WriteTimeoutError,
    parse_config,
)
from memory_core.eviction import REJECTION_WINDOW
from memory_core.writes import settle_outcome

KEY = "agent:a1:user:u1"
TOPIC = "events"
PARTITION = 2
Status = WriteOutcomeStatus


def _published(offset: int, *, partition: int = PARTITION) -> WriteOutcome:
    return WriteOutcome.published(Published("e", TOPIC, partition, offset), "m")


# -- the lookup: a pure function of the window and the offset ------------------------------


def test_an_offset_absent_from_a_window_with_room_was_applied() -> None:
    settled = settle_outcome(_published(7), [(3, "oversized_message"), (9, "duplicate_id")])
    assert settled.status is Status.APPLIED
    assert (settled.event_id, settled.partition, settled.offset) == ("e", PARTITION, 7)


def test_an_offset_listed_with_a_dead_letter_reason_was_rejected_for_it() -> None:
    settled = settle_outcome(_published(7), [(3, "duplicate_id"), (7, "orphan_tool_result")])
    assert settled.status is Status.REJECTED
    assert settled.reason is DeadLetterReason.ORPHAN_TOOL_RESULT
    assert "tool call" in settled.detail


def test_an_offset_listed_as_duplicate_id_was_a_duplicate() -> None:
    assert settle_outcome(_published(7), [(7, "duplicate_id")]).status is Status.DUPLICATE


def test_an_offset_older_than_a_full_window_is_unknown() -> None:
    window = [(100 + i, "oversized_message") for i in range(REJECTION_WINDOW)]
    settled = settle_outcome(_published(7), window)
    assert settled.status is Status.PUBLISHED
    assert "window" in settled.detail


def test_an_offset_inside_a_full_window_and_absent_from_it_was_applied() -> None:
    window = [(2 * i, "oversized_message") for i in range(REJECTION_WINDOW)]
    assert settle_outcome(_published(7), window).status is Status.APPLIED


def test_a_reason_this_code_does_not_know_leaves_the_outcome_unknown() -> None:
    settled = settle_outcome(_published(7), [(7, "from_the_future")])
    assert settled.status is Status.PUBLISHED
    assert "from_the_future" in settled.detail


def test_an_outcome_that_was_never_published_is_left_as_it_is() -> None:
    dropped = WriteOutcome(Status.NOT_PERSISTED, message_id="m")
    assert settle_outcome(dropped, [(7, "oversized_message")]) is dropped


# -- the instance, over fakes of its ports --------------------------------------------------


class FakeClock:
    """Time that moves only when the code sleeps; runs ``on_sleep`` at each sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.on_sleep: list[Any] = []

    def monotonic(self) -> float:
        return self.now

    def now_ms(self) -> int:
        return 1_700_000_000_000 + int(self.now * 1000)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in self.on_sleep:
            hook()


class FakeStore:
    """A memory's state as a test sets it: applied offset, rejections window, home partition."""

    def __init__(self) -> None:
        self.last_offset = -1
        self.rejections: list[tuple[int, str]] = []
        self.home: str | None = None
        self.down = False
        self.reads = 0

    async def read(self, memory_key: str, *, start: int = 0, stop: int = -1) -> Snapshot:
        self._check()
        self.reads += 1
        return _snapshot(memory_key, self.last_offset, tuple(self.rejections), self.home)

    async def applied_offset(self, memory_key: str) -> int:
        self._check()
        self.reads += 1
        return self.last_offset

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("Redis is unreachable: connection refused")


def _snapshot(
    key: str, last_offset: int, rejections: tuple[tuple[int, str], ...], home: str | None
) -> Snapshot:
    fields: dict[str, Any] = {
        "memory_key": key,
        "messages": (),
        "total_messages": 0,
        "tokens": dict.fromkeys(Category, 0),
        "version": 1,
        "last_offset": last_offset,
        "flush_seq": 0,
        "flush_pending": False,
        "flush_offset": -1,
        "last_flush_at_ms": None,
        "last_tokens_saved": 0,
        "tokens_saved_total": 0,
        "recent_rejections": rejections,
        "config_fingerprint": None,
        "memory_id": "chat",
        "lock_holder": None,
        "lock_ttl_ms": None,
        "key_ttl_ms": None,
        "home": home,
    }
    return Snapshot(**fields)


class FakePublisher:
    """Assigns offsets in one partition and records what was published, with which ids."""

    def __init__(self) -> None:
        self.next_offset = 10
        self.appended: list[tuple[Draft, str]] = []
        self.others: list[tuple[str, str]] = []

    def _land(self, event_id: str) -> Published:
        self.next_offset += 1
        return Published(event_id, TOPIC, PARTITION, self.next_offset - 1)

    async def append(
        self,
        memory_key: str,
        memory_id: str,
        drafts: Sequence[Draft],
        *,
        event_ids: Sequence[str] | None = None,
    ) -> list[Published]:
        assert event_ids is not None and len(event_ids) == len(drafts)
        self.appended += zip(drafts, event_ids, strict=True)
        return [self._land(e) for e in event_ids]

    async def clear(
        self, memory_key: str, memory_id: str, *, event_id: str | None = None
    ) -> Published:
        assert event_id is not None
        self.others.append(("clear", event_id))
        return self._land(event_id)

    async def request_flush(
        self, memory_key: str, memory_id: str, *, event_id: str | None = None
    ) -> Published:
        assert event_id is not None
        self.others.append(("flush", event_id))
        return self._land(event_id)


CONFIG = parse_config(
    {
        "id": "chat",
        "key": "agent:{agent_id}:user:{user_id}",
        "max_tokens": 400,
        "privacy": {"non_persistable_roles": ["tool"]},
    }
)


class Rig:
    """An instance over fakes; ``consume`` makes the fake consumer apply what was published."""

    def __init__(self, config: MemoryConfig = CONFIG) -> None:
        self.clock = FakeClock()
        self.store = FakeStore()
        self.publisher = FakePublisher()
        self.memory = AsyncSafeMemoryInstance(
            KEY, config, store=self.store, publisher=self.publisher, clock=self.clock
        )

    def consume(self, rejections: dict[int, str] | None = None) -> None:
        """On the next sleep, the consumer applies everything published so far."""

        def apply() -> None:
            for offset in range(self.store.last_offset + 1, self.publisher.next_offset):
                if rejections and offset in rejections:
                    self.store.rejections.append((offset, rejections[offset]))
            self.store.last_offset = self.publisher.next_offset - 1

        self.clock.on_sleep = [apply]


async def test_a_waited_append_reports_applied_with_its_ids_and_position() -> None:
    rig = Rig()
    rig.consume()
    outcome = await rig.memory.append(Role.USER, "hi", message_id="m1", event_id="e1")
    assert outcome == WriteOutcome(
        Status.APPLIED, event_id="e1", message_id="m1", topic=TOPIC, partition=2, offset=10
    )
    assert [(d.id, e) for d, e in rig.publisher.appended] == [("m1", "e1")]


async def test_an_append_not_waited_for_reports_published_without_reading_the_store() -> None:
    rig = Rig()
    outcome = await rig.memory.append(Role.USER, "hi", wait=None)
    assert outcome.status is Status.PUBLISHED
    assert outcome.event_id == rig.publisher.appended[0][1]
    assert outcome.position == "2:10"
    assert rig.store.reads == 0


async def test_a_retry_with_the_same_ids_reports_duplicate() -> None:
    rig = Rig()
    rig.consume({11: "duplicate_id"})
    first = await rig.memory.append(Role.USER, "hi", message_id="m1", event_id="e1")
    again = await rig.memory.append(Role.USER, "hi", message_id="m1", event_id="e1")
    assert (first.status, again.status) == (Status.APPLIED, Status.DUPLICATE)
    assert again.offset == 11


async def test_a_non_persistable_role_is_reported_not_persisted_and_never_published() -> None:
    rig = Rig()
    outcome = await rig.memory.append(Role.TOOL, "secret result", tool_call_id="c1")
    assert outcome.status is Status.NOT_PERSISTED
    assert outcome.offset is None and outcome.event_id is None
    assert "never persisted" in outcome.detail
    assert rig.publisher.appended == [] and rig.store.reads == 0


async def test_append_many_rejects_after_waiting_for_all_and_says_which_were_applied() -> None:
    rig = Rig()
    rig.consume({11: "oversized_message"})
    drafts = [
        Draft(f"m{i}", role, "text", 0)
        for i, role in enumerate((Role.USER, Role.USER, Role.TOOL, Role.ASSISTANT))
    ]
    with pytest.raises(RejectedWriteError) as info:
        await rig.memory.append_many(drafts)
    error = info.value
    assert isinstance(error, RejectedEventError)
    assert error.reason is DeadLetterReason.OVERSIZED_MESSAGE
    assert [o.status for o in error.outcomes] == [
        Status.APPLIED,
        Status.REJECTED,
        Status.NOT_PERSISTED,
        Status.APPLIED,
    ]
    assert [o.message_id for o in error.rejected] == ["m1"]
    assert (error.message_id, error.partition, error.offset) == ("m1", PARTITION, 11)
    assert "m1" in error.detail and "1 of 4 rejected" in error.detail


async def test_append_many_returns_one_outcome_per_draft_in_order() -> None:
    rig = Rig()
    rig.consume()
    drafts = [Draft("m0", Role.USER, "a", 0), Draft("m1", Role.TOOL, "b", 0)]
    outcomes = await rig.memory.append_many(drafts, event_ids=["e0", "e1"])
    assert [(o.message_id, o.status) for o in outcomes] == [
        ("m0", Status.APPLIED),
        ("m1", Status.NOT_PERSISTED),
    ]
    assert rig.publisher.appended == [(drafts[0], "e0")]


async def test_a_timed_out_wait_is_unconfirmed_and_names_the_ids_to_retry_with() -> None:
    rig = Rig()
    with pytest.raises(WriteTimeoutError) as info:
        await rig.memory.append(
            Role.USER, "hi", message_id="m1", event_id="e1", wait=timedelta(seconds=0.5)
        )
    error = info.value
    assert isinstance(error, UnconfirmedWriteError) and error.retriable
    assert (error.message_id, error.event_id, error.partition, error.offset) == ("m1", "e1", 2, 10)
    assert error.event_ids == ["e1"]
    assert "durable in the log" in str(error) and "same message id and event id" in str(error)
    assert "not applied within 0.5s" in str(error)


async def test_an_unconfirmed_append_many_is_retried_by_passing_back_its_event_ids() -> None:
    rig = Rig()
    drafts = [Draft("m0", Role.USER, "a", 0), Draft("m1", Role.TOOL, "b", 0)]
    with pytest.raises(UnconfirmedWriteError) as info:
        await rig.memory.append_many(drafts, wait=timedelta(seconds=0.1))
    error = info.value
    assert [o.status for o in error.outcomes] == [Status.PUBLISHED, Status.NOT_PERSISTED]
    assert [o.message_id for o in error.unconfirmed] == ["m0"]
    assert error.event_ids == [rig.publisher.appended[0][1], None]
    rig.consume({11: "duplicate_id"})
    retried = await rig.memory.append_many(drafts, event_ids=error.event_ids)
    assert [o.status for o in retried] == [Status.DUPLICATE, Status.NOT_PERSISTED]
    assert [e for _, e in rig.publisher.appended] == [error.event_id, error.event_id]


async def test_the_store_failing_while_waiting_is_unconfirmed_not_lost() -> None:
    rig = Rig()

    def fail() -> None:
        rig.store.down = True

    rig.clock.on_sleep = [fail]
    with pytest.raises(UnconfirmedWriteError) as info:
        await rig.memory.clear(event_id="c1")
    assert not isinstance(info.value, WriteTimeoutError)
    assert isinstance(info.value.__cause__, StoreUnavailableError)
    assert info.value.event_id == "c1" and info.value.message_id is None
    assert "store became unavailable" in str(info.value)


async def test_an_outcome_that_left_the_window_is_unconfirmed() -> None:
    rig = Rig()
    rig.consume()
    rig.store.rejections = [(1000 + i, "oversized_message") for i in range(REJECTION_WINDOW)]
    with pytest.raises(UnconfirmedWriteError, match="window"):
        await rig.memory.flush()


async def test_clear_and_flush_report_their_outcome() -> None:
    rig = Rig()
    rig.consume()
    cleared = await rig.memory.clear(event_id="c1")
    flushed = await rig.memory.flush()
    assert (cleared.status, cleared.event_id, cleared.message_id) == (Status.APPLIED, "c1", None)
    assert flushed.status is Status.APPLIED
    assert [kind for kind, _ in rig.publisher.others] == ["clear", "flush"]


async def test_an_event_outside_the_memorys_home_partition_is_rejected_as_wrong_partition() -> None:
    rig = Rig()
    rig.store.home, rig.store.last_offset = f"{TOPIC}:0", 500
    with pytest.raises(RejectedWriteError) as info:
        await rig.memory.append(Role.USER, "hi")
    assert info.value.reason is DeadLetterReason.WRONG_PARTITION
    assert f"home is {TOPIC}:0" in info.value.detail
    assert rig.clock.now == 0  # told at the first look, no wait


async def test_offsets_are_compared_only_in_the_memorys_home() -> None:
    rig = Rig()
    rig.consume()
    rig.store.home = f"{TOPIC}:{PARTITION}"
    assert (await rig.memory.append(Role.USER, "hi")).status is Status.APPLIED
    # A home in another topic (another generation): its offsets tell nothing of this event.
    rig.store.home, rig.store.last_offset = "events.g2:0", 10_000
    with pytest.raises(UnconfirmedWriteError):
        await rig.memory.append(Role.USER, "hi", wait=timedelta(seconds=0.2))


async def test_a_negative_wait_is_refused_before_anything_is_published() -> None:
    rig = Rig()
    with pytest.raises(ValueError, match="wait"):
        await rig.memory.append(Role.USER, "hi", wait=timedelta(seconds=-1))
    assert rig.publisher.appended == []


async def test_a_key_the_memorys_template_cannot_render_is_refused_before_publishing() -> None:
    rig = Rig()
    memory = AsyncSafeMemoryInstance(
        "team:x", CONFIG, store=rig.store, publisher=rig.publisher, clock=rig.clock
    )
    with pytest.raises(InvalidKeyError, match="cannot render this key"):
        await memory.clear()
    assert rig.publisher.others == []


async def test_wait_applied_and_the_old_timeout_error_keep_working() -> None:
    rig = Rig()
    with pytest.raises(WriteTimeoutError, match="offset 5 not applied within 1s"):
        await rig.memory.wait_applied(5, timedelta(seconds=1))
    legacy = WriteTimeoutError(KEY, 5, timedelta(seconds=2))
    assert (legacy.memory_key, legacy.offset, legacy.event_ids) == (KEY, 5, [])
