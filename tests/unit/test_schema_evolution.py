"""Avro schema evolution through the Confluent-framed codec: old writer ↔ new reader."""

from __future__ import annotations

import copy
import struct
from typing import Any

import pytest
from fastavro import parse_schema

from schemas import (
    FLUSH_COMMAND,
    MEMORY_EVENT,
    AvroCodec,
    DecodeError,
    EmbeddedRegistry,
    RegisteredSchema,
    UnknownSchemaError,
    load_schema,
)

V1 = load_schema("flush_command.v1.avsc")


def _v2() -> dict[str, Any]:
    schema = copy.deepcopy(V1)
    schema["fields"].append({"name": "priority", "type": "int", "default": 0})
    return schema


class Registry:
    """A registry that knows both versions by id but whose newest is ``latest_id``."""

    def __init__(self, latest_id: int) -> None:
        v2 = _v2()
        self.schemas = {
            2: RegisteredSchema(2, FLUSH_COMMAND, 1, V1, parse_schema(V1)),
            90: RegisteredSchema(90, FLUSH_COMMAND, 2, v2, parse_schema(v2)),
        }
        self.latest_id = latest_id

    def by_id(self, schema_id: int) -> RegisteredSchema:
        if schema_id not in self.schemas:
            raise UnknownSchemaError(schema_id)
        return self.schemas[schema_id]

    def latest(self, subject: str) -> RegisteredSchema:
        return self.schemas[self.latest_id]


COMMAND = {
    "command_id": "k:1",
    "memory_key": "agent:a:user:b",
    "memory_id": "chat",
    "flush_seq": 1,
    "requested_at": 1_700_000_000_000,
    "source_offset": 42,
}


def test_a_new_reader_reads_an_old_writers_record_with_the_new_fields_default() -> None:
    old = AvroCodec(Registry(latest_id=2))
    new = AvroCodec(Registry(latest_id=90))
    decoded = new.decode(FLUSH_COMMAND, old.encode(FLUSH_COMMAND, COMMAND))
    assert decoded["priority"] == 0
    assert decoded["source_offset"] == 42


def test_an_old_reader_reads_a_new_writers_record_ignoring_the_new_field() -> None:
    old = AvroCodec(Registry(latest_id=2))
    new = AvroCodec(Registry(latest_id=90))
    decoded = old.decode(FLUSH_COMMAND, new.encode(FLUSH_COMMAND, {**COMMAND, "priority": 7}))
    assert "priority" not in decoded
    assert decoded["flush_seq"] == 1


def test_the_wire_format_is_magic_byte_then_big_endian_schema_id() -> None:
    codec = AvroCodec(EmbeddedRegistry())
    data = codec.encode(FLUSH_COMMAND, COMMAND)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == EmbeddedRegistry().latest(FLUSH_COMMAND).id


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (None, "too short"),
        (b"\x01\x00\x00\x00\x01\x02", "magic byte"),
        (b"\x00\x00\x00\x03\xe7\x02", "unknown schema id 999"),
        (b"\x00\x00\x00\x00\x02\xff\xff\xff\xff\xff", "undecodable"),
    ],
)
def test_bytes_that_are_not_a_known_record_raise_a_clear_decode_error(
    data: bytes | None, error: str
) -> None:
    with pytest.raises(DecodeError, match=error):
        AvroCodec(EmbeddedRegistry()).decode(MEMORY_EVENT, data)


def test_timestamps_decode_as_datetimes_or_as_their_milliseconds() -> None:
    data = AvroCodec(EmbeddedRegistry()).encode(FLUSH_COMMAND, COMMAND)
    as_datetime = AvroCodec(EmbeddedRegistry()).decode(FLUSH_COMMAND, data)["requested_at"]
    as_millis = AvroCodec(EmbeddedRegistry(), logical_types=False).decode(FLUSH_COMMAND, data)
    assert int(as_datetime.timestamp() * 1000) == COMMAND["requested_at"]
    assert as_millis["requested_at"] == COMMAND["requested_at"]
