"""The Redis apply step against real Redis: equal to the pure model, fenced, locked, atomic."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from consumers.bootstrap import make_redis
from consumers.settings import Settings
from memory_core import (
    Category,
    FlushRequested,
    LoggedEvent,
    MemoryConfig,
    MemoryPolicy,
    MemoryState,
    Outcome,
    Role,
    parse_config,
)
from memory_core.redis import KeyBatch, RedisLockManager, RedisMemoryStore, WriteStatus
from memory_core.redis.codec import pairs, state_meta
from memory_core.values import replace
from tests.strategies import (
    appended,
    batches,
    event_logs,
    flushed,
    memory_configs,
    message,
    summary,
)


def _policy(**overrides: object) -> MemoryPolicy:
    base: dict[str, object] = {
        "id": "store-test",
        "key": "u:{user}",
        "max_tokens": 200,
        "token_allocation": {"system": 0.25, "short_term": 0.5, "long_term": 0.25},
        "locking": {"ttl": "2s", "acquire_timeout": "300ms", "retry_backoff": "10ms"},
        "persistence": {"ttl": "1h"},
    }
    base.update(overrides)
    return MemoryPolicy.of(parse_config(base))


def _user_log(n: int, start: int = 0, tokens: int = 10) -> list[LoggedEvent]:
    return [
        LoggedEvent(i, appended(message(f"m{i}", Role.USER, tokens), f"e{i}"))
        for i in range(start, start + n)
    ]


def _logs_and_batchings(test: Callable[..., Any]) -> Callable[..., Any]:
    """A property test over any memory config, log and cutting of it into batches."""
    return settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )(given(data=st.data(), config=memory_configs())(test))


def _assert_counters_match(state: MemoryState, tokens: dict[Category, int], total: int) -> None:
    assert tokens == state.tokens_by_category()
    assert total == len(state.messages)


@_logs_and_batchings
async def test_store_state_equals_the_pure_manager_for_any_log_and_batching(
    redis: Redis, data: st.DataObject, config: MemoryConfig
) -> None:
    log = data.draw(event_logs())
    cuts = data.draw(batches(log))
    policy = MemoryPolicy.of(config)
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    key = "agent:a:user:u"
    requested: list[int] = []
    for batch in cuts:
        # A fresh store per batch: no cached state, every batch reads Redis back.
        fresh = RedisMemoryStore(redis, prefix=store.prefix)
        (outcome,) = await fresh.apply([KeyBatch(key, policy, batch)], "writer")
        assert outcome.status is WriteStatus.APPLIED
        assert outcome.result is not None
        requested.extend(outcome.result.flush_requests)
    expected = policy.manager.apply(MemoryState(), log)
    snap = await store.read(key)
    assert snap.messages == expected.state.messages
    assert snap.state() == replace(expected.state, recent_event_ids=())
    _assert_counters_match(expected.state, snap.tokens, snap.total_messages)
    assert requested == list(expected.flush_requests)


@_logs_and_batchings
async def test_a_store_writing_diffs_from_its_cache_ends_in_the_manager_state(
    redis: Redis, data: st.DataObject, config: MemoryConfig
) -> None:
    # One store for every batch: each write is a diff from the state it cached (appends,
    # evictions of the oldest, summaries between kept messages), never read back.
    log = data.draw(event_logs())
    policy = MemoryPolicy.of(config)
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    key = "agent:a:user:u"
    for batch in data.draw(batches(log)):
        (outcome,) = await store.apply([KeyBatch(key, policy, batch)], "writer", hold=True)
        assert outcome.status is WriteStatus.APPLIED
    expected = policy.manager.apply(MemoryState(), log)
    snap = await store.read(key)
    assert snap.messages == expected.state.messages
    assert snap.state() == replace(expected.state, recent_event_ids=())
    _assert_counters_match(expected.state, snap.tokens, snap.total_messages)
    # The meta hash holds exactly what a write of the whole state would.
    if snap.version:
        raw = await redis.hgetall(store.keys(key).meta)
        meta = pairs([x for kv in raw.items() for x in kv])
        for field, value in state_meta(expected.state, {}, expected.tokens).items():
            assert meta.get(field) == value, field


async def test_a_batch_over_many_new_keys_costs_one_round_trip(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}", chunk_keys=256)
    policy = _policy()
    keys = [f"u:{i}" for i in range(200)]
    outcomes = await store.apply([KeyBatch(k, policy, _user_log(5)) for k in keys], "w")
    assert {o.status for o in outcomes} == {WriteStatus.APPLIED}
    assert store.round_trips == 1


@pytest.mark.parametrize("cache_size", [50_000, 0])
async def test_existing_keys_unknown_to_the_store_cost_two_round_trips_and_apply_on_top(
    redis: Redis, cache_size: int
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    policy = _policy(max_messages=6)
    keys = [f"u:{i}" for i in range(100)]
    log = _user_log(9)
    await RedisMemoryStore(redis, prefix=prefix).apply(
        [KeyBatch(k, policy, log[:5]) for k in keys], "first"
    )
    # A restarted consumer: empty cache. Its first write assumes new memories, is refused
    # with the stored state, and the second one applies the rest on top of it.
    # (Also without a cache at all: the retry uses the state the CONFLICT returned.)
    cold = RedisMemoryStore(redis, prefix=prefix, chunk_keys=256, cache_size=cache_size)
    outcomes = await cold.apply([KeyBatch(k, policy, log[3:]) for k in keys], "second")
    assert {o.status for o in outcomes} == {WriteStatus.APPLIED}
    assert cold.round_trips == 2
    expected = policy.manager.apply(MemoryState(), log).state
    for key, outcome in zip(keys, outcomes, strict=True):
        assert outcome.result is not None
        assert [r.outcome for r in outcome.result.results] == [
            Outcome.DUPLICATE_OFFSET,
            Outcome.DUPLICATE_OFFSET,
            *[Outcome.APPLIED] * 4,
        ]
        snap = await cold.read(key)
        assert snap.messages == expected.messages
        _assert_counters_match(expected, snap.tokens, snap.total_messages)


async def test_concurrent_chunks_apply_every_key_as_the_model_does(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}", chunk_keys=16)
    policy = _policy(max_messages=4)
    rng = random.Random(7)
    logs = {f"u:{i}": _user_log(rng.randint(1, 9)) for i in range(200)}
    batches = [KeyBatch(k, policy, log) for k, log in logs.items()]
    outcomes = await store.apply(batches, "w", hold=True)
    # Outcomes come back in input order, one per key, whatever chunk applied it.
    assert [o.memory_key for o in outcomes] == list(logs)
    assert {o.status for o in outcomes} == {WriteStatus.APPLIED}
    assert store.round_trips == 1  # 200 new keys in 13 chunks of 16, pipelined: one round
    for key, log in logs.items():
        expected = policy.manager.apply(MemoryState(), log).state
        snap = await store.read(key)
        assert snap.messages == expected.messages
        assert snap.last_offset == expected.last_offset
        _assert_counters_match(expected, snap.tokens, snap.total_messages)


async def test_a_held_lock_keeps_other_writers_out_between_batches(redis: Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisMemoryStore(redis, prefix=prefix)
    policy = _policy()
    keys = [f"u:{i}" for i in range(50)]
    await store.apply([KeyBatch(k, policy, _user_log(2)) for k in keys], "owner", hold=True)
    assert store.round_trips == 1
    await store.apply(
        [KeyBatch(k, policy, _user_log(2, start=2)) for k in keys], "owner", hold=True
    )
    assert store.round_trips == 2
    (other,) = await RedisMemoryStore(redis, prefix=prefix).apply(
        [KeyBatch("u:0", policy, _user_log(1, start=4))], "someone-else"
    )
    assert other.status is WriteStatus.LOCKED
    assert await store.release("owner") == 50
    (other,) = await RedisMemoryStore(redis, prefix=prefix).apply(
        [KeyBatch("u:0", policy, _user_log(1, start=4))], "someone-else"
    )
    assert other.status is WriteStatus.APPLIED


async def test_redelivered_batches_change_nothing(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    policy = _policy()
    log = _user_log(12)
    await store.apply([KeyBatch("u:1", policy, log)], "w")
    before = await store.read("u:1")
    for again in (log, log[3:7], log[-1:]):
        (outcome,) = await RedisMemoryStore(redis, prefix=store.prefix).apply(
            [KeyBatch("u:1", policy, again)], "w2"
        )
        assert outcome.result is not None
        assert outcome.result.applied == 0
    after = await store.read("u:1")
    assert after.messages == before.messages
    assert after.tokens == before.tokens


async def test_concurrent_interleaved_writers_end_in_the_reference_state(redis: Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    policy = _policy(locking={"ttl": "2s", "acquire_timeout": "20s", "retry_backoff": "1ms"})
    log = _user_log(60, tokens=7)
    rng = random.Random(11)

    # Twelve writers, each with its own cache, each replaying the whole log in order but cut
    # into its own batches: like consumers restarted from older commits, racing each other.
    async def writer(n: int) -> None:
        store = RedisMemoryStore(redis, prefix=prefix)
        cuts = sorted(rng.sample(range(1, 60), 6))
        for a, b in itertools.pairwise([0, *cuts, 60]):
            (outcome,) = await store.apply([KeyBatch("u:c", policy, log[a:b])], f"writer-{n}")
            assert outcome.status is WriteStatus.APPLIED, outcome
            await asyncio.sleep(rng.random() / 200)

    await asyncio.gather(*(writer(n) for n in range(12)))
    snap = await RedisMemoryStore(redis, prefix=prefix).read("u:c")
    expected = policy.manager.apply(MemoryState(), log).state
    assert snap.messages == expected.messages
    _assert_counters_match(snap.state(), snap.tokens, snap.total_messages)
    assert snap.last_offset == 59


async def test_a_writer_with_an_older_partition_epoch_is_fenced(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    policy = _policy()
    old_epoch = await store.new_epoch("events:0")
    new_epoch = await store.new_epoch("events:0")
    assert new_epoch > old_epoch
    (ok,) = await store.apply([KeyBatch("u:z", policy, _user_log(3), epoch=new_epoch)], "new")
    assert ok.status is WriteStatus.APPLIED
    zombie = RedisMemoryStore(redis, prefix=store.prefix)
    (refused,) = await zombie.apply(
        [KeyBatch("u:z", policy, _user_log(2, start=3), epoch=old_epoch)], "zombie"
    )
    assert refused.status is WriteStatus.FENCED
    snap = await store.read("u:z")
    assert [m.id for m in snap.messages] == ["m0", "m1", "m2"]
    assert snap.lock_holder is None


async def test_a_memory_locked_by_another_owner_is_refused_not_written(redis: Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisMemoryStore(redis, prefix=prefix)
    locks = RedisLockManager(redis, prefix=prefix)
    policy = _policy()
    async with locks.hold("u:l", ttl=timedelta(seconds=5), timeout=timedelta(seconds=1)):
        (outcome,) = await store.apply([KeyBatch("u:l", policy, _user_log(2))], "consumer")
        assert outcome.status is WriteStatus.LOCKED
        assert not (await store.read("u:l")).exists
    (outcome,) = await store.apply([KeyBatch("u:l", policy, _user_log(2))], "consumer")
    assert outcome.status is WriteStatus.APPLIED


async def test_every_key_gets_the_ttl_and_each_write_refreshes_it(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    policy = _policy(persistence={"ttl": "30s"})
    await store.apply([KeyBatch("u:t", policy, _user_log(2))], "w")
    keys = store.keys("u:t")
    for k in (keys.meta, keys.order, keys.msgs, keys.fence, keys.ids):
        assert 25_000 < await redis.pttl(k) <= 30_000
    await redis.pexpire(keys.meta, 1_000)
    await store.apply([KeyBatch("u:t", policy, _user_log(1, start=2))], "w")
    assert await redis.pttl(keys.meta) > 25_000
    # A batch of duplicates leaves the ids window as it is, and still refreshes its TTL.
    await redis.pexpire(keys.ids, 1_000)
    await store.apply([KeyBatch("u:t", policy, _user_log(1, start=2))], "w")
    assert await redis.pttl(keys.ids) > 25_000


async def test_an_ids_window_stored_as_a_json_string_is_read_and_converted(
    redis: Redis,
) -> None:
    # The previous version kept the recent event ids as one JSON string (SET … PX).
    prefix = f"t{uuid.uuid4().hex[:8]}"
    policy = _policy()
    log = _user_log(3)
    await RedisMemoryStore(redis, prefix=prefix).apply([KeyBatch("u:l", policy, log)], "w")
    store = RedisMemoryStore(redis, prefix=prefix)
    ids_key = store.keys("u:l").ids
    await redis.delete(ids_key)
    await redis.set(ids_key, '["e0","e1","e2"]', px=60_000)
    assert await store.recent_event_ids("u:l") == ("e0", "e1", "e2")
    # A cold store gets the window with the stored state: the same event at a new offset is
    # a duplicate by its id.
    again = LoggedEvent(3, log[2].event)
    (outcome,) = await store.apply([KeyBatch("u:l", policy, [again, *_user_log(1, start=4)])], "w")
    assert outcome.result is not None
    assert [r.outcome for r in outcome.result.results] == [Outcome.DUPLICATE_ID, Outcome.APPLIED]
    assert await redis.type(ids_key) == b"list"
    assert await store.recent_event_ids("u:l") == ("e0", "e1", "e2", "e4")


async def test_a_write_sends_only_the_ids_it_adds_and_the_list_keeps_the_window(
    redis: Redis,
) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    policy = _policy()
    window = policy.manager.id_window
    events = _user_log(window + 40)
    for at in range(0, len(events), 7):
        (outcome,) = await store.apply([KeyBatch("u:w", policy, events[at : at + 7])], "w")
        assert outcome.result is not None
    expected = tuple(e.event.event_id for e in events[-window:])
    assert await store.recent_event_ids("u:w") == expected
    assert await redis.llen(store.keys("u:w").ids) == window


async def test_a_flush_result_replaces_exactly_the_covered_messages(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    policy = _policy()
    # The memory asks for the flush (sequence 1); only a result for it may apply.
    request = LoggedEvent(6, FlushRequested("req"))
    await store.apply([KeyBatch("u:f", policy, [*_user_log(6), request])], "w")
    result = flushed(1, summary("s", 5, ["m1", "m2", "gone"]), event_id="f", created_at_ms=9)
    await store.apply([KeyBatch("u:f", policy, [LoggedEvent(10, result)])], "w")
    snap = await store.read("u:f")
    assert [m.id for m in snap.messages] == ["m0", "s", "m3", "m4", "m5"]
    assert snap.messages[1].covers == ("m1", "m2")
    assert snap.tokens_saved_total == 15
    page = await store.read("u:f", start=1, stop=2)
    assert [m.id for m in page.messages] == ["s", "m3"]
    assert page.total_messages == 5


async def test_a_failing_chunk_gives_back_every_connection_and_the_retry_applies_all(
    stack: Settings,
) -> None:
    # Five connections: the four chunks in flight and one spare. A connection kept by the
    # failed round would make the next rounds wait for the pool and time out.
    client = make_redis(
        stack.model_copy(update={"redis_max_connections": 5, "redis_socket_timeout_s": 2.0})
    )
    try:
        store = RedisMemoryStore(client, prefix=f"t{uuid.uuid4().hex[:8]}", chunk_keys=8)
        policy = _policy()
        keys = [f"u:{i}" for i in range(64)]
        log = _user_log(4)
        # A meta hash of the wrong type makes the third chunk's script fail in Redis.
        await client.set(store.keys("u:20").meta, "not a hash")
        for _ in range(3):
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await store.apply([KeyBatch(k, policy, log) for k in keys], "w", hold=True)
        await client.delete(store.keys("u:20").meta)
        outcomes = await store.apply([KeyBatch(k, policy, log) for k in keys], "w", hold=True)
        assert {o.status for o in outcomes} == {WriteStatus.APPLIED}
        # The failed rounds had sent six chunks (u:0 to u:47, four in flight) when they read
        # the failing third one: Redis applied all of them but the rest of that chunk from
        # u:20 on (a script stops at its error; what it wrote before stays), read or not, so
        # their events come back as duplicates now (the unread ones after a CONFLICT that
        # returned the stored state).
        applied = [o.result.applied for o in outcomes if o.result is not None]
        assert applied == [0 if i < 48 and not 20 <= i < 24 else 4 for i in range(64)]
        expected = policy.manager.apply(MemoryState(), log).state
        for key in keys:
            snap = await store.read(key)
            assert snap.messages == expected.messages
            _assert_counters_match(expected, snap.tokens, snap.total_messages)
    finally:
        await client.aclose()


async def test_a_lock_lost_between_batches_is_taken_again_at_once(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    policy = _policy()
    log = _user_log(6)
    await store.apply([KeyBatch("u:l", policy, log[:3])], "owner", hold=True)
    # The lease ran out (as after a long pause) and nobody took the lock meanwhile.
    await redis.delete(store.keys("u:l").lock)
    (outcome,) = await store.apply([KeyBatch("u:l", policy, log[3:])], "owner", hold=True)
    assert outcome.status is WriteStatus.APPLIED
    # LOCK_LOST, then a write that takes the lock again: the cached state was still good.
    assert store.round_trips == 3
    snap = await store.read("u:l")
    assert snap.messages == policy.manager.apply(MemoryState(), log).state.messages
    assert snap.lock_holder == "owner"


async def test_a_write_after_another_writer_changed_the_memory_applies_on_its_state(
    redis: Redis,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    policy = _policy()
    log = _user_log(6)
    first = RedisMemoryStore(redis, prefix=prefix)
    await first.apply([KeyBatch("u:w", policy, log[:2])], "first")
    # Another writer moves the memory on; ``first`` still caches version 1.
    await RedisMemoryStore(redis, prefix=prefix).apply([KeyBatch("u:w", policy, log[:4])], "second")
    (outcome,) = await first.apply([KeyBatch("u:w", policy, log[2:])], "first")
    assert outcome.status is WriteStatus.APPLIED
    assert outcome.result is not None
    assert [r.outcome for r in outcome.result.results] == [
        Outcome.DUPLICATE_OFFSET,
        Outcome.DUPLICATE_OFFSET,
        Outcome.APPLIED,
        Outcome.APPLIED,
    ]
    snap = await first.read("u:w")
    assert snap.messages == policy.manager.apply(MemoryState(), log).state.messages
    assert snap.version == 3


async def test_the_state_cache_is_bounded_by_bytes_and_entries(redis: Redis) -> None:
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}", cache_bytes=100_000)
    policy = _policy()
    for k in range(60):
        (outcome,) = await store.apply([KeyBatch(f"u:{k}", policy, _user_log(5))], "w")
        assert outcome.status is WriteStatus.APPLIED
    assert 0 < store.cached_bytes <= 100_000
    held = len(store._cache)
    assert 10 < held < 60
    # A memory dropped from the cache is read back from Redis by its next write: nothing lost.
    (again,) = await store.apply([KeyBatch("u:0", policy, _user_log(1, start=5))], "w")
    assert again.status is WriteStatus.APPLIED
    assert [m.id for m in (await store.read("u:0")).messages][-1] == "m5"


async def test_listing_walks_every_memory_once_with_its_cursor(redis: Redis) -> None:
    """On single Redis one SCAN; on Redis Cluster the cursor walks each master in turn."""
    store = RedisMemoryStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    policy = _policy()
    keys = {f"agent:a1:user:l{i}" for i in range(40)} | {"other:x"}
    await store.apply([KeyBatch(k, policy, _user_log(1)) for k in sorted(keys)], "lister")

    async def walk(prefix: str) -> list[str]:
        seen: list[str] = []
        cursor = "0"
        while True:
            found, cursor = await store.list_memories(prefix, cursor, count=7)
            seen += found
            if cursor == "0":
                return seen

    assert sorted(await walk("agent:a1:")) == sorted(k for k in keys if k.startswith("agent:"))
    assert sorted(await walk("")) == sorted(keys)
