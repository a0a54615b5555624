"""The real ``memstream`` command line in a subprocess, for tests of what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MEMSTREAM = Path(sys.executable).parent / "memstream"


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``memstream args`` with exactly ``env``'s ``MEMSTREAM_*`` settings (none inherited),
    ``input_text`` on its standard input."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    return subprocess.run(
        [str(MEMSTREAM), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input_text,
    )


def failure_line(done: subprocess.CompletedProcess[str], *, alone: bool = True) -> str:
    """The one ``memstream: ...`` line a known failure prints, with no traceback; ``alone``:
    nothing else on stderr either (``run`` also logs)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    if not alone:
        lines = [line for line in lines if line.startswith("memstream: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]
