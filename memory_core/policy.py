"""MemoryPolicy: everything the apply path derives from one memory config, built once."""

from __future__ import annotations

from dataclasses import dataclass

from memory_core.config import MemoryConfig
from memory_core.eviction import TokenMemoryManager
from memory_core.privacy import PrivacyPolicy


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """A config with its manager, privacy policy, fingerprint and durations in milliseconds."""

    config: MemoryConfig
    manager: TokenMemoryManager
    privacy: PrivacyPolicy
    fingerprint: str
    ttl_ms: int
    lock_ttl_ms: int
    acquire_timeout_s: float
    retry_backoff_s: float

    @classmethod
    def of(cls, config: MemoryConfig) -> MemoryPolicy:
        """Derive the policy of ``config``."""
        return cls(
            config=config,
            manager=TokenMemoryManager(
                config.budget,
                flush_threshold=config.flushing.threshold,
                flush_retry_after=config.flushing.retry_after,
            ),
            privacy=PrivacyPolicy(config.privacy),
            fingerprint=config.fingerprint(),
            ttl_ms=int(config.persistence.ttl.total_seconds() * 1000),
            lock_ttl_ms=int(config.locking.ttl.total_seconds() * 1000),
            acquire_timeout_s=config.locking.acquire_timeout.total_seconds(),
            retry_backoff_s=config.locking.retry_backoff.total_seconds(),
        )
