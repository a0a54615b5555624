"""Dead letters are recoverable: listed by reason and memory, re-driven to their home once."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from consumers.bootstrap import App
from consumers.cli import app as cli
from consumers.dlq import choose, read_dead_letters, redrive
from consumers.events import appended_payload, envelope
from consumers.generations import active_generation
from consumers.recovery import verify
from memory_core import Draft, Role
from schemas import MEMORY_EVENT
from tests.integration.test_cli import cli_env  # noqa: F401  (fixture)
from tests.integration.test_ordering import apply_consumer, drain

BASE_MS = 1_700_000_000_000


def _value(app: App, key: str, n: int) -> bytes:
    draft = Draft(f"m{n}", Role.USER, f"message {n}", BASE_MS + n)
    return app.codec.encode(
        MEMORY_EVENT, envelope(key, "chat", BASE_MS + n, appended_payload(draft), f"e-{key}-{n}")
    )


@pytest.mark.usefixtures("cli_env")
async def test_misplaced_events_are_listed_and_redriven_to_their_home_once(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    settings = app.settings
    gen = await active_generation(settings)
    key = f"agent:{settings.key_prefix}:user:lost"
    home = gen.home(key.encode())
    wrong = (home + 1) % gen.partitions
    for n in range(4):
        await raw_producer.send_and_wait(
            gen.topic, _value(app, key, n), key=key.encode(), partition=home if n < 2 else wrong
        )
    async with apply_consumer(app) as consumer:
        await drain(consumer, 4)
        assert [m.id for m in (await app.store.read(key)).messages] == ["m0", "m1"]

        entries = await read_dead_letters(settings)
        assert [(e.reason, e.memory_key, e.redriven) for e in entries] == [
            ("wrong_partition", key, False)
        ] * 2
        code, out = await _memstream("dlq", "list", "--json", "--reason", "wrong_partition")
        assert code == 0, out
        assert [json.loads(line)["source"] for line in out.splitlines()] == [
            f"{gen.topic}:{wrong}:{o}" for o in (0, 1)
        ]

        report = await redrive(settings, app.producer, choose(entries, reason="wrong_partition"))
        assert report.redriven == 2
        await drain(consumer, 6)
        assert [m.id for m in (await app.store.read(key)).messages] == ["m0", "m1", "m2", "m3"]

        # A second re-drive finds them done: nothing is published twice.
        again = await redrive(settings, app.producer, choose(await read_dead_letters(settings)))
        assert (again.redriven, again.skipped_already) == (0, 2)
    assert (await verify(settings, app.catalog, app.codec, app.store)).ok

    code, out = await _memstream("partition", key)
    assert code == 0
    assert out.split()[0] == str(home)
    code, out = await _memstream("dlq", "list")
    assert (code, out.splitlines()[0]) == (0, "0 dead letters")


async def _memstream(*args: str) -> tuple[int, str]:
    """Run the CLI in a subprocess (it runs its own event loop) on the test's environment."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "memstream"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.mark.usefixtures("cli_env")
def test_redrive_without_a_choice_is_refused() -> None:
    result = CliRunner().invoke(cli, ["dlq", "redrive"])
    assert result.exit_code == 2
    assert "choose entries" in result.output
