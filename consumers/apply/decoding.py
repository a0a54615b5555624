"""Fetched records into per-memory work: decode, the home rule, dead letters found on the way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka.structs import ConsumerRecord, TopicPartition

from consumers.catalog import MemoryCatalog
from consumers.deadletter import HOME_PARTITION, HOME_TOPIC
from consumers.events import to_domain
from consumers.generations import Generation
from memory_core import DeadLetterReason, LoggedEvent, RejectedEventError
from memory_core.privacy import shown_key
from schemas import MEMORY_EVENT, AvroCodec, DecodeError, UnknownSchemaError

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
# A record to dead-letter: the record, why, a detail, extra headers.
Dead: TypeAlias = "tuple[Record, DeadLetterReason, str, tuple[tuple[str, bytes], ...]]"

# Records decoded between two turns of the event loop while writes are under way: a few
# milliseconds of work, so Redis is never left idle for long.
SLICE = 256
_WARNED_MAX = 10_000


@dataclass(slots=True)
class KeyWork:
    """The events of one memory in one batch, with the record of each."""

    memory_id: str
    partition: TopicPartition
    events: list[LoggedEvent] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """Fetched records, decoded into events per partition and memory as far as ``decoded``."""

    fetched: dict[TopicPartition, list[Record]]
    work: dict[TopicPartition, dict[str, KeyWork]] = field(default_factory=dict)
    decoded: dict[TopicPartition, int] = field(default_factory=dict)  # records, per partition
    dead: list[Dead] = field(default_factory=list)

    def drop(self, partitions: set[TopicPartition]) -> int:
        """Forget the records of ``partitions`` (fetched again from their position); returns
        how many there were."""
        dropped = 0
        for tp in partitions:
            dropped += len(self.fetched.pop(tp, ()))
            self.work.pop(tp, None)
            self.decoded.pop(tp, None)
        self.dead = [d for d in self.dead if _tp(d[0]) not in partitions]
        return dropped


def _tp(rec: Record) -> TopicPartition:
    return TopicPartition(rec.topic, rec.partition)


class Decoder:
    """Decodes records into per-memory work in log order; what can never apply is dead."""

    def __init__(
        self,
        codec: AvroCodec,
        catalog: MemoryCatalog,
        generation: Generation,
        *,
        show_keys: bool = False,
    ) -> None:
        self.codec = codec
        self.catalog = catalog
        self.generation = generation
        self.show_keys = show_keys  # in logs; else their digests
        self._warned: set[bytes] = set()

    async def decode(
        self, batch: Batch, tp: TopicPartition, *, until: Callable[[], bool] | None
    ) -> bool:
        """Decode the records of ``tp`` on from where the batch stopped; True once all are.

        With ``until``, it gives the event loop a turn every ``SLICE`` records (so writes
        under way are read and the next ones sent meanwhile) and stops once ``until()``.
        """
        records = batch.fetched[tp]
        work = batch.work.setdefault(tp, {})
        dead = batch.dead
        decode, catalog, home = self.codec.decode, self.catalog, self.generation.home
        partition = tp.partition
        start = batch.decoded.get(tp, 0)
        for i in range(start, len(records)):
            if until is not None and i % SLICE == 0 and i > start:
                await asyncio.sleep(0)
                if until():
                    batch.decoded[tp] = i
                    return False
            rec = records[i]
            key = rec.key
            if key is not None and home(key) != partition:
                dead.append(self._misplaced(rec, key))
                continue
            try:
                decoded = to_domain(decode(MEMORY_EVENT, rec.value), key, catalog)
            except UnknownSchemaError as exc:
                dead.append((rec, DeadLetterReason.UNKNOWN_SCHEMA, str(exc), ()))
                continue
            except DecodeError as exc:
                dead.append((rec, DeadLetterReason.UNDECODABLE, str(exc), ()))
                continue
            except RejectedEventError as exc:
                dead.append((rec, exc.reason, exc.detail, ()))
                continue
            event = decoded.event
            if event is None:
                continue
            w = work.get(decoded.memory_key)
            if w is None:
                w = work[decoded.memory_key] = KeyWork(decoded.entry.policy.config.id, tp)
            w.events.append(LoggedEvent(rec.offset, event, decoded.at_ms))
            w.records.append(rec)
        batch.decoded[tp] = len(records)
        return True

    def _misplaced(self, rec: Record, key: bytes) -> Dead:
        gen = self.generation
        home = gen.home(key)
        if key not in self._warned:
            # Once per memory (bounded): a misplaced producer sends many.
            if len(self._warned) >= _WARNED_MAX:
                self._warned.clear()
            self._warned.add(key)
            log.warning(
                "records of memory %s arrive on %s[%d], its home is partition %d of "
                "generation %d: dead-lettered as wrong_partition (a producer not using "
                "murmur2, or the topic grown by hand; see the README's Operations)",
                shown_key(key.decode("utf-8", "replace"), self.show_keys),
                rec.topic,
                rec.partition,
                home,
                gen.number,
            )
        detail = (
            f"partition {rec.partition} is not the home of this memory: "
            f"partition {home} of {gen.topic} (murmur2 mod {gen.partitions})"
        )
        extra = ((HOME_TOPIC, gen.topic.encode()), (HOME_PARTITION, str(home).encode()))
        return rec, DeadLetterReason.WRONG_PARTITION, detail, extra
