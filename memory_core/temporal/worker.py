"""Temporal worker factory with the FlushMemory workflow and its activity registered."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from memory_core.temporal.activities import FlushActivities
from memory_core.temporal.workflows import FlushMemory


def create_worker(
    client: Client,
    *,
    task_queue: str,
    activities: FlushActivities,
    interceptors: Sequence[Interceptor] = (),
) -> Worker:
    """A worker for ``task_queue`` running FlushMemory and the flush activity."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[FlushMemory],
        activities=[activities.flush],
        interceptors=interceptors,
    )
