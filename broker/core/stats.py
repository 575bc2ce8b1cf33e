"""Broker-wide counters: plain integers bumped on the hot path, read by metrics at scrape time.

No locks, no labels, no dictionary lookups per message: an attribute increment is all a publish
or an ack pays. Per-queue figures live on the queues themselves.
"""

from __future__ import annotations


class Counters:
    __slots__ = (
        "acked",
        "channels_closed",
        "channels_opened",
        "confirmed",
        "connections_closed",
        "connections_opened",
        "delivered",
        "delivered_no_ack",
        "get",
        "get_empty",
        "get_no_ack",
        "nacked",
        "published",
        "redelivered",
        "rejected",
        "requeued",
        "routed",
        "unroutable_dropped",
        "unroutable_returned",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
