"""What writes report, against the real stack: applied, duplicate, rejected, unconfirmed."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from consumers.bootstrap import App
from consumers.runner import Runner
from memory_core import (
    AsyncSafeMemoryInstance,
    DeadLetterReason,
    Draft,
    MemoryConfig,
    PrivacyConfig,
    RejectedEventError,
    RejectedWriteError,
    Role,
    UnconfirmedWriteError,
    WriteOutcomeStatus,
)

Status = WriteOutcomeStatus
# Over the chat memory's short-term budget (250 tokens).
OVERSIZED = "word " * 300


def _config(app: App) -> MemoryConfig:
    entry = app.catalog.get("chat")
    assert entry is not None
    return entry.config


def _memory(app: App, user: str, config: MemoryConfig | None = None) -> AsyncSafeMemoryInstance:
    return AsyncSafeMemoryInstance(
        f"agent:a1:user:{user}", config or _config(app), store=app.store, publisher=app.producer
    )


async def test_an_append_reports_applied_and_a_repeat_of_its_event_reports_duplicate(
    app: App,
) -> None:
    memory = _memory(app, "dup")
    async with Runner(app, ["apply"]):
        first = await memory.append(Role.USER, "hello", message_id="m1", event_id="e1")
        again = await memory.append(Role.USER, "hello", message_id="m1", event_id="e1")
    assert first.status is Status.APPLIED
    assert (first.message_id, first.event_id) == ("m1", "e1")
    assert first.topic == app.producer.topic and first.partition is not None
    assert again.status is Status.DUPLICATE
    assert again.partition == first.partition and again.offset == (first.offset or 0) + 1
    assert [m.id for m in await memory.read()] == ["m1"]


async def test_an_oversized_message_raises_rejected_and_the_memory_goes_on(app: App) -> None:
    memory = _memory(app, "big")
    async with Runner(app, ["apply"]):
        with pytest.raises(RejectedEventError) as info:
            await memory.append(Role.USER, OVERSIZED, message_id="huge")
        after = await memory.append(Role.USER, "small", message_id="small")
    error = info.value
    assert isinstance(error, RejectedWriteError)
    assert error.reason is DeadLetterReason.OVERSIZED_MESSAGE
    assert error.message_id == "huge" and error.offset is not None
    assert "huge" in error.detail
    assert after.status is Status.APPLIED
    assert [m.id for m in await memory.read()] == ["small"]


async def test_append_many_waits_for_every_message_then_lists_the_rejected_ones(app: App) -> None:
    memory = _memory(app, "many")
    drafts = [
        Draft("a", Role.USER, "first", 0),
        Draft("b", Role.USER, OVERSIZED, 0),
        Draft("c", Role.ASSISTANT, "third", 0),
    ]
    async with Runner(app, ["apply"]):
        with pytest.raises(RejectedWriteError) as info:
            await memory.append_many(drafts)
    outcomes = info.value.outcomes
    assert [(o.message_id, o.status) for o in outcomes] == [
        ("a", Status.APPLIED),
        ("b", Status.REJECTED),
        ("c", Status.APPLIED),
    ]
    assert [o.offset for o in outcomes] == sorted(o.offset or 0 for o in outcomes)
    assert [m.id for m in await memory.read()] == ["a", "c"]


async def test_clear_and_flush_report_their_outcome(app: App) -> None:
    memory = _memory(app, "clear")
    async with Runner(app, ["apply"]):
        await memory.append(Role.USER, "one")
        flushed = await memory.flush(event_id="f1")
        cleared = await memory.clear()
    assert (flushed.status, flushed.event_id) == (Status.APPLIED, "f1")
    assert cleared.status is Status.APPLIED and cleared.message_id is None
    assert await memory.read() == []


async def test_a_role_the_policy_never_persists_is_reported_and_never_published(
    app: App,
) -> None:
    private = _config(app).model_copy(
        update={"privacy": PrivacyConfig(non_persistable_roles=(Role.TOOL,))}
    )
    memory = _memory(app, "private", private)
    outcome = await memory.append(Role.TOOL, "card 4111-1111", tool_call_id="c1", wait=None)
    assert outcome.status is Status.NOT_PERSISTED
    assert outcome.event_id is None and outcome.offset is None
    # Nothing reached the log: a consumer started now applies nothing to this memory.
    async with Runner(app, ["apply"]):
        marker = await _memory(app, "marker").append(Role.USER, "after")
    assert marker.status is Status.APPLIED
    assert not (await memory.health()).exists


async def test_an_unconfirmed_append_retried_with_its_ids_is_applied_once(app: App) -> None:
    memory = _memory(app, "unconfirmed")
    message_id = uuid.uuid4().hex
    # No consumer runs: the wait ends before anything applies the event.
    with pytest.raises(UnconfirmedWriteError) as info:
        await memory.append(
            Role.USER, "are you there?", message_id=message_id, wait=timedelta(seconds=0.3)
        )
    error = info.value
    assert error.message_id == message_id and error.event_id
    assert error.topic == app.producer.topic and error.offset is not None
    assert "durable in the log" in str(error)
    async with Runner(app, ["apply"]):
        retried = await memory.append(
            Role.USER,
            "are you there?",
            message_id=error.message_id,
            event_id=error.event_id,
            wait=timedelta(seconds=30),
        )
    assert retried.status is Status.DUPLICATE
    assert retried.offset == error.offset + 1
    assert [m.id for m in await memory.read()] == [message_id]
