"""The Confluent-compatible registry client against a real registry: the stack's Apicurio
Registry (its /apis/ccompat/v7 API), alone and under the whole pipeline."""

from __future__ import annotations

import ssl
import struct
import uuid

import pytest

from consumers.bootstrap import build_app
from consumers.connections import kafka_consumer, make_registry, tls_context
from consumers.runner import Runner
from consumers.settings import Settings
from consumers.stack.registry import SchemaRegistryService
from consumers.stack.secure import SecureAccess
from memory_core import AsyncSafeMemoryInstance, Role, WriteOutcomeStatus
from schemas import MEMORY_EVENT, ConfluentRegistry, EmbeddedRegistry, SchemaRegistryError


@pytest.fixture
def registry_url(stack: Settings) -> str:
    """The stack registry's Confluent API."""
    return SchemaRegistryService(stack).endpoint


def test_a_writer_registers_its_schema_and_a_fresh_reader_fetches_it_by_id(
    registry_url: str,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    writer = ConfluentRegistry(registry_url, subject_prefix=prefix)
    registered = writer.latest(MEMORY_EVENT)
    again = ConfluentRegistry(registry_url, subject_prefix=prefix).latest(MEMORY_EVENT)
    assert again.id == registered.id  # registering the same schema is idempotent
    fetched = ConfluentRegistry(registry_url).by_id(registered.id)
    assert fetched.schema == registered.schema


def test_an_unknown_schema_id_and_an_unreachable_registry_are_clear_errors(
    registry_url: str,
) -> None:
    with pytest.raises(Exception, match="999999"):
        ConfluentRegistry(registry_url).by_id(999_999)
    with pytest.raises(SchemaRegistryError, match="unreachable"):
        ConfluentRegistry("http://127.0.0.1:9/apis/ccompat/v7", timeout_s=2).by_id(1)


async def test_the_pipeline_runs_with_the_registry_and_records_carry_its_ids(
    pipeline_settings: Settings, registry_url: str
) -> None:
    settings = pipeline_settings.model_copy(update={"schema_registry_url": registry_url})
    async with build_app(settings) as app:
        memory = AsyncSafeMemoryInstance(
            "agent:a1:user:registry",
            app.catalog.config("chat"),
            store=app.store,
            publisher=app.producer,
        )
        async with Runner(app, ["apply"]):
            outcome = await memory.append(Role.USER, "schemas from the registry")
        assert outcome.status is WriteOutcomeStatus.APPLIED
        assert [m.content for m in await memory.read()] == ["schemas from the registry"]
    consumer = kafka_consumer(
        settings, settings.events_topic, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    (record,) = [r for batch in records.values() for r in batch]
    magic, schema_id = struct.unpack(">bI", record.value[:5])
    assert magic == 0
    fetched = ConfluentRegistry(registry_url).by_id(schema_id)
    assert fetched.schema == EmbeddedRegistry().latest(MEMORY_EVENT).schema


def test_the_registry_over_https_is_trusted_with_the_ca_setting_only(stack: Settings) -> None:
    tls = SecureAccess.of(stack).tls
    url = SchemaRegistryService(stack).tls_endpoint
    trusted = stack.model_copy(
        update={"schema_registry_url": url, "schema_registry_ca_file": tls.ca_cert}
    )
    registry = make_registry(trusted)
    assert isinstance(registry, ConfluentRegistry)
    registered = registry.latest(MEMORY_EVENT)
    assert registry.by_id(registered.id).schema == registered.schema
    wrong = trusted.model_copy(update={"schema_registry_ca_file": tls.other_ca_cert})
    with pytest.raises(SchemaRegistryError, match="CERTIFICATE_VERIFY_FAILED"):
        ConfluentRegistry(url, ssl_context=_context(wrong)).by_id(registered.id)


def _context(settings: Settings) -> ssl.SSLContext:
    return tls_context(
        "schema registry", "SCHEMA_REGISTRY", ca_file=settings.schema_registry_ca_file
    )
