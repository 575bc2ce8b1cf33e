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


class ManualTimer:
    def __init__(self, clock: ManualClock, when: float, callback: Any) -> None:
        self.clock, self.when, self.callback = clock, when, callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock the test moves: `advance` runs the timers that come due, in deadline order."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.time = start
        self.timers: list[ManualTimer] = []

    def now(self) -> float:
        return self.time

    def call_later(self, delay: float, callback: Any) -> ManualTimer:
        timer = ManualTimer(self, self.time + max(delay, 0.0), callback)
        self.timers.append(timer)
        return timer

    @property
    def pending(self) -> list[ManualTimer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def advance(self, seconds: float) -> None:
        target = self.time + seconds
        while True:
            due = [t for t in self.pending if t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.time = max(self.time, timer.when)
            timer.callback()
        self.time = target
