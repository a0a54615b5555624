"""Redis key names: every key of one memory shares a hash tag, so one Cluster slot."""

from __future__ import annotations

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


def write_keys(memory_key: str, prefix: str) -> tuple[str, str, str, str, str, str]:
    """The keys ``write.lua`` takes for one memory: lock, meta, order, msgs, fence, ids.

    Built per write rather than cached: a cache of them for the memories of a live stream
    held 35 MiB at 65,536 memories (docs/decisions/0011).
    """
    base = f"{prefix}:{{{memory_key}}}"
    return (
        base + ":lock",
        base + ":meta",
        base + ":order",
        base + ":msgs",
        base + ":fence",
        base + ":ids",
    )


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (SCAN MATCH, PSUBSCRIBE)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
