"""LocalStack: start, stop and check Kafka, Redis and Temporal as local processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection

from consumers.settings import Settings
from consumers.stack import locks
from consumers.stack.errors import StackError
from consumers.stack.jaeger import JaegerService
from consumers.stack.kafka import KafkaService
from consumers.stack.process import clean_stale, live_pid, read_pid, spawn, terminate
from consumers.stack.prometheus import PrometheusService
from consumers.stack.ready import tcp_open, wait_ready
from consumers.stack.redis_server import (
    RedisService,
    RedisTlsService,
    cluster_nodes,
    form_cluster,
)
from consumers.stack.registry import SchemaRegistryService
from consumers.stack.service import HOST, Service, ServiceStatus
from consumers.stack.temporal import TemporalService


class LocalStack:
    """Kafka, Redis and Temporal on loopback, data and logs under ``settings.stack_dir``.

    The sync methods run their ``*_async`` twin with ``asyncio.run``; inside a running
    event loop, await the twins instead.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        echo: Callable[[str], None] = print,
        only: Collection[str] | None = None,
    ) -> None:
        self._echo = echo
        self._lock_path = settings.stack_dir / ".lock"
        everything: tuple[Service, ...] = (
            KafkaService(settings),
            RedisService(settings),
            RedisTlsService(settings),
            TemporalService(settings),
            SchemaRegistryService(settings),
            PrometheusService(settings),
            JaegerService(settings),
            *cluster_nodes(settings),
        )
        # ``only``: a subset by name (a test's own Kafka, Redis and Temporal, say);
        # "redis-cluster" names its six nodes.
        if only is not None:
            names = {s.name for s in everything} | {"redis-cluster"}
            unknown = sorted(set(only) - names)
            if unknown:
                raise StackError(
                    f"unknown services {', '.join(unknown)}; choose from "
                    f"{', '.join(sorted(n for n in names if not n[-1].isdigit()))}"
                )

        def chosen(service: Service) -> bool:
            if only is None:
                return True
            return service.name in only or (
                "redis-cluster" in only and service.name.startswith("redis-cluster-")
            )

        self._services = tuple(s for s in everything if chosen(s))
        self._cluster = any(s.name.startswith("redis-cluster-") for s in self._services)
        self._settings = settings

    def up(self) -> list[ServiceStatus]:
        """Start whatever is not running, wait until all answer, and return their status."""
        return asyncio.run(self.up_async())

    def down(self) -> list[ServiceStatus]:
        """Stop the processes this stack started (from their pid files)."""
        return asyncio.run(self.down_async())

    def status(self) -> list[ServiceStatus]:
        """Which services answer, where, and which of them this stack started."""
        return asyncio.run(self.status_async())

    async def up_async(self) -> list[ServiceStatus]:
        """Async ``up``: every service is prepared and started in parallel, then awaited."""
        # Two concurrent `up`s (parallel test sessions) must not both start a service.
        lock = await asyncio.to_thread(locks.acquire, self._lock_path)
        try:
            results = await asyncio.gather(
                *(self._up_one(service) for service in self._services), return_exceptions=True
            )
        finally:
            locks.release(lock)
        statuses: list[ServiceStatus] = []
        failures: list[str] = []
        for service, result in zip(self._services, results, strict=True):
            if isinstance(result, StackError):
                failures.append(f"{service.name}: {result}")
            elif isinstance(result, BaseException):
                raise result
            else:
                statuses.append(result)
        if failures:
            raise StackError("\n".join(failures))
        if self._cluster:
            try:
                await form_cluster(self._settings)
            except StackError as exc:
                raise StackError(f"redis-cluster: {exc}") from None
        return statuses

    async def down_async(self) -> list[ServiceStatus]:
        """Async ``down``: SIGTERM each started process group, SIGKILL after a bound."""
        lock = await asyncio.to_thread(locks.acquire, self._lock_path)
        try:
            pids = await asyncio.gather(
                *(
                    asyncio.to_thread(terminate, s.pid_path, grace_s=s.stop_grace_s)
                    for s in self._services
                )
            )
        finally:
            locks.release(lock)
        for service, pid in zip(self._services, pids, strict=True):
            done = f"stopped (pid {pid})" if pid is not None else "was not running"
            self._echo(f"{service.name:<16}{done}")
        return await self.status_async()

    async def status_async(self) -> list[ServiceStatus]:
        """Async ``status``: probes all services concurrently."""
        answers = await asyncio.gather(*(s.probe() for s in self._services))
        return [
            self._status(service, up=up, pid=live_pid(service.pid_path))
            for service, up in zip(self._services, answers, strict=True)
        ]

    async def _up_one(self, service: Service) -> ServiceStatus:
        began = time.monotonic()
        pid = clean_stale(service.pid_path)
        if pid is None:
            if await service.probe():
                status = self._status(service, up=True, pid=None)
                self._echo(f"{status.describe()}  (already answering; left alone)")
                return status
            if await tcp_open(HOST, service.port):
                raise StackError(
                    f"port {service.port} is taken by a process that does not answer as "
                    f"{service.name}; free it or change the port in settings"
                )
            argv = await asyncio.to_thread(service.prepare)
            pid = spawn(
                argv, console=service.console_path, pid_path=service.pid_path, env=service.env()
            )
            how = "started"
        else:
            how = "already running"
        record = read_pid(service.pid_path)
        if record is None:
            raise StackError(f"pid file {service.pid_path} vanished while starting")
        await wait_ready(
            service.name,
            service.probe,
            record=record,
            timeout_s=service.ready_timeout_s,
            logs=(service.console_path, service.log_path),
        )
        await service.after_ready()
        status = self._status(service, up=True, pid=pid)
        self._echo(f"{status.describe()}  ({how}, {time.monotonic() - began:.1f}s)")
        return status

    @staticmethod
    def _status(service: Service, *, up: bool, pid: int | None) -> ServiceStatus:
        return ServiceStatus(
            name=service.name,
            up=up,
            endpoint=service.endpoint,
            log_path=service.log_path,
            pid=pid,
        )
