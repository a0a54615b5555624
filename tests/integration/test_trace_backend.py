"""One trace in a real backend (the stack's Jaeger, fed over OTLP by the standard OTEL_*
settings): an agent's append, its application, the flush command, the workflow and its
activity, and the applied summary, with the messaging attributes set."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.bootstrap import build_app, connect_temporal
from consumers.runner import Runner
from consumers.settings import Settings
from consumers.stack.jaeger import JaegerService
from consumers.telemetry import Telemetry
from memory_core import AsyncSafeMemoryInstance, Kind, Role
from tests.integration.test_runner import Process


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def _complete(names: list[str]) -> bool:
    """The agent's span, a flush activity, and two applications (an append, the summary)."""
    return (
        "agent.conversation" in names
        and any(n.startswith("RunActivity:flush_memory") for n in names)
        and names.count("memstream.apply") >= 2
    )


async def _traces(api: str, service: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        reply = await client.get(f"{api}/api/traces", params={"service": service, "limit": 50})
    data: list[dict[str, Any]] = reply.json().get("data") or []
    return data


async def test_a_complete_trace_reaches_jaeger(
    pipeline_settings: Settings, stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    jaeger = JaegerService(stack)
    service = f"memstream-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    # Traces only (Jaeger takes no metrics): the signal's own endpoint, a full URL.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{jaeger.otlp_http}/v1/traces")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    telemetry = Telemetry.from_environment()
    async with build_app(pipeline_settings, telemetry) as app:
        client = await connect_temporal(pipeline_settings, telemetry)
        async with Runner(app, temporal=client):
            memory = AsyncSafeMemoryInstance(
                f"agent:t:user:{service}", app.catalog.config("chat"), store=app.store,
                publisher=app.producer,
            )  # fmt: skip
            with telemetry.tracer.start_as_current_span("agent.conversation"):
                for i in range(14):  # over the flush threshold
                    await memory.append(Role.USER, f"turn {i} " + "word " * 12)
            deadline = time.monotonic() + 60
            while not any(m.kind is Kind.SUMMARY for m in await memory.read()):
                assert time.monotonic() < deadline, "no flush was applied"
                await asyncio.sleep(0.2)
    telemetry.shutdown()  # everything buffered is exported
    deadline = time.monotonic() + 30
    while True:
        traces = await _traces(jaeger.endpoint, service)
        complete = [t for t in traces if _complete([s["operationName"] for s in t["spans"]])]
        if complete:
            break
        assert time.monotonic() < deadline, [
            sorted({s["operationName"] for s in t["spans"]}) for t in traces
        ]
        await asyncio.sleep(0.5)
    (trace,) = complete
    spans = trace["spans"]
    names = {s["operationName"] for s in spans}
    assert {"memstream.publish", "memstream.apply", "memstream.dispatch"} <= names
    assert any(n.startswith("RunWorkflow:FlushMemory") for n in names), names
    publish = next(s for s in spans if s["operationName"] == "memstream.publish")
    assert _tags(publish)["span.kind"] == "producer"
    assert _tags(publish)["messaging.system"] == "kafka"
    assert _tags(publish)["messaging.destination.name"] == pipeline_settings.events_topic
    apply = next(s for s in spans if s["operationName"] == "memstream.apply")
    tags = _tags(apply)
    assert tags["span.kind"] == "consumer"
    assert tags["messaging.consumer.group.name"] == pipeline_settings.consumer_group
    assert tags["messaging.operation.type"] == "process"
    assert "messaging.destination.partition.id" in tags and "messaging.kafka.offset" in tags
    dispatch = next(s for s in spans if s["operationName"] == "memstream.dispatch")
    assert _tags(dispatch)["messaging.destination.name"] == pipeline_settings.flush_topic
    # Message content never goes into spans.
    assert "word word" not in str([_tags(s) for s in spans])
    # The Redis write of each traced application is its child, in the backend too.
    assert "memstream.redis.write" in names


async def test_otel_settings_alone_make_memstream_run_export_metrics_over_otlp(
    pipeline_settings: Settings, stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``memstream run`` process, configured by ``OTEL_*`` only, sends its metrics over
    OTLP/HTTP to the stack's collector (Jaeger v2), which serves what it received."""
    jaeger = JaegerService(stack)
    service = f"memstream-otlp-{uuid.uuid4().hex[:8]}"
    for name, value in {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }.items():
        monkeypatch.setenv(name, value)  # the child process's environment, nothing else
    process = Process(pipeline_settings, tmp_path / "run.log")
    await process.start("--roles", "apply")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")  # what is measured is the child's
    try:
        async with build_app(pipeline_settings) as app:
            memory = app.memory(f"agent:a1:user:{service}")
            await memory.append(Role.USER, "hello over otlp", wait=timedelta(seconds=30))
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                text = (await client.get(jaeger.metrics_endpoint)).text
                mine = [
                    line
                    for line in text.splitlines()
                    if line.startswith("memstream_events_applied") and service in line
                ]
                if mine:
                    break
                assert time.monotonic() < deadline, "no memstream metric reached the collector"
                await asyncio.sleep(0.5)
        assert any('memory_id="chat"' in line for line in mine), mine
    finally:
        assert await process.stop() == 0
