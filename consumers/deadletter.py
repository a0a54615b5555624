"""Dead-letter records: the original bytes, with the reason and source in headers."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from memory_core import DeadLetterReason

REASON = "memstream.dlq.reason"
DETAIL = "memstream.dlq.detail"
TOPIC = "memstream.dlq.topic"
PARTITION = "memstream.dlq.partition"
OFFSET = "memstream.dlq.offset"


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes], reason: DeadLetterReason, detail: str
) -> list[tuple[str, bytes]]:
    """Headers naming why and from where a record was dead-lettered (original headers kept)."""
    return [
        *(record.headers or ()),
        (REASON, reason.value.encode()),
        (DETAIL, detail[:1000].encode()),
        (TOPIC, record.topic.encode()),
        (PARTITION, str(record.partition).encode()),
        (OFFSET, str(record.offset).encode()),
    ]


def header_map(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """Headers as a str → str dict (last value wins)."""
    return {k: v.decode("utf-8", "replace") for k, v in headers}
