"""Producers outside memstream: librdkafka (confluent-kafka) following the producer contract,
and librdkafka misconfigured with its default partitioner.

The producer contract: key = the memory key in UTF-8; value = the Confluent wire format (magic
byte 0, the 4-byte big-endian schema id of ``schemas/avro/registry.json``, the Avro binary
body); the record in its memory's home partition, ``toPositive(murmur2(key)) % N`` (Kafka's
Java default partitioner, librdkafka's ``murmur2_random``); a W3C ``traceparent`` header.
Everything here is encoded independently of memstream's codec: fastavro over the ``.avsc``
files, a murmur2 written from the Java client's.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from fastavro import parse_schema, schemaless_writer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumers import deadletter
from consumers.bootstrap import App, build_app
from consumers.recovery import verify
from consumers.settings import Settings
from consumers.telemetry import Telemetry
from tests.integration.test_ordering import apply_consumer, drain, read_topic
from tests.services import MEMORIES

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "avro"
NS = "memstream.v1."
BASE_MS = 1_700_000_000_000
WRONG_PARTITION = "wrong_partition"  # memory_core.DeadLetterReason.WRONG_PARTITION
HOME_TOPIC = "memstream.dlq.home_topic"
HOME_PARTITION = "memstream.dlq.home_partition"
# Roomy: nothing is evicted, so every applied message stays in memory to be checked.
ROOMY = MEMORIES.replace("max_tokens: 400", "max_tokens: 100000")
assert ROOMY != MEMORIES, "tests.services.MEMORIES changed its max_tokens line"


# --- an independent implementation of the producer contract -------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (the Java client's), as a signed 32-bit int."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def home(memory_key: str, partitions: int) -> int:
    """The home partition of ``memory_key``: ``toPositive(murmur2(key)) % partitions``."""
    return (murmur2(memory_key.encode()) & 0x7FFFFFFF) % partitions


def test_murmur2_matches_the_java_clients_values() -> None:
    # Values from Kafka's UtilsTest.testMurmur2.
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {k: murmur2(k) for k in cases} == cases


class WireCodec:
    """Confluent-framed Avro of one registered schema, from the ``.avsc`` file itself."""

    def __init__(self, subject: str, version: int) -> None:
        registry = json.loads((SCHEMAS / "registry.json").read_text())
        [entry] = [
            s for s in registry["schemas"] if s["subject"] == subject and s["version"] == version
        ]
        self.schema_id = int(entry["id"])
        self.schema = parse_schema(json.loads((SCHEMAS / entry["file"]).read_text()))

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(b"\x00" + struct.pack(">I", self.schema_id))
        schemaless_writer(buf, self.schema, record)
        return buf.getvalue()


MEMORY_EVENT_V1 = WireCodec("memory-event", 1)


@dataclass(frozen=True)
class Delivered:
    """One record as the broker acknowledged it."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    record: dict[str, Any]


class WireProducer:
    """A librdkafka producer of memory events; ``partitioner`` None keeps librdkafka's default
    (``consistent_random``: CRC32, not murmur2)."""

    def __init__(self, bootstrap: str, topic: str, *, partitioner: str | None) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
        if partitioner is not None:
            config["partitioner"] = partitioner
        self.topic = topic
        self._producer = Producer(config)
        self.delivered: list[Delivered] = []
        self.errors: list[str] = []

    def produce(
        self, record: dict[str, Any], *, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        key = record["memory_key"].encode()
        value = MEMORY_EVENT_V1.encode(record)

        def done(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.errors.append(str(err))
                return
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            self.delivered.append(Delivered(key, value, partition, offset, record))

        self._producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=done)
        self._producer.poll(0)

    async def flush(self) -> None:
        """Wait for every delivery report."""
        left = await asyncio.to_thread(self._producer.flush, 30)
        assert left == 0, f"{left} records not delivered"
        assert self.errors == []


def record(
    memory_key: str,
    n: int,
    role: str,
    content: str,
    *,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    tool_call_id: str | None = None,
    tool_calls: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A MessageAppended record as a plain Avro datum (union branch by its full name)."""
    return {
        "event_id": f"wire-{memory_key}-{n}",
        "memory_key": memory_key,
        "memory_id": "chat",
        "occurred_at": BASE_MS + n,
        "payload": (
            NS + "MessageAppended",
            {
                "id": f"m{n}",
                "role": role,
                "content": content,
                "name": name,
                "metadata": metadata or {},
                "tool_call_id": tool_call_id,
                "tool_calls": tool_calls or [],
            },
        ),
    }


WORDS = ("tea", "river", "ünïcødé", "東京", "emoji 🚀", 'quote "x"', "new\nline", "tab\tbed")


def conversation(rng: random.Random, memory_key: str, events: int) -> list[dict[str, Any]]:
    """Users (some named), assistants, system prompts, tool calls with their results,
    metadata, non-ASCII content."""
    out: list[dict[str, Any]] = []

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))

    while len(out) < events:
        n, roll = len(out), rng.random()
        if roll < 0.1:
            out.append(record(memory_key, n, "system", text()))
        elif roll < 0.3 and events - n >= 2:
            calls = [
                {"id": f"call{n}-{i}", "name": "lookup", "arguments": json.dumps({"q": text()})}
                for i in range(rng.randint(1, min(2, events - n - 1)))
            ]
            out.append(record(memory_key, n, "assistant", text(), tool_calls=calls))
            for call in calls:
                out.append(record(memory_key, len(out), "tool", text(), tool_call_id=call["id"]))
        elif roll < 0.65:
            name = rng.choice([None, "ann", "bob"])
            meta = {"channel": rng.choice(["web", "app"])} if rng.random() < 0.3 else None
            out.append(record(memory_key, n, "user", text(), name=name, metadata=meta))
        else:
            out.append(record(memory_key, n, "assistant", text()))
    return out


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The spans this test's processes finish."""
    return InMemorySpanExporter()


@pytest.fixture
async def app(
    test_settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> AsyncIterator[App]:
    """This test's adapters, a roomy ``chat`` memory, spans recorded in memory."""
    path = tmp_path / "memories.yaml"
    path.write_text(ROOMY)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = test_settings.model_copy(update={"memories_file": path})
    async with build_app(settings, Telemetry(tracer_provider=provider)) as built:
        yield built


def _keys_per_partition(prefix: str, partitions: int, per: int) -> list[str]:
    """``per`` memory keys homed in each partition."""
    by_home: dict[int, list[str]] = defaultdict(list)
    i = 0
    while min((len(by_home[p]) for p in range(partitions)), default=0) < per:
        key = f"agent:{prefix}:user:lib{i}"
        if len(by_home[home(key, partitions)]) < per:
            by_home[home(key, partitions)].append(key)
        i += 1
    return [k for p in range(partitions) for k in by_home[p]]


# --- (a) a contract-following librdkafka producer -----------------------------------------------


async def test_a_librdkafka_producer_following_the_contract_is_applied_like_the_sdk(
    app: App, spans: InMemorySpanExporter
) -> None:
    settings = app.settings
    rng = random.Random(2024)
    keys = _keys_per_partition(settings.key_prefix, settings.topic_partitions, 3)
    conversations = {k: conversation(rng, k, 25) for k in keys}
    traces = {k: rng.getrandbits(128) | 1 for k in keys}
    producer = WireProducer(
        settings.kafka_bootstrap, settings.events_topic, partitioner="murmur2_random"
    )
    # Interleaved across memories, in order within each.
    for n in range(25):
        for key in keys:
            traceparent = f"00-{traces[key]:032x}-{rng.getrandbits(64) | 1:016x}-01"
            producer.produce(conversations[key][n], headers=[("traceparent", traceparent.encode())])
    await producer.flush()
    total = sum(len(c) for c in conversations.values())
    assert len(producer.delivered) == total

    # librdkafka's murmur2_random put every record in its home partition.
    partitions = settings.topic_partitions
    assert {d.partition for d in producer.delivered} == set(range(partitions))
    for d in producer.delivered:
        assert d.partition == home(d.record["memory_key"], partitions), d.record["memory_key"]

    async with apply_consumer(app, max_records=50) as consumer:
        await drain(consumer, total)
        assert consumer.totals.applied == total
        assert consumer.totals.dead_lettered == 0

    report = await verify(settings, app.catalog, app.codec, app.store)
    assert report.mismatches == []
    assert (report.memories, report.events) == (len(keys), total)
    assert await read_topic(settings.kafka_bootstrap, settings.dlq_topic) == []

    # Every message is there, every field as the foreign producer wrote it.
    for key, records in conversations.items():
        stored = (await app.store.read(key)).messages
        assert len(stored) == len(records)
        for message, rec in zip(stored, records, strict=True):
            body = rec["payload"][1]
            assert message.id == body["id"]
            assert message.role.value == body["role"]
            assert message.content == body["content"]
            assert message.name == body["name"]
            assert dict(message.metadata) == body["metadata"]
            assert message.tool_call_id == body["tool_call_id"]
            assert [(c.id, c.name, c.arguments) for c in message.tool_calls] == [
                (c["id"], c["name"], c["arguments"]) for c in body["tool_calls"]
            ]
            assert message.created_at_ms == rec["occurred_at"]
            assert message.tokens > 0

    # The traceparent header was honoured: each memory's apply span continues its trace.
    applied = [s for s in spans.get_finished_spans() if s.name == "memstream.apply"]
    continued = {s.context.trace_id for s in applied if s.context is not None}
    continued |= {link.context.trace_id for s in applied for link in s.links}
    assert set(traces.values()) <= continued


# --- (b) librdkafka's default partitioner, by mistake -------------------------------------------


def _pick_keys(prefix: str, partitions: int) -> tuple[list[str], list[str], list[str]]:
    """Memory keys whose CRC32 partition (librdkafka's default) differs from their home, keys
    where the two agree, and keys only the SDK writes: two homed in every partition."""
    misplaced: list[str] = []
    agreeing: list[str] = []
    sdk_only: dict[int, list[str]] = defaultdict(list)
    for i in range(10_000):
        key = f"agent:{prefix}:user:k{i}"
        p, crc = home(key, partitions), zlib.crc32(key.encode()) % partitions
        if p != crc and len(misplaced) < 8:
            misplaced.append(key)
        elif p == crc and len(agreeing) < 2:
            agreeing.append(key)
        elif len(sdk_only[p]) < 2:
            sdk_only[p].append(key)
        if (
            len(misplaced) == 8
            and len(agreeing) == 2
            and sum(map(len, sdk_only.values())) == 2 * partitions
        ):
            break
    return misplaced, agreeing, [k for p in sorted(sdk_only) for k in sdk_only[p]]


async def test_events_misplaced_by_librdkafkas_default_partitioner_are_dead_lettered(
    app: App,
) -> None:
    settings = app.settings
    partitions = settings.topic_partitions
    assert partitions >= 3
    misplaced_keys, agreeing_keys, sdk_keys = _pick_keys(settings.key_prefix, partitions)
    mixed = misplaced_keys + agreeing_keys
    wrong = WireProducer(settings.kafka_bootstrap, settings.events_topic, partitioner=None)
    produced: dict[str, int] = defaultdict(int)

    # The mixed memories get events from both producers, alternately; the others only from
    # the SDK. Plain user and assistant messages: losing one breaks nothing else.
    for n in range(8):
        for key in mixed + sdk_keys:
            role = "user" if n % 2 == 0 else "assistant"
            rec = record(key, n, role, f"turn {n} of {key}")
            if key in mixed and n % 2 == 1:
                wrong.produce(rec)
            else:
                await app.producer.send_records(key, [rec])
            produced[key] += 1
        await wrong.flush()
    total = sum(produced.values())

    landed = {(d.partition, d.offset): d for d in wrong.delivered}
    astray = {
        where: d
        for where, d in landed.items()
        if d.partition != home(d.record["memory_key"], partitions)
    }
    at_home = [d for d in landed.values() if (d.partition, d.offset) not in astray]
    # librdkafka's partitioner did put records elsewhere (and, for some keys, at home).
    assert len(astray) == 4 * len(misplaced_keys)
    assert {d.record["memory_key"] for d in at_home} == set(agreeing_keys)

    async with apply_consumer(app, max_records=16) as consumer:
        await drain(consumer, total)
        assert consumer.totals.dead_lettered == len(astray)

    # Every misplaced event is dead-lettered, as it was, naming its home; nothing else is.
    dead = await read_topic(settings.kafka_bootstrap, settings.dlq_topic)
    assert len(dead) == len(astray)
    dead_by_key: dict[str, int] = defaultdict(int)
    sources = set()
    for rec in dead:
        headers = deadletter.header_map(rec.headers)
        where = (int(headers[deadletter.PARTITION]), int(headers[deadletter.OFFSET]))
        assert where in astray, f"not a misplaced record: {headers}"
        sources.add(where)
        origin = astray[where]
        memory_key = origin.record["memory_key"]
        assert headers[deadletter.REASON] == WRONG_PARTITION
        assert headers[deadletter.TOPIC] == settings.events_topic
        assert headers.get(HOME_TOPIC) == settings.events_topic
        assert headers.get(HOME_PARTITION) == str(home(memory_key, partitions))
        assert (rec.key, rec.value) == (origin.key, origin.value)
        dead_by_key[memory_key] += 1
    assert sources == set(astray)

    # Per memory: applied + dead-lettered = produced, and what is applied is exactly what
    # reached the home partition, in order; the SDK-only memories are complete.
    astray_ids = {(d.record["memory_key"], d.record["payload"][1]["id"]) for d in astray.values()}
    for key in mixed + sdk_keys:
        stored = [m.id for m in (await app.store.read(key)).messages]
        assert len(stored) + dead_by_key[key] == produced[key], key
        expected = [f"m{n}" for n in range(8) if (key, f"m{n}") not in astray_ids]
        assert stored == expected, key
    # Every partition that received misplaced records also homes SDK-only memories, applied.
    assert {d.partition for d in astray.values()} <= {home(k, partitions) for k in sdk_keys}

    report = await verify(settings, app.catalog, app.codec, app.store)
    assert report.mismatches == []
    assert report.memories == len(mixed + sdk_keys)
    assert report.events == total - len(astray)
