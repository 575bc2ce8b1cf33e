"""The fixed-bucket latency histogram the write-ahead log's worker thread updates."""

from __future__ import annotations

from broker.core.stats import LatencyHistogram


def test_observations_land_in_the_first_bucket_whose_bound_is_not_below_them() -> None:
    histogram = LatencyHistogram((0.001, 0.01))
    for nanoseconds in (0, 1_000_000, 1_000_001, 10_000_000, 10_000_001, 5_000_000_000):
        histogram.observe(nanoseconds)
    assert histogram.counts == [2, 2, 2]  # <= 1 ms, <= 10 ms, +Inf
    assert histogram.sum_ns == 5_022_000_002
