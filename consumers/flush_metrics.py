"""Metrics of the worker's flush activity: duration, failures and retries, recorded by a
Temporal worker interceptor (the activity itself, in ``memory_core.temporal``, records
nothing)."""

from __future__ import annotations

import time
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from consumers.telemetry import Telemetry


class FlushMetrics(Interceptor):
    """Times every activity the worker runs and counts its failures and retried attempts."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap the worker's activity calls."""
        return _Timed(next, self.telemetry)


class _Timed(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, telemetry: Telemetry) -> None:
        super().__init__(next)
        self.telemetry = telemetry

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        attributes = {"activity": info.activity_type}
        t = self.telemetry
        if info.attempt > 1:
            t.flush_retries.add(1, attributes)
        started = time.perf_counter()
        try:
            result = await super().execute_activity(input)
        except BaseException:
            t.flush_failures.add(1, attributes)
            t.flush_duration.record(
                time.perf_counter() - started, {**attributes, "outcome": "failed"}
            )
            raise
        t.flush_duration.record(time.perf_counter() - started, {**attributes, "outcome": "ok"})
        return result
