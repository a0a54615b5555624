"""Operator commands of the ``memstream`` CLI: topic generations, partitions, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from aiokafka.errors import KafkaError

from consumers import failures
from consumers.settings import Settings
from memory_core import MemstreamError

T = TypeVar("T")

topics_app = typer.Typer(no_args_is_help=True, help="The events topic and its generations.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list them, re-drive them.")


def _run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work``; a known failure is one line on stderr and its exit code."""
    try:
        return asyncio.run(work())
    except (MemstreamError, KafkaError, OSError) as exc:
        if failures.show_tracebacks:
            raise
        message, code = failures.one_line(exc)
        typer.echo(f"memstream: {message}", err=True)
        raise typer.Exit(code) from None


@topics_app.command("status")
def topics_status() -> None:
    """List the generations of the events topic; flag a topic grown by hand."""
    from consumers.generations import read_generations, topic_partition_count
    from consumers.repartition import describe

    settings = Settings()

    async def go() -> int:
        generations = await read_generations(settings)
        if not generations:
            typer.echo(f"no generation recorded for {settings.events_topic} yet")
            return 1
        for line in describe(generations):
            typer.echo(line)
        active = generations[-1]
        count = await topic_partition_count(settings, active.topic)
        if count is not None and count != active.partitions:
            typer.echo(
                f"WARNING: {active.topic} has {count} partitions, its generation "
                f"{active.partitions}: grown by hand; run "
                f"`memstream topics repartition --partitions {count}`"
            )
            return 1
        return 0

    raise typer.Exit(_run(go))


@topics_app.command("snapshots")
def topics_snapshots(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per partition")] = False,
) -> None:
    """Each partition's snapshot watermark, and the records below it that may be deleted
    (docs/semantics.md, "Snapshots")."""
    from aiokafka.structs import TopicPartition

    from consumers.connections import kafka_consumer, make_registry
    from consumers.generations import existing_generation
    from consumers.snapshots import read_snapshots, snapshot_topic
    from schemas import AvroCodec

    settings = Settings()

    async def go() -> int:
        gen = await existing_generation(settings)
        codec = AvroCodec(make_registry(settings), logical_types=False)
        tps = [TopicPartition(gen.topic, p) for p in range(gen.partitions)]
        consumer = kafka_consumer(settings, group_id=None, enable_auto_commit=False)
        try:
            await consumer.start()
            firsts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        rows = []
        for tp in tps:
            found = await read_snapshots(settings, codec, gen, tp.partition, keys=set())
            mark = found.watermark
            first, end = int(firsts[tp]), int(ends[tp])
            rows.append(
                {
                    "partition": tp.partition,
                    "watermark": mark,
                    "first_offset": first,
                    "end_offset": end,
                    "deletable_below": mark,
                    "deletable_records": max((mark or 0) - first, 0),
                    "snapshot_records": found.records,
                }
            )
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row))
        else:
            typer.echo(f"{snapshot_topic(gen.topic)}:")
            for row in rows:
                mark = row["watermark"]
                typer.echo(
                    f"  partition {row['partition']}: "
                    + (
                        f"watermark {mark:,}, {row['end_offset'] - mark:,} records after it"
                        if mark is not None
                        else "no watermark yet (a rebuild reads it from its beginning)"
                    )
                    + f"; the log holds offsets {row['first_offset']:,}-{row['end_offset']:,}"
                    + f"; {row['snapshot_records']:,} snapshot records"
                )
            missing = [r["partition"] for r in rows if r["watermark"] is None]
            if missing:
                typer.echo(f"partitions without a watermark: {missing}; delete nothing there")
            total = sum(int(r["deletable_records"]) for r in rows)
            typer.echo(
                f"records below the watermarks, which may be deleted: {total:,} "
                "(kafka-delete-records with each partition's watermark as its offset)"
            )
        return 0

    raise typer.Exit(_run(go))


@topics_app.command("repartition")
def topics_repartition(
    partitions: Annotated[int, typer.Option(help="Partitions of the new generation")],
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the consumers to apply the old topic")
    ] = 300.0,
) -> None:
    """Move the events topic to a new generation with PARTITIONS partitions (no loss).

    Seals the active topic (writes wait), waits until the apply consumers applied it, copies
    every memory's events in order, re-homes the memories, switches. Safe to run again.
    """
    from consumers.bootstrap import build_app
    from consumers.repartition import repartition

    async def go() -> None:
        async with build_app() as app:
            await repartition(
                app.settings,
                app.store,
                partitions,
                drain_timeout_s=drain_timeout,
                echo=typer.echo,
            )

    _run(go)


def partition(key: Annotated[str, typer.Argument(help="Memory key")]) -> None:
    """Print the home partition of a memory key in the active generation."""
    from consumers.generations import active_generation
    from memory_core import validate_memory_key
    from memory_core.privacy import key_digest

    settings = Settings()
    try:
        validate_memory_key(key)
    except MemstreamError as exc:
        typer.echo(f"memstream: {exc}", err=True)
        raise typer.Exit(2) from None
    gen = _run(lambda: active_generation(settings, create=False))
    typer.echo(
        f"{gen.home(key.encode())}  ({gen.topic}, generation {gen.number}: "
        f"murmur2 mod {gen.partitions}; logged as {key_digest(key)})"
    )


@dlq_app.command("list")
def dlq_list(
    reason: Annotated[str | None, typer.Option(help="Only this reason")] = None,
    key: Annotated[str | None, typer.Option(help="Only this memory key")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry")] = False,
    redriven: Annotated[bool, typer.Option(help="Include entries already re-driven")] = False,
) -> None:
    """List dead letters: counts by reason and memory, then the entries."""
    from consumers.dlq import choose, read_dead_letters

    settings = Settings()
    entries = choose(_run(lambda: read_dead_letters(settings)), reason=reason, memory_key=key)
    if not redriven:
        entries = [e for e in entries if not e.redriven]
    if as_json:
        for e in entries:
            typer.echo(
                json.dumps(
                    {
                        "position": e.position,
                        "reason": e.reason,
                        "memory_key": e.memory_key,
                        "source": e.source,
                        "detail": e.detail,
                        "truncated": e.truncated,
                        "redriven": e.redriven,
                    }
                )
            )
        return
    by = Counter((e.reason, e.memory_key or "-") for e in entries)
    typer.echo(f"{len(entries)} dead letters")
    for (r, k), n in sorted(by.items()):
        typer.echo(f"  {n:6d}  {r:22s} {k}")
    for e in entries:
        flag = " (re-driven)" if e.redriven else ""
        typer.echo(f"{e.position}  {e.reason}  {e.memory_key}  from {e.source}{flag}: {e.detail}")


@dlq_app.command("redrive")
def dlq_redrive(
    reason: Annotated[str | None, typer.Option(help="Only this reason")] = None,
    key: Annotated[str | None, typer.Option(help="Only this memory key")] = None,
    position: Annotated[
        list[str] | None, typer.Option(help="Only these entries (PARTITION:OFFSET, repeatable)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be re-driven")] = False,
) -> None:
    """Publish chosen dead letters again to their memories' homes, once each.

    Fix the cause first (a repartition for wrong_partition, a config for unknown_memory):
    a re-driven event that still cannot apply is dead-lettered again.
    """
    from consumers.bootstrap import build_app
    from consumers.dlq import choose, read_dead_letters, redrive

    if reason is None and key is None and not position:
        typer.echo("memstream: choose entries with --reason, --key or --position", err=True)
        raise typer.Exit(2)

    async def go() -> str:
        async with build_app() as app:
            chosen = choose(
                await read_dead_letters(app.settings),
                reason=reason,
                memory_key=key,
                positions=set(position or ()),
            )
            r = await redrive(app.settings, app.producer, chosen, dry_run=dry_run, echo=typer.echo)
        verb = "would re-drive" if dry_run else "re-drove"
        return (
            f"{verb} {r.redriven}, skipped {r.skipped_already} already re-driven and "
            f"{r.skipped_no_key} without a record key"
        )

    typer.echo(_run(go))


def register(app: typer.Typer) -> None:
    """Add the operator commands to ``app``."""
    app.add_typer(topics_app, name="topics")
    app.add_typer(dlq_app, name="dlq")
    app.command("partition")(partition)
