"""Redis on loopback, without persistence, from the system's ``redis-server``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis

from consumers.settings import Settings
from consumers.stack.errors import StackError
from consumers.stack.packages import find_or_install
from consumers.stack.secure import REDIS_USER, SecureAccess
from consumers.stack.service import HOST, Service

_HINT = (
    "install redis-server (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
)


def find_redis_server() -> Path:
    """The ``redis-server`` binary, installed with apt-get when running as root on Debian."""
    return find_or_install("redis-server", "redis-server", _HINT)


class _RedisServer(Service):
    """A ``redis-server`` child process on loopback, no RDB/AOF, logging to its folder."""

    ready_timeout_s = 30.0
    stop_grace_s = 10.0

    @property
    def log_path(self) -> Path:
        """Redis's own log file."""
        return self.dir / "redis.log"

    def _argv(self, *own: str, data: Path) -> list[str]:
        """The command line: this server's own options, then what every one shares."""
        binary = find_redis_server()
        data.mkdir(parents=True, exist_ok=True)
        return [
            str(binary), *own,
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip

    async def _answers(self) -> bool:
        client = aioredis.Redis(host=HOST, port=self.port, socket_connect_timeout=2.0)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()


class RedisService(_RedisServer):
    """``redis-server`` on ``settings.redis_port``, no RDB/AOF, as a child process."""

    name = "redis"

    @property
    def port(self) -> int:
        """The loopback port of ``settings.redis_url``."""
        return self.settings.redis_port

    @property
    def endpoint(self) -> str:
        """The Redis URL of the local server."""
        return f"redis://{HOST}:{self.port}"

    def prepare(self) -> list[str]:
        """Find (or install) redis-server and return its command line."""
        return self._argv("--port", str(self.port), data=self.dir / "data")


class RedisTlsService(_RedisServer):
    """A second ``redis-server``: TLS only, client certificates required, one ACL user.

    What the tests of a secured deployment connect to (``SecureAccess``); the default user
    is off, so a client without the user's password is refused.
    """

    name = "redis-tls"

    @property
    def port(self) -> int:
        """The TLS port."""
        return self.settings.stack_redis_tls_port

    @property
    def endpoint(self) -> str:
        """The rediss:// URL of the server."""
        return SecureAccess.of(self.settings).redis_url

    def prepare(self) -> list[str]:
        """Find redis-server, make the TLS files, and return its command line."""
        secure = SecureAccess.of(self.settings)
        tls = secure.tls
        self.dir.mkdir(parents=True, exist_ok=True)
        acl = self.dir / "users.acl"
        acl.write_text(
            f"user default off\nuser {REDIS_USER} on >{secure.redis_password} ~* &* +@all\n"
        )
        acl.chmod(0o600)
        return self._argv(
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(tls.server_cert),
            "--tls-key-file", str(tls.server_key),
            "--tls-ca-cert-file", str(tls.ca_cert),
            "--tls-auth-clients", "yes",
            "--aclfile", str(acl),
            data=self.dir / "data",
        )  # fmt: skip

    async def _answers(self) -> bool:
        secure = SecureAccess.of(self.settings)
        tls = secure.tls
        client = aioredis.Redis(
            host=HOST,
            port=self.port,
            socket_connect_timeout=2.0,
            ssl=True,
            ssl_ca_certs=str(tls.ca_cert),
            ssl_certfile=str(tls.client_cert),
            ssl_keyfile=str(tls.client_key),
            username=REDIS_USER,
            password=secure.redis_password,
        )
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()


CLUSTER_NODES = 6  # three masters, each with one replica


class RedisClusterNode(_RedisServer):
    """One of the six ``redis-server --cluster-enabled`` processes of the stack's Redis
    Cluster (ports ``stack_redis_cluster_port`` + 0..5; cluster bus + 10000)."""

    def __init__(self, settings: Settings, index: int) -> None:
        super().__init__(settings)
        self.index = index

    @property
    def name(self) -> str:  # type: ignore[override]
        """``redis-cluster-<index>``."""
        return f"redis-cluster-{self.index}"

    @property
    def port(self) -> int:
        """This node's client port."""
        return self.settings.stack_redis_cluster_port + self.index

    @property
    def endpoint(self) -> str:
        """The node's address (clients discover the others from it)."""
        return f"redis://{HOST}:{self.port}"

    def prepare(self) -> list[str]:
        """Find redis-server and return this node's command line."""
        return self._argv(
            "--port", str(self.port),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            data=self.dir,
        )  # fmt: skip


def cluster_nodes(settings: Settings) -> list[RedisClusterNode]:
    """The six node services of the stack's cluster."""
    return [RedisClusterNode(settings, i) for i in range(CLUSTER_NODES)]


async def form_cluster(settings: Settings, timeout_s: float = 60.0) -> None:
    """Join the six nodes into a cluster (three masters, one replica each) unless they are,
    then wait until every slot is served (``cluster_state:ok``)."""
    nodes = cluster_nodes(settings)
    first = aioredis.Redis(host=HOST, port=nodes[0].port, socket_connect_timeout=2.0)
    try:
        info = await first.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_slots_assigned:16384" not in text:
            cli = shutil.which("redis-cli")
            if cli is None:
                raise StackError(f"redis-cli not found: {_HINT}")
            argv = [
                cli, "--cluster", "create",
                *(f"{HOST}:{n.port}" for n in nodes),
                "--cluster-replicas", "1", "--cluster-yes",
            ]  # fmt: skip
            done = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
                raise StackError(f"redis-cli --cluster create failed: {' | '.join(tail)}")
        deadline = time.monotonic() + timeout_s
        while True:
            info = await first.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" in text and await _replicas_attached(nodes):
                return
            if time.monotonic() > deadline:
                raise StackError(f"Redis Cluster not ready after {timeout_s:.0f}s: {text[:80]}")
            await asyncio.sleep(0.2)
    finally:
        await first.aclose()


async def _replicas_attached(nodes: list[RedisClusterNode]) -> bool:
    # Every master has its replica in sync, so a failover test starts from a full cluster.
    for node in nodes:
        client = aioredis.Redis(host=HOST, port=node.port, socket_connect_timeout=2.0)
        try:
            info = await client.info("replication")
        finally:
            await client.aclose()
        if info.get("role") == "master" and int(info.get("connected_slaves", 0)) < 1:
            return False
        if info.get("role") == "slave" and info.get("master_link_status") != "up":
            return False
    return True
