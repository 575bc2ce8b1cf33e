"""Builders shared by the unit tests: messages with real content headers, and a fake sink."""

from __future__ import annotations

from typing import Any

from pamqp import commands, header

from broker.amqp.frames import short_string
from broker.core.consumer import Consumer
from broker.core.message import Message, QueuedMessage
from broker.core.queue import Queue


def content_header(body_size: int = 0, **properties: Any) -> bytes:
    """A Basic content header payload as pamqp (and so a real client) encodes it."""
    props = commands.Basic.Properties(**properties)
    return header.ContentHeader(0, body_size, props).marshal()


def make_message(
    routing_key: str = "",
    body: bytes = b"",
    exchange: str = "",
    headers: dict[str, Any] | None = None,
    **properties: Any,
) -> Message:
    """A Message as the channel assembles it from Basic.Publish + header + body."""
    if headers is not None:
        properties["headers"] = headers
    route = short_string(exchange) + short_string(routing_key)
    return Message(exchange, routing_key, route, content_header(len(body), **properties), body)


class FakeSink:
    """A DeliverySink with a per-consumer credit: how many more deliveries each may take."""

    def __init__(self) -> None:
        self.credit: dict[str, int] = {}
        self.delivered: list[tuple[str, bytes, bool]] = []
        self.entries: list[QueuedMessage] = []
        self.cancelled: list[str] = []

    def can_deliver(self, consumer: Consumer) -> bool:
        return self.credit.get(consumer.tag, 0) > 0

    def deliver(self, consumer: Consumer, queue: Queue, entry: QueuedMessage) -> None:
        self.credit[consumer.tag] -= 1
        self.delivered.append((consumer.tag, entry.message.body, entry.redelivered))
        self.entries.append(entry)

    def consumer_cancelled(self, consumer: Consumer) -> None:
        self.cancelled.append(consumer.tag)


def add_consumer(queue: Queue, sink: FakeSink, tag: str, credit: int = 0) -> Consumer:
    """Subscribe a consumer with the given credit on the sink."""
    sink.credit[tag] = credit
    consumer = Consumer(tag, queue, sink, no_ack=False, exclusive=False, prefetch=0)
    queue.add_consumer(consumer)
    return consumer


def bodies(entries: Any) -> list[bytes]:
    """The bodies of queued messages, in order."""
    return [entry.message.body for entry in entries]
