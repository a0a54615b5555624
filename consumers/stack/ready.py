"""Waiting for a service to answer, with the log tail when it does not."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from consumers.stack.errors import StackError
from consumers.stack.process import PidRecord, is_running


async def tcp_open(host: str, port: int, *, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def log_tail(paths: Iterable[Path], *, lines: int = 15) -> str:
    """The last ``lines`` lines of each existing file in ``paths``."""
    parts: list[str] = []
    for path in dict.fromkeys(paths):
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
    return "\n".join(parts)


async def wait_ready(
    name: str,
    probe: Callable[[], Awaitable[bool]],
    *,
    record: PidRecord,
    timeout_s: float,
    logs: Iterable[Path],
) -> None:
    """Poll ``probe`` until it answers; fail fast if the process exits, or at ``timeout_s``."""
    logs = list(logs)
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if not is_running(record):
            raise StackError(f"{name} exited during startup\n{log_tail(logs)}")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{name} (pid {record.pid}) did not answer within {timeout_s:.0f}s\n"
                f"{log_tail(logs)}"
            )
        await asyncio.sleep(0.5)
