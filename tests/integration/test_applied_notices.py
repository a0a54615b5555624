"""Read-your-writes without polling: the apply consumer's notices wake waiting writers, on
single Redis and on Redis Cluster."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from redis.asyncio import Redis

from consumers.bootstrap import App
from consumers.runner import Runner
from memory_core import WriteOutcomeStatus
from memory_core.redis import AppliedNotices


async def test_a_notice_wakes_its_waiters_and_only_them(redis: Redis) -> None:
    notices = AppliedNotices(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    await notices.start()
    try:
        started = time.monotonic()
        woken = asyncio.create_task(notices.wait("events", 3, 41, timeout_s=10))
        later = asyncio.create_task(notices.wait("events", 3, 42, timeout_s=0.5))
        other = asyncio.create_task(notices.wait("events", 4, 0, timeout_s=0.5))
        await asyncio.sleep(0.05)
        await notices.announce({("events", 3): 41})
        await woken
        assert time.monotonic() - started < 2.0  # the notice, not the 10 s timeout
        await asyncio.gather(later, other)  # not announced: they time out
        assert time.monotonic() - started >= 0.5
        # What was announced before a wait settles it at once.
        again = time.monotonic()
        await notices.wait("events", 3, 40, timeout_s=10)
        assert time.monotonic() - again < 0.1
    finally:
        await notices.close()


async def test_a_write_is_confirmed_by_the_notice_without_polling(app: App) -> None:
    # Fallback reads every 30 s only: a wait of 10 s is confirmed by notices or not at all.
    notices = AppliedNotices(app.redis, prefix=app.settings.key_prefix, fallback_s=30.0)
    async with Runner(app, ("apply",)):
        memory = app.catalog.instance(
            f"agent:a1:user:{uuid.uuid4().hex[:8]}",
            store=app.store,
            publisher=app.producer,
            signal=notices,
        )
        try:
            started = time.monotonic()
            for turn in range(5):
                outcome = await memory.append("user", f"turn {turn}", wait=timedelta(seconds=10))
                assert outcome.status is WriteOutcomeStatus.APPLIED
            assert time.monotonic() - started < 10.0
        finally:
            await notices.close()
