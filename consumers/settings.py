"""Process settings: the only reader of the environment (prefix ``MEMSTREAM_``)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memory_core import MemstreamError

ENV_PREFIX = "MEMSTREAM_"
# Variables under this prefix belong to the test suite, not to settings.
_TEST_PREFIX = "MEMSTREAM_TEST_"


class ApiKey(BaseModel):
    """One bearer API key of the HTTP API and what it may reach."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    key: SecretStr
    # Memory resource ids ("*": all) and memory key prefixes ("": all) it may read and write.
    resources: tuple[str, ...] = ("*",)
    key_prefixes: tuple[str, ...] = ("",)

    def allows(self, memory_id: str, memory_key: str) -> bool:
        """Whether this key may reach ``memory_key`` of resource ``memory_id``."""
        return ("*" in self.resources or memory_id in self.resources) and any(
            memory_key.startswith(p) for p in self.key_prefixes
        )


class SettingsError(MemstreamError):
    """Settings that cannot be right: an unknown ``MEMSTREAM_*`` variable, a missing pair."""


def unknown_variables(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """One message per ``MEMSTREAM_*`` variable that names no setting (with the closest one)."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(_TEST_PREFIX):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{name} is not a memstream setting{hint}")
    return problems


def _default_cache() -> Path:
    return Path.home() / ".cache" / "memstream"


class Settings(BaseSettings):
    """Endpoints, topics and local-stack layout; override any field with ``MEMSTREAM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # Local stack: data, logs and pid files of the processes `memstream stack` starts.
    stack_dir: Path = Field(default_factory=lambda: Path.cwd() / ".memstream")
    # Downloads reused across clones (Kafka jars, tiktoken files).
    cache_dir: Path = Field(default_factory=_default_cache)
    encodings_dir: Path | None = None

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    kafka_version: str = "3.9.1"
    kafka_heap_mb: int = 1024
    # Security of every Kafka connection (producer SDK, apply consumer, dispatcher, admin,
    # verify/replay, demo): all clients are built by consumers/connections.py from these.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None
    ) = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(default=None, repr=False)
    # OAUTHBEARER: "package.module:name", a callable returning an aiokafka
    # AbstractTokenProvider (or the provider class itself).
    kafka_sasl_oauth_token_provider: str | None = None
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    kafka_ssl_key_password: str | None = Field(default=None, repr=False)
    kafka_ssl_check_hostname: bool = True
    # The local stack's secured listener (SASL_SSL, SCRAM-SHA-512), beside the plaintext one.
    stack_kafka_secure_port: int = 19094
    # The local stack's Redis over TLS with an ACL user and client certificates.
    stack_redis_tls_port: int = 16380
    # The local stack's Redis Cluster: six nodes on this port and the next five.
    stack_redis_cluster_port: int = 17000
    # The local stack's Confluent-compatible schema registry (Apicurio Registry).
    stack_schema_registry_port: int = 18085
    # The local stack's Prometheus.
    stack_prometheus_port: int = 19090
    # The local stack's Jaeger: OTLP gRPC on this port, OTLP HTTP on the next; query API.
    stack_jaeger_otlp_port: int = 14317
    stack_jaeger_query_port: int = 16686
    stack_jaeger_metrics_port: int = 18889

    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_username: str | None = None
    redis_password: str | None = Field(default=None, repr=False)
    # TLS: use a rediss:// URL; these add a CA, a client certificate (mTLS) and its key.
    redis_ssl_ca_certs: Path | None = None
    redis_ssl_certfile: Path | None = None
    redis_ssl_keyfile: Path | None = None
    redis_ssl_key_password: str | None = Field(default=None, repr=False)
    redis_ssl_check_hostname: bool = True
    # Redis Cluster: REDIS_URL names any node; the client discovers the others.
    redis_cluster: bool = False
    # A write counts as applied (and its offsets are committed) only once this many replicas
    # have it (WAIT), so a failover cannot lose it. Default: 1 on a cluster, else 0.
    redis_wait_replicas: int | None = None
    redis_socket_timeout_s: float = 5.0
    redis_max_connections: int = 64

    temporal_address: str = "127.0.0.1:17233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "memstream-flush"
    # TLS (any of the files, a server name or ``temporal_tls`` turn it on) and API key
    # (Temporal Cloud); an API key alone implies TLS.
    temporal_tls: bool = False
    temporal_tls_ca_file: Path | None = None
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: str | None = Field(default=None, repr=False)

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
    # The apply consumer announces each batch's applied offsets on Redis pub/sub, so writers
    # waiting for their events wake at once instead of polling (docs/decisions/0014).
    announce_applied: bool = True
    # Snapshots (docs/semantics.md, "Snapshots"): the apply consumer checkpoints a partition
    # it owns once this many events were applied to it since its last checkpoint, or this
    # many seconds passed with some applied; 0 events turns snapshots off.
    snapshot_every_events: int = Field(default=50_000, ge=0)
    snapshot_every_s: float = Field(default=300.0, gt=0)
    dispatcher_group: str = "memstream-dispatch"
    schema_registry_url: str | None = None
    schema_registry_username: str | None = None
    schema_registry_password: str | None = Field(default=None, repr=False)
    schema_registry_ca_file: Path | None = None

    # `memstream run` serves /healthz and /readyz here when set (Kubernetes probes); the
    # host is loopback unless set (0.0.0.0 in a container).
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    # /readyz fails while an apply partition's lag (records) is above this, when set.
    ready_max_lag: int | None = None

    # The HTTP API (`memstream serve`, `memstream run --roles http`) shares the health port;
    # with the http role and no health port, it listens on this one.
    http_default_port: int = 18080
    # Bearer API keys, each scoped to memory resources and key prefixes (JSON list of
    # {"name", "key", "resources": [...], "key_prefixes": [...]}; "*" / "" allow all).
    api_keys: list[ApiKey] = Field(default_factory=list, repr=False)
    # "none" serves without auth (local development only): made explicit, never a default.
    http_auth: Literal["api_keys", "none"] = "api_keys"
    http_max_body_bytes: int = 1 << 20
    http_max_messages: int = 500

    # Memory keys embed user ids: logs and workflow ids show a digest of them (`memstream
    # partition KEY` prints it) unless this is set.
    telemetry_show_keys: bool = False

    key_prefix: str = "memstream"
    memories_file: Path = Path("memories.yaml")

    @model_validator(mode="before")
    @classmethod
    def _known_variables(cls, data: Any) -> Any:
        # A typo (MEMSTREAM_KAFKA_SECURTY_PROTOCOL) must not fall back to plaintext silently.
        problems = unknown_variables(os.environ)
        if problems:
            raise SettingsError("; ".join(problems))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = []
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        if protocol.startswith("SASL_") and mechanism is None:
            problems.append(f"MEMSTREAM_KAFKA_SASL_MECHANISM is needed with {protocol}")
        if mechanism is not None and not protocol.startswith("SASL_"):
            problems.append(
                f"MEMSTREAM_KAFKA_SASL_MECHANISM={mechanism} needs "
                "MEMSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)"
            )
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            problems.append(
                f"SASL {mechanism} needs MEMSTREAM_KAFKA_SASL_USERNAME and "
                "MEMSTREAM_KAFKA_SASL_PASSWORD"
            )
        if mechanism == "OAUTHBEARER" and not self.kafka_sasl_oauth_token_provider:
            problems.append("SASL OAUTHBEARER needs MEMSTREAM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER")
        for service, cert, key in (
            ("KAFKA_SSL", self.kafka_ssl_cert_file, self.kafka_ssl_key_file),
            ("REDIS_SSL", self.redis_ssl_certfile, self.redis_ssl_keyfile),
            ("TEMPORAL_TLS", self.temporal_tls_cert_file, self.temporal_tls_key_file),
        ):
            if (cert is None) != (key is None):
                problems.append(f"MEMSTREAM_{service} client certificate and key go together")
        names = [k.name for k in self.api_keys]
        if len(set(names)) != len(names):
            problems.append("MEMSTREAM_API_KEYS: every key needs a name of its own")
        if any(len(k.key.get_secret_value()) < 16 for k in self.api_keys):
            problems.append("MEMSTREAM_API_KEYS: a key must be at least 16 characters")
        if problems:
            raise SettingsError("; ".join(problems))
        return self

    @property
    def resolved_wait_replicas(self) -> int:
        """Replicas a write waits for (``redis_wait_replicas``, else 1 on a cluster)."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_cluster else 0

    @property
    def temporal_uses_tls(self) -> bool:
        """Whether the Temporal connection is TLS (asked for, or implied by a TLS setting)."""
        return bool(
            self.temporal_tls
            or self.temporal_tls_ca_file
            or self.temporal_tls_cert_file
            or self.temporal_tls_server_name
            or self.temporal_api_key
        )

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
