"""A memory has one home partition: records elsewhere are dead-lettered, never lost or stalling."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from consumers import deadletter
from consumers.bootstrap import App
from consumers.events import appended_payload, envelope
from consumers.generations import active_generation, home_partition
from consumers.recovery import verify
from memory_core import DeadLetterReason, Draft, Role
from memory_core.redis import KeyBatch, WriteStatus
from schemas import MEMORY_EVENT
from tests.integration.test_ordering import apply_consumer, drain, read_topic

BASE_MS = 1_700_000_000_000


def _record(app: App, key: str, n: int) -> bytes:
    draft = Draft(f"{key}-m{n}", Role.USER, f"message {n} of {key}", BASE_MS + n)
    return app.codec.encode(
        MEMORY_EVENT,
        envelope(key, "chat", BASE_MS + n, appended_payload(draft), event_id=f"{key}-e{n}"),
    )


def _keys(app: App, n: int) -> list[str]:
    return [f"agent:{app.settings.key_prefix}:user:u{i}" for i in range(n)]


async def test_records_outside_their_home_are_dead_lettered_and_other_memories_go_on(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    gen = await active_generation(app.settings)
    keys = _keys(app, 12)
    # One memory whose events also land on another partition (as a second partitioner would
    # put them), between events of memories living on that partition.
    mixed = keys[0]
    home = gen.home(mixed.encode())
    elsewhere = (home + 1) % gen.partitions
    neighbours = [k for k in keys[1:] if gen.home(k.encode()) == elsewhere]
    assert neighbours, "the test needs a memory living on the other partition"
    sent = 0
    for n in range(6):
        target = home if n % 2 == 0 else elsewhere
        await raw_producer.send_and_wait(
            app.settings.events_topic, _record(app, mixed, n), key=mixed.encode(), partition=target
        )
        for k in neighbours:
            await raw_producer.send_and_wait(
                app.settings.events_topic, _record(app, k, n), key=k.encode(), partition=elsewhere
            )
            sent += 1
        sent += 1
    # A fresh group over such a topic: applies what belongs, parks the rest, never dies.
    async with apply_consumer(app, max_records=7) as consumer:
        await drain(consumer, sent)
        assert consumer.totals.dead_lettered == 3
        assert consumer.totals.applied == sent - 3

    mine = await app.store.read(mixed)
    assert [m.id for m in mine.messages] == [f"{mixed}-m{n}" for n in (0, 2, 4)]
    assert mine.home == f"{gen.topic}:{home}"
    for k in neighbours:
        assert len((await app.store.read(k)).messages) == 6
    dlq = await read_topic(app.settings.kafka_bootstrap, app.settings.dlq_topic)
    assert len(dlq) == 3
    for rec in dlq:
        headers = deadletter.header_map(rec.headers)
        assert headers[deadletter.REASON] == DeadLetterReason.WRONG_PARTITION
        assert headers[deadletter.HOME_TOPIC] == gen.topic
        assert headers[deadletter.HOME_PARTITION] == str(home)
        assert headers[deadletter.PARTITION] == str(elsewhere)
        assert rec.key == mixed.encode()
    report = await verify(app.settings, app.catalog, app.codec, app.store)
    assert report.ok, report.mismatches


async def test_growing_the_topic_by_hand_loses_no_acknowledged_write(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    settings = app.settings
    gen = await active_generation(settings)
    keys = _keys(app, 20)
    for k in keys:
        await app.producer.send_records(
            k,
            [
                envelope(
                    k, "chat", BASE_MS, appended_payload(Draft(f"{k}-a", Role.USER, "a", BASE_MS))
                )
            ],
        )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({gen.topic: NewPartitions(total_count=gen.partitions * 2)})
    finally:
        await admin.close()
    grown = gen.partitions * 2
    moved = [k for k in keys if home_partition(k.encode(), grown) != gen.home(k.encode())]
    assert moved, "growing must move some keys for the test to mean anything"
    # memstream's SDK keeps writing to each memory's home; a client hashing over every
    # partition (as Kafka's default partitioner does) sends the moved keys elsewhere.
    async with app.producer.__class__(
        settings=settings,
        topic=gen.topic,
        codec=app.codec,
        telemetry=app.telemetry,
        catalog=app.catalog,
        generation=lambda: active_generation(settings),
    ) as sdk:
        for k in keys:
            draft = Draft(f"{k}-b", Role.USER, "b", BASE_MS + 2)
            landed = await sdk.append(k, "chat", [draft])
            assert landed[0].partition == gen.home(k.encode())
    for k in keys:
        await raw_producer.send_and_wait(
            gen.topic,
            _record(app, k, 3),
            key=k.encode(),
            partition=home_partition(k.encode(), grown),
        )
    total = len(keys) * 3
    async with apply_consumer(app) as consumer:
        await drain(consumer, total)
    for k in keys:
        ids = [m.id for m in (await app.store.read(k)).messages]
        expected = [f"{k}-a", f"{k}-b"] + ([] if k in moved else [f"{k}-m3"])
        assert ids == expected
    dlq = await read_topic(settings.kafka_bootstrap, settings.dlq_topic)
    assert sorted(r.key for r in dlq) == sorted(k.encode() for k in moved)
    assert all(
        deadletter.header_map(r.headers)[deadletter.REASON] == "wrong_partition" for r in dlq
    )
    assert (await verify(settings, app.catalog, app.codec, app.store)).ok


async def test_a_replaced_partition_owner_cannot_write_any_memory(app: App) -> None:
    store = app.store
    policy = app.catalog.get("chat")
    assert policy is not None
    scope = f"{app.settings.events_topic}:0"
    old = await store.new_epoch(scope)
    keys = _keys(app, 3)
    first = [KeyBatch(keys[0], policy.policy, [], epoch=old, home=scope)]
    assert (await store.apply(first, "zombie"))[0].status is WriteStatus.APPLIED
    # The group gives the partition to a new owner, which has written none of these yet.
    await store.new_epoch(scope)
    late = [KeyBatch(k, policy.policy, [], epoch=old, home=scope) for k in keys]
    outcomes = await store.apply(late, "zombie")
    assert [o.status for o in outcomes] == [WriteStatus.FENCED] * 3
    assert all("partition epoch" in o.detail for o in outcomes)
