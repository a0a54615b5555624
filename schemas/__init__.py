"""Avro schemas of memstream's events and their Confluent-framed codec."""

from schemas.codec import AvroCodec
from schemas.errors import DecodeError, SchemaError, SchemaRegistryError, UnknownSchemaError
from schemas.registry import (
    FLUSH_COMMAND,
    MEMORY_EVENT,
    MEMORY_SNAPSHOT,
    ConfluentRegistry,
    EmbeddedRegistry,
    RegisteredSchema,
    SchemaRegistry,
    load_schema,
)

__all__ = [
    "FLUSH_COMMAND",
    "MEMORY_EVENT",
    "MEMORY_SNAPSHOT",
    "AvroCodec",
    "ConfluentRegistry",
    "DecodeError",
    "EmbeddedRegistry",
    "RegisteredSchema",
    "SchemaError",
    "SchemaRegistry",
    "SchemaRegistryError",
    "UnknownSchemaError",
    "load_schema",
]
