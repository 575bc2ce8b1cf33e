"""Basic.* (Qos, Consume, Cancel, Publish, Get, Ack/Nack/Reject, Recover) as RabbitMQ 3.10 does."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import os

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    AsyncAmqp,
    Cleanup,
    Collector,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    expect_connection_close,
    get_all,
    message_count,
    other_connection_fixture,  # noqa: F401  (fixture)
    publish_confirmed,
    pump,
    raw_rpc,
    raw_send,
    wait_message_count,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


def _bodies(n: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def _queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True).method.queue


# --- Qos ------------------------------------------------------------------------------------------


def test_prefetch_count_limits_unacked_per_consumer(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """prefetch_count=2: the consumer never holds more than 2 unacked; each ack frees one slot."""
    queue = _queue(channel)
    channel.basic_qos(prefetch_count=2)
    collector = Collector()
    channel.basic_consume(queue, collector)
    publish_confirmed(connection, queue, _bodies(6))
    collector.wait_for(connection, 2)
    pump(connection, 0.2)
    assert collector.bodies == [b"m0", b"m1"]
    channel.basic_ack(collector.deliveries[0].method.delivery_tag)
    collector.wait_for(connection, 3)
    pump(connection, 0.2)
    assert collector.bodies == [b"m0", b"m1", b"m2"]
    channel.basic_ack(collector.deliveries[2].method.delivery_tag, multiple=True)
    collector.wait_for(connection, 5)
    pump(connection, 0.1)
    assert len(collector.deliveries) == 5


def test_prefetch_count_applies_to_each_consumer(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """global=False (the default) is per consumer: two consumers on one channel with prefetch 2
    hold 2 unacked each."""
    queue = _queue(channel)
    channel.basic_qos(prefetch_count=2)
    first, second = Collector(), Collector()
    channel.basic_consume(queue, first)
    channel.basic_consume(queue, second)
    publish_confirmed(connection, queue, _bodies(10))
    wait_until(connection, lambda: len(first.deliveries) + len(second.deliveries) >= 4)
    pump(connection, 0.2)
    assert (len(first.deliveries), len(second.deliveries)) == (2, 2)


def test_global_prefetch_is_shared_by_the_channel(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """global=True is per channel in RabbitMQ: two consumers share 3 unacked deliveries."""
    queue = _queue(channel)
    channel.basic_qos(prefetch_count=3, global_qos=True)
    first, second = Collector(), Collector()
    channel.basic_consume(queue, first)
    channel.basic_consume(queue, second)
    publish_confirmed(connection, queue, _bodies(10))

    def total() -> int:
        return len(first.deliveries) + len(second.deliveries)

    wait_until(connection, lambda: total() >= 3)
    pump(connection, 0.2)
    assert total() == 3
    assert first.deliveries and second.deliveries
    channel.basic_ack(first.deliveries[0].method.delivery_tag)
    wait_until(connection, lambda: total() >= 4)
    pump(connection, 0.2)
    assert total() == 4


def test_qos_only_affects_later_consumers(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """A per-consumer prefetch is taken at Basic.Consume time: Qos after it changes nothing."""
    queue = _queue(channel)
    collector = Collector()
    channel.basic_consume(queue, collector)
    channel.basic_qos(prefetch_count=1)
    publish_confirmed(connection, queue, _bodies(5))
    collector.wait_for(connection, 5)


def test_prefetch_size_is_not_implemented(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """RabbitMQ refuses prefetch_size != 0 with a connection close 540 "prefetch_size!=0 (N)"."""
    with expect_connection_close(connection, 540, "prefetch_size!=0 (10)"):
        channel.basic_qos(prefetch_size=10)


# --- Consume / Cancel -----------------------------------------------------------------------------


def test_consume_no_ack(connection: BlockingConnection, channel: BlockingChannel) -> None:
    """auto_ack deliveries are settled at once: closing the channel requeues nothing."""
    queue = _queue(channel)
    consumer_channel = connection.channel()
    collector = Collector()
    consumer_channel.basic_consume(queue, collector, auto_ack=True)
    publish_confirmed(connection, queue, _bodies(3))
    collector.wait_for(connection, 3)
    assert collector.bodies == _bodies(3)
    assert [d.method.redelivered for d in collector.deliveries] == [False] * 3
    consumer_channel.close()
    pump(connection, 0.1)
    assert message_count(channel, queue) == 0


@pytest.mark.parametrize("exclusive_first", [True, False])
def test_exclusive_consumer_conflicts_are_403(
    connection: BlockingConnection, channel: BlockingChannel, exclusive_first: bool
) -> None:
    """An exclusive consumer excludes others, and cannot join a queue that has consumers:
    403 "queue 'Q' in vhost '/' in exclusive use"."""
    queue = _queue(channel)
    channel.basic_consume(queue, Collector(), exclusive=exclusive_first)
    other = connection.channel()
    with expect_channel_close(other, 403, f"queue '{queue}' in vhost '/' in exclusive use"):
        other.basic_consume(queue, Collector(), exclusive=not exclusive_first)


def test_duplicate_consumer_tag_closes_connection(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Reusing a live consumer tag on the same channel is a hard error: connection close 530
    "attempt to reuse consumer tag 'T'"."""
    queue = _queue(channel)
    tag = channel.basic_consume(queue, Collector(), consumer_tag="dup-tag")
    with expect_connection_close(connection, 530, f"attempt to reuse consumer tag '{tag}'"):
        raw_send(channel, pika.spec.Basic.Consume(queue=queue, consumer_tag=tag))


def test_server_generated_consumer_tag(channel: BlockingChannel) -> None:
    """An empty consumer tag gets a server-generated one starting with 'amq.ctag-'."""
    queue = _queue(channel)
    ok = raw_rpc(
        channel, pika.spec.Basic.Consume(queue=queue, consumer_tag=""), [pika.spec.Basic.ConsumeOk]
    )
    assert ok.consumer_tag.startswith("amq.ctag-")
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 1
    cancel_ok = raw_rpc(
        channel, pika.spec.Basic.Cancel(consumer_tag=ok.consumer_tag), [pika.spec.Basic.CancelOk]
    )
    assert cancel_ok.consumer_tag == ok.consumer_tag
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 0


def test_cancel_stops_deliveries(connection: BlockingConnection, channel: BlockingChannel) -> None:
    """After CancelOk the consumer gets nothing more; messages stay in the queue."""
    queue = _queue(channel)
    collector = Collector(auto_ack_after=True)
    tag = channel.basic_consume(queue, collector)
    publish_confirmed(connection, queue, [b"before"])
    collector.wait_for(connection, 1)
    channel.basic_cancel(tag)
    publish_confirmed(connection, queue, [b"after"])
    pump(connection, 0.2)
    assert collector.bodies == [b"before"]
    assert message_count(channel, queue) == 1


def test_cancel_unknown_tag_is_ok(channel: BlockingChannel) -> None:
    """Basic.Cancel of a tag the channel does not know is answered with CancelOk echoing it."""
    ok = raw_rpc(
        channel, pika.spec.Basic.Cancel(consumer_tag="no-such-tag"), [pika.spec.Basic.CancelOk]
    )
    assert ok.consumer_tag == "no-such-tag"
    assert channel.is_open


def test_consume_missing_queue_is_404(channel: BlockingChannel, name: str) -> None:
    """Basic.Consume on an unknown queue: 404 "no queue 'Q' in vhost '/'"."""
    with expect_channel_close(channel, 404, f"no queue '{name}' in vhost '/'"):
        channel.basic_consume(name, Collector())


def test_round_robin_between_consumers(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Two consumers on a queue get messages alternately."""
    queue = _queue(channel)
    order: list[tuple[str, bytes]] = []
    for tag in ("a", "b"):
        channel.basic_consume(
            queue,
            lambda _ch, _m, _p, body, tag=tag: order.append((tag, body)),
            auto_ack=True,
            consumer_tag=tag,
        )
    publish_confirmed(connection, queue, _bodies(10))
    wait_until(connection, lambda: len(order) >= 10)
    assert [body for _, body in order] == _bodies(10)
    tags = [tag for tag, _ in order]
    assert tags.count("a") == tags.count("b") == 5
    assert all(tags[i] != tags[i + 1] for i in range(9)), tags


# --- Publish --------------------------------------------------------------------------------------


def test_mandatory_unroutable_is_returned(
    connection: BlockingConnection, channel: BlockingChannel, name: str
) -> None:
    """A mandatory publish nothing is bound for comes back as Basic.Return 312 NO_ROUTE with the
    exchange, routing key, properties and body; a non-mandatory one is dropped silently."""
    returns: list[tuple[pika.spec.Basic.Return, pika.BasicProperties, bytes]] = []
    channel.add_on_return_callback(
        lambda _ch, method, props, body: returns.append((method, props, body))
    )
    props = pika.BasicProperties(message_id="r1", headers={"h": "v"})
    channel.basic_publish("amq.direct", name, b"lost", props)
    channel.basic_publish("amq.direct", name, b"back", props, mandatory=True)
    wait_until(connection, lambda: bool(returns), what="Basic.Return")
    pump(connection, 0.1)
    assert len(returns) == 1
    method, properties, body = returns[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key, body) == ("amq.direct", name, b"back")
    assert (properties.message_id, properties.headers) == ("r1", {"h": "v"})
    assert channel.is_open


def test_publish_to_missing_exchange_is_404(channel: BlockingChannel, name: str) -> None:
    """Publishing to an unknown exchange closes the channel: 404 "no exchange 'X' in vhost '/'"."""
    with expect_channel_close(channel, 404, f"no exchange '{name}' in vhost '/'"):
        channel.basic_publish(name, "k", b"x")


def test_user_id_must_match_login(channel: BlockingChannel) -> None:
    """user_id other than the authenticated user: 406 "user_id property set to 'bob' but
    authenticated user was 'guest'"."""
    with expect_channel_close(channel, 406, "user_id property set to 'bob' but authenticated user"):
        channel.basic_publish("", "nowhere", b"x", pika.BasicProperties(user_id="bob"))


def test_properties_and_headers_round_trip(
    connection: BlockingConnection, channel: BlockingChannel, params: pika.URLParameters
) -> None:
    """All basic properties and a rich headers table come back unchanged."""
    queue = _queue(channel)
    headers = {
        "str": "text",
        "unicode": "ünïcødé",
        "empty": "",
        "int": 42,
        "negative": -7,
        "long": 2**40,
        "true": True,
        "false": False,
        "bytes": b"\x00\xffbinary",
        "timestamp": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "decimal": decimal.Decimal("3.14"),
        "array": [1, "two", [3], {"k": "v"}, True],
        "nested": {"a": {"b": {"c": 1}}, "list": []},
        "void": None,
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply.queue",
        expiration="60000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="order.created",
        user_id=params.credentials.username,
        app_id="compat-tests",
        cluster_id="cluster-1",
    )
    publish_confirmed(connection, queue, [b'{"ok": true}'], props)
    [delivery] = get_all(channel, queue)
    assert delivery.body == b'{"ok": true}'
    got = delivery.properties
    for attr in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    ):
        assert getattr(got, attr) == getattr(props, attr), attr
    assert got.headers == headers


def test_large_message_round_trips(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """A 1 MiB body (many body frames at frame_max) comes back byte-identical, by Get and
    by Deliver."""
    assert connection._impl.params.frame_max < 1 << 20
    queue = _queue(channel)
    body = os.urandom(1 << 20)
    publish_confirmed(connection, queue, [body, body[::-1]])
    method, _, got = channel.basic_get(queue, auto_ack=True)
    assert method is not None and got == body
    collector = Collector(auto_ack_after=True)
    channel.basic_consume(queue, collector)
    collector.wait_for(connection, 1)
    assert collector.bodies == [body[::-1]]


def test_empty_body_round_trips(connection: BlockingConnection, channel: BlockingChannel) -> None:
    """A zero-length body (header frame, no body frame) is delivered as b''."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, [b"", b""], pika.BasicProperties(type="empty"))
    method, props, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    assert (body, props.type) == (b"", "empty")
    collector = Collector(auto_ack_after=True)
    channel.basic_consume(queue, collector)
    collector.wait_for(connection, 1)
    assert collector.bodies == [b""]


# --- Get ------------------------------------------------------------------------------------------


def test_get_reports_remaining_count_then_empty(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """GetOk.message_count is what is left after this message; an empty queue gives GetEmpty."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, _bodies(3))
    seen = []
    for expected_left in (2, 1, 0):
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert isinstance(method, pika.spec.Basic.GetOk)
        assert (method.message_count, method.redelivered) == (expected_left, False)
        assert (method.exchange, method.routing_key) == ("", queue)
        seen.append(body)
    assert seen == _bodies(3)
    empty = raw_rpc(
        channel, pika.spec.Basic.Get(queue=queue), [pika.spec.Basic.GetOk, pika.spec.Basic.GetEmpty]
    )
    assert isinstance(empty, pika.spec.Basic.GetEmpty)


def test_get_missing_queue_is_404(channel: BlockingChannel, name: str) -> None:
    """Basic.Get on an unknown queue: 404 "no queue 'Q' in vhost '/'"."""
    with expect_channel_close(channel, 404, f"no queue '{name}' in vhost '/'"):
        channel.basic_get(name)


# --- Ack / Nack / Reject / Recover ----------------------------------------------------------------


def test_ack_multiple(connection: BlockingConnection, channel: BlockingChannel) -> None:
    """ack(tag, multiple=True) settles every outstanding tag up to `tag`, not later ones."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, _bodies(4))
    consumer = connection.channel()
    deliveries = get_all(consumer, queue, auto_ack=False)
    assert [d.method.delivery_tag for d in deliveries] == [1, 2, 3, 4]
    consumer.basic_ack(3, multiple=True)
    consumer.close()
    wait_message_count(connection, queue, 1)
    [left] = get_all(channel, queue)
    assert (left.body, left.method.redelivered) == (b"m3", True)


def test_ack_zero_multiple_acks_everything(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """ack(0, multiple=True) settles all outstanding deliveries of the channel."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, _bodies(3))
    consumer = connection.channel()
    assert len(get_all(consumer, queue, auto_ack=False)) == 3
    consumer.basic_ack(0, multiple=True)
    consumer.close()
    pump(connection, 0.1)
    assert message_count(channel, queue) == 0


def test_nack_multiple_requeues_in_original_order(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """nack(multiple, requeue) puts the messages back in their order, marked redelivered."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, _bodies(3))
    deliveries = get_all(channel, queue, auto_ack=False)
    channel.basic_nack(deliveries[-1].method.delivery_tag, multiple=True, requeue=True)
    wait_message_count(connection, queue, 3)
    again = get_all(channel, queue)
    assert [d.body for d in again] == _bodies(3)
    assert all(d.method.redelivered for d in again)


def test_one_multiple_nack_over_two_queues_taken_in_turn_requeues_each_in_order(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Deliveries of two queues taken alternately on one channel, then one nack(multiple,
    requeue) over all of them: each queue gets back its own messages, in their order."""
    first, second = _queue(channel), _queue(channel)
    publish_confirmed(connection, first, _bodies(3))
    publish_confirmed(connection, second, [b"other-" + body for body in _bodies(3)])
    tags = []
    for _ in range(3):
        for queue in (first, second):
            method, _, _ = channel.basic_get(queue)
            tags.append(method.delivery_tag)
    channel.basic_nack(tags[-1], multiple=True, requeue=True)
    wait_message_count(connection, first, 3)
    wait_message_count(connection, second, 3)
    assert [d.body for d in get_all(channel, first)] == _bodies(3)
    assert [d.body for d in get_all(channel, second)] == [b"other-" + b for b in _bodies(3)]


def test_requeued_messages_keep_their_original_position(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Requeued messages go back where they were (by publish order, not requeue order), ahead of
    never-delivered ones, with redelivered=True."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, _bodies(6))
    taken = [channel.basic_get(queue) for _ in range(4)]
    tags = [method.delivery_tag for method, _, _ in taken]
    channel.basic_nack(tags[3], requeue=True)
    channel.basic_reject(tags[1], requeue=True)
    wait_message_count(connection, queue, 4)
    rest = get_all(channel, queue)
    assert [(d.body, d.method.redelivered) for d in rest] == [
        (b"m1", True),
        (b"m3", True),
        (b"m4", False),
        (b"m5", False),
    ]
    channel.basic_ack(tags[2], multiple=True)


def test_reject_without_requeue_drops(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """reject(requeue=False) without a dead-letter exchange discards the message."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, [b"bad"])
    consumer = connection.channel()
    method, _, _ = consumer.basic_get(queue)
    consumer.basic_reject(method.delivery_tag, requeue=False)
    consumer.close()
    pump(connection, 0.1)
    assert message_count(channel, queue) == 0


@pytest.mark.parametrize("method", ["ack", "nack", "reject"])
def test_settling_unknown_delivery_tag_is_406(channel: BlockingChannel, method: str) -> None:
    """Ack/Nack/Reject of a tag never delivered: 406 "unknown delivery tag 99"."""
    with expect_channel_close(channel, 406, "unknown delivery tag 99"):
        getattr(channel, f"basic_{method}")(99)


def test_double_ack_is_406(connection: BlockingConnection, channel: BlockingChannel) -> None:
    """Acking the same tag twice: the second is 406 "unknown delivery tag 1"."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, [b"once"])
    method, _, _ = channel.basic_get(queue)
    channel.basic_ack(method.delivery_tag)
    with expect_channel_close(channel, 406, f"unknown delivery tag {method.delivery_tag}"):
        channel.basic_ack(method.delivery_tag)


def test_recover_requeue_redelivers(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Basic.Recover(requeue=True) requeues the unacked deliveries; they come again with
    redelivered=True."""
    queue = _queue(channel)
    collector = Collector()
    channel.basic_consume(queue, collector)
    publish_confirmed(connection, queue, _bodies(2))
    collector.wait_for(connection, 2)
    channel.basic_recover(requeue=True)
    collector.wait_for(connection, 4)
    again = collector.deliveries[2:]
    assert sorted(d.body for d in again) == _bodies(2)
    assert all(d.method.redelivered for d in again)
    assert [d.method.delivery_tag for d in again] == [3, 4]
    channel.basic_ack(4, multiple=True)


@pytest.mark.parametrize("closing", ["channel", "connection"])
def test_unacked_messages_return_when_consumer_goes(
    connection: BlockingConnection,
    channel: BlockingChannel,
    other_connection: BlockingConnection,
    closing: str,
) -> None:
    """Unacked deliveries are requeued (in order, redelivered) when their channel or connection
    closes."""
    queue = channel.queue_declare("", exclusive=False, auto_delete=False).method.queue
    try:
        consumer_channel = other_connection.channel()
        collector = Collector()
        consumer_channel.basic_consume(queue, collector)
        publish_confirmed(connection, queue, _bodies(3))
        collector.wait_for(other_connection, 3)
        assert message_count(channel, queue) == 0
        if closing == "channel":
            consumer_channel.close()
        else:
            other_connection.close()
        wait_message_count(connection, queue, 3)
        again = get_all(channel, queue)
        assert [(d.body, d.method.redelivered) for d in again] == [(b, True) for b in _bodies(3)]
    finally:
        channel.queue_delete(queue)


def test_payment_orders_delivered_in_order_with_manual_acks(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Ten persistent orders on a durable queue arrive in publish order, each acked once."""
    queue = cleanup.queue(f"payment_queue-{name}")
    channel.queue_declare(queue, durable=True)
    orders = [{"order_id": i, "amount_cents": 1000 + i, "currency": "EUR"} for i in range(1, 11)]
    publish_confirmed(
        connection,
        queue,
        [json.dumps(order).encode() for order in orders],
        pika.BasicProperties(delivery_mode=2, content_type="application/json"),
    )
    channel.basic_qos(prefetch_count=1)
    received: list[dict[str, object]] = []

    def on_order(
        ch: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        assert props.delivery_mode == 2 and not method.redelivered
        received.append(json.loads(body))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_order)
    wait_until(connection, lambda: len(received) >= 10, what="10 orders")
    assert received == orders
    pump(connection, 0.1)
    ok = channel.queue_declare(queue, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 1)


# --- pika's asyncio adapter -----------------------------------------------------------------------


async def test_asyncio_adapter_publish_and_consume(params: pika.URLParameters) -> None:
    """AsyncioConnection: declare, publish 5, consume them in order with manual acks."""
    amqp = await AsyncAmqp.open(params)
    try:
        channel = await amqp.channel()
        declare_ok = await amqp.call(channel.queue_declare, "", exclusive=True)
        queue = declare_ok.method.queue
        await amqp.call(channel.basic_qos, prefetch_count=2)
        done: asyncio.Future[None] = amqp.loop.create_future()
        received: list[bytes] = []

        def on_message(
            ch: pika.channel.Channel,
            method: pika.spec.Basic.Deliver,
            _props: pika.BasicProperties,
            body: bytes,
        ) -> None:
            received.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(received) == 5 and not done.done():
                done.set_result(None)

        await amqp.call(channel.basic_consume, queue, on_message)
        for body in _bodies(5, "async"):
            channel.basic_publish("", queue, body)
        await asyncio.wait_for(done, 5)
        assert received == _bodies(5, "async")
    finally:
        await amqp.close()
