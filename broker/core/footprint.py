"""What the model's objects cost in memory, for the memory alarm's estimate.

Queued messages are counted as they come and go (Message.footprint); definitions and client
state are counted here from their numbers, once per alarm check. Without them a client could
declare a hundred thousand queues or bindings, hundreds of megabytes, while the alarm saw
nothing. The figures were measured with tracemalloc on CPython 3.11 (topic bindings, which
also build trie nodes, are the dearest kind) and are rounded up.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.core.vhost import VirtualHost

QUEUE_BYTES = 1600
EXCHANGE_BYTES = 500
BINDING_BYTES = 1000
CHANNEL_BYTES = 2000
CONSUMER_BYTES = 500


def definitions_bytes(vhosts: Iterable[VirtualHost]) -> int:
    """Queues, exchanges and bindings of these vhosts; cost grows with the exchanges only."""
    total = 0
    for vhost in vhosts:
        total += len(vhost.queues) * QUEUE_BYTES + len(vhost.exchanges) * EXCHANGE_BYTES
        total += BINDING_BYTES * sum(
            len(exchange.bindings) for exchange in vhost.exchanges.values()
        )
    return total
