"""How to reach the local stack's secured services: Kafka over SASL_SSL (SCRAM-SHA-512 and a
client certificate), Redis over TLS with an ACL user and a client certificate.

The stack serves them beside the plaintext ones, with TLS files and passwords made at the
first ``stack up`` (``stack_dir/tls``): the tests that prove every connection can be secured
run against them, and ``memstream stack status`` prints where they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.settings import Settings
from consumers.stack.certs import TlsMaterial, ensure_tls_material
from consumers.stack.service import HOST

KAFKA_USER = "memstream"
REDIS_USER = "memstream"


def tls_material(settings: Settings) -> TlsMaterial:
    """The stack's TLS files (generated on first use)."""
    return ensure_tls_material(settings.stack_dir / "tls")


@dataclass(frozen=True, slots=True)
class SecureAccess:
    """Endpoints and credentials of the secured local services."""

    tls: TlsMaterial
    kafka_bootstrap: str
    redis_url: str

    @classmethod
    def of(cls, settings: Settings) -> SecureAccess:
        """The secured services of the stack ``settings`` describe."""
        return cls(
            tls=tls_material(settings),
            kafka_bootstrap=f"{HOST}:{settings.stack_kafka_secure_port}",
            redis_url=f"rediss://{HOST}:{settings.stack_redis_tls_port}/0",
        )

    @property
    def kafka_password(self) -> str:
        """The SCRAM-SHA-512 password of ``KAFKA_USER``."""
        return self.tls.secret("kafka-password")

    @property
    def redis_password(self) -> str:
        """The ACL password of ``REDIS_USER``."""
        return self.tls.secret("redis-password")

    def settings(self, base: Settings) -> Settings:
        """``base`` with every Kafka and Redis connection going to the secured services."""
        return base.model_copy(
            update={
                "kafka_bootstrap": self.kafka_bootstrap,
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_sasl_username": KAFKA_USER,
                "kafka_sasl_password": self.kafka_password,
                "kafka_ssl_ca_file": self.tls.ca_cert,
                "kafka_ssl_cert_file": self.tls.client_cert,
                "kafka_ssl_key_file": self.tls.client_key,
                "redis_url": self.redis_url,
                "redis_username": REDIS_USER,
                "redis_password": self.redis_password,
                "redis_ssl_ca_certs": self.tls.ca_cert,
                "redis_ssl_certfile": self.tls.client_cert,
                "redis_ssl_keyfile": self.tls.client_key,
            }
        )

    def environment(self) -> dict[str, str]:
        """The same as ``MEMSTREAM_*`` variables (for a process such as the CLI)."""
        secured = self.settings(Settings())
        names = (
            "kafka_bootstrap",
            "kafka_security_protocol",
            "kafka_sasl_mechanism",
            "kafka_sasl_username",
            "kafka_sasl_password",
            "kafka_ssl_ca_file",
            "kafka_ssl_cert_file",
            "kafka_ssl_key_file",
            "redis_url",
            "redis_username",
            "redis_password",
            "redis_ssl_ca_certs",
            "redis_ssl_certfile",
            "redis_ssl_keyfile",
        )
        return {f"MEMSTREAM_{n.upper()}": str(getattr(secured, n)) for n in names}
