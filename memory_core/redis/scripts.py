"""Lua scripts loaded once from the package, called by SHA, reloaded after ``NOSCRIPT``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from memory_core.errors import StoreUnavailableError
from memory_core.redis.errors import translate_redis_errors

Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script and its SHA-1."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        """Read ``<name>.lua`` from this package."""
        source = resources.files(__package__).joinpath(f"{name}.lua").read_text()
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation for a pipelined batch."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]


AnyRedis = Redis | RedisCluster


class ReplicationError(StoreUnavailableError):
    """A write Redis applied but no replica confirmed in time: it could be lost on failover,
    so it is not reported as done (the batch is retried; writes are idempotent)."""


class _Node:
    """Where calls go: the connection pool of one Redis server, or one cluster node."""

    def __init__(self, redis: AnyRedis, node: ClusterNode | None) -> None:
        self.redis = redis
        self.node = node

    async def acquire(self) -> AbstractConnection:
        if self.node is not None:
            return self.node.acquire_connection()
        assert isinstance(self.redis, Redis)
        conn: AbstractConnection = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return conn

    async def release(self, conn: AbstractConnection) -> None:
        if self.node is not None:
            self.node.release(conn)  # type: ignore[arg-type]
        else:
            assert isinstance(self.redis, Redis)
            await self.redis.connection_pool.release(conn)

    async def script_load(self, source: str) -> None:
        if self.node is not None:
            await self.node.execute_command("SCRIPT", "LOAD", source)
        else:
            assert isinstance(self.redis, Redis)
            await self.redis.script_load(source)


class ScriptRunner:
    """Runs script calls by SHA in one pipelined round trip; loads scripts only on NOSCRIPT.

    On Redis Cluster, calls go to the node serving their keys' slot, one round trip per
    node; a call's keys must share one slot (a memory's do: they share its hash tag).
    With ``wait_replicas``, every round ends with ``WAIT``: a write is reported only once
    that many replicas have it (``ReplicationError`` otherwise), so a failover cannot lose
    what was reported written.
    """

    def __init__(
        self, redis: AnyRedis, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000
    ) -> None:
        self.redis = redis
        self.cluster = redis if isinstance(redis, RedisCluster) else None
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._single = _Node(redis, None) if self.cluster is None else None

    async def ready(self) -> None:
        """Load the cluster's slot map once (the client does it lazily); no-op otherwise."""
        if self.cluster is not None:
            async with self.translated():
                await self.cluster.initialize()

    def node_of(self, key: str) -> _Node:
        """The server that holds ``key`` (the only one, without a cluster)."""
        if self._single is not None:
            return self._single
        assert self.cluster is not None
        return _Node(self.cluster, self._cluster_node(key))

    def node_name(self, key: str) -> str:
        """A name of the server holding ``key``, to group calls by it."""
        return "" if self.cluster is None else self._cluster_node(key).name

    def _cluster_node(self, key: str) -> ClusterNode:
        cluster = self.cluster
        assert cluster is not None
        return cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key))

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script."""
        (result,) = await self.run_many([Call(script, keys, args)])
        return result

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls``: one round trip per server (two after a restart flushed the scripts)."""
        if self.cluster is None:
            return await (await self.send(calls)).replies()
        await self.ready()
        groups: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            groups.setdefault(self.node_name(call.keys[0]), []).append(i)
        answers = await asyncio.gather(
            *(self._run_group([calls[i] for i in idx]) for idx in groups.values())
        )
        results: list[Any] = [None] * len(calls)
        for idx, replies in zip(groups.values(), answers, strict=True):
            for i, reply in zip(idx, replies, strict=True):
                results[i] = reply
        return results

    async def _run_group(self, calls: Sequence[Call]) -> list[Any]:
        return await (await self.send(calls)).replies()

    async def send(self, calls: Sequence[Call]) -> InFlight:
        """Write ``calls`` (all on one server) on a connection of their own; ``replies()``
        reads their answers.

        Not redis-py's Pipeline: it arms a timer and builds a command object per command,
        about 15 µs each (docs/decisions/0006). Sending without waiting lets the caller compute
        its next calls while Redis runs these.
        """
        node = self.node_of(calls[0].keys[0]) if calls and calls[0].keys else self._any()
        async with self.translated():
            conn = await node.acquire()
            try:
                packed: list[bytes] = []
                for call in calls:
                    packed += conn.pack_command(
                        "EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args
                    )
                if self.wait_replicas > 0:
                    packed += conn.pack_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                await conn.send_packed_command(packed)
            except BaseException:
                await node.release(conn)
                raise
        return InFlight(self, node, conn, calls)

    def _any(self) -> _Node:
        if self._single is not None:
            return self._single
        assert self.cluster is not None
        return _Node(self.cluster, self.cluster.get_random_node())

    @contextlib.asynccontextmanager
    async def translated(self) -> AsyncIterator[None]:
        """Redis failures as ``StoreUnavailableError``; on a cluster, a failure that may mean
        the slots moved (a failover, a reshard) refreshes the slot map for the retry."""
        try:
            async with translate_redis_errors():
                yield
        except StoreUnavailableError:
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    await self.cluster.nodes_manager.initialize()
            raise


class InFlight:
    """Calls written to Redis whose replies are not read yet; holds their connection."""

    def __init__(
        self,
        runner: ScriptRunner,
        node: _Node,
        conn: AbstractConnection,
        calls: Sequence[Call],
    ):
        self._runner = runner
        self._node = node
        self._conn: AbstractConnection | None = conn
        self.calls = calls

    async def replies(self) -> list[Any]:
        """One reply per call, in order; raises the first error reply (NOSCRIPT is handled)."""
        conn, calls, runner = self._take(), self.calls, self._runner
        waited = runner.wait_replicas > 0
        async with runner.translated():
            try:
                results = await _read(conn, len(calls) + (1 if waited else 0))
            finally:
                await self._node.release(conn)
        if waited:
            acked = results.pop()
            if not isinstance(acked, Exception) and int(acked) < runner.wait_replicas:
                raise ReplicationError(
                    f"{int(acked)} of {runner.wait_replicas} replicas confirmed the writes "
                    f"within {runner.wait_timeout_ms} ms"
                )
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # A script that answered NOSCRIPT did not run, so running it again is safe.
            async with runner.translated():
                for script in {calls[i].script for i in missing}:
                    await self._node.script_load(script.source)
            retried = await runner.run_many([calls[i] for i in missing])
            for i, r in zip(missing, retried, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                async with runner.translated():
                    raise r
        return results

    async def abandon(self) -> None:
        """Give the connection back unread (dropped: its pending replies would desync it)."""
        if self._conn is not None:
            conn = self._take()
            await conn.disconnect(nowait=True)
            await self._node.release(conn)

    def _take(self) -> AbstractConnection:
        conn, self._conn = self._conn, None
        if conn is None:
            raise RuntimeError("the replies of these calls were already taken")
        return conn


async def _read(conn: AbstractConnection, n: int) -> list[Any]:
    """``n`` replies (an error reply as its exception) under one deadline for them all."""
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(n):
                try:
                    # math.inf: no timer per reply (the deadline above covers them all).
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
    except BaseException:
        # Replies left unread would answer the connection's next commands: drop it.
        await conn.disconnect(nowait=True)
        raise
    return replies
