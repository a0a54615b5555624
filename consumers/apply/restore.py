"""Restoring a partition whose state Redis lost (a wipe, a restart without persistence) from
the log, before its consumer applies anything new to it, as Kafka Streams restores a state
store from its changelog (docs/semantics.md, "Recovery").

Each partition is read from its latest snapshot watermark, its snapshotted memories written
from their snapshots (``consumers.snapshots``).

Redis lost a partition when its epoch counter is gone: the owner takes it at assignment, so
it exists as long as Redis kept its data. ``write.lua`` refuses (``lost``) to write onto a
partition without it, and a new owner finds it missing while Kafka holds committed offsets.
"""

from __future__ import annotations

import logging
import time

from aiokafka.structs import TopicPartition

from consumers.catalog import MemoryCatalog
from consumers.generations import Generation
from consumers.recovery import Progress, ReplayReport, replay
from consumers.settings import Settings
from consumers.telemetry import Telemetry
from memory_core.redis import RedisMemoryStore
from schemas import AvroCodec

log = logging.getLogger(__name__)


class Restorer:
    """Rebuilds one partition's memories up to its committed position."""

    def __init__(
        self,
        settings: Settings,
        catalog: MemoryCatalog,
        codec: AvroCodec,
        store: RedisMemoryStore,
        telemetry: Telemetry,
    ) -> None:
        self.settings, self.catalog, self.codec = settings, catalog, codec
        self.store, self.telemetry = store, telemetry

    async def restore(
        self, tp: TopicPartition, committed: int, generation: Generation, owner: str
    ) -> ReplayReport:
        """Write every memory of ``tp`` as the log holds it up to ``committed`` (exclusive)."""
        log.warning(
            "Redis lost the state of %s (its epoch counter is gone): restoring its memories "
            "from the log up to offset %d before applying anything new",
            tp,
            committed,
        )
        started = time.monotonic()
        attributes = {"topic": tp.topic, "partition": tp.partition}

        def progress(p: Progress) -> None:
            log.info("restoring %s: %s", tp, p.line())

        report = await replay(
            self.settings,
            self.catalog,
            self.codec,
            self.store,
            partitions=[tp.partition],
            upto=committed - 1,
            progress=progress,
            owner=owner,
            generation=generation,
            parallel=1,
        )
        self.telemetry.restores.add(1, attributes)
        self.telemetry.restored_events.add(report.events, attributes)
        log.warning(
            "restored %s: %d memories (%d from snapshots), %d events from the log in %.1fs "
            "(%d records before the watermark not read; %d expired, not brought back)",
            tp,
            report.memories,
            report.snapshots,
            report.events,
            time.monotonic() - started,
            report.skipped,
            report.expired,
        )
        return report
