"""Redelivered and re-produced events change nothing; a redelivered flush runs once."""

from __future__ import annotations

import asyncio
import random
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from consumers.apply import ApplyConsumer, BatchReport
from consumers.bootstrap import App
from consumers.runner import Runner
from memory_core import Kind
from memory_core.temporal import FlushMemory, workflow_id
from schemas import FLUSH_COMMAND
from tests.integration.test_ordering import (
    apply_consumer,
    conversation,
    drain,
    produce_concurrently,
    read_topic,
    stored_state,
    workload,
)


async def _steps_until(consumer: ApplyConsumer, records: int, timeout: float = 60.0) -> BatchReport:
    """Step until ``records`` more records are processed; the sum of those steps' reports."""
    total = BatchReport()
    deadline = time.monotonic() + timeout
    while total.records < records:
        assert time.monotonic() < deadline, f"{total.records} of {records} records in {timeout}s"
        r = await consumer.step(timeout_ms=100)
        total.records += r.records
        total.applied += r.applied
        total.duplicates += r.duplicates
        total.dead_lettered += r.dead_lettered
        total.flushes_requested += r.flushes_requested
    return total


async def _flush_commands(app: App) -> list[tuple[str, int]]:
    """(memory key, flush seq) of every command on the flush topic."""
    records = await read_topic(app.settings.kafka_bootstrap, app.settings.flush_topic)
    decoded = [app.codec.decode(FLUSH_COMMAND, r.value) for r in records]
    return sorted((c["memory_key"], c["flush_seq"]) for c in decoded)


async def test_each_event_produced_twice_gives_the_state_of_one_production(app: App) -> None:
    prefix = app.settings.key_prefix
    once = conversation(random.Random(5), f"agent:{prefix}:user:once", 30)
    twice = conversation(random.Random(5), f"agent:{prefix}:user:twice", 30)
    assert once.event_ids == twice.event_ids
    await app.producer.send_records(once.memory_key, once.records)
    # A producer that retried every send: each event twice in a row, same event id.
    await app.producer.send_records(twice.memory_key, [r for r in twice.records for _ in (0, 1)])

    async with apply_consumer(app, max_records=16) as consumer:
        report = await _steps_until(consumer, 90)
    assert report.duplicates == 30
    assert report.applied == 60
    assert report.dead_lettered == 0

    single = await app.store.read(once.memory_key)
    doubled = await app.store.read(twice.memory_key)
    assert single.messages
    assert doubled.messages == single.messages
    assert doubled.tokens == single.tokens
    assert (doubled.flush_seq, doubled.flush_pending) == (single.flush_seq, single.flush_pending)


async def test_a_stream_produced_again_with_the_same_event_ids_changes_nothing(app: App) -> None:
    conversations = workload(seed=11, prefix=app.settings.key_prefix, keys=12, events=20)
    total = sum(len(c.records) for c in conversations)
    async with apply_consumer(app) as consumer:
        await produce_concurrently(app, conversations)
        first = await _steps_until(consumer, total)
        assert first.applied == total
        before = {c.memory_key: await app.store.read(c.memory_key) for c in conversations}

        await produce_concurrently(app, conversations, seed=1)
        again = await _steps_until(consumer, total)

    assert again.duplicates == total
    assert again.applied == 0
    assert again.dead_lettered == 0
    assert again.flushes_requested == 0
    for conv in conversations:
        after = await app.store.read(conv.memory_key)
        old = before[conv.memory_key]
        # Only the applied offset moves: the copies sit later in the log.
        assert after.last_offset > old.last_offset
        moved = {"last_offset": None}
        assert {**stored_state(after), **moved} == {**stored_state(old), **moved}


async def _executions(client: Client, wf_id: str) -> list[WorkflowExecution]:
    """Every execution of ``wf_id`` (visibility is eventually consistent: wait for one)."""
    deadline = time.monotonic() + 10
    while True:
        runs = [wf async for wf in client.list_workflows(f'WorkflowId = "{wf_id}"')]
        if runs or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(0.2)


async def _reset_offsets_to_zero(app: App) -> None:
    """What a consumer that crashed before committing leaves: the group's offsets at 0."""
    settings = app.settings
    reset = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await reset.start()
    try:
        tps = [TopicPartition(settings.events_topic, p) for p in range(settings.topic_partitions)]
        reset.assign(tps)
        await reset.commit(dict.fromkeys(tps, 0))
        assert all([await reset.committed(tp) == 0 for tp in tps])
    finally:
        await reset.stop()


async def test_a_redelivered_stream_changes_nothing_and_its_pending_flush_runs_once(
    app: App, temporal_client: Client
) -> None:
    conversations = workload(seed=3, prefix=app.settings.key_prefix, keys=6, events=25)
    total = sum(len(c.records) for c in conversations)
    await produce_concurrently(app, conversations)
    async with apply_consumer(app) as first:
        await drain(first, total)
    before = {c.memory_key: await app.store.read(c.memory_key) for c in conversations}
    pending = sorted(k for k, s in before.items() if s.flush_pending)
    assert pending, "the workload must leave some flush pending"
    # Every flush was requested once; a clear ended some before they ran.
    requested = sorted((k, seq) for k, s in before.items() for seq in range(1, s.flush_seq + 1))
    assert await _flush_commands(app) == requested

    await _reset_offsets_to_zero(app)
    async with apply_consumer(app) as restarted:
        redelivered = await _steps_until(restarted, total)
    assert redelivered.duplicates == total
    assert redelivered.applied == 0
    assert redelivered.dead_lettered == 0
    assert redelivered.flushes_requested == len(pending)
    for key, old in before.items():
        assert stored_state(await app.store.read(key)) == stored_state(old)
    # Each pending flush, and only those, was requested again with the same sequence number.
    again = [(k, before[k].flush_seq) for k in pending]
    assert await _flush_commands(app) == sorted(requested + again)

    async with Runner(app, temporal=temporal_client) as runner:
        dispatcher = runner.dispatcher
        assert dispatcher is not None
        deadline = time.monotonic() + 60
        while True:
            snaps = [await app.store.read(k) for k in pending]
            dispatched = dispatcher.started + dispatcher.duplicates
            if not any(s.flush_pending for s in snaps) and dispatched >= len(requested + again):
                break
            assert time.monotonic() < deadline, "pending flushes did not complete"
            await asyncio.sleep(0.2)
        assert dispatched == len(requested + again)

        for key, snap in zip(pending, snaps, strict=True):
            assert [m.kind for m in snap.messages].count(Kind.SUMMARY) == 1
            wf_id = workflow_id(
                key, before[key].flush_seq, before[key].flush_offset, app.settings.key_prefix
            )
            handle = temporal_client.get_workflow_handle_for(FlushMemory.run, wf_id)
            output = await asyncio.wait_for(handle.result(), 30)
            assert (output.flush_seq, output.outcome) == (before[key].flush_seq, "flushed")
            runs = await _executions(temporal_client, wf_id)
            assert len(runs) == 1, f"{wf_id}: {len(runs)} executions"
            description = await handle.describe()
            assert description.status is WorkflowExecutionStatus.COMPLETED
            assert description.run_id == runs[0].run_id
