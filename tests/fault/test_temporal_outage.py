"""Temporal down for a minute while thresholds are crossed: every flush still ends in one
workflow and one applied summary. Runs its own Temporal server so the shared one is untouched."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from temporalio.client import Client, WorkflowExecutionStatus

from consumers.bootstrap import App, build_app
from consumers.events import FLUSHED, appended_payload, envelope
from consumers.recovery import verify
from consumers.runner import Runner
from consumers.settings import Settings
from consumers.stack.temporal import find_temporal_cli
from memory_core import Draft, Role
from memory_core.temporal import workflow_id
from schemas import FLUSH_COMMAND, MEMORY_EVENT
from tests.integration.test_ordering import read_topic
from tests.ports import free_port_block

WORDS = ("sun", "river", "stone", "cloud", "quick", "brown", "fox", "jumps", "lazy", "dog", "tea")


class TemporalDevServer:
    """A ``temporal server start-dev`` of one test: its own port and SQLite file, stoppable."""

    def __init__(self, data: Path, port: int | None = None) -> None:
        self.port = port if port is not None else free_port_block()
        self.data = data
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        """The frontend gRPC address."""
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """The dev server's command line."""
        return [
            str(find_temporal_cli()), "server", "start-dev",
            "--headless",
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", str(self.port + 1),
            "--metrics-port", str(self.port + 2),
            "--db-filename", str(self.data / "temporal.db"),
            "--log-level", "error",
        ]  # fmt: skip

    async def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start the server (state kept in ``data``) and wait until it answers."""
        self.data.mkdir(parents=True, exist_ok=True)
        with (self.data / "console.log").open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while not await self.answers():
            assert self.proc.returncode is None, "the Temporal dev server exited at start"
            assert time.monotonic() < deadline, f"Temporal at {self.address} did not start"
            await asyncio.sleep(0.2)

    async def answers(self) -> bool:
        """Whether the server answers a health check now."""
        try:
            client = await Client.connect(self.address)
            return await client.service_client.check_health()
        except Exception:  # any failure only means "not answering (yet)"
            return False

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s; returns once the process is gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def own_temporal(tmp_path: Path) -> AsyncIterator[TemporalDevServer]:
    """A Temporal dev server of this test only."""
    server = TemporalDevServer(tmp_path / "temporal")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def outage_app(
    pipeline_settings: Settings, own_temporal: TemporalDevServer
) -> AsyncIterator[App]:
    """The test's adapters, pointed at this test's own Temporal server."""
    settings = pipeline_settings.model_copy(update={"temporal_address": own_temporal.address})
    async with build_app(settings) as built:
        yield built


MEMORIES = 24
EVERY_S = 0.5
OUTAGE_S = 60.0


async def _write(app: App, memory_key: str, rng: random.Random, stop: asyncio.Event) -> None:
    """One message to ``memory_key`` every ``EVERY_S`` until ``stop``; each about 20 tokens."""
    n = 0
    while not stop.is_set():
        now_ms = int(time.time() * 1000)
        role = Role.USER if n % 2 == 0 else Role.ASSISTANT
        text = f"note {n}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 16)))
        draft = Draft(f"m{n}-{uuid.uuid4().hex[:8]}", role, text, now_ms)
        record = envelope(memory_key, "chat", now_ms, appended_payload(draft))
        await app.producer.send_records(memory_key, [record])
        n += 1
        await asyncio.sleep(EVERY_S)


async def _commands_in_topic(app: App) -> int:
    """How many flush commands the flush topic holds now (sum of its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=app.settings.kafka_bootstrap)
    await consumer.start()
    try:
        topic = app.settings.flush_topic
        tps = [TopicPartition(topic, p) for p in range(app.settings.topic_partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


@pytest.mark.timeout(420)
async def test_flushes_requested_while_temporal_is_down_each_end_in_one_workflow_and_summary(
    outage_app: App, own_temporal: TemporalDevServer, names: str
) -> None:
    app = outage_app
    keys = [f"agent:{names}:user:u{i}" for i in range(MEMORIES)]
    stop_writing = asyncio.Event()
    async with Runner(app) as runner:
        rng = random.Random(11)
        writers = [asyncio.create_task(_write(app, k, rng, stop_writing)) for k in keys]
        try:
            # Flushes complete while Temporal is up...
            deadline = time.monotonic() + 60
            while True:
                snaps = [await app.store.read(k) for k in keys]
                if sum(s.flush_seq > 0 and not s.flush_pending for s in snaps) >= MEMORIES // 2:
                    break
                assert time.monotonic() < deadline, "no flush completed before the outage"
                await asyncio.sleep(0.5)
            before = await _commands_in_topic(app)
            # ...then Temporal goes away for a minute while events keep crossing thresholds.
            await own_temporal.stop()
            await asyncio.sleep(OUTAGE_S)
            during = await _commands_in_topic(app) - before
            assert not runner.failure, runner.failure
            await own_temporal.start()
            await asyncio.sleep(10)
        finally:
            stop_writing.set()
            await asyncio.gather(*writers)
        assert during > 0, "no flush was requested while Temporal was down"

        deadline = time.monotonic() + 120
        while True:
            snaps = [await app.store.read(k) for k in keys]
            pending = [k for k, s in zip(keys, snaps, strict=True) if s.flush_pending]
            if not pending:
                break
            assert time.monotonic() < deadline, f"{len(pending)} memories keep a flush pending"
            await asyncio.sleep(1)
        assert runner.failure is None

        # Every flush command ended in a completed workflow. Waited for while the worker
        # still runs: a summary is applied (and the flag cleared) before the workflow's last
        # task, after its activity, completes; a worker stopped in between leaves it open.
        settings = app.settings
        commands = {
            (c["memory_key"], c["flush_seq"], c["source_offset"])
            for c in (
                app.codec.decode(FLUSH_COMMAND, r.value)
                for r in await read_topic(settings.kafka_bootstrap, settings.flush_topic)
            )
        }
        client = await Client.connect(own_temporal.address)
        for key, seq, source_offset in sorted(commands):
            handle = client.get_workflow_handle(
                workflow_id(key, seq, source_offset, settings.key_prefix)
            )
            # An activity whose completion was lost in the outage is retried once it times
            # out: its attempt's 60 s start-to-close, the retry's backoff (up to 30 s), the new
            # attempt; on a loaded machine (CI runs the benchmarks and this suite together)
            # more than 90 s.
            await asyncio.wait_for(handle.result(), 180)
            assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
        assert runner.failure is None

    # ...and exactly one summary was published for each flush sequence of each memory.
    published: dict[tuple[str, int], set[str]] = defaultdict(set)
    for rec in await read_topic(settings.kafka_bootstrap, settings.events_topic):
        event = app.codec.decode(MEMORY_EVENT, rec.value)
        name, fields = event["payload"]
        if name == FLUSHED:
            assert fields["summary"] is not None, event
            published[(event["memory_key"], fields["flush_seq"])].add(event["event_id"])
    for key, snap in zip(keys, snaps, strict=True):
        assert snap.flush_seq > 0
        got = {seq: ids for (k, seq), ids in published.items() if k == key}
        assert sorted(got) == list(range(1, snap.flush_seq + 1)), key
        assert all(len(ids) == 1 for ids in got.values()), got
    assert len(commands) >= sum(s.flush_seq for s in snaps)

    # The stored memories are what the log replays to (each summary applied once).
    deadline = time.monotonic() + 60
    while not (report := await verify(settings, app.catalog, app.codec, app.store, keys)).ok:
        assert time.monotonic() < deadline, report.mismatches[:3]
        await asyncio.sleep(1)
