"""Behaviour of issue 2's bullets that the other compat modules leave untested, as RabbitMQ 3.10
shows it: handshake timeouts at every stage, the closing handshake, methods only a broker should
send, Access.Request, nowait variants, consumer priorities, RecoverAsync, Nack without requeue,
combined prefetch limits, delivery tags, cancelled consumers' unacked deliveries and the counts
in Queue.Delete.

Where Warren still differs from RabbitMQ the test encodes RabbitMQ and is marked `WARREN_DIFFERS`
(a strict xfail on the Warren target only), so that it starts failing once Warren is fixed.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest
from pamqp import commands, encode, header, heartbeat
from pamqp.base import Frame
from pamqp.body import ContentBody
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    Collector,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    get_all,
    message_count,
    publish_confirmed,
    pump,
    raw_send,
    wait_message_count,
    wait_until,
)
from tests.compat.rawamqp import (
    FRAME_END,
    RawAMQP,
    RawTimeout,
    assert_broker_alive,
    assert_reply,
    parse_frames,
    raw_connection,
)

pytestmark = pytest.mark.timeout(30)

ON_WARREN = os.environ.get("WARREN_TEST_TARGET", "warren") == "warren"


@pytest.fixture(autouse=True)
def _broker_survives(amqp_url: str) -> Iterator[None]:
    """After every test a fresh pika connection must still work (the broker did not crash)."""
    yield
    assert_broker_alive(amqp_url)


def _bodies(n: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def _queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True).method.queue


def _frames_until_quiet(client: RawAMQP, quiet: float = 0.5) -> list[tuple[int, Frame]]:
    """Every non-heartbeat frame the broker sends until it has been silent for `quiet` s."""
    frames = []
    with contextlib.suppress(RawTimeout):
        while True:
            channel, value = client.read_frame(quiet)
            if not isinstance(value, heartbeat.Heartbeat):
                frames.append((channel, value))
    return frames


# --- Connection: handshake timeout, closing handshake, UpdateSecret -----------------------------


def _stage_nothing(client: RawAMQP) -> None:
    """Connect and send not even the protocol header."""


def _stage_start_ok(client: RawAMQP) -> None:
    """Header and StartOk, never TuneOk."""
    client.read_start()
    client.login()
    client.read_tune()


def _stage_tune_ok(client: RawAMQP) -> None:
    """Header, StartOk and TuneOk (heartbeat off), never Connection.Open."""
    client.read_start()
    client.login()
    client.read_tune()
    client.tune_ok(heartbeat=0)


@pytest.mark.timeout(40)
def test_handshake_timeout_applies_at_every_stage(amqp_url: str) -> None:
    """RabbitMQ's handshake_timeout (10 s) runs from accept until Connection.Open: a client that
    sends nothing, or stops after StartOk, or after TuneOk, is dropped without Connection.Close."""
    stages: list[Callable[[RawAMQP], None]] = [_stage_nothing, _stage_start_ok, _stage_tune_ok]
    clients: list[RawAMQP] = []
    try:
        started = time.monotonic()
        for stage in stages:
            clients.append(client := RawAMQP(amqp_url))
            stage(client)
        for stage, client in zip(stages, clients, strict=True):
            rest = client.expect_closed_socket(max(1.0, started + 16 - time.monotonic()))
            assert time.monotonic() - started >= 1.0, stage.__name__
            for _, value in parse_frames(rest):
                assert isinstance(value, heartbeat.Heartbeat), (stage.__name__, value.name)
    finally:
        for client in clients:
            client.close()


def test_frames_after_broker_close_are_ignored_until_close_ok(amqp_url: str) -> None:
    """Once the broker has sent Connection.Close it ignores every frame but Close/CloseOk (no
    reply to Qos or Channel.Open); our CloseOk makes it drop the socket."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Channel.Open(), 1)
        assert_reply(client.expect_connection_close(reply=False), 504)
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        client.send(commands.Channel.Open(), 2)
        client.send(heartbeat.Heartbeat())
        assert _frames_until_quiet(client, 0.5) == []
        client.send(commands.Connection.CloseOk())
        assert client.expect_closed_socket(3) == b""


def test_connection_close_crossing_broker_close(amqp_url: str) -> None:
    """A client Connection.Close that crosses the broker's is answered with CloseOk; after our
    CloseOk for the broker's Close the socket is dropped."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Channel.Open(), 1)
        assert_reply(client.expect_connection_close(reply=False), 504)
        client.send(commands.Connection.Close(200, "bye", 0, 0))
        client.expect(commands.Connection.CloseOk, 0)
        with contextlib.suppress(OSError):
            client.send(commands.Connection.CloseOk())
        client.expect_closed_socket(3)


def test_update_secret_keeps_channels_and_consumers(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """pika's update_secret (Connection.UpdateSecret -> UpdateSecretOk) leaves the connection,
    its open channels and its consumers working."""
    queue = _queue(channel)
    collector = Collector(auto_ack_after=True)
    channel.basic_consume(queue, collector)
    publish_confirmed(connection, queue, [b"before"])
    collector.wait_for(connection, 1)
    connection.update_secret("guest", "rotation")
    assert connection.is_open and channel.is_open
    publish_confirmed(connection, queue, [b"after"])
    collector.wait_for(connection, 2)
    assert collector.bodies == [b"before", b"after"]


@pytest.mark.parametrize(
    "method",
    [
        commands.Connection.Start(server_properties={}, mechanisms="PLAIN", locales="en_US"),
        commands.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"
        ),
        commands.Connection.Secure(challenge="x"),
        commands.Connection.SecureOk(response="x"),
        commands.Connection.Tune(channel_max=1, frame_max=4096, heartbeat=0),
        commands.Connection.OpenOk(),
        commands.Connection.UpdateSecretOk(),
        commands.Connection.Blocked(reason="low memory"),
        commands.Connection.Unblocked(),
    ],
    ids=lambda m: m.name,
)
def test_other_connection_methods_on_open_connection_are_504(amqp_url: str, method: Frame) -> None:
    """Any other Connection-class method on channel 0 of a running connection, including the
    broker-only Blocked/Unblocked: 504 'unexpected method in connection state running'."""
    with raw_connection(amqp_url) as client:
        client.send(method, 0)
        close = client.expect_connection_close()
        text = "CHANNEL_ERROR - unexpected method in connection state running"
        assert_reply(close, 504, text, divmod(method.index, 0x10000))


# --- Methods a client may send: broker-only methods, Access.Request, nowait -----------------------

SERVER_ONLY: list[object] = [
    commands.Channel.OpenOk(),
    commands.Channel.FlowOk(active=True),
    commands.Channel.CloseOk(),
    commands.Exchange.DeclareOk(),
    commands.Exchange.DeleteOk(),
    commands.Exchange.BindOk(),
    commands.Exchange.UnbindOk(),
    commands.Queue.DeclareOk(queue="q", message_count=0, consumer_count=0),
    commands.Queue.BindOk(),
    commands.Queue.UnbindOk(),
    commands.Queue.PurgeOk(message_count=0),
    commands.Queue.DeleteOk(message_count=0),
    commands.Tx.SelectOk(),
    commands.Tx.CommitOk(),
    commands.Tx.RollbackOk(),
    commands.Confirm.SelectOk(),
    commands.Basic.QosOk(),
    commands.Basic.ConsumeOk(consumer_tag="ctag"),
    commands.Basic.CancelOk(consumer_tag="ctag"),
    commands.Basic.GetEmpty(),
    commands.Basic.RecoverOk(),
    commands.Basic.Deliver("ctag", 1, False, "", "q"),
    commands.Basic.Return(312, "NO_ROUTE", "", "q"),
    commands.Basic.GetOk(1, False, "", "q", 0),
]

CONTENT_BEARING = (commands.Basic.Deliver, commands.Basic.Return, commands.Basic.GetOk)


@pytest.mark.parametrize("method", SERVER_ONLY, ids=lambda m: m.name)
def test_broker_only_methods_from_client_are_503(amqp_url: str, method: Frame) -> None:
    """A method only a broker sends (an *Ok reply, Deliver/Return/GetOk with their content, an
    unsolicited Channel.FlowOk/CloseOk) on an open channel: connection closed with 503
    'COMMAND_INVALID - unimplemented method' blaming it."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(method, 1)
        if isinstance(method, CONTENT_BEARING):
            client.send(header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
            client.send(ContentBody(b"x"), 1)
        close = client.expect_connection_close(timeout=2)
        text = "COMMAND_INVALID - unimplemented method"
        assert_reply(close, 503, text, divmod(method.index, 0x10000))


ACCESS_REQUEST = (30, 10)
ACCESS_REQUEST_OK = (30, 11)


def test_access_request_is_answered_request_ok(amqp_url: str) -> None:
    """The AMQP 0-8 leftover Access.Request (class 30; old clients still send it) is answered
    Access.RequestOk with ticket 1 and the channel stays usable."""
    args = encode.short_string("/data") + bytes([0b00011110])  # realm; active/write/read bits
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send_raw(1, 1, struct.pack(">HH", *ACCESS_REQUEST) + args)
        frame_type, channel, size = struct.unpack(">BHI", client.read_bytes(7))
        payload, end = client.read_bytes(size), client.read_bytes(1)
        assert (frame_type, channel, end[0]) == (1, 1, FRAME_END)
        assert struct.unpack(">HHH", payload) == (*ACCESS_REQUEST_OK, 1)
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        client.expect(commands.Basic.QosOk, 1)


def test_nowait_methods_get_no_reply(amqp_url: str, name: str) -> None:
    """With nowait=True, Exchange.Declare/Bind/Unbind/Delete, Queue.Declare/Bind/Purge/Delete,
    Basic.Consume/Cancel and Confirm.Select take effect without any *Ok reply."""
    x, y, q = f"{name}-x", f"{name}-y", f"{name}-q"
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        for method in (
            commands.Exchange.Declare(exchange=x, exchange_type="fanout", nowait=True),
            commands.Exchange.Declare(exchange=y, exchange_type="fanout", nowait=True),
            commands.Exchange.Bind(destination=y, source=x, nowait=True),
            commands.Queue.Declare(queue=q, exclusive=True, nowait=True),
            commands.Queue.Bind(queue=q, exchange=y, nowait=True),
            commands.Confirm.Select(nowait=True),
            commands.Basic.Consume(queue=q, consumer_tag="ctag", no_ack=True, nowait=True),
        ):
            client.send(method, 1)
        client.publish(1, b"through-x-and-y", exchange=x)
        # Only the delivery (routed x -> y -> q) and its publisher confirm: no *Ok at all.
        frames = _frames_until_quiet(client)
        names = sorted(value.name for _, value in frames)
        assert names == ["Basic.Ack", "Basic.Deliver", "ContentBody", "ContentHeader"], names
        body = [value.value for _, value in frames if isinstance(value, ContentBody)]
        assert body == [b"through-x-and-y"]

        for method in (
            commands.Basic.Cancel(consumer_tag="ctag", nowait=True),
            commands.Exchange.Unbind(destination=y, source=x, nowait=True),
            commands.Queue.Purge(queue=q, nowait=True),
            commands.Queue.Delete(queue=q, nowait=True),
            commands.Exchange.Delete(exchange=x, nowait=True),
            commands.Exchange.Delete(exchange=y, nowait=True),
            commands.Queue.Declare(queue=q, passive=True),
        ):
            client.send(method, 1)
        # The only answer is the 404 of the final passive declare: everything else was silent.
        _, close = client.read_frame()
        assert isinstance(close, commands.Channel.Close), close.name
        assert_reply(close, 404, f"NOT_FOUND - no queue '{q}' in vhost '/'", (50, 10))
        client.send(commands.Channel.CloseOk(), 1)
        for number, exchange in ((2, x), (3, y)):
            client.open_channel(number)
            client.send(commands.Exchange.Declare(exchange=exchange, passive=True), number)
            assert_reply(client.expect_channel_close(number), 404)


def test_no_local_is_ignored(amqp_url: str) -> None:
    """RabbitMQ does not implement no_local: a no_local consumer still gets messages published
    on its own connection."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Queue.Declare(queue="", exclusive=True), 1)
        queue = client.expect(commands.Queue.DeclareOk, 1).queue
        client.send(commands.Basic.Consume(queue=queue, consumer_tag="own", no_local=True), 1)
        client.expect(commands.Basic.ConsumeOk, 1)
        client.publish(1, b"mine", routing_key=queue)
        deliver = client.expect(commands.Basic.Deliver, 1)
        assert (deliver.consumer_tag, deliver.routing_key) == ("own", queue)


# --- Basic: consumer priorities -------------------------------------------------------------------


def test_higher_priority_consumer_gets_messages_while_it_has_room(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """x-priority: the highest-priority consumer with prefetch room gets each message; a lower
    one gets messages only while the higher one is full, and loses them again once it acks."""
    queue = _queue(channel)
    high_channel, low_channel = connection.channel(), connection.channel()
    high_channel.basic_qos(prefetch_count=2)
    low_channel.basic_qos(prefetch_count=10)
    high, low = Collector(), Collector()
    low_channel.basic_consume(queue, low, arguments={"x-priority": 1})
    high_channel.basic_consume(queue, high, arguments={"x-priority": 10})
    publish_confirmed(connection, queue, _bodies(5))
    wait_until(connection, lambda: len(high.deliveries) + len(low.deliveries) >= 5)
    pump(connection, 0.1)
    assert (high.bodies, low.bodies) == (_bodies(2), [b"m2", b"m3", b"m4"])
    high_channel.basic_ack(high.deliveries[-1].method.delivery_tag, multiple=True)
    publish_confirmed(connection, queue, [b"m5", b"m6"])
    high.wait_for(connection, 4)
    pump(connection, 0.1)
    assert high.bodies[2:] == [b"m5", b"m6"]
    assert len(low.deliveries) == 3


def test_equal_priority_consumers_round_robin_and_starve_lower(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Consumers of equal priority alternate; a lower-priority consumer (here the default 0
    against 5) gets nothing while they can take messages."""
    queue = _queue(channel)
    order: list[str] = []
    for tag, priority in (("low", 0), ("a", 5), ("b", 5)):
        channel.basic_consume(
            queue,
            lambda _ch, _m, _p, _b, tag=tag: order.append(tag),
            auto_ack=True,
            consumer_tag=tag,
            arguments={"x-priority": priority} if priority else None,
        )
    publish_confirmed(connection, queue, _bodies(10))
    wait_until(connection, lambda: len(order) >= 10)
    pump(connection, 0.1)
    assert "low" not in order
    assert order.count("a") == order.count("b") == 5
    assert all(order[i] != order[i + 1] for i in range(9)), order


def test_non_integer_consumer_priority_is_406(channel: BlockingChannel) -> None:
    """x-priority must be an integer: 406 "invalid arg 'x-priority' for queue 'Q' in vhost '/':
    \"expected integer, got longstr\""."""
    queue = _queue(channel)
    expected = (
        f"invalid arg 'x-priority' for queue '{queue}' in vhost '/': "
        '"expected integer, got longstr"'
    )
    with expect_channel_close(channel, 406, expected):
        channel.basic_consume(queue, Collector(), arguments={"x-priority": "high"})


# --- Basic: settling, recovering, prefetch --------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_recover_async_requeues_unacked_as_redelivered(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Basic.RecoverAsync(requeue=True) has no reply but requeues the channel's unacked
    deliveries; they come again (new tags) with redelivered=True."""
    queue = _queue(channel)
    collector = Collector()
    channel.basic_consume(queue, collector)
    publish_confirmed(connection, queue, _bodies(2))
    collector.wait_for(connection, 2)
    raw_send(channel, pika.spec.Basic.RecoverAsync(requeue=True))
    collector.wait_for(connection, 4)
    again = collector.deliveries[2:]
    assert sorted(d.body for d in again) == _bodies(2)
    assert all(d.method.redelivered for d in again)
    assert [d.method.delivery_tag for d in again] == [3, 4]
    channel.basic_ack(4, multiple=True)
    assert channel.is_open


def test_nack_multiple_without_requeue_drops(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """nack(tag, multiple=True, requeue=False) discards every outstanding delivery up to tag
    (no dead-letter exchange) and leaves later ones unacked."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, _bodies(3))
    consumer = connection.channel()
    deliveries = get_all(consumer, queue, auto_ack=False)
    assert [d.method.delivery_tag for d in deliveries] == [1, 2, 3]
    consumer.basic_nack(2, multiple=True, requeue=False)
    pump(connection, 0.1)
    assert message_count(channel, queue) == 0
    consumer.close()
    wait_message_count(connection, queue, 1)
    [left] = get_all(channel, queue)
    assert (left.body, left.method.redelivered) == (b"m2", True)


def test_prefetch_one_consumer_never_holds_two_unacked(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Two prefetch-1 consumers: each holds at most one unacked message; while one sits on its
    message, the queue skips it and feeds only the consumer that acks."""
    queue = _queue(channel)
    busy_channel, worker_channel = connection.channel(), connection.channel()
    busy_channel.basic_qos(prefetch_count=1)
    worker_channel.basic_qos(prefetch_count=1)
    busy, worker = Collector(), Collector()
    busy_channel.basic_consume(queue, busy)
    worker_channel.basic_consume(queue, worker)
    publish_confirmed(connection, queue, _bodies(5))
    wait_until(connection, lambda: len(busy.deliveries) + len(worker.deliveries) >= 2)
    for count in range(1, 5):
        pump(connection, 0.2)
        assert (len(busy.deliveries), len(worker.deliveries)) == (1, count)
        if count < 4:
            worker_channel.basic_ack(worker.deliveries[-1].method.delivery_tag)
            worker.wait_for(connection, count + 1)
    assert sorted(busy.bodies + worker.bodies) == _bodies(5)
    assert worker.bodies == sorted(worker.bodies)


def test_per_consumer_and_global_prefetch_apply_together(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Qos(2, global=False) then Qos(3, global=True): each consumer holds at most 2 and the
    channel at most 3 unacked deliveries."""
    queue = _queue(channel)
    channel.basic_qos(prefetch_count=2)
    channel.basic_qos(prefetch_count=3, global_qos=True)
    first, second = Collector(), Collector()
    channel.basic_consume(queue, first)
    channel.basic_consume(queue, second)
    publish_confirmed(connection, queue, _bodies(10))

    def counts() -> tuple[int, int]:
        return len(first.deliveries), len(second.deliveries)

    wait_until(connection, lambda: sum(counts()) >= 3)
    pump(connection, 0.2)
    assert sum(counts()) == 3 and max(counts()) == 2
    fuller = first if len(first.deliveries) == 2 else second
    channel.basic_ack(fuller.deliveries[0].method.delivery_tag)
    wait_until(connection, lambda: sum(counts()) >= 4)
    pump(connection, 0.2)
    assert sum(counts()) == 4 and max(counts()) == 2


def test_cancel_leaves_delivered_messages_unacked(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Basic.Cancel does not requeue what the consumer already got: those deliveries stay
    unacked (ackable on the channel) and requeue only when the channel closes."""
    queue = _queue(channel)
    consumer_channel = connection.channel()
    collector = Collector()
    tag = consumer_channel.basic_consume(queue, collector)
    publish_confirmed(connection, queue, _bodies(2))
    collector.wait_for(connection, 2)
    consumer_channel.basic_cancel(tag)
    pump(connection, 0.1)
    assert message_count(channel, queue) == 0
    consumer_channel.basic_ack(collector.deliveries[0].method.delivery_tag)
    pump(connection, 0.1)
    assert consumer_channel.is_open
    consumer_channel.close()
    wait_message_count(connection, queue, 1)
    [left] = get_all(channel, queue)
    assert (left.body, left.method.redelivered) == (b"m1", True)


def test_delivery_tags_are_per_channel_and_shared_by_get_and_deliver(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Delivery tags count 1, 2, 3... per channel across Basic.Get and Basic.Deliver; a Deliver
    names its consumer tag, exchange and routing key."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, _bodies(3))
    method, _, _ = channel.basic_get(queue)
    assert method.delivery_tag == 1
    collector = Collector()
    tag = channel.basic_consume(queue, collector)
    collector.wait_for(connection, 2)
    delivered = [d.method for d in collector.deliveries]
    assert [m.delivery_tag for m in delivered] == [2, 3]
    assert {(m.consumer_tag, m.exchange, m.routing_key) for m in delivered} == {(tag, "", queue)}
    channel.basic_cancel(tag)
    other = connection.channel()
    publish_confirmed(connection, queue, [b"for-other"])
    other_method, _, body = other.basic_get(queue)
    assert (other_method.delivery_tag, body) == (1, b"for-other")
    channel.basic_ack(0, multiple=True)
    other.basic_ack(1)
    channel.close()
    other.close()
    pump(connection, 0.1)
    assert message_count(connection.channel(), queue) == 0  # all four acked, none requeued


def test_same_consumer_tag_on_two_channels_is_allowed(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Consumer tags are scoped to their channel: two channels may both use 'worker'."""
    queue = _queue(channel)
    first, second = Collector(auto_ack_after=True), Collector(auto_ack_after=True)
    channel.basic_consume(queue, first, consumer_tag="worker")
    connection.channel().basic_consume(queue, second, consumer_tag="worker")
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 2
    publish_confirmed(connection, queue, _bodies(2))
    wait_until(connection, lambda: len(first.deliveries) + len(second.deliveries) >= 2)
    assert (len(first.deliveries), len(second.deliveries)) == (1, 1)
    assert {d.method.consumer_tag for d in first.deliveries + second.deliveries} == {"worker"}


def test_exclusive_consumer_cancel_frees_the_queue(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Once the exclusive consumer cancels, other consumers may subscribe again."""
    queue = _queue(channel)
    tag = channel.basic_consume(queue, Collector(), exclusive=True)
    channel.basic_cancel(tag)
    other = connection.channel()
    collector = Collector(auto_ack_after=True)
    other.basic_consume(queue, collector)
    publish_confirmed(connection, queue, [b"after-exclusive"])
    collector.wait_for(connection, 1)
    assert collector.bodies == [b"after-exclusive"]


def test_queue_delete_counts_ready_messages_only(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Queue.Delete's message_count is the ready messages, not the consumer's unacked ones; the
    consumer gets Basic.Cancel and may still ack what it holds without a channel error."""
    channel.queue_declare(cleanup.queue(name))
    consumer_channel = connection.channel()
    consumer_channel.basic_qos(prefetch_count=2)
    cancels: list[pika.spec.Basic.Cancel] = []
    consumer_channel.add_on_cancel_callback(lambda frame: cancels.append(frame.method))
    collector = Collector()
    consumer_channel.basic_consume(name, collector)
    publish_confirmed(connection, name, _bodies(5))
    collector.wait_for(connection, 2)
    assert channel.queue_delete(name).method.message_count == 3
    wait_until(connection, lambda: bool(cancels), what="Basic.Cancel")
    consumer_channel.basic_ack(collector.deliveries[-1].method.delivery_tag, multiple=True)
    pump(connection, 0.1)
    assert consumer_channel.is_open
    consumer_channel.basic_qos(prefetch_count=1)
    with expect_channel_close(channel, 404, f"no queue '{name}'"):
        channel.queue_declare(name, passive=True)
