"""Temporal over TLS and mTLS, as the settings configure it, against the stack's real
Temporal server. The dev server speaks only plaintext, so a TLS terminator in front of it
(as an ingress or a service mesh would be) holds the stack's server certificate and asks
for a client certificate; everything behind it is the real server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from consumers.bootstrap import connect_temporal
from consumers.connections import temporal_options
from consumers.settings import Settings
from consumers.stack.secure import SecureAccess
from consumers.telemetry import Telemetry
from tests.ports import free_port_block


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture
async def tls_temporal(stack: Settings) -> AsyncIterator[str]:
    """``host:port`` of a TLS (client certificate required) endpoint of the stack's Temporal."""
    tls = SecureAccess.of(stack).tls
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca_cert))
    context.load_cert_chain(str(tls.server_cert), str(tls.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])  # gRPC
    host, port = stack.temporal_address.rsplit(":", 1)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    listen = free_port_block(1)
    server = await asyncio.start_server(serve, "127.0.0.1", listen, ssl=context)
    try:
        yield f"127.0.0.1:{listen}"
    finally:
        server.close()
        await server.wait_closed()


def _secured(stack: Settings, address: str, **overrides: object) -> Settings:
    tls = SecureAccess.of(stack).tls
    values: dict[str, object] = {
        "temporal_address": address,
        "temporal_tls_ca_file": tls.ca_cert,
        "temporal_tls_cert_file": tls.client_cert,
        "temporal_tls_key_file": tls.client_key,
        "temporal_tls_server_name": "localhost",
    }
    values.update(overrides)
    return stack.model_copy(update=values)


async def test_the_client_connects_over_mtls_with_the_settings(
    stack: Settings, tls_temporal: str
) -> None:
    settings = _secured(stack, tls_temporal)
    client = await asyncio.wait_for(connect_temporal(settings, Telemetry()), 30)
    assert await client.service_client.check_health()


@pytest.mark.parametrize(
    "wrong",
    [
        {"temporal_tls_ca_file": "other"},
        {"temporal_tls_cert_file": None, "temporal_tls_key_file": None},
    ],
    ids=["untrusted-server", "no-client-certificate"],
)
async def test_a_wrong_ca_or_a_missing_client_certificate_is_refused(
    stack: Settings, tls_temporal: str, wrong: dict[str, object]
) -> None:
    if wrong.get("temporal_tls_ca_file") == "other":
        wrong = {"temporal_tls_ca_file": SecureAccess.of(stack).tls.other_ca_cert}
    settings = _secured(stack, tls_temporal, **wrong)
    options = temporal_options(settings)
    with pytest.raises(RuntimeError, match="connect"):
        client = await asyncio.wait_for(Client.connect(**options), 30)
        # A client without a certificate may get as far as the first call.
        await client.service_client.check_health()
