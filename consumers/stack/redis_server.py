"""Redis on loopback, without persistence, from the system's ``redis-server``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from consumers.stack.errors import StackError
from consumers.stack.secure import REDIS_USER, SecureAccess
from consumers.stack.service import HOST, Service

_HINT = (
    "install redis-server (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
)


def find_redis_server() -> Path:
    """The ``redis-server`` binary, installed with apt-get when running as root on Debian."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise StackError(f"redis-server not found: {_HINT}")
    print("redis-server not found: running apt-get install -y redis-server", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        [apt, "update"],
        [apt, "install", "-y", "--no-install-recommends", "redis-server"],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            raise StackError(f"{' '.join(argv[1:])} failed ({'; '.join(tail)}): {_HINT}")
    found = shutil.which("redis-server")
    if not found:
        raise StackError(f"redis-server still missing after apt-get install: {_HINT}")
    return Path(found)


class RedisService(Service):
    """``redis-server`` on ``settings.redis_port``, no RDB/AOF, as a child process."""

    name = "redis"
    ready_timeout_s = 30.0
    stop_grace_s = 10.0

    @property
    def port(self) -> int:
        """The loopback port of ``settings.redis_url``."""
        return self.settings.redis_port

    @property
    def endpoint(self) -> str:
        """The Redis URL of the local server."""
        return f"redis://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Redis's own log file."""
        return self.dir / "redis.log"

    def prepare(self) -> list[str]:
        """Find (or install) redis-server and return its command line."""
        binary = find_redis_server()
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            str(binary),
            "--port", str(self.port),
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


class RedisTlsService(Service):
    """A second ``redis-server``: TLS only, client certificates required, one ACL user.

    What the tests of a secured deployment connect to (``SecureAccess``); the default user
    is off, so a client without the user's password is refused.
    """

    name = "redis-tls"
    ready_timeout_s = 30.0
    stop_grace_s = 10.0

    @property
    def port(self) -> int:
        """The TLS port."""
        return self.settings.stack_redis_tls_port

    @property
    def endpoint(self) -> str:
        """The rediss:// URL of the server."""
        return SecureAccess.of(self.settings).redis_url

    @property
    def log_path(self) -> Path:
        """Redis's own log file."""
        return self.dir / "redis.log"

    def prepare(self) -> list[str]:
        """Find redis-server, make the TLS files, and return its command line."""
        binary = find_redis_server()
        secure = SecureAccess.of(self.settings)
        tls = secure.tls
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        acl = self.dir / "users.acl"
        acl.write_text(
            f"user default off\nuser {REDIS_USER} on >{secure.redis_password} ~* &* +@all\n"
        )
        acl.chmod(0o600)
        return [
            str(binary),
            "--port", "0",
            "--tls-port", str(self.port),
            "--bind", HOST,
            "--tls-cert-file", str(tls.server_cert),
            "--tls-key-file", str(tls.server_key),
            "--tls-ca-cert-file", str(tls.ca_cert),
            "--tls-auth-clients", "yes",
            "--aclfile", str(acl),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip

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
