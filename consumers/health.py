"""``/healthz``, ``/readyz`` and ``/metrics`` of ``memstream run``, on an opt-in port
(``health_port``).

- ``/healthz`` (liveness): 200 while every started role runs; 503 once one has died (the
  process then exits too) — a probe that restarts a wedged pod.
- ``/readyz`` (readiness): 200 when every service its roles need answers now (Redis for
  apply, Temporal for dispatch and worker, Kafka through the group), the apply consumer has
  partitions assigned, and its lag is within ``ready_max_lag`` (when set); else 503. Each
  check's result is in the JSON body either way.
- ``/metrics``: every instrument in Prometheus's text format (OpenTelemetry's Prometheus
  reader), when this process's telemetry has one.

Served by Starlette on uvicorn in the process's own event loop; uvicorn's signal handling is
left out (the runner owns SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from memory_core import MemstreamError

log = logging.getLogger(__name__)


class HealthPortError(MemstreamError):
    """The health endpoints' port cannot be bound (taken, or not ours to take)."""


# How long one readiness check of a service may take before it counts as failed.
CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness condition: its name, whether it holds, and why not."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class Probes:
    """What the endpoints ask: the roles' liveness, and the readiness checks."""

    live: Callable[[], dict[str, bool]]
    ready: Sequence[Callable[[], Awaitable[Check]]] = ()
    # What /metrics serves (the OpenTelemetry Prometheus reader's registry), if anything.
    metrics: CollectorRegistry | None = None


async def timed(name: str, probe: Callable[[], Awaitable[object]]) -> Check:
    """Run ``probe``; a truthy answer within the bound passes, anything else fails."""
    try:
        answer = await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return Check(name, False, f"no answer in {CHECK_TIMEOUT_S:.0f}s")
    except Exception as exc:  # any failure of a probe means "not ready", with its reason
        return Check(name, False, f"{type(exc).__name__}: {exc}")
    return Check(name, bool(answer), "" if answer else "answered no")


def build_health_app(probes: Probes) -> Starlette:
    """The ASGI app of the endpoints alone."""
    return Starlette(routes=health_routes(probes))


def health_routes(probes: Probes) -> list[Route]:
    """``/healthz``, ``/readyz`` and ``/metrics`` answering from ``probes``."""

    async def healthz(_: Request) -> JSONResponse:
        roles = probes.live()
        alive = bool(roles) and all(roles.values())
        body = {
            "status": "ok" if alive else "failing",
            "roles": {r: "running" if up else "dead" for r, up in roles.items()},
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    async def readyz(_: Request) -> JSONResponse:
        checks = await asyncio.gather(*(probe() for probe in probes.ready))
        ready = all(c.ok for c in checks)
        body: dict[str, Any] = {
            "status": "ready" if ready else "not ready",
            "checks": {c.name: {"ok": c.ok, **({"detail": c.detail} if c.detail else {})}
                       for c in checks},
        }  # fmt: skip
        return JSONResponse(body, status_code=200 if ready else 503)

    async def prometheus(_: Request) -> Response:
        registry = probes.metrics
        if registry is None:
            return PlainTextResponse("metrics are not exported here\n", status_code=404)
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", prometheus),
    ]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The runner handles SIGTERM/SIGINT; uvicorn must not take them over.
        yield


class HealthServer:
    """The endpoints on ``host:port`` while the process runs (start, then stop); ``app``
    serves them with more (the HTTP API) instead."""

    def __init__(self, probes: Probes, *, host: str, port: int, app: ASGIApp | None = None) -> None:
        config = uvicorn.Config(
            app or build_health_app(probes),
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.address = f"http://{host}:{port}"

    async def start(self) -> None:
        """Listen; ``HealthPortError`` if the port cannot be bound."""
        host, port = self._server.config.host, self._server.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Inherited by accepted connections: without it a kept-alive client's second
            # request waits ~40 ms (Nagle against delayed ACK; the response goes out in two
            # writes, head then body).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise HealthPortError(
                f"cannot listen on {self.address} ({exc}): free the port or change "
                "MEMSTREAM_HEALTH_PORT"
            ) from exc
        # Bound here, so a taken port is this error and not uvicorn's exit.
        self._task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="memstream-health"
        )
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # uvicorn offers no event for "started"
        if self._task.done():
            self._task.result()
        log.info("health endpoints on %s (/healthz, /readyz)", self.address)

    async def wait(self) -> None:
        """Until the server stops (or fails: its error is raised)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await self._task
        self._task = None
