"""Everything a batch sends besides its writes: dead letters and flush commands.

Collected while the batch is processed and sent together, before its offsets are committed:
a crash before the commit redelivers the batch, which sends them again (at least once; the
dispatcher collapses repeated flush commands by workflow id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from consumers.apply.decoding import Record
from consumers.deadletter import dead_letter
from consumers.settings import Settings
from memory_core import DeadLetterReason
from schemas import FLUSH_COMMAND, AvroCodec

_Out = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


class BatchOutputs:
    """The records one batch produces, in the order they were found."""

    __slots__ = ("_codec", "_settings", "records")

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self._settings = settings
        self._codec = codec
        self.records: list[_Out] = []

    def dead_letter(
        self,
        rec: Record,
        reason: DeadLetterReason,
        detail: str,
        extra: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Park ``rec`` in the DLQ with its reason (small enough to send, whatever its size)."""
        key, value, headers = dead_letter(rec, reason, detail, extra)
        self.records.append((self._settings.dlq_topic, key, value, headers))

    def flush_command(
        self,
        memory_key: str,
        memory_id: str,
        flush_seq: int,
        *,
        requested_at_ms: int,
        source_offset: int,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Ask the dispatcher for flush ``flush_seq`` of a memory (``headers``: its trace)."""
        command = {
            "command_id": f"{memory_key}:{flush_seq}",
            "memory_key": memory_key,
            "memory_id": memory_id,
            "flush_seq": flush_seq,
            "requested_at": requested_at_ms,
            "source_offset": source_offset,
        }
        value = self._codec.encode(FLUSH_COMMAND, command)
        self.records.append((self._settings.flush_topic, memory_key.encode(), value, headers))

    async def send(self, producer: AIOKafkaProducer) -> None:
        """Send every record and wait until all are acknowledged."""
        if not self.records:
            return
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in self.records
        ]
        await asyncio.gather(*futures)
