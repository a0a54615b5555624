"""RedisLockManager against real Redis: ownership, renewal, expiry and fencing tokens."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from memory_core import LockNotAcquiredError
from memory_core.redis import RedisLease, RedisLockManager

TTL = timedelta(milliseconds=300)


@pytest.fixture
def locks(redis: Redis) -> RedisLockManager:
    return RedisLockManager(redis, prefix=f"t{uuid.uuid4().hex[:8]}")


async def _holder(redis: Redis, locks: RedisLockManager, key: str) -> bytes | None:
    value: bytes | None = await redis.get(f"{locks.prefix}:{{{key}}}:lock")
    return value


async def test_renewal_keeps_a_long_holders_lock(redis: Redis, locks: RedisLockManager) -> None:
    async with locks.hold("k", ttl=TTL, timeout=TTL) as lease:
        await asyncio.sleep(1.2)  # four TTLs
        assert await _holder(redis, locks, "k") == lease.owner.encode()
        assert not lease.lost.is_set()
    assert await _holder(redis, locks, "k") is None


async def test_a_crashed_holders_lock_expires_and_the_next_gets_a_higher_token(
    locks: RedisLockManager,
) -> None:
    crashed = await locks.acquire("k", ttl=TTL, timeout=TTL)  # never released nor renewed
    with pytest.raises(LockNotAcquiredError):
        await locks.acquire("k", ttl=TTL, timeout=timedelta(milliseconds=50))
    await asyncio.sleep(0.4)
    after = await locks.acquire("k", ttl=TTL, timeout=TTL)
    assert after.token > crashed.token
    assert after.owner != crashed.owner


async def test_release_and_extend_by_a_non_owner_are_refused(
    redis: Redis, locks: RedisLockManager
) -> None:
    lease = await locks.acquire("k", ttl=timedelta(seconds=5), timeout=TTL)
    impostor = RedisLease("k", "someone-else", lease.token, lease.ttl_ms)
    assert not await locks.release(impostor)
    assert not await locks.extend(impostor)
    assert await _holder(redis, locks, "k") == lease.owner.encode()
    assert await locks.release(lease)
    assert await _holder(redis, locks, "k") is None


async def test_fencing_tokens_increase_on_every_acquire(locks: RedisLockManager) -> None:
    tokens = []
    for _ in range(5):
        lease = await locks.acquire("k", ttl=TTL, timeout=TTL)
        tokens.append(lease.token)
        await locks.release(lease)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 5


async def test_a_cancelled_holder_releases_its_lock_and_stops_renewing(
    redis: Redis, locks: RedisLockManager
) -> None:
    entered = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k", ttl=TTL, timeout=TTL):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _holder(redis, locks, "k") is None


async def test_contenders_take_turns_and_never_overlap(locks: RedisLockManager) -> None:
    inside = 0
    overlaps = 0

    async def contender() -> None:
        nonlocal inside, overlaps
        async with locks.hold("k", ttl=TTL, timeout=timedelta(seconds=10)):
            inside += 1
            overlaps += inside > 1
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(contender() for _ in range(10)))
    assert overlaps == 0
