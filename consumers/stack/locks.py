"""Advisory file locks that serialize stack operations across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def acquire(path: Path) -> int:
    """Block until the exclusive lock on ``path`` is held; return its descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    """Release a lock taken by :func:`acquire`."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` for the ``with`` block."""
    fd = acquire(path)
    try:
        yield
    finally:
        release(fd)
