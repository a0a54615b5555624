"""Workflow and activity inputs and outputs (plain dataclasses, easy to evolve)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FlushInput:
    """Which memory to flush, for which flush sequence."""

    memory_key: str
    memory_id: str
    flush_seq: int


@dataclass
class FlushOutput:
    """What the flush did: ``flushed``, ``nothing`` (pending cleared) or ``stale``."""

    memory_key: str
    flush_seq: int
    outcome: str
    covered: int = 0
    tokens_saved: int = 0
    offset: int = -1


def workflow_id(memory_key: str, flush_seq: int) -> str:
    """The FlushMemory workflow id: duplicates of one flush request share it."""
    return f"flush:{memory_key}:{flush_seq}"
