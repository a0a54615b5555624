"""Every client of Kafka, Redis, Temporal and the schema registry, built from settings.

One factory per service, so no client is built without the security settings: a module that
needs a Kafka producer calls ``kafka_producer(settings, ...)``, never ``AIOKafkaProducer``
(``tests/unit/test_connections.py`` checks the source for that).
"""

from __future__ import annotations

import importlib
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from consumers.settings import Settings, SettingsError
from memory_core.redis import use_hiredis_packing
from schemas import ConfluentRegistry, EmbeddedRegistry, SchemaRegistry

if TYPE_CHECKING:
    from temporalio.client import Interceptor


def _file(setting: str, path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise SettingsError(f"MEMSTREAM_{setting}: no such file {path}")
    return str(path)


def tls_context(
    service: str,
    prefix: str,
    *,
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    key_password: str | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client TLS context: the system CAs or ``ca_file``, and a client certificate (mTLS).

    ``prefix`` names the settings in errors (``KAFKA_SSL`` gives ``MEMSTREAM_KAFKA_SSL_...``).
    """
    ctx = ssl.create_default_context(cafile=_file(f"{prefix}_CA_FILE", ca_file))
    ctx.check_hostname = check_hostname
    cert = _file(f"{prefix}_CERT_FILE", cert_file)
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, _file(f"{prefix}_KEY_FILE", key_file), key_password)
        except ssl.SSLError as exc:
            raise SettingsError(
                f"{service}: cannot load the client certificate {cert} with its key "
                f"(wrong key or key password?): {exc.reason or exc}"
            ) from exc
    return ctx


# -- Kafka ------------------------------------------------------------------------------------


def load_token_provider(spec: str) -> AbstractTokenProvider:
    """The OAUTHBEARER token provider named ``package.module:name`` (a class or a factory)."""
    module_name, _, attr = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SettingsError(
            f"MEMSTREAM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER={spec}: cannot import it ({exc}); "
            "give it as package.module:name"
        ) from exc
    provider = target() if callable(target) else target
    if not isinstance(provider, AbstractTokenProvider):
        raise SettingsError(
            f"MEMSTREAM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER={spec} gave a "
            f"{type(provider).__name__}, not an aiokafka.abc.AbstractTokenProvider"
        )
    return provider


def kafka_options(settings: Settings) -> dict[str, Any]:
    """The connection and security arguments every aiokafka client takes."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = tls_context(
            "Kafka",
            "KAFKA_SSL",
            ca_file=settings.kafka_ssl_ca_file,
            cert_file=settings.kafka_ssl_cert_file,
            key_file=settings.kafka_ssl_key_file,
            key_password=settings.kafka_ssl_key_password,
            check_hostname=settings.kafka_ssl_check_hostname,
        )
    mechanism = settings.kafka_sasl_mechanism
    if mechanism is not None:
        options["sasl_mechanism"] = mechanism
        if mechanism == "OAUTHBEARER":
            assert settings.kafka_sasl_oauth_token_provider is not None  # settings checked it
            options["sasl_oauth_token_provider"] = load_token_provider(
                settings.kafka_sasl_oauth_token_provider
            )
        else:
            options["sasl_plain_username"] = settings.kafka_sasl_username
            options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def kafka_producer(settings: Settings, **kwargs: Any) -> AIOKafkaProducer:
    """An aiokafka producer for ``settings``' cluster (``kwargs``: producer options)."""
    return AIOKafkaProducer(**kafka_options(settings), **kwargs)


def kafka_consumer(settings: Settings, *topics: str, **kwargs: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer for ``settings``' cluster, subscribed to ``topics`` if any."""
    return AIOKafkaConsumer(*topics, **kafka_options(settings), **kwargs)


def kafka_admin(settings: Settings, **kwargs: Any) -> AIOKafkaAdminClient:
    """An aiokafka admin client for ``settings``' cluster."""
    return AIOKafkaAdminClient(**kafka_options(settings), **kwargs)


# -- Redis ------------------------------------------------------------------------------------


def redis_options(settings: Settings) -> dict[str, Any]:
    """Connection arguments of a Redis client: timeouts, ACL user and password, TLS files."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "decode_responses": False,
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password
    tls_files = (
        settings.redis_ssl_ca_certs,
        settings.redis_ssl_certfile,
        settings.redis_ssl_keyfile,
    )
    if settings.redis_url.startswith("rediss://"):
        options["ssl_ca_certs"] = _file("REDIS_SSL_CA_CERTS", settings.redis_ssl_ca_certs)
        options["ssl_certfile"] = _file("REDIS_SSL_CERTFILE", settings.redis_ssl_certfile)
        options["ssl_keyfile"] = _file("REDIS_SSL_KEYFILE", settings.redis_ssl_keyfile)
        options["ssl_password"] = settings.redis_ssl_key_password
        options["ssl_check_hostname"] = settings.redis_ssl_check_hostname
    elif any(f is not None for f in tls_files):
        raise SettingsError(
            "MEMSTREAM_REDIS_SSL_* files are set but MEMSTREAM_REDIS_URL is not rediss:// "
            "(TLS): use rediss://host:port/db"
        )
    return options


def make_redis(settings: Settings) -> Redis | RedisCluster:
    """A Redis client from settings: a bounded pool that waits for a free connection, or a
    Redis Cluster client (``redis_cluster``) that discovers the nodes from the URL's."""
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            **redis_options(settings),
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,
        **redis_options(settings),
    )
    return Redis.from_pool(use_hiredis_packing(pool))


# -- Temporal ---------------------------------------------------------------------------------


def temporal_options(
    settings: Settings, interceptors: list[Interceptor] | None = None
) -> dict[str, Any]:
    """Arguments of ``temporalio.client.Client.connect``: address, namespace, TLS, API key."""
    from temporalio.service import TLSConfig

    options: dict[str, Any] = {
        "target_host": settings.temporal_address,
        "namespace": settings.temporal_namespace,
    }
    if interceptors:
        options["interceptors"] = interceptors
    if settings.temporal_uses_tls:

        def read(setting: str, path: Path | None) -> bytes | None:
            name = _file(setting, path)
            return None if name is None else Path(name).read_bytes()

        options["tls"] = TLSConfig(
            server_root_ca_cert=read("TEMPORAL_TLS_CA_FILE", settings.temporal_tls_ca_file),
            domain=settings.temporal_tls_server_name,
            client_cert=read("TEMPORAL_TLS_CERT_FILE", settings.temporal_tls_cert_file),
            client_private_key=read("TEMPORAL_TLS_KEY_FILE", settings.temporal_tls_key_file),
        )
    if settings.temporal_api_key:
        options["api_key"] = settings.temporal_api_key
    return options


# -- Schema registry --------------------------------------------------------------------------


def make_registry(settings: Settings) -> SchemaRegistry:
    """The Confluent-compatible registry when configured (basic auth, TLS CA), else embedded."""
    if not settings.schema_registry_url:
        return EmbeddedRegistry()
    context = None
    if settings.schema_registry_url.startswith("https://"):
        context = tls_context(
            "schema registry", "SCHEMA_REGISTRY", ca_file=settings.schema_registry_ca_file
        )
    auth = None
    if settings.schema_registry_username:
        auth = (settings.schema_registry_username, settings.schema_registry_password or "")
    return ConfluentRegistry(settings.schema_registry_url, auth=auth, ssl_context=context)
