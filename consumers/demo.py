"""``memstream demo``: simulated agents talking across many memories, on the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from consumers.bootstrap import App, build_app
from consumers.events import appended_payload, envelope
from consumers.recovery import verify
from consumers.runner import Runner
from consumers.settings import Settings
from memory_core import (
    AsyncSafeMemoryInstance,
    Category,
    Draft,
    Kind,
    MemoryHealth,
    Role,
    ToolCall,
)
from schemas import MEMORY_EVENT

TOPICS = [
    ("billing", "my invoice for March shows a double charge", "I see two charges of $42.10"),
    ("shipping", "where is my order #{n}? it was due Tuesday", "it left the Lyon warehouse today"),
    ("account", "I can't log in since the password reset", "I sent a new reset link"),
    ("weather", "will it rain in Paris this weekend?", "light rain Saturday, sunny Sunday"),
    ("refund", "please refund the broken headphones", "the refund of $89 is on its way"),
]
FILLER = (
    "Could you also check the previous ticket and tell me what the status is, because I "
    "would like to understand what happened before I call my bank about it again"
)


@dataclass
class DemoStats:
    """What the demo published and what the pipeline reported."""

    published: int = 0
    malformed_sent: int = 0
    started: float = field(default_factory=time.monotonic)


def _turns(rng: random.Random, key_n: int, turns: int) -> list[list[Draft]]:
    """A conversation: a system prompt, then turns of user/assistant with some tool calls."""
    now = int(time.time() * 1000)
    topic, ask, answer = rng.choice(TOPICS)
    out: list[list[Draft]] = [
        [Draft(uuid.uuid4().hex, Role.SYSTEM, f"You are a support agent for {topic}.", now)]
    ]
    for t in range(turns):
        user = ask.format(n=1000 + key_n) + (
            f" (reach me at user{key_n}@example.com)" if t == 0 else ""
        )
        if rng.random() < 0.5:
            user += ". " + FILLER[: rng.randint(20, len(FILLER))]
        turn = [Draft(uuid.uuid4().hex, Role.USER, user, now, name=f"user{key_n}")]
        if rng.random() < 0.3:
            call = ToolCall(f"call_{uuid.uuid4().hex[:8]}", f"lookup_{topic}", f'{{"id": {key_n}}}')
            turn.append(Draft(uuid.uuid4().hex, Role.ASSISTANT, "", now, tool_calls=(call,)))
            turn.append(
                Draft(
                    uuid.uuid4().hex,
                    Role.TOOL,
                    f'{{"status": "ok", "turn": {t}}}',
                    now,
                    tool_call_id=call.id,
                )
            )
        turn.append(Draft(uuid.uuid4().hex, Role.ASSISTANT, f"{answer} (turn {t + 1})", now))
        out.append(turn)
    return out


async def _agent(
    app: App, memory_id: str, keys: list[str], turns: int, rng: random.Random, stats: DemoStats
) -> None:
    conversations = {k: _turns(rng, n, turns) for n, k in enumerate(keys)}
    for step in range(turns + 1):
        for key, conversation in conversations.items():
            if step < len(conversation):
                await app.producer.append(key, memory_id, conversation[step])
                stats.published += len(conversation[step])
        await asyncio.sleep(0.05)


async def _malformed(app: App, run: str, stats: DemoStats) -> None:
    """A few poison events: they must land in the DLQ without stopping anything."""
    producer = app.producer
    await producer.send_raw(b"agent:x:user:y", b"\x00not avro at all")
    await producer.send_raw(b"agent:x:user:y", b"\x00\x00\x00\x03\x99garbage")
    bad_key = envelope(
        "agent:{evil}",
        "support-agent",
        int(time.time() * 1000),
        appended_payload(Draft("bad-key", Role.USER, "hi", 0)),
    )
    unknown = envelope(
        f"agent:{run}:user:z",
        "no-such-memory",
        int(time.time() * 1000),
        appended_payload(Draft("unknown", Role.USER, "hi", 0)),
    )
    huge = envelope(
        f"agent:{run}:user:huge",
        "support-agent",
        int(time.time() * 1000),
        appended_payload(Draft("huge", Role.USER, "lorem ipsum " * 2000, 0)),
    )
    for record in (bad_key, unknown, huge):
        value = app.codec.encode(MEMORY_EVENT, record)
        await producer.send_raw(str(record["memory_key"]).encode(), value)
    stats.malformed_sent += 5


def _progress(runner: Runner, stats: DemoStats) -> Table:
    totals = runner.consumer.totals if runner.consumer else None
    table = Table(title="memstream demo — live", expand=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("elapsed", f"{time.monotonic() - stats.started:.1f}s"),
        ("events published", stats.published + stats.malformed_sent),
    ]
    if totals is not None:
        rows += [
            ("events applied", totals.applied),
            ("duplicates skipped", totals.duplicates),
            ("tokens appended", totals.tokens_appended),
            ("evicted messages", totals.evicted),
            ("tokens evicted", totals.tokens_evicted),
            ("flushes requested", totals.flushes_requested),
            ("tokens saved by flushes", totals.tokens_saved),
            ("dead-lettered", totals.dead_lettered),
        ]
    if runner.dispatcher is not None:
        rows.append(("flush workflows started", runner.dispatcher.started))
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def check(health: MemoryHealth) -> list[str]:
    """Budget violations of one memory (empty when consistent)."""
    problems = []
    for c in (Category.SYSTEM, Category.SHORT_TERM, Category.LONG_TERM):
        if health.tokens[c] > health.budget[c]:
            problems.append(f"{c.value} {health.tokens[c]} > {health.budget[c]}")
    if health.max_messages is not None and health.messages > health.max_messages:
        problems.append(f"{health.messages} messages > {health.max_messages}")
    return problems


@contextlib.asynccontextmanager
async def _reachable(app: App) -> AsyncIterator[None]:
    """Fail at once (one line, from the CLI) when Redis is down, before the live view."""
    await app.store.ping()
    yield


async def run_demo(
    settings: Settings, *, agents: int = 4, users: int = 30, turns: int = 20, seed: int = 7
) -> int:
    """Run the demo; returns 0 when every memory is consistent with its budget."""
    console = Console(width=max(Console().width, 120))
    run = uuid.uuid4().hex[:6]
    rng = random.Random(seed)
    stats = DemoStats()
    async with build_app(settings) as app, _reachable(app), Runner(app) as runner:
        # Agents alternate between the memory resources, keys rendered from their templates.
        plan: list[tuple[str, list[str]]] = []
        for a in range(agents):
            memory_id = app.catalog.ids[a % len(app.catalog.ids)]
            entry = app.catalog.get(memory_id)
            assert entry is not None
            template = entry.config.key_template
            keys = [
                template.render(**dict(zip(template.fields, (f"{run}-{a}", f"u{u}"), strict=False)))
                for u in range(users)
            ]
            plan.append((memory_id, keys))
        with Live(_progress(runner, stats), console=console, refresh_per_second=4) as live:
            work = asyncio.gather(
                _malformed(app, run, stats),
                *(_agent(app, memory_id, keys, turns, rng, stats) for memory_id, keys in plan),
            )
            while not work.done():
                live.update(_progress(runner, stats))
                await asyncio.sleep(0.25)
            await work
            instances = [
                AsyncSafeMemoryInstance(k, app.catalog.config(memory_id), store=app.store)
                for memory_id, keys in plan
                for k in keys
            ]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                live.update(_progress(runner, stats))
                healths = await asyncio.gather(*(i.health() for i in instances))
                lag = sum(runner.consumer.lag().values()) if runner.consumer else 0
                if lag == 0 and not any(h.flush_pending for h in healths):
                    break
                await asyncio.sleep(0.5)
            live.update(_progress(runner, stats))

        healths = await asyncio.gather(*(i.health() for i in instances))
        messages = await asyncio.gather(*(i.read() for i in instances))
        summary = Table(title=f"{len(instances)} memories after the demo (run {run})")
        for col in (
            "memory",
            "messages",
            "system",
            "short-term",
            "long-term",
            "summaries",
            "saved",
            "ok",
        ):
            summary.add_column(col, justify="right" if col != "memory" else "left")
        bad = 0
        for h, msgs in zip(healths, messages, strict=True):
            problems = check(h)
            counted = {c: sum(m.tokens for m in msgs if m.category is c) for c in h.tokens}
            if counted != h.tokens:
                problems.append("counters differ from stored messages")
            bad += bool(problems)
        for h, msgs in list(zip(healths, messages, strict=True))[:: max(len(healths) // 12, 1)]:
            summary.add_row(
                h.memory_key,
                str(h.messages),
                f"{h.tokens[Category.SYSTEM]}/{h.budget[Category.SYSTEM]}",
                f"{h.tokens[Category.SHORT_TERM]}/{h.budget[Category.SHORT_TERM]}",
                f"{h.tokens[Category.LONG_TERM]}/{h.budget[Category.LONG_TERM]}",
                str(sum(1 for m in msgs if m.kind is Kind.SUMMARY)),
                str(h.tokens_saved_total),
                "yes" if not check(h) else "NO",
            )
        console.print(summary)
        totals = runner.consumer.totals if runner.consumer else None
        flushed = sum(1 for h in healths if h.tokens_saved_total > 0)
        console.print(
            f"consistency: {len(instances) - bad}/{len(instances)} memories within budget with "
            f"counters matching their messages; {flushed} flushed; "
            f"{totals.dead_lettered if totals else 0} events dead-lettered "
            f"({stats.malformed_sent} poison events sent)."
        )
        # The log is the source of truth: replay it through the pure model and compare.
        keys = [i.memory_key for i in instances]
        report = await verify(settings, app.catalog, app.codec, app.store, keys=keys)
        console.print(
            f"replay check: {report.memories} memories, {report.events} events replayed from "
            f"the log through the pure model, {len(report.mismatches)} mismatches with Redis."
        )
        for m in report.mismatches[:5]:
            console.print(f"  MISMATCH {m.memory_key}: {m.detail}")
        return 0 if bad == 0 and report.ok else 1
