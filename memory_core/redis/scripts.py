"""Lua scripts loaded once from the package, called by SHA, reloaded after ``NOSCRIPT``."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

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


class ScriptRunner:
    """Runs script calls by SHA in one pipelined round trip; loads scripts only on NOSCRIPT."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script."""
        (result,) = await self.run_many([Call(script, keys, args)])
        return result

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` in one round trip (two after a Redis restart flushed the scripts)."""
        return await (await self.send(calls)).replies()

    async def send(self, calls: Sequence[Call]) -> InFlight:
        """Write ``calls`` on a connection of their own; ``replies()`` reads their answers.

        Not redis-py's Pipeline: it arms a timer and builds a command object per command,
        about 15 µs each (docs/decisions/0006). Sending without waiting lets the caller compute
        its next calls while Redis runs these.
        """
        async with translate_redis_errors():
            pool = self.redis.connection_pool
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                packed: list[bytes] = []
                for call in calls:
                    packed += conn.pack_command(
                        "EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args
                    )
                await conn.send_packed_command(packed)
            except BaseException:
                await pool.release(conn)
                raise
        return InFlight(self, conn, calls)


class InFlight:
    """Calls written to Redis whose replies are not read yet; holds their connection."""

    def __init__(self, runner: ScriptRunner, conn: AbstractConnection, calls: Sequence[Call]):
        self._runner = runner
        self._conn: AbstractConnection | None = conn
        self.calls = calls

    async def replies(self) -> list[Any]:
        """One reply per call, in order; raises the first error reply (NOSCRIPT is handled)."""
        conn, calls = self._take(), self.calls
        async with translate_redis_errors():
            try:
                results = await _read(conn, len(calls))
            finally:
                await self._runner.redis.connection_pool.release(conn)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # A script that answered NOSCRIPT did not run, so running it again is safe.
            async with translate_redis_errors():
                for script in {calls[i].script for i in missing}:
                    await self._runner.redis.script_load(script.source)
            retried = await self._runner.run_many([calls[i] for i in missing])
            for i, r in zip(missing, retried, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                async with translate_redis_errors():
                    raise r
        return results

    async def abandon(self) -> None:
        """Give the connection back unread (dropped: its pending replies would desync it)."""
        if self._conn is not None:
            conn = self._take()
            await conn.disconnect(nowait=True)
            await self._runner.redis.connection_pool.release(conn)

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
