"""``/healthz`` and ``/readyz`` of a real ``memstream run`` process, and of a runner whose
role died."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

import consumers.dispatcher
from consumers.bootstrap import App, build_app
from consumers.health import HealthServer
from consumers.runner import Runner
from consumers.settings import Settings
from memory_core import AsyncSafeMemoryInstance, Role
from memory_core import WriteOutcomeStatus as Status
from tests.integration.test_runner import PoisonedDispatcher, Process
from tests.ports import free_port_block


async def _get(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        reply = await client.get(url)
    return reply.status_code, reply.json()


async def _until(url: str, status: int, process: Process, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert process.proc is not None and process.proc.returncode is None, process.output()
        try:
            code, body = await _get(url)
        except httpx.TransportError as exc:
            last = exc
        else:
            if code == status:
                return body
            last = (code, body)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered {status}; last: {last}")


async def test_an_apply_process_is_live_then_ready_once_its_partitions_are_assigned(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    port = free_port_block(1)
    process = Process(
        pipeline_settings.model_copy(update={"health_port": port, "ready_max_lag": 1000}),
        tmp_path / "run.log",
    )
    await process.start("--roles", "apply")
    try:
        base = f"http://127.0.0.1:{port}"
        live = await _until(f"{base}/healthz", 200, process)
        assert live == {"status": "ok", "roles": {"apply": "running"}}
        ready = await _until(f"{base}/readyz", 200, process)
        assert ready["status"] == "ready"
        checks = ready["checks"]
        assert set(checks) == {"roles", "redis", "apply.partitions", "apply.restore", "apply.lag"}
        assert all(c["ok"] for c in checks.values())
        assert checks["apply.partitions"]["detail"] == "4 assigned"
    finally:
        assert await process.stop() == 0


async def test_a_dispatcher_waiting_for_temporal_is_live_but_not_ready(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    port = free_port_block(1)
    no_temporal = f"127.0.0.1:{free_port_block()}"
    process = Process(
        pipeline_settings.model_copy(update={"health_port": port, "temporal_address": no_temporal}),
        tmp_path / "run.log",
    )
    await process.start("--roles", "dispatch")
    try:
        base = f"http://127.0.0.1:{port}"
        await process.until_output(f"waiting for Temporal at {no_temporal}")
        code, live = await _get(f"{base}/healthz")
        assert (code, live["status"]) == (200, "ok")
        code, ready = await _get(f"{base}/readyz")
        assert code == 503 and ready["status"] == "not ready"
        assert ready["checks"]["roles"] == {
            "ok": False,
            "detail": "starting (waiting for Temporal)",
        }
        assert ready["checks"]["temporal"]["ok"] is False
    finally:
        assert await process.stop() == 0


async def test_a_taken_health_port_fails_run_with_one_line(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port_block(1)))
        taken.listen()
        port = taken.getsockname()[1]
        process = Process(
            pipeline_settings.model_copy(update={"health_port": port}), tmp_path / "run.log"
        )
        await process.start("--roles", "apply")
        assert process.proc is not None
        code = await asyncio.wait_for(process.proc.wait(), 60)
    output = process.output()
    assert code == 1, output
    assert f"cannot listen on http://127.0.0.1:{port}" in output
    assert "Traceback" not in output


async def test_healthz_fails_once_a_role_died(
    app: App, temporal_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers.dispatcher, "FlushDispatcher", PoisonedDispatcher)
    runner = Runner(app, ["apply", "dispatch"], temporal=temporal_client)
    server = HealthServer(runner.probes(), host="127.0.0.1", port=free_port_block(1))
    await server.start()
    try:
        await runner.start()
        with pytest.raises(Exception, match="role dispatch ended unexpectedly"):
            await asyncio.wait_for(runner.wait(), 20)
        code, body = await _get(f"{server.address}/healthz")
        assert code == 503
        assert body == {"status": "failing", "roles": {"apply": "running", "dispatch": "dead"}}
    finally:
        await runner.stop()
        await server.stop()


async def test_metrics_on_the_health_port_show_what_was_applied(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    port = free_port_block(1)
    settings = pipeline_settings.model_copy(update={"health_port": port})
    process = Process(settings, tmp_path / "run.log")
    await process.start("--roles", "apply")
    try:
        base = f"http://127.0.0.1:{port}"
        await _until(f"{base}/readyz", 200, process)
        async with build_app(settings) as app:
            memory = AsyncSafeMemoryInstance(
                "agent:a1:user:metrics", app.catalog.config("chat"), store=app.store,
                publisher=app.producer,
            )  # fmt: skip
            for i in range(3):
                assert (await memory.append(Role.USER, f"m{i}")).status is Status.APPLIED
        async with httpx.AsyncClient(timeout=5.0) as client:
            reply = await client.get(f"{base}/metrics")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        text = reply.text
        applied = [
            line for line in text.splitlines()
            if line.startswith("memstream_events_applied") and 'memory_id="chat"' in line
        ]  # fmt: skip
        assert applied and float(applied[0].rsplit(" ", 1)[1]) == 3.0, text[:2000]
        assert "memstream_apply_duration_seconds_bucket" in text
        assert 'service_name="memstream"' in text  # the resource, as target_info
    finally:
        assert await process.stop() == 0
