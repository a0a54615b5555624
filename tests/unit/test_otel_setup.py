"""Telemetry configured the way the OpenTelemetry SDK documents it (OTEL_* variables)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from consumers.otel_setup import providers_from_environment, resource
from consumers.settings import SettingsError


def _kinds(objects: list[Any]) -> list[str]:
    """Class names; an OTLP exporter's with its transport (grpc or http)."""
    out = []
    for o in objects:
        name = type(o).__name__
        if name.startswith("OTLP"):
            name = ("grpc." if ".grpc." in type(o).__module__ else "http.") + name
        out.append(name)
    return out


def test_nothing_configured_exports_nothing() -> None:
    made = providers_from_environment({})
    assert (made.span_exporters, made.metric_readers, made.prometheus) == ([], [], None)


def test_an_otlp_endpoint_alone_turns_on_otlp_export_over_http() -> None:
    made = providers_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:14318"})
    assert _kinds(made.span_exporters) == ["http.OTLPSpanExporter"]
    assert _kinds(made.metric_readers) == ["PeriodicExportingMetricReader"]


def test_grpc_protocol_and_named_exporters() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp,console",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        "OTEL_METRICS_EXPORTER": "prometheus",
    }
    made = providers_from_environment(env)
    assert _kinds(made.span_exporters) == ["grpc.OTLPSpanExporter", "ConsoleSpanExporter"]
    assert made.prometheus is not None
    assert _kinds(made.metric_readers) == ["PrometheusMetricReader"]


def test_none_and_prometheus_for_the_health_port() -> None:
    made = providers_from_environment({"OTEL_TRACES_EXPORTER": "none"}, prometheus=True)
    assert made.span_exporters == [] and made.prometheus is not None


@pytest.mark.parametrize(
    "env",
    [{"OTEL_TRACES_EXPORTER": "zipkin"}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                                          "OTEL_TRACES_EXPORTER": "otlp"}],
)  # fmt: skip
def test_an_exporter_memstream_cannot_make_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        providers_from_environment(env)


def test_the_resource_names_the_service() -> None:
    assert resource({}).attributes["service.name"] == "memstream"


def test_providers_set_globally_are_used_not_replaced() -> None:
    # As opentelemetry-instrument does; in a process of its own (globals are set once).
    code = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
tp, mp = TracerProvider(), MeterProvider()
trace.set_tracer_provider(tp)
metrics.set_meter_provider(mp)
from consumers.telemetry import Telemetry
t = Telemetry.from_environment()
assert t.tracer_provider is tp and t.meter_provider is mp
print("global")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "global", done.stderr


def test_a_traces_endpoint_exports_traces_only() -> None:
    made = providers_from_environment(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:14318/v1/traces"}
    )
    assert _kinds(made.span_exporters) == ["http.OTLPSpanExporter"]
    assert made.metric_readers == []
