"""Snapshots against the real stack: the apply consumer's checkpoints let a rebuild read only
the tail of the log, and a rebuild from snapshots and tail equals one from the whole log on
every memory, including memories a previous owner wrote and the new one never touched;
replay, verify and point-in-time reads start from them; once records before the watermark
are deleted, only a snapshot-based rebuild is possible, and the other says why."""

from __future__ import annotations

import asyncio
import json
import random

from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from consumers.apply import ApplyConsumer
from consumers.bootstrap import App
from consumers.failures import describe
from consumers.generations import TruncatedLogError, active_generation
from consumers.recovery import Progress, memory_at, read_log, replay, verify
from consumers.recovery.reading import FoldedMemory, LogReader
from consumers.snapshots import MemorySnapshot, decode_record, snapshot_topic, watermark_key
from consumers.topic_reader import read_to_end
from tests.cli import run_cli
from tests.integration.test_ordering import apply_consumer, drain, workload


async def _fold_all(app: App, *, snapshots: bool) -> tuple[dict[str, FoldedMemory], Progress]:
    gen = await active_generation(app.settings)
    progress = Progress("test", gen.partitions)
    reader = LogReader(
        app.settings, app.catalog, app.codec, gen, progress, None, snapshots=snapshots
    )
    memories: dict[str, FoldedMemory] = {}
    for partition in range(gen.partitions):
        memories.update((await reader.fold(partition, None)).memories)
    return memories, progress


def _consumer(app: App, every_events: int, every_s: float = 3600.0) -> ApplyConsumer:
    settings = app.settings.model_copy(
        update={"snapshot_every_events": every_events, "snapshot_every_s": every_s}
    )
    return apply_consumer(app, settings=settings, max_records=40)


async def _run(consumer: ApplyConsumer, records: int) -> None:
    await drain(consumer, records)
    await consumer.snapshots.settle()


async def test_a_rebuild_from_snapshots_and_tail_equals_one_from_the_whole_log(
    app: App, names: str
) -> None:
    conversations = workload(seed=61, prefix=names, keys=16, events=50)
    early, late = conversations[:6], conversations[6:]
    produced = 0
    # A first owner without snapshots writes some memories that nobody writes again.
    first = _consumer(app, 0)
    await first.start()
    for conv in early:
        await app.producer.send_records(conv.memory_key, conv.records)
        produced += len(conv.records)
    await _run(first, produced)
    await first.stop()
    # The next owner checkpoints every 60 events or 2 s: its first checkpoints must cover
    # them too.
    second = _consumer(app, 60, 2.0)
    await second.start()
    try:
        rng = random.Random(3)
        at = dict.fromkeys((c.memory_key for c in late), 0)
        while any(at[c.memory_key] < len(c.records) for c in late):
            for conv in late:
                n = min(rng.randint(1, 8), len(conv.records) - at[conv.memory_key])
                await app.producer.send_records(
                    conv.memory_key, conv.records[at[conv.memory_key] : at[conv.memory_key] + n]
                )
                at[conv.memory_key] += n
                produced += n
            await _run(second, produced - first.totals.records)
        # Partitions with fewer events are checkpointed by time.
        await asyncio.sleep(3.0)
        await second.snapshots.settle()
        assert second.snapshots.checkpoints > app.settings.topic_partitions
        # A tail after the watermarks.
        for conv in conversations[::2]:
            extra = conv.records[-1] | {"event_id": f"{conv.records[-1]['event_id']}-again"}
            await app.producer.send_records(conv.memory_key, [extra])
            produced += 1
        await drain(second, produced - first.totals.records)
    finally:
        await second.stop()

    whole_memories, full = await _fold_all(app, snapshots=False)
    from_snapshots, tail = await _fold_all(app, snapshots=True)
    assert set(from_snapshots) == set(whole_memories) == {c.memory_key for c in conversations}
    for key, memory in whole_memories.items():
        assert from_snapshots[key].state == memory.state, key
        assert from_snapshots[key].last_ms == memory.last_ms, key
    # Only the tail after each watermark was read; the snapshots stood for the rest.
    assert full.skipped == 0 and full.records == produced
    assert tail.skipped > 0 and tail.records + tail.skipped == produced
    assert tail.records < produced / 2 and tail.snapshots > 0

    # The records of the snapshots topic: memory snapshots, and one watermark per partition.
    gen = await active_generation(app.settings)
    marks: dict[int, int] = {}
    async for records in read_to_end(app.settings, snapshot_topic(gen.topic)):
        for rec in records:
            assert rec.value is not None and rec.key is not None
            decoded = decode_record(app.codec, rec.value)
            if rec.key == watermark_key(rec.partition):
                assert isinstance(decoded, int)
                marks[rec.partition] = decoded
            else:
                assert isinstance(decoded, MemorySnapshot)
                assert gen.home(rec.key) == rec.partition == gen.home(decoded.memory_key.encode())
    assert set(marks) == set(range(gen.partitions))

    # Replay into an emptied Redis writes snapshotted memories from their snapshots; the
    # whole log (no snapshots) agrees with the result, as does a point in time.
    for key in whole_memories:
        await app.store.delete(key)
    done = await replay(app.settings, app.catalog, app.codec, app.store)
    assert done.memories == len(conversations)
    full_check = await verify(app.settings, app.catalog, app.codec, app.store, snapshots=False)
    assert full_check.ok, full_check.mismatches[:3]
    assert (await verify(app.settings, app.catalog, app.codec, app.store)).ok
    log = await read_log(app.settings, app.catalog, app.codec)
    from_a_snapshot = 0
    for conv in conversations[::3]:
        events = log.events[conv.memory_key]
        for cut in (len(events) // 3, len(events) - 1):
            offset = events[cut].offset
            want = await memory_at(
                app.settings,
                app.catalog,
                app.codec,
                conv.memory_key,
                offset=offset,
                snapshots=False,
            )
            got = await memory_at(
                app.settings, app.catalog, app.codec, conv.memory_key, offset=offset
            )
            assert got.state == want.state, (conv.memory_key, offset)
            if got.snapshot_offset is not None:
                # Only the events after the memory's own snapshot were read.
                assert got.snapshot_offset <= offset and got.events < want.events
                from_a_snapshot += 1
    assert from_a_snapshot > 0

    # The operator's view: each partition's watermark, as the topic holds it.
    env = {
        "MEMSTREAM_EVENTS_TOPIC": app.settings.events_topic,
        "MEMSTREAM_MEMORIES_FILE": str(app.settings.memories_file),
    }
    listed = run_cli(env, "topics", "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["partition"]: r["deletable_below"] for r in rows} == marks
    assert sum(r["deletable_records"] for r in rows) == sum(marks.values())
    text = run_cli(env, "topics", "snapshots")
    assert f"may be deleted: {sum(marks.values()):,}" in text.stdout, text.stdout

    # An operator deletes every partition's records before its watermark: a rebuild from the
    # snapshots is as before, one from the whole log is refused with the reason.
    admin = AIOKafkaAdminClient(bootstrap_servers=app.settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(gen.topic, p): RecordsToDelete(w) for p, w in marks.items()}
        )
    finally:
        await admin.close()
    after, _ = await _fold_all(app, snapshots=True)
    assert {k: m.state for k, m in after.items()} == {k: m.state for k, m in whole_memories.items()}
    assert (await verify(app.settings, app.catalog, app.codec, app.store)).ok
    try:
        await verify(app.settings, app.catalog, app.codec, app.store, snapshots=False)
    except TruncatedLogError as exc:
        assert "retention deleted" in str(exc) and f"{gen.topic}:" in str(exc)
        failure = describe(exc, app.settings)
        assert failure is not None and failure.code == 14
    else:
        raise AssertionError("a whole-log verify over a deleted log prefix passed")
