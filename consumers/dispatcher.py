"""The flush dispatcher: flush commands from Kafka into FlushMemory workflows."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import context as otel_context
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from consumers.deadletter import dead_letter_headers
from consumers.lifecycle import Component, run_steps
from consumers.settings import Settings
from consumers.telemetry import Telemetry, extract_context
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
            self._producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                enable_idempotence=True,
                acks="all",
            )
            await self._producer.start()
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                self.settings.flush_topic,
                bootstrap_servers=self.settings.kafka_bootstrap,
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
        """Dispatch one fetched batch; returns how many commands it handled."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("FlushDispatcher.start() was not called")
        fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        handled = 0
        for tp, records in fetched.items():
            try:
                for rec in records:
                    await self._dispatch(rec)
                    handled += 1
            except BaseException:
                consumer.seek(tp, records[0].offset)
                raise
            await asyncio.shield(consumer.commit({tp: records[-1].offset + 1}))
        return handled

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
        )
        wf_id = request.workflow_id
        token = otel_context.attach(extract_context(headers))
        try:
            with self.telemetry.tracer.start_as_current_span(
                "memstream.dispatch", attributes={"memstream.flush_seq": request.flush_seq}
            ):
                await self.client.start_workflow(
                    FlushMemory.run,
                    request,
                    id=wf_id,
                    task_queue=self.settings.temporal_task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                )
            self.started += 1
        except WorkflowAlreadyStartedError:
            # This flush already ran: the duplicate command collapses into it.
            self.duplicates += 1
        finally:
            otel_context.detach(token)
