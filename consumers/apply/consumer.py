"""The apply loop: fetch, hand each partition's memories to the store, dead-letter, commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from consumers.apply.accounting import (
    BatchReport,
    WriteTiming,
    account,
    accumulate,
    record_metrics,
)
from consumers.apply.checkpoint import Checkpoints
from consumers.apply.decoding import Batch, Decoder, KeyWork
from consumers.apply.lag import Lag
from consumers.apply.outputs import BatchOutputs
from consumers.apply.restore import Restorer
from consumers.apply.snapshots import SnapshotPublisher
from consumers.catalog import MemoryCatalog
from consumers.connections import kafka_consumer, kafka_producer
from consumers.generations import (
    Generation,
    active_generation,
    consumer_group,
    read_generations,
    topic_partition_count,
)
from consumers.lifecycle import BatchCollection, Component, run_steps
from consumers.recovery import ReplayReport
from consumers.settings import Settings
from consumers.telemetry import Telemetry
from memory_core import MemstreamError
from memory_core.privacy import shown_key
from memory_core.redis import AppliedNotices, KeyBatch, KeyOutcome, RedisMemoryStore, WriteStatus
from schemas import AvroCodec

log = logging.getLogger(__name__)

# A partition's write outcomes, and when it ran (for spans).
_Written = tuple[list[KeyOutcome], WriteTiming]

# How often an idle consumer looks for a newer generation of the events topic.
_GENERATION_CHECK_S = 5.0


async def _started(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Start ``client``; one that fails to start is stopped (aiokafka leaves it open)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: ApplyConsumer) -> None:
        self.owner = owner
        # Set before the consumer starts: its first assignment comes while it starts.
        self.consumer: AIOKafkaConsumer | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.consumer is not None
        await self.owner._on_assigned(assigned, self.consumer)


class ApplyConsumer(Component):
    """Consumes memory events, applies them per key under lock, commits only what Redis holds."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: MemoryCatalog,
        store: RedisMemoryStore,
        codec: AvroCodec,
        telemetry: Telemetry,
        max_records: int | None = None,
        revoke_timeout_s: float = 10.0,
        generation: Generation | None = None,
        freeze_survivors: bool = True,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.codec = codec
        self.telemetry = telemetry
        self.max_records = settings.apply_max_records if max_records is None else max_records
        self.revoke_timeout_s = revoke_timeout_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._epochs: dict[TopicPartition, int] = {}
        self._fenced: set[TopicPartition] = set()
        # The committed position per partition, and the lag from it (consumers/apply/lag.py).
        self._lag = Lag(self._highwater)
        self._processing = asyncio.Lock()
        # The next batch, fetched and partly decoded while Redis finished the previous one.
        self._ahead: Batch | None = None
        self._stopping = asyncio.Event()
        self.totals = BatchReport()
        # The events topic generation consumed (the active one unless given), and its decoder.
        self.generation = generation
        self._decoder: Decoder | None = None
        self._checked_generation_at = 0.0
        self._checkpoints: Checkpoints | None = None
        self._collection = BatchCollection(freeze=freeze_survivors)
        self._notices = (
            AppliedNotices(store.redis, prefix=settings.key_prefix)
            if settings.announce_applied
            else None
        )
        self._announcing: set[asyncio.Task[None]] = set()
        # Partitions whose state Redis lost, paused until restored from the log.
        self._lost: set[TopicPartition] = set()
        self._restorer = Restorer(settings, catalog, codec, store, telemetry)
        # Each restore done, with what it wrote (for tests and progress views).
        self.restored: list[tuple[TopicPartition, ReplayReport]] = []
        self.snapshots = SnapshotPublisher(settings, codec, store, telemetry)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Look up the generation to consume, connect, join its group (idempotent)."""
        if self._consumer is not None:
            return
        gen = self.generation = self.generation or await active_generation(self.settings)
        await self._warn_if_grown(gen)
        if self._producer is None:
            producer = kafka_producer(
                self.settings,
                enable_idempotence=True,
                acks="all",
            )
            await _started(producer)
            self._producer = producer
        await self._join(gen)
        self.telemetry.add_lag_source(self.lag, self.group)
        self.telemetry.add_lag_age_source(self.lag_age, self.group)
        self.telemetry.add_restoring_source(lambda: len(self._lost))

    async def _join(self, gen: Generation) -> None:
        await self.snapshots.use(gen)
        self._decoder = Decoder(
            self.codec, self.catalog, gen, show_keys=self.settings.telemetry_show_keys
        )
        self._checked_generation_at = time.monotonic()
        consumer = kafka_consumer(
            self.settings,
            group_id=consumer_group(self.settings, gen),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            group_instance_id=self.settings.consumer_instance_id,
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=self.settings.consumer_heartbeat_interval_ms,
        )
        listener = _Rebalance(self)
        listener.consumer = consumer
        consumer.subscribe([gen.topic], listener=listener)
        await _started(consumer)
        self._consumer = consumer
        assert self._producer is not None
        self._checkpoints = Checkpoints(consumer, self._producer, self._committed)

    async def _warn_if_grown(self, gen: Generation) -> None:
        count = await topic_partition_count(self.settings, gen.topic)
        if count is not None and count != gen.partitions:
            # Homes stay murmur2 mod the generation's count: records of the new partitions
            # (or moved there by producers hashing over all of them) are dead-lettered.
            log.error(
                "%s has %d partitions but generation %d was created with %d (grown by hand?): "
                "memories keep their homes, records outside them are dead-lettered as "
                "wrong_partition; run `memstream topics repartition --partitions %d` to move "
                "to a generation with %d partitions, then re-drive them (`memstream dlq`)",
                gen.topic,
                count,
                gen.number,
                gen.partitions,
                count,
                count,
            )

    async def _follow_generation(self) -> None:
        """When idle, look (every few seconds) for a newer generation; move to it if there is.

        A repartition records the new generation only once the old topic is sealed and
        applied to its end, so nothing is left behind here.
        """
        now = time.monotonic()
        if now - self._checked_generation_at < _GENERATION_CHECK_S:
            return
        self._checked_generation_at = now
        recorded = await read_generations(self.settings)
        current = self.generation
        if not recorded or current is None or recorded[-1].number <= current.number:
            return
        latest = recorded[-1]
        log.warning(
            "moving from generation %d (%s) to %d (%s, %d partitions)",
            current.number,
            current.topic,
            latest.number,
            latest.topic,
            latest.partitions,
        )
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            async with self._processing:
                self._ahead = None
                if self._checkpoints is not None:
                    await self._checkpoints.drain(self.revoke_timeout_s)
            await consumer.stop()
        with contextlib.suppress(MemstreamError):
            await self.store.release(self.owner)
        self.store.forget()
        await self.snapshots.revoked(None)
        self.generation = latest
        await self._join(latest)

    async def stop(self) -> None:
        """Finish the in-flight batch, then leave the group and disconnect (idempotent)."""
        self._stopping.set()
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            async with self._processing:
                self._ahead = None  # fetched, not applied: redelivered to the next owner
                if self._checkpoints is not None:
                    await self._checkpoints.drain(self.revoke_timeout_s)
                await consumer.stop()
            with contextlib.suppress(MemstreamError):
                await self.store.release(self.owner)
        await self.snapshots.stop()
        await asyncio.gather(*self._announcing, return_exceptions=True)
        if producer is not None:
            await producer.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process batches until ``stop`` is set or ``stop()`` is called; outages back off."""
        await run_steps(
            self.step,
            stopped=lambda: self._stopping.is_set() or (stop is not None and stop.is_set()),
            retriable=(MemstreamError, KafkaError, OSError),
            what="apply batch",
        )

    # -- rebalance -----------------------------------------------------------------------------

    async def _on_assigned(
        self, assigned: list[TopicPartition], consumer: AIOKafkaConsumer
    ) -> None:
        for tp in assigned:
            scope = f"{tp.topic}:{tp.partition}"
            self._fenced.discard(tp)
            committed = self._lag.committed[tp] = await consumer.committed(tp) or 0
            if committed > 0 and not await self.store.epoch_exists(scope):
                # Applied before, yet Redis has no epoch for it: Redis lost its state. Its
                # epoch is taken once restored (a crash meanwhile leaves it lost for the next
                # owner to restore).
                self._lost_partition(tp, consumer)
                continue
            self._epochs[tp] = await self.store.new_epoch(scope)
            self.snapshots.assigned(tp, self._epochs[tp], committed)

    def _committed(self, commit: dict[TopicPartition, int]) -> None:
        self._lag.committed.update(commit)
        self.snapshots.committed(commit)

    def _lost_partition(self, tp: TopicPartition, consumer: AIOKafkaConsumer | None) -> None:
        self._lost.add(tp)
        if consumer is not None and tp in consumer.assignment():
            consumer.pause(tp)

    @property
    def restoring(self) -> frozenset[TopicPartition]:
        """Partitions whose state Redis lost, paused until restored from the log."""
        return frozenset(self._lost)

    async def _restore_lost(self, consumer: AIOKafkaConsumer) -> None:
        """Restore each lost partition up to its committed position, take a new epoch, and
        resume it there (called under ``_processing``)."""
        assert self._checkpoints is not None and self.generation is not None
        # What was handed over is committed first: the restore covers it.
        await self._checkpoints.drain(self.revoke_timeout_s)
        self.store.forget()  # cached states are of the Redis that was lost
        for tp in sorted(self._lost & consumer.assignment()):
            committed = await consumer.committed(tp) or 0
            if committed > 0:
                report = await self._restorer.restore(tp, committed, self.generation, self.owner)
                self.restored.append((tp, report))
            scope = f"{tp.topic}:{tp.partition}"
            # Above the epoch this owner had: its own earlier writes never fence it.
            self._epochs[tp] = await self.store.new_epoch(
                scope, at_least=self._epochs.get(tp, 0) + 1
            )
            self.snapshots.assigned(tp, self._epochs[tp], committed)
            self._lag.restart(tp, committed)
            if self._ahead is not None:
                self._ahead.drop({tp})
            consumer.seek(tp, committed)
            consumer.resume(tp)
            self._lost.discard(tp)
        self._lost &= consumer.assignment()

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        # Let the in-flight batch finish and commit (bounded); after that it would be abandoned
        # uncommitted and redelivered to the new owner, which is safe.
        try:
            await asyncio.wait_for(self._processing.acquire(), self.revoke_timeout_s)
        except TimeoutError:
            log.warning("revoke: in-flight batch still running after %ss", self.revoke_timeout_s)
        else:
            self._processing.release()
        # What was applied is committed before the partitions move (bounded, as above).
        if self._checkpoints is not None:
            await self._checkpoints.drain(self.revoke_timeout_s)
        if self._ahead is not None:
            self._ahead.drop(set(revoked))
        await self.snapshots.revoked(revoked)
        for tp in revoked:
            self._epochs.pop(tp, None)
            self._fenced.discard(tp)
            self._lag.forget(tp)
            self._lost.discard(tp)
        # The new owner of these partitions must not wait for our locks to expire.
        with contextlib.suppress(MemstreamError):
            await self.store.release(self.owner)
        self.store.forget()

    def group(self) -> str:
        """The consumer group of the generation consumed ("" before ``start``)."""
        return consumer_group(self.settings, self.generation) if self.generation else ""

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions the group gave this consumer (empty before it joined)."""
        return frozenset(self._consumer.assignment()) if self._consumer is not None else frozenset()

    def _highwater(self, tp: TopicPartition) -> int | None:
        return self._consumer.highwater(tp) if self._consumer is not None else None

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between the committed position and the high watermark, per partition."""
        return self._lag.records() if self._consumer is not None else {}

    def lag_age(self) -> dict[tuple[str, int], float]:
        """Per partition, the age in seconds of the oldest event not yet applied (see
        ``Lag.age``)."""
        return self._lag.age() if self._consumer is not None else {}

    # -- the batch -----------------------------------------------------------------------------

    async def settle(self, timeout_s: float = 30.0) -> bool:
        """Wait until every applied batch's outputs are sent and its offsets committed."""
        return self._checkpoints is None or await self._checkpoints.drain(timeout_s)

    async def step(self, timeout_ms: int = 200) -> BatchReport:
        """Fetch one batch and apply it; its dead letters, flush commands and commit follow.

        The batch may have been fetched by the previous step, which decodes the next records
        while its last writes run in Redis; they are applied here, as their own batch. Its
        outputs are sent and its offsets committed in the background, in batch order, while
        the next batch is applied (``settle()`` waits for them); a failure there rewinds to
        the first uncommitted batch and is raised by the next step.
        """
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("ApplyConsumer.start() was not called")
        async with self._processing:
            self._raise_failed_checkpoint(consumer)
            if self._lost:
                await self._restore_lost(consumer)
            batch, self._ahead = self._ahead, None
        if batch is None:
            fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records)
            batch = Batch({tp: recs for tp, recs in fetched.items() if recs})
            if not batch.fetched:
                await self._follow_generation()
                return BatchReport()
            self._lag.fetched(batch)
        async with self._processing:
            # Partitions fenced or given away since their records were fetched are not ours;
            # one found lost meanwhile (a rebalance inside the fetch) is restored first and
            # fetched again from its committed position.
            assigned = consumer.assignment()
            # Never written without an epoch (its assignment still being handled, or it is
            # lost): fetched again from here once it has one.
            for tp, records in batch.fetched.items():
                if tp in assigned and (tp in self._lost or tp not in self._epochs):
                    consumer.seek(tp, records[0].offset)
            batch.drop(
                {
                    tp
                    for tp in batch.fetched
                    if tp in self._fenced
                    or tp in self._lost
                    or tp not in assigned
                    or tp not in self._epochs
                }
            )
            if self._lost:
                await self._restore_lost(consumer)
            if not batch.fetched:
                return BatchReport()
            try:
                with self._collection.batch():
                    report = await self._process(consumer, batch)
            except BaseException:
                # Nothing of this batch (nor of the next, fetched ahead) is committed: rewind
                # so they are fetched again.
                starts: dict[TopicPartition, int] = {}
                for b in (self._ahead, batch):
                    for tp, recs in (b.fetched if b is not None else {}).items():
                        starts[tp] = recs[0].offset
                self._ahead = None
                for tp, offset in starts.items():
                    if tp in consumer.assignment():
                        consumer.seek(tp, offset)
                raise
        accumulate(self.totals, report)
        return report

    async def _process(self, consumer: AIOKafkaConsumer, batch: Batch) -> BatchReport:
        started = time.perf_counter()
        started_ns = time.time_ns()
        fetched = batch.fetched
        report = BatchReport(
            records=sum(len(r) for r in fetched.values()),
            decoded_ahead=sum(batch.decoded.values()),
        )
        decoder = self._decoder
        assert decoder is not None
        # Each partition's memories are written as soon as its records are decoded (a memory
        # lives in one partition), and the next partition is decoded meanwhile; once all are
        # written, the next batch is fetched and decoded until the writes are answered.
        # Redis runs the writes while this process decodes, instead of idling through every
        # decode and then holding the batch up.
        applying: list[tuple[dict[str, KeyWork], asyncio.Task[_Written]]] = []

        def written() -> bool:
            return all(task.done() for _, task in applying)

        try:
            for tp in fetched:
                await decoder.decode(batch, tp, until=(lambda: False) if applying else None)
                part = batch.work.get(tp, {})
                epoch = self._epochs.get(tp, -1)
                home = f"{tp.topic}:{tp.partition}"
                batches = [
                    KeyBatch(key, entry.policy, w.events, epoch=epoch, home=home)
                    for key, w in part.items()
                    if (entry := self.catalog.get(w.memory_id)) is not None
                ]
                if batches:
                    applying.append((part, asyncio.create_task(self._write(batches, started_ns))))
            if not written():
                await self._decode_ahead(consumer, written)
            results = [(part, await task) for part, task in applying]
        finally:
            # After an error, writes still running are cancelled (their chunks abandoned):
            # nothing of this batch is committed, and the retry deduplicates what they wrote.
            for _, task in applying:
                task.cancel()
            await asyncio.gather(*(task for _, task in applying), return_exceptions=True)

        outputs = BatchOutputs(self.settings, self.codec)
        failed = await self._lost_on_cluster([part for part, _ in results])
        group = self.group()
        snapshots = self.snapshots if self.snapshots.enabled else None
        for part, (outcomes, timing) in results:
            stored: list[str] = []
            for outcome in outcomes:
                w = part[outcome.memory_key]
                if w.partition in failed:
                    continue  # written onto a Redis that lost the partition: restored first
                if outcome.status is not WriteStatus.APPLIED or outcome.result is None:
                    failed.add(w.partition)
                    self._refused(w.partition, outcome)
                    continue
                account(outcome, w, report, outputs, self.telemetry, group, timing)
                stored.append(outcome.memory_key)
            if snapshots is not None:
                snapshots.applied(part, stored)
        self._announce({tp: recs[-1].offset for tp, recs in fetched.items() if tp not in failed})
        for rec, reason, detail, extra in batch.dead:
            outputs.dead_letter(rec, reason, detail, extra)
            report.dead_lettered += 1
            report.dead_by_reason[reason.value] += 1
        commit: dict[TopicPartition, int] = {}
        for tp, records in fetched.items():
            if tp in failed:
                consumer.seek(tp, records[0].offset)
                report.retried_partitions.append(tp)
                if self._ahead is not None:
                    report.refetched += self._ahead.drop({tp})
            else:
                commit[tp] = records[-1].offset + 1
        # Sent and committed while the next batch is applied (consumers/apply/checkpoint.py).
        checkpoints = self._checkpoints
        assert checkpoints is not None
        await checkpoints.submit(
            outputs, commit, {tp: records[0].offset for tp, records in fetched.items()}
        )
        report.committed = commit
        self._lag.applied(batch, commit, self._ahead)
        record_metrics(self.telemetry, report, (time.perf_counter() - started) * 1000)
        return report

    async def _write(self, batches: list[KeyBatch], batch_started_ns: int) -> _Written:
        began = time.time_ns()
        outcomes = await self.store.apply(batches, self.owner, hold=True)
        return outcomes, WriteTiming(batch_started_ns, began, time.time_ns())

    async def _lost_on_cluster(self, parts: list[dict[str, KeyWork]]) -> set[TopicPartition]:
        """On Redis Cluster, the partitions just written whose epoch counter is gone.

        ``write.lua`` cannot see the counter there (another slot), so each batch asks for
        the counters of the partitions it wrote; one found missing is not committed but
        restored (the replay rewrites what this batch wrote onto the emptied Redis).
        """
        if not self.store.cluster:
            return set()
        written = sorted({w.partition for part in parts for w in part.values()})
        scopes = [f"{tp.topic}:{tp.partition}" for tp in written]
        present = await asyncio.gather(*(self.store.epoch_exists(s) for s in scopes))
        lost = {tp for tp, ok in zip(written, present, strict=True) if not ok}
        for tp in lost:
            log.warning("Redis lost the state of %s; pausing it to restore it", tp)
            self._lost_partition(tp, self._consumer)
        return lost

    def _announce(self, applied: dict[TopicPartition, int]) -> None:
        """Tell waiting writers what this batch applied, without holding the next batch up
        (a lost notice only delays a writer until its next read)."""
        notices = self._notices
        if notices is None or not applied:
            return
        task = asyncio.create_task(
            notices.announce({(tp.topic, tp.partition): o for tp, o in applied.items()})
        )
        self._announcing.add(task)
        task.add_done_callback(self._announced)

    def _announced(self, task: asyncio.Task[None]) -> None:
        self._announcing.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.debug("applied notice not sent: %s", error)

    def _raise_failed_checkpoint(self, consumer: AIOKafkaConsumer) -> None:
        """An earlier batch's outputs or commit failed: rewind to where the uncommitted
        batches began (redelivered and deduplicated, as after a crash) and raise its error."""
        failed = self._checkpoints.failure() if self._checkpoints is not None else None
        if failed is None:
            return
        error, starts = failed
        self._ahead = None
        for tp, offset in starts.items():
            if tp in consumer.assignment():
                consumer.seek(tp, offset)
        raise error

    async def _decode_ahead(self, consumer: AIOKafkaConsumer, done: Callable[[], bool]) -> None:
        """Fetch the records already buffered for the next batch and decode them until
        ``done``; the next step applies them."""
        fetched = await consumer.getmany(timeout_ms=0, max_records=self.max_records)
        fetched = {tp: recs for tp, recs in fetched.items() if recs}
        if not fetched:
            return
        ahead = self._ahead = Batch(fetched)
        self._lag.fetched(ahead)
        assert self._decoder is not None
        for tp in fetched:
            if not await self._decoder.decode(ahead, tp, until=done):
                return

    def _refused(self, tp: TopicPartition, outcome: KeyOutcome) -> None:
        self.telemetry.events_refused.add(1, {"status": outcome.status.value})
        if outcome.status is WriteStatus.LOST:
            if tp not in self._lost:
                log.warning("Redis lost the state of %s; pausing it to restore it", tp)
            self._lost_partition(tp, self._consumer)
            return
        if outcome.status is WriteStatus.FENCED:
            # A newer owner of this partition exists: we are a zombie for it.
            key = shown_key(outcome.memory_key, self.settings.telemetry_show_keys)
            log.warning("partition %s fenced on %s (%s)", tp, key, outcome.detail)
            self._fenced.add(tp)
            # Stop fetching it; the rebalance that gave it away will take it from us.
            if self._consumer is not None:
                self._consumer.pause(tp)
        else:
            if outcome.status is WriteStatus.LOCKED:
                self.telemetry.record_lock_wait(outcome.lock_wait_s, acquired=False)
            key = shown_key(outcome.memory_key, self.settings.telemetry_show_keys)
            log.info("memory %s refused (%s); retrying", key, outcome.status)
