"""The HTTP API: memories as agents in any language use them (FastAPI, docs/decisions/0014).

Every answer is JSON. Errors are ``{"error", "detail"}`` with a 4xx status for what the
caller can fix and 503 for a service that is down; a write answers the outcome of each of
its events, and its status code says whether all were applied (200), any was rejected (422),
or some are durable but not confirmed applied (202: retry with the same ids).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumers.api.auth import Authenticator, AuthError, Caller
from consumers.api.models import (
    AppendIn,
    ErrorOut,
    MemoriesOut,
    MessagesOut,
    OutcomeOut,
    PromptOut,
    WriteIn,
    WriteOut,
)
from consumers.bootstrap import App
from consumers.catalog import ResourceError
from consumers.health import Probes, health_routes
from consumers.recovery import PointInTime, memory_at, parse_time_ms
from memory_core import (
    AsyncSafeMemoryInstance,
    Draft,
    InvalidKeyError,
    MemstreamError,
    PromptBudgetError,
    RejectedWriteError,
    StoreUnavailableError,
    ToolCall,
    UnconfirmedWriteError,
    WriteOutcome,
    WriteOutcomeStatus,
    build_prompt,
    message_view,
    validate_memory_key,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid memory key"},
    401: {"model": ErrorOut, "description": "no or unknown API key"},
    403: {"model": ErrorOut, "description": "the key may not reach this memory"},
    404: {"model": ErrorOut, "description": "no such memory, or no resource renders the key"},
    503: {"model": ErrorOut, "description": "Redis or Kafka unavailable"},
}


class _HttpError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


class _BodyLimit:
    """413 for a body over ``limit`` bytes, declared or streamed, before it is parsed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _HttpError(413, "too_large", self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"request body over {self.limit} bytes (MEMSTREAM_HTTP_MAX_BODY_BYTES)"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _error(413, "too_large", self._detail())(scope, receive, send)


def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    auth: Authenticator = request.app.state.auth
    return auth.caller(authorization)


# At module level: FastAPI resolves the routes' (string) annotations in this namespace.
Authorized = Annotated[Caller, Depends(_caller)]


def build_api(app: App, probes: Probes | None = None) -> FastAPI:
    """The API over ``app``'s store, producer and catalog; with ``probes``, also
    ``/healthz``, ``/readyz`` and ``/metrics`` on the same port."""
    settings = app.settings
    api = FastAPI(
        title="memstream",
        summary="Working memory for LLM agents: prompt-ready reads, idempotent writes.",
        version=_version(),
        responses=_ERRORS,
    )
    api.state.auth = Authenticator(settings)

    @api.exception_handler(_HttpError)
    async def _http_error(_: Request, exc: _HttpError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail)

    @api.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        response = _error(exc.status, exc.error, exc.detail)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return _error(422, "invalid_request", problems)

    @api.exception_handler(StoreUnavailableError)
    async def _store_down(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        return _error(503, "store_unavailable", f"Redis: {exc}")

    def memory(key: str, who: Caller, memory_id: str | None = None) -> AsyncSafeMemoryInstance:
        try:
            validate_memory_key(key)
            entry = app.catalog.resolve(key, memory_id)
        except InvalidKeyError as exc:
            raise _HttpError(400, "invalid_key", str(exc)) from None
        except ResourceError as exc:
            raise _HttpError(404, "unknown_resource", str(exc)) from None
        who.check(entry.config.id, key)
        return app.memory(key, memory_id)

    def missing(key: str) -> _HttpError:
        return _HttpError(
            404, "not_found", f"memory {key} does not exist (never written, or expired)"
        )

    @api.get("/v1/memories", response_model=MemoriesOut, tags=["memories"])
    async def list_memories(
        who: Authorized,
        prefix: str = "",
        cursor: str = "0",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> MemoriesOut:
        """Memory keys starting with ``prefix`` that this key may reach (SCAN: ``limit`` is a
        hint; a page may hold fewer or a few more; ``cursor`` null means done)."""
        found: list[str] = []
        at = cursor
        while True:
            try:
                keys, at = await app.store.list_memories(prefix, at, limit)
            except ValueError:
                detail = f"cursor {cursor!r} is not one this API gave"
                raise _HttpError(400, "invalid_cursor", detail) from None
            for k in keys:
                owner = app.catalog.resource_for_key(k)
                if owner is not None and who.allows(owner.id, k):
                    found.append(k)
            if at == "0" or len(found) >= limit:
                break
        return MemoriesOut(memories=found, cursor=None if at == "0" else at)

    async def past(key: str, who: Caller, at: str | None, at_offset: int | None) -> PointInTime:
        """The memory as it was (``?at=`` ISO 8601 or epoch ms, ``?at_offset=``)."""
        memory(key, who)
        if at is not None and at_offset is not None:
            raise _HttpError(400, "invalid_request", "give at or at_offset, not both")
        at_ms = None
        if at is not None:
            try:
                at_ms = parse_time_ms(at)
            except ValueError:
                raise _HttpError(400, "invalid_time", f"at={at!r}: ISO 8601 or epoch ms") from None
        point = await memory_at(
            settings, app.catalog, app.codec, key, offset=at_offset, at_ms=at_ms
        )
        if not point.found:
            raise _HttpError(
                404, "not_found", f"memory {key} had no events up to offset {point.offset}"
            )
        return point

    @api.get("/v1/memories/{key:path}/prompt", response_model=PromptOut, tags=["memories"])
    async def prompt(
        key: str,
        who: Authorized,
        max_tokens: Annotated[int | None, Query(ge=1)] = None,
        at: str | None = None,
        at_offset: Annotated[int | None, Query(ge=0)] = None,
    ) -> PromptOut:
        """The memory as Chat Completions messages with ``prompt_tokens``, the exact bill;
        ``max_tokens`` keeps system messages and the newest whole tool units that fit;
        ``at``/``at_offset``: as it was then, rebuilt from the log."""
        try:
            if at is None and at_offset is None:
                memory(key, who)
                snap = await app.store.read(key)  # one read: existence and messages
                if not snap.exists:
                    raise missing(key)
                held = snap.messages
            else:
                held = (await past(key, who, at, at_offset)).state.messages
            made = build_prompt(held, app.catalog.resolve(key).counter, max_tokens)
        except PromptBudgetError as exc:
            raise _HttpError(422, "budget_too_small", str(exc)) from None
        return PromptOut(memory_key=key, **made.as_dict())

    @api.get("/v1/memories/{key:path}/health", tags=["memories"])
    async def health(key: str, who: Authorized) -> dict[str, Any]:
        """Usage against budget, flush and lock state, TTL and last applied offset."""
        return (await memory(key, who).health()).as_dict()

    @api.post(
        "/v1/memories/{key:path}/messages",
        response_model=WriteOut,
        tags=["writes"],
        responses={
            202: {"model": WriteOut, "description": "durable, not (yet) confirmed applied"},
            422: {"model": WriteOut, "description": "an event was rejected (see outcomes)"},
        },
    )
    async def append(key: str, body: AppendIn, who: Authorized) -> JSONResponse:
        """Append messages in order; with ``wait``, answer once the consumer applied them."""
        if len(body.messages) > settings.http_max_messages:
            raise _HttpError(
                413,
                "too_many_messages",
                f"{len(body.messages)} messages, at most {settings.http_max_messages} per request",
            )
        mem = memory(key, who)
        now = int(time.time() * 1000)
        drafts = [
            Draft(
                id=m.id or uuid.uuid4().hex,
                role=m.role,
                content=m.content or "",
                created_at_ms=now,
                name=m.name or None,
                metadata=m.metadata,
                tool_call_id=m.tool_call_id,
                tool_calls=tuple(
                    ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls
                ),
            )
            for m in body.messages
        ]
        ids = [m.event_id or uuid.uuid4().hex for m in body.messages]
        pending = [
            WriteOutcome(WriteOutcomeStatus.PUBLISHED, event_id=e, message_id=d.id)
            for d, e in zip(drafts, ids, strict=True)
        ]
        return await _write(
            key,
            lambda: mem.append_many(drafts, wait=_wait(body.wait), event_ids=ids),
            pending,
        )

    async def memory_event(key: str, who: Caller, body: WriteIn | None, name: str) -> JSONResponse:
        request = body or WriteIn()
        mem = memory(key, who)
        write = mem.clear if name == "clear" else mem.flush
        event = request.event_id or uuid.uuid4().hex
        return await _write(
            key,
            lambda: _one(write(wait=_wait(request.wait), event_id=event)),
            [WriteOutcome(WriteOutcomeStatus.PUBLISHED, event_id=event)],
        )

    @api.delete("/v1/memories/{key:path}/messages", response_model=WriteOut, tags=["writes"])
    async def clear(key: str, who: Authorized, body: WriteIn | None = None) -> JSONResponse:
        """Remove every message (a MemoryCleared event)."""
        return await memory_event(key, who, body, "clear")

    @api.post("/v1/memories/{key:path}/flush", response_model=WriteOut, tags=["writes"])
    async def flush(key: str, who: Authorized, body: WriteIn | None = None) -> JSONResponse:
        """Request a flush now; ``applied`` means the request was (the summary follows)."""
        return await memory_event(key, who, body, "flush")

    @api.get("/v1/memories/{key:path}", response_model=MessagesOut, tags=["memories"])
    async def read(
        key: str,
        who: Authorized,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        at: str | None = None,
        at_offset: Annotated[int | None, Query(ge=0)] = None,
    ) -> MessagesOut:
        """One page of the memory's messages, oldest first; ``at``/``at_offset``: as it was
        then, rebuilt from the log."""
        if at is not None or at_offset is not None:
            held = (await past(key, who, at, at_offset)).state.messages
            return MessagesOut(
                memory_key=key,
                memory_id=app.catalog.resolve(key).config.id,
                messages=[message_view(m) for m in held[offset : offset + limit]],
                offset=offset,
                limit=limit,
                total=len(held),
                has_more=offset + limit < len(held),
            )
        mem = memory(key, who)
        page = await mem.read_paginated(offset, limit)
        if not page.exists:
            raise missing(key)
        return MessagesOut(
            memory_key=key,
            memory_id=mem.config.id,
            messages=[message_view(m) for m in page.messages],
            offset=offset,
            limit=limit,
            total=page.total,
            has_more=page.has_more,
        )

    if probes is not None:
        for route in health_routes(probes):
            api.router.routes.append(route)
    api.add_middleware(_BodyLimit, limit=settings.http_max_body_bytes)
    return api


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memstream")
    except PackageNotFoundError:
        return "0"


def _wait(seconds: float) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds > 0 else None


async def _one(write: Awaitable[WriteOutcome]) -> list[WriteOutcome]:
    return [await write]


async def _write(
    key: str,
    write: Callable[[], Awaitable[list[WriteOutcome]]],
    pending: list[WriteOutcome],
) -> JSONResponse:
    """Run a write and answer each event's outcome with an honest status code."""
    try:
        outcomes = await write()
    except RejectedWriteError as exc:
        return _answer(422, key, exc.outcomes, f"rejected: {exc.reason.value}")
    except UnconfirmedWriteError as exc:
        return _answer(
            202,
            key,
            exc.outcomes,
            f"durable in the log, not confirmed applied ({exc.why}); retry with the same "
            "message ids and event ids: applied at most once",
        )
    except KafkaError as exc:
        return _answer(
            503,
            key,
            pending,
            f"publishing failed ({type(exc).__name__}: {exc}); the events may or may not be "
            "in the log: retry with the same message ids and event ids, applied at most once",
        )
    except InvalidKeyError as exc:
        raise _HttpError(400, "invalid_key", str(exc)) from None
    except MemstreamError as exc:
        if isinstance(exc, StoreUnavailableError):
            raise
        raise _HttpError(503, "unavailable", str(exc)) from None
    if any(o.status is WriteOutcomeStatus.PUBLISHED for o in outcomes):
        return _answer(202, key, outcomes, "durable in the log; not waited for")
    return _answer(200, key, outcomes)


def _answer(status: int, key: str, outcomes: Any, detail: str = "") -> JSONResponse:
    body = WriteOut(memory_key=key, outcomes=[OutcomeOut.of(o) for o in outcomes], detail=detail)
    return JSONResponse(body.model_dump(), status_code=status)
