"""Lifetimes: exclusive queues, auto-delete queues and exchanges, and consumers whose queue is
deleted, as RabbitMQ 3.10 handles them."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    Collector,
    cleanup_fixture,  # noqa: F401  (fixture)
    exchange_exists,
    expect_channel_close,
    get_all,
    other_connection_fixture,  # noqa: F401  (fixture)
    publish_confirmed,
    queue_exists,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

LOCKED = "cannot obtain exclusive access to locked queue"

OTHER_CONNECTION_OPS: dict[str, Callable[[BlockingChannel, str], object]] = {
    "declare": lambda ch, q: ch.queue_declare(q),
    "declare_exclusive": lambda ch, q: ch.queue_declare(q, exclusive=True),
    "declare_passive": lambda ch, q: ch.queue_declare(q, passive=True),
    "consume": lambda ch, q: ch.basic_consume(q, Collector()),
    "bind": lambda ch, q: ch.queue_bind(q, "amq.fanout"),
    "delete": lambda ch, q: ch.queue_delete(q),
    "purge": lambda ch, q: ch.queue_purge(q),
    "get": lambda ch, q: ch.basic_get(q),
}


@pytest.mark.parametrize("operation", sorted(OTHER_CONNECTION_OPS))
def test_exclusive_queue_is_locked_for_other_connections(
    channel: BlockingChannel,
    other_connection: BlockingConnection,
    name: str,
    operation: str,
) -> None:
    """Another connection touching an exclusive queue (even a passive declare) gets 405
    "cannot obtain exclusive access to locked queue 'Q' in vhost '/'. ..."."""
    channel.queue_declare(name, exclusive=True)
    other = other_connection.channel()
    with expect_channel_close(other, 405, f"{LOCKED} '{name}' in vhost '/'"):
        OTHER_CONNECTION_OPS[operation](other, name)
    assert queue_exists(channel.connection, name)


def test_exclusive_queue_unbind_from_other_connection(
    channel: BlockingChannel, other_connection: BlockingConnection, name: str
) -> None:
    """Unbinding an existing binding of someone else's exclusive queue is 405 too; an unbind of a
    binding that does not exist answers UnbindOk before any exclusivity check."""
    channel.queue_declare(name, exclusive=True)
    channel.queue_bind(name, "amq.direct", name)
    other = other_connection.channel()
    other.queue_unbind(name, "amq.direct", f"{name}-never-bound")
    with expect_channel_close(other, 405, f"{LOCKED} '{name}'"):
        other.queue_unbind(name, "amq.direct", name)


def test_other_connections_may_publish_to_an_exclusive_queue(
    connection: BlockingConnection, channel: BlockingChannel, other_connection: BlockingConnection
) -> None:
    """Exclusivity does not cover publishing: anyone can route messages into the queue."""
    queue = channel.queue_declare("", exclusive=True).method.queue
    publish_confirmed(other_connection, queue, [b"from-elsewhere"])
    assert [d.body for d in get_all(channel, queue)] == [b"from-elsewhere"]


def test_exclusive_queue_goes_with_its_connection(
    params: pika.URLParameters, connection: BlockingConnection, name: str, cleanup: Cleanup
) -> None:
    """Closing the owning connection deletes the exclusive queue, its bindings and so an
    auto-delete exchange bound only to it."""
    exchange = cleanup.exchange(name)
    owner = pika.BlockingConnection(params)
    owner_channel = owner.channel()
    owner_channel.exchange_declare(exchange, "fanout", auto_delete=True)
    queue = owner_channel.queue_declare("", exclusive=True).method.queue
    owner_channel.queue_bind(queue, exchange)
    assert queue_exists(connection, queue)
    owner.close()
    wait_until(connection, lambda: not queue_exists(connection, queue), what="queue deletion")
    wait_until(connection, lambda: not exchange_exists(connection, exchange), what="exchange gone")


def test_auto_delete_queue_goes_with_last_consumer(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """An auto-delete queue survives Basic.Get and the cancel of one of two consumers, and is
    deleted when the last consumer cancels."""
    channel.queue_declare(cleanup.queue(name), auto_delete=True)
    publish_confirmed(connection, name, [b"x"])
    assert len(get_all(channel, name)) == 1
    first = channel.basic_consume(name, Collector())
    second = channel.basic_consume(name, Collector())
    channel.basic_cancel(first)
    assert queue_exists(connection, name)
    channel.basic_cancel(second)
    wait_until(connection, lambda: not queue_exists(connection, name), what="queue deletion")


def test_auto_delete_queue_goes_when_consumer_channel_closes(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Closing the channel of the only consumer counts as its cancel: the queue and an
    auto-delete exchange bound only to it go."""
    exchange = cleanup.exchange(f"{name}-x")
    channel.exchange_declare(exchange, "fanout", auto_delete=True)
    channel.queue_declare(cleanup.queue(name), auto_delete=True)
    channel.queue_bind(name, exchange)
    consumer = connection.channel()
    consumer.basic_consume(name, Collector())
    consumer.close()
    wait_until(connection, lambda: not queue_exists(connection, name), what="queue deletion")
    wait_until(connection, lambda: not exchange_exists(connection, exchange), what="exchange gone")


def test_auto_delete_exchange_goes_with_last_exchange_binding(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """An E2E binding with the auto-delete exchange as *source* counts: unbinding it deletes the
    exchange. Being only a destination does not: unbinding that keeps it."""
    source = cleanup.exchange(f"{name}-src")
    dest = cleanup.exchange(f"{name}-dst")
    channel.exchange_declare(source, "fanout", auto_delete=True)
    channel.exchange_declare(dest, "fanout", auto_delete=True)
    channel.exchange_bind(destination=dest, source=source)
    channel.exchange_unbind(destination=dest, source=source)
    assert not exchange_exists(connection, source)
    assert exchange_exists(connection, dest)


def test_auto_delete_exchange_goes_when_destination_exchange_is_deleted(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Deleting the destination of an auto-delete exchange's only binding deletes it too."""
    source = cleanup.exchange(f"{name}-src")
    dest = cleanup.exchange(f"{name}-dst")
    channel.exchange_declare(source, "fanout", auto_delete=True)
    channel.exchange_declare(dest, "fanout")
    channel.exchange_bind(destination=dest, source=source)
    channel.exchange_delete(dest)
    assert not exchange_exists(connection, source)


def test_queue_deleted_under_consumer_sends_basic_cancel(
    connection: BlockingConnection,
    channel: BlockingChannel,
    other_connection: BlockingConnection,
    name: str,
    cleanup: Cleanup,
) -> None:
    """Deleting a queue cancels its consumers with a server-sent Basic.Cancel (the
    consumer_cancel_notify capability); their channel stays open."""
    channel.queue_declare(cleanup.queue(name))
    cancels: list[pika.spec.Basic.Cancel] = []
    channel.add_on_cancel_callback(lambda frame: cancels.append(frame.method))
    tag = channel.basic_consume(name, Collector())
    other_connection.channel().queue_delete(name)
    wait_until(connection, lambda: bool(cancels), what="Basic.Cancel")
    assert [c.consumer_tag for c in cancels] == [tag]
    assert channel.consumer_tags == []
    assert channel.is_open
    channel.queue_declare("", exclusive=True)


def test_exclusive_queue_name_is_free_after_owner_closes(
    params: pika.URLParameters, connection: BlockingConnection, name: str
) -> None:
    """After the owner closes, the exclusive queue is gone (passive declare 404) and another
    connection may declare the name for itself."""
    owner = pika.BlockingConnection(params)
    owner.channel().queue_declare(name, exclusive=True)
    owner.close()
    wait_until(connection, lambda: not queue_exists(connection, name), what="queue deletion")
    channel = connection.channel()
    with expect_channel_close(channel, 404, f"no queue '{name}'"):
        channel.queue_declare(name, passive=True)
    ok = connection.channel().queue_declare(name, exclusive=True)
    assert ok.method.message_count == 0
