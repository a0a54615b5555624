"""How far behind the apply consumer is, per partition: in records (committed position to
high watermark) and as the age of the oldest event not yet applied."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from aiokafka.structs import TopicPartition

from consumers.apply.decoding import Batch


class Lag:
    """The committed position of each partition, and when its unapplied events were sent."""

    def __init__(self, highwater: Callable[[TopicPartition], int | None]) -> None:
        self._highwater = highwater
        self.committed: dict[TopicPartition, int] = {}  # the next offset to apply
        # The Kafka timestamp (ms) of the oldest record fetched and not applied, and of the
        # last one applied.
        self._unapplied_since: dict[TopicPartition, int] = {}
        self._applied_until: dict[TopicPartition, int] = {}

    def records(self) -> dict[tuple[str, int], int]:
        """Records between the committed position and the high watermark, per partition."""
        out: dict[tuple[str, int], int] = {}
        for tp, next_offset in list(self.committed.items()):
            high = self._highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = max(high - next_offset, 0)
        return out

    def age(self) -> dict[tuple[str, int], float]:
        """Per partition, the age in seconds of the oldest event not yet applied (0: none).

        Measured from the record's Kafka timestamp: the oldest one fetched and not applied,
        or, while the next one is not fetched yet, the last one applied (an upper bound). A
        partition behind with neither (nothing of it fetched since it was assigned) has no
        age yet and is left out.
        """
        now_ms = time.time() * 1000
        out: dict[tuple[str, int], float] = {}
        for (topic, partition), lag in self.records().items():
            if not lag:
                out[(topic, partition)] = 0.0
                continue
            tp = TopicPartition(topic, partition)
            since = self._unapplied_since.get(tp, self._applied_until.get(tp))
            if since is not None:
                out[(topic, partition)] = max(now_ms - since, 0.0) / 1000
        return out

    def fetched(self, batch: Batch) -> None:
        """Records of ``batch`` were fetched (not applied yet)."""
        for tp, records in batch.fetched.items():
            self._unapplied_since.setdefault(tp, records[0].timestamp)

    def applied(
        self, batch: Batch, partitions: Mapping[TopicPartition, int], ahead: Batch | None
    ) -> None:
        """``batch`` was applied on ``partitions``; ``ahead`` was fetched after it."""
        next_records = ahead.fetched if ahead is not None else {}
        for tp in partitions:
            self._applied_until[tp] = batch.fetched[tp][-1].timestamp
            if tp in next_records:
                self._unapplied_since[tp] = next_records[tp][0].timestamp
            else:
                self._unapplied_since.pop(tp, None)

    def restart(self, tp: TopicPartition, committed: int) -> None:
        """``tp`` is applied again from ``committed`` (a restore)."""
        self.committed[tp] = committed
        self._unapplied_since.pop(tp, None)

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer ours."""
        self.committed.pop(tp, None)
        self._unapplied_since.pop(tp, None)
        self._applied_until.pop(tp, None)
