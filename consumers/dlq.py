"""Dead letters as operators use them: listed by reason and memory, re-driven once fixed.

A re-drive publishes the original record again, to its memory's home in the active
generation (after a repartition, or once a config is fixed), then appends a marker to the
DLQ naming the entry it re-drove, so a second re-drive skips it. A crash between the two
re-drives the entry again on the next run: the event keeps its event id, so the consumer
skips the repeat (duplicate_id), as for any producer retry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from consumers import deadletter
from consumers.connections import kafka_consumer, kafka_producer
from consumers.producer import MemoryProducer
from consumers.settings import Settings
from consumers.topic_reader import read_to_end
from memory_core import MemstreamError

# On a marker record: the DLQ position ("<partition>:<offset>") of the entry it re-drove.
REDRIVEN = "memstream.dlq.redriven"
# On a re-driven event: the DLQ position it came from.
REDRIVE_OF = "memstream.redrive.of"
_DLQ_HEADERS = {
    deadletter.REASON,
    deadletter.DETAIL,
    deadletter.TOPIC,
    deadletter.PARTITION,
    deadletter.OFFSET,
    deadletter.HOME_TOPIC,
    deadletter.HOME_PARTITION,
    deadletter.TRUNCATED,
}


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead letter: where it is in the DLQ, why it is there and where it came from."""

    position: str  # "<dlq partition>:<dlq offset>"
    reason: str
    detail: str
    memory_key: str | None
    source: str  # "<topic>:<partition>:<offset>"
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    truncated: bool
    redriven: bool

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record had before it was dead-lettered (its trace among them)."""
        return [(k, v) for k, v in self.headers if k not in _DLQ_HEADERS and k != REDRIVE_OF]


async def read_dead_letters(settings: Settings) -> list[DeadLetterEntry]:
    """Every entry of the DLQ topic, oldest first, each marked if it was re-driven."""
    records = await _read_all(settings, settings.dlq_topic)
    redriven = {
        h[REDRIVEN] for r in records if REDRIVEN in (h := deadletter.header_map(r.headers or ()))
    }
    out = []
    for r in records:
        h = deadletter.header_map(r.headers or ())
        if REDRIVEN in h or deadletter.REASON not in h:
            continue
        position = f"{r.partition}:{r.offset}"
        out.append(
            DeadLetterEntry(
                position=position,
                reason=h[deadletter.REASON],
                detail=h.get(deadletter.DETAIL, ""),
                memory_key=r.key.decode("utf-8", "replace") if r.key is not None else None,
                source=f"{h.get(deadletter.TOPIC)}:{h.get(deadletter.PARTITION)}:"
                f"{h.get(deadletter.OFFSET)}",
                key=r.key,
                value=r.value,
                headers=tuple(r.headers or ()),
                truncated=deadletter.TRUNCATED in h,
                redriven=position in redriven,
            )
        )
    return out


def choose(
    entries: list[DeadLetterEntry],
    *,
    reason: str | None = None,
    memory_key: str | None = None,
    positions: set[str] | None = None,
) -> list[DeadLetterEntry]:
    """The entries matching every given filter."""
    return [
        e
        for e in entries
        if (reason is None or e.reason == reason)
        and (memory_key is None or e.memory_key == memory_key)
        and (not positions or e.position in positions)
    ]


@dataclass
class RedriveReport:
    """What a re-drive did."""

    redriven: int = 0
    skipped_already: int = 0
    skipped_no_key: int = 0


async def redrive(
    settings: Settings,
    producer: MemoryProducer,
    entries: list[DeadLetterEntry],
    *,
    dry_run: bool = False,
    echo: Callable[[str], None] = lambda _line: None,
) -> RedriveReport:
    """Publish ``entries`` again to their memories' homes (each once), marking them done."""
    markers = kafka_producer(settings, enable_idempotence=True, acks="all")
    try:
        await markers.start()
        return await _redrive(settings, producer, markers, entries, dry_run, echo)
    finally:
        await markers.stop()


async def _redrive(
    settings: Settings,
    producer: MemoryProducer,
    markers: AIOKafkaProducer,
    entries: list[DeadLetterEntry],
    dry_run: bool,
    echo: Callable[[str], None],
) -> RedriveReport:
    report = RedriveReport()
    for e in entries:
        if e.redriven:
            report.skipped_already += 1
            continue
        if e.key is None:
            # No memory to send it to: a re-drive could only dead-letter it again.
            report.skipped_no_key += 1
            echo(f"{e.position}: no record key, not re-driven ({e.reason})")
            continue
        value = e.value if not e.truncated else await _source_value(settings, e.source)
        if dry_run:
            echo(f"{e.position}: would re-drive {e.memory_key} ({e.reason})")
            report.redriven += 1
            continue
        headers = [*e.original_headers(), (REDRIVE_OF, e.position.encode())]
        landed = await producer.send_raw(e.key, value, headers=headers, home=True)
        await markers.send_and_wait(
            settings.dlq_topic, None, key=e.key, headers=[(REDRIVEN, e.position.encode())]
        )
        echo(f"{e.position}: re-drove {e.memory_key} to {landed.topic}[{landed.partition}]")
        report.redriven += 1
    return report


def _reader(settings: Settings) -> AIOKafkaConsumer:
    # No group, no commits; large fetches: dead letters may carry records of almost 1 MB,
    # and a truncated one's original is larger.
    return kafka_consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )


async def _source_value(settings: Settings, source: str) -> bytes | None:
    """The value of the record at ``source`` (a dead letter too large to carry it)."""
    topic, partition, offset = source.rsplit(":", 2)
    tp = TopicPartition(topic, int(partition))
    consumer = _reader(settings)
    try:
        await consumer.start()
        consumer.assign([tp])
        consumer.seek(tp, int(offset))
        for _ in range(20):
            for rec in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                if rec.offset == int(offset):
                    value: bytes | None = rec.value
                    return value
        raise MemstreamError(f"the original of a truncated dead letter is gone from {source}")
    finally:
        await consumer.stop()


async def _read_all(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    try:
        return [r async for batch in read_to_end(settings, topic) for r in batch]
    except MemstreamError as exc:
        raise MemstreamError(f"the dead-letter topic: {exc}") from None
