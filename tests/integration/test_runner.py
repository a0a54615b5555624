"""The process runner on the real stack: dead roles end the process, Temporal is waited for,
and flush workflows collapse or run again by their id's history."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

import consumers.dispatcher
from consumers.bootstrap import App
from consumers.dispatcher import FlushDispatcher
from consumers.events import appended_payload, envelope
from consumers.runner import RoleFailedError, Runner, serve
from consumers.settings import Settings
from memory_core import Draft, Kind, Role
from memory_core.temporal import FlushInput, FlushMemory, workflow_id
from schemas import FLUSH_COMMAND
from tests.fault.test_consumer_kill import _environment
from tests.fault.test_temporal_outage import TemporalDevServer
from tests.integration.test_ordering import read_topic
from tests.ports import free_port_block

MEMSTREAM = Path(sys.executable).parent / "memstream"


class PoisonedDispatcher(FlushDispatcher):
    """A dispatcher whose every step fails with an error no retry can fix."""

    async def step(self, timeout_ms: int = 200) -> int:
        raise ValueError("poisoned step")


async def test_a_role_that_dies_is_logged_stops_the_others_and_makes_serve_raise(
    pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumers.dispatcher, "FlushDispatcher", PoisonedDispatcher)
    started = time.monotonic()
    with (
        caplog.at_level(logging.ERROR, logger="consumers.runner"),
        pytest.raises(RoleFailedError, match="role dispatch ended unexpectedly") as failed,
    ):
        await asyncio.wait_for(serve(pipeline_settings, ["apply", "dispatch"]), 20)
    assert time.monotonic() - started < 10
    assert failed.value.role == "dispatch"
    assert isinstance(failed.value.__cause__, ValueError)
    [record] = [r for r in caplog.records if r.name == "consumers.runner"]
    assert record.levelno == logging.ERROR
    assert "poisoned step" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


async def test_a_role_that_returns_while_the_runner_is_not_stopping_counts_as_dead(
    app: App,
) -> None:
    runner = Runner(app, ["apply"])
    await runner.start()
    try:
        assert runner.consumer is not None
        await runner.consumer.stop()  # the apply loop returns although nobody stopped the runner
        with pytest.raises(RoleFailedError, match="role apply ended unexpectedly"):
            await asyncio.wait_for(runner.wait(), 10)
    finally:
        await runner.stop()


class Process:
    """``memstream run`` as a child process; its combined output in a file."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(MEMSTREAM),
                "run",
                *args,
                env=_environment(self.settings),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def until_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc is not None and self.proc.returncode is None, self.output()
            assert time.monotonic() < deadline, f"{text!r} not written: {self.output()[-2000:]}"
            await asyncio.sleep(0.1)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        proc, self.proc = self.proc, None
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(sig)
        return await asyncio.wait_for(proc.wait(), timeout)


@pytest.fixture
async def process(pipeline_settings: Settings, tmp_path: Path) -> AsyncIterator[Process]:
    """A ``memstream run`` handle whose Temporal address has no server (yet)."""
    port = free_port_block()
    settings = pipeline_settings.model_copy(update={"temporal_address": f"127.0.0.1:{port}"})
    handle = Process(settings, tmp_path / "memstream.log")
    yield handle
    if handle.proc is not None:
        await handle.stop(signal.SIGKILL)


async def test_a_dispatcher_started_while_temporal_is_down_waits_and_stops_on_sigterm(
    process: Process,
) -> None:
    await process.start("--roles", "dispatch")
    waiting = f"waiting for Temporal at {process.settings.temporal_address}"
    await process.until_output(waiting)
    await asyncio.sleep(3)  # several retries later: still waiting, not exited
    assert process.proc is not None and process.proc.returncode is None, process.output()
    stopped_at = time.monotonic()
    assert await process.stop(timeout=10) == 0
    assert time.monotonic() - stopped_at < 3
    output = process.output()
    assert output.count(waiting) == 1, output
    assert "Traceback" not in output, output


async def test_a_worker_started_while_temporal_is_down_polls_once_it_is_up(
    process: Process, tmp_path: Path
) -> None:
    await process.start("--roles", "worker")
    address = process.settings.temporal_address
    await process.until_output(f"waiting for Temporal at {address}")
    server = TemporalDevServer(tmp_path / "temporal", port=int(address.rsplit(":", 1)[1]))
    await server.start()
    try:
        await process.until_output(f"connected to Temporal at {address}")
        waited = process.output()
        assert waited.count("waiting for Temporal") == 1, waited
        assert "Traceback" not in waited, waited
        client = await Client.connect(address)
        key = f"agent:{uuid.uuid4().hex[:8]}:user:nobody"
        request = FlushInput(key, "no-such-memory", 1, namespace=process.settings.key_prefix)
        handle = await client.start_workflow(
            FlushMemory.run,
            request,
            id=request.workflow_id,
            task_queue=process.settings.temporal_task_queue,
        )
        # Only a polling worker can fail it (unknown memory, without retries).
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), 60)
        assert await process.stop(timeout=20) == 0
    finally:
        await server.stop()


# -- workflow id reuse ----------------------------------------------------------------------


@pytest.fixture
async def producer(app: App) -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka producer, for flush commands sent again by hand."""
    raw = AIOKafkaProducer(bootstrap_servers=app.settings.kafka_bootstrap, acks="all")
    await raw.start()
    yield raw
    await raw.stop()


async def _until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
        await asyncio.sleep(0.1)


def _dispatched(runner: Runner, count: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        dispatcher = runner.dispatcher
        assert dispatcher is not None
        return dispatcher.started + dispatcher.duplicates >= count

    return probe


async def _request_flush(app: App, memory_key: str) -> None:
    """Append messages until the memory's threshold requests flush 1."""
    for n in range(40):
        now_ms = int(time.time() * 1000)
        text = f"message {n}: " + " ".join(f"topic{n}x{j}" for j in range(8))
        draft = Draft(uuid.uuid4().hex, Role.USER if n % 2 else Role.ASSISTANT, text, now_ms)
        await app.producer.send_records(
            memory_key, [envelope(memory_key, "chat", now_ms, appended_payload(draft))]
        )
        snap = await app.store.read(memory_key)
        if snap.flush_pending:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the threshold never requested a flush")


async def _send_again(app: App, producer: AIOKafkaProducer) -> None:
    """The first flush command of the topic once more, as a redelivery would send it."""
    command = (await read_topic(app.settings.kafka_bootstrap, app.settings.flush_topic))[0]
    await producer.send_and_wait(app.settings.flush_topic, command.value, key=command.key)


async def test_a_terminated_flush_runs_again_when_requested_again_a_running_or_done_one_not(
    app: App, temporal_client: Client, producer: AIOKafkaProducer
) -> None:
    key = f"agent:{app.settings.key_prefix}:user:reuse"
    async with Runner(app, ["apply", "dispatch"], temporal=temporal_client) as runner:
        await _request_flush(app, key)
        await _until(_dispatched(runner, 1), "the flush command dispatched")
        [record] = await read_topic(app.settings.kafka_bootstrap, app.settings.flush_topic)
        command = app.codec.decode(FLUSH_COMMAND, record.value)
        wf_id = workflow_id(key, 1, command["source_offset"], app.settings.key_prefix)
        handle = temporal_client.get_workflow_handle(wf_id)
        first = await handle.describe()
        assert first.status is WorkflowExecutionStatus.RUNNING  # no worker yet

        await _send_again(app, producer)  # while it runs: the same run
        await _until(_dispatched(runner, 2), "the duplicate dispatched")
        assert (await handle.describe()).run_id == first.run_id

        await handle.terminate("test: a flush whose run ended without a result")
        await _send_again(app, producer)  # after it was terminated: a new run
        await _until(_dispatched(runner, 3), "the request after termination dispatched")
        second = await handle.describe()
        assert second.run_id != first.run_id
        assert second.status is WorkflowExecutionStatus.RUNNING

        async with Runner(app, ["worker"], temporal=temporal_client):
            await asyncio.wait_for(temporal_client.get_workflow_handle(wf_id).result(), 60)

            async def flushed() -> bool:
                snap = await app.store.read(key)
                return not snap.flush_pending and any(m.kind is Kind.SUMMARY for m in snap.messages)

            await _until(flushed, "the summary applied")
        assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED

        assert runner.dispatcher is not None
        duplicates = runner.dispatcher.duplicates
        await _send_again(app, producer)  # after it completed: collapses, no new run
        await _until(_dispatched(runner, 4), "the request after completion dispatched")
        assert runner.dispatcher.duplicates == duplicates + 1
        done = await handle.describe()
        assert (done.run_id, done.status) == (second.run_id, WorkflowExecutionStatus.COMPLETED)


async def test_a_failed_flush_runs_again_when_requested_again(
    app: App, temporal_client: Client, producer: AIOKafkaProducer
) -> None:
    key = f"agent:{app.settings.key_prefix}:user:failed"
    command = {
        "command_id": f"{key}:1",
        "memory_key": key,
        "memory_id": "no-such-memory",
        "flush_seq": 1,
        "requested_at": 1_700_000_000_000,
        "source_offset": 0,
    }
    handle = temporal_client.get_workflow_handle(workflow_id(key, 1, 0, app.settings.key_prefix))
    async with Runner(app, ["dispatch", "worker"], temporal=temporal_client) as runner:
        await producer.send_and_wait(
            app.settings.flush_topic, app.codec.encode(FLUSH_COMMAND, command), key=key.encode()
        )
        await _until(_dispatched(runner, 1), "the flush command dispatched")
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), 30)
        first = await handle.describe()
        assert first.status is WorkflowExecutionStatus.FAILED

        await _send_again(app, producer)
        await _until(_dispatched(runner, 2), "the request after the failure dispatched")
        again = temporal_client.get_workflow_handle(handle.id)
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(again.result(), 30)
        second = await again.describe()
        assert second.run_id != first.run_id
        assert second.status is WorkflowExecutionStatus.FAILED


def test_an_apply_only_process_never_loads_the_temporal_sdk() -> None:
    # About 35 MiB an apply-only process does not need (docs/decisions/0011).
    code = (
        "import sys, consumers.cli, consumers.runner, consumers.apply, consumers.bootstrap; "
        "print(sorted(m for m in sys.modules if m.startswith('temporalio')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
