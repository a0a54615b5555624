"""Errors of the schemas package (it imports nothing else of memstream)."""

from __future__ import annotations


class SchemaError(Exception):
    """Base of the schema errors."""


class DecodeError(SchemaError):
    """Bytes that are not a Confluent-framed Avro record of a known schema."""


class UnknownSchemaError(DecodeError):
    """A schema id no registry knows."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"unknown schema id {schema_id}")
        self.schema_id = schema_id


class SchemaRegistryError(SchemaError):
    """The registry could not be read or written."""
