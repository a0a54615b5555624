"""Known failures as one line each (what failed, what to do) and a distinct exit code.

The CLI's one error handler (``consumers.cli.main``) asks ``describe`` about any exception a
command raised; an unknown one keeps its traceback. Kafka clients report every failed
bootstrap as "Unable to bootstrap", so ``diagnose_kafka`` connects once more, by hand, to
find out whether the broker was unreachable, its certificate untrusted or the login refused.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from enum import IntEnum

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, UnknownTopicOrPartitionError
from pydantic import ValidationError
from redis import exceptions as rx

from consumers.connections import kafka_options
from consumers.generations import MissingTopicError, TruncatedLogError
from consumers.settings import Settings, SettingsError
from memory_core import (
    ConfigError,
    ConfigErrors,
    EncodingUnavailableError,
    MemstreamError,
    StoreUnavailableError,
)
from schemas import SchemaRegistryError


class ExitCode(IntEnum):
    """Exit codes of known failures (1-3 are the commands' own: see the README)."""

    FAILED = 1
    SETTINGS = 10
    KAFKA = 11
    REDIS = 12
    TEMPORAL = 13
    MISSING_TOPIC = 14
    ENCODINGS = 15
    SCHEMA_REGISTRY = 16


@dataclass(frozen=True, slots=True)
class Failure:
    """One line for the operator and the process's exit code."""

    message: str
    code: ExitCode


def _leaves(exc: BaseException) -> list[BaseException]:
    """``exc``, the exceptions a group holds, and what each was raised from."""
    out: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
            continue
        out.append(e)
        if e.__cause__ is not None:
            stack.append(e.__cause__)
    return out


def _redis_line(settings: Settings, exc: BaseException) -> str:
    where = f"Redis at {_redact(settings.redis_url)}"
    text = str(exc)
    if isinstance(exc, rx.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        user = settings.redis_username or "default"
        return (
            f"{where} refused the login of user {user}: check MEMSTREAM_REDIS_USERNAME and "
            "MEMSTREAM_REDIS_PASSWORD"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"{where}: its TLS certificate is not trusted ({text.strip()}): check "
            "MEMSTREAM_REDIS_SSL_CA_CERTS"
        )
    if "SSL" in text or "TLS" in text:
        return (
            f"{where}: TLS failed ({text.strip()}): check MEMSTREAM_REDIS_SSL_CERTFILE and "
            "_KEYFILE (the server may require a client certificate) and the URL scheme"
        )
    return (
        f"{where} is unreachable ({text.strip()}): start it (memstream stack up) or set "
        "MEMSTREAM_REDIS_URL"
    )


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def describe(exc: BaseException, settings: Settings | None = None) -> Failure | None:
    """The one-line description of a known failure (None: unknown, keep the traceback)."""
    leaves = _leaves(exc)
    for e in leaves:
        if isinstance(e, SettingsError):
            return Failure(f"settings: {e}", ExitCode.SETTINGS)
        if isinstance(e, ValidationError):
            problems = "; ".join(
                f"MEMSTREAM_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                for err in e.errors()
            )
            return Failure(f"settings: {problems}", ExitCode.SETTINGS)
        if isinstance(e, ConfigErrors) or (
            # A command's own option (--memory-id) is the command's failure, not the file's.
            isinstance(e, ConfigError) and not e.field.startswith("--")
        ):
            return Failure(f"memories file: {e}", ExitCode.SETTINGS)
        if isinstance(e, EncodingUnavailableError):
            hint = "" if "encodings install" in str(e) else ": run `memstream encodings install`"
            return Failure(f"{e}{hint}", ExitCode.ENCODINGS)
        if isinstance(e, SchemaRegistryError):
            return Failure(f"{e}", ExitCode.SCHEMA_REGISTRY)
    s = settings or _settings()
    for e in leaves:
        if isinstance(e, MissingTopicError | UnknownTopicOrPartitionError):
            topic = e.topic if isinstance(e, MissingTopicError) else "a topic"
            return Failure(
                f"Kafka: {topic} does not exist: start `memstream run` once (it creates the "
                "topics) or check MEMSTREAM_EVENTS_TOPIC",
                ExitCode.MISSING_TOPIC,
            )
        if isinstance(e, TruncatedLogError):
            return Failure(
                f"Kafka: {e}: rebuild from the snapshots (without --no-snapshots), or from a "
                "copy of the whole log",
                ExitCode.MISSING_TOPIC,
            )
        if isinstance(e, KafkaConnectionError):
            return Failure(asyncio.run(diagnose_kafka(s)) if s else str(e), ExitCode.KAFKA)
        if isinstance(e, rx.ConnectionError | rx.TimeoutError | rx.AuthenticationError):
            return Failure(_redis_line(s, e) if s else str(e), ExitCode.REDIS)
    for e in leaves:
        if isinstance(e, StoreUnavailableError):
            return Failure(_redis_line(s, e) if s else str(e), ExitCode.REDIS)
        if isinstance(e, RuntimeError) and str(e).startswith("Failed client connect"):
            address = s.temporal_address if s else "Temporal"
            return Failure(
                f"Temporal at {address} is unreachable or refused the connection ({e}): start "
                "it (memstream stack up) or check MEMSTREAM_TEMPORAL_ADDRESS and _TLS_*",
                ExitCode.TEMPORAL,
            )
    for e in leaves:
        if isinstance(e, KafkaError):
            return Failure(f"Kafka: {e}", ExitCode.KAFKA)
        if isinstance(e, MemstreamError):
            return Failure(str(e), ExitCode.FAILED)
    return None


# Set by the CLI's --debug: known failures keep their tracebacks.
show_tracebacks = False


def one_line(exc: BaseException, code: int = 1, prefix: str = "") -> tuple[str, int]:
    """The line and exit code a command prints for ``exc``: a known service or settings
    failure's own, else ``prefix`` and ``exc`` itself with ``code``."""
    failure = describe(exc)
    if failure is not None and failure.code is not ExitCode.FAILED:
        return failure.message, int(failure.code)
    return f"{prefix}{exc}", code


def _settings() -> Settings | None:
    try:
        return Settings()
    except Exception:  # the settings' own failure was described already, or is not ours
        return None


async def diagnose_kafka(settings: Settings, timeout_s: float = 10.0) -> str:
    """Why no Kafka broker answered: unreachable, TLS refused or untrusted, login refused."""
    protocol = settings.kafka_security_protocol
    where = f"Kafka at {settings.kafka_bootstrap} ({protocol})"
    try:
        options = kafka_options(settings)
    except SettingsError as exc:
        return f"settings: {exc}"
    options.pop("bootstrap_servers")
    reasons = []
    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port), **options), timeout_s)
        except ssl.SSLCertVerificationError as exc:
            return (
                f"{where}: its TLS certificate is not trusted ({exc.verify_message}): check "
                "MEMSTREAM_KAFKA_SSL_CA_FILE (and _CHECK_HOSTNAME)"
            )
        except ssl.SSLError as exc:
            return f"{where}: TLS failed ({exc.reason or exc}): check the MEMSTREAM_KAFKA_SSL_*"
        except (ConnectionResetError, KafkaConnectionError) as exc:
            if isinstance(exc.__cause__, ConnectionRefusedError) or "refused" in str(exc):
                reasons.append(f"{address}: connection refused")
                continue
            hint = "does MEMSTREAM_KAFKA_SECURITY_PROTOCOL match the listener's?"
            if protocol in ("SSL", "SASL_SSL") and settings.kafka_ssl_cert_file is None:
                # TLS 1.3: a refused client certificate shows as a closed connection.
                hint = (
                    "the listener may require a client certificate (MEMSTREAM_KAFKA_SSL_CERT_FILE"
                    " and _KEY_FILE), or MEMSTREAM_KAFKA_SECURITY_PROTOCOL does not match it"
                )
            return (
                f"{where}: the listener closed the connection ({exc or type(exc).__name__}): {hint}"
            )
        except KafkaError as exc:
            if "Sasl" in type(exc).__name__ or "SASL" in str(exc):
                user = settings.kafka_sasl_username or "(token provider)"
                return (
                    f"{where} refused the SASL {settings.kafka_sasl_mechanism} login of {user}: "
                    "check MEMSTREAM_KAFKA_SASL_USERNAME, _PASSWORD and _MECHANISM"
                )
            return f"{where}: {exc}"
        except (OSError, TimeoutError) as exc:
            reasons.append(f"{address}: {exc or 'timed out'}")
            continue
        else:
            conn.close()
            return (
                f"{where} answered a direct connection but the client could not bootstrap: "
                "check the broker's advertised listeners"
            )
    return (
        f"{where} is unreachable ({'; '.join(reasons)}): start it (memstream stack up) or set "
        "MEMSTREAM_KAFKA_BOOTSTRAP"
    )
