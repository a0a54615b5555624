"""A fixed-rate producer of memory events, run in its own process by the latency benchmark.

``python -m benchmarks.latency_producer --topic T --rate R --duration S --stamps PATH …``

Record ``i`` is due at ``start + i / rate`` and goes to memory ``i % memories`` (its turn is
``i // memories``): every memory gets one message per round, in the same order each round.
Every few milliseconds the producer sends the records that are due, each stamped at the
moment it is handed to the client: ``occurred_at`` is that wall-clock time in ms, header
``SENT_NS_HEADER`` the same instant in ns. Records go to their memory's home partition of
the active generation (the SDK's rule), with the SDK producer's settings (idempotent,
``acks=all``, ``linger_ms`` as given, 5 by default like ``MemoryProducer``).

At the end it writes the send time of every record by partition and offset (``--stamps``,
read back by ``read_stamps``) and prints a JSON summary: records sent, the rate achieved,
and how late the sends ran behind their schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from consumers.bootstrap import make_registry
from consumers.connections import kafka_producer
from consumers.events import appended_payload, envelope
from consumers.generations import Generation, active_generation
from consumers.lifecycle import gc_paused
from consumers.settings import Settings
from memory_core import Draft, KeyTemplate, Role
from schemas import MEMORY_EVENT, AvroCodec

SENT_NS_HEADER = "memstream-bench-sent-ns"
# The messages of pipeline.py's benchmark, rotated over memories and turns.
LINES = (
    "where is my order?",
    "it shipped yesterday from Lyon",
    "can I change the delivery address?",
    "yes, until it leaves the hub",
    "thanks, that helps",
)
_NO_STAMP = -1


@dataclass(frozen=True, slots=True)
class Summary:
    """What the producer did; ``late_*`` is how far sends ran behind their schedule."""

    sent: int
    target_rate: float
    rate: float
    started_ns: int
    stopped_ns: int
    late_p99_ms: float
    late_max_ms: float
    cpu_percent: float  # of one core, while pacing


def write_stamps(path: Path, stamps: dict[int, array[int]]) -> None:
    """Send times (ns) per partition, indexed by offset (``-1``: not produced here)."""
    out = array("q", [len(stamps)])
    for partition, ns in sorted(stamps.items()):
        out.extend((partition, len(ns)))
        out.extend(ns)
    path.write_bytes(out.tobytes())


def read_stamps(path: Path) -> dict[int, array[int]]:
    """The inverse of ``write_stamps``."""
    flat = array("q")
    flat.frombytes(path.read_bytes())
    out: dict[int, array[int]] = {}
    at = 1
    for _ in range(flat[0]):
        partition, count = flat[at], flat[at + 1]
        out[partition] = flat[at + 2 : at + 2 + count]
        at += 2 + count
    return out


def _by_offset(offsets: array[int], times: array[int]) -> array[int]:
    """Send times as an array indexed by offset."""
    ns = array("q", [_NO_STAMP]) * (max(offsets, default=-1) + 1)
    for offset, t in zip(offsets, times, strict=True):
        ns[offset] = t
    return ns


async def produce(
    settings: Settings,
    *,
    key_template: str,
    memory_id: str,
    memories: int,
    rate: float,
    duration_s: float,
    content: str | None = None,
    linger_ms: int = 0,
    tick_s: float = 0.002,
) -> tuple[Summary, dict[int, array[int]]]:
    """Send ``rate × duration_s`` records on schedule; returns the summary and send stamps."""
    generation = await active_generation(settings, create=False)
    codec = AvroCodec(make_registry(settings), logical_types=False)
    template = KeyTemplate(key_template)
    keys = [template.render(**dict.fromkeys(template.fields, str(k))) for k in range(memories)]
    targets = [(key, key.encode(), generation.home(key.encode())) for key in keys]
    producer = kafka_producer(
        settings,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
    )
    try:
        await producer.start()
        await producer.partitions_for(generation.topic)  # the metadata, before the clock starts
        with gc_paused():
            return await _paced(
                producer,
                codec,
                generation,
                targets,
                memory_id=memory_id,
                rate=rate,
                total=int(rate * duration_s),
                content=content,
                tick_s=tick_s,
            )
    finally:
        await producer.stop()


class _Stamps:
    """Send times of the batches in flight, recorded by offset once each is acknowledged."""

    def __init__(self, partitions: int) -> None:
        self._in_flight: deque[tuple[int, array[int], asyncio.Future[Any]]] = deque()
        self._sent = {p: (array("q"), array("q")) for p in range(partitions)}  # offsets, ns

    def add(self, partition: int, stamps: array[int], future: asyncio.Future[Any]) -> None:
        self._in_flight.append((partition, stamps, future))

    def settle(self) -> None:
        """Record the batches acknowledged so far (in the order sent)."""
        while self._in_flight and self._in_flight[0][2].done():
            partition, stamps, future = self._in_flight.popleft()
            base = future.result().offset  # the batch's first offset; its records follow
            offsets, times = self._sent[partition]
            offsets.extend(range(base, base + len(stamps)))
            times.extend(stamps)

    async def drain(self) -> dict[int, array[int]]:
        """Wait for every batch; the send times by partition, indexed by offset."""
        await asyncio.gather(*(f for _, _, f in self._in_flight))
        self.settle()
        return {p: _by_offset(*pairs) for p, pairs in self._sent.items()}


async def _paced(
    producer: AIOKafkaProducer,
    codec: AvroCodec,
    generation: Generation,
    memories: list[tuple[str, bytes, int]],
    *,
    memory_id: str,
    rate: float,
    total: int,
    content: str | None,
    tick_s: float,
) -> tuple[Summary, dict[int, array[int]]]:
    # No cycle collection while pacing (the caller pauses it): the loop makes no cycles, and a
    # full collection would hold sends back by tens of milliseconds.
    stamps = _Stamps(generation.partitions)
    topic = generation.topic
    late: list[float] = []
    encode, count = codec.encode, len(memories)
    start, cpu = time.monotonic(), time.process_time()
    started_ns = time.time_ns()
    i = ticks = 0
    while i < total:
        ticks += 1
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        if due > i:
            late.append(time.monotonic() - start - i / rate)  # the tick's first record
            # The pacing is the batching: the records due go out as one batch per partition.
            batches: dict[int, tuple[Any, array[int]]] = {}
            for n in range(i, due):
                k, turn = n % count, n // count
                key, raw, home = memories[k]
                ns = time.time_ns()
                ms = ns // 1_000_000
                role = Role.USER if turn % 2 == 0 else Role.ASSISTANT
                line = content or LINES[(k + turn) % len(LINES)]
                draft = Draft(f"m{k}.{turn}", role, line, ms)
                value = encode(MEMORY_EVENT, envelope(key, memory_id, ms, appended_payload(draft)))
                headers = [(SENT_NS_HEADER, str(ns).encode())]
                builder, sent = batches.get(home) or (producer.create_batch(), array("q"))
                if builder.append(timestamp=None, key=raw, value=value, headers=headers) is None:
                    # Full: it goes now, and the record starts the partition's next batch.
                    stamps.add(
                        home, sent, await producer.send_batch(builder, topic, partition=home)
                    )
                    builder, sent = producer.create_batch(), array("q")
                    builder.append(timestamp=None, key=raw, value=value, headers=headers)
                sent.append(ns)
                batches[home] = (builder, sent)
            for home, (builder, sent) in batches.items():
                stamps.add(home, sent, await producer.send_batch(builder, topic, partition=home))
            i = due
            stamps.settle()
        # Ticks start every tick_s (not tick_s after the last one ended): sends keep pace.
        await asyncio.sleep(max(start + ticks * tick_s - time.monotonic(), 0))
    stopped_ns = time.time_ns()
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    by_offset = await stamps.drain()
    late.sort()
    summary = Summary(
        sent=total,
        target_rate=rate,
        rate=total / elapsed if elapsed > 0 else 0.0,
        started_ns=started_ns,
        stopped_ns=stopped_ns,
        late_p99_ms=1000 * late[int(0.99 * (len(late) - 1))] if late else 0.0,
        late_max_ms=1000 * late[-1] if late else 0.0,
        cpu_percent=100 * cpu / elapsed if elapsed > 0 else 0.0,
    )
    return summary, by_offset


def main(argv: Sequence[str]) -> int:
    """Parse the arguments, produce, write the stamps, print the summary as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_producer")
    parser.add_argument("--topic", required=True, help="the events topic (its generation's)")
    parser.add_argument("--key-template", default="bench:{user}")
    parser.add_argument("--memory-id", default="bench")
    parser.add_argument("--memories", type=int, default=20_000)
    parser.add_argument("--rate", type=float, required=True, help="records per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--content", default=None, help="one message text for every record")
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--stamps", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings().model_copy(update={"events_topic": args.topic})
    summary, stamps = asyncio.run(
        produce(
            settings,
            key_template=args.key_template,
            memory_id=args.memory_id,
            memories=args.memories,
            rate=args.rate,
            duration_s=args.duration,
            content=args.content,
            linger_ms=args.linger_ms,
        )
    )
    write_stamps(args.stamps, stamps)
    print(orjson.dumps(asdict(summary)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
