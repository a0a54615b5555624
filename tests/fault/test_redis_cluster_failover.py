"""A Redis Cluster master killed mid-stream, its replica promoted: no acknowledged write is
lost. Writes wait for a replica (WAIT) before their offsets are committed, so what the
dead master had not replicated is applied again from the log on the promoted replica."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

from consumers.bootstrap import build_app
from consumers.recovery import verify
from consumers.runner import Runner
from consumers.settings import Settings
from consumers.stack.redis_server import CLUSTER_NODES, cluster_nodes, form_cluster
from memory_core import AsyncSafeMemoryInstance, Role, UnconfirmedWriteError, WriteOutcomeStatus
from tests.ports import free_port_block

WRITERS = 24
TURNS = 30


class OwnCluster:
    """Six redis-server processes of a Redis Cluster of this test's own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nodes = cluster_nodes(settings)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, index: int) -> None:
        argv = self.nodes[index].prepare()
        self.procs[index] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill(self, index: int) -> None:
        proc = self.procs.pop(index)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
        self.procs.clear()


@pytest.fixture
async def cluster(
    pipeline_settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Settings, OwnCluster]]:
    """A fresh cluster (3 masters, 3 replicas) and settings that use it."""
    # Client ports and their cluster-bus ports (+10000) all below 32768.
    base = free_port_block(CLUSTER_NODES, also=10_000, high=22_000)
    settings = pipeline_settings.model_copy(
        update={
            "stack_dir": tmp_path / "stack",
            "stack_redis_cluster_port": base,
            "redis_url": f"redis://127.0.0.1:{base}/0",
            "redis_cluster": True,
        }
    )
    own = OwnCluster(settings)
    for i in range(CLUSTER_NODES):
        own.start(i)
    try:
        for node in own.nodes:
            for _ in range(100):
                if await node.probe():
                    break
                await asyncio.sleep(0.05)
        await form_cluster(settings)
        yield settings, own
    finally:
        own.stop()


async def _master_ports(settings: Settings) -> set[int]:
    masters = set()
    for node in cluster_nodes(settings):
        client = Redis(port=node.port, socket_connect_timeout=1)
        try:
            info = await client.info("replication")
            if info.get("role") == "master":
                masters.add(node.port)
        except Exception:  # a dead node is no master
            pass
        finally:
            await client.aclose()
    return masters


async def test_a_master_killed_mid_stream_loses_no_acknowledged_write(
    cluster: tuple[Settings, OwnCluster], caplog: pytest.LogCaptureFixture
) -> None:
    settings, own = cluster
    acked: dict[str, list[int]] = defaultdict(list)
    async with build_app(settings) as app:
        assert isinstance(app.redis, RedisCluster)
        config = app.catalog.config("chat")
        keys = [f"agent:a1:user:f{uuid.uuid4().hex[:6]}{i}" for i in range(WRITERS)]
        await app.redis.initialize()
        # The master holding most of the memories dies.
        by_port: dict[int, int] = defaultdict(int)
        for key in keys:
            node = app.redis.get_node_from_key(app.store.keys(key).meta)
            by_port[int(node.port)] += 1
        victim = max(by_port, key=by_port.__getitem__)
        before = await _master_ports(settings)
        assert victim in before and len(before) == 3

        async def writer(key: str) -> None:
            memory = AsyncSafeMemoryInstance(key, config, store=app.store, publisher=app.producer)
            for turn in range(TURNS):
                ids = {"message_id": f"{key}-{turn}"}
                # As an agent would: an unconfirmed write (Redis failing over while it waited)
                # is retried with its ids until it is confirmed; it is applied once.
                for _attempt in range(120):
                    try:
                        outcome = await memory.append(
                            Role.USER, f"turn {turn}", wait=timedelta(seconds=30), **ids
                        )
                    except UnconfirmedWriteError as exc:
                        ids = {"message_id": exc.message_id, "event_id": exc.event_id}
                        await asyncio.sleep(0.5)
                        continue
                    if outcome.status in (WriteOutcomeStatus.APPLIED, WriteOutcomeStatus.DUPLICATE):
                        assert outcome.offset is not None
                        acked[key].append(outcome.offset)
                    break

        with caplog.at_level(logging.WARNING, logger="consumers.lifecycle"):
            async with Runner(app, ["apply"]):
                writing = asyncio.gather(*(writer(k) for k in keys))
                # Mid-stream: a third of the writes acknowledged.
                while sum(len(v) for v in acked.values()) < WRITERS * TURNS // 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                index = next(i for i, n in enumerate(own.nodes) if n.port == victim)
                own.kill(index)
                # Its replica takes over its slots (after the 2 s node timeout) ...
                for _ in range(300):
                    masters = await _master_ports(settings)
                    if victim not in masters and len(masters) == 3:
                        break
                    await asyncio.sleep(0.1)
                assert len(masters) == 3, "a replica was promoted"
                # ... and with no replica of its own it confirms no write (WAIT): apply
                # waits rather than risk a write the next failover would lose. The killed
                # node restarts and rejoins as the new master's replica; apply goes on.
                await asyncio.sleep(2)
                assert not writing.done()
                own.start(index)
                await asyncio.wait_for(writing, 240)
        failures = [
            r.getMessage() for r in caplog.records if "apply batch failed" in r.getMessage()
        ]
        assert any("replicas confirmed" in f for f in failures), failures[:5]
        # Every acknowledged write is applied on the promoted replica ...
        for key, offsets in acked.items():
            assert await app.store.applied_offset(key) >= max(offsets), key
        assert sum(len(v) for v in acked.values()) == WRITERS * TURNS
        # ... and every memory equals the log replayed through the pure model.
        report = await verify(settings, app.catalog, app.codec, app.store, keys=keys)
        assert report.ok, report.mismatches[:3]
