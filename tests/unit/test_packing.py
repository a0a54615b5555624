"""hiredis packing on asyncio connections: the same bytes as redis-py's own packer."""

from __future__ import annotations

import pytest
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import Connection

from memory_core.redis import use_hiredis_packing

COMMANDS: list[tuple[object, ...]] = [
    ("SET", "k", "v"),
    ("EVALSHA", "a" * 40, 2, "memstream:{u:1}:lock", "memstream:{u:1}:meta", "owner", 7, -1),
    ("HSET", b"bytes-key", "field", "caf\u00e9 \u2603", b"\xff\x00raw"),
    ("ZADD", "z", "1.5", "m1", repr(2.0**60 + 0.5), "m2"),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),  # two words in one string
    (b"SCRIPT LOAD", "return 1"),
    ("SET", "big", "x" * 100_000),
    ("SET", "view", memoryview(b"from a memoryview")),
]


def _packed(connection: Connection, command: tuple[object, ...]) -> bytes:
    return b"".join(bytes(chunk) for chunk in connection.pack_command(*command))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packing_matches_the_python_packer(command: tuple[object, ...]) -> None:
    pool = use_hiredis_packing(ConnectionPool.from_url("redis://127.0.0.1:1"))
    fast = pool.connection_class(host="127.0.0.1", port=1)
    plain = Connection(host="127.0.0.1", port=1)
    assert type(fast) is not Connection
    assert _packed(fast, command) == _packed(plain, command)


def test_pipelines_pack_through_the_same_packer() -> None:
    pool = use_hiredis_packing(ConnectionPool.from_url("redis://127.0.0.1:1"))
    fast = pool.connection_class(host="127.0.0.1", port=1)
    plain = Connection(host="127.0.0.1", port=1)
    commands = COMMANDS[:4]
    assert b"".join(fast.pack_commands(commands)) == b"".join(plain.pack_commands(commands))


def test_wrapping_twice_keeps_one_layer() -> None:
    pool = use_hiredis_packing(use_hiredis_packing(ConnectionPool.from_url("redis://x:1")))
    assert pool.connection_class.__mro__.count(Connection) == 1
    assert pool.connection_class.__name__ == "HiredisConnection"
