"""Checkpoints of the partitions an apply consumer owns, published to the snapshots topic
(docs/semantics.md, "Snapshots"; ``consumers.snapshots`` for the topic and its records).

A checkpoint of partition ``p`` at committed offset ``C`` reads from Redis the whole state
of every memory of ``p`` applied to since the previous checkpoint, publishes each, and
only once all are acknowledged publishes the watermark ``C``: every memory with events
before ``C`` then has a snapshot at or after its last event before ``C``. The memories
changed since the last watermark are known from this consumer's own writes; after an
assignment, from the keys of the log between the last watermark (recorded in Redis, or
found in the snapshots topic) and the committed offset. Checkpoints run in the background,
one per partition at a time; the apply path only notes which memories it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from consumers.apply.decoding import KeyWork
from consumers.connections import kafka_producer
from consumers.generations import Generation
from consumers.settings import Settings
from consumers.snapshots import (
    MAX_RECORD_BYTES,
    MemorySnapshot,
    encode_snapshot,
    encode_watermark,
    ensure_snapshot_topic,
    read_snapshots,
    snapshot_topic,
    watermark_key,
)
from consumers.telemetry import Telemetry
from consumers.topic_reader import read_to_end
from memory_core.redis import RedisMemoryStore
from schemas import AvroCodec

log = logging.getLogger(__name__)

# States read from Redis at once during a checkpoint.
_READS_AT_ONCE = 64


@dataclass(slots=True)
class _Partition:
    """What the next checkpoint of one owned partition must cover."""

    epoch: int
    committed: int
    # Memories written since the last checkpoint, with the Kafka timestamp of their last event.
    changed: dict[str, int] = field(default_factory=dict)
    events: int = 0
    since: float = field(default_factory=time.monotonic)
    # Whether the memories changed before this owner took the partition are known yet.
    seeded: bool = False
    task: asyncio.Task[None] | None = None


class SnapshotPublisher:
    """Takes each owned partition's checkpoints every ``settings.snapshot_every_events``
    applied events or ``settings.snapshot_every_s`` seconds."""

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        store: RedisMemoryStore,
        telemetry: Telemetry,
    ) -> None:
        self.settings, self.codec, self.store, self.telemetry = settings, codec, store, telemetry
        self._every_events = settings.snapshot_every_events
        self._every_s = settings.snapshot_every_s
        self._parts: dict[TopicPartition, _Partition] = {}
        self._producer: AIOKafkaProducer | None = None
        self._gen: Generation | None = None
        self._timer: asyncio.Task[None] | None = None
        # Checkpoints published (for tests and progress views).
        self.checkpoints = 0

    @property
    def enabled(self) -> bool:
        """Whether snapshots are taken at all."""
        return self._every_events > 0

    async def use(self, gen: Generation) -> None:
        """Checkpoint partitions of generation ``gen`` from now on: create its snapshots
        topic if missing, and connect (once)."""
        if not self.enabled:
            return
        self._gen = gen
        await ensure_snapshot_topic(self.settings, gen)
        if self._producer is not None:
            return
        producer = kafka_producer(
            self.settings,
            enable_idempotence=True,
            acks="all",
            # Uncompressed: compressing whole states would take this loop's time from the
            # apply path; a topic's compression.type can have the broker do it.
            max_request_size=MAX_RECORD_BYTES,
        )
        await producer.start()
        self._producer = producer
        self._timer = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        """Stop the running checkpoints (what they sent is delivered) and close."""
        await self.revoked(None)
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def settle(self) -> None:
        """Wait for the checkpoints running now."""
        await asyncio.gather(
            *(p.task for p in self._parts.values() if p.task), return_exceptions=True
        )

    def assigned(self, tp: TopicPartition, epoch: int, committed: int) -> None:
        """This consumer owns ``tp`` (with ``epoch``) from ``committed`` on."""
        if self.enabled:
            self._parts[tp] = _Partition(epoch, committed)

    def applied(self, part: dict[str, KeyWork], keys: list[str]) -> None:
        """Memories ``keys`` of one partition's work ``part`` were written."""
        for key in keys:
            w = part[key]
            p = self._parts.get(w.partition)
            if p is not None:
                p.changed[key] = w.records[-1].timestamp
                p.events += len(w.events)

    def committed(self, commit: dict[TopicPartition, int]) -> None:
        """Offsets committed: a partition with enough events since its checkpoint takes one."""
        for tp, offset in commit.items():
            p = self._parts.get(tp)
            if p is not None:
                p.committed = offset
                if p.events >= self._every_events:
                    self._begin(tp, p)

    async def revoked(self, tps: list[TopicPartition] | None) -> None:
        """Stop checkpointing ``tps`` (all when None); what was sent is delivered before
        they move (a new owner's checkpoint must come after ours in the topic)."""
        if tps is None:
            tps = list(self._parts)
        running = [p.task for tp in tps if (p := self._parts.pop(tp, None)) and p.task]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if running and self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.flush(), 10.0)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(self._every_s, 1.0))
            now = time.monotonic()
            for tp, p in list(self._parts.items()):
                # A partition just taken over is checkpointed once even with nothing new
                # applied: what earlier owners wrote since the last watermark (maybe all of
                # the partition) is covered then, not only after its next event.
                due = p.events or (not p.seeded and p.committed > 0)
                if due and now - p.since >= self._every_s:
                    self._begin(tp, p)

    def _begin(self, tp: TopicPartition, p: _Partition) -> None:
        if p.task is not None and not p.task.done():
            return  # one at a time: the next commit or tick takes the next one
        changed, p.changed, p.events, p.since = p.changed, {}, 0, time.monotonic()
        p.task = asyncio.create_task(self._checkpoint(tp, p, p.committed, changed))

    async def _checkpoint(
        self, tp: TopicPartition, p: _Partition, upto: int, changed: dict[str, int]
    ) -> None:
        scope = f"{tp.topic}:{tp.partition}"
        started = time.monotonic()
        try:
            if not p.seeded:
                for key, at in (await self._changed_before(tp, upto)).items():
                    changed[key] = max(at, changed.get(key, 0))
            written = await self._publish(tp, changed)
            if await self.store.epoch(scope) != p.epoch:
                log.info("snapshots of %s: no longer its owner, watermark not published", tp)
                return
            assert self._producer is not None
            home = scope
            await self._producer.send_and_wait(
                snapshot_topic(tp.topic),
                encode_watermark(self.codec, home, tp.partition, upto),
                key=watermark_key(tp.partition),
                partition=tp.partition,
            )
            p.seeded = True
            await self.store.set_snapshot_watermark(scope, upto)
            self.checkpoints += 1
            self.telemetry.snapshots.add(written, {"topic": tp.topic, "partition": tp.partition})
            log.debug(
                "snapshots of %s: %d memories, watermark %d, in %.2fs",
                tp,
                written,
                upto,
                time.monotonic() - started,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Taken again by a later checkpoint: nothing is lost, the watermark only lags.
            for key, at in changed.items():
                p.changed[key] = max(at, p.changed.get(key, 0))
            log.warning("snapshots of %s not taken (%s); retried at the next checkpoint", tp, exc)

    async def _publish(self, tp: TopicPartition, changed: dict[str, int]) -> int:
        """Publish the state (or a tombstone) of each memory in ``changed``; returns how many,
        once all are acknowledged."""
        assert self._producer is not None
        producer, topic, scope = (
            self._producer,
            snapshot_topic(tp.topic),
            f"{tp.topic}:{tp.partition}",
        )
        keys = sorted(changed)
        sent = []
        for i in range(0, len(keys), _READS_AT_ONCE):
            chunk = keys[i : i + _READS_AT_ONCE]
            states = await asyncio.gather(*(self.store.state(k) for k in chunk))
            for key, stored in zip(chunk, states, strict=True):
                if stored is not None and stored.home not in (None, scope):
                    continue  # moved to another home (a repartition): not this partition's
                value = None
                if stored is not None:
                    snap = MemorySnapshot(key, stored.memory_id or "", stored.state, changed[key])
                    value = encode_snapshot(self.codec, scope, snap)
                sent.append(
                    await producer.send(topic, value, key=key.encode(), partition=tp.partition)
                )
        await asyncio.gather(*sent)
        return len(sent)

    async def _changed_before(self, tp: TopicPartition, upto: int) -> dict[str, int]:
        """The memories of ``tp`` with events between its last published watermark and
        ``upto`` (written by an earlier owner), with their last event's Kafka timestamp."""
        assert self._gen is not None
        scope = f"{tp.topic}:{tp.partition}"
        since = await self.store.snapshot_watermark(scope)
        if since is None:
            # Not recorded in Redis (lost with its data, or never taken): the topic knows.
            found = await read_snapshots(
                self.settings, self.codec, self._gen, tp.partition, keys=set()
            )
            since = found.watermark or 0
        keys: dict[str, int] = {}
        gen = self._gen
        fetched = read_to_end(
            self.settings, tp.topic, partitions=[tp.partition], starts={tp.partition: since}
        )
        async with contextlib.aclosing(fetched) as stream:
            async for records in stream:
                for rec in records:
                    if rec.offset >= upto:
                        return keys
                    if rec.key is not None and gen.home(rec.key) == tp.partition:
                        keys[rec.key.decode(errors="replace")] = rec.timestamp
        return keys
