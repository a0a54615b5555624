"""The README's library example runs as written against the stack, with a consumer running."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from consumers.settings import Settings
from tests.fault.test_consumer_kill import _environment
from tests.integration.test_runner import Process

ROOT = Path(__file__).resolve().parents[2]


def library_example() -> str:
    """The first Python block of the README's "Library use" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Library use", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "no python block under ## Library use"
    return found.group(1)


async def test_the_library_example_runs_as_written(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    # The example names the repository's own memories file's resources.
    settings = pipeline_settings.model_copy(update={"memories_file": ROOT / "memories.yaml"})
    script = tmp_path / "example.py"
    script.write_text(library_example())
    consumer = Process(settings, tmp_path / "run.log")
    await consumer.start("--roles", "apply")
    try:
        example = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            env=_environment(settings),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(example.communicate(), 120)
    finally:
        assert await consumer.stop() == 0
    assert example.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("applied "), lines
    assert "Where is my order?" in lines[-1], lines
