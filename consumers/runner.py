"""Runs the roles of one process: apply consumer, flush dispatcher, Temporal worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

from temporalio.client import Client
from temporalio.worker import Worker

from consumers.apply import ApplyConsumer
from consumers.bootstrap import App, build_app, connect_temporal
from consumers.dispatcher import FlushDispatcher
from consumers.lifecycle import Component
from consumers.settings import Settings
from consumers.telemetry import Telemetry
from consumers.topics import ensure_topics
from memory_core.temporal import create_worker

log = logging.getLogger(__name__)

ROLES = ("apply", "dispatch", "worker")


class Runner(Component):
    """Starts the chosen roles as tasks and stops them gracefully (drain within a bound)."""

    def __init__(
        self,
        app: App,
        roles: Iterable[str] = ROLES,
        *,
        temporal: Client | None = None,
        drain_timeout_s: float = 15.0,
    ) -> None:
        self.app = app
        self.roles = tuple(roles)
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; choose from {', '.join(ROLES)}")
        self._temporal = temporal
        self.drain_timeout_s = drain_timeout_s
        self.consumer: ApplyConsumer | None = None
        self.dispatcher: FlushDispatcher | None = None
        self.worker: Worker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Create topics if missing, then start every role."""
        settings, app = self.app.settings, self.app
        await ensure_topics(settings)
        if self._temporal is None and {"dispatch", "worker"} & set(self.roles):
            self._temporal = await connect_temporal(settings, app.telemetry)
        if "apply" in self.roles:
            self.consumer = ApplyConsumer(
                settings=settings,
                catalog=app.catalog,
                store=app.store,
                codec=app.codec,
                telemetry=app.telemetry,
            )
            await self.consumer.start()
            self._tasks.append(asyncio.create_task(self.consumer.run(self._stop)))
        if "dispatch" in self.roles:
            assert self._temporal is not None
            self.dispatcher = FlushDispatcher(
                settings=settings, client=self._temporal, codec=app.codec, telemetry=app.telemetry
            )
            await self.dispatcher.start()
            self._tasks.append(asyncio.create_task(self.dispatcher.run(self._stop)))
        if "worker" in self.roles:
            assert self._temporal is not None
            self.worker = create_worker(
                self._temporal,
                task_queue=settings.temporal_task_queue,
                activities=app.flush_activities(),
            )
            self._tasks.append(asyncio.create_task(self.worker.run()))

    async def stop(self) -> None:
        """Signal every role to stop; each finishes its in-flight batch first."""
        self._stop.set()
        if self.worker is not None:
            await self.worker.shutdown()
        done, pending = (
            await asyncio.wait(self._tasks, timeout=self.drain_timeout_s)
            if self._tasks
            else (set(), set())
        )
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("role task ended with %r", task.exception())
        if self.consumer is not None:
            await self.consumer.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        self._tasks.clear()


async def serve(
    settings: Settings, roles: Iterable[str], telemetry: Telemetry | None = None
) -> None:
    """Run ``roles`` until SIGTERM or SIGINT, then drain and exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with build_app(settings, telemetry) as app, Runner(app, roles):
        log.info("memstream running roles %s", ", ".join(roles))
        await stop.wait()
        log.info("memstream stopping")
