"""The snapshots topic: memories' full states with their source position, and per-partition
watermarks, so that a rebuild reads only the tail of the log (docs/semantics.md,
"Snapshots"; docs/decisions/0015).

``<events topic>.snapshots`` is compacted and co-partitioned with its events topic: a
memory's snapshot lives in the partition of its home, keyed by memory key; the watermark
``W`` of partition ``p``, keyed ``__watermark__:<p>``, says that every memory with events
before offset ``W`` has a snapshot at or after its last event before ``W`` (or a tombstone:
Redis no longer held it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka.admin import NewTopic

from consumers.generations import Generation, create_missing
from consumers.settings import Settings
from consumers.topic_reader import read_to_end
from memory_core import MemoryState, MemstreamError
from schemas import MEMORY_SNAPSHOT, AvroCodec, DecodeError

STATE_FORMAT = "memstream-state+json/1"
WATERMARK_KEY = "__watermark__:"
# A memory's whole state is one record: room for large memories (the broker's default is 1 MB).
MAX_RECORD_BYTES = 16 << 20

_decode_state = msgspec.json.Decoder(MemoryState).decode
_encode_state = msgspec.json.Encoder().encode


def snapshot_topic(events_topic: str) -> str:
    """The snapshots topic of an events topic (one per generation)."""
    return events_topic + ".snapshots"


def watermark_key(partition: int) -> bytes:
    """The key of partition ``partition``'s watermark record."""
    return f"{WATERMARK_KEY}{partition}".encode()


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """One memory's state as a snapshot holds it; ``last_event_ms``: the Kafka timestamp of
    the last event it includes (the memory's TTL runs from it)."""

    memory_key: str
    memory_id: str
    state: MemoryState
    last_event_ms: int

    @property
    def last_offset(self) -> int:
        """The offset of the last event of its home partition the state includes."""
        return self.state.last_offset


def encode_snapshot(codec: AvroCodec, home: str, snap: MemorySnapshot) -> bytes:
    """The snapshots-topic value of ``snap``."""
    return _encode(
        codec,
        home,
        "MemorySnapshot",
        {
            "memory_key": snap.memory_key,
            "memory_id": snap.memory_id,
            "last_offset": snap.last_offset,
            "last_event_at": snap.last_event_ms,
            "state_format": STATE_FORMAT,
            "state": _encode_state(snap.state),
        },
    )


def encode_watermark(codec: AvroCodec, home: str, partition: int, offset: int) -> bytes:
    """The snapshots-topic value of partition ``partition``'s watermark ``offset``."""
    return _encode(codec, home, "PartitionWatermark", {"partition": partition, "offset": offset})


def _encode(codec: AvroCodec, home: str, kind: str, payload: dict[str, Any]) -> bytes:
    record = {"home": home, "taken_at": int(time.time() * 1000)}
    return codec.encode(MEMORY_SNAPSHOT, {**record, "payload": (f"memstream.v1.{kind}", payload)})


def decode_record(codec: AvroCodec, value: bytes) -> MemorySnapshot | int:
    """A snapshots-topic value: a memory's snapshot, or a watermark's offset.

    Raises ``DecodeError`` for a value that is neither, or a state in an unknown format.
    """
    record = codec.decode(MEMORY_SNAPSHOT, value)
    name, payload = record["payload"]
    if name.endswith("PartitionWatermark"):
        return int(payload["offset"])
    if payload["state_format"] != STATE_FORMAT:
        raise DecodeError(f"snapshot state format {payload['state_format']!r} is not known")
    try:
        state = _decode_state(payload["state"])
    except msgspec.DecodeError as exc:
        raise DecodeError(f"snapshot of {payload['memory_key']}: {exc}") from exc
    at = payload["last_event_at"]
    return MemorySnapshot(
        payload["memory_key"],
        payload["memory_id"],
        state,
        at if isinstance(at, int) else int(at.timestamp() * 1000),
    )


@dataclass
class PartitionSnapshots:
    """What the snapshots topic holds for one partition: the latest watermark (None: no
    checkpoint yet) and the latest snapshot of each memory."""

    partition: int
    watermark: int | None = None
    memories: dict[str, MemorySnapshot] = field(default_factory=dict)
    records: int = 0
    # Memories with a snapshot beyond ``upto`` left out: one without an earlier snapshot
    # kept (compacted away) may have events before the watermark that nothing covers.
    beyond: set[str] = field(default_factory=set)

    @property
    def usable(self) -> bool:
        """Whether a rebuild can start at the watermark: there is one, and every memory
        left out for ``upto`` has an earlier snapshot."""
        return self.watermark is not None and self.beyond <= self.memories.keys()


async def ensure_snapshot_topic(settings: Settings, gen: Generation) -> bool:
    """Create the snapshots topic of ``gen`` if missing (True if created): compacted, with
    the events topic's partitions, records of up to ``MAX_RECORD_BYTES``."""
    created = await create_missing(
        settings,
        [
            NewTopic(
                name=snapshot_topic(gen.topic),
                num_partitions=gen.partitions,
                replication_factor=settings.topic_replication,
                topic_configs={
                    "cleanup.policy": "compact",
                    "max.message.bytes": str(MAX_RECORD_BYTES),
                },
            )
        ],
    )
    return bool(created)


async def read_snapshots(
    settings: Settings,
    codec: AvroCodec,
    gen: Generation,
    partition: int,
    *,
    upto: int | None = None,
    keys: set[str] | None = None,
) -> PartitionSnapshots:
    """Read partition ``partition`` of ``gen``'s snapshots topic to its end (nothing when
    the topic does not exist). With ``upto``, a watermark above ``upto + 1`` and snapshots
    beyond ``upto`` are left out; with ``keys``, only their snapshots are kept."""
    out = PartitionSnapshots(partition)
    mark = watermark_key(partition)
    topic = snapshot_topic(gen.topic)
    async for records in read_to_end(settings, topic, missing_ok=True, partitions=[partition]):
        for rec in records:
            out.records += 1
            key = rec.key
            if key is None:
                continue
            if key == mark:
                if rec.value is None:
                    continue
                offset = decode_record(codec, rec.value)
                if isinstance(offset, int) and (upto is None or offset <= upto + 1):
                    out.watermark = offset
                continue
            memory_key = key.decode(errors="replace")
            if keys is not None and memory_key not in keys:
                continue
            if rec.value is None:  # a tombstone: Redis no longer held it
                out.memories.pop(memory_key, None)
                continue
            snap = decode_record(codec, rec.value)
            if not isinstance(snap, MemorySnapshot) or snap.memory_key != memory_key:
                raise MemstreamError(f"{topic}:{partition} offset {rec.offset}: not a snapshot")
            if upto is not None and snap.last_offset > upto:
                out.beyond.add(memory_key)
                continue
            held = out.memories.get(memory_key)
            # Newer in the topic yet older in the log: taken by an owner being replaced while
            # it published; the newer state stands (docs/semantics.md, "Snapshots").
            if held is None or snap.last_offset >= held.last_offset:
                out.memories[memory_key] = snap
    return out
