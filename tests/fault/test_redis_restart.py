"""A Redis restart in the middle of applying: scripts reload, nothing is half-written."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from consumers.stack.redis_server import find_redis_server
from memory_core import LoggedEvent, MemoryPolicy, MemoryState, Role, StoreUnavailableError
from memory_core.redis import KeyBatch, RedisMemoryStore, WriteStatus
from tests.integration.test_store import _policy
from tests.ports import free_port_block
from tests.strategies import appended, message


class RedisProcess:
    """A real redis-server that the test can kill and restart: with AOF (fsync always) when
    ``persistent``, else without persistence (it comes back empty)."""

    def __init__(self, data: Path, *, persistent: bool = True) -> None:
        self.port = free_port_block(1)  # below 32768, out of the outgoing range
        self.data = data
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            [str(find_redis_server()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", *(aof if self.persistent else ["--appendonly", "no"]),
             "--dir", str(self.data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


@pytest.fixture
async def client(durable_redis: RedisProcess) -> AsyncIterator[Redis]:
    # No client-side retries: the outage must reach the store, which must survive it.
    redis = Redis(
        port=durable_redis.port,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    for _ in range(100):
        try:
            await redis.ping()
            break
        except Exception:
            await asyncio.sleep(0.05)
    yield redis
    await redis.aclose()


async def _apply_until_done(
    store: RedisMemoryStore, batches: list[KeyBatch], seen_outage: list[bool]
) -> None:
    while True:
        try:
            outcomes = await store.apply(batches, "writer")
        except StoreUnavailableError:
            seen_outage.append(True)
            await asyncio.sleep(0.05)
            continue
        assert {o.status for o in outcomes} == {WriteStatus.APPLIED}
        return


async def test_redis_killed_mid_run_comes_back_with_whole_batches_only(
    durable_redis: RedisProcess, client: Redis
) -> None:
    policy: MemoryPolicy = _policy(max_tokens=400)
    store = RedisMemoryStore(client, prefix="fault")
    keys = [f"u:{i}" for i in range(20)]
    log = [LoggedEvent(i, appended(message(f"m{i}", Role.USER, 9), f"e{i}")) for i in range(120)]
    outage: list[bool] = []

    halfway = asyncio.Event()

    async def workload() -> None:
        for start in range(0, len(log), 3):
            chunk = log[start : start + 3]
            await _apply_until_done(store, [KeyBatch(k, policy, chunk) for k in keys], outage)
            if start >= len(log) // 3:
                halfway.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(workload())
    await halfway.wait()
    durable_redis.kill()
    await asyncio.sleep(0.3)
    durable_redis.start()
    await asyncio.wait_for(task, 60)
    assert outage, "the workload never saw Redis down: the test did not exercise a restart"
    expected = policy.manager.apply(MemoryState(), log).state
    fresh = RedisMemoryStore(client, prefix="fault")
    for k in keys:
        snap = await fresh.read(k)
        assert snap.messages == expected.messages
        assert snap.tokens == expected.tokens_by_category()
        assert snap.last_offset == 119


async def test_scripts_are_reloaded_after_a_restart_without_persistence(
    durable_redis: RedisProcess, client: Redis
) -> None:
    store = RedisMemoryStore(client, prefix="fault")
    policy = _policy()
    await store.apply([KeyBatch("u:s", policy, [])], "w")
    await client.script_flush()
    (outcome,) = await store.apply([KeyBatch("u:s", policy, [])], "w")
    assert outcome.status is WriteStatus.APPLIED


async def test_a_redis_that_is_down_gives_a_clear_retriable_error() -> None:
    redis = Redis(port=free_port_block(1), socket_connect_timeout=0.5)
    store = RedisMemoryStore(redis)
    with pytest.raises(StoreUnavailableError, match="Redis is unreachable") as info:
        await store.apply([KeyBatch("u:x", _policy(), [])], "w")
    assert info.value.retriable
    await redis.aclose()
