"""What is committed when: each batch's outputs sent, then its offsets committed, in order.

A batch hands over its outputs and offsets once its writes are answered; sending them and
committing runs in the background while the next batch is applied, so neither the commit's
round trip nor a burst of flush commands holds the next batch's writes back. The rule stays
"commit only what Redis holds and what was announced": a batch's offsets are committed only
after its outputs are acknowledged and after every earlier batch's commit. A failure is kept
and reported by ``failure()``: the caller rewinds to where the first uncommitted batch began.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from consumers.apply.outputs import BatchOutputs

log = logging.getLogger(__name__)

# Batches whose checkpoint may still run while the next ones are applied: beyond this the
# loop waits (Kafka is slower than the apply path; memory must stay bounded).
MAX_PENDING = 2


@dataclass(slots=True)
class _Pending:
    task: asyncio.Task[None]
    # Where each partition of the batch began: the rewind point if it is not committed.
    starts: dict[TopicPartition, int]


class Checkpoints:
    """The batches handed over and not yet committed, oldest first."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        on_committed: Callable[[dict[TopicPartition, int]], None],
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._on_committed = on_committed
        self._pending: list[_Pending] = []

    def __len__(self) -> int:
        return len(self._pending)

    async def submit(
        self,
        outputs: BatchOutputs,
        commit: dict[TopicPartition, int],
        starts: dict[TopicPartition, int],
    ) -> None:
        """Send ``outputs`` then commit ``commit``, after the batches handed over before."""
        previous = self._pending[-1].task if self._pending else None
        task = asyncio.create_task(self._finish(previous, outputs, commit))
        self._pending.append(_Pending(task, starts))
        self._forget_done()
        if len(self._pending) > MAX_PENDING:
            # Waits for the oldest; its failure, if any, is reported by the next failure().
            await asyncio.wait([self._pending[0].task])

    async def _finish(
        self,
        previous: asyncio.Task[None] | None,
        outputs: BatchOutputs,
        commit: dict[TopicPartition, int],
    ) -> None:
        if previous is not None:
            # An earlier batch not committed: committing this one would skip it.
            await asyncio.shield(previous)
        await outputs.send(self._producer)
        if commit:
            await asyncio.shield(self._consumer.commit(commit))
            self._on_committed(commit)

    def _forget_done(self) -> None:
        while self._pending and self._pending[0].task.done():
            if self._pending[0].task.cancelled() or self._pending[0].task.exception():
                return
            self._pending.pop(0)

    def failure(self) -> tuple[BaseException, dict[TopicPartition, int]] | None:
        """The first failed checkpoint's error and where every uncommitted batch began
        (earliest per partition), forgetting them all; None while nothing failed."""
        self._forget_done()
        if not self._pending or not self._pending[0].task.done():
            return None
        first = self._pending[0].task
        exc = None if first.cancelled() else first.exception()
        error: BaseException = exc if exc is not None else asyncio.CancelledError()
        starts: dict[TopicPartition, int] = {}
        for p in self._pending:
            p.task.cancel()
            for tp, offset in p.starts.items():
                starts[tp] = min(offset, starts.get(tp, offset))
        self._pending.clear()
        return error, starts

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every handed-over batch is committed or failed (True if all were)."""
        if not self._pending:
            return True
        done, _ = await asyncio.wait([p.task for p in self._pending], timeout=timeout_s)
        ok = len(done) == len(self._pending) and all(
            not t.cancelled() and t.exception() is None for t in done
        )
        if not ok:
            log.warning("checkpoints not all committed within %ss", timeout_s)
        self._forget_done()
        return ok
