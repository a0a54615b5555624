"""Known failures of the real CLI, each against a stopped or misconfigured service or file:
one line on stderr saying what failed and what to do, a distinct exit code, no traceback."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from consumers.failures import ExitCode
from consumers.generations import topic_partition_count
from consumers.settings import Settings
from tests.cli import failure_line, run_cli

STOPPED_REDIS = {"MEMSTREAM_REDIS_URL": "redis://127.0.0.1:9/0"}
STOPPED_KAFKA = {"MEMSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9"}

BAD_MEMORIES = """
memories:
  - id: first
    key: "a:{x}"
    model: gpt-4o
    max_tokens: -5
  - id: second
    key: "b:{y}"
    model: gpt-4o
    max_tokens: 100
    flushing: {threshold: 3}
"""


def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    done = run_cli(env, *args)
    return done.returncode, failure_line(done, alone=False)


@pytest.fixture
def env(pipeline_settings: Settings) -> dict[str, str]:
    """The CLI environment of this test's topics and memories file."""
    return {
        "MEMSTREAM_EVENTS_TOPIC": pipeline_settings.events_topic,
        "MEMSTREAM_DLQ_TOPIC": pipeline_settings.dlq_topic,
        "MEMSTREAM_FLUSH_TOPIC": pipeline_settings.flush_topic,
        "MEMSTREAM_KEY_PREFIX": pipeline_settings.key_prefix,
        "MEMSTREAM_MEMORIES_FILE": str(pipeline_settings.memories_file),
        "MEMSTREAM_ENCODINGS_DIR": str(pipeline_settings.resolved_encodings_dir),
    }


def test_a_bad_memories_file_reports_every_error_naming_its_resource(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "memories.yaml"
    bad.write_text(BAD_MEMORIES)
    code, line = _cli({**env, "MEMSTREAM_MEMORIES_FILE": str(bad)}, "run", "--roles", "apply")
    assert code == ExitCode.SETTINGS
    assert "memories[0] (first).max_tokens" in line
    assert "memories[1] (second).flushing.threshold" in line


def test_an_unparsable_memories_file_names_the_file_and_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "memories.yaml"
    bad.write_text("memories: [\n")
    code, line = _cli({**env, "MEMSTREAM_MEMORIES_FILE": str(bad)}, "show", "a:1")
    assert code == ExitCode.SETTINGS
    assert f"{bad}: not valid YAML at line 2" in line


def test_missing_encodings_say_how_to_install_them(env: dict[str, str], tmp_path: Path) -> None:
    code, line = _cli({**env, "MEMSTREAM_ENCODINGS_DIR": str(tmp_path)}, "run", "--roles", "apply")
    assert code == ExitCode.ENCODINGS
    assert "memstream encodings install" in line and "memory resource chat" in line


@pytest.mark.parametrize("command", ["verify", "replay"])
async def test_verify_and_replay_of_a_missing_topic_fail_and_create_nothing(
    env: dict[str, str], settings: Settings, command: str
) -> None:
    topic = f"t.missing.{uuid.uuid4().hex[:8]}"
    code, line = _cli({**env, "MEMSTREAM_EVENTS_TOPIC": topic}, command)
    assert code == ExitCode.MISSING_TOPIC
    assert f"{topic} does not exist" in line
    assert await topic_partition_count(settings, topic) is None


@pytest.mark.parametrize("command", [["verify"], ["replay"], ["demo", "--turns", "1"]])
def test_a_command_with_redis_stopped_fails_in_one_line(
    env: dict[str, str], command: list[str]
) -> None:
    code, line = _cli({**env, **STOPPED_REDIS}, *command)
    assert code == ExitCode.REDIS
    assert line.startswith("memstream: Redis at redis://127.0.0.1:9/0 is unreachable")


@pytest.mark.parametrize("command", [["run", "--roles", "apply"], ["verify"], ["dlq", "list"]])
def test_a_command_with_kafka_stopped_fails_in_one_line(
    env: dict[str, str], command: list[str]
) -> None:
    code, line = _cli({**env, **STOPPED_KAFKA}, *command)
    assert code == ExitCode.KAFKA, line
    assert line.startswith("memstream: Kafka at 127.0.0.1:9 (PLAINTEXT) is unreachable")
