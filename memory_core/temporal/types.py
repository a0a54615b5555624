"""Workflow and activity inputs and outputs (plain dataclasses, easy to evolve)."""

from __future__ import annotations

from dataclasses import dataclass

from memory_core.privacy import shown_key


@dataclass
class FlushInput:
    """Which memory to flush, for which flush request.

    ``source_offset`` is the log offset of the event that requested the flush and
    ``namespace`` the deployment's key prefix: with them the workflow id stays unique when a
    memory expires and starts again at flush sequence 1.
    """

    memory_key: str
    memory_id: str
    flush_seq: int
    source_offset: int = -1
    namespace: str = "memstream"
    # Whether the memory key itself may appear in the workflow id (else its digest).
    show_key: bool = False

    @property
    def workflow_id(self) -> str:
        """The FlushMemory workflow id (also the MemoryFlushed event id)."""
        return workflow_id(
            self.memory_key, self.flush_seq, self.source_offset, self.namespace,
            show_key=self.show_key,
        )  # fmt: skip


@dataclass
class FlushOutput:
    """What the flush did: ``flushed``, ``nothing`` (pending cleared) or ``stale``."""

    memory_key: str
    flush_seq: int
    outcome: str
    covered: int = 0
    tokens_saved: int = 0
    offset: int = -1


def workflow_id(
    memory_key: str,
    flush_seq: int,
    source_offset: int = -1,
    namespace: str = "memstream",
    *,
    show_key: bool = False,
) -> str:
    """The FlushMemory workflow id: every duplicate of one flush request shares it. Memory
    keys embed user ids, so the id carries the key's digest unless ``show_key``."""
    return f"flush:{namespace}:{shown_key(memory_key, show_key)}:{flush_seq}@{source_offset}"
