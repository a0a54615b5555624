"""memstream on the stack's real Redis Cluster: the pipeline end to end, verify, replay,
the CLI, and what fences a zombie there (docs/decisions/0012)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from redis.asyncio import Redis

from consumers.bootstrap import build_app
from consumers.recovery import replay, verify
from consumers.runner import Runner
from consumers.settings import Settings
from memory_core import AsyncSafeMemoryInstance, Role, WriteOutcomeStatus
from memory_core.redis import KeyBatch, RedisMemoryStore, WriteStatus
from tests.integration.test_store import _policy, _user_log
from tests.services import cluster_settings

MEMSTREAM = Path(sys.executable).parent / "memstream"


async def test_the_pipeline_runs_on_redis_cluster_and_verify_and_replay_agree(
    pipeline_settings: Settings,
) -> None:
    settings = cluster_settings(pipeline_settings)
    async with build_app(settings) as app:
        config = app.catalog.config("chat")
        keys = [f"agent:a1:user:c{uuid.uuid4().hex[:6]}{i}" for i in range(40)]
        await app.redis.initialize()  # type: ignore[union-attr]
        nodes = {app.redis.get_node_from_key(app.store.keys(k).meta).name for k in keys}  # type: ignore[union-attr]
        assert len(nodes) == 3, "the memories spread over the three masters"
        async with Runner(app, ["apply"]):
            for turn in range(3):
                for key in keys:
                    memory = AsyncSafeMemoryInstance(
                        key, config, store=app.store, publisher=app.producer
                    )
                    outcome = await memory.append(Role.USER, f"turn {turn}", wait=None)
                    assert outcome.status is WriteOutcomeStatus.PUBLISHED
            last = AsyncSafeMemoryInstance(
                keys[-1], config, store=app.store, publisher=app.producer
            )
            applied = await last.append(Role.USER, "the end")
            assert applied.status is WriteOutcomeStatus.APPLIED
        for key in keys[:-1]:
            snap = await app.store.read(key)
            assert [m.content for m in snap.messages][-3:] == ["turn 0", "turn 1", "turn 2"]
        report = await verify(settings, app.catalog, app.codec, app.store, keys=keys)
        assert report.ok, report.mismatches[:3]
        # Replay over what is there changes nothing (offsets already applied are skipped).
        await replay(settings, app.catalog, app.codec, app.store)
        again = await verify(settings, app.catalog, app.codec, app.store, keys=keys)
        assert again.ok


def test_show_reads_a_memory_from_the_cluster(pipeline_settings: Settings) -> None:
    settings = cluster_settings(pipeline_settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    env.update(
        {
            "MEMSTREAM_REDIS_URL": settings.redis_url,
            "MEMSTREAM_REDIS_CLUSTER": "true",
            "MEMSTREAM_KEY_PREFIX": settings.key_prefix,
            "MEMSTREAM_MEMORIES_FILE": str(settings.memories_file),
        }
    )
    done = subprocess.run(
        [str(MEMSTREAM), "show", "agent:a1:user:nobody", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The cluster answered: the memory does not exist (exit 4), not "Redis unreachable".
    assert done.returncode == 4, done.stderr
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


async def test_what_fences_a_writer_with_an_older_partition_epoch(redis: Redis) -> None:
    """Single Redis: the partition's epoch refuses it on every memory. Redis Cluster: that
    counter is in another slot, so the memory's own stored epoch refuses it, once the new
    owner has written the memory (until then it may write it: the documented window)."""
    new_owner = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    zombie = RedisMemoryStore(redis, prefix=new_owner.prefix)
    policy = _policy()
    old_epoch = await new_owner.new_epoch("events:0")
    new_epoch = await new_owner.new_epoch("events:0")
    untouched = await zombie.apply(
        [KeyBatch("u:untouched", policy, _user_log(1), epoch=old_epoch, home="events:0")], "z"
    )
    expected = WriteStatus.APPLIED if new_owner.cluster else WriteStatus.FENCED
    assert untouched[0].status is expected
    (ok,) = await new_owner.apply(
        [KeyBatch("u:written", policy, _user_log(2), epoch=new_epoch, home="events:0")], "n"
    )
    assert ok.status is WriteStatus.APPLIED
    (refused,) = await zombie.apply(
        [KeyBatch("u:written", policy, _user_log(3), epoch=old_epoch, home="events:0")], "z"
    )
    assert refused.status is WriteStatus.FENCED
