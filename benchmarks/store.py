"""Redis apply: memstream's batched, pipelined apply against a naive per-event apply."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from benchmarks.common import Result, best_of
from consumers.bootstrap import make_redis
from consumers.settings import Settings
from memory_core import LoggedEvent, MemoryPolicy, Message, MessageAppended, Role, parse_config
from memory_core.redis import KeyBatch, RedisLockManager, RedisMemoryStore

POLICY = MemoryPolicy.of(
    parse_config({"id": "bench", "key": "bench:{user}", "max_tokens": 4000, "max_messages": 40})
)


def _events(keys: int, per_key: int, start: int) -> dict[str, list[LoggedEvent]]:
    return {
        f"bench:{k}": [
            LoggedEvent(
                start + i,
                MessageAppended(
                    f"e{k}.{start + i}",
                    Message(f"m{k}.{start + i}", Role.USER, "short chat message", 9, 0),
                ),
            )
            for i in range(per_key)
        ]
        for k in range(keys)
    }


async def _batched(settings: Settings, keys: int, per_key: int, rounds: int) -> float:
    redis = make_redis(settings)
    store = RedisMemoryStore(redis, prefix=f"bench{uuid.uuid4().hex[:6]}")
    batches = [_events(keys, per_key, r * per_key) for r in range(rounds)]
    total = 0
    started = time.perf_counter()
    for batch in batches:
        outcomes = await store.apply(
            [KeyBatch(k, POLICY, ev) for k, ev in batch.items()], "b", hold=True
        )
        assert all(o.result is not None for o in outcomes)
        total += keys * per_key
    rate = total / (time.perf_counter() - started)
    await redis.aclose()
    return rate


async def _naive(settings: Settings, keys: int, per_key: int, rounds: int) -> float:
    # One event at a time, three round trips each: take the lock; read the whole state (the
    # store's re-entrant acquire with no cache); write it back, releasing the lock.
    redis = make_redis(settings)
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    locks = RedisLockManager(redis, prefix=prefix)
    store = RedisMemoryStore(redis, prefix=prefix, cache_size=0)
    ttl, timeout = timedelta(seconds=10), timedelta(seconds=5)
    batches = [_events(keys, per_key, r * per_key) for r in range(rounds)]
    total = 0
    started = time.perf_counter()
    for batch in batches:
        for k, events in batch.items():
            for event in events:
                lease = await locks.acquire(k, ttl=ttl, timeout=timeout)
                await store.apply([KeyBatch(k, POLICY, [event])], lease.owner)
                total += 1
    rate = total / (time.perf_counter() - started)
    await redis.aclose()
    return rate


def run(settings: Settings, *, keys: int = 500, per_key: int = 4, rounds: int = 10) -> Result:
    """Events/s of both, same workload shape (naive on a tenth of the keys), best of three."""
    batched = best_of(3, lambda: asyncio.run(_batched(settings, keys, per_key, rounds)))
    naive = best_of(3, lambda: asyncio.run(_naive(settings, keys // 10, per_key, rounds)))
    return Result(
        name="store_apply",
        figures={"batched apply events/s": batched, "naive per-event events/s": naive},
        ratios={"batched / naive": batched / naive},
        targets={"batched / naive": 20.0},
        params={"keys": keys, "events_per_key_per_batch": per_key, "batches": rounds},
    )
