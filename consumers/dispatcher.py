"""The flush dispatcher: flush commands from Kafka into FlushMemory workflows."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from consumers.connections import kafka_consumer, kafka_producer
from consumers.deadletter import dead_letter_headers
from consumers.lifecycle import Component, run_steps
from consumers.settings import Settings
from consumers.telemetry import Telemetry, consumer_attributes, extract_context
from memory_core import DeadLetterReason
from memory_core.temporal import FlushInput, FlushMemory
from schemas import FLUSH_COMMAND, AvroCodec, DecodeError, UnknownSchemaError

log = logging.getLogger(__name__)


class FlushDispatcher(Component):
    """Starts one FlushMemory workflow per flush command; commits after Temporal accepted it."""

    def __init__(
        self, *, settings: Settings, client: Client, codec: AvroCodec, telemetry: Telemetry
    ) -> None:
        self.settings = settings
        self.client = client
        self.codec = codec
        self.telemetry = telemetry
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self.started = 0
        self.duplicates = 0
        self.malformed = 0

    async def start(self) -> None:
        """Join the dispatcher group (idempotent)."""
        if self._producer is None:
            self._producer = kafka_producer(
                self.settings,
                enable_idempotence=True,
                acks="all",
            )
            await self._producer.start()
        if self._consumer is None:
            self._consumer = kafka_consumer(
                self.settings,
                self.settings.flush_topic,
                group_id=self.settings.dispatcher_group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await self._consumer.start()

    async def stop(self) -> None:
        """Leave the group (idempotent)."""
        self._stopping.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Dispatch until stopped; Temporal or Kafka outages back off and retry."""
        await run_steps(
            self.step,
            stopped=lambda: self._stopping.is_set() or (stop is not None and stop.is_set()),
            retriable=(KafkaError, RPCError, OSError),
            what="dispatch",
        )

    async def step(self, timeout_ms: int = 200) -> int:
        """Dispatch one fetched batch; returns how many commands it handled (or dead-lettered).

        Partitions are dispatched side by side, each in log order. Every partition is then
        committed up to the last command accepted, and every partition not dispatched to its
        end is rewound to its first undispatched record before the first failure is raised:
        no later commit can pass a command that has no workflow yet.
        """
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("FlushDispatcher.start() was not called")
        fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        if not fetched:
            return 0
        pending = {tp: records[0].offset for tp, records in fetched.items()}
        try:
            outcomes = await asyncio.gather(
                *(self._dispatch_all(tp, records, pending) for tp, records in fetched.items()),
                return_exceptions=True,
            )
        finally:
            # Also on cancellation: whatever was not accepted is fetched again.
            assigned = consumer.assignment()
            for tp, records in fetched.items():
                if pending[tp] <= records[-1].offset and tp in assigned:
                    consumer.seek(tp, pending[tp])
        accepted = {
            tp: pending[tp] for tp, records in fetched.items() if pending[tp] > records[0].offset
        }
        if accepted:
            await asyncio.shield(consumer.commit(accepted))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(
            1 for tp, records in fetched.items() for rec in records if rec.offset < pending[tp]
        )

    async def _dispatch_all(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord[bytes, bytes]],
        pending: dict[TopicPartition, int],
    ) -> None:
        """Dispatch ``records`` in order; ``pending[tp]`` is the first not yet accepted."""
        for rec in records:
            await self._dispatch(rec)
            pending[tp] = rec.offset + 1

    async def _dispatch(self, rec: ConsumerRecord[bytes, bytes]) -> None:
        try:
            command = self.codec.decode(FLUSH_COMMAND, rec.value)
        except DecodeError as exc:
            # Never block the partition on poison: park it in the DLQ with the reason.
            self.malformed += 1
            log.error("malformed flush command dead-lettered: %s", exc)
            assert self._producer is not None
            reason = (
                DeadLetterReason.UNKNOWN_SCHEMA
                if isinstance(exc, UnknownSchemaError)
                else DeadLetterReason.UNDECODABLE
            )
            await (
                await self._producer.send(
                    self.settings.dlq_topic,
                    rec.value or b"",
                    key=rec.key,
                    headers=dead_letter_headers(rec, reason, str(exc)),
                )
            )
            return
        headers = rec.headers
        request = FlushInput(
            command["memory_key"],
            command["memory_id"],
            command["flush_seq"],
            source_offset=command["source_offset"],
            namespace=self.settings.key_prefix,
            show_key=self.settings.telemetry_show_keys,
        )
        wf_id = request.workflow_id
        token = otel_context.attach(extract_context(headers))
        try:
            tp = TopicPartition(rec.topic, rec.partition)
            with self.telemetry.tracer.start_as_current_span(
                "memstream.dispatch",
                kind=SpanKind.CONSUMER,
                attributes={
                    **consumer_attributes(tp, self.settings.dispatcher_group, rec.offset, 1),
                    "memstream.flush_seq": request.flush_seq,
                },
            ):
                await self.client.start_workflow(
                    FlushMemory.run,
                    request,
                    id=wf_id,
                    task_queue=self.settings.temporal_task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                )
            self.started += 1
            self.telemetry.flushes_started.add(1)
        except WorkflowAlreadyStartedError:
            # This flush already completed: the duplicate command collapses into it. A running
            # one is returned as is (USE_EXISTING); a failed, timed-out or terminated one runs
            # again, so a flush requested again after a failure is not lost.
            self.duplicates += 1
            self.telemetry.flushes_collapsed.add(1)
        except Exception:
            # Temporal refused or is unreachable: the command is retried (not committed).
            self.telemetry.flush_dispatch_failures.add(1)
            raise
        finally:
            otel_context.detach(token)
