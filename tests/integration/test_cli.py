"""The ``memstream`` command line against the real stack."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

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


@contextmanager
def _apply_consumer() -> Iterator[subprocess.Popen[bytes]]:
    """``memstream run --roles apply`` on the environment's topics, stopped by its pid after."""
    memstream = Path(sys.executable).parent / "memstream"
    proc = subprocess.Popen([str(memstream), "run", "--roles", "apply"])
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def apply_process(cli_env: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """An apply consumer for this test's topics."""
    with _apply_consumer() as proc:
        yield proc


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _key() -> str:
    return f"agent:{uuid.uuid4().hex[:8]}:user:cli"


def test_stack_status_reports_every_service_up(stack: Settings) -> None:
    statuses = LocalStack(stack, echo=lambda _line: None).status()
    cluster = [f"redis-cluster-{i}" for i in range(6)]
    expected = [
        "kafka", "redis", "redis-tls", "temporal", "schema-registry", "prometheus", "jaeger",
        *cluster,
    ]  # fmt: skip
    assert [s.name for s in statuses] == expected
    result = CliRunner().invoke(app, ["stack", "status"])
    assert result.exit_code == 0, result.output
    assert result.output.count(" up ") == len(expected)


def test_append_not_waited_for_prints_published_with_its_position(cli_env: Settings) -> None:
    result = _invoke("append", _key(), "--content", "hi", "--message-id", "m1", "--wait", "0")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("published: message m1, event ")
    assert "durable in the log" in line and "\n" not in line


def test_a_negative_wait_is_a_one_line_usage_error(cli_env: Settings) -> None:
    result = _invoke("append", _key(), "--content", "hi", "--wait", "-1")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "memstream: --wait must be a number of seconds >= 0 (0: do not wait), not -1.0"
    ]


def test_an_unconfirmed_append_exits_3_and_its_retry_command_applies_it_once(
    cli_env: Settings,
) -> None:
    key = _key()
    result = _invoke("append", key, "--content", "hi there", "--message-id", "m1", "--wait", "0.5")
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("memstream: unconfirmed: message m1, event ")
    assert "durable in the log" in line and "not applied within 0.5s" in line
    command = shlex.split(line.split("applied at most once: ", 1)[1])
    assert command[:2] == ["memstream", "append"]
    assert command[command.index("--message-id") + 1] == "m1"
    event_id = command[command.index("--event-id") + 1]
    assert f"event {event_id} at " in line
    # Retried as printed, once a consumer runs: the first attempt applies, the retry is a
    # duplicate, the memory holds the message once.
    with _apply_consumer():
        retried = _invoke(*command[1:-2], "--wait", "60")
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.startswith(f"duplicate: message m1, event {event_id} at ")
    shown = _invoke("show", key, "--json")
    assert [m["id"] for m in json.loads(shown.stdout)["messages"]] == ["m1"]


def test_write_commands_print_their_outcome_and_exit_with_its_code(
    cli_env: Settings, apply_process: subprocess.Popen[bytes]
) -> None:
    key = _key()
    first = ("append", key, "--content", "hi", "--message-id", "m1", "--event-id", "e1")
    applied = _invoke(*first, "--wait", "60")
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.startswith("applied: message m1, event e1 at ")
    duplicate = _invoke(*first)
    assert duplicate.exit_code == 0, duplicate.output
    assert duplicate.stdout.startswith("duplicate: message m1, event e1 at ")
    assert "already processed by an earlier attempt" in duplicate.stdout

    rejected = _invoke("append", key, "--content", "word " * 300, "--message-id", "big")
    assert rejected.exit_code == 1, rejected.output
    [line] = rejected.stderr.splitlines()
    assert line.startswith("memstream: rejected: message big, event ")
    assert "oversized_message" in line and "budget" in line

    flushed = _invoke("flush", key, "--event-id", "f1")
    assert flushed.exit_code == 0, flushed.output
    assert flushed.stdout.startswith("applied: event f1 at ")
    cleared = _invoke("clear", key)
    assert cleared.exit_code == 0, cleared.output
    assert cleared.stdout.startswith("applied: event ")
    shown = _invoke("show", key, "--json")
    assert json.loads(shown.stdout)["messages"] == []


PRIVATE_MEMORIES = """
memories:
  - id: chat
    key: "agent:{agent_id}:user:{user_id}"
    max_tokens: 400
  - id: private
    key: "private:{user_id}"
    max_tokens: 400
    privacy: {non_persistable_roles: [tool]}
"""


def test_a_non_persistable_role_is_not_persisted_and_a_key_finds_its_memory(
    cli_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memories = tmp_path / "two.yaml"
    memories.write_text(PRIVATE_MEMORIES)
    monkeypatch.setenv("MEMSTREAM_MEMORIES_FILE", str(memories))
    result = _invoke("append", "private:u1", "--role", "tool", "--content", "4111", "--wait", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("not persisted: message ")
    assert "role tool is never persisted by memory private" in result.stdout
    assert "nothing was published" in result.stdout
    unknown = _invoke("append", "team:x", "--content", "hi", "--wait", "0")
    assert unknown.exit_code == 1
    assert "no memory resource's key template renders team:x" in unknown.stderr
    assert "Traceback" not in unknown.output
    other = _invoke("append", "private:u1", "--memory-id", "chat", "--content", "hi")
    assert other.exit_code == 1
    assert "belongs to memory private" in other.stderr and "memory_mismatch" in other.stderr


def test_run_reports_a_known_failure_in_one_line(
    cli_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMSTREAM_MEMORIES_FILE", str(tmp_path / "missing.yaml"))
    result = _invoke("run", "--roles", "apply")
    assert result.exit_code == 10  # a settings or memories-file failure
    [line] = result.stderr.splitlines()
    assert line.startswith("memstream: memories file: ") and "cannot read the memories file" in line


def test_show_prints_messages_and_health_as_json(cli_env: Settings) -> None:
    key = f"agent:{uuid.uuid4().hex[:8]}:user:cli"
    published = CliRunner().invoke(
        app, ["append", key, "--content", "write me at a@b.example", "--wait", "0"]
    )
    assert published.exit_code == 0, published.output
    assert published.stdout.startswith("published: ")
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


def test_show_pages_a_memory_prints_its_prompt_and_lists_memories(
    cli_env: Settings, apply_process: subprocess.Popen[bytes]
) -> None:
    key = _key()
    for i in range(4):
        wrote = _invoke("append", key, "--content", f"turn {i}", "--message-id", f"m{i}")
        assert wrote.exit_code == 0, wrote.output
    page = json.loads(_invoke("show", key, "--json", "--offset", "1", "--limit", "2").stdout)
    assert [m["id"] for m in page["messages"]] == ["m1", "m2"]
    assert (page["total"], page["has_more"]) == (4, True)
    assert page["messages"][0]["role"] == "user" and "ts" not in page["messages"][0]
    # Both JSON forms bill through `tokens count` as what they hold.
    whole = _invoke("show", key, "--json")
    prompt = _invoke("show", key, "--prompt")
    assert prompt.exit_code == 0, prompt.output
    body = json.loads(prompt.stdout)
    assert [m["content"] for m in body["messages"]] == [f"turn {i}" for i in range(4)]
    for text in (prompt.stdout, whole.stdout):
        counted = CliRunner().invoke(app, ["tokens", "count"], input=text)
        assert counted.exit_code == 0, counted.output
        assert int(counted.stdout) == body["prompt_tokens"]
    trimmed = json.loads(_invoke("show", key, "--prompt", "--max-tokens", "20").stdout)
    assert trimmed["prompt_tokens"] <= 20 and trimmed["omitted"]["count"] >= 1
    too_small = _invoke("show", key, "--prompt", "--max-tokens", "1")
    assert too_small.exit_code == 2 and "at least" in too_small.stderr
    missing = _invoke("show", _key())
    assert missing.exit_code == 4
    assert "does not exist" in missing.stderr and "Traceback" not in missing.output
    # As it was one event earlier, rebuilt from the log (only this memory is in its topic).
    last = page["health"]["last_applied_offset"]
    then = _invoke("show", key, "--json", "--at-offset", str(last - 1))
    assert then.exit_code == 0, then.output
    assert [m["id"] for m in json.loads(then.stdout)["messages"]] == ["m0", "m1", "m2"]
    as_of = json.loads(then.stdout)["as_of"]
    assert as_of == {"offset": last - 1, "events": 3, "snapshot_offset": None}
    early = _invoke("show", key, "--at", "2001-01-01T00:00:00Z")
    assert early.exit_code == 4 and "had no events" in early.stderr
    listed = _invoke("list", key.rsplit(":", 1)[0])
    assert listed.exit_code == 0 and key in listed.stdout.split()
    version = _invoke("--version")
    assert version.exit_code == 0 and version.stdout.startswith("memstream ")
