"""An apply consumer process SIGKILLed mid-stream: its restart ends where an unbroken run ends."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.bootstrap import App, build_app
from consumers.recovery import verify
from consumers.settings import Settings
from memory_core.redis import RedisMemoryStore
from tests.integration.test_ordering import (
    Conversation,
    apply_consumer,
    drain,
    stored_state,
    workload,
)
from tests.services import MEMORIES

MEMSTREAM = Path(sys.executable).parent / "memstream"
CHUNK = 2


@pytest.fixture
async def app(test_settings: Settings, tmp_path: Path) -> AsyncIterator[App]:
    """This test's adapters, with the small ``chat`` memory resource."""
    path = tmp_path / "memories.yaml"
    path.write_text(MEMORIES)
    async with build_app(test_settings.model_copy(update={"memories_file": path})) as built:
        yield built


def _environment(settings: Settings) -> dict[str, str]:
    """The environment that gives a ``memstream`` process exactly ``settings``."""
    env = dict(os.environ)
    fields = (
        "kafka_bootstrap",
        "redis_url",
        "temporal_address",
        "events_topic",
        "dlq_topic",
        "flush_topic",
        "consumer_group",
        "dispatcher_group",
        "temporal_task_queue",
        "topic_partitions",
        "key_prefix",
        "memories_file",
        "cache_dir",
        "apply_max_records",
    )
    env.update({f"MEMSTREAM_{f.upper()}": str(getattr(settings, f)) for f in fields})
    for optional in ("health_port", "ready_max_lag"):
        if getattr(settings, optional) is not None:
            env[f"MEMSTREAM_{optional.upper()}"] = str(getattr(settings, optional))
    env["MEMSTREAM_ENCODINGS_DIR"] = str(settings.resolved_encodings_dir)
    return env


class ConsumerProcess:
    """``memstream run --roles apply`` as a child process that the test kills and restarts."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(MEMSTREAM),
                "run",
                "--roles",
                "apply",
                env=_environment(self.settings),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.returncode is None

    def output(self) -> str:
        """The end of what the process wrote."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def stop(self, sig: signal.Signals) -> int:
        """Send ``sig`` and reap the process; its exit code."""
        proc, self.proc = self.proc, None
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(sig)
        return await asyncio.wait_for(proc.wait(), 30)


@pytest.fixture
async def consumer_process(app: App, tmp_path: Path) -> AsyncIterator[ConsumerProcess]:
    """The consumer process handle; whatever is still running at the end is killed and reaped."""
    process = ConsumerProcess(app.settings, tmp_path / "consumer.log")
    yield process
    if process.proc is not None:
        await process.stop(signal.SIGKILL)


async def _produce_round(
    app: App, conversations: list[Conversation], at: int, offsets: dict[str, list[int]]
) -> None:
    async def one(conv: Conversation) -> None:
        chunk = conv.records[at : at + CHUNK]
        if chunk:
            offsets[conv.memory_key] += await app.producer.send_records(conv.memory_key, chunk)

    await asyncio.gather(*(one(c) for c in conversations))


async def _applied(app: App, offsets: dict[str, list[int]]) -> int:
    """How many of the produced events the memories in Redis have applied."""
    total = 0
    for key, produced in offsets.items():
        last = await app.store.applied_offset(key)
        total += sum(1 for o in produced if o <= last)
    return total


async def _until_applied(
    app: App,
    offsets: dict[str, list[int]],
    count: int,
    timeout: float,
    process: ConsumerProcess,
) -> int:
    deadline = time.monotonic() + timeout
    while (applied := await _applied(app, offsets)) < count:
        assert process.alive(), f"the consumer exited:\n{process.output()}"
        assert time.monotonic() < deadline, (
            f"{applied} of {count} events applied in {timeout}s:\n{process.output()}"
        )
        await asyncio.sleep(0.05)
    return applied


async def test_a_consumer_killed_mid_stream_and_restarted_ends_as_an_unbroken_run(
    app: App, consumer_process: ConsumerProcess
) -> None:
    conversations = workload(seed=99, prefix=app.settings.key_prefix, keys=30, events=30)
    total = sum(len(c.records) for c in conversations)
    offsets: dict[str, list[int]] = {c.memory_key: [] for c in conversations}

    await consumer_process.start()
    await _produce_round(app, conversations, 0, offsets)
    # The first round applied: the process has joined its group.
    await _until_applied(app, offsets, 1, 60, consumer_process)

    async def produce_the_rest() -> None:
        for at in range(CHUNK, 30, CHUNK):
            await _produce_round(app, conversations, at, offsets)
            await asyncio.sleep(0.1)

    producing = asyncio.create_task(produce_the_rest())
    try:
        await _until_applied(app, offsets, total // 4, 30, consumer_process)
        assert await consumer_process.stop(signal.SIGKILL) == -signal.SIGKILL
        applied_at_kill = await _applied(app, offsets)
    finally:
        await producing
    assert 0 < applied_at_kill < total

    await consumer_process.start()
    await _until_applied(app, offsets, total, 90, consumer_process)
    assert await consumer_process.stop(signal.SIGTERM) == 0

    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.mismatches == []
    assert (report.memories, report.events) == (len(conversations), total)

    # The same log applied by one consumer that never stopped, into its own key prefix.
    unbroken = app.settings.model_copy(
        update={
            "consumer_group": app.settings.consumer_group + ".unbroken",
            "key_prefix": app.settings.key_prefix + "u",
        }
    )
    store = RedisMemoryStore(app.redis, prefix=unbroken.key_prefix)
    async with apply_consumer(app, settings=unbroken, store=store) as consumer:
        await drain(consumer, total)
    for conv in conversations:
        killed = await app.store.read(conv.memory_key)
        assert killed.messages
        assert stored_state(killed) == stored_state(await store.read(conv.memory_key))
