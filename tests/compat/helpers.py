"""Shared helpers for the compat suites.

Expected broker closes (`expect_channel_close`, `expect_connection_close`), waiting on a
BlockingConnection with a deadline instead of hanging, collecting deliveries, routing probes and
cleanup of the queues/exchanges a test created on a (possibly shared) broker.

Set `WARREN_REPLY_LOG=/some/file.jsonl` to have every broker close that a test expected appended
there as one JSON object per line (test id, channel/connection, code, text): that is how the
RabbitMQ reply texts in the notes for the broker author were collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.rawamqp import REPLY_NAMES

DEFAULT_TIMEOUT = 5.0


# --- expected closes ------------------------------------------------------------------------------


@dataclass
class BrokerClose:
    """What the broker sent in Channel.Close / Connection.Close (filled in on context exit)."""

    code: int = 0
    text: str = ""


def _record(scope: str, code: int, text: str) -> None:
    path = os.environ.get("WARREN_REPLY_LOG")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, "scope": scope, "code": code, "text": text}) + "\n")


def check_reply(scope: str, code: int, text: str, expected: int, mentions: tuple[str, ...]) -> None:
    """Assert a close's reply code, that its text starts with `NAME - ` and names `mentions`."""
    _record(scope, code, text)
    assert code == expected, f"{scope} closed with {code} {text!r}, expected {expected}"
    prefix = f"{REPLY_NAMES[expected]} - "
    assert text.startswith(prefix), f"reply text {text!r} does not start with {prefix!r}"
    for mention in mentions:
        assert mention in text, f"reply text {text!r} does not mention {mention!r}"


@contextlib.contextmanager
def expect_channel_close(
    channel: BlockingChannel, code: int, *mentions: str, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[BrokerClose]:
    """Expect the broker to close `channel` with `code` because of what the block does.

    A synchronous method (declare, bind...) raises ChannelClosedByBroker inside the block; for an
    asynchronous one (publish, ack...) this waits, up to `timeout`, for the Channel.Close.
    """
    result = BrokerClose()
    try:
        yield result
        wait_until(channel.connection, lambda: channel.is_closed, timeout, "Channel.Close")
        reason = channel._closing_reason  # pika keeps the broker's close here
        assert isinstance(reason, pika.exceptions.ChannelClosedByBroker), reason
    except pika.exceptions.ChannelClosedByBroker as exc:
        reason = exc
    result.code, result.text = reason.reply_code, reason.reply_text
    check_reply("channel", result.code, result.text, code, mentions)
    assert channel.is_closed
    assert channel.connection.is_open, "the broker closed the connection, not only the channel"


@contextlib.contextmanager
def expect_connection_close(
    connection: BlockingConnection, code: int, *mentions: str, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[BrokerClose]:
    """Expect the broker to close the whole `connection` with `code` because of the block."""
    result = BrokerClose()
    try:
        yield result
        wait_until(connection, lambda: connection.is_closed, timeout, "Connection.Close")
        raise AssertionError("connection closed without ConnectionClosedByBroker")
    except pika.exceptions.ConnectionClosedByBroker as exc:
        result.code, result.text = exc.reply_code, exc.reply_text
    check_reply("connection", result.code, result.text, code, mentions)
    assert connection.is_closed


# --- waiting --------------------------------------------------------------------------------------


def wait_until(
    connection: BlockingConnection,
    predicate: Callable[[], bool],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
) -> None:
    """Process I/O until `predicate()` holds; fail (instead of hanging) after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        connection.process_data_events(time_limit=0.02)


def pump(connection: BlockingConnection, duration: float = 0.2) -> None:
    """Process I/O for `duration` seconds (to see that nothing more arrives)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        connection.process_data_events(time_limit=min(0.05, max(0.0, deadline - time.monotonic())))


@dataclass
class Delivery:
    method: pika.spec.Basic.Deliver
    properties: pika.spec.BasicProperties
    body: bytes


@dataclass
class Collector:
    """A consumer callback that stores every delivery (optionally acking it)."""

    auto_ack_after: bool = False
    deliveries: list[Delivery] = field(default_factory=list)

    def __call__(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        self.deliveries.append(Delivery(method, properties, body))
        if self.auto_ack_after:
            channel.basic_ack(method.delivery_tag)

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]

    def wait_for(self, connection: BlockingConnection, count: int, timeout: float = 5.0) -> None:
        wait_until(connection, lambda: len(self.deliveries) >= count, timeout, f"{count} messages")


def get_all(channel: BlockingChannel, queue: str, auto_ack: bool = True) -> list[Delivery]:
    """Basic.Get until Basic.GetEmpty."""
    out: list[Delivery] = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            return out
        out.append(Delivery(method, properties, body))


def message_count(channel: BlockingChannel, queue: str) -> int:
    """Ready messages in `queue` (passive Queue.Declare)."""
    return channel.queue_declare(queue, passive=True).method.message_count


def wait_message_count(
    connection: BlockingConnection, queue: str, count: int, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Poll until `queue` holds `count` ready messages (requeues are asynchronous)."""
    channel = connection.channel()
    try:
        wait_until(
            connection,
            lambda: message_count(channel, queue) == count,
            timeout,
            f"{count} ready messages in {queue}",
        )
    finally:
        channel.close()


def publish_confirmed(
    connection: BlockingConnection,
    queue: str,
    bodies: list[bytes],
    properties: pika.BasicProperties | None = None,
) -> None:
    """Publish `bodies` to `queue` via the default exchange on a throwaway confirm channel, so
    they are in the queue when this returns."""
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", queue, body, properties, mandatory=True)
    channel.close()


def routed(
    channel: BlockingChannel,
    exchange: str,
    routing_key: str,
    body: bytes = b"probe",
    headers: dict[str, Any] | None = None,
) -> bool:
    """Publish mandatory on a confirm-mode channel: True if routed to a queue, False if returned."""
    properties = pika.BasicProperties(headers=headers)
    try:
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    except pika.exceptions.UnroutableError as exc:
        assert exc.messages[0].method.reply_code == 312
        return False
    return True


def _exists(connection: BlockingConnection, declare: Callable[[BlockingChannel], object]) -> bool:
    channel = connection.channel()
    try:
        declare(channel)
    except pika.exceptions.ChannelClosedByBroker as exc:
        # 405: an exclusive queue of another connection, which certainly exists.
        assert exc.reply_code in (404, 405), (exc.reply_code, exc.reply_text)
        return exc.reply_code == 405
    channel.close()
    return True


def exchange_exists(connection: BlockingConnection, name: str) -> bool:
    """Passive Exchange.Declare on a throwaway channel."""
    return _exists(connection, lambda ch: ch.exchange_declare(name, passive=True))


def queue_exists(connection: BlockingConnection, name: str) -> bool:
    """Passive Queue.Declare on a throwaway channel (405 "locked" also means it exists)."""
    return _exists(connection, lambda ch: ch.queue_declare(name, passive=True))


# --- cleanup --------------------------------------------------------------------------------------


class Cleanup:
    """Remembers the queues/exchanges a test creates; deletes them afterwards."""

    def __init__(self, params: pika.URLParameters) -> None:
        self.params = params
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def run(self) -> None:
        if not self.queues and not self.exchanges:
            return
        conn = pika.BlockingConnection(self.params)
        try:
            channel: BlockingChannel | None = None
            for kind, names in (("queue", self.queues), ("exchange", self.exchanges)):
                for item in names:
                    if channel is None or channel.is_closed:
                        channel = conn.channel()
                    # 405 for an exclusive queue of a still-open connection: it goes with that.
                    with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                        if kind == "queue":
                            channel.queue_delete(item)
                        else:
                            channel.exchange_delete(item)
        finally:
            if conn.is_open:
                conn.close()


@pytest.fixture(name="cleanup")
def cleanup_fixture(params: pika.URLParameters) -> Iterator[Cleanup]:
    """Import into a test module (`from tests.compat.helpers import cleanup_fixture`)."""
    cleanup = Cleanup(params)
    yield cleanup
    cleanup.run()


@pytest.fixture(name="other_connection")
def other_connection_fixture(params: pika.URLParameters) -> Iterator[BlockingConnection]:
    """A second, independent connection to the broker under test."""
    conn = pika.BlockingConnection(params)
    yield conn
    if conn.is_open:
        conn.close()


# --- below pika's public API ----------------------------------------------------------------------


def raw_rpc(
    channel: BlockingChannel,
    method: pika.amqp_object.Method,
    replies: list[type[pika.amqp_object.Method]],
    timeout: float = DEFAULT_TIMEOUT,
) -> pika.amqp_object.Method:
    """Send `method` exactly as given (bypassing pika's client-side checks and its generated
    consumer tags) and wait for one of `replies`."""
    frames: list[pika.frame.Method] = []
    channel._impl._rpc(method, frames.append, replies)
    wait_until(channel.connection, lambda: bool(frames) or channel.is_closed, timeout, str(replies))
    if not frames:
        raise channel._closing_reason
    return frames[0].method


def raw_send(channel: BlockingChannel, method: pika.amqp_object.Method) -> None:
    """Send an asynchronous method frame exactly as given, expecting no reply."""
    channel._impl._send_method(method)
    channel.connection.process_data_events(time_limit=0)


# --- pika's asyncio adapter -----------------------------------------------------------------------


class AsyncAmqp:
    """A thin awaitable layer over pika's AsyncioConnection (callbacks -> futures with timeouts)."""

    def __init__(self, connection: AsyncioConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        self.loop = loop
        self.closed: asyncio.Future[Exception] = loop.create_future()

    @classmethod
    async def open(cls, params: pika.URLParameters, timeout: float = DEFAULT_TIMEOUT) -> AsyncAmqp:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()

        def on_open(_conn: AsyncioConnection) -> None:
            opened.set_result(None)

        def on_open_error(_conn: AsyncioConnection, error: BaseException | str) -> None:
            opened.set_exception(RuntimeError(f"AsyncioConnection failed: {error}"))

        def on_close(_conn: AsyncioConnection, reason: Exception) -> None:
            if not self.closed.done():
                self.closed.set_result(reason)

        connection = AsyncioConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        self = cls(connection, loop)
        await asyncio.wait_for(opened, timeout)
        return self

    async def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a pika method that reports completion through `callback=` and await that."""
        done: asyncio.Future[Any] = self.loop.create_future()

        def callback(*result: Any) -> None:
            if not done.done():
                done.set_result(result[-1] if result else None)

        func(*args, callback=callback, **kwargs)
        return await asyncio.wait_for(done, DEFAULT_TIMEOUT)

    async def channel(self) -> pika.channel.Channel:
        opened: asyncio.Future[pika.channel.Channel] = self.loop.create_future()
        self.connection.channel(on_open_callback=opened.set_result)
        return await asyncio.wait_for(opened, DEFAULT_TIMEOUT)

    async def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()
        await asyncio.wait_for(self.closed, DEFAULT_TIMEOUT)
