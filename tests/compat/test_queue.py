"""Queue.Declare / Bind / Unbind / Purge / Delete as RabbitMQ 3.10 does them."""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    Collector,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    get_all,
    message_count,
    queue_exists,
    routed,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


def _publish(channel: BlockingChannel, queue: str, count: int) -> None:
    """Publish with confirms: only a confirm guarantees the queue holds the message already
    (RabbitMQ's publish path is asynchronous even towards a later method on the same channel)."""
    channel.confirm_delivery()
    for i in range(count):
        channel.basic_publish("", queue, f"m{i}".encode())


def test_passive_declare_of_missing_queue_is_404(channel: BlockingChannel, name: str) -> None:
    """Passive declare of an unknown queue: 404 "no queue 'Q' in vhost '/'"."""
    with expect_channel_close(channel, 404, f"no queue '{name}' in vhost '/'"):
        channel.queue_declare(name, passive=True)


def test_passive_declare_does_not_compare_flags(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A passive declare with other durable/auto_delete/arguments still succeeds."""
    channel.queue_declare(cleanup.queue(name))
    ok = channel.queue_declare(
        name, passive=True, durable=True, auto_delete=True, arguments={"x-max-length": 1}
    )
    assert ok.method.queue == name


def test_durable_queue(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """A durable queue declares and redeclares identically; DeclareOk echoes the name."""
    ok = channel.queue_declare(cleanup.queue(name), durable=True)
    assert (ok.method.queue, ok.method.message_count, ok.method.consumer_count) == (name, 0, 0)
    channel.queue_declare(name, durable=True)


def test_exclusive_queue_is_usable_from_other_channels_of_its_connection(
    connection: BlockingConnection, channel: BlockingChannel, name: str
) -> None:
    """Exclusivity is per connection: another channel of the owner uses the queue freely."""
    channel.queue_declare(name, exclusive=True)
    other = connection.channel()
    other.queue_declare(name, exclusive=True)
    _publish(other, name, 1)
    assert [d.body for d in get_all(other, name)] == [b"m0"]


def test_auto_delete_queue_without_consumers_stays(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """An auto-delete queue that never had a consumer is not deleted."""
    channel.queue_declare(cleanup.queue(name), auto_delete=True)
    _publish(channel, name, 1)
    assert queue_exists(connection, name)
    assert message_count(channel, name) == 1


def test_server_named_queue(channel: BlockingChannel) -> None:
    """Declaring '' gets a fresh server-generated name starting with 'amq.gen-'."""
    first = channel.queue_declare("", exclusive=True).method.queue
    second = channel.queue_declare("", exclusive=True).method.queue
    assert first.startswith("amq.gen-")
    assert second.startswith("amq.gen-")
    assert first != second
    channel.queue_declare(first, passive=True)


@pytest.mark.parametrize(
    ("field", "first", "second", "mention"),
    [
        ("durable", {}, {"durable": True}, "received 'true' but current is 'false'"),
        ("auto_delete", {"auto_delete": True}, {}, "received 'false' but current is 'true'"),
        (
            "x-max-length",
            {},
            {"arguments": {"x-max-length": 10}},
            "received the value '10' of type 'signedint' but current is none",
        ),
        (
            "x-message-ttl",
            {"arguments": {"x-message-ttl": 1000}},
            {"arguments": {"x-message-ttl": 2000}},
            "received '2000' but current is '1000'",
        ),
    ],
)
def test_redeclare_with_different_properties_is_406(
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    field: str,
    first: dict[str, Any],
    second: dict[str, Any],
    mention: str,
) -> None:
    """Equivalence check: "inequivalent arg 'F' for queue 'Q' in vhost '/': received ..."."""
    channel.queue_declare(cleanup.queue(name), **first)
    expected = f"inequivalent arg '{field}' for queue '{name}' in vhost '/'"
    with expect_channel_close(channel, 406, expected, mention):
        channel.queue_declare(name, **second)


@pytest.mark.parametrize("exclusive_first", [True, False])
def test_redeclare_with_different_exclusive_is_405(
    channel: BlockingChannel, name: str, cleanup: Cleanup, exclusive_first: bool
) -> None:
    """Surprise: an `exclusive` mismatch is not 406 but 405 RESOURCE_LOCKED ("cannot obtain
    exclusive access to locked queue ... or the exclusive property value does not match"),
    even on the owning connection."""
    channel.queue_declare(cleanup.queue(name), exclusive=exclusive_first)
    with expect_channel_close(
        channel, 405, f"cannot obtain exclusive access to locked queue '{name}' in vhost '/'"
    ):
        channel.queue_declare(name, exclusive=not exclusive_first)


def test_declare_ok_counts_ready_messages_and_consumers(
    connection: BlockingConnection, channel: BlockingChannel, name: str
) -> None:
    """DeclareOk.message_count counts ready (not unacked) messages; consumer_count the consumers."""
    channel.queue_declare(name, exclusive=True)
    _publish(channel, name, 3)
    ok = channel.queue_declare(name, exclusive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)

    consumer_channel = connection.channel()
    consumer_channel.basic_qos(prefetch_count=1)
    collector = Collector()
    consumer_channel.basic_consume(name, collector)
    collector.wait_for(connection, 1)
    ok = channel.queue_declare(name, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 1)


def test_bind_and_unbind(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """Queue.Bind adds a route; binding the same key twice is one binding; Unbind removes it."""
    exchange = cleanup.exchange(name)
    channel.exchange_declare(exchange, "direct")
    queue = channel.queue_declare("", exclusive=True).method.queue
    assert isinstance(channel.queue_bind(queue, exchange, "k").method, pika.spec.Queue.BindOk)
    channel.queue_bind(queue, exchange, "k")
    channel.confirm_delivery()
    assert routed(channel, exchange, "k", b"one")
    assert isinstance(channel.queue_unbind(queue, exchange, "k").method, pika.spec.Queue.UnbindOk)
    assert not routed(channel, exchange, "k")
    assert [d.body for d in get_all(channel, queue)] == [b"one"]


@pytest.mark.parametrize("missing", ["queue", "exchange"])
def test_bind_with_missing_queue_or_exchange_is_404(
    channel: BlockingChannel, name: str, missing: str
) -> None:
    """Queue.Bind to an unknown queue or from an unknown exchange: 404 "no queue/exchange 'X'"."""
    queue = name if missing == "queue" else channel.queue_declare("", exclusive=True).method.queue
    exchange = name if missing == "exchange" else "amq.direct"
    with expect_channel_close(channel, 404, f"no {missing} '{name}' in vhost '/'"):
        channel.queue_bind(queue, exchange, "k")


def test_unbind_of_missing_things_is_ok(channel: BlockingChannel, name: str) -> None:
    """RabbitMQ 3.10: Queue.Unbind of a missing binding, queue or exchange is UnbindOk."""
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_unbind(queue, "amq.direct", "never-bound")
    channel.queue_unbind(name, "amq.direct", "k")
    channel.queue_unbind(queue, name, "k")
    assert channel.is_open


def test_purge_returns_count_and_spares_unacked(
    connection: BlockingConnection, channel: BlockingChannel, name: str
) -> None:
    """Purge removes ready messages and returns how many; unacked ones survive and requeue."""
    channel.queue_declare(name, exclusive=True)
    _publish(channel, name, 5)
    method, _, _ = channel.basic_get(name)
    assert method is not None
    ok = channel.queue_purge(name)
    assert isinstance(ok.method, pika.spec.Queue.PurgeOk)
    assert ok.method.message_count == 4
    assert channel.queue_purge(name).method.message_count == 0
    channel.basic_reject(method.delivery_tag, requeue=True)
    wait_until(connection, lambda: message_count(channel, name) == 1)


def test_purge_missing_queue_is_404(channel: BlockingChannel, name: str) -> None:
    """Queue.Purge of an unknown queue: 404 "no queue 'Q'"."""
    with expect_channel_close(channel, 404, f"no queue '{name}' in vhost '/'"):
        channel.queue_purge(name)


def test_delete_returns_message_count(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Queue.Delete answers DeleteOk with the number of ready messages deleted."""
    channel.queue_declare(cleanup.queue(name))
    _publish(channel, name, 3)
    assert channel.queue_delete(name).method.message_count == 3
    assert not queue_exists(connection, name)


def test_delete_missing_queue_is_ok(channel: BlockingChannel, name: str) -> None:
    """RabbitMQ 3.10: deleting an unknown queue is DeleteOk with message_count 0."""
    ok = channel.queue_delete(name)
    assert ok.method.message_count == 0
    assert channel.is_open


def test_delete_if_unused_with_consumer_is_406(
    connection: BlockingConnection, channel: BlockingChannel, name: str
) -> None:
    """if_unused while a consumer exists: 406 "queue 'Q' in vhost '/' in use"."""
    channel.queue_declare(name, exclusive=True)
    channel.basic_consume(name, Collector())
    other = connection.channel()
    with expect_channel_close(other, 406, f"queue '{name}' in vhost '/' in use"):
        other.queue_delete(name, if_unused=True)
    assert queue_exists(connection, name)


def test_delete_if_empty_with_messages_is_406(
    connection: BlockingConnection, channel: BlockingChannel, name: str
) -> None:
    """if_empty while messages are ready: 406 "queue 'Q' in vhost '/' not empty"."""
    channel.queue_declare(name, exclusive=True)
    _publish(channel, name, 1)
    with expect_channel_close(channel, 406, f"queue '{name}' in vhost '/' not empty"):
        channel.queue_delete(name, if_empty=True)
    assert queue_exists(connection, name)
    channel = connection.channel()
    channel.queue_purge(name)
    assert channel.queue_delete(name, if_empty=True, if_unused=True).method.message_count == 0


def test_declare_amq_prefix_is_403(channel: BlockingChannel, name: str) -> None:
    """Queue names starting with 'amq.' are reserved: 403 "queue name 'amq.X' contains reserved
    prefix 'amq.*'"."""
    reserved = f"amq.{name}"
    with expect_channel_close(channel, 403, f"queue name '{reserved}' contains reserved prefix"):
        channel.queue_declare(reserved)


def test_passive_declare_amq_prefix_is_404(channel: BlockingChannel, name: str) -> None:
    """A passive declare of an unknown 'amq.' queue is plain 404."""
    with expect_channel_close(channel, 404, f"no queue 'amq.{name}'"):
        channel.queue_declare(f"amq.{name}", passive=True)


def test_classic_queue_type_accepted(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """x-queue-type=classic is accepted (also for exclusive/auto-delete queues)."""
    args = {"x-queue-type": "classic"}
    channel.queue_declare(cleanup.queue(name), exclusive=True, arguments=args)
    _publish(channel, name, 1)
    assert [d.body for d in get_all(channel, name)] == [b"m0"]


def test_quorum_queue_accepted(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A durable, non-exclusive quorum queue works; redeclaring it classic or without the
    argument is 406 "inequivalent arg 'x-queue-type'"."""
    args = {"x-queue-type": "quorum"}
    channel.queue_declare(cleanup.queue(name), durable=True, arguments=args)
    channel.queue_declare(name, durable=True, arguments=args)
    channel.confirm_delivery()
    channel.basic_publish("", name, b"q")
    assert [d.body for d in get_all(channel, name)] == [b"q"]
    with expect_channel_close(
        channel, 406, "inequivalent arg 'x-queue-type'", "received 'classic' but current is"
    ):
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "classic"})
    channel = connection.channel()
    with expect_channel_close(
        channel, 406, "inequivalent arg 'x-queue-type'", "received none but current is"
    ):
        channel.queue_declare(name, durable=True)


@pytest.mark.parametrize(
    ("flags", "prop"),
    [
        ({"durable": False}, "non-durable"),
        ({"durable": True, "exclusive": True}, "exclusive-owner"),
        ({"durable": True, "auto_delete": True}, "auto-delete"),
    ],
)
def test_quorum_queue_property_restrictions(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    flags: dict[str, bool],
    prop: str,
) -> None:
    """Quorum queues must be durable, non-exclusive, non-auto-delete: 406 "invalid property 'P'
    for queue 'Q' in vhost '/'"."""
    with expect_channel_close(channel, 406, f"invalid property '{prop}' for queue '{name}'"):
        channel.queue_declare(cleanup.queue(name), arguments={"x-queue-type": "quorum"}, **flags)
    assert not queue_exists(connection, name)


@pytest.mark.warren_only
def test_stream_queue_refused(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """Warren has no streams: x-queue-type=stream is 406 (RabbitMQ 3.10 does accept it)."""
    with expect_channel_close(channel, 406, "x-queue-type", "stream"):
        channel.queue_declare(
            cleanup.queue(name), durable=True, arguments={"x-queue-type": "stream"}
        )


@pytest.mark.parametrize("value", ["bogus", 5])
def test_invalid_queue_type_is_406(
    connection: BlockingConnection, channel: BlockingChannel, name: str, value: object
) -> None:
    """An unknown x-queue-type: 406 "invalid arg 'x-queue-type' for queue 'Q' in vhost '/': ..."."""
    with expect_channel_close(channel, 406, f"invalid arg 'x-queue-type' for queue '{name}'"):
        channel.queue_declare(name, arguments={"x-queue-type": value})
    assert not queue_exists(connection, name)
