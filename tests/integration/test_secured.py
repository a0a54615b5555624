"""Secured connections against the stack's real secured services: Kafka over SASL_SSL
(SCRAM-SHA-512, OAUTHBEARER) and Redis over TLS with an ACL user and a client certificate;
wrong credentials, a wrong CA or a stopped service give the real CLI one line and an exit
code."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from aiokafka.abc import AbstractTokenProvider
from redis.exceptions import RedisError
from temporalio.client import Client

from consumers.bootstrap import build_app
from consumers.connections import kafka_admin, make_redis
from consumers.failures import ExitCode
from consumers.runner import Runner
from consumers.settings import Settings
from consumers.stack.secure import REDIS_USER, SecureAccess
from consumers.topics import ensure_topics, topic_names
from memory_core import AsyncSafeMemoryInstance, Kind, Role, WriteOutcomeStatus
from tests.cli import failure_line, run_cli


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class UnsecuredToken(AbstractTokenProvider):  # type: ignore[misc]
    """An unsigned JWT, which the stack's broker accepts (Kafka's unsecured validator)."""

    async def token(self) -> str:
        now = int(time.time())
        claims = {"sub": "memstream-oauth", "iat": now, "exp": now + 3600}
        return f"{_b64({'alg': 'none'})}.{_b64(claims)}."


@pytest.fixture
def secure(stack: Settings) -> SecureAccess:
    """The secured services of the running stack."""
    return SecureAccess.of(stack)


@pytest.fixture
async def secured_settings(pipeline_settings: Settings, secure: SecureAccess) -> Settings:
    """This test's settings with every Kafka and Redis connection secured; topics created."""
    secured = secure.settings(pipeline_settings)
    await ensure_topics(secured, topic_names(secured))
    return secured


async def test_the_pipeline_runs_end_to_end_over_sasl_ssl_and_redis_mtls(
    secured_settings: Settings,
) -> None:
    assert secured_settings.kafka_security_protocol == "SASL_SSL"
    async with build_app(secured_settings) as app:
        assert await app.redis.acl_whoami() == REDIS_USER  # the TLS server, as its ACL user
        config = app.catalog.config("chat")
        memory = AsyncSafeMemoryInstance(
            "agent:a1:user:secure", config, store=app.store, publisher=app.producer
        )
        async with Runner(app, ["apply"]):
            first = await memory.append(Role.USER, "over TLS", message_id="m1")
            second = await memory.append(Role.ASSISTANT, "still over TLS", message_id="m2")
        assert (first.status, second.status) == (WriteOutcomeStatus.APPLIED,) * 2
        assert [m.content for m in await memory.read()] == ["over TLS", "still over TLS"]


async def test_every_role_works_over_the_secured_services_a_flush_included(
    secured_settings: Settings, temporal_client: Client
) -> None:
    # The dispatcher consumes flush commands and the worker publishes the summary, both
    # over SASL_SSL; the worker's store writes over Redis mTLS.
    async with build_app(secured_settings) as app:
        config = app.catalog.config("chat")
        memory = AsyncSafeMemoryInstance(
            "agent:a1:user:secure-flush", config, store=app.store, publisher=app.producer
        )
        async with Runner(app, temporal=temporal_client):
            ids = [
                (await memory.append(Role.USER, f"message {i} over TLS")).message_id
                for i in range(4)
            ]
            await memory.flush()
            deadline = time.monotonic() + 60
            while True:
                snap = await app.store.read(memory.memory_key)
                if not snap.flush_pending and any(m.kind is Kind.SUMMARY for m in snap.messages):
                    break
                assert time.monotonic() < deadline, "no summary over the secured services"
                await asyncio.sleep(0.2)
        [summary] = [m for m in snap.messages if m.kind is Kind.SUMMARY]
        assert summary.covers == tuple(ids[:2])


async def test_an_oauthbearer_token_provider_named_in_settings_logs_in(
    secured_settings: Settings,
) -> None:
    oauth = secured_settings.model_copy(
        update={
            "kafka_sasl_mechanism": "OAUTHBEARER",
            "kafka_sasl_oauth_token_provider": f"{__name__}:UnsecuredToken",
        }
    )
    admin = kafka_admin(oauth)
    await admin.start()
    try:
        assert secured_settings.events_topic in await admin.list_topics()
    finally:
        await admin.close()


async def test_the_plaintext_listener_settings_cannot_reach_the_secured_redis(
    secure: SecureAccess, stack: Settings
) -> None:
    # Without the client certificate the TLS server refuses the connection.
    bare = secure.settings(stack).model_copy(
        update={"redis_ssl_certfile": None, "redis_ssl_keyfile": None}
    )
    client = make_redis(bare)
    try:
        with pytest.raises(RedisError):
            await client.ping()
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        ({"MEMSTREAM_KAFKA_SASL_PASSWORD": "wrong"}, ExitCode.KAFKA, "refused the SASL"),
        ("kafka-ca", ExitCode.KAFKA, "TLS certificate is not trusted"),
        ("kafka-no-cert", ExitCode.KAFKA, "may require a client certificate"),
        ({"MEMSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9"}, ExitCode.KAFKA, "is unreachable"),
        ({"MEMSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL"}, ExitCode.SETTINGS, "needs"),
    ],
    ids=["wrong-password", "wrong-ca", "no-client-cert", "stopped", "inconsistent"],
)
def test_a_kafka_failure_is_one_line_naming_kafka(
    secure: SecureAccess,
    pipeline_settings: Settings,
    change: dict[str, str] | str,
    code: ExitCode,
    says: str,
) -> None:
    env = {
        **secure.environment(),
        "MEMSTREAM_MEMORIES_FILE": str(pipeline_settings.memories_file),
    }
    if change == "kafka-ca":
        env["MEMSTREAM_KAFKA_SSL_CA_FILE"] = str(secure.tls.other_ca_cert)
    elif change == "kafka-no-cert":
        del env["MEMSTREAM_KAFKA_SSL_CERT_FILE"], env["MEMSTREAM_KAFKA_SSL_KEY_FILE"]
    else:
        assert isinstance(change, dict)
        env.update(change)
    done = run_cli(env, "append", "agent:a1:user:err", "--content", "hello")
    line = failure_line(done)
    assert done.returncode == code, line
    assert says in line
    assert line.startswith("memstream: Kafka" if code is ExitCode.KAFKA else "memstream: settings")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"MEMSTREAM_REDIS_PASSWORD": "wrong"}, "refused the login of user memstream"),
        ("redis-ca", "TLS certificate is not trusted"),
        ({"MEMSTREAM_REDIS_URL": "redis://127.0.0.1:9/0"}, "is unreachable"),
    ],
    ids=["wrong-password", "wrong-ca", "stopped"],
)
def test_a_redis_failure_is_one_line_naming_redis_and_show_needs_no_kafka(
    secure: SecureAccess, pipeline_settings: Settings, change: dict[str, str] | str, says: str
) -> None:
    env = {
        **secure.environment(),
        "MEMSTREAM_MEMORIES_FILE": str(pipeline_settings.memories_file),
        # show reads Redis only: a stopped Kafka must not matter.
        "MEMSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9",
    }
    if change == "redis-ca":
        env["MEMSTREAM_REDIS_SSL_CA_CERTS"] = str(secure.tls.other_ca_cert)
    else:
        assert isinstance(change, dict)
        if "MEMSTREAM_REDIS_URL" in change:
            for name in ("CA_CERTS", "CERTFILE", "KEYFILE"):
                env.pop(f"MEMSTREAM_REDIS_SSL_{name}")
        env.update(change)
    done = run_cli(env, "show", "agent:a1:user:err")
    line = failure_line(done)
    assert done.returncode == ExitCode.REDIS, line
    assert line.startswith("memstream: Redis at ") and says in line


def test_show_over_the_secured_redis_works_while_kafka_is_down(
    secure: SecureAccess, pipeline_settings: Settings
) -> None:
    env = {
        **secure.environment(),
        "MEMSTREAM_MEMORIES_FILE": str(pipeline_settings.memories_file),
        "MEMSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9",
    }
    done = run_cli(env, "show", "agent:a1:user:nobody", "--json")
    # Redis answered over TLS (no such memory: exit 4), while Kafka is unreachable.
    assert done.returncode == 4, done.stderr
    assert "does not exist" in failure_line(done)


def test_an_unknown_variable_is_an_error_naming_the_closest_setting() -> None:
    done = run_cli({"MEMSTREAM_KAFKA_SECURTY_PROTOCOL": "SASL_SSL"}, "show", "agent:a1:user:x")
    line = failure_line(done)
    assert done.returncode == ExitCode.SETTINGS
    assert "MEMSTREAM_KAFKA_SECURTY_PROTOCOL is not a memstream setting" in line
    assert "did you mean MEMSTREAM_KAFKA_SECURITY_PROTOCOL?" in line


def test_debug_shows_the_traceback() -> None:
    done = run_cli({"MEMSTREAM_REDIS_URL": "redis://127.0.0.1:9/0"}, "show", "k:1", "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr
