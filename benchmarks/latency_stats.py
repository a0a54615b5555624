"""The latency benchmark's statistics: percentiles, per-second timelines, lag (pure)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

NS, MS = 1_000_000_000, 1_000_000
# "Keeps up": the backlog (sent, not yet visible) never exceeds this much production, and
# what is behind when the producer stops is visible within KEEPS_UP_DRAIN_S.
KEEPS_UP_BACKLOG_S = 1.0
KEEPS_UP_DRAIN_S = 2.0


def percentile(ordered: Sequence[int], q: float) -> int:
    """The nearest-rank ``q`` quantile (0 < q ≤ 1) of ``ordered`` (sorted ascending)."""
    if not ordered:
        raise ValueError("no values")
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """p50, p99 and max of some latencies, in ms."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, latencies_ns: Sequence[int]) -> Latency:
        """Of ``latencies_ns`` (any order; empty: all zero)."""
        if not latencies_ns:
            return cls(0, 0.0, 0.0, 0.0)
        ordered = sorted(latencies_ns)
        return cls(
            len(ordered),
            percentile(ordered, 0.5) / MS,
            percentile(ordered, 0.99) / MS,
            ordered[-1] / MS,
        )


@dataclass(frozen=True, slots=True)
class Second:
    """One second of a run: sent and made visible in it, their p99, the backlog at its end."""

    second: int
    sent: int
    visible: int
    p99_ms: float
    backlog: int


def timeline(sent: Sequence[int], seen: Sequence[int], origin_ns: int) -> list[Second]:
    """Per second since ``origin_ns``; event ``i`` sent at ``sent[i]``, seen at ``seen[i]``
    (ns; ``-1``: never seen). The p99 is of the events that became visible in that second."""
    if not sent:
        return []
    last = max(max(sent), max(seen)) - origin_ns
    seconds = max(last // NS + 1, 1)
    sent_in = [0] * seconds
    latencies: list[list[int]] = [[] for _ in range(seconds)]
    for s, v in zip(sent, seen, strict=True):
        sent_in[max((s - origin_ns) // NS, 0)] += 1
        if v >= 0:
            latencies[max((v - origin_ns) // NS, 0)].append(v - s)
    out: list[Second] = []
    backlog = 0
    for i in range(seconds):
        backlog += sent_in[i] - len(latencies[i])
        p99 = Latency.of(latencies[i]).p99_ms
        out.append(Second(i, sent_in[i], len(latencies[i]), p99, backlog))
    return out


@dataclass(frozen=True, slots=True)
class Lag:
    """How far behind the consumer was: at worst, when the producer stopped, and for how long.

    ``caught_up_after_s`` is infinite when some event was never seen.
    """

    max_backlog: int
    behind_at_stop: int
    caught_up_after_s: float

    @classmethod
    def of(cls, sent: Sequence[int], seen: Sequence[int], stopped_ns: int) -> Lag:
        """Event ``i`` sent at ``sent[i]``, seen at ``seen[i]`` (``-1``: never)."""
        # +1 at each send, -1 at each sighting; at equal times sends first (the worse case).
        steps = sorted([(s, 0) for s in sent] + [(v, 1) for v in seen if v >= 0])
        backlog = worst = 0
        for _, kind in steps:
            backlog += 1 if kind == 0 else -1
            worst = max(worst, backlog)
        behind = sum(1 for v in seen if v < 0 or v > stopped_ns)
        if any(v < 0 for v in seen):
            after = math.inf
        else:
            after = max(0.0, (max(seen, default=stopped_ns) - stopped_ns) / NS)
        return cls(worst, behind, after)

    def keeps_up(self, rate: float) -> bool:
        """Bounded lag: never more than ``KEEPS_UP_BACKLOG_S`` of production behind, and what
        was behind at the stop visible within ``KEEPS_UP_DRAIN_S``."""
        bound = rate * KEEPS_UP_BACKLOG_S
        return (
            self.max_backlog <= bound
            and self.behind_at_stop <= bound
            and self.caught_up_after_s <= KEEPS_UP_DRAIN_S
        )


def matched(
    stamps: dict[int, array[int]], seen: dict[int, tuple[array[int], array[int]]]
) -> tuple[list[int], list[int]]:
    """Send and first-seen times of every record sent, matched by partition and offset.

    ``stamps``: send times per partition, indexed by offset (``-1``: not sent by the
    producer); ``seen``: per partition, the offsets seen and when (a record may be seen again
    after a retry: the first time counts). Never seen: ``-1``.
    """
    sent_out: list[int] = []
    seen_out: list[int] = []
    for partition, sent_at in stamps.items():
        first = array("q", [-1]) * len(sent_at)
        offsets, times = seen.get(partition, (array("q"), array("q")))
        for offset, t in zip(offsets, times, strict=True):
            if 0 <= offset < len(first) and (first[offset] < 0 or t < first[offset]):
                first[offset] = t
        for s, v in zip(sent_at, first, strict=True):
            if s >= 0:
                sent_out.append(s)
                seen_out.append(v)
    return sent_out, seen_out
