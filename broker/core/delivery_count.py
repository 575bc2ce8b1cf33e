"""x-delivery-count: how often a message came back to its queue, as a header on its delivery.

RabbitMQ's quorum queues add it to a consumer's delivery from the first return on, and to every
Basic.Get-Ok (0 the first time); Warren does so for quorum queues and for every queue with a
delivery limit. The header is written into the publisher's
property bytes without touching the other fields (see header_edit).
"""

from __future__ import annotations

import struct

from broker.core.header_edit import (
    header_entries,
    join_properties,
    set_header_entries,
    split_properties,
)

KEY = "x-delivery-count"
_LONG = struct.Struct(">q")


def with_delivery_count(header: bytes, count: int) -> bytes:
    """The content header with x-delivery-count set to `count`: a signed 64-bit long, whatever
    type a client's own had, and the headers table re-sorted by key, as RabbitMQ writes it."""
    prefix, props = split_properties(header)
    entries = [item for item in header_entries(props) if item[0] != KEY]
    entries.append((KEY, b"l" + _LONG.pack(count)))
    set_header_entries(props, sorted(entries))
    return join_properties(prefix, props)
