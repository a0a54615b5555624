"""Schema registries: the embedded one built from ``schemas/avro`` and a Confluent client."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from fastavro import parse_schema

from schemas.errors import SchemaRegistryError, UnknownSchemaError

MEMORY_EVENT = "memory-event"
FLUSH_COMMAND = "flush-command"
MEMORY_SNAPSHOT = "memory-snapshot"


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """A schema with its registry id, subject and version."""

    id: int
    subject: str
    version: int
    schema: dict[str, Any]
    parsed: Any


class SchemaRegistry(Protocol):
    """Looks schemas up by id (readers) and gives the id of a subject's latest (writers)."""

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """The schema registered under ``schema_id``; ``UnknownSchemaError`` if none."""
        ...

    def latest(self, subject: str) -> RegisteredSchema:
        """The newest version of ``subject``."""
        ...


def _avro_dir() -> Any:
    return resources.files(__package__).joinpath("avro")


def load_schema(file: str) -> dict[str, Any]:
    """A schema file of ``schemas/avro`` as JSON."""
    loaded: dict[str, Any] = json.loads(_avro_dir().joinpath(file).read_text())
    return loaded


class EmbeddedRegistry:
    """The registry in ``schemas/avro/registry.json``: permanent ids, no server needed."""

    def __init__(self, extra: list[RegisteredSchema] | None = None) -> None:
        manifest = json.loads(_avro_dir().joinpath("registry.json").read_text())
        self._by_id: dict[int, RegisteredSchema] = {}
        for entry in manifest["schemas"]:
            schema = load_schema(entry["file"])
            self._add(
                RegisteredSchema(
                    entry["id"], entry["subject"], entry["version"], schema, parse_schema(schema)
                )
            )
        for registered in extra or []:
            self._add(registered)

    def _add(self, registered: RegisteredSchema) -> None:
        if registered.id in self._by_id:
            raise SchemaRegistryError(f"schema id {registered.id} registered twice")
        self._by_id[registered.id] = registered

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """The schema registered under ``schema_id``."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(schema_id) from None

    def latest(self, subject: str) -> RegisteredSchema:
        """The newest version of ``subject``."""
        versions = [r for r in self._by_id.values() if r.subject == subject]
        if not versions:
            raise SchemaRegistryError(f"no schema registered for subject {subject!r}")
        return max(versions, key=lambda r: r.version)


class ConfluentRegistry:
    """A Confluent Schema Registry over its REST API; writers register the embedded schemas."""

    def __init__(
        self,
        url: str,
        *,
        subject_prefix: str = "",
        timeout_s: float = 10.0,
        auth: tuple[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
        if auth is not None:
            # HTTP basic auth, as the Confluent registry and its compatibles take it.
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ssl_context = ssl_context
        self.subject_prefix = subject_prefix
        self.timeout_s = timeout_s
        self._local = EmbeddedRegistry()
        self._cache: dict[int, RegisteredSchema] = {}
        self._latest: dict[str, RegisteredSchema] = {}
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers=self._headers,
        )
        try:
            with urllib.request.urlopen(
                req, timeout=self.timeout_s, context=self._ssl_context
            ) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code in (401, 403):
                raise SchemaRegistryError(
                    f"schema registry {self.url} refused the credentials (HTTP {exc.code}): "
                    "check MEMSTREAM_SCHEMA_REGISTRY_USERNAME and _PASSWORD"
                ) from exc
            raise SchemaRegistryError(f"{method} {path}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError) as exc:
            raise SchemaRegistryError(f"schema registry {self.url} unreachable: {exc}") from exc

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """Fetch (once) the schema with ``schema_id``."""
        with self._lock:
            cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        reply = self._request("GET", f"/schemas/ids/{schema_id}")
        if reply is None:
            raise UnknownSchemaError(schema_id)
        schema = json.loads(reply["schema"])
        registered = RegisteredSchema(schema_id, "", 0, schema, parse_schema(schema))
        with self._lock:
            self._cache[schema_id] = registered
        return registered

    def latest(self, subject: str) -> RegisteredSchema:
        """Register (idempotently) this build's newest schema of ``subject``; return its id."""
        with self._lock:
            cached = self._latest.get(subject)
        if cached is not None:
            return cached
        local = self._local.latest(subject)
        name = f"{self.subject_prefix}{subject}"
        reply = self._request(
            "POST", f"/subjects/{name}/versions", {"schema": json.dumps(local.schema)}
        )
        if reply is None or "id" not in reply:
            raise SchemaRegistryError(f"registering {name} returned {reply!r}")
        registered = RegisteredSchema(
            int(reply["id"]), subject, local.version, local.schema, local.parsed
        )
        with self._lock:
            self._latest[subject] = registered
            self._cache[registered.id] = registered
        return registered
