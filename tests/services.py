"""Session fixtures for the real local stack (Kafka, Redis, Temporal), per-test isolation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from temporalio.client import Client

from consumers.bootstrap import App, build_app, make_redis
from consumers.runner import Runner
from consumers.settings import Settings
from consumers.stack import LocalStack
from consumers.topics import ensure_topics, topic_names


@pytest.fixture(scope="session")
async def stack(settings: Settings) -> Settings:
    """The local stack, started (idempotently) once per session; a missing service fails."""
    statuses = await LocalStack(settings, echo=lambda _line: None).up_async()
    down = [s.name for s in statuses if not s.up]
    if down:
        pytest.fail(f"local stack services not up: {', '.join(down)}")
    return settings


@pytest.fixture
def names() -> str:
    """A unique token for this test's topics, groups, task queue and key prefix."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def test_settings(stack: Settings, names: str) -> Settings:
    """Settings whose topics, groups, task queue and key prefix belong to this test only."""
    isolated = stack.model_copy(
        update={
            "events_topic": f"t.{names}.events",
            "dlq_topic": f"t.{names}.dlq",
            "flush_topic": f"t.{names}.flush",
            "consumer_group": f"t.{names}.apply",
            "dispatcher_group": f"t.{names}.dispatch",
            "temporal_task_queue": f"t.{names}.flush",
            "key_prefix": f"t{names}",
            "topic_partitions": 4,
        }
    )
    await ensure_topics(isolated, topic_names(isolated))
    return isolated


def cluster_settings(stack: Settings) -> Settings:
    """``stack`` with Redis being the stack's Redis Cluster (writes wait for a replica)."""
    return stack.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{stack.stack_redis_cluster_port}/0",
            "redis_cluster": True,
        }
    )


@pytest.fixture(scope="session", params=["redis", "redis-cluster"])
async def redis(stack: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """A client of the stack's Redis, then of its Redis Cluster: the Redis tests run on both."""
    chosen = stack if request.param == "redis" else cluster_settings(stack)
    client = make_redis(chosen)
    yield client  # type: ignore[misc]
    await client.aclose()


@pytest.fixture(scope="session")
async def temporal_client(stack: Settings) -> Client:
    """A client of the stack's Temporal server."""
    return await Client.connect(stack.temporal_address, namespace=stack.temporal_namespace)


@pytest.fixture
def kafka_bootstrap(stack: Settings) -> str:
    """The stack's Kafka bootstrap address."""
    return stack.kafka_bootstrap


MEMORIES = """
memories:
  - id: chat
    key: "agent:{agent_id}:user:{user_id}"
    model: gpt-4o
    max_tokens: 400
    token_allocation: {system: 0.125, short_term: 0.625, long_term: 0.25}
    flushing: {threshold: 0.8, summarize_oldest_percent: 0.5, summary_recent_messages: 2,
               summary_tokens: 60}
    locking: {ttl: 5s, acquire_timeout: 5s}
    privacy:
      redact_patterns: ['\\b[\\w.+-]+@[\\w-]+\\.[\\w.]+\\b']
      non_persistable_roles: []
"""


@pytest.fixture
def pipeline_settings(test_settings: Settings, tmp_path: Path) -> Settings:
    """Isolated settings whose memories file holds the small ``chat`` memory."""
    path = tmp_path / "memories.yaml"
    path.write_text(MEMORIES)
    return test_settings.model_copy(update={"memories_file": path})


@pytest.fixture
async def app(pipeline_settings: Settings) -> AsyncIterator[App]:
    """The composition root for this test's settings."""
    async with build_app(pipeline_settings) as built:
        yield built


@pytest.fixture
async def raw_producer(app: App) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer: records exactly as the test builds them, where the test says."""
    producer = AIOKafkaProducer(bootstrap_servers=app.settings.kafka_bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def pipeline(app: App, temporal_client: Client) -> AsyncIterator[Runner]:
    """Every role running: apply consumer, dispatcher, Temporal worker."""
    async with Runner(app, temporal=temporal_client) as runner:
        yield runner
