"""A killed apply consumer's restart: how long until it applies again, dynamic vs static member.

Each round starts ``memstream run --roles apply`` as its own process, waits until it applies
a probe event, SIGKILLs it, starts it again at once and times how long the restart takes to
apply a new probe: the group must hand it the partitions back. A dynamic member waits for
the dead member's session timeout; a static one (``MEMSTREAM_CONSUMER_INSTANCE_ID``) is
recognised and gets them back at once. Both are measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

from benchmarks.common import Result, isolated
from benchmarks.pipeline import MEMORIES
from consumers.bootstrap import App, build_app
from consumers.events import appended_payload, envelope
from consumers.settings import Settings
from consumers.topics import ensure_topics
from memory_core import Draft, Role

ROUNDS = 3
MEMSTREAM = Path(sys.executable).parent / "memstream"
_FIELDS = (
    "kafka_bootstrap",
    "redis_url",
    "temporal_address",
    "events_topic",
    "dlq_topic",
    "flush_topic",
    "consumer_group",
    "key_prefix",
    "memories_file",
    "cache_dir",
    "consumer_session_timeout_ms",
)


def _environment(settings: Settings, instance: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"MEMSTREAM_{f.upper()}": str(getattr(settings, f)) for f in _FIELDS})
    env.pop("MEMSTREAM_CONSUMER_INSTANCE_ID", None)
    if instance is not None:
        env["MEMSTREAM_CONSUMER_INSTANCE_ID"] = instance
    return env


async def _spawn(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(MEMSTREAM),
        "run",
        "--roles",
        "apply",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _probe(app: App, n: int, timeout_s: float = 60.0) -> float:
    """Publish one event and return the seconds until the consumer applied it."""
    key = f"bench:probe{n % 8}"
    draft = Draft(f"p{n}", Role.USER, f"probe {n}", int(time.time() * 1000))
    record = envelope(key, "bench", draft.created_at_ms, appended_payload(draft))
    (offset,) = await app.producer.send_records(key, [record])
    started = time.monotonic()
    while await app.store.applied_offset(key) < offset:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"probe {n} not applied within {timeout_s}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _rounds(app: App, instance: str | None, first: int) -> list[float]:
    env = _environment(app.settings, instance)
    proc = await _spawn(env)
    times: list[float] = []
    try:
        await _probe(app, first)
        for i in range(ROUNDS):
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            restarted = time.monotonic()
            proc = await _spawn(env)
            await _probe(app, first + i + 1)
            times.append(time.monotonic() - restarted)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    return times


async def _run(settings: Settings) -> Result:
    name = uuid.uuid4().hex[:6]
    run = isolated(settings, MEMORIES, "r")
    await ensure_topics(run)
    async with build_app(run) as app:
        dynamic_app = run.model_copy(update={"consumer_group": f"restart-d-{name}"})
        static_app = run.model_copy(update={"consumer_group": f"restart-s-{name}"})
        app.settings = dynamic_app
        dynamic = await _rounds(app, None, 0)
        app.settings = static_app
        static = await _rounds(app, f"bench-{name}", 100)
    d, s = statistics.median(dynamic), statistics.median(static)
    return Result(
        name="restart",
        figures={
            "dynamic member restart s (median)": d,
            "dynamic member restart s (max)": max(dynamic),
            "static member restart s (median)": s,
            "static member restart s (max)": max(static),
        },
        # A speed-up: dynamic time over static time, higher is better.
        ratios={"dynamic / static restart": d / s},
        targets={"dynamic / static restart": 2.5},
        params={
            "rounds": ROUNDS,
            "session_timeout_ms": run.consumer_session_timeout_ms,
        },
    )


def run(settings: Settings) -> Result:
    """Kill and restart an apply consumer process, as a dynamic and as a static member."""
    return asyncio.run(_run(settings))
