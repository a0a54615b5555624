"""Process settings: the only reader of the environment (prefix ``MEMSTREAM_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    return Path.home() / ".cache" / "memstream"


class Settings(BaseSettings):
    """Endpoints, topics and local-stack layout; override any field with ``MEMSTREAM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MEMSTREAM_", extra="ignore")

    # Local stack: data, logs and pid files of the processes `memstream stack` starts.
    stack_dir: Path = Field(default_factory=lambda: Path.cwd() / ".memstream")
    # Downloads reused across clones (Kafka jars, tiktoken files).
    cache_dir: Path = Field(default_factory=_default_cache)
    encodings_dir: Path | None = None

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    kafka_version: str = "3.9.1"
    kafka_heap_mb: int = 1024

    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_username: str | None = None
    redis_password: str | None = None
    redis_ssl_ca_certs: Path | None = None
    redis_socket_timeout_s: float = 5.0
    redis_max_connections: int = 64

    temporal_address: str = "127.0.0.1:17233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "memstream-flush"

    events_topic: str = "memstream.memory-events"
    dlq_topic: str = "memstream.memory-events.dlq"
    flush_topic: str = "memstream.flush-commands"
    topic_partitions: int = 6
    topic_replication: int = 1
    consumer_group: str = "memstream-apply"
    # Static group membership (KIP-345): a stable id per consumer slot (a pod name, say). A
    # consumer restarted under the same id gets its partitions back at once instead of after
    # the dead member's session timeout; one that stops for good keeps them unassigned until
    # that timeout. Two running consumers must never share one (the older is fenced).
    consumer_instance_id: str | None = None
    consumer_session_timeout_ms: int = 10_000
    consumer_heartbeat_interval_ms: int = 3_000
    # Records per apply batch at most (under a backlog; a quiet stream gives smaller ones).
    # Each memory is written once per batch, so larger batches spread that cost over more
    # events; a batch is committed only once applied, so it also bounds what is redone after
    # a crash. Smaller batches leave the heap less fragmented (RSS after 100,000 memories 328
    # MiB with 20,000, 283 with 10,000) but cost the backlog 5-10 % (docs/decisions/0011).
    apply_max_records: int = 20_000
    # The apply consumer's cache of memory states, at most (an uncached memory costs one more
    # round trip on its next write; the cache is also capped at 50,000 memories).
    state_cache_mb: int = 256
    dispatcher_group: str = "memstream-dispatch"
    schema_registry_url: str | None = None

    key_prefix: str = "memstream"
    memories_file: Path = Path("memories.yaml")

    @property
    def resolved_encodings_dir(self) -> Path:
        """Where the verified tiktoken files live."""
        return self.encodings_dir or self.cache_dir / "tiktoken"

    @property
    def kafka_port(self) -> int:
        """The port of ``kafka_bootstrap`` (the local stack listens there)."""
        return int(self.kafka_bootstrap.rsplit(":", 1)[1])

    @property
    def redis_port(self) -> int:
        """The port of ``redis_url``."""
        hostport = self.redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        return int(hostport.rsplit(":", 1)[1])

    @property
    def temporal_port(self) -> int:
        """The port of ``temporal_address``."""
        return int(self.temporal_address.rsplit(":", 1)[1])
