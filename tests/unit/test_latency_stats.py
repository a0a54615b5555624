"""The latency benchmark's statistics: percentiles, per-second timeline, lag and keeping up."""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import asdict

import pytest

from benchmarks.latency import GATING, LatencyResult
from benchmarks.latency_stats import (
    KEEPS_UP_BACKLOG_S,
    KEEPS_UP_DRAIN_S,
    NS,
    Lag,
    Latency,
    Second,
    matched,
    percentile,
    timeline,
)

MS = 1_000_000


def test_percentile_is_the_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.001) == 1
    assert percentile([7], 0.99) == 7


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_latency_summary_is_in_milliseconds_whatever_the_order() -> None:
    latency = Latency.of([3 * MS, 1 * MS, 2 * MS, 100 * MS])
    assert latency == Latency(count=4, p50_ms=2.0, p99_ms=100.0, max_ms=100.0)
    assert Latency.of([]) == Latency(0, 0.0, 0.0, 0.0)


def test_timeline_buckets_sends_and_sightings_by_their_own_second() -> None:
    origin = 10 * NS
    # Two events sent in second 0, one seen in second 0 and one in second 1; one sent in 1.
    sent = [origin, origin + NS // 2, origin + NS + 1]
    seen = [origin + 5 * MS, origin + NS + 100 * MS, origin + NS + 3 * MS]
    assert timeline(sent, seen, origin) == [
        Second(0, sent=2, visible=1, p99_ms=5.0, backlog=1),
        Second(1, sent=1, visible=2, p99_ms=600.0, backlog=0),
    ]


def test_timeline_counts_an_event_never_seen_in_the_backlog_to_the_end() -> None:
    origin = 0
    out = timeline([0, 1], [-1, 2 * NS], origin)
    assert [s.backlog for s in out] == [2, 2, 1]
    assert [s.visible for s in out] == [0, 0, 1]


def test_lag_finds_the_worst_backlog_and_what_was_behind_at_the_stop() -> None:
    # Sent at 0, 1, 2, 3 s; seen at 2.5, 2.6, 2.7 and 3.5 s; the producer stopped at 3 s.
    sent = [0, NS, 2 * NS, 3 * NS]
    seen = [int(2.5 * NS), int(2.6 * NS), int(2.7 * NS), int(3.5 * NS)]
    lag = Lag.of(sent, seen, stopped_ns=3 * NS)
    assert lag.max_backlog == 3
    assert lag.behind_at_stop == 1
    assert lag.caught_up_after_s == pytest.approx(0.5)


def test_lag_of_an_event_never_seen_never_catches_up() -> None:
    lag = Lag.of([0, 1], [5, -1], stopped_ns=10)
    assert lag.behind_at_stop == 1
    assert math.isinf(lag.caught_up_after_s)
    assert not lag.keeps_up(rate=1_000_000)


def test_keeps_up_bounds_backlog_and_drain_time_by_the_rate() -> None:
    rate = 1000.0
    bound = int(rate * KEEPS_UP_BACKLOG_S)
    assert Lag(bound, bound, KEEPS_UP_DRAIN_S).keeps_up(rate)
    assert not Lag(bound + 1, 0, 0.0).keeps_up(rate)  # fell a second of production behind
    assert not Lag(10, bound + 1, 0.0).keeps_up(rate)
    assert not Lag(10, 10, KEEPS_UP_DRAIN_S + 0.1).keeps_up(rate)  # drained too slowly


def test_matched_pairs_send_times_with_the_first_sighting_by_offset() -> None:
    stamps = {0: array("q", [100, 200, -1, 400]), 1: array("q", [150])}
    # Offset 1 seen twice (redelivered after a retry): the first time counts; offset 3 never.
    seen = {0: (array("q", [1, 0, 1]), array("q", [260, 120, 230])), 1: (array("q"), array("q"))}
    sent, first = matched(stamps, seen)
    assert sent == [100, 200, 400, 150]
    assert first == [120, 230, -1, -1]


def test_only_the_gating_latency_targets_decide_whether_the_benchmark_passes() -> None:
    targets = {"half 50 ms / p99": 1.0, "300 MiB / RSS applied": 1.0}
    ratios = {"half 50 ms / p99": 0.1, "300 MiB / RSS applied": 1.06}
    gated = LatencyResult(
        name="latency", ratios=ratios, targets=targets, gating=("300 MiB / RSS applied",)
    )
    assert gated.passed and not gated.targets_met
    assert not LatencyResult(
        name="latency", ratios=ratios, targets=targets, gating=("half 50 ms / p99",)
    ).passed
    # The default: nothing gates yet, every target is reported.
    assert not GATING and LatencyResult(name="latency", ratios=ratios, targets=targets).passed
    # What save() writes is JSON.
    assert json.loads(json.dumps(asdict(gated)))["gating"] == ["300 MiB / RSS applied"]
