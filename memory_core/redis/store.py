"""RedisMemoryStore: the atomic, fenced, batched apply step and consistent reads."""

from __future__ import annotations

import asyncio
import bisect
import operator
import sys
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from memory_core.errors import StoreUnavailableError
from memory_core.eviction import ApplyResult, Outcome
from memory_core.models import (
    CATEGORIES,
    NO_METADATA,
    LoggedEvent,
    MemoryState,
    Message,
    Snapshot,
)
from memory_core.policy import MemoryPolicy
from memory_core.redis.codec import (
    changed_meta,
    decode_message,
    encode_message,
    encode_messages,
    pairs,
    state_from,
    state_meta,
)
from memory_core.redis.errors import translate_redis_errors
from memory_core.redis.layout import MemoryKeys, glob_escape, write_keys
from memory_core.redis.scripts import AnyRedis, Arg, Call, InFlight, Script, ScriptRunner
from memory_core.values import Value, replace

_dumps = orjson.dumps
WRITE = Script.load("write")
RELEASE = Script.load("release")
READ = Script.load("read")
REHOME = Script.load("rehome")


class WriteStatus(StrEnum):
    """How the apply step ended for one memory."""

    APPLIED = "applied"
    LOCKED = "locked"  # another owner holds the lock
    LOCK_LOST = "lock_lost"  # our lock expired before the write
    FENCED = "fenced"  # a newer writer (token or partition epoch) wrote this memory
    CONFLICT = "conflict"  # the state was not at the version computed from (retried at once)
    LOST = "lost"  # the writer's partition epoch is gone: Redis lost the partition's state


class KeyBatch(Value, frozen=True):
    """The events of one memory in one fetched batch, in log order.

    ``home`` is the memory's home, ``"<topic>:<partition>"`` (recorded with the state; empty:
    not written from a partition, e.g. a test). ``epoch`` is the writer's epoch of that
    partition (-1: not a partition consumer): a write is refused as fenced when the
    partition has a newer epoch (a newer owner took it) or the memory was last written with
    a newer one.
    """

    memory_key: str
    policy: MemoryPolicy
    events: Sequence[LoggedEvent]
    epoch: int = -1
    home: str = ""
    # The memory's keys expire this long after the write (0: the policy's TTL); a replay
    # gives a memory what remains of its TTL since its last event (docs/semantics.md).
    ttl_ms: int = 0
    # The state the events apply to when Redis does not hold the memory (a rebuild from a
    # snapshot); a memory Redis holds is written from its stored state, as always.
    base: MemoryState | None = None


class StoredState(Value, frozen=True):
    """A memory's whole state as Redis holds it, with its home and resource id."""

    state: MemoryState
    home: str | None
    memory_id: str | None


class KeyOutcome(Value, frozen=True):
    """The apply step's outcome for one memory; ``result`` is set when applied.

    ``lock_wait_s`` is how long the memory waited for a lock another owner held (0: it was
    never found held); ``created``: the write started from the empty state (a memory new to
    Redis, or back after its keys expired or were cleared).
    """

    memory_key: str
    status: WriteStatus
    result: ApplyResult | None = None
    detail: str = ""
    lock_wait_s: float = 0.0
    created: bool = False


@dataclass(slots=True)
class _Cached:
    version: int
    state: MemoryState
    # The order score of each message of ``state``, in its order.
    scores: array[float] = field(default_factory=lambda: array("d"))
    next_pos: float = 1.0
    # The meta fields as stored, when they came from Redis (or ``{}``: nothing stored); None
    # once this process wrote them: they are then ``state_meta`` of ``state`` with
    # ``stored``, and a write compares states to find the fields that changed.
    meta: dict[str, str] | None = field(default_factory=dict)
    # ``state.tokens_by_category()`` in ``CATEGORIES`` order, when known (from the write
    # that made this state): a tuple, a quarter of a dict's size.
    tokens: tuple[int, ...] | None = None
    # The memory's config fingerprint, memory id and home as written (with ``meta`` None).
    stored: tuple[str, str, str] = ("", "", "")
    # The stored ids window is known to be a list (else write.lua checks its type).
    ids_list: bool = False
    # The fencing token of the memory's lock while this store holds it across batches (-1:
    # not held), and when its lease is half gone (time.monotonic()): the next write then
    # takes the lock again. Kept here, not in a map of their own: ~150 bytes a memory less.
    token: int = -1
    renew_by: float = 0.0
    nbytes: int = 0  # ``size`` when cached

    @property
    def size(self) -> int:
        """About how many bytes this cached state takes."""
        state = self.state
        return (
            _CACHED_BASE
            + _PER_MESSAGE * len(state.messages)
            + _PER_ID * len(state.recent_event_ids)
        )


# Measured with tracemalloc on CPython 3.11 (50,000 cached memories of 3 messages, 159 MiB
# traced): a cached state ~1 kB besides its messages (its entries in the cache and the held
# locks included), each light message ~250 bytes with its score, each event id ~90.
_CACHED_BASE, _PER_MESSAGE, _PER_ID = 1_050, 250, 90
_APPLIED = WriteStatus.APPLIED
# The meta fields ``_Cached.stored`` holds, in its order.
_STORED = ("config", "memory_id", "home")
_RETRIED = (WriteStatus.LOCKED, WriteStatus.CONFLICT, WriteStatus.LOCK_LOST)
# Chunks written but not yet read, at most: each holds a pooled connection meanwhile.
_IN_FLIGHT = 4


@dataclass(slots=True)
class _Write:
    batch: KeyBatch
    cached: _Cached  # the state after the write, version set once Redis accepts it
    result: ApplyResult
    keys: tuple[str, ...]
    args: list[Arg]  # this memory's part of write.lua's arguments
    renews: bool  # sets the lock's lease (else it is held with enough left, or released)
    created: bool  # written from the empty state (version 0)


class RedisMemoryStore:
    """Applies key batches atomically: one pipelined round trip per round, whatever the keys."""

    def __init__(
        self,
        redis: AnyRedis,
        *,
        prefix: str = "memstream",
        cache_size: int = 50_000,
        cache_bytes: int = 256 << 20,
        chunk_keys: int = 64,
        wait_replicas: int = 0,
    ):
        self.redis = redis
        self.prefix = prefix
        # With ``wait_replicas``, a write counts as done once that many replicas have it.
        self._scripts = ScriptRunner(redis, wait_replicas=wait_replicas)
        self.cluster = self._scripts.cluster is not None
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_size = cache_size
        # States are cached up to ``cache_size`` memories and about ``cache_bytes`` bytes,
        # whichever comes first: memory stays bounded however many memories there are.
        self._cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._chunk_keys = chunk_keys
        self.round_trips = 0

    def keys(self, memory_key: str) -> MemoryKeys:
        """The Redis keys of ``memory_key``."""
        return MemoryKeys.of(memory_key, self.prefix)

    def forget(self, memory_keys: Sequence[str] | None = None) -> None:
        """Drop cached states (all when None), e.g. after losing a partition."""
        if memory_keys is None:
            self._cache.clear()
            self.cached_bytes = 0
        else:
            for k in memory_keys:
                self._drop(k)

    async def apply(
        self, batches: Sequence[KeyBatch], owner: str, *, hold: bool = False
    ) -> list[KeyOutcome]:
        """Apply each key's events under its lock (held as ``owner``); locked or raced keys retry.

        Each key costs one round trip: the write takes the lock itself when it is not held. A
        key whose cached state is missing or stale costs two (the first answers with the
        state). Retries stop at the policy's acquire timeout; the outcome then says why the key
        was refused. Nothing is written for a refused key. With ``hold``, each lock stays held
        (its lease extended by every write), keeping other writers out between batches;
        ``release`` gives them back (a partition owner does so on revoke and on stop).

        Many keys go out in chunks, each written on its own connection before the next is
        computed, so computing one chunk overlaps Redis running the previous ones.
        """
        pending = list(batches)
        outcomes: dict[str, KeyOutcome] = {}
        # States a CONFLICT returned, for the retry (the cache may be too small to keep them).
        refreshed: dict[str, _Cached] = {}
        started = time.monotonic()
        # When each memory first found its lock held by another owner.
        locked_at: dict[str, float] = {}
        delay = min(b.policy.retry_backoff_s for b in batches) if batches else 0.0
        while pending:
            retry: list[KeyBatch] = []
            locked = False
            round_outcomes = await self._round(pending, owner, hold, refreshed)
            now = time.monotonic()
            for b, outcome in zip(pending, round_outcomes, strict=True):
                if outcome.status is WriteStatus.LOCKED:
                    locked_at.setdefault(b.memory_key, now)
                if outcome.status in _RETRIED and now - started < b.policy.acquire_timeout_s:
                    # A conflict left us the lock and the current state: retry at once.
                    locked = locked or outcome.status is WriteStatus.LOCKED
                    retry.append(b)
                    continue
                since = locked_at.get(b.memory_key)
                if since is not None:
                    outcome = replace(outcome, lock_wait_s=now - since)
                outcomes[b.memory_key] = outcome
            pending = retry
            if pending and locked:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        return [outcomes[b.memory_key] for b in batches]

    async def _round(
        self, batches: list[KeyBatch], owner: str, hold: bool, refreshed: dict[str, _Cached]
    ) -> list[KeyOutcome]:
        # One write per memory, a chunk of memories per script call. A memory never seen is
        # computed from the empty state (version 0): new memories, the common case, then cost
        # a single round trip; one that exists answers CONFLICT with its state, and the next
        # round writes it.
        now = time.monotonic()
        size = self._chunk_keys
        window: deque[tuple[list[_Write], InFlight]] = deque()
        outcomes: list[KeyOutcome] = []
        empty = _Cached(0, MemoryState())
        await self._scripts.ready()
        groups = self._by_server(batches)
        try:
            for group in groups:
                for i in range(0, len(group), size):
                    writes = []
                    for b in group[i : i + size]:
                        cached = (
                            refreshed.pop(b.memory_key, None)
                            or self._cache.get(b.memory_key)
                            or empty
                        )
                        # A lock still held from an earlier batch (with half its lease left) is
                        # written with its token and left as it is; else the write takes the
                        # lock (again), drawing a token.
                        token = cached.token if cached.renew_by > now else -1
                        writes.append(self._write(b, cached, token, hold))
                    inflight = await self._scripts.send(self._calls(writes, owner))
                    window.append((writes, inflight))
                    if len(window) >= _IN_FLIGHT:
                        outcomes += await self._settle(*window.popleft(), hold, refreshed)
            while window:
                outcomes += await self._settle(*window.popleft(), hold, refreshed)
        finally:
            # After an error: chunks sent but not read may or may not have been applied. Their
            # cached states stay at the old version, so the retried batch gets a CONFLICT with
            # the stored state and its events deduplicate.
            for _, inflight in window:
                await inflight.abandon()
        self.round_trips += 1
        if len(groups) > 1:  # grouped by server: back in the batches' order
            by_key = {o.memory_key: o for o in outcomes}
            outcomes = [by_key[b.memory_key] for b in batches]
        return outcomes

    def _by_server(self, batches: list[KeyBatch]) -> list[list[KeyBatch]]:
        """The batches grouped by the Redis server holding their memory (one group without
        a cluster)."""
        if not self.cluster:
            return [batches]
        groups: dict[str, list[KeyBatch]] = {}
        for b in batches:
            name = self._scripts.node_name(self.keys(b.memory_key).meta)
            groups.setdefault(name, []).append(b)
        return list(groups.values())

    def _calls(self, writes: list[_Write], owner: str) -> list[Call]:
        """One ``write.lua`` call for a chunk of memories; on a cluster, one per memory
        (a call's keys must share a slot), all sent to their server in one round trip."""
        if self.cluster:
            return [Call(WRITE, w.keys, [owner, *w.args]) for w in writes]
        keys: list[str] = []
        args: list[Arg] = [owner]
        for w in writes:
            keys += w.keys
            args += w.args
        return [Call(WRITE, keys, args)]

    async def _settle(
        self, writes: list[_Write], inflight: InFlight, hold: bool, refreshed: dict[str, _Cached]
    ) -> list[KeyOutcome]:
        """Read one chunk's replies and record what they say in the cache and held locks."""
        answers = await inflight.replies()
        # One reply list per call: one call for the chunk, or one per memory on a cluster.
        replies = answers[0] if len(answers) == 1 else [a[0] for a in answers]
        written_at = time.monotonic()
        outcomes: list[KeyOutcome] = []
        for w, reply in zip(writes, replies, strict=True):
            b = w.batch
            key = b.memory_key
            status = _s(reply[0])
            if status == "OK":
                now = w.cached
                now.version = int(reply[1])
                if w.renews:
                    now.token = int(reply[2])
                    now.renew_by = written_at + b.policy.lock_ttl_ms / 2000
                self._remember(key, now)
                outcomes.append(KeyOutcome(key, _APPLIED, w.result, created=w.created))
            elif status == "CONFLICT":
                again = refreshed[key] = _decode_cached(int(reply[2]), reply)
                again.token = int(reply[1])
                again.renew_by = written_at + b.policy.lock_ttl_ms / 2000
                self._remember(key, again)
                outcomes.append(KeyOutcome(key, WriteStatus.CONFLICT, detail="state refreshed"))
            else:
                if (stale := self._cache.get(key)) is not None:
                    stale.token, stale.renew_by = -1, 0.0
                if status in ("FENCED", "LOST"):
                    self._drop(key)
                # LOCKED, LOCK_LOST: the cached state stays; if another writer changes the
                # memory meanwhile, the version check answers CONFLICT with the new state.
                detail = f"held by {_s(reply[1])}" if status == "LOCKED" else _s(reply[1])
                outcomes.append(KeyOutcome(key, WriteStatus(status.lower()), detail=detail))
        return outcomes

    def _write(self, b: KeyBatch, cached: _Cached, token: int, hold: bool) -> _Write:
        """The batch applied to ``cached`` by the pure manager, and the write that stores it."""
        policy = b.policy
        known = cached.tokens
        totals = None if known is None else dict(zip(CATEGORIES, known, strict=True))
        start = b.base if b.base is not None and cached.version == 0 else cached.state
        if start is not cached.state:
            totals = None
        result = policy.manager.apply(start, b.events, totals=totals)
        new = _next(cached, result.state)
        now = new.cached
        now.tokens = tuple([result.tokens[c] for c in CATEGORIES])
        stored = (policy.fingerprint, policy.config.id, b.home or cached.stored[2])
        # One tuple shared by every cached memory of a resource and partition.
        stored = now.stored = cached.stored if stored == cached.stored else stored
        if cached.meta is None:
            # The stored meta is what this process wrote: compare states, not strings.
            changed = changed_meta(
                cached.state,
                totals or cached.state.tokens_by_category(),
                result.state,
                result.tokens,
            )
            if now.next_pos != cached.next_pos:
                changed["next_pos"] = repr(now.next_pos)
            for name, old, value in zip(_STORED, cached.stored, stored, strict=True):
                if value != old:
                    changed[name] = value
        else:
            meta = state_meta(result.state, _extra(now), result.tokens)
            old_meta = cached.meta
            changed = {f: v for f, v in meta.items() if old_meta.get(f) != v}
        now.meta = None
        # Only the ids the batch added to the window (a list trimmed by Redis): the cost of a
        # write does not grow with the window, which matters when a batch holds one event per
        # memory (a live stream).
        if start is cached.state:
            added = _window_added(cached.state.recent_event_ids, result)
        else:  # written from a base state onto nothing: the whole window is new
            added = result.state.recent_event_ids
        now.ids_list = cached.ids_list or bool(added)
        renews = hold and token < 0
        if hold and not renews:
            now.token, now.renew_by = cached.token, cached.renew_by
        header = (
            token,
            b.epoch,
            cached.version,
            b.ttl_ms or policy.ttl_ms,
            (policy.lock_ttl_ms if renews else -1) if hold else 0,
            policy.lock_ttl_ms,
            new.base,
            len(new.inserted) // 3,
            policy.manager.id_window,
            1 if cached.ids_list else 0,
            new.appended_ids,
            added,
            new.removed,
            changed,
        )
        args: list[Arg] = [_dumps(header), new.appended_bodies, *new.inserted]
        # The partition's epoch key: a zombie (an owner the group replaced) is refused even on
        # memories the new owner has not written yet. On Redis Cluster it is in another slot,
        # so a key of the memory's own slot that is never set stands in: only the memory's
        # stored epoch fences there (docs/decisions/0012).
        # Without a home (not written from a partition) there is no partition epoch either.
        if self.cluster or not b.home:
            epoch_key = f"{self.prefix}:{{{b.memory_key}}}:no-partition-epoch"
        else:
            epoch_key = self.epoch_key(b.home)
        keys = (*write_keys(b.memory_key, self.prefix), epoch_key)
        return _Write(b, now, result, keys, args, renews, cached.version == 0)

    async def release(self, owner: str, memory_keys: Sequence[str] | None = None) -> int:
        """Release the locks held across batches (all when None); returns how many were held."""
        cache = self._cache
        keys = [
            k
            for k in (cache if memory_keys is None else memory_keys)
            if (c := cache.get(k)) is not None and c.token >= 0
        ]
        for k in keys:
            cache[k].token, cache[k].renew_by = -1, 0.0
        if keys:
            await self._scripts.run_many(
                [Call(RELEASE, (self.keys(k).lock,), (owner,)) for k in keys]
            )
        return len(keys)

    def _remember(self, memory_key: str, cached: _Cached) -> None:
        cache = self._cache
        old = cache.get(memory_key)
        if old is not None:
            self.cached_bytes -= old.nbytes
        cache[memory_key] = cached
        cache.move_to_end(memory_key)
        cached.nbytes = cached.size
        self.cached_bytes += cached.nbytes
        while len(cache) > self._cache_size or (
            self.cached_bytes > self._cache_bytes and len(cache) > 1
        ):
            _, gone = cache.popitem(last=False)
            # A lock held for an uncached memory is taken again by its next write.
            self.cached_bytes -= gone.nbytes

    def _drop(self, memory_key: str) -> None:
        gone = self._cache.pop(memory_key, None)
        if gone is not None:
            self.cached_bytes -= gone.nbytes

    async def ping(self) -> None:
        """Return once Redis answers; ``StoreUnavailableError`` if it cannot be reached."""
        async with translate_redis_errors():
            await self.redis.ping()

    def epoch_key(self, scope: str) -> str:
        """The Redis key of the epoch counter of ``scope`` (``"<topic>:<partition>"``)."""
        return f"{self.prefix}:epoch:{scope}"

    async def new_epoch(self, scope: str, at_least: int = 0) -> int:
        """A fresh, strictly increasing epoch for ``scope`` (e.g. one topic partition),
        above ``at_least`` when its counter is missing (lost with Redis's data)."""
        key = self.epoch_key(scope)
        async with translate_redis_errors():
            if at_least > 0:
                await self.redis.set(key, at_least, nx=True)
            return int(await self.redis.incr(key))

    async def delete(self, memory_key: str) -> None:
        """Remove a memory's state (not its lock nor its fencing token): ``replay`` writes
        it again from the log."""
        k = self.keys(memory_key)
        self._drop(memory_key)
        async with translate_redis_errors():
            await self.redis.delete(k.meta, k.order, k.msgs, k.ids)

    async def epoch(self, scope: str) -> int | None:
        """``scope``'s current epoch (None: no counter)."""
        async with translate_redis_errors():
            raw = await self.redis.get(self.epoch_key(scope))
        return None if raw is None else int(raw)

    async def snapshot_watermark(self, scope: str) -> int | None:
        """The last snapshot watermark published for ``scope`` (None: none recorded here)."""
        async with translate_redis_errors():
            raw = await self.redis.get(f"{self.prefix}:snapshots:{scope}")
        return None if raw is None else int(raw)

    async def set_snapshot_watermark(self, scope: str, offset: int) -> None:
        """Record that ``scope``'s snapshot watermark ``offset`` was published."""
        async with translate_redis_errors():
            await self.redis.set(f"{self.prefix}:snapshots:{scope}", offset)

    async def epoch_exists(self, scope: str) -> bool:
        """Whether ``scope``'s epoch counter is in Redis (gone: Redis lost its data)."""
        async with translate_redis_errors():
            return bool(await self.redis.exists(self.epoch_key(scope)))

    async def rehome(
        self, memory_key: str, old_home: str, new_home: str, moves: Mapping[int, int]
    ) -> bool:
        """Move a memory from ``old_home`` to ``new_home`` (a repartition), translating every
        offset its state records by ``moves`` (old offset → new offset of the same record).

        Returns False when there is nothing to move (expired, or homed elsewhere already).
        """
        meta_key = self.keys(memory_key).meta
        ordered = sorted(moves.items())
        olds = [o for o, _ in ordered]

        def translate(offset: int) -> int:
            if offset < 0:
                return offset
            at = bisect.bisect_right(olds, offset) - 1
            return ordered[at][1] if at >= 0 else -1

        for _ in range(10):
            async with translate_redis_errors():
                raw = await self.redis.hmget(
                    meta_key, "version", "home", "last_offset", "flush_offset", "rejections"
                )
            version, home, last, flush, rejections = (_s(x) if x is not None else None for x in raw)
            if version is None or (home is not None and home != old_home):
                return False
            fields = {
                "home": new_home,
                "last_offset": str(translate(int(last or -1))),
                "flush_offset": str(translate(int(flush or -1))),
                "rejections": _dumps(
                    [[translate(int(o)), r] for o, r in orjson.loads(rejections or "[]")]
                ).decode(),
            }
            reply = _s(await self._scripts.run(REHOME, (meta_key,), (version, _dumps(fields))))
            if reply == "OK":
                self.forget([memory_key])
                return True
            if reply == "GONE":
                return False
        raise StoreUnavailableError(f"{memory_key}: kept changing while being re-homed")

    async def recent_event_ids(self, memory_key: str) -> tuple[str, ...]:
        """The window of recent event ids kept for deduplication, oldest first."""
        key = self.keys(memory_key).ids
        async with translate_redis_errors():
            try:
                return tuple(_s(x) for x in await self.redis.lrange(key, 0, -1))
            except ResponseError as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                # A JSON string, as the previous version stored it (the next write converts it).
                return _recent_ids(await self.redis.get(key))

    async def applied_offset(self, memory_key: str) -> int:
        """The last log offset applied to ``memory_key`` (-1 if none)."""
        async with translate_redis_errors():
            raw = await self.redis.hget(self.keys(memory_key).meta, "last_offset")
        return -1 if raw is None else int(raw)

    async def list_memories(
        self, key_prefix: str = "", cursor: str = "0", count: int = 100
    ) -> tuple[list[str], str]:
        """One SCAN step over the memories whose key starts with ``key_prefix``: the keys
        found (maybe none, in no order) and the cursor to pass next ("0": the scan is done).

        A memory is listed while its keys exist (until its TTL expires). On Redis Cluster the
        cursor walks the masters in turn (``<master index>-<SCAN cursor>``).
        """
        pattern = f"{glob_escape(self.prefix)}:{{{glob_escape(key_prefix)}*}}:meta"
        head, tail = len(self.prefix) + 2, -len("}:meta")
        async with self._scripts.translated():
            if self._scripts.cluster is None:
                assert isinstance(self.redis, Redis)
                after, found = await self.redis.scan(int(cursor or 0), match=pattern, count=count)
                keys = [_s(k)[head:tail] for k in found]
                return keys, str(after)
            cluster = self._scripts.cluster
            await self._scripts.ready()
            masters = sorted(cluster.get_primaries(), key=lambda n: n.name)
            index, _, at = (cursor if cursor != "0" else "0-0").partition("-")
            i = int(index)
            if i >= len(masters):
                return [], "0"
            reply = await masters[i].execute_command(
                "SCAN", int(at or 0), "MATCH", pattern, "COUNT", count
            )
            after, found = int(reply[0]), reply[1]
            keys = [_s(k)[head:tail] for k in found]
            if after != 0:
                return keys, f"{i}-{after}"
            return keys, (f"{i + 1}-0" if i + 1 < len(masters) else "0")

    async def state(self, memory_key: str) -> StoredState | None:
        """The whole state of ``memory_key`` with its recent event ids, its home and
        resource, read in one script call (None: Redis does not hold it)."""
        k = self.keys(memory_key)
        meta_flat, bodies, *_, ids, ids_type = await self._scripts.run(
            READ, (k.meta, k.order, k.msgs, k.lock, k.ids), (0, -1)
        )
        if not meta_flat:
            return None
        meta = pairs(meta_flat)
        recent = _recent_ids(ids) if _s(ids_type) == "string" else tuple(_s(x) for x in ids)
        messages = tuple(decode_message(b) for b in bodies if b is not None)
        return StoredState(
            state_from(meta, messages, recent), meta.get("home"), meta.get("memory_id")
        )

    async def read(self, memory_key: str, *, start: int = 0, stop: int = -1) -> Snapshot:
        """A consistent snapshot of ``memory_key``; ``start``/``stop`` select a page (inclusive)."""
        k = self.keys(memory_key)
        meta_flat, bodies, total, holder, lock_ttl, key_ttl = await self._scripts.run(
            READ, (k.meta, k.order, k.msgs, k.lock), (start, stop)
        )
        meta = pairs(meta_flat)
        messages = tuple(decode_message(b) for b in bodies if b is not None)
        state = state_from(meta, ())
        return Snapshot(
            memory_key=memory_key,
            messages=messages,
            total_messages=int(total),
            tokens={c: int(meta.get(f"tokens_{c.value}", 0)) for c in CATEGORIES},
            version=int(meta.get("version", 0)),
            last_offset=state.last_offset,
            flush_seq=state.flush_seq,
            flush_pending=state.flush_pending,
            flush_offset=state.flush_offset,
            flush_requested_at_ms=state.flush_requested_at_ms,
            last_flush_at_ms=state.last_flush_at_ms,
            last_tokens_saved=state.last_tokens_saved,
            tokens_saved_total=state.tokens_saved_total,
            recent_rejections=state.recent_rejections,
            config_fingerprint=meta.get("config"),
            memory_id=meta.get("memory_id"),
            home=meta.get("home"),
            lock_holder=_s(holder) or None,
            lock_ttl_ms=int(lock_ttl) if int(lock_ttl) >= 0 else None,
            key_ttl_ms=int(key_ttl) if int(key_ttl) >= 0 else None,
        )


@dataclass(slots=True)
class _Diff:
    removed: list[str]
    inserted: list[str | bytes]  # score, id, body per message placed between kept ones
    # The messages at the end: scores base, base + 1, …
    appended_ids: list[str]
    appended_bodies: bytes  # newline-delimited JSON
    base: float
    cached: _Cached


def _next(old: _Cached, state: MemoryState) -> _Diff:
    """The writes that turn ``old`` into ``state``, with order scores for the new messages."""
    msgs = state.messages
    old_msgs = old.state.messages
    kept = len(old_msgs)
    if len(msgs) >= kept and all(map(operator.is_, msgs[:kept], old_msgs)):
        # Only appended: the common case, in a live stream almost every write.
        return _with_appended(old, state, msgs, kept, array("d", old.scores), [], [])
    if msgs and kept:
        # The oldest evicted, the rest kept in place, maybe some appended: a full memory's
        # every append.
        first = msgs[0]
        gone = next((i for i, m in enumerate(old_msgs) if m is first), 0)
        rest = kept - gone
        if gone and len(msgs) >= rest and all(map(operator.is_, msgs[:rest], old_msgs[gone:])):
            removed = [m.id for m in old_msgs[:gone]]
            return _with_appended(old, state, msgs, rest, old.scores[gone:], removed, [])
    # A message is kept only if it is the very same object: an id evicted and appended again
    # within one batch is a different message (removed, then added at the end).
    old_score = {id(m): score for m, score in zip(old_msgs, old.scores, strict=True)}
    # The new messages at the end take the next scores.
    tail = len(msgs)
    while tail and id(msgs[tail - 1]) not in old_score:
        tail -= 1
    scores: dict[str, float] = {}
    fresh: list[int] = []
    for i in range(tail):
        m = msgs[i]
        score = old_score.get(id(m))
        if score is not None:
            scores[m.id] = score
        else:
            fresh.append(i)
    removed = [m.id for m in old_msgs if m.id not in scores]
    inserted: list[str | bytes] = []
    # What remains of ``fresh`` sits between kept messages (a summary): it takes the midpoint
    # of its neighbours' scores.
    for i in fresh:
        lo = scores[msgs[i - 1].id] if i > 0 else None
        hi = next(s for j in range(i + 1, tail) if (s := scores.get(msgs[j].id)) is not None)
        score = (lo + hi) / 2 if lo is not None else hi - 1.0
        scores[msgs[i].id] = score
        inserted += (repr(score), msgs[i].id, encode_message(msgs[i]))
    if fresh:
        light = list(msgs)
        for i in fresh:
            light[i] = _light(msgs[i])
        msgs = tuple(light)
    ordered = array("d", [scores[m.id] for m in msgs[:tail]])
    return _with_appended(old, state, msgs, tail, ordered, removed, inserted)


def _with_appended(
    old: _Cached,
    state: MemoryState,
    msgs: tuple[Message, ...],
    tail: int,
    scores: array[float],
    removed: list[str],
    inserted: list[str | bytes],
) -> _Diff:
    """The diff, once the messages from ``tail`` on are the appended ones: they take the next
    scores. ``msgs`` is ``state.messages`` with those before ``tail`` already light, and
    ``scores`` (a new array, extended here) their scores."""
    appended = state.messages[tail:]
    appended_ids: list[str] = []
    base = next_pos = old.next_pos
    for m in appended:
        scores.append(next_pos)
        appended_ids.append(m.id)
        next_pos += 1
    light = msgs[:tail] + tuple([_light(m) for m in appended])
    cached = _Cached(old.version, replace(state, messages=light), scores, next_pos)
    return _Diff(removed, inserted, appended_ids, encode_messages(appended), base, cached)


def _light(m: Message) -> Message:
    """``m`` as the cache keeps it: without its content and metadata, which the manager never
    reads (its writes send only new messages, encoded from the events). A cached message is
    then its id, role, tokens and tool calls: under half its size in a chat (decision 0011)."""
    if m.content or m.metadata:
        return replace(m, content="", metadata=NO_METADATA)
    return m


def _decode_cached(version: int, reply: list[Any]) -> _Cached:
    """The state a CONFLICT reply carries:
    ``[status, token, version, meta, order, msgs, ids, ids' type]``."""
    meta = pairs(reply[3])
    flat_order = [_s(x) for x in reply[4]]
    bodies = pairs(reply[5])
    ids = flat_order[0::2]
    messages = tuple(_light(decode_message(bodies[i])) for i in ids)
    scores = array("d", [float(s) for s in flat_order[1::2]])
    next_pos = float(meta.get("next_pos", 1.0))
    recent = _recent_ids(reply[6])
    state = state_from(meta, messages, recent)
    # Interned: every cached memory of a resource and partition shares one copy of each.
    stored = (
        sys.intern(meta.get("config", "")),
        sys.intern(meta.get("memory_id", "")),
        sys.intern(meta.get("home", "")),
    )
    listed = _s(reply[7]) != "string"
    cached = _Cached(version, state, scores, next_pos, meta, stored=stored)
    cached.ids_list = listed
    tokens = state.tokens_by_category()
    if all(meta.get(f) == v for f, v in state_meta(state, _extra(cached), tokens).items()):
        # Stored as this version writes it: keep the state, not some 40 strings of meta (the
        # next write compares states), as after a write of this process.
        cached.meta, cached.tokens = None, tuple([tokens[c] for c in CATEGORIES])
    return cached


def _extra(c: _Cached) -> dict[str, str]:
    """The meta fields of ``c`` that are not derived from its state."""
    config, memory_id, home = c.stored
    extra = {"next_pos": repr(c.next_pos), "config": config, "memory_id": memory_id}
    if home:
        extra["home"] = home
    return extra


_SKIPPED_WINDOW = (Outcome.DUPLICATE_OFFSET, Outcome.DUPLICATE_ID)


def _window_added(old: tuple[str, ...], result: ApplyResult) -> tuple[str, ...]:
    """The event ids a batch appended to the window: the manager's window is always the old
    one plus these, trimmed to its length (Redis trims the stored list the same way)."""
    new = result.state.recent_event_ids
    if new == old:
        return ()
    # Ids enter the window in step 2: every event past step 1 whose id was not a duplicate.
    entered = sum(
        1 for r in result.results if r.outcome not in _SKIPPED_WINDOW and not r.redelivered
    )
    return new[len(new) - min(entered, len(new)) :]


def _recent_ids(raw: bytes | str | None) -> tuple[str, ...]:
    """The stored window of recent event ids (a JSON array; ``{}`` is Lua's empty one)."""
    return tuple(orjson.loads(raw) or ()) if raw else ()


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
