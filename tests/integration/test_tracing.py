"""Tracing: one trace shows an append, its flush workflow and the flush's application."""

from __future__ import annotations

import asyncio
import time

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from consumers.bootstrap import build_app, connect_temporal
from consumers.runner import Runner
from consumers.settings import Settings
from consumers.telemetry import Telemetry
from memory_core import AsyncSafeMemoryInstance, Kind, Role


def _by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans if s.context is not None}


def _ancestors(span: ReadableSpan, index: dict[int, ReadableSpan]) -> list[str]:
    names = []
    while span.parent is not None and span.parent.span_id in index:
        span = index[span.parent.span_id]
        names.append(span.name)
    return names


async def test_one_trace_shows_an_append_its_flush_and_the_flush_application(
    pipeline_settings: Settings,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    async with build_app(pipeline_settings, telemetry) as app:
        client = await connect_temporal(pipeline_settings, telemetry)
        async with Runner(app, temporal=client):
            memory = AsyncSafeMemoryInstance(
                "agent:t:user:trace",
                app.catalog.config("chat"),
                store=app.store,
                publisher=app.producer,
            )
            with telemetry.tracer.start_as_current_span("agent.conversation"):
                for i in range(14):
                    await memory.append(Role.USER, f"turn {i} " + "word " * 12)
            deadline = time.monotonic() + 60
            while not any(m.kind is Kind.SUMMARY for m in await memory.read()):
                assert time.monotonic() < deadline, "no flush was applied"
                await asyncio.sleep(0.2)
    spans = list(exporter.get_finished_spans())
    index = _by_id(spans)
    root = next(s for s in spans if s.name == "agent.conversation")
    trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
    names = {s.name for s in trace}
    assert {"memstream.publish", "memstream.apply", "memstream.dispatch"} <= names
    assert any(n.startswith("RunActivity:flush_memory") for n in names), names

    # The MemoryFlushed event was published by the activity and applied in the same trace:
    # its apply span descends from the activity, or (when the flush result shared a batch
    # with newer appends of the trace) links to the activity's publish span.
    def from_activity(span: ReadableSpan) -> bool:
        return any(n.startswith("RunActivity:flush_memory") for n in _ancestors(span, index))

    applied_flush = [
        s
        for s in trace
        if s.name == "memstream.apply"
        and (
            from_activity(s)
            or any(
                link.context.span_id in index and from_activity(index[link.context.span_id])
                for link in s.links
            )
        )
    ]
    assert applied_flush, sorted(names)
    # Each apply span of the trace has its Redis write as a CLIENT child, within it.
    writes = [s for s in trace if s.name == "memstream.redis.write"]
    assert writes, sorted(names)
    for write in writes:
        assert write.kind is SpanKind.CLIENT
        assert (write.attributes or {})["db.system.name"] == "redis"
        assert write.parent is not None
        parent = index[write.parent.span_id]
        assert parent.name == "memstream.apply"
        assert write.start_time is not None and write.end_time is not None
        assert parent.start_time is not None and parent.end_time is not None
        assert parent.start_time <= write.start_time <= write.end_time <= parent.end_time
    # Message content never goes into spans.
    assert "word word" not in str([dict(s.attributes or {}) for s in trace])
