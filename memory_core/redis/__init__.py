"""Redis adapters: the memory store and the lock manager."""

from memory_core.redis.layout import MemoryKeys
from memory_core.redis.lock import RedisLease, RedisLockManager
from memory_core.redis.packing import use_hiredis_packing
from memory_core.redis.store import (
    KeyBatch,
    KeyOutcome,
    RedisMemoryStore,
    WriteStatus,
)

__all__ = [
    "KeyBatch",
    "KeyOutcome",
    "MemoryKeys",
    "RedisLease",
    "RedisLockManager",
    "RedisMemoryStore",
    "WriteStatus",
    "use_hiredis_packing",
]
