"""Dead-letter records: the original bytes, with the reason and source in headers."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.structs import ConsumerRecord

from memory_core import DeadLetterReason

REASON = "memstream.dlq.reason"
DETAIL = "memstream.dlq.detail"
TOPIC = "memstream.dlq.topic"
PARTITION = "memstream.dlq.partition"
OFFSET = "memstream.dlq.offset"
# wrong_partition: where the memory lives.
HOME_TOPIC = "memstream.dlq.home_topic"
HOME_PARTITION = "memstream.dlq.home_partition"
# Set when the original value (and possibly key and headers) did not fit: its size in bytes.
# The original stays in the source topic at the source position (a re-drive reads it there).
TRUNCATED = "memstream.dlq.truncated"

# What a dead letter may carry of the original record: under the producer's default 1 MiB
# request limit with room for the headers memstream adds.
MAX_CARRIED_BYTES = 900_000
_MAX_KEY_BYTES = 4096

DeadLetter = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes],
    reason: DeadLetterReason,
    detail: str,
    extra: Sequence[tuple[str, bytes]] = (),
    *,
    original: bool = True,
) -> list[tuple[str, bytes]]:
    """Headers naming why and from where a record was dead-lettered (after the original
    headers, unless not ``original``)."""
    return [
        *(record.headers or () if original else ()),
        (REASON, reason.value.encode()),
        (DETAIL, detail[:1000].encode()),
        (TOPIC, record.topic.encode()),
        (PARTITION, str(record.partition).encode()),
        (OFFSET, str(record.offset).encode()),
        *extra,
    ]


def dead_letter(
    record: ConsumerRecord[bytes, bytes],
    reason: DeadLetterReason,
    detail: str,
    extra: Sequence[tuple[str, bytes]] = (),
) -> DeadLetter:
    """The dead letter of ``record``: (key, value, headers), always small enough to send.

    A record too large to carry whole keeps its reason and source position but loses its
    value (then its key and original headers, if still too large): a poison record never
    blocks its partition.
    """
    key, value = record.key, record.value
    headers = dead_letter_headers(record, reason, detail, extra)
    size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
    if size <= MAX_CARRIED_BYTES:
        return key, value, headers
    original = len(value or b"")
    value = None
    if key is not None and len(key) > _MAX_KEY_BYTES:
        key = None
    if sum(len(k) + len(v) for k, v in headers) > MAX_CARRIED_BYTES // 2:
        headers = dead_letter_headers(record, reason, detail, extra, original=False)
    headers.append((TRUNCATED, str(original).encode()))
    return key, value, headers


def header_map(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """Headers as a str → str dict (last value wins)."""
    return {k: v.decode("utf-8", "replace") for k, v in headers}
