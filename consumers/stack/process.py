"""Detached service processes: spawn, pid files, liveness and bounded termination."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class PidRecord:
    """A process this stack started; ``started`` guards against a reused pid."""

    pid: int
    started: str | None


def _stat_fields(pid: int) -> list[str] | None:
    # /proc/<pid>/stat after the command name: state is field 3, the start time in
    # clock ticks field 22. Without /proc (macOS) we only know the pid is alive.
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _start_marker(pid: int) -> str | None:
    # The start time changes when the kernel hands the pid to another process.
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None


def read_pid(path: Path) -> PidRecord | None:
    """The record in ``path``, or None when absent or unreadable."""
    try:
        raw = json.loads(path.read_text())
        return PidRecord(pid=int(raw["pid"]), started=raw.get("started"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_running(record: PidRecord) -> bool:
    """Whether the recorded process still exists and is the same process."""
    with contextlib.suppress(ChildProcessError):
        # Reap it if it is our own exited child, so a zombie does not count as alive.
        reaped, _ = os.waitpid(record.pid, os.WNOHANG)
        if reaped == record.pid:
            return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(record.pid)
    if fields is None:
        return True
    # A killed service whose new parent does not reap it lingers as a zombie.
    if fields[0] in ("Z", "X"):
        return False
    return record.started is None or fields[19] == record.started


def live_pid(path: Path) -> int | None:
    """The pid recorded in ``path`` if that process still runs."""
    record = read_pid(path)
    return record.pid if record is not None and is_running(record) else None


def clean_stale(path: Path) -> int | None:
    """The live pid recorded in ``path``; a pid file of a dead process is removed."""
    record = read_pid(path)
    if record is not None and is_running(record):
        return record.pid
    path.unlink(missing_ok=True)
    return None


def spawn(argv: Sequence[str], *, console: Path, pid_path: Path, env: Mapping[str, str]) -> int:
    """Start ``argv`` in its own session, output appended to ``console``; record its pid."""
    console.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    append = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    # posix_spawn leaves no Popen object behind, so nothing warns when this process
    # exits while the service keeps running; setsid detaches it from our terminal.
    pid = os.posix_spawn(
        argv[0],
        list(argv),
        dict(env),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(console), append, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    record = {"pid": pid, "started": _start_marker(pid), "argv": list(argv)}
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(pid_path)
    return pid


def terminate(pid_path: Path, *, grace_s: float) -> int | None:
    """Stop the process group recorded in ``pid_path`` (SIGTERM, SIGKILL after ``grace_s``).

    Blocks until the process is gone; returns its pid, or None if none was running.
    """
    record = read_pid(pid_path)
    if record is None or not is_running(record):
        pid_path.unlink(missing_ok=True)
        return None
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while is_running(record):
        if time.monotonic() >= deadline:
            _signal_group(record.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
        time.sleep(0.1)
    pid_path.unlink(missing_ok=True)
    return record.pid


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # spawn() made the service a session (and group) leader, so its group holds
    # exactly the processes it started and nothing else.
    with contextlib.suppress(ProcessLookupError):
        try:
            os.killpg(pid, sig)
        except PermissionError:
            os.kill(pid, sig)
