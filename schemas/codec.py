"""Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the Avro body."""

from __future__ import annotations

import io
import struct
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.errors import DecodeError
from schemas.registry import RegisteredSchema, SchemaRegistry

MAGIC = 0
_HEADER = struct.Struct(">bI")


class AvroCodec:
    """Encodes with a subject's latest schema; decodes any registered writer schema into the
    reader schema of the same subject (schema evolution by Avro resolution)."""

    def __init__(self, registry: SchemaRegistry, *, logical_types: bool = True) -> None:
        """With ``logical_types`` False, timestamps decode as their epoch-millisecond longs.

        The bytes are the same either way; skipping the datetime conversion saves time on a
        consumer that only needs the number.
        """
        self.registry = registry
        self.logical_types = logical_types
        self._readers: dict[str, RegisteredSchema] = {}
        self._plain: dict[int, Any] = {}

    def encode(self, subject: str, record: dict[str, Any]) -> bytes:
        """Frame ``record`` with the latest schema of ``subject``."""
        registered = self.registry.latest(subject)
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, registered.id))
        schemaless_writer(buf, registered.parsed, record)
        return buf.getvalue()

    def decode(self, subject: str, data: bytes | None) -> dict[str, Any]:
        """Decode framed bytes into the reader (latest) schema of ``subject``."""
        if data is None or len(data) < _HEADER.size + 1:
            raise DecodeError(f"{0 if data is None else len(data)} bytes: too short for a record")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"magic byte {magic}, expected {MAGIC} (not Confluent-framed)")
        writer = self.registry.by_id(schema_id)
        reader = self._readers.get(subject)
        if reader is None:
            reader = self._readers[subject] = self.registry.latest(subject)
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(
                body,
                self._schema(writer),
                self._schema(reader) if reader.id != writer.id else None,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:  # fastavro raises many types for corrupt bodies
            raise DecodeError(f"schema {schema_id}: undecodable Avro body ({exc})") from exc
        if body.tell() != len(data):
            raise DecodeError(f"schema {schema_id}: {len(data) - body.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise DecodeError(f"schema {schema_id}: not a record")
        return record

    def _schema(self, registered: RegisteredSchema) -> Any:
        if self.logical_types:
            return registered.parsed
        plain = self._plain.get(registered.id)
        if plain is None:
            plain = self._plain[registered.id] = parse_schema(
                _without_logical_types(registered.schema)
            )
        return plain


def _without_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` with every ``logicalType`` annotation removed."""
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(v) for v in schema]
    return schema
