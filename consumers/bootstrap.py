"""The composition root: builds every adapter from settings and hands them in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis, RedisCluster

from consumers.catalog import MemoryCatalog
from consumers.connections import make_redis, make_registry, temporal_options
from consumers.generations import active_generation
from consumers.producer import MemoryProducer
from consumers.settings import Settings
from consumers.telemetry import Telemetry
from memory_core import AsyncSafeMemoryInstance, EncodingRegistry, HybridFlushingStrategy
from memory_core.redis import AppliedNotices, RedisLockManager, RedisMemoryStore
from schemas import AvroCodec

if TYPE_CHECKING:
    # Imported where used: the Temporal SDK is ~35 MiB that an apply-only process never
    # needs (docs/decisions/0011).
    from temporalio.client import Client

    from memory_core.temporal import FlushActivities

log = logging.getLogger(__name__)


def make_catalog(settings: Settings, encodings: EncodingRegistry | None = None) -> MemoryCatalog:
    """Memory resources from the memories file."""
    return MemoryCatalog.from_file(
        settings.memories_file, encodings or EncodingRegistry(settings.resolved_encodings_dir)
    )


async def connect_temporal(
    settings: Settings,
    telemetry: Telemetry,
    *,
    first_backoff_s: float = 0.5,
    max_backoff_s: float = 5.0,
) -> Client:
    """A Temporal client whose spans join memstream's traces; waits while Temporal is down.

    The first failed attempt logs one warning; later ones back off exponentially (debug
    lines only) until the server answers. Cancel the call to give up (SIGTERM does).
    """
    from temporalio.client import Client
    from temporalio.contrib.opentelemetry import TracingInterceptor
    from temporalio.service import RPCError

    backoff = first_backoff_s
    waited_since: float | None = None
    while True:
        try:
            client = await Client.connect(
                **temporal_options(settings, [TracingInterceptor(telemetry.tracer)])
            )
        except (RuntimeError, RPCError) as exc:
            # The SDK reports an unreachable server as a RuntimeError ("Failed client connect").
            if waited_since is None:
                waited_since = time.monotonic()
                log.warning(
                    "waiting for Temporal at %s (namespace %s): %s",
                    settings.temporal_address,
                    settings.temporal_namespace,
                    exc,
                )
            else:
                log.debug("Temporal at %s still unreachable: %s", settings.temporal_address, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            continue
        if waited_since is not None:
            log.warning(
                "connected to Temporal at %s after %.0fs",
                settings.temporal_address,
                time.monotonic() - waited_since,
            )
        return client


def strategy_lookup(catalog: MemoryCatalog) -> dict[str, HybridFlushingStrategy]:
    """The flushing strategy of every memory resource of the catalog."""
    out: dict[str, HybridFlushingStrategy] = {}
    for memory_id in catalog.ids:
        entry = catalog.get(memory_id)
        assert entry is not None
        out[memory_id] = HybridFlushingStrategy(
            entry.config.flushing, entry.config.budget, entry.counter
        )
    return out


@dataclass
class App:
    """Every adapter one process needs, built once."""

    settings: Settings
    telemetry: Telemetry
    redis: Redis | RedisCluster
    store: RedisMemoryStore
    locks: RedisLockManager
    catalog: MemoryCatalog
    codec: AvroCodec
    producer: MemoryProducer
    # What writers wait on for their events to be applied (one subscription per process).
    notices: AppliedNotices

    def memory(self, memory_key: str, memory_id: str | None = None) -> AsyncSafeMemoryInstance:
        """The memory ``memory_key`` for reads, prompts and writes that wait on notices."""
        return self.catalog.instance(
            memory_key,
            store=self.store,
            publisher=self.producer,
            memory_id=memory_id,
            signal=self.notices,
        )

    def flush_activities(self) -> FlushActivities:
        """The flush activity bound to this process's store and producer."""
        from memory_core.temporal import FlushActivities

        strategies = strategy_lookup(self.catalog)
        return FlushActivities(store=self.store, publisher=self.producer, strategies=strategies.get)


@asynccontextmanager
async def build_app(
    settings: Settings | None = None, telemetry: Telemetry | None = None
) -> AsyncIterator[App]:
    """Build, start and (on exit) stop the shared adapters."""
    settings = settings or Settings()
    own = telemetry is None
    # As OTEL_* configures it (nothing exported unless asked); flushed on exit if made here.
    telemetry = telemetry or Telemetry.from_environment()
    async with AsyncExitStack() as stack:
        if own:
            stack.callback(telemetry.shutdown)
        redis = make_redis(settings)
        stack.push_async_callback(redis.aclose)
        catalog = make_catalog(settings)
        codec = AvroCodec(make_registry(settings), logical_types=False)
        producer = MemoryProducer(
            settings=settings,
            topic=settings.events_topic,
            codec=codec,
            telemetry=telemetry,
            catalog=catalog,
            generation=lambda: active_generation(settings),
        )
        await stack.enter_async_context(producer)
        notices = AppliedNotices(redis, prefix=settings.key_prefix)
        stack.push_async_callback(notices.close)
        yield App(
            settings=settings,
            telemetry=telemetry,
            redis=redis,
            store=RedisMemoryStore(
                redis,
                prefix=settings.key_prefix,
                cache_bytes=settings.state_cache_mb << 20,
                wait_replicas=settings.resolved_wait_replicas,
            ),
            locks=RedisLockManager(
                redis, prefix=settings.key_prefix, on_wait=telemetry.record_lock_wait
            ),
            catalog=catalog,
            codec=codec,
            producer=producer,
            notices=notices,
        )
