"""OpenTelemetry tracing and metrics: one ``Telemetry`` object handed to every component."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka.structs import TopicPartition
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import Link, Tracer, TracerProvider, get_current_span
from prometheus_client import CollectorRegistry

from consumers.otel_setup import providers_from_environment

Headers = Sequence[tuple[str, bytes]]


def inject_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka record headers (W3C ``traceparent``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract_context(headers: Headers | None) -> otel_context.Context:
    """The trace context carried by record headers (empty context if none)."""
    carrier = {k: v.decode("latin-1") for k, v in headers or () if v is not None}
    return propagate.extract(carrier)


def sampled_link(headers: Headers | None) -> Link | None:
    """A link to the producer's span if the headers carry a sampled W3C trace context.

    Checks the ``traceparent`` flags before parsing anything: the common untraced or
    unsampled record costs one scan of its headers.
    """
    for key, value in headers or ():
        if key == "traceparent":
            try:
                sampled = int(value[-2:], 16) & 1
            except (TypeError, ValueError):
                return None
            if not sampled:
                return None
            ctx = get_current_span(extract_context(headers)).get_span_context()
            return Link(ctx) if ctx.is_valid else None
    return None


def consumer_attributes(
    tp: TopicPartition, group: str, offset: int, count: int
) -> dict[str, str | int]:
    """The OpenTelemetry messaging attributes of a span processing Kafka records."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": tp.topic,
        "messaging.destination.partition.id": str(tp.partition),
        "messaging.kafka.offset": offset,
        "messaging.batch.message_count": count,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    return attributes


def redis_attributes(events: int, lock_wait_s: float) -> dict[str, str | int | float]:
    """The attributes of a span writing a memory's events to Redis (``write.lua``)."""
    return {
        "db.system.name": "redis",
        "db.system": "redis",  # the name before semantic conventions 1.26
        "db.operation.name": "EVALSHA",
        "memstream.events": events,
        "memstream.lock.wait_s": lock_wait_s,
    }


def producer_attributes(topic: str, count: int) -> dict[str, str | int]:
    """The OpenTelemetry messaging attributes of a span sending Kafka records."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        "messaging.batch.message_count": count,
    }


class Telemetry:
    """The tracer and every instrument memstream records."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        prometheus: CollectorRegistry | None = None,
        owned: bool = False,
    ) -> None:
        self.tracer_provider = tracer_provider or SdkTracerProvider()
        self.meter_provider = meter_provider or SdkMeterProvider()
        # What ``/metrics`` serves (a Prometheus reader of this meter provider), if any.
        self.prometheus = prometheus
        self._owned = owned
        self.tracer: Tracer = self.tracer_provider.get_tracer("memstream")
        meter: Meter = self.meter_provider.get_meter("memstream")
        self.events_applied = meter.create_counter("memstream.events.applied", "{event}")
        self.events_deduplicated = meter.create_counter("memstream.events.deduplicated", "{event}")
        self.events_dead_lettered = meter.create_counter(
            "memstream.events.dead_lettered", "{event}"
        )
        self.tokens_appended = meter.create_counter("memstream.tokens.appended", "{token}")
        self.tokens_evicted = meter.create_counter("memstream.tokens.evicted", "{token}")
        self.tokens_saved = meter.create_counter("memstream.tokens.saved", "{token}")
        self.evictions = meter.create_counter("memstream.evictions", "{message}")
        self.flushes_requested = meter.create_counter("memstream.flushes.requested", "{flush}")
        self.flushes_completed = meter.create_counter("memstream.flushes.completed", "{flush}")
        # Durations in seconds, as the semantic conventions ask.
        self.apply_latency = meter.create_histogram("memstream.apply.duration", "s")
        self.end_to_end_latency = meter.create_histogram("memstream.end_to_end.latency", "s")
        self.batch_size = meter.create_histogram("memstream.batch.size", "{event}")
        # Memories whose lock another owner held when written, and how long each waited.
        self.lock_contention = meter.create_counter("memstream.lock.contention", "{memory}")
        self.lock_wait = meter.create_histogram("memstream.lock.wait", "s")
        # Memories written from the empty state (new, or back after expiring), by resource.
        self.memories_created = meter.create_counter("memstream.memories.created", "{memory}")
        # Writes Redis refused (fenced: a newer partition owner; locked, lock_lost, conflict).
        self.events_refused = meter.create_counter("memstream.writes.refused", "{memory}")
        self.flushes_started = meter.create_counter("memstream.flushes.started", "{flush}")
        self.flushes_collapsed = meter.create_counter("memstream.flushes.collapsed", "{flush}")
        self.flush_dispatch_failures = meter.create_counter(
            "memstream.flushes.dispatch_failures", "{flush}"
        )
        # The worker's flush activity (consumers/flush_metrics.py).
        self.flush_duration = meter.create_histogram("memstream.flush.duration", "s")
        self.flush_failures = meter.create_counter("memstream.flush.failures", "{attempt}")
        self.flush_retries = meter.create_counter("memstream.flush.retries", "{attempt}")
        # Partitions restored from the log after Redis lost their state (apply/restore.py).
        self.restores = meter.create_counter("memstream.restores", "{partition}")
        self.restored_events = meter.create_counter("memstream.restore.events", "{event}")
        # Memory states published to the snapshots topic by checkpoints (apply/snapshots.py).
        self.snapshots = meter.create_counter("memstream.snapshots", "{memory}")
        # Counters of failures start at 0, so a dashboard's rate() and an alert see a series
        # (0, not "no data") before the first failure.
        for zero in (
            self.events_dead_lettered,
            self.events_deduplicated,
            self.flushes_started,
            self.flush_dispatch_failures,
            self.flush_failures,
            self.flush_retries,
            self.restores,
            self.restored_events,
            self.flushes_collapsed,
            self.snapshots,
        ):
            zero.add(0)
        self.lock_contention.add(0, {"outcome": "refused"})
        self.events_refused.add(0, {"status": "fenced"})
        self._lag_sources: list[
            tuple[Callable[[], Mapping[tuple[str, int], int]], Callable[[], str]]
        ] = []
        self._age_sources: list[
            tuple[Callable[[], Mapping[tuple[str, int], float]], Callable[[], str]]
        ] = []
        self._role_sources: list[Callable[[], Mapping[str, bool]]] = []
        self._restoring_sources: list[Callable[[], int]] = []
        meter.create_observable_gauge("memstream.consumer.lag", [self._observe_lag], "{message}")
        meter.create_observable_gauge("memstream.consumer.lag.age", [self._observe_lag_age], "s")
        meter.create_observable_gauge("memstream.role.up", [self._observe_roles], "1")
        meter.create_observable_gauge(
            "memstream.restore.partitions", [self._observe_restoring], "{partition}"
        )

    @classmethod
    def from_environment(cls, *, prometheus: bool = False) -> Telemetry:
        """Recording as ``OTEL_*`` configures it, or into the providers an SDK set globally
        (``opentelemetry-instrument``); ``prometheus``: also for ``/metrics``
        (consumers/otel_setup.py)."""
        made = providers_from_environment(prometheus=prometheus)
        return cls(
            made.tracer_provider, made.meter_provider, prometheus=made.prometheus, owned=made.owned
        )

    def shutdown(self) -> None:
        """Export what is buffered and stop the providers made here (not global ones)."""
        if not self._owned:
            return
        for provider in (self.tracer_provider, self.meter_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                shutdown()

    def record_lock_wait(self, seconds: float, acquired: bool) -> None:
        """One wait for a lock another owner held (``RedisLockManager``'s ``on_wait``)."""
        outcome = {"outcome": "acquired" if acquired else "refused"}
        self.lock_contention.add(1, outcome)
        self.lock_wait.record(seconds, outcome)

    def add_lag_source(
        self,
        source: Callable[[], Mapping[tuple[str, int], int]],
        group: Callable[[], str] = lambda: "",
    ) -> None:
        """Register a callable giving lag per (topic, partition), read at each collection,
        and one giving its consumer group."""
        self._lag_sources.append((source, group))

    def add_lag_age_source(
        self,
        source: Callable[[], Mapping[tuple[str, int], float]],
        group: Callable[[], str] = lambda: "",
    ) -> None:
        """Register a callable giving, per (topic, partition), the age in seconds of the
        oldest event not yet applied (0 when none is), and one giving its consumer group."""
        self._age_sources.append((source, group))

    def add_restoring_source(self, source: Callable[[], int]) -> None:
        """Register a callable giving how many partitions are being restored (or wait to)."""
        self._restoring_sources.append(source)

    def _observe_restoring(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(sum(source() for source in self._restoring_sources))

    def add_role_source(self, source: Callable[[], Mapping[str, bool]]) -> None:
        """Register a callable giving each role's liveness (1 up, 0 down at collection)."""
        self._role_sources.append(source)

    def remove_role_source(self, source: Callable[[], Mapping[str, bool]]) -> None:
        """Stop observing ``source`` (a runner that stopped)."""
        if source in self._role_sources:
            self._role_sources.remove(source)

    def _observe_roles(self, _options: CallbackOptions) -> Iterable[Observation]:
        for source in self._role_sources:
            for role, up in source().items():
                yield Observation(1 if up else 0, {"role": role})

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield from _per_partition(self._lag_sources)

    def _observe_lag_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield from _per_partition(self._age_sources)


def _per_partition(
    sources: Iterable[tuple[Callable[[], Mapping[tuple[str, int], float]], Callable[[], str]]],
) -> Iterable[Observation]:
    for source, group in sources:
        name = group()
        for (topic, partition), value in source().items():
            yield Observation(value, {"topic": topic, "partition": partition, "group": name})
