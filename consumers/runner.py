"""Runs the roles of one process: apply consumer, flush dispatcher, Temporal worker, HTTP
API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from consumers.apply import ApplyConsumer
from consumers.bootstrap import App, build_app, connect_temporal
from consumers.health import Check, HealthServer, Probes, timed
from consumers.lifecycle import Component
from consumers.settings import Settings, SettingsError
from consumers.telemetry import Telemetry
from consumers.topics import ensure_topics
from memory_core import MemstreamError

if TYPE_CHECKING:
    # Imported by the roles that use them: an apply-only process never loads the Temporal
    # SDK (~35 MiB, docs/decisions/0011).
    from temporalio.client import Client
    from temporalio.worker import Worker

    from consumers.dispatcher import FlushDispatcher

log = logging.getLogger(__name__)

ROLES = ("apply", "dispatch", "worker", "http")
# What `memstream run` runs without --roles: the pipeline (the HTTP API needs its API keys).
DEFAULT_ROLES = ("apply", "dispatch", "worker")


class RoleFailedError(MemstreamError):
    """A role ended while the process was not stopping; the process must exit non-zero."""

    def __init__(self, role: str, cause: BaseException | None) -> None:
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else "it returned"
        super().__init__(f"role {role} ended unexpectedly ({detail})")
        self.role = role
        self.__cause__ = cause


class Runner(Component):
    """Starts the chosen roles as tasks and stops them gracefully (drain within a bound).

    A role that ends on its own (an exception, or returning while the runner is not
    stopping) is logged at once and stops the other roles; ``failure`` then holds a
    ``RoleFailedError``, which ``wait`` and ``run`` raise.
    """

    def __init__(
        self,
        app: App,
        roles: Iterable[str] = DEFAULT_ROLES,
        *,
        temporal: Client | None = None,
        drain_timeout_s: float = 15.0,
        http: HealthServer | None = None,
    ) -> None:
        self.app = app
        self.roles = tuple(roles)
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; choose from {', '.join(ROLES)}")
        self._temporal = temporal
        self.drain_timeout_s = drain_timeout_s
        # The server of the http role (the API, on the health port), started by its owner.
        self.http = http
        self.consumer: ApplyConsumer | None = None
        self.dispatcher: FlushDispatcher | None = None
        self.worker: Worker | None = None
        self.failure: RoleFailedError | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._started = False
        self.started = asyncio.Event()  # set once every role runs

    async def start(self) -> None:
        """Create topics if missing, wait for Temporal if a role needs it, start every role."""
        settings, app = self.app.settings, self.app
        app.telemetry.add_role_source(self.live_roles)
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
                # Freezing a batch's survivors would freeze the Temporal SDK's objects too,
                # whose workflow evictions wait for the collector: only an apply-only process
                # freezes (docs/decisions/0011).
                freeze_survivors=set(self.roles) == {"apply"},
            )
            await self.consumer.start()
            self._spawn("apply", self.consumer.run(self._stop))
        if "dispatch" in self.roles:
            from consumers.dispatcher import FlushDispatcher

            assert self._temporal is not None
            self.dispatcher = FlushDispatcher(
                settings=settings, client=self._temporal, codec=app.codec, telemetry=app.telemetry
            )
            await self.dispatcher.start()
            self._spawn("dispatch", self.dispatcher.run(self._stop))
        if "worker" in self.roles:
            assert self._temporal is not None
            self._spawn("worker", self._work(self._temporal))
        if "http" in self.roles:
            if self.http is None:
                raise RuntimeError("the http role needs its server (Runner(http=...))")
            self._spawn("http", self._serve_http(self.http))
        self._started = True
        self.started.set()

    # -- health ----------------------------------------------------------------------------

    def probes(self) -> Probes:
        """What ``/healthz`` and ``/readyz`` ask this runner (consumers/health.py)."""
        ready: list[Callable[[], Awaitable[Check]]] = [self._check_started]
        if {"apply", "worker", "http"} & set(self.roles):
            ready.append(lambda: timed("redis", self.app.redis.ping))
        if {"dispatch", "worker"} & set(self.roles):
            ready.append(self._check_temporal)
        if "apply" in self.roles:
            ready.append(self._check_partitions)
            ready.append(self._check_restoring)
            if self.app.settings.ready_max_lag is not None:
                ready.append(self._check_lag)
        return Probes(live=self.live_roles, ready=ready)

    def live_roles(self) -> dict[str, bool]:
        """Each role: alive (running, or not started yet while the runner starts)."""
        if self.failure is not None:
            return {r: r != self.failure.role for r in self.roles}
        return {r: r not in self._tasks or not self._tasks[r].done() for r in self.roles}

    async def _check_started(self) -> Check:
        if self._started:
            return Check("roles", True)
        waiting = " (waiting for Temporal)" if self._temporal is None else ""
        return Check("roles", False, f"starting{waiting}")

    async def _check_temporal(self) -> Check:
        if self._temporal is None:
            return Check(
                "temporal", False, f"not connected to {self.app.settings.temporal_address}"
            )
        return await timed("temporal", lambda: temporal_answers(self._temporal))  # type: ignore[arg-type]

    async def _check_partitions(self) -> Check:
        assigned = self.consumer.assignment if self.consumer is not None else frozenset()
        if assigned:
            return Check("apply.partitions", True, f"{len(assigned)} assigned")
        return Check(
            "apply.partitions",
            False,
            "none assigned (joining, or more apply consumers than partitions)",
        )

    async def _check_restoring(self) -> Check:
        restoring = self.consumer.restoring if self.consumer is not None else frozenset()
        if not restoring:
            return Check("apply.restore", True)
        names = ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(restoring))
        return Check("apply.restore", False, f"restoring {names} from the log (Redis lost it)")

    async def _check_lag(self) -> Check:
        bound = self.app.settings.ready_max_lag
        assert bound is not None
        lag = self.consumer.lag() if self.consumer is not None else {}
        worst = max(lag.values(), default=0)
        detail = f"max {worst} records behind (bound {bound})"
        return Check("apply.lag", worst <= bound, detail)

    async def run(self, stop: asyncio.Event) -> None:
        """Start (waiting for Temporal as long as it takes), then run until ``stop`` is set.

        ``stop`` also ends the wait for Temporal. Raises ``RoleFailedError`` as soon as a role
        ends on its own; call ``stop()`` afterwards in every case.
        """
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        if starting.cancelled():
            return
        starting.result()
        log.info("memstream running roles %s", ", ".join(self.roles))
        await self.wait(stop)

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Until ``stop`` is set or the runner stops; raises ``RoleFailedError`` if a role died."""
        waiters = {asyncio.create_task(self._stop.wait())}
        if stop is not None:
            waiters.add(asyncio.create_task(stop.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self.failure is not None:
            raise self.failure

    async def stop(self) -> None:
        """Signal every role to stop; each finishes its in-flight batch first."""
        self._stop.set()
        self.app.telemetry.remove_role_source(self.live_roles)
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
            for task in pending:
                log.warning(
                    "role task %s did not drain in %.0fs", task.get_name(), self.drain_timeout_s
                )
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        self._tasks.clear()

    def _spawn(self, role: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"memstream-{role}")
        task.add_done_callback(functools.partial(self._ended, role))
        self._tasks[role] = task

    def _ended(self, role: str, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if self._stop.is_set():
            if error is not None:
                log.error("role %s failed while stopping: %r", role, error, exc_info=error)
            return
        # Never a live process doing nothing: one dead role stops them all.
        self.failure = RoleFailedError(role, error)
        log.error("%s; stopping the other roles", self.failure, exc_info=error)
        self._stop.set()

    async def _serve_http(self, server: HealthServer) -> None:
        """The http role: alive while its server serves; stopped with the others."""
        serving = asyncio.create_task(server.wait())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            serving.cancel()
        if not self._stop.is_set():
            raise RuntimeError(f"the HTTP server on {server.address} stopped")

    def summary(self) -> str:
        """One line: the roles, and the partitions the apply consumer holds."""
        parts = [f"roles {','.join(self.roles)}"]
        if self.http is not None:
            parts.append(f"http {self.http.address}")
        if self.consumer is not None:
            assigned = sorted(self.consumer.assignment)
            topics = sorted({tp.topic for tp in assigned})
            numbers = ",".join(str(tp.partition) for tp in assigned)
            held = f"{' '.join(topics)} [{numbers}]" if assigned else "none yet"
            parts.append(f"partitions {held}")
        return "memstream running: " + "; ".join(parts)

    async def _work(self, client: Client) -> None:
        """The worker role: polls until stopped; a worker ended by an outage is replaced."""
        from consumers.flush_metrics import FlushMetrics
        from memory_core.temporal import create_worker

        settings = self.app.settings
        while not self._stop.is_set():
            worker = create_worker(
                client,
                task_queue=settings.temporal_task_queue,
                activities=self.app.flush_activities(),
                interceptors=[FlushMetrics(self.app.telemetry)],
            )
            self.worker = worker
            running = asyncio.create_task(worker.run(), name="memstream-temporal-worker")
            stopping = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                running.cancel()
                raise
            finally:
                stopping.cancel()
            if not running.done():
                await worker.shutdown()
                await running
                return
            error = running.exception()
            if error is None or self._stop.is_set() or await temporal_answers(client):
                running.result()
                return
            # The SDK's pollers ride out short outages; a worker that ended is replaced.
            log.warning(
                "Temporal worker ended while Temporal at %s is unreachable (%s); "
                "waiting for Temporal to poll again",
                settings.temporal_address,
                error,
            )
            await self._until_answers(client)

    async def _until_answers(self, client: Client) -> None:
        backoff = 0.5
        while not self._stop.is_set() and not await temporal_answers(client):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)


async def temporal_answers(client: Client) -> bool:
    """Whether the Temporal frontend of ``client`` answers a health check now."""
    from temporalio.service import RPCError

    try:
        return await client.service_client.check_health(timeout=timedelta(seconds=2))
    except (RPCError, RuntimeError):
        return False


async def serve(
    settings: Settings,
    roles: Iterable[str],
    telemetry: Telemetry | None = None,
    *,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Run ``roles`` until SIGTERM or SIGINT, then drain and return.

    Waits for Temporal when a role needs it and it is down (SIGTERM ends the wait). Raises
    ``RoleFailedError`` once a role ended on its own (after stopping the others).
    ``on_started`` gets ``Runner.summary()`` once every role runs and the apply consumer
    holds partitions (or after a few seconds without).
    """
    roles = tuple(roles)
    if "http" in roles and settings.http_auth == "api_keys" and not settings.api_keys:
        raise SettingsError(
            "the http role needs MEMSTREAM_API_KEYS (a JSON list of {name, key, resources, "
            "key_prefixes}), or MEMSTREAM_HTTP_AUTH=none for local development"
        )
    port = settings.health_port
    if port is None and "http" in roles:
        port = settings.http_default_port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    own = telemetry is None
    if telemetry is None:
        # /metrics on the health port when it is served.
        telemetry = Telemetry.from_environment(prometheus=port is not None)
    try:
        async with build_app(settings, telemetry) as app:
            runner = Runner(app, roles)
            server = None
            if port is not None:
                probes = runner.probes()
                probes.metrics = telemetry.prometheus
                api = None
                if "http" in roles:
                    from consumers.api import build_api

                    api = build_api(app, probes)
                server = HealthServer(probes, host=settings.health_host, port=port, app=api)
                await server.start()
                runner.http = server
            announcing = (
                asyncio.create_task(_announce(runner, on_started))
                if on_started is not None
                else None
            )
            try:
                await runner.run(stop)
            finally:
                log.info("memstream stopping")
                if announcing is not None:
                    announcing.cancel()
                await runner.stop()
                if server is not None:
                    await server.stop()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if own:
            telemetry.shutdown()


async def _announce(runner: Runner, on_started: Callable[[str], None]) -> None:
    await runner.started.wait()
    for _ in range(100):  # partitions come with the group's first rebalance: 10 s at most
        if runner.consumer is None or runner.consumer.assignment:
            break
        await asyncio.sleep(0.1)
    on_started(runner.summary())
