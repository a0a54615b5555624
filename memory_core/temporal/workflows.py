"""The FlushMemory workflow: runs the flush activity with heartbeats and retries."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from memory_core.temporal.activities import NOTHING_TO_FLUSH, UNKNOWN_MEMORY
    from memory_core.temporal.types import FlushInput, FlushOutput

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=8,
    non_retryable_error_types=[UNKNOWN_MEMORY, NOTHING_TO_FLUSH],
)


@workflow.defn(name="FlushMemory")
class FlushMemory:
    """Flush one memory once: summarize its oldest block and publish the result."""

    @workflow.run
    async def run(self, request: FlushInput) -> FlushOutput:
        """Run the flush activity under the retry policy."""
        result: FlushOutput = await workflow.execute_activity(
            "flush_memory",
            request,
            result_type=FlushOutput,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=15),
            retry_policy=RETRY,
        )
        return result
