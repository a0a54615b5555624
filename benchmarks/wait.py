"""Append → applied: how long a writer waits for its event to be confirmed applied.

One ``memstream run --roles apply,http`` process applies the events and serves the HTTP
API. This process appends at a steady rate over many memories, each append waiting for its
outcome, four ways, interleaved round by round so the machine's noise falls on all of them:

- the library, woken by the consumer's applied notices (docs/decisions/0014);
- the library, polling Redis with backoff (5 ms doubling to 200 ms: before notices);
- HTTP ``POST /v1/memories/{key}/messages`` with ``wait`` (the server waits on notices).

Latency is the time of the call: publish (acks=all) plus the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import httpx

from benchmarks.common import Result, isolated
from benchmarks.pipeline import MEMORIES
from consumers.bootstrap import App, build_app
from consumers.settings import Settings
from consumers.topics import ensure_topics
from memory_core.redis import AppliedNotices

MEMSTREAM = Path(sys.executable).parent / "memstream"
RATE = 40  # appends per second, per mode
SECONDS = 6  # per round and mode
ROUNDS = 2
KEYS = 40
_FIELDS = (
    "kafka_bootstrap",
    "redis_url",
    "events_topic",
    "dlq_topic",
    "flush_topic",
    "consumer_group",
    "key_prefix",
    "memories_file",
    "cache_dir",
)


def _free_port() -> int:
    # Below 32768, out of the kernel's range for outgoing connections.
    for port in range(18_400, 18_500):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port in 18400-18499")


async def _steady(call: Callable[[int], Awaitable[None]], rate: int, seconds: float) -> list[float]:
    """Start ``call(i)`` every 1/rate s for ``seconds``; the latency of each, in ms."""
    latencies: list[float] = []

    async def timed(i: int) -> None:
        started = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(i)))
    await asyncio.gather(*tasks)
    return latencies


async def _server(settings: Settings, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    env.update({f"MEMSTREAM_{f.upper()}": str(getattr(settings, f)) for f in _FIELDS})
    env.update({"MEMSTREAM_HEALTH_PORT": str(port), "MEMSTREAM_HTTP_AUTH": "none"})
    proc = await asyncio.create_subprocess_exec(
        str(MEMSTREAM), "run", "--roles", "apply,http", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return proc
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError("the apply+http process did not become ready in 60 s")
            await asyncio.sleep(0.2)


async def _measure(app: App, port: int, name: str) -> dict[str, list[float]]:
    notices = AppliedNotices(app.redis, prefix=app.settings.key_prefix)
    wait = timedelta(seconds=10)
    signalled = [app.catalog.instance(f"bench:{name}n{k}", store=app.store,
                                      publisher=app.producer, signal=notices)
                 for k in range(KEYS)]  # fmt: skip
    polling = [app.catalog.instance(f"bench:{name}p{k}", store=app.store,
                                    publisher=app.producer) for k in range(KEYS)]  # fmt: skip
    results: dict[str, list[float]] = {"notices": [], "polling": [], "http": []}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

        async def by_notice(i: int) -> None:
            await signalled[i % KEYS].append("user", f"turn {i}", wait=wait)

        async def by_polling(i: int) -> None:
            await polling[i % KEYS].append("user", f"turn {i}", wait=wait)

        async def by_http(i: int) -> None:
            answer = await http.post(
                f"/v1/memories/bench:{name}h{i % KEYS}/messages",
                json={"messages": [{"role": "user", "content": f"turn {i}"}], "wait": 10},
            )
            if answer.status_code != 200:
                raise RuntimeError(f"HTTP append answered {answer.status_code}: {answer.text}")

        for _ in range(ROUNDS):
            for mode, call in (("notices", by_notice), ("polling", by_polling), ("http", by_http)):
                results[mode] += await _steady(call, RATE, SECONDS)
    await notices.close()
    return results


async def _run(settings: Settings) -> Result:
    name = uuid.uuid4().hex[:6]
    run = isolated(settings, MEMORIES, "w")
    await ensure_topics(run)
    port = _free_port()
    proc = await _server(run, port)
    try:
        async with build_app(run) as app:
            latencies = await _measure(app, port, name)
    finally:
        proc.terminate()
        await proc.wait()
    figures: dict[str, float] = {}
    for mode, values in latencies.items():
        ordered = sorted(values)
        figures[f"{mode} p50 ms"] = statistics.median(ordered)
        figures[f"{mode} p99 ms"] = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return Result(
        name="wait",
        figures=figures,
        # Speed-ups over polling, higher is better.
        ratios={
            "polling / notices p50": figures["polling p50 ms"] / figures["notices p50 ms"],
            "polling / notices p99": figures["polling p99 ms"] / figures["notices p99 ms"],
            # What HTTP adds to a library call (report only).
            "notices / http p50": figures["notices p50 ms"] / figures["http p50 ms"],
        },
        targets={"polling / notices p50": 1.0},
        params={"rate_per_s": RATE, "seconds": SECONDS * ROUNDS, "memories": KEYS},
    )


def run(settings: Settings) -> Result:
    """Append → applied latency: notices vs polling (library), and through HTTP."""
    return asyncio.run(_run(settings))
