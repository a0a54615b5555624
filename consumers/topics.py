"""Topic creation: the memory-events topic, its DLQ and the flush-commands topic."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from consumers.settings import Settings


def topic_names(settings: Settings) -> list[str]:
    """The topics memstream uses."""
    return [settings.events_topic, settings.dlq_topic, settings.flush_topic]


async def ensure_topics(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Create missing topics (partitions and replication from settings); returns those created.

    Retention is unlimited: the events topic is the source of truth that replay rebuilds from.
    """
    names = names or topic_names(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name=n,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs={"retention.ms": "-1"},
            )
            for n in missing
        ]
        # Another process may create them between our check and this call.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        return missing
    finally:
        await admin.close()
