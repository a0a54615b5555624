"""The ``memstream`` command line against the real stack."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from consumers.cli import app
from consumers.settings import Settings
from consumers.stack import LocalStack


@pytest.fixture
def cli_env(pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's settings, as the environment the CLI reads."""
    for name, value in {
        "EVENTS_TOPIC": pipeline_settings.events_topic,
        "DLQ_TOPIC": pipeline_settings.dlq_topic,
        "FLUSH_TOPIC": pipeline_settings.flush_topic,
        "CONSUMER_GROUP": pipeline_settings.consumer_group,
        "KEY_PREFIX": pipeline_settings.key_prefix,
        "MEMORIES_FILE": str(pipeline_settings.memories_file),
    }.items():
        monkeypatch.setenv(f"MEMSTREAM_{name}", value)
    return pipeline_settings


def test_stack_status_reports_every_service_up(stack: Settings) -> None:
    statuses = LocalStack(stack, echo=lambda _line: None).status()
    assert [s.name for s in statuses] == ["kafka", "redis", "temporal"]
    result = CliRunner().invoke(app, ["stack", "status"])
    assert result.exit_code == 0, result.output
    assert result.output.count(" up ") == 3


def test_append_without_a_consumer_times_out_with_a_clear_error(cli_env: Settings) -> None:
    key = f"agent:{uuid.uuid4().hex[:8]}:user:cli"
    result = CliRunner().invoke(app, ["append", key, "--content", "hi", "--wait", "0.5"])
    assert result.exit_code == 1
    assert "not applied within 0.5s" in result.output


def test_show_prints_messages_and_health_as_json(cli_env: Settings) -> None:
    key = f"agent:{uuid.uuid4().hex[:8]}:user:cli"
    published = CliRunner().invoke(
        app, ["append", key, "--content", "write me at a@b.example", "--wait", "0"]
    )
    assert published.exit_code == 0, published.output
    # No consumer runs here: apply the topic with the replay tool, then show.
    replayed = CliRunner().invoke(app, ["replay"])
    assert replayed.exit_code == 0, replayed.output
    shown = CliRunner().invoke(app, ["show", key, "--json"])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert [m["content"] for m in body["messages"]] == ["write me at [REDACTED]"]
    assert body["health"]["messages"] == 1
    assert body["health"]["within_budget"] is True
    assert body["health"]["memory_id"] == "chat"
    assert CliRunner().invoke(app, ["verify"]).exit_code == 0
