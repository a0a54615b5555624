"""Temporal adapters: the FlushMemory workflow, its activity and the worker factory."""

from memory_core.temporal.activities import (
    NOTHING_TO_FLUSH,
    UNKNOWN_MEMORY,
    FlushActivities,
    FlushPublisher,
)
from memory_core.temporal.types import FlushInput, FlushOutput, workflow_id
from memory_core.temporal.worker import create_worker
from memory_core.temporal.workflows import FlushMemory

__all__ = [
    "NOTHING_TO_FLUSH",
    "UNKNOWN_MEMORY",
    "FlushActivities",
    "FlushInput",
    "FlushMemory",
    "FlushOutput",
    "FlushPublisher",
    "create_worker",
    "workflow_id",
]
