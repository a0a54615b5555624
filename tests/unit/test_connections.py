"""Every client is built from settings by consumers/connections.py, with its security."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest
from aiokafka.abc import AbstractTokenProvider

from consumers.connections import (
    kafka_options,
    load_token_provider,
    redis_options,
    temporal_options,
    tls_context,
)
from consumers.settings import Settings, SettingsError, unknown_variables
from consumers.stack.certs import ensure_tls_material

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
# The local stack's probes of its own plaintext services, and the factory itself.
ALLOWED = {"consumers/connections.py", "consumers/stack/kafka.py"}


class Token(AbstractTokenProvider):  # type: ignore[misc]
    """A token provider for the settings hook."""

    async def token(self) -> str:
        return "t"


def test_no_module_builds_a_kafka_client_but_the_factory() -> None:
    offenders = []
    for folder in ("consumers", "memory_core", "schemas", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", getattr(node.func, "attr", None))
                    if name in CLIENTS:
                        offenders.append(f"{rel}:{node.lineno} {name}")
    assert offenders == []


def test_plaintext_has_no_security_options() -> None:
    options = kafka_options(Settings(kafka_bootstrap="h:1"))
    assert options == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_scram_carries_credentials_and_a_verifying_context(tmp_path: Path) -> None:
    tls = ensure_tls_material(tmp_path / "tls")
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
        kafka_ssl_ca_file=tls.ca_cert,
        kafka_ssl_cert_file=tls.client_cert,
        kafka_ssl_key_file=tls.client_key,
    )
    options = kafka_options(settings)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("u", "p")
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_oauthbearer_loads_the_named_token_provider() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_sasl_oauth_token_provider=f"{__name__}:Token",
    )
    assert isinstance(kafka_options(settings)["sasl_oauth_token_provider"], Token)


@pytest.mark.parametrize(
    ("spec", "says"),
    [("no.such.module:x", "cannot import"), (f"{__name__}:ROOT", "not an aiokafka")],
)
def test_a_bad_token_provider_is_a_settings_error(spec: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        load_token_provider(spec)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "MEMSTREAM_KAFKA_SASL_MECHANISM is needed"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "needs MEMSTREAM_KAFKA_SECURITY_PROTOCOL"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
            "needs MEMSTREAM_KAFKA_SASL_USERNAME",
        ),
        ({"redis_ssl_certfile": "/c.pem"}, "client certificate and key go together"),
    ],
)
def test_settings_that_do_not_go_together_are_refused(values: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings(**values)  # type: ignore[arg-type]


def test_unknown_variables_name_the_closest_setting() -> None:
    env = {
        "MEMSTREAM_REDIS_PASWORD": "x",
        "MEMSTREAM_KAFKA_BOOTSTRAP": "ok",
        "MEMSTREAM_TEST_ANYTHING": "belongs to the suite",
        "OTHER": "not ours",
    }
    assert unknown_variables(env) == [
        "MEMSTREAM_REDIS_PASWORD is not a memstream setting "
        "(did you mean MEMSTREAM_REDIS_PASSWORD?)"
    ]


def test_a_missing_ca_file_names_its_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="MEMSTREAM_KAFKA_SSL_CA_FILE: no such file"):
        tls_context("Kafka", "KAFKA_SSL", ca_file=tmp_path / "none.pem")


def test_a_wrong_key_for_the_client_certificate_says_so(tmp_path: Path) -> None:
    tls = ensure_tls_material(tmp_path / "tls")
    with pytest.raises(SettingsError, match="cannot load the client certificate"):
        tls_context(
            "Kafka", "KAFKA_SSL", ca_file=tls.ca_cert, cert_file=tls.client_cert,
            key_file=tls.server_key,
        )  # fmt: skip


def test_redis_tls_files_need_a_rediss_url(tmp_path: Path) -> None:
    tls = ensure_tls_material(tmp_path / "tls")
    with pytest.raises(SettingsError, match="not rediss://"):
        redis_options(Settings(redis_ssl_ca_certs=tls.ca_cert))
    options = redis_options(
        Settings(
            redis_url="rediss://h:1/0",
            redis_ssl_ca_certs=tls.ca_cert,
            redis_ssl_certfile=tls.client_cert,
            redis_ssl_keyfile=tls.client_key,
        )
    )
    assert options["ssl_certfile"] == str(tls.client_cert)


def test_temporal_tls_and_api_key(tmp_path: Path) -> None:
    tls = ensure_tls_material(tmp_path / "tls")
    assert "tls" not in temporal_options(Settings())
    options = temporal_options(
        Settings(
            temporal_tls_ca_file=tls.ca_cert,
            temporal_tls_cert_file=tls.client_cert,
            temporal_tls_key_file=tls.client_key,
            temporal_tls_server_name="temporal.example",
            temporal_api_key="k",
        )
    )
    assert options["tls"].server_root_ca_cert == tls.ca_cert.read_bytes()
    assert options["tls"].domain == "temporal.example"
    assert options["api_key"] == "k"
    assert temporal_options(Settings(temporal_api_key="k"))["tls"] is not None
