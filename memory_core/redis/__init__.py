"""Redis adapters: the memory store, the lock manager, applied notices."""

from memory_core.redis.layout import MemoryKeys
from memory_core.redis.lock import RedisLease, RedisLockManager
from memory_core.redis.notices import AppliedNotices
from memory_core.redis.packing import use_hiredis_packing
from memory_core.redis.store import (
    KeyBatch,
    KeyOutcome,
    RedisMemoryStore,
    StoredState,
    WriteStatus,
)

__all__ = [
    "AppliedNotices",
    "KeyBatch",
    "KeyOutcome",
    "MemoryKeys",
    "RedisLease",
    "RedisLockManager",
    "RedisMemoryStore",
    "StoredState",
    "WriteStatus",
    "use_hiredis_packing",
]
