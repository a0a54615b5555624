"""Generations of the events topic, and the home partition of every memory key.

A memory lives in one partition of one topic: its *home*. The home partition is
``murmur2(key) mod N`` (Kafka's default partitioner), where ``N`` is the partition count the
events topic's *generation* was created with, recorded in the generations topic
(``<events topic>.generations``). It never changes for a generation, even if someone grows
the topic by hand; growing is a migration to a new generation (``memstream topics
repartition``), whose record names the new topic and its count. The last record is the
active generation. See docs/decisions/0008-one-home-per-memory.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from consumers.connections import kafka_admin, kafka_consumer, kafka_producer
from consumers.settings import Settings
from memory_core import MemstreamError

log = logging.getLogger(__name__)

_HOMES_CACHED = 65_536


def home_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key`` among ``partitions``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class Generation:
    """One generation of the events topic: its topic name and home partition count."""

    number: int
    topic: str
    partitions: int
    created_at_ms: int = 0
    previous: str | None = None
    _homes: dict[bytes, int] = field(default_factory=dict, compare=False, repr=False)

    def home(self, key: bytes) -> int:
        """The home partition of memory key ``key`` (UTF-8) in this generation."""
        homes = self._homes
        p = homes.get(key)
        if p is None:
            # murmur2 in Python costs a few µs: paid once per key, not per event.
            if len(homes) >= _HOMES_CACHED:
                homes.clear()
            p = homes[key] = home_partition(key, self.partitions)
        return p

    def to_json(self) -> bytes:
        """The generations-topic record of this generation."""
        return orjson.dumps(
            {
                "generation": self.number,
                "topic": self.topic,
                "partitions": self.partitions,
                "created_at_ms": self.created_at_ms,
                "previous": self.previous,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Generation:
        """The inverse of ``to_json``."""
        d = orjson.loads(raw)
        return cls(
            int(d["generation"]),
            str(d["topic"]),
            int(d["partitions"]),
            int(d.get("created_at_ms", 0)),
            d.get("previous"),
        )


def generations_topic(settings: Settings) -> str:
    """The topic recording the generations of ``settings.events_topic``."""
    return f"{settings.events_topic}.generations"


def generation_topic(settings: Settings, number: int) -> str:
    """The events topic of generation ``number`` (the first one is the configured name)."""
    return settings.events_topic if number == 1 else f"{settings.events_topic}.g{number}"


def consumer_group(settings: Settings, generation: Generation) -> str:
    """The apply consumers' group of ``generation`` (each generation starts its own, placed
    at the end of its topic by the repartition that made it)."""
    group = settings.consumer_group
    return group if generation.number == 1 else f"{group}.g{generation.number}"


async def read_generations(settings: Settings) -> list[Generation]:
    """Every recorded generation, oldest first (empty if none was recorded yet)."""
    tp = TopicPartition(generations_topic(settings), 0)
    # One topic's metadata, not the cluster's (consumers look again every few idle seconds).
    if await topic_partition_count(settings, tp.topic) is None:
        return []
    consumer = kafka_consumer(settings, enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[Generation] = []
        while end and await consumer.position(tp) < end:
            for rec in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if rec.value:
                    out.append(Generation.from_json(rec.value))
        return out
    finally:
        await consumer.stop()


async def record_generation(settings: Settings, generation: Generation) -> None:
    """Append ``generation`` to the generations topic (it becomes the active one)."""
    await create_missing(
        settings, [NewTopic(generations_topic(settings), 1, settings.topic_replication)]
    )
    producer = kafka_producer(settings, enable_idempotence=True, acks="all")
    try:
        await producer.start()
        await producer.send_and_wait(
            generations_topic(settings), generation.to_json(), key=settings.events_topic.encode()
        )
    finally:
        await producer.stop()


async def topic_partition_count(settings: Settings, topic: str) -> int | None:
    """How many partitions ``topic`` has now (None if it does not exist)."""
    admin = kafka_admin(settings)
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for t in described:
        if t["topic"] == topic and not t["error_code"]:
            return len(t["partitions"])
    return None


class MissingTopicError(MemstreamError):
    """A topic a command reads does not exist (and is not created by reading it)."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic} does not exist")
        self.topic = topic


class TruncatedLogError(MemstreamError):
    """A rebuild needs records that retention deleted (no snapshot watermark covers them)."""

    def __init__(self, topic: str, partition: int, first: int, needed: int) -> None:
        super().__init__(
            f"{topic}:{partition} starts at offset {first} (retention deleted the records "
            f"before it) and the rebuild needs them from offset {needed}: no snapshot "
            'watermark covers them (docs/semantics.md, "Snapshots")'
        )
        self.topic = topic


async def existing_generation(settings: Settings) -> Generation:
    """The active generation, for a reader: never creates or records anything.

    An events topic that predates generations reads as generation 1 with its partitions;
    a missing one raises ``MissingTopicError``.
    """
    recorded = await read_generations(settings)
    if recorded:
        return recorded[-1]
    count = await topic_partition_count(settings, settings.events_topic)
    if count is None:
        raise MissingTopicError(settings.events_topic)
    return Generation(1, settings.events_topic, count, 0)


SEALED_MAX_MESSAGE_BYTES = "0"


async def topic_sealed(settings: Settings, topic: str) -> bool:
    """Whether ``topic`` is sealed by a repartition (it refuses every record)."""
    admin = kafka_admin(settings)
    try:
        await admin.start()
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})]
        )
    finally:
        await admin.close()
    for resource in response.resources:
        for entry in resource[4]:
            if entry[0] == "max.message.bytes":
                return bool(entry[1] == SEALED_MAX_MESSAGE_BYTES)
    return False


async def active_generation(settings: Settings, *, create: bool = True) -> Generation:
    """The active generation; the first one is recorded when none is (``create``).

    An events topic that predates generations is adopted with the partition count it has
    now (logged): a topic grown by hand before that cannot be told apart.
    """
    recorded = await read_generations(settings)
    if recorded:
        return recorded[-1]
    if not create:
        raise MemstreamError(
            f"no generation recorded for {settings.events_topic}; "
            "start `memstream run` once: it creates the topics"
        )
    count = await topic_partition_count(settings, settings.events_topic)
    if count is None:
        count = settings.topic_partitions
        await create_missing(settings, [events_topic_spec(settings, settings.events_topic, count)])
    else:
        log.warning(
            "adopting %s with its %d partitions as generation 1 (homes: murmur2 mod %d)",
            settings.events_topic,
            count,
            count,
        )
    first = Generation(1, settings.events_topic, count, time.time_ns() // 1_000_000)
    await record_generation(settings, first)
    # Two processes adopting at once record the same generation twice: the later wins, equal.
    return (await read_generations(settings))[-1]


def events_topic_spec(settings: Settings, name: str, partitions: int) -> NewTopic:
    """How an events topic (of any generation) is created."""
    # The events topic is the source of truth that replay rebuilds from: kept forever.
    return NewTopic(
        name=name,
        num_partitions=partitions,
        replication_factor=settings.topic_replication,
        topic_configs={"retention.ms": "-1"},
    )


async def create_missing(settings: Settings, topics: list[NewTopic]) -> list[str]:
    """Create those of ``topics`` that are missing; returns their names."""
    admin = kafka_admin(settings)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            # Another process may create them between our check and this call.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            await _wait_for_metadata(admin, [t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        if set(names) <= set(await admin.list_topics()):
            return
        await asyncio.sleep(0.05)
