"""Jaeger (v2, in-memory storage) for the local stack: a real trace backend receiving OTLP,
with its query API. Built once from its Go module (the module proxy), cached like the Kafka
jars: `go install` refuses the module (its go.mod has a replace directive), so its source is
downloaded with `go mod download` and built as the main module."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from consumers.stack.errors import StackError
from consumers.stack.locks import locked
from consumers.stack.service import HOST, Service

JAEGER_VERSION = "v1.76.0"  # the module's version; its cmd/jaeger is Jaeger v2
_MODULE = "github.com/jaegertracing/jaeger"


def _go_env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GOPATH": str(cache / "go"),
        "GOCACHE": str(cache / "go-build"),
        "GOFLAGS": "-p=2",
        "GOTOOLCHAIN": "local",
    }


def ensure_jaeger(cache_dir: Path) -> Path:
    """The Jaeger binary, built from the module source once (about 2 minutes cold)."""
    home = cache_dir / f"jaeger-{JAEGER_VERSION}"
    binary = home / "jaeger"
    if (home / ".complete").exists():
        return binary
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        if (home / ".complete").exists():
            return binary
        go = shutil.which("go")
        if go is None:
            raise StackError(
                "go not found: install Go 1.24+ (Debian/Ubuntu: apt-get install golang)"
            )
        env = _go_env(cache_dir)
        print(f"building Jaeger {JAEGER_VERSION} from its Go module (once)", file=sys.stderr)
        done = subprocess.run(
            [go, "mod", "download", "-json", f"{_MODULE}@{JAEGER_VERSION}"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise StackError(f"go mod download {_MODULE} failed: {done.stderr.strip()[-300:]}")
        source = Path(json.loads(done.stdout)["Dir"])
        work = home / "src"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work)
        for path in work.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        done = subprocess.run(
            [go, "build", "-o", str(binary), "./cmd/jaeger"],
            cwd=work, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise StackError(f"building Jaeger failed: {done.stderr.strip()[-300:]}")
        shutil.rmtree(work, ignore_errors=True)
        (home / ".complete").write_text(JAEGER_VERSION)
    return binary


class JaegerService(Service):
    """Jaeger v2 on loopback: OTLP on ``stack_jaeger_otlp_port`` (gRPC) and the next port
    (HTTP), the query API on ``stack_jaeger_query_port``."""

    name = "jaeger"
    ready_timeout_s = 300.0  # a cold build comes first
    stop_grace_s = 10.0

    @property
    def port(self) -> int:
        """The query API's port."""
        return self.settings.stack_jaeger_query_port

    @property
    def endpoint(self) -> str:
        """The query API (``/api/traces?service=...``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def otlp_http(self) -> str:
        """Where an OTLP/HTTP exporter sends (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        return f"http://{HOST}:{self.settings.stack_jaeger_otlp_port + 1}"

    @property
    def metrics_endpoint(self) -> str:
        """Where the OTLP metrics it received are served in Prometheus's format."""
        return f"http://{HOST}:{self.settings.stack_jaeger_metrics_port}/metrics"

    def prepare(self) -> list[str]:
        """Build Jaeger once, write its configuration, return its command line."""
        binary = ensure_jaeger(self.settings.cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        otlp = self.settings.stack_jaeger_otlp_port
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    },
                    # OTLP metrics too (Jaeger v2 is an OpenTelemetry Collector): served for
                    # scraping, so a test can see what `OTEL_*` alone exports.
                    "metrics": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["prometheus"],
                    },
                },
                "telemetry": {"metrics": {"level": "none"}},
            },
            "extensions": {
                "jaeger_query": {
                    "storage": {"traces": "mem"},
                    "http": {"endpoint": f"{HOST}:{self.port}"},
                    "grpc": {"endpoint": f"{HOST}:{self.port - 1}"},
                },
                "jaeger_storage": {"backends": {"mem": {"memory": {"max_traces": 100000}}}},
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"{HOST}:{otlp}"},
                        "http": {"endpoint": f"{HOST}:{otlp + 1}"},
                    }
                }
            },
            "processors": {"batch": {}},
            "exporters": {
                "jaeger_storage_exporter": {"trace_storage": "mem"},
                "prometheus": {"endpoint": f"{HOST}:{self.settings.stack_jaeger_metrics_port}"},
            },
        }
        path = self.dir / "jaeger.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return [str(binary), f"--config={path}"]

    async def _answers(self) -> bool:
        def services() -> bool:
            with urllib.request.urlopen(f"{self.endpoint}/api/services", timeout=2) as reply:
                return bool(reply.status == 200)

        return await asyncio.to_thread(services)
