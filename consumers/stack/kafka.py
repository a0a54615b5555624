"""A single-node KRaft Kafka broker run from the Maven jars."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from consumers.stack.errors import StackError
from consumers.stack.maven import ensure_kafka_jars
from consumers.stack.secure import KAFKA_USER, SecureAccess
from consumers.stack.service import HOST, Service

_JAVA_HINT = "java not found: install openjdk-17-jre-headless (any Java 17+)"


def find_java() -> Path:
    """The ``java`` launcher on PATH."""
    found = shutil.which("java")
    if found is None:
        raise StackError(_JAVA_HINT)
    return Path(found)


class KafkaService(Service):
    """Kafka (broker + controller in one JVM) on ``settings.kafka_port``."""

    name = "kafka"
    ready_timeout_s = 90.0
    stop_grace_s = 30.0

    @property
    def port(self) -> int:
        """The PLAINTEXT listener port."""
        return self.settings.kafka_port

    @property
    def endpoint(self) -> str:
        """The bootstrap address."""
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's ``server.log``."""
        return self.dir / "logs" / "server.log"

    @property
    def data_dir(self) -> Path:
        """The KRaft log directory (metadata and topic data)."""
        return self.dir / "data"

    def prepare(self) -> list[str]:
        """Fetch the jars, write the config, format storage once; return the broker's argv."""
        java = find_java()
        libs = ensure_kafka_jars(self.settings.cache_dir, self.settings.kafka_version)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        config = self.dir / "server.properties"
        config.write_text(self._server_properties())
        log4j = self.dir / "log4j.properties"
        log4j.write_text(
            resources.files("consumers.stack").joinpath("log4j.properties").read_text()
        )
        classpath = [str(java), "-cp", f"{libs}/*"]
        if not (self.data_dir / "meta.properties").exists():
            self._format(classpath, config)
        heap = self.settings.kafka_heap_mb
        return [
            str(java),
            f"-Xms{min(512, heap)}m",
            f"-Xmx{heap}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            f"-Dlog4j.configuration=file:{log4j}",
            "-cp", f"{libs}/*",
            "kafka.Kafka", str(config),
        ]  # fmt: skip

    async def _answers(self) -> bool:
        await _list_topics(self.endpoint, timeout_ms=int(self.probe_timeout_s * 1000))
        return True

    async def after_ready(self) -> None:
        """Add the secured listener's SCRAM user (once per password and broker data: the
        broker keeps it in its metadata, gone with its data directory)."""
        secure = SecureAccess.of(self.settings)
        password = secure.kafka_password
        marker = self.dir / "scram-user"
        meta = self.data_dir / "meta.properties"
        cluster = meta.read_text() if meta.exists() else ""
        digest = hashlib.sha256(f"{password}\n{cluster}".encode()).hexdigest()
        if marker.exists() and marker.read_text().strip() == digest:
            return
        java = find_java()
        libs = ensure_kafka_jars(self.settings.cache_dir, self.settings.kafka_version)
        argv = [
            str(java), "-cp", f"{libs}/*", "kafka.admin.ConfigCommand",
            "--bootstrap-server", self.endpoint,
            "--alter", "--entity-type", "users", "--entity-name", KAFKA_USER,
            "--add-config", f"SCRAM-SHA-512=[iterations=4096,password={password}]",
        ]  # fmt: skip
        await asyncio.to_thread(_java, argv)
        marker.write_text(digest + "\n")

    def _server_properties(self) -> str:
        ctl = self.settings.kafka_controller_port
        secure_port = self.settings.stack_kafka_secure_port
        tls = SecureAccess.of(self.settings).tls
        sasl = "listener.name.sasl_ssl"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{ctl}",
            "listeners": (
                f"PLAINTEXT://{HOST}:{self.port},SASL_SSL://{HOST}:{secure_port},"
                f"CONTROLLER://{HOST}:{ctl}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://{HOST}:{self.port},SASL_SSL://{HOST}:{secure_port}"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL"
            ),
            # The secured listener: TLS (the stack's CA), SCRAM-SHA-512 users, and OAUTHBEARER
            # with Kafka's unsecured-token validator (it checks a token's claims, not a
            # signature: enough to test a token provider, never for production).
            f"{sasl}.sasl.enabled.mechanisms": "SCRAM-SHA-512,OAUTHBEARER",
            f"{sasl}.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            f"{sasl}.oauthbearer.sasl.jaas.config": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
            ),
            f"{sasl}.ssl.keystore.type": "PKCS12",
            f"{sasl}.ssl.keystore.location": str(tls.server_keystore),
            f"{sasl}.ssl.keystore.password": tls.keystore_password,
            f"{sasl}.ssl.key.password": tls.keystore_password,
            # mTLS too: a client must present a certificate of the stack's CA.
            f"{sasl}.ssl.client.auth": "required",
            f"{sasl}.ssl.truststore.type": "PEM",
            f"{sasl}.ssl.truststore.location": str(tls.ca_cert),
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "-1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        body = "\n".join(f"{key}={value}" for key, value in props.items())
        return f"# Written by memstream's local stack on every start; edits are lost.\n{body}\n"

    def _format(self, classpath: list[str], config: Path) -> None:
        # The cluster id is kept beside the data so a re-format after a lost
        # meta.properties still matches what the rest of the folder was made with.
        id_file = self.dir / "cluster-id"
        if not id_file.exists():
            made = _java([*classpath, "kafka.tools.StorageTool", "random-uuid"])
            id_file.write_text(made.stdout.strip().splitlines()[-1] + "\n")
        cluster_id = id_file.read_text().strip()
        tool = ["kafka.tools.StorageTool", "format", "-g", "-t", cluster_id, "-c", str(config)]
        _java([*classpath, *tool])


def _java(argv: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise StackError(f"{' '.join(argv[3:5])} failed: {' | '.join(tail)}")
    return done


async def _list_topics(bootstrap: str, timeout_ms: int) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()
