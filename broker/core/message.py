"""A published message as the broker holds it.

The content header is kept as the raw payload the publisher sent, and the exchange/routing-key pair
as the raw short strings from Basic.Publish, so delivery writes them back without re-encoding. One
`Message` is shared by every queue it is routed to; per-queue state lives in `QueuedMessage`.
"""

from __future__ import annotations

from typing import Any, Final

from broker.core.properties import decode_properties, delivery_mode, timing

# Where a QueuedMessage is: in its queue's ready store, out with a consumer, or removed.
READY: Final = 0
OUT: Final = 1
GONE: Final = 2

# Per queued message beyond its bytes: Message, QueuedMessage, deque and set slots (measured).
ENTRY_OVERHEAD: Final = 400


class Message:
    __slots__ = (
        "body",
        "body_size",
        "exchange",
        "footprint",
        "header",
        "lazy",
        "location",
        "msg_id",
        "priority",
        "published_at",
        "refs",
        "route_bytes",
        "routing_key",
        "ttl",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        route_bytes: bytes,
        header: bytes,
        body: bytes | None,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        # shortstr(exchange) + shortstr(routing_key): the bytes Deliver/GetOk/Return carry.
        self.route_bytes = route_bytes
        self.header = header
        # None when the body lives only in the log (recovered messages); see MessageStore.read_body.
        self.body = body
        self.body_size = len(body) if body is not None else 0
        # The priority property (0 when absent) and the expiration property in milliseconds
        # (-1 when absent), decoded here only when their flags are set. An invalid expiration
        # raises a 406 ChannelException, as RabbitMQ refuses it at publish.
        self.priority = 0
        self.ttl = -1
        if header[12] & 0x09:
            self.priority, self.ttl = timing(header)
        # Wall-clock seconds when the message was routed; TTL deadlines count from it. Read from
        # the clock only when needed (the message is logged, or a queue gives it a TTL).
        self.published_at = 0.0
        # Estimated memory while queued, computed once: the memory alarm's unit of account.
        self.footprint = ENTRY_OVERHEAD + len(header) + (len(body) if body is not None else 0)
        # A body that lives in the log (recovered messages) is loaded only for each delivery and
        # dropped again, so memory stays what `footprint` counts.
        self.lazy = body is None
        # Set by the store when the message is logged: its id, where its record is, and how many
        # surviving queues still hold it (the record can go once that reaches zero).
        self.msg_id = 0
        self.location: tuple[int, int] = (0, 0)
        self.refs = 0

    def evict_body(self) -> None:
        """The body is in the log now: drop it from memory and read it back for each delivery
        (as a recovered message does), before any queue counted it."""
        if self.body is not None:
            self.footprint -= len(self.body)
            self.body = None
            self.lazy = True

    def keep_body(self, body: bytes) -> None:
        """The body read back from the log is kept in memory from now on (its record may go
        while a queue still holds the message), before any queue counted it."""
        if self.body is None:
            self.body = body
            self.footprint += len(body)
            self.lazy = False

    @property
    def properties(self) -> dict[str, Any]:
        """Decoded basic properties, decoded again at each use and never kept: a decoded
        headers table can take many times the bytes of the header it came from, for as long as
        the message is queued, where the memory alarm does not see it. The few users (user-id
        and reply-to checks, headers routing) run once per publish."""
        return decode_properties(self.header)

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.get("headers") or {}

    @property
    def persistent(self) -> bool:
        return delivery_mode(self.header) == 2


class BccMessage(Message):
    """A message published with a BCC header, which is removed from the header before it is
    stored; a dead-lettered copy is routed by its keys too (RabbitMQ keeps them in its message
    record). Rare, so kept off every other message."""

    __slots__ = ("bcc",)

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        route_bytes: bytes,
        header: bytes,
        body: bytes | None,
        bcc: tuple[str, ...],
    ) -> None:
        super().__init__(exchange, routing_key, route_bytes, header, body)
        self.bcc = bcc


def bcc_keys(message: Message) -> tuple[str, ...]:
    return message.bcc if isinstance(message, BccMessage) else ()


class QueuedMessage:
    """A message's place in one queue: its order there and whether it was delivered before."""

    __slots__ = ("expires_at", "message", "redelivered", "returns", "seq", "state")

    def __init__(self, message: Message, seq: int, expires_at: float = 0.0) -> None:
        self.message = message
        self.seq = seq
        self.redelivered = False
        self.state = READY
        # Wall-clock deadline in this queue (0.0: none): the TTL counts from the enqueue into
        # each queue and survives a requeue.
        self.expires_at = expires_at
        # Times it came back to this queue after a delivery (x-delivery-count, delivery limit).
        self.returns = 0
