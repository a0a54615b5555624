"""OpenTelemetry providers as the SDK's environment variables configure them.

Used when no provider was set globally (``opentelemetry-instrument`` sets them; those are
then used as they are). Read here:

- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` (the resource; ``service.name``
  defaults to ``memstream``);
- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated ``otlp``,
  ``console``, ``none`` (metrics also ``prometheus``). Unset, an exporter is made only when
  an ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT`` is set (then ``otlp``): with nothing
  configured nothing is exported and nothing is sent to a default endpoint;
- ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL``: ``http/protobuf`` (default) or
  ``grpc``; endpoints, headers, timeouts and compression are read by the exporters
  themselves, batching by ``BatchSpanProcessor`` (``OTEL_BSP_*``), the metric interval by
  ``PeriodicExportingMetricReader`` (``OTEL_METRIC_EXPORT_INTERVAL``);
- ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: read by the SDK's tracer provider.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import CollectorRegistry

from consumers.settings import SettingsError

_TRACE_EXPORTERS = {"otlp", "console", "none"}
_METRIC_EXPORTERS = {"otlp", "console", "prometheus", "none"}


@dataclass(slots=True)
class Providers:
    """The providers to record with; ``prometheus``: the registry ``/metrics`` serves."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    prometheus: CollectorRegistry | None = None
    owned: bool = False  # made here (so shut down here), not set globally by someone else
    span_exporters: list[SpanExporter] = field(default_factory=list)
    metric_readers: list[MetricReader] = field(default_factory=list)


def _chosen(env: Mapping[str, str], signal: str, allowed: set[str]) -> list[str]:
    """The exporters named for ``signal`` (traces, metrics); unnamed: OTLP when an endpoint
    for it (or for every signal) is set, else none."""
    raw = env.get(f"OTEL_{signal.upper()}_EXPORTER")
    if raw is None:
        endpoint = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SettingsError(
            f"OTEL_{signal.upper()}_EXPORTER={raw}: unknown {', '.join(unknown)}; "
            f"choose from {', '.join(sorted(allowed))}"
        )
    return [n for n in names if n != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    protocol = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol not in ("http/protobuf", "grpc"):
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: memstream exports http/protobuf or grpc"
        )
    return protocol


def _span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if _protocol(env, "traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def _metric_reader(name: str, env: Mapping[str, str]) -> MetricReader:
    if name == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if _protocol(env, "metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(OTLPMetricExporter())
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return PeriodicExportingMetricReader(HttpMetricExporter())


def resource(env: Mapping[str, str]) -> Resource:
    """The process's resource: the environment's attributes, ``service.name`` memstream
    unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` names it."""
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return Resource.create({} if named else {SERVICE_NAME: "memstream"})


def providers_from_environment(
    env: Mapping[str, str] | None = None, *, prometheus: bool = False
) -> Providers:
    """Tracer and meter providers: the global ones if an SDK set them, else made from
    ``OTEL_*`` (``prometheus``: also a reader for ``/metrics``)."""
    env = os.environ if env is None else env
    global_tracer = trace.get_tracer_provider()
    global_meter = metrics.get_meter_provider()
    if isinstance(global_tracer, SdkTracerProvider) and isinstance(global_meter, SdkMeterProvider):
        return Providers(global_tracer, global_meter)
    res = resource(env)
    tracer_provider = SdkTracerProvider(resource=res)
    exporters = [_span_exporter(name, env) for name in _chosen(env, "traces", _TRACE_EXPORTERS)]
    for exporter in exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    readers: list[MetricReader] = []
    registry = None
    chosen = _chosen(env, "metrics", _METRIC_EXPORTERS)
    if prometheus or "prometheus" in chosen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
    readers += [_metric_reader(n, env) for n in chosen if n != "prometheus"]
    meter_provider = SdkMeterProvider(resource=res, metric_readers=readers)
    return Providers(tracer_provider, meter_provider, registry, True, exporters, readers)
