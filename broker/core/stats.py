"""Broker-wide counters: plain integers bumped on the hot path, read by metrics at scrape time.

No locks, no labels, no dictionary lookups per message: an attribute increment is all a publish
or an ack pays. Per-queue figures live on the queues themselves.
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (seconds) for fsync latency: from a fast NVMe flush to a stalled disk.
FSYNC_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Counters:
    """Node-wide totals; every one starts at 0 (class defaults, which a compiled class sets
    on each instance)."""

    acked: int = 0
    channels_closed: int = 0
    channels_opened: int = 0
    confirmed: int = 0
    connections_closed: int = 0
    connections_opened: int = 0
    delivered: int = 0
    delivered_no_ack: int = 0
    get: int = 0
    get_empty: int = 0
    get_no_ack: int = 0
    nacked: int = 0
    published: int = 0
    received_confirm: int = 0
    redelivered: int = 0
    rejected: int = 0
    requeued: int = 0
    routed: int = 0
    unroutable_dropped: int = 0
    unroutable_returned: int = 0


class LatencyHistogram:
    """Durations in fixed buckets, observed as integer nanoseconds, read at scrape time.

    The write-ahead log's worker thread observes each fsync while the event loop may be reading:
    observe() is a bisect and two integer additions (no lock, no allocation, no float sum), and
    the only writer is that one thread, so no update is lost. A reader may see an observation in
    its bucket before it reaches sum_ns, which a scrape tolerates.
    """

    __slots__ = ("_bounds_ns", "bounds", "counts", "sum_ns")

    def __init__(self, bounds: tuple[float, ...] = FSYNC_BUCKETS) -> None:
        self.bounds = bounds
        self._bounds_ns = [round(bound * 1e9) for bound in bounds]
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum_ns = 0

    def observe(self, nanoseconds: int) -> None:
        self.counts[bisect_left(self._bounds_ns, nanoseconds)] += 1
        self.sum_ns += nanoseconds
