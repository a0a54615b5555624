"""Free loopback ports for the services a test starts for itself.

Always below 32768: above it is the kernel's range for outgoing connections, where a
service can find its port taken at random.
"""

from __future__ import annotations

import random
import socket


def free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int = 3, *, also: int | None = None, high: int = 30_000) -> int:
    """The first of ``size`` consecutive free ports in 20000-``high``; with ``also``, the
    ports ``also`` above each are free too (a Redis Cluster node's bus port)."""
    for _ in range(200):
        base = random.randint(20_000, high - size)
        ports = range(base, base + size)
        if all(free(p) and (also is None or free(p + also)) for p in ports):
            return base
    raise RuntimeError("no free port block")
