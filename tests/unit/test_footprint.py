"""The memory alarm counts definitions by their number."""

from __future__ import annotations

from broker.core.footprint import BINDING_BYTES, QUEUE_BYTES, definitions_bytes
from broker.core.vhost import VirtualHost


def test_definitions_count_towards_the_estimate() -> None:
    """Found in review: 100k queues and bindings took ~290 MiB the alarm never saw."""
    vhost = VirtualHost("/")
    empty = definitions_bytes([vhost])
    vhost.declare_exchange("t", "topic")
    for number in range(1000):
        vhost.declare_queue(f"q{number}", None)
        vhost.bind("t", f"q{number}", f"a.{number}.#", {})
    assert definitions_bytes([vhost]) - empty >= 1000 * (QUEUE_BYTES + BINDING_BYTES)
