"""The flush lifecycle on real Kafka, Redis and Temporal: command, workflow, applied summary."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError, RPCStatusCode

from consumers.bootstrap import App, build_app
from consumers.dispatcher import FlushDispatcher
from consumers.events import FLUSHED
from consumers.runner import Runner
from consumers.settings import Settings
from memory_core import AsyncSafeMemoryInstance, Category, Draft, Kind, Role, Snapshot
from memory_core.privacy import key_digest
from memory_core.temporal import UNKNOWN_MEMORY, FlushMemory, workflow_id
from schemas import FLUSH_COMMAND, MEMORY_EVENT
from tests.integration.test_ordering import read_topic
from tests.services import MEMORIES


def _memory(app: App, name: str) -> AsyncSafeMemoryInstance:
    """A ``chat`` memory whose key is unique to this test (workflow ids are namespace-wide)."""
    key = f"agent:{app.settings.key_prefix}:user:{name}"
    return AsyncSafeMemoryInstance(
        key, app.catalog.config("chat"), store=app.store, publisher=app.producer
    )


async def _until(
    probe: Callable[[], Awaitable[Snapshot]],
    done: Callable[[Snapshot], bool],
    timeout: float = 30.0,
    what: str = "condition",
) -> Snapshot:
    deadline = time.monotonic() + timeout
    while not done(snap := await probe()):
        assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
        await asyncio.sleep(0.1)
    return snap


def _flushed(snap: Snapshot) -> bool:
    return not snap.flush_pending and any(m.kind is Kind.SUMMARY for m in snap.messages)


def _text(i: int, words: int = 5) -> str:
    return f"message {i}: " + " ".join(f"topic{i}x{j}" for j in range(words))


async def _flushed_events(app: App, memory_key: str) -> list[str]:
    """Event ids of the MemoryFlushed events of ``memory_key`` in the log."""
    records = await read_topic(app.settings.kafka_bootstrap, app.settings.events_topic)
    decoded = [app.codec.decode(MEMORY_EVENT, r.value) for r in records]
    return [
        d["event_id"]
        for d in decoded
        if d["memory_key"] == memory_key and d["payload"][0] == FLUSHED
    ]


async def _workflow_runs(client: Client, wf_id: str) -> int:
    """How many executions Temporal holds for ``wf_id`` (visibility lags: wait for one)."""
    deadline = time.monotonic() + 10
    while True:
        runs = [wf async for wf in client.list_workflows(f'WorkflowId = "{wf_id}"')]
        if runs or time.monotonic() > deadline:
            return len(runs)
        await asyncio.sleep(0.2)


async def _dispatched(dispatcher: FlushDispatcher, commands: int) -> None:
    """Wait until ``dispatcher`` has handled ``commands`` flush commands."""
    deadline = time.monotonic() + 10
    while dispatcher.started + dispatcher.duplicates < commands:
        assert time.monotonic() < deadline, f"{commands} commands not dispatched"
        await asyncio.sleep(0.05)


def _role(i: int) -> Role:
    return Role.USER if i % 2 else Role.ASSISTANT


async def _append_until_flush_requested(memory: AsyncSafeMemoryInstance) -> tuple[list[str], int]:
    """Append messages until the threshold requests a flush: their ids, oldest first, and the
    log offset of the one that crossed it."""
    ids: list[str] = []
    while True:
        draft = Draft(uuid.uuid4().hex, _role(len(ids)), _text(len(ids)), int(time.time() * 1000))
        [outcome] = await memory.append_many([draft])
        assert outcome.offset is not None
        offset = outcome.offset
        ids.append(draft.id)
        if (await memory.health()).flush_seq:
            return ids, offset
        assert len(ids) < 40, "the threshold never requested a flush"


async def test_crossing_the_threshold_flushes_the_oldest_block_once_through_temporal(
    app: App, pipeline: Runner, temporal_client: Client
) -> None:
    memory = _memory(app, "threshold")
    entry = app.catalog.get("chat")
    assert entry is not None
    ids, threshold_offset = await _append_until_flush_requested(memory)
    # The threshold is below the budget: nothing was evicted before the flush.
    budget = memory.config.budget
    assert (await memory.health()).tokens[Category.SHORT_TERM] <= budget.short_term

    snap = await _until(lambda: app.store.read(memory.memory_key), _flushed, 60, "summary applied")

    commands = [
        app.codec.decode(FLUSH_COMMAND, r.value)
        for r in await read_topic(app.settings.kafka_bootstrap, app.settings.flush_topic)
    ]
    assert [(c["memory_key"], c["memory_id"], c["flush_seq"]) for c in commands] == [
        (memory.memory_key, "chat", 1)
    ]
    assert commands[0]["source_offset"] == threshold_offset

    prefix = app.settings.key_prefix
    wf_id = workflow_id(memory.memory_key, 1, threshold_offset, prefix)
    # The key's digest, not the key (it embeds a user id).
    assert wf_id == f"flush:{prefix}:{key_digest(memory.memory_key)}:1@{threshold_offset}"
    assert memory.memory_key not in wf_id
    handle = temporal_client.get_workflow_handle_for(FlushMemory.run, wf_id)
    output = await handle.result()
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    assert await _workflow_runs(temporal_client, wf_id) == 1

    summaries = [m for m in snap.messages if m.kind is Kind.SUMMARY]
    assert len(summaries) == 1
    summary = summaries[0]
    block = max(2, math.ceil(memory.config.flushing.summarize_oldest_percent * len(ids)))
    # The summary takes the place of exactly the oldest block; everything else stays in order.
    assert summary.covers == tuple(ids[:block])
    assert [m.id for m in snap.messages] == [summary.id, *ids[block:]]
    removed = sum(entry.counter.message_tokens(_role(i).value, _text(i)) for i in range(block))
    assert snap.last_tokens_saved == removed - summary.tokens > 0
    assert snap.tokens_saved_total == snap.last_tokens_saved
    assert snap.tokens[Category.LONG_TERM] == summary.tokens
    assert (snap.flush_seq, snap.flush_pending) == (1, False)
    assert (output.outcome, output.covered, output.tokens_saved) == (
        "flushed",
        block,
        snap.last_tokens_saved,
    )
    assert await _flushed_events(app, memory.memory_key) == [wf_id]
    assert pipeline.dispatcher is not None
    assert pipeline.dispatcher.started == 1


@pytest.fixture
async def producer(app: App) -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka producer, for flush commands written by hand."""
    raw = AIOKafkaProducer(bootstrap_servers=app.settings.kafka_bootstrap, acks="all")
    await raw.start()
    yield raw
    await raw.stop()


async def test_duplicate_flush_commands_start_one_workflow_and_flush_once(
    app: App, temporal_client: Client, producer: AIOKafkaProducer
) -> None:
    memory = _memory(app, "duplicates")
    settings = app.settings
    async with Runner(app, ["apply"]):
        _, requested_at = await _append_until_flush_requested(memory)
        wf_id = workflow_id(memory.memory_key, 1, requested_at, settings.key_prefix)
        [command] = await read_topic(settings.kafka_bootstrap, settings.flush_topic)
        # The very same record again, as a redelivering consumer would produce it.
        await producer.send_and_wait(
            settings.flush_topic, command.value, key=command.key, headers=list(command.headers)
        )
        async with Runner(app, ["dispatch", "worker"], temporal=temporal_client) as roles:
            dispatcher = roles.dispatcher
            assert dispatcher is not None
            snap = await _until(
                lambda: app.store.read(memory.memory_key), _flushed, 60, "summary applied"
            )
            handle = temporal_client.get_workflow_handle_for(FlushMemory.run, wf_id)
            assert (await asyncio.wait_for(handle.result(), 30)).outcome == "flushed"
            await _dispatched(dispatcher, 2)
            # Once more after the workflow completed: rejected as the same flush.
            started, duplicates = dispatcher.started, dispatcher.duplicates
            await producer.send_and_wait(settings.flush_topic, command.value, key=command.key)
            await _dispatched(dispatcher, 3)
            assert (dispatcher.started, dispatcher.duplicates) == (started, duplicates + 1)
        await asyncio.sleep(0.5)  # a second MemoryFlushed, had one been published, is applied

    assert await _workflow_runs(temporal_client, wf_id) == 1
    assert await _flushed_events(app, memory.memory_key) == [wf_id]
    after = await app.store.read(memory.memory_key)
    assert after.messages == snap.messages
    assert [m.kind for m in after.messages].count(Kind.SUMMARY) == 1
    assert after.tokens_saved_total == snap.last_tokens_saved


async def test_a_flush_command_for_an_unknown_memory_fails_without_retries(
    app: App, pipeline: Runner, temporal_client: Client, producer: AIOKafkaProducer
) -> None:
    key = f"agent:{app.settings.key_prefix}:user:unknown"
    command = {
        "command_id": f"{key}:1",
        "memory_key": key,
        "memory_id": "no-such-memory",
        "flush_seq": 1,
        "requested_at": 1_700_000_000_000,
        "source_offset": 0,
    }
    await producer.send_and_wait(
        app.settings.flush_topic, app.codec.encode(FLUSH_COMMAND, command), key=key.encode()
    )

    wf_id = workflow_id(key, 1, 0, app.settings.key_prefix)
    handle = temporal_client.get_workflow_handle_for(FlushMemory.run, wf_id)
    deadline = time.monotonic() + 30
    while True:
        try:
            await handle.describe()
            break
        except RPCError as exc:
            assert exc.status is RPCStatusCode.NOT_FOUND
            assert time.monotonic() < deadline, "no workflow was started"
            await asyncio.sleep(0.1)
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), 30)
    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    assert activity_error.retry_state is RetryState.NON_RETRYABLE_FAILURE
    cause = activity_error.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == UNKNOWN_MEMORY
    assert cause.non_retryable
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED
    assert not (await app.store.read(key)).exists
    assert await _flushed_events(app, key) == []


async def test_an_explicit_flush_below_the_threshold_summarizes_the_oldest_messages(
    app: App, pipeline: Runner, temporal_client: Client
) -> None:
    memory = _memory(app, "explicit")
    ids = [(await memory.append(Role.USER, _text(i))).message_id for i in range(4)]
    before = await memory.health()
    assert before.usage[Category.SHORT_TERM] < memory.config.flushing.threshold
    assert (before.flush_seq, before.flush_pending) == (0, False)

    await memory.flush()
    snap = await _until(lambda: app.store.read(memory.memory_key), _flushed, 60, "summary")
    [summary] = [m for m in snap.messages if m.kind is Kind.SUMMARY]
    assert summary.covers == tuple(ids[:2])
    assert [m.id for m in snap.messages] == [summary.id, *ids[2:]]
    assert snap.flush_seq == 1
    assert snap.last_tokens_saved > 0
    wf_id = workflow_id(memory.memory_key, 1, snap.flush_offset, app.settings.key_prefix)
    output = await temporal_client.get_workflow_handle_for(FlushMemory.run, wf_id).result()
    assert output.outcome == "flushed"


EPHEMERAL = MEMORIES.replace("model: gpt-4o", "model: gpt-4o\n    persistence: {ttl: 2s}")


@pytest.fixture
async def ephemeral_app(
    test_settings: Settings, tmp_path: Path, temporal_client: Client
) -> AsyncIterator[App]:
    """The ``chat`` memory with a 2 s TTL, every role running."""
    path = tmp_path / "ephemeral.yaml"
    path.write_text(EPHEMERAL)
    settings = test_settings.model_copy(update={"memories_file": path})
    async with build_app(settings) as built, Runner(built, temporal=temporal_client):
        yield built


async def test_a_memory_recreated_after_its_ttl_expired_flushes_again(
    ephemeral_app: App,
) -> None:
    app = ephemeral_app
    memory = _memory(app, "ephemeral")
    assert memory.config.persistence.ttl.total_seconds() == 2
    for i in range(3):
        await memory.append(Role.USER, _text(i))
    await memory.flush()
    await _until(lambda: app.store.read(memory.memory_key), _flushed, 30, "first summary")

    await _until(lambda: app.store.read(memory.memory_key), lambda s: not s.exists, 10, "expiry")
    ids = [(await memory.append(Role.USER, _text(i))).message_id for i in range(3, 6)]
    await memory.flush()
    # The recreated memory counts flushes from 1 again; its flush must still run.
    snap = await _until(
        lambda: app.store.read(memory.memory_key), _flushed, 20, "summary after expiry"
    )
    [summary] = [m for m in snap.messages if m.kind is Kind.SUMMARY]
    assert summary.covers == tuple(ids[:2])
