"""Lua scripts loaded once from the package, called by SHA, reloaded after ``NOSCRIPT``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

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
        results = await self._pipeline(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # A script that answered NOSCRIPT did not run, so running it again is safe.
            async with translate_redis_errors():
                for script in {calls[i].script for i in missing}:
                    await self.redis.script_load(script.source)
            retried = await self._pipeline([calls[i] for i in missing])
            for i, r in zip(missing, retried, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                async with translate_redis_errors():
                    raise r
        return results

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        async with translate_redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))
