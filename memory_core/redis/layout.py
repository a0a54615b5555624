"""Redis key names: every key of one memory shares a hash tag, so one Cluster slot."""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MemoryKeys:
    """The Redis keys of one memory."""

    meta: str
    order: str
    msgs: str
    lock: str
    fence: str
    ids: str

    @classmethod
    @functools.lru_cache(maxsize=65_536)  # the apply step asks for them on every write
    def of(cls, memory_key: str, prefix: str = "memstream") -> MemoryKeys:
        """Keys of ``memory_key`` under ``prefix`` (the key itself is the hash tag)."""
        base = f"{prefix}:{{{memory_key}}}"
        return cls(
            f"{base}:meta",
            f"{base}:order",
            f"{base}:msgs",
            f"{base}:lock",
            f"{base}:fence",
            f"{base}:ids",
        )
