"""Topic creation: the memory-events topic (its generations), its DLQ and the flush commands."""

from __future__ import annotations

from aiokafka.admin import NewTopic

from consumers.generations import active_generation, create_missing
from consumers.settings import Settings


def topic_names(settings: Settings) -> list[str]:
    """The topics memstream uses (the events topic by its configured, first-generation name)."""
    return [settings.events_topic, settings.dlq_topic, settings.flush_topic]


async def ensure_topics(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Create missing topics (partitions and replication from settings); returns those created.

    The events topic is created with its first generation recorded (or an existing one
    adopted, see ``consumers.generations``). Retention is unlimited everywhere: the events
    topic is the source of truth that replay rebuilds from, dead letters wait to be re-driven.
    """
    names = names or topic_names(settings)
    others = [n for n in names if n != settings.events_topic]
    created = await create_missing(
        settings,
        [
            NewTopic(
                name=n,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs={"retention.ms": "-1"},
            )
            for n in others
        ],
    )
    if settings.events_topic in names:
        await active_generation(settings)
    return created
