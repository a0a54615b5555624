"""A real Prometheus scrapes a running ``memstream run`` under a workload: every panel of
the Grafana dashboard and every alert rule's inputs return data; the rules file passes
``promtool check rules``."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from consumers.bootstrap import build_app
from consumers.settings import Settings
from consumers.stack.prometheus import PrometheusService
from memory_core import AsyncSafeMemoryInstance, Role
from memory_core.redis import RedisLockManager
from tests.integration.test_runner import Process
from tests.ports import free_port_block

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "memstream-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def _instruments() -> list[str]:
    """The name of every instrument ``Telemetry`` creates."""
    source = (ROOT / "consumers" / "telemetry.py").read_text()
    names = re.findall(r'create_(?:counter|histogram|observable_gauge)\(\s*"([a-z._]+)"', source)
    assert len(names) > 20, names
    return names


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with the stack's prometheus package"
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


async def _query(client: httpx.AsyncClient, api: str, expr: str) -> list[Any]:
    reply = await client.get(f"{api}/api/v1/query", params={"query": expr})
    body = reply.json()
    assert body["status"] == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


async def _until_data(
    client: httpx.AsyncClient, api: str, expr: str, timeout: float = 60.0
) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        result = await _query(client, api, expr)
        if result:
            return result
        assert time.monotonic() < deadline, f"no data for {expr}"
        await asyncio.sleep(0.5)


@pytest.fixture
def prometheus(stack: Settings) -> PrometheusService:
    """The stack's Prometheus."""
    return PrometheusService(stack)


async def test_every_panel_and_alert_input_has_data_from_a_real_workload(
    pipeline_settings: Settings, prometheus: PrometheusService, tmp_path: Path
) -> None:
    port = free_port_block(1)
    settings = pipeline_settings.model_copy(update={"health_port": port})
    process = Process(settings, tmp_path / "run.log")
    name = f"t-{uuid.uuid4().hex[:8]}"
    instance = f"127.0.0.1:{port}"
    rules = prometheus.rules_dir / f"{name}.yml"
    shutil.copy(ALERTS, rules)
    prometheus.reload()
    target = prometheus.register(name, instance)
    await process.start()  # every role
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            api = prometheus.endpoint
            # Scraped: the process is up for Prometheus.
            await _until_data(client, api, f'up{{instance="{instance}"}} == 1')
            async with build_app(settings) as app:
                config = app.catalog.config("chat")
                # Another owner holds the first memory's lock for a moment: the consumer
                # waits for it (the lock-wait panel's data).
                locks = RedisLockManager(app.redis, prefix=settings.key_prefix)
                lease = await locks.acquire(
                    f"agent:a1:user:{name}0",
                    ttl=timedelta(seconds=30),
                    timeout=timedelta(seconds=1),
                )

                async def release_soon() -> bool:
                    await asyncio.sleep(1.0)  # well within the memory's acquire timeout
                    return await locks.release(lease)

                releasing = asyncio.create_task(release_soon())
                for user in range(3):
                    memory = AsyncSafeMemoryInstance(
                        f"agent:a1:user:{name}{user}", config, store=app.store,
                        publisher=app.producer,
                    )  # fmt: skip
                    for turn in range(12):  # over the flush threshold and past the budget
                        words = " ".join(f"w{turn}x{i}" for i in range(12))
                        await memory.append(Role.USER, words, event_id=f"{name}-{user}-{turn}")
                    await memory.append(Role.USER, "again", event_id=f"{name}-{user}-0")
                assert await releasing
                raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
                await raw.start()
                try:
                    await raw.send_and_wait(settings.events_topic, b"\x00garbage", key=b"k:1")
                finally:
                    await raw.stop()
            selector = f'instance="{instance}"'
            await _until_data(
                client, api, f"memstream_flushes_completed_total{{{selector}}} > 0", 90
            )
            await _until_data(
                client, api, f"memstream_events_dead_lettered_total{{{selector}}} > 0"
            )
            await asyncio.sleep(3)  # a few more scrapes for rate() windows
            empty = [
                (title, expr)
                for title, expr in _panel_queries()
                if not await _query(client, api, expr)
            ]
            assert empty == [], f"panels without data: {empty}"
            # Every rule is loaded and evaluates without error; every metric it reads has data.
            reply = (await client.get(f"{api}/api/v1/rules")).json()
            loaded = {
                r["name"]: r
                for g in reply["data"]["groups"]
                if g["file"] == str(rules)
                for r in g["rules"]
            }
            assert set(loaded) == {r["alert"] for r in _rules()}
            await asyncio.sleep(2)  # one evaluation after the data arrived
            reply = (await client.get(f"{api}/api/v1/rules")).json()
            for g in reply["data"]["groups"]:
                if g["file"] == str(rules):
                    for r in g["rules"]:
                        assert r["health"] == "ok", r
            for rule in _rules():
                for metric in set(re.findall(r"\bmemstream_[a-z_]+", rule["expr"])):
                    inputs = await _query(client, api, f"{metric}{{{selector}}}")
                    assert inputs, f"{rule['alert']}: no data for {metric}"
            # Every instrument memstream records reached Prometheus.
            series = await _query(client, api, f'{{__name__=~"memstream_.+",{selector}}}')
            scraped = {s["metric"]["__name__"] for s in series}
            missing = [
                name
                for name in _instruments()
                if not any(n.startswith(name.replace(".", "_")) for n in scraped)
            ]
            assert missing == [], f"instruments not scraped: {missing}"
    finally:
        target.unlink(missing_ok=True)
        rules.unlink(missing_ok=True)
        prometheus.reload()
        assert await process.stop() == 0
