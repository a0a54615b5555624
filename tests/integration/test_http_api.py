"""The HTTP API with a real HTTP client against the server on the real stack (Kafka, Redis,
an apply consumer): every endpoint, auth, pagination, the prompt's bill, concurrency, and
bad input answered 4xx with a reason, never 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from consumers.api import build_api
from consumers.bootstrap import App, build_app
from consumers.health import HealthServer
from consumers.runner import Runner
from consumers.settings import ApiKey, Settings
from tests.cli import failure_line, run_cli
from tests.fault.test_consumer_kill import _environment
from tests.integration.test_runner import Process
from tests.ports import free_port_block
from tests.services import MEMORIES

ADMIN = "admin-key-0123456789"
SCOPED = "scoped-key-0123456789"
# A memory with room for everything the concurrency test writes: nothing is evicted.
ROOMY = (
    MEMORIES
    + """
  - id: roomy
    key: "load:{user_id}"
    model: gpt-4o
    max_tokens: 100000
    max_messages: 1000
    flushing: {threshold: 0.99}
"""
)


@dataclass
class Api:
    url: str
    app: App
    names: str

    def client(self, key: str | None = ADMIN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0)


@pytest.fixture
async def api(pipeline_settings: Settings, tmp_path: Path, names: str) -> AsyncIterator[Api]:
    memories = tmp_path / "roomy.yaml"
    memories.write_text(ROOMY)
    port = free_port_block(1)
    settings = pipeline_settings.model_copy(
        update={
            "memories_file": memories,
            "health_port": port,
            "api_keys": [
                ApiKey(name="admin", key=SecretStr(ADMIN)),
                ApiKey(
                    name="a1",
                    key=SecretStr(SCOPED),
                    resources=("chat",),
                    key_prefixes=(f"agent:a1{names}:",),
                ),
            ],
            "http_max_body_bytes": 64 * 1024,
            "http_max_messages": 50,
        }
    )
    async with build_app(settings) as app:
        runner = Runner(app, ("apply", "http"))
        probes = runner.probes()
        server = HealthServer(probes, host="127.0.0.1", port=port, app=build_api(app, probes))
        await server.start()
        runner.http = server
        await runner.start()
        try:
            yield Api(server.address, app, names)
        finally:
            await runner.stop()
            await server.stop()


async def _listed(http: httpx.AsyncClient, prefix: str) -> list[str]:
    """Every key ``GET /v1/memories`` gives for ``prefix``, following its cursor."""
    keys: list[str] = []
    cursor: str | None = "0"
    while cursor is not None:
        page = await http.get("/v1/memories", params={"prefix": prefix, "cursor": cursor})
        assert page.status_code == 200, page.text
        keys += page.json()["memories"]
        cursor = page.json()["cursor"]
    return keys


def _user(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


async def test_append_read_page_prompt_flush_and_clear(api: Api) -> None:
    key = f"agent:a1{api.names}:user:u1"
    async with api.client() as http:
        missing = await http.get(f"/v1/memories/{key}")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        wrote = await http.post(
            f"/v1/memories/{key}/messages",
            json={
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    _user("weather in Oslo?", name="ann", id="m1", event_id="e1"),
                    {"role": "assistant", "content": None, "tool_calls": [call], "id": "m2"},
                    {"role": "tool", "content": "rain", "tool_call_id": "c1", "id": "m3"},
                    {"role": "assistant", "content": "It rains.", "id": "m4"},
                ]
            },
        )
        assert wrote.status_code == 200, wrote.text
        outcomes = wrote.json()["outcomes"]
        assert [o["status"] for o in outcomes] == ["applied"] * 5
        assert outcomes[1]["message_id"] == "m1" and outcomes[1]["event_id"] == "e1"

        # As it was after the third event (the log, folded to that offset).
        then = await http.get(f"/v1/memories/{key}", params={"at_offset": outcomes[2]["offset"]})
        assert then.status_code == 200, then.text
        assert [m.get("id") for m in then.json()["messages"]][1:] == ["m1", "m2"]
        past = await http.get(f"/v1/memories/{key}/prompt", params={"at": "2001-01-01T00:00:00Z"})
        assert past.status_code == 404 and past.json()["error"] == "not_found"
        page = (await http.get(f"/v1/memories/{key}", params={"limit": 2})).json()
        assert (page["total"], page["has_more"], len(page["messages"])) == (5, True, 2)
        rest = (await http.get(f"/v1/memories/{key}", params={"limit": 2, "offset": 4})).json()
        assert rest["has_more"] is False and [m["id"] for m in rest["messages"]] == ["m4"]
        assert page["messages"][1] == {
            "role": "user", "content": "weather in Oslo?", "name": "ann", "id": "m1",
            "kind": "message", "tokens": page["messages"][1]["tokens"],
            "created_at_ms": page["messages"][1]["created_at_ms"],
        }  # fmt: skip

        prompt = (await http.get(f"/v1/memories/{key}/prompt")).json()
        assert [m["role"] for m in prompt["messages"]] == [
            "system", "user", "assistant", "tool", "assistant",
        ]  # fmt: skip
        assert prompt["messages"][2]["tool_calls"] == [call]
        # The bill equals `memstream tokens count` on the same JSON (the whole answer).
        counted = run_cli({}, "tokens", "count", input_text=json.dumps(prompt))
        assert counted.returncode == 0, counted.stderr
        assert int(counted.stdout) == prompt["prompt_tokens"]
        # Trimmed: one token short of everything, the oldest message goes, then (with room
        # for the system message and the last answer only) the tool unit goes out whole.
        last = prompt["prompt_tokens"] - 1
        trimmed = (await http.get(f"/v1/memories/{key}/prompt", params={"max_tokens": last})).json()
        assert trimmed["prompt_tokens"] <= last and trimmed["omitted"]["message_ids"] == ["m1"]
        stored = (await http.get(f"/v1/memories/{key}", params={"limit": 10})).json()["messages"]
        tokens = {m["id"]: m["tokens"] for m in stored}
        system_id = stored[0]["id"]
        room = tokens[system_id] + tokens["m4"] + 3
        tight = (await http.get(f"/v1/memories/{key}/prompt", params={"max_tokens": room})).json()
        assert [m["role"] for m in tight["messages"]] == ["system", "assistant"]
        assert tight["omitted"]["message_ids"] == ["m1", "m2", "m3"]
        assert tight["prompt_tokens"] == room
        small = await http.get(f"/v1/memories/{key}/prompt", params={"max_tokens": 2})
        assert small.status_code == 422 and small.json()["error"] == "budget_too_small"

        again = await http.post(
            f"/v1/memories/{key}/messages",
            json={"messages": [_user("weather in Oslo?", name="ann", id="m1", event_id="e1")]},
        )
        assert again.status_code == 200 and again.json()["outcomes"][0]["status"] == "duplicate"
        rejected = await http.post(
            f"/v1/memories/{key}/messages", json={"messages": [_user("word " * 400)]}
        )
        assert rejected.status_code == 422
        assert rejected.json()["outcomes"][0]["reason"] == "oversized_message"
        unwaited = await http.post(
            f"/v1/memories/{key}/messages", json={"messages": [_user("later")], "wait": 0}
        )
        assert unwaited.status_code == 202
        assert unwaited.json()["outcomes"][0]["status"] == "published"

        flushed = await http.post(f"/v1/memories/{key}/flush", json={"event_id": "f1"})
        assert flushed.status_code == 200 and flushed.json()["outcomes"][0]["status"] == "applied"
        health = (await http.get(f"/v1/memories/{key}/health")).json()
        assert health["exists"] is True and health["memory_id"] == "chat"
        cleared = await http.request("DELETE", f"/v1/memories/{key}/messages")
        assert cleared.status_code == 200, cleared.text
        after = (await http.get(f"/v1/memories/{key}")).json()
        assert after["total"] == 0 and after["messages"] == []


async def test_api_keys_are_required_and_scoped(api: Api) -> None:
    mine, other = f"agent:a1{api.names}:user:u2", f"agent:b2{api.names}:user:u2"
    async with api.client(None) as anonymous:
        answer = await anonymous.get(f"/v1/memories/{mine}/health")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in answer.json()["detail"]
    async with api.client("wrong-key-0123456789") as wrong:
        assert (await wrong.get(f"/v1/memories/{mine}/health")).status_code == 401
    async with api.client(SCOPED) as scoped:
        assert (await scoped.get(f"/v1/memories/{mine}/health")).status_code == 200
        refused = await scoped.post(
            f"/v1/memories/{other}/messages", json={"messages": [_user("hi")]}
        )
        assert refused.status_code == 403 and "may not reach" in refused.json()["detail"]
        assert (await scoped.get(f"/v1/memories/load:{api.names}/health")).status_code == 403
        wrote = await scoped.post(f"/v1/memories/{mine}/messages", json={"messages": [_user("x")]})
        assert wrote.status_code == 200
    async with api.client() as admin:
        wrote = await admin.post(f"/v1/memories/{other}/messages", json={"messages": [_user("y")]})
        assert wrote.status_code == 200
        everything = await _listed(admin, f"agent:a1{api.names}:") + await _listed(
            admin, f"agent:b2{api.names}:"
        )
    async with api.client(SCOPED) as scoped:
        listed = await _listed(scoped, "agent:")
    # A key lists only what it may reach; the admin key, both.
    assert mine in listed and other not in listed
    assert {mine, other} <= set(everything)


async def test_listing_pages_through_every_memory_with_its_cursor(api: Api) -> None:
    keys = {f"load:{api.names}-{i}" for i in range(7)}
    async with api.client() as http:
        await asyncio.gather(
            *(
                http.post(f"/v1/memories/{k}/messages", json={"messages": [_user("hi")]})
                for k in keys
            )
        )
        seen: list[str] = []
        cursor: str | None = "0"
        while cursor is not None:
            page = await http.get(
                "/v1/memories",
                params={"prefix": f"load:{api.names}-", "cursor": cursor, "limit": 2},
            )
            assert page.status_code == 200, page.text
            seen += page.json()["memories"]
            cursor = page.json()["cursor"]
        assert sorted(seen) == sorted(keys)  # each once
        bad = await http.get("/v1/memories", params={"cursor": "nope"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_cursor"


async def test_fifty_clients_appending_to_ten_memories_lose_nothing_and_keep_order(
    api: Api,
) -> None:
    async def client(n: int) -> None:
        key = f"load:{api.names}-c{n % 10}"
        async with api.client() as http:
            for turn in range(6):
                answer = await http.post(
                    f"/v1/memories/{key}/messages",
                    json={"messages": [_user(f"client {n} turn {turn}", id=f"c{n}-{turn}")]},
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["outcomes"][0]["status"] == "applied"

    await asyncio.gather(*(client(n) for n in range(50)))
    async with api.client() as http:
        for m in range(10):
            page = (
                await http.get(f"/v1/memories/load:{api.names}-c{m}", params={"limit": 100})
            ).json()
            ids = [msg["id"] for msg in page["messages"]]
            assert len(ids) == 30 == page["total"]
            for n in range(m, 50, 10):
                mine = [i for i in ids if i.startswith(f"c{n}-")]
                assert mine == [f"c{n}-{t}" for t in range(6)]


async def test_bad_input_gets_a_4xx_with_a_reason_never_a_500(api: Api) -> None:
    key = f"agent:a1{api.names}:user:u3"
    async with api.client() as http:
        cases = [
            (await http.get("/v1/memories/bad key!/health"), 400, "invalid_key"),
            (await http.get("/v1/memories/team:x/health"), 404, "unknown_resource"),
            (
                await http.post(f"/v1/memories/{key}/messages", json={"messages": []}),
                422,
                "invalid_request",
            ),
            (
                await http.post(
                    f"/v1/memories/{key}/messages",
                    json={"messages": [{"role": "wizard", "content": "x"}]},
                ),
                422,
                "invalid_request",
            ),
            (
                await http.post(
                    f"/v1/memories/{key}/messages",
                    content=b"{not json",
                    headers={"content-type": "application/json"},
                ),
                422,
                "invalid_request",
            ),
            (
                await http.post(
                    f"/v1/memories/{key}/messages",
                    json={"messages": [_user("x" * 70_000)]},
                ),
                413,
                "too_large",
            ),
            (
                await http.post(
                    f"/v1/memories/{key}/messages",
                    json={"messages": [_user("x")] * 51},
                ),
                413,
                "too_many_messages",
            ),
            (await http.get(f"/v1/memories/{key}/prompt", params={"max_tokens": 0}), 422, None),
        ]
        for answer, status, error in cases:
            assert answer.status_code == status, (answer.request.url, answer.text)
            body = answer.json()
            assert body["detail"], body
            if error is not None:
                assert body["error"] == error, body
        # The OpenAPI document and the probes are on the same port.
        openapi = (await http.get("/openapi.json")).json()
        assert "/v1/memories/{key}/prompt" in openapi["paths"]
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code in (200, 503) and "checks" in ready.json()


async def test_memstream_run_serves_the_api_and_prints_one_start_up_line(
    pipeline_settings: Settings, tmp_path: Path, names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port_block(1)
    settings = pipeline_settings.model_copy(update={"health_port": port})
    # Without API keys the http role refuses to start, in one line.
    refused = run_cli(
        {k: v for k, v in _environment(settings).items() if k.startswith("MEMSTREAM_")}, "serve"
    )
    assert refused.returncode == 10, refused.stderr
    assert "needs MEMSTREAM_API_KEYS" in failure_line(refused, alone=False)
    monkeypatch.setenv("MEMSTREAM_API_KEYS", json.dumps([{"name": "t", "key": ADMIN}]))
    process = Process(settings, tmp_path / "run.log")
    await process.start("--roles", "apply,http")
    try:
        await process.until_output("memstream running: roles apply,http", timeout=60)
        line = next(x for x in process.output().splitlines() if "memstream running" in x)
        assert f"http http://127.0.0.1:{port}" in line and "partitions t." in line, line
        key = f"agent:a1{names}:user:proc"
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as http:
            wrote = await http.post(
                f"/v1/memories/{key}/messages", json={"messages": [_user("hi")]}
            )
            assert wrote.status_code == 200, wrote.text
            assert (await http.get("/healthz")).json()["roles"] == {
                "apply": "running", "http": "running",
            }  # fmt: skip
    finally:
        assert await process.stop() == 0
