"""The flush activity: snapshot, rule-based summary, publish the MemoryFlushed event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from memory_core.errors import NothingToFlushError
from memory_core.flushing import HybridFlushingStrategy
from memory_core.models import Message
from memory_core.ports import Clock, MemoryStore, SystemClock
from memory_core.temporal.types import FlushInput, FlushOutput

UNKNOWN_MEMORY = "UnknownMemory"
NOTHING_TO_FLUSH = "NothingToFlush"


class FlushPublisher(Protocol):
    """Publishes a flush result to the memory-events topic."""

    async def flushed(
        self,
        memory_key: str,
        memory_id: str,
        flush_seq: int,
        summary: Message | None,
        tokens_saved: int,
        event_id: str,
    ) -> int:
        """Publish; returns the event's offset."""
        ...


class FlushActivities:
    """Activities of the FlushMemory workflow, bound to the process's adapters."""

    def __init__(
        self,
        *,
        store: MemoryStore,
        publisher: FlushPublisher,
        strategies: Callable[[str], HybridFlushingStrategy | None],
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.strategies = strategies
        self.clock = clock or SystemClock()

    @activity.defn(name="flush_memory")
    async def flush(self, request: FlushInput) -> FlushOutput:
        """Summarize the oldest block of a memory and publish the result (idempotent by id)."""
        strategy = self.strategies(request.memory_id)
        if strategy is None:
            raise ApplicationError(
                f"unknown memory resource {request.memory_id!r}",
                type=UNKNOWN_MEMORY,
                non_retryable=True,
            )
        activity.heartbeat("snapshot")
        snap = await self.store.read(request.memory_key)
        if snap.flush_seq != request.flush_seq or not snap.flush_pending:
            # A newer flush superseded this one, or this one was already applied.
            return FlushOutput(request.memory_key, request.flush_seq, "stale")
        # The event id is derived from the flush, so a retried publish is applied once.
        event_id = request.workflow_id
        try:
            plan = strategy.plan(
                snap.state(),
                memory_key=request.memory_key,
                summary_id=f"summary:{request.flush_seq}:{request.memory_key}",
                now_ms=self.clock.now_ms(),
            )
        except NothingToFlushError as exc:
            activity.heartbeat("publish-nothing")
            await self.publisher.flushed(
                request.memory_key, request.memory_id, request.flush_seq, None, 0, event_id
            )
            raise ApplicationError(str(exc), type=NOTHING_TO_FLUSH, non_retryable=True) from exc
        activity.heartbeat("publish")
        offset = await self.publisher.flushed(
            request.memory_key,
            request.memory_id,
            request.flush_seq,
            plan.summary,
            plan.tokens_saved,
            event_id,
        )
        return FlushOutput(
            request.memory_key,
            request.flush_seq,
            "flushed",
            covered=len(plan.covered),
            tokens_saved=plan.tokens_saved,
            offset=offset,
        )
