"""``memstream tokens count``: exact chat-format counts for the three encodings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consumers.cli import app

COOKBOOK = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "gpt-4o"], "124"),  # OpenAI's published count for this prompt
        (["--model", "gpt-4"], "129"),
        (["--model", "gpt-3.5-turbo-0301"], "127"),
        (["--model", "text-davinci-003"], "134"),
        (["--model", "gpt-4o", "--encoding", "p50k_base"], "134"),
    ],
)
def test_count_prints_the_prompt_tokens_as_a_bare_integer(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, ["tokens", "count", *args], input=json.dumps(COOKBOOK))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == expected


def test_count_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "messages.json"
    path.write_text(json.dumps([{"role": "user", "content": "hello"}]))
    result = CliRunner().invoke(app, ["tokens", "count", str(path)])
    assert result.exit_code == 0
    # 3 per message + "user" (1) + "hello" (1) + 3 of reply priming.
    assert result.stdout.strip() == "8"


@pytest.mark.parametrize(
    "payload", ["not json", '{"role": "user"}', '[{"content": "no role"}]', '[{"role": 1}]']
)
def test_malformed_input_exits_2_with_a_message(payload: str) -> None:
    result = CliRunner().invoke(app, ["tokens", "count"], input=payload)
    assert result.exit_code == 2
    assert "memstream:" in result.output


def test_an_unknown_model_names_the_fix() -> None:
    result = CliRunner().invoke(app, ["tokens", "count", "--model", "llama-3"], input="[]")
    assert result.exit_code == 2
    assert "encoding" in result.output
