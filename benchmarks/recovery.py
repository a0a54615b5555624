"""Recovery at scale: ``memstream verify`` in bounded memory while the log grows tenfold,
``replay``'s throughput against the apply consumer's over the same log, and a rebuild from
snapshots against one from the whole log.

The log holds ``KEYS`` memories; it is measured with ``TURNS`` events per memory, then again
after nine times as many more were appended to the same memories. ``verify`` runs as its own
process each time and its peak RSS is read from the kernel (``wait4``); streaming, it holds
one state per memory, so the peak must not follow the log. Replay and the apply consumer then
each rebuild the tenfold log into fresh keys, timed in the same run. Last, an apply consumer
checkpointing every ``SNAPSHOT_EVERY`` events per partition applies the log, one more turn
per memory is appended after its last checkpoint, and replay rebuilds the whole into fresh
keys twice: from the snapshots and the tail, and from the whole log.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.common import Result, isolated
from benchmarks.pipeline import MEMORIES, _memstream, _produce
from consumers.apply import ApplyConsumer
from consumers.bootstrap import build_app
from consumers.recovery import ReplayReport, replay
from consumers.settings import Settings
from consumers.topics import ensure_topics

MEMSTREAM = Path(sys.executable).parent / "memstream"
KEYS = 2_000
TURNS = 5
GROWTH = 10
SNAPSHOT_EVERY = 5_000
_FIELDS = ("kafka_bootstrap", "redis_url", "events_topic", "key_prefix", "memories_file",
           "cache_dir", "dlq_topic", "flush_topic")  # fmt: skip


def _verify_peak_mib(settings: Settings) -> float:
    """Peak RSS of a ``memstream verify --quiet`` process over the whole log, in MiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    env.update({f"MEMSTREAM_{f.upper()}": str(getattr(settings, f)) for f in _FIELDS})
    proc = subprocess.Popen(
        [str(MEMSTREAM), "verify", "--quiet"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Exit 1: mismatches (Redis holds nothing here); anything else is a failure.
    if proc.returncode not in (0, 1):
        assert proc.stderr is not None
        raise RuntimeError(f"verify failed: {proc.stderr.read().decode()[-500:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


async def _replayed(settings: Settings, *, snapshots: bool) -> tuple[ReplayReport, float]:
    """Replay into fresh keys; the report and the seconds it took."""
    run = settings.model_copy(update={"key_prefix": f"rp{uuid.uuid4().hex[:6]}"})
    async with build_app(run) as app:
        started = time.perf_counter()
        report = await replay(run, app.catalog, app.codec, app.store, snapshots=snapshots)
        return report, time.perf_counter() - started


async def _replay_rate(settings: Settings, total: int) -> float:
    report, elapsed = await _replayed(settings, snapshots=False)
    if report.events != total:
        raise RuntimeError(f"replay wrote {report.events} of {total} events")
    return total / elapsed


async def _checkpointed(settings: Settings, total: int) -> int:
    """Apply the log with checkpoints every ``SNAPSHOT_EVERY`` events per partition (and
    every second, so the last events are covered too); returns the checkpoints taken."""
    run = settings.model_copy(
        update={
            "consumer_group": f"snap-{uuid.uuid4().hex[:6]}",
            "key_prefix": f"s{uuid.uuid4().hex[:6]}",
            "snapshot_every_events": SNAPSHOT_EVERY,
            "snapshot_every_s": 1.0,
        }
    )
    async with build_app(run) as app:
        consumer = ApplyConsumer(
            settings=run, catalog=app.catalog, store=app.store, codec=app.codec,
            telemetry=app.telemetry,
        )  # fmt: skip
        await consumer.start()
        while consumer.totals.records < total:
            await consumer.step(timeout_ms=1000)
        await consumer.settle()
        await asyncio.sleep(2.5)  # the time-driven checkpoints of the last events
        await consumer.snapshots.settle()
        taken = consumer.snapshots.checkpoints
        await consumer.stop()
    return taken


async def _snapshot_rebuild(settings: Settings, total: int) -> dict[str, float]:
    checkpoints = await _checkpointed(settings, total)
    log = total + await _produce(settings, KEYS, 1, first_turn=TURNS * GROWTH)
    whole, whole_s = await _replayed(settings, snapshots=False)
    fast, fast_s = await _replayed(settings, snapshots=True)
    if whole.memories != fast.memories or not fast.snapshots:
        raise RuntimeError(f"rebuilds differ: {whole} / {fast}")
    return {
        "checkpoints": checkpoints,
        "log events": log,
        "rebuild s, whole log": whole_s,
        "rebuild s, snapshots + tail": fast_s,
        "% of the log read with snapshots": 100 * (log - fast.skipped) / log,
    }


async def _run(settings: Settings) -> Result:
    run = isolated(settings, MEMORIES, "rec")
    await ensure_topics(run)
    small = await _produce(run, KEYS, TURNS)
    before = _verify_peak_mib(run)
    total = small + await _produce(run, KEYS, TURNS * (GROWTH - 1), first_turn=TURNS)
    after = _verify_peak_mib(run)
    replay_rate = await _replay_rate(run, total)
    apply_rate = await _memstream(run, total)
    rebuild = await _snapshot_rebuild(run, total)
    return Result(
        name="recovery",
        figures={
            f"verify peak RSS MiB, {small:,} events": before,
            f"verify peak RSS MiB, {total:,} events": after,
            "replay events/s (two passes)": replay_rate,
            "apply consumer events/s": apply_rate,
            **rebuild,
        },
        ratios={
            # Flat memory: 1 means the tenfold log took no more memory (higher is better).
            "RSS before / after tenfold log": before / after,
            "replay / apply consumer throughput": replay_rate / apply_rate,
            "rebuild speed-up from snapshots": (
                rebuild["rebuild s, whole log"] / rebuild["rebuild s, snapshots + tail"]
            ),
        },
        targets={"RSS before / after tenfold log": 0.8, "rebuild speed-up from snapshots": 2.0},
        params={"memories": KEYS, "events before": small, "events after": total},
    )


def run(settings: Settings) -> Result:
    """Verify's peak RSS as the log grows tenfold; replay's throughput against apply's; a
    rebuild from snapshots against one from the whole log."""
    return asyncio.run(_run(settings))
