"""Records refused at decode (key mismatch, key template, time) are dead-lettered through the
real pipeline and change nothing: the memory's later events still apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from consumers import deadletter
from consumers.bootstrap import App, build_app
from consumers.events import CLEARED, FLUSH_REQUESTED, appended_payload, envelope
from consumers.recovery import verify
from consumers.settings import Settings
from memory_core import DeadLetterReason, Draft, Role
from schemas import MEMORY_EVENT
from tests.integration.test_ordering import apply_consumer, drain, read_topic

AT = 1_700_000_000_000
MEMORIES = """
memories:
  - id: chat
    key: "agent:{agent_id}:user:{user_id}"
    max_tokens: 400
  - id: research
    key: "research:{team}:{session}"
    max_tokens: 400
"""


@pytest.fixture
async def app(test_settings: Settings, tmp_path: Path) -> AsyncIterator[App]:
    """This test's adapters, with two memory resources of disjoint key templates."""
    path = tmp_path / "memories.yaml"
    path.write_text(MEMORIES)
    async with build_app(test_settings.model_copy(update={"memories_file": path})) as built:
        yield built


def _appended(key: str, n: int, *, memory_id: str = "chat", at: int = AT) -> dict[str, Any]:
    draft = Draft(f"m{n}", Role.USER, f"message {n}", at)
    return envelope(key, memory_id, at, appended_payload(draft), event_id=f"{key}-e{n}")


class Log:
    """What the test published: records sent, and the reasons expected for the refused ones."""

    def __init__(self, app: App, producer: AIOKafkaProducer) -> None:
        self.app = app
        self.producer = producer
        self.sent = 0
        self.refused: dict[bytes, DeadLetterReason] = {}  # value -> reason

    async def send(
        self, record: dict[str, Any], *, key: bytes | None, refused: DeadLetterReason | None
    ) -> None:
        value = self.app.codec.encode(MEMORY_EVENT, record)
        await self.producer.send_and_wait(self.app.settings.events_topic, value, key=key)
        self.sent += 1
        if refused is not None:
            self.refused[value] = refused

    async def keyed(self, record: dict[str, Any], refused: DeadLetterReason | None = None) -> None:
        await self.send(record, key=record["memory_key"].encode(), refused=refused)

    async def apply_and_check_dead_letters(self) -> list[Any]:
        """Apply everything; the dead letters are exactly the refused records, with reasons."""
        async with apply_consumer(self.app, max_records=5) as consumer:
            await drain(consumer, self.sent)
            assert consumer.totals.dead_lettered == len(self.refused)
        settings = self.app.settings
        dead = await read_topic(settings.kafka_bootstrap, settings.dlq_topic)
        reasons = {}
        for record in dead:
            headers = deadletter.header_map(record.headers)
            assert headers[deadletter.DETAIL]
            reasons[record.value] = headers[deadletter.REASON]
        assert reasons == {value: reason.value for value, reason in self.refused.items()}
        report = await verify(settings, self.app.catalog, self.app.codec, self.app.store)
        assert report.ok, report.mismatches
        return dead


async def test_a_null_key_record_is_a_key_mismatch_and_the_memory_goes_on(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    key = f"agent:{app.settings.key_prefix}:user:main"
    log = Log(app, raw_producer)
    await log.keyed(_appended(key, 0))
    # A producer that forgot the key: its records land on any partition. Several, so that
    # some land on another partition than the memory's.
    lost = _appended(key, 1)
    await log.send(lost, key=None, refused=DeadLetterReason.KEY_MISMATCH)
    for i in range(3):
        copy = {**lost, "event_id": f"lost-{i}"}
        await log.send(copy, key=None, refused=DeadLetterReason.KEY_MISMATCH)
    await log.keyed(_appended(key, 2))
    # The refused event resent with its key: its id was never recorded, so it applies.
    await log.keyed(lost)

    dead = await log.apply_and_check_dead_letters()
    assert all(record.key is None for record in dead)
    assert [m.id for m in (await app.store.read(key)).messages] == ["m0", "m2", "m1"]


async def test_event_times_outside_2000_to_2100_are_dead_lettered_and_change_nothing(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    key = f"agent:{app.settings.key_prefix}:user:time"
    log = Log(app, raw_producer)
    await log.keyed(_appended(key, 0))
    bad = DeadLetterReason.INVALID_TIMESTAMP
    await log.keyed(_appended(key, 1, at=-1), bad)
    await log.keyed(_appended(key, 2, at=7_258_118_400_000), bad)  # 2200-01-01
    # A clear from 1970 must not clear the memory.
    await log.keyed(envelope(key, "chat", 0, (CLEARED, {"reason": None}), event_id="c0"), bad)
    await log.keyed(
        envelope(key, "chat", 2**62, (FLUSH_REQUESTED, {"reason": None}), event_id="f0"), bad
    )
    await log.keyed(_appended(key, 3))

    await log.apply_and_check_dead_letters()
    snap = await app.store.read(key)
    assert [m.id for m in snap.messages] == ["m0", "m3"]
    assert snap.flush_seq == 0


async def test_a_key_its_resource_cannot_render_is_dead_lettered(
    app: App, raw_producer: AIOKafkaProducer
) -> None:
    prefix = app.settings.key_prefix
    chat, research = f"agent:{prefix}:user:k", f"research:{prefix}:s1"
    log = Log(app, raw_producer)
    await log.keyed(_appended(chat, 0))
    await log.keyed(_appended(research, 0, memory_id="research"))
    # "foo" matches no template; a research key sent as a chat event belongs to research.
    await log.keyed(_appended(f"foo{prefix}", 1), DeadLetterReason.INVALID_KEY)
    await log.keyed(_appended(research, 1, memory_id="chat"), DeadLetterReason.MEMORY_MISMATCH)
    await log.keyed(_appended(chat, 1, memory_id="research"), DeadLetterReason.MEMORY_MISMATCH)
    await log.keyed(_appended(chat, 2))
    await log.keyed(_appended(research, 2, memory_id="research"))

    await log.apply_and_check_dead_letters()
    assert [m.id for m in (await app.store.read(chat)).messages] == ["m0", "m2"]
    stored = await app.store.read(research)
    assert [m.id for m in stored.messages] == ["m0", "m2"]
    assert stored.memory_id == "research"
    assert not (await app.store.read(f"foo{prefix}")).messages
