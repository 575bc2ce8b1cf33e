"""A consumer subscribed to a queue, and the interface the wire layer implements to receive.

The queue decides *which* consumer gets the next message (round robin); the consumer's sink (an
AMQP channel) decides *whether* it can take one now (prefetch, flow, socket back-pressure) and
puts it on the wire. Keeping that split means the model never touches a socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from broker.core.message import QueuedMessage
    from broker.core.queue import Queue


class DeliverySink(Protocol):
    def can_deliver(self, consumer: Consumer) -> bool:
        """True when the consumer may take one more message now."""

    def deliver(self, consumer: Consumer, queue: Queue, entry: QueuedMessage) -> None:
        """Send the message to the consumer's client and track it until settled."""

    def consumer_cancelled(self, consumer: Consumer) -> None:
        """The queue went away under the consumer (RabbitMQ's consumer_cancel_notify)."""


class Consumer:
    __slots__ = (
        "arguments",
        "exclusive",
        "no_ack",
        "prefetch",
        "priority",
        "queue",
        "sink",
        "tag",
        "unacked",
        "wire_tag",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        sink: DeliverySink,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.sink = sink
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch  # per-consumer limit (basic.qos global=false); 0 = unlimited
        self.unacked = 0
        self.arguments = arguments or {}
        priority = self.arguments.get("x-priority", 0)
        self.priority = priority if isinstance(priority, int) else 0
        self.wire_tag = b""  # the sink's cached wire encoding of the tag
