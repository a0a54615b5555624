"""A Confluent-compatible schema registry for the local stack: Apicurio Registry 2.6 from
Maven Central (its Quarkus "all" distribution), in-memory storage, Confluent API at
``/apis/ccompat/v7``."""

from __future__ import annotations

import asyncio
import os
import urllib.request
import zipfile
from pathlib import Path

from consumers.stack.errors import StackError
from consumers.stack.kafka import find_java
from consumers.stack.locks import locked
from consumers.stack.maven import fetch_with_maven
from consumers.stack.secure import SecureAccess
from consumers.stack.service import HOST, Service

APICURIO_VERSION = "2.6.13.Final"
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:zip:all"
_RUNNER = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
CCOMPAT = "/apis/ccompat/v7"


def ensure_apicurio(cache_dir: Path) -> Path:
    """The runner jar of Apicurio Registry, downloaded with Maven and unpacked once."""
    home = cache_dir / f"apicurio-{APICURIO_VERSION}"
    complete = home / ".complete"
    if complete.exists():
        return home / _RUNNER
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        if complete.exists():
            return home / _RUNNER
        fetch_with_maven(
            [
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                f"-Dartifact={_ARTIFACT}",
                f"-DoutputDirectory={home}",
            ],
            f"Apicurio Registry {APICURIO_VERSION}",
        )
        archive = home / f"apicurio-registry-app-{APICURIO_VERSION}-all.zip"
        with zipfile.ZipFile(archive) as z:
            z.extractall(home)
        archive.unlink()
        if not (home / _RUNNER).exists():
            raise StackError(f"{_RUNNER} is not in {archive.name}")
        complete.write_text(APICURIO_VERSION)
    return home / _RUNNER


class SchemaRegistryService(Service):
    """Apicurio Registry on ``stack_schema_registry_port`` (HTTP) and the next port (HTTPS),
    loopback only, in-memory storage."""

    name = "schema-registry"
    ready_timeout_s = 90.0
    stop_grace_s = 15.0

    @property
    def port(self) -> int:
        """The HTTP port."""
        return self.settings.stack_schema_registry_port

    @property
    def endpoint(self) -> str:
        """The Confluent-compatible API's base URL (``MEMSTREAM_SCHEMA_REGISTRY_URL``)."""
        return f"http://{HOST}:{self.port}{CCOMPAT}"

    def prepare(self) -> list[str]:
        """Fetch the registry once; return its command line."""
        java = find_java()
        runner = ensure_apicurio(self.settings.cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        return [str(java), "-Xms64m", "-Xmx256m", "-jar", str(runner)]

    @property
    def tls_endpoint(self) -> str:
        """The same API over HTTPS (the stack's server certificate), on the next port."""
        return f"https://{HOST}:{self.port + 1}{CCOMPAT}"

    def env(self) -> dict[str, str]:
        """Loopback only: HTTP on the stack's port, HTTPS on the next one."""
        tls = SecureAccess.of(self.settings).tls
        return {
            **os.environ,
            "QUARKUS_HTTP_HOST": HOST,
            "QUARKUS_HTTP_PORT": str(self.port),
            "QUARKUS_HTTP_SSL_PORT": str(self.port + 1),
            "QUARKUS_HTTP_SSL_CERTIFICATE_FILES": str(tls.server_cert),
            "QUARKUS_HTTP_SSL_CERTIFICATE_KEY_FILES": str(tls.server_key),
        }

    async def _answers(self) -> bool:
        def get() -> bool:
            with urllib.request.urlopen(f"{self.endpoint}/subjects", timeout=2) as reply:
                return bool(reply.status == 200)

        return await asyncio.to_thread(get)
