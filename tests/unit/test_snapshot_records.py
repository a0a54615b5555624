"""Snapshot records: a memory's whole state and a watermark survive the Avro round trip,
and what a reader cannot trust is refused with the reason."""

from __future__ import annotations

import pytest

from consumers.snapshots import (
    MemorySnapshot,
    decode_record,
    encode_snapshot,
    encode_watermark,
    snapshot_topic,
    watermark_key,
)
from memory_core import MemoryState, Message, Role, ToolCall
from schemas import MEMORY_SNAPSHOT, AvroCodec, DecodeError, EmbeddedRegistry


def _state() -> MemoryState:
    return MemoryState(
        messages=(
            Message("m1", Role.SYSTEM, "be brief", 3, 1_000),
            Message("m2", Role.USER, "héllo ✓", 4, 1_001, metadata={"lang": "fr"}),
            Message(
                "m3",
                Role.ASSISTANT,
                "",
                9,
                1_002,
                tool_calls=(ToolCall("c1", "lookup", '{"q": 1}'),),
            ),
            Message("m4", Role.TOOL, "42", 2, 1_003, tool_call_id="c1", name="lookup"),
        ),
        last_offset=17,
        recent_event_ids=("e1", "e2"),
        flush_seq=2,
        flush_pending=True,
        flush_offset=15,
        flush_requested_at_ms=1_002,
        last_tokens_saved=30,
        tokens_saved_total=55,
        recent_rejections=((12, "too_large"),),
    )


@pytest.mark.parametrize("logical_types", [True, False])
def test_a_snapshot_keeps_the_whole_state(logical_types: bool) -> None:
    codec = AvroCodec(EmbeddedRegistry(), logical_types=logical_types)
    snap = MemorySnapshot("agent:a:user:u", "chat", _state(), 1_700_000_000_123)
    back = decode_record(codec, encode_snapshot(codec, "t.events:3", snap))
    assert back == snap
    assert isinstance(back, MemorySnapshot) and back.last_offset == 17


def test_a_watermark_is_its_offset() -> None:
    codec = AvroCodec(EmbeddedRegistry())
    assert decode_record(codec, encode_watermark(codec, "t.events:2", 2, 9_001)) == 9_001
    assert watermark_key(2) == b"__watermark__:2"
    assert snapshot_topic("t.events.g2") == "t.events.g2.snapshots"


def test_an_unknown_state_format_or_a_corrupt_state_is_refused() -> None:
    codec = AvroCodec(EmbeddedRegistry())
    record = {
        "home": "t.events:0",
        "taken_at": 1,
        "payload": (
            "memstream.v1.MemorySnapshot",
            {
                "memory_key": "k",
                "memory_id": "chat",
                "last_offset": 1,
                "last_event_at": 1,
                "state_format": "memstream-state+json/9",
                "state": b"{}",
            },
        ),
    }
    with pytest.raises(DecodeError, match="format"):
        decode_record(codec, codec.encode(MEMORY_SNAPSHOT, record))
    record["payload"][1].update(state_format="memstream-state+json/1", state=b'{"messages": 3}')
    with pytest.raises(DecodeError, match="snapshot of k"):
        decode_record(codec, codec.encode(MEMORY_SNAPSHOT, record))
