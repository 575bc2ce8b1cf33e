"""Publisher confirms (Confirm.Select) and transactions (Tx.*) as RabbitMQ 3.10 does them."""

from __future__ import annotations

import asyncio

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    AsyncAmqp,
    expect_channel_close,
    get_all,
    message_count,
    publish_confirmed,
    pump,
    raw_rpc,
    wait_message_count,
)

pytestmark = pytest.mark.timeout(30)


def _queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True).method.queue


# --- confirms -------------------------------------------------------------------------------------


def test_confirm_select_is_idempotent(channel: BlockingChannel) -> None:
    """Confirm.Select answers SelectOk, also when the channel is already in confirm mode."""
    for _ in range(2):
        ok = raw_rpc(channel, pika.spec.Confirm.Select(), [pika.spec.Confirm.SelectOk])
        assert isinstance(ok, pika.spec.Confirm.SelectOk)


def test_blocking_confirms_every_publish(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """In confirm mode every publish is acked: routed, unroutable non-mandatory and to a
    fanout with no queues alike."""
    queue = _queue(channel)
    channel.confirm_delivery()
    for i in range(20):
        channel.basic_publish("", queue, f"m{i}".encode())
    channel.basic_publish("amq.direct", "nothing-bound-here", b"dropped")
    assert message_count(channel, queue) == 20


def test_blocking_unroutable_mandatory_raises(channel: BlockingChannel) -> None:
    """Mandatory + unroutable in confirm mode: Basic.Return (312 NO_ROUTE) then Basic.Ack, which
    pika surfaces as UnroutableError carrying the returned message."""
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        channel.basic_publish("amq.direct", "nothing-bound-here", b"back", mandatory=True)
    [returned] = info.value.messages
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    assert returned.body == b"back"
    assert channel.is_open


async def test_asyncio_confirms_cover_every_delivery_tag(params: pika.URLParameters) -> None:
    """Raw view: the Basic.Ack frames cover delivery tags 1..N, routed or not, and no Basic.Nack
    comes. RabbitMQ acks out of order (an unroutable message is acked at once, a routed one when
    its queue has it) and coalesces with multiple=True, meaning "every *outstanding* tag <= N";
    a single-tag ack never repeats a tag."""
    total = 200
    amqp = await AsyncAmqp.open(params)
    try:
        channel = await amqp.channel()
        queue = (await amqp.call(channel.queue_declare, "", exclusive=True)).method.queue
        frames: list[pika.spec.Basic.Ack | pika.spec.Basic.Nack] = []
        confirmed: set[int] = set()
        duplicates: list[int] = []
        done: asyncio.Future[None] = amqp.loop.create_future()

        def on_confirm(frame: pika.frame.Method) -> None:
            method = frame.method
            frames.append(method)
            if method.multiple:
                confirmed.update(range(1, method.delivery_tag + 1))
            else:
                if method.delivery_tag in confirmed:
                    duplicates.append(method.delivery_tag)
                confirmed.add(method.delivery_tag)
            if len(confirmed) >= total and not done.done():
                done.set_result(None)

        await amqp.call(channel.confirm_delivery, on_confirm)
        for i in range(total):
            routing_key = queue if i % 2 == 0 else "unroutable-key"
            channel.basic_publish("amq.direct" if i % 2 else "", routing_key, f"{i}".encode())
        await asyncio.wait_for(done, 5)
        assert confirmed == set(range(1, total + 1))
        assert not duplicates
        assert all(isinstance(m, pika.spec.Basic.Ack) for m in frames)
        assert max(m.delivery_tag for m in frames) == total
        declare_ok = await amqp.call(channel.queue_declare, queue, passive=True)
        assert declare_ok.method.message_count == total // 2
    finally:
        await amqp.close()


async def test_asyncio_return_comes_before_ack(params: pika.URLParameters) -> None:
    """Mandatory unroutable publish in confirm mode: the Basic.Return arrives before the
    Basic.Ack for that delivery tag."""
    amqp = await AsyncAmqp.open(params)
    try:
        channel = await amqp.channel()
        events: list[str] = []
        done: asyncio.Future[None] = amqp.loop.create_future()

        def on_return(
            _ch: pika.channel.Channel,
            method: pika.spec.Basic.Return,
            _props: pika.BasicProperties,
            _body: bytes,
        ) -> None:
            events.append(f"return:{method.reply_code}")

        def on_confirm(frame: pika.frame.Method) -> None:
            events.append(f"{type(frame.method).__name__}:{frame.method.delivery_tag}")
            if not done.done():
                done.set_result(None)

        channel.add_on_return_callback(on_return)
        await amqp.call(channel.confirm_delivery, on_confirm)
        channel.basic_publish("amq.direct", "nothing-bound-here", b"x", mandatory=True)
        await asyncio.wait_for(done, 5)
        assert events == ["return:312", "Ack:1"]
    finally:
        await amqp.close()


# --- transactions ---------------------------------------------------------------------------------


def test_tx_publishes_are_invisible_until_commit(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Messages published in a transaction reach the queue only on Tx.Commit."""
    queue = _queue(channel)
    tx = connection.channel()
    assert isinstance(tx.tx_select().method, pika.spec.Tx.SelectOk)
    for i in range(3):
        tx.basic_publish("", queue, f"t{i}".encode())
    pump(connection, 0.1)
    assert message_count(channel, queue) == 0
    assert isinstance(tx.tx_commit().method, pika.spec.Tx.CommitOk)
    wait_message_count(connection, queue, 3)
    assert [d.body for d in get_all(channel, queue)] == [b"t0", b"t1", b"t2"]


def test_tx_rollback_discards_publishes_and_channel_stays_transactional(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Tx.Rollback drops the pending publishes; the channel stays in tx mode for the next one."""
    queue = _queue(channel)
    tx = connection.channel()
    tx.tx_select()
    tx.basic_publish("", queue, b"rolled-back")
    assert isinstance(tx.tx_rollback().method, pika.spec.Tx.RollbackOk)
    tx.basic_publish("", queue, b"committed")
    tx.tx_commit()
    tx.basic_publish("", queue, b"rolled-back-too")
    tx.tx_rollback()
    wait_message_count(connection, queue, 1)
    pump(connection, 0.1)
    assert [d.body for d in get_all(channel, queue)] == [b"committed"]


def test_tx_acks_take_effect_on_commit(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """An ack inside a transaction settles the message only at Tx.Commit: the unacked rest is
    requeued when the channel closes, the committed ack is not."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, [b"a", b"b"])
    tx = connection.channel()
    tx.tx_select()
    deliveries = get_all(tx, queue, auto_ack=False)
    tx.basic_ack(deliveries[0].method.delivery_tag)
    tx.tx_commit()
    tx.close()
    wait_message_count(connection, queue, 1)
    assert [(d.body, d.method.redelivered) for d in get_all(channel, queue)] == [(b"b", True)]


def _tx_channel_holding(
    connection: BlockingConnection, queue: str, bodies: list[bytes]
) -> tuple[BlockingChannel, list[int]]:
    """A channel in tx mode that took `bodies` (published to `queue`) and holds them unacked;
    their delivery tags, in order."""
    publish_confirmed(connection, queue, bodies)
    tx = connection.channel()
    tx.tx_select()
    return tx, [d.method.delivery_tag for d in get_all(tx, queue, auto_ack=False)]


def test_tx_rollback_leaves_acked_messages_unacked(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """After Tx.Rollback acked messages are still outstanding: they can be acked again, and if
    they are not they requeue when the channel closes."""
    queue = _queue(channel)
    tx, tags = _tx_channel_holding(connection, queue, [b"a", b"b", b"c"])
    tx.basic_ack(tags[-1], multiple=True)
    tx.tx_rollback()
    tx.basic_ack(tags[0])
    tx.tx_commit()
    tx.close()
    wait_message_count(connection, queue, 2)
    assert [d.body for d in get_all(channel, queue)] == [b"b", b"c"]


def test_acks_after_a_rollback_settle_the_rolled_back_deliveries_among_the_others(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Rolled-back acks of deliveries older than ones still held: a single ack finds such a
    delivery, an ack with multiple takes the older ones with it, and what is left requeues in
    order when the channel closes."""
    queue = _queue(channel)
    tx, tags = _tx_channel_holding(connection, queue, [b"m%d" % n for n in range(6)])
    tx.basic_ack(tags[1])
    tx.basic_ack(tags[2])
    tx.tx_rollback()
    tx.basic_ack(tags[2])  # rolled back, older than the newest held: a single ack finds it
    tx.tx_commit()
    tx.basic_ack(tags[3], multiple=True)  # m0, m1 (rolled back) and m3
    tx.tx_commit()
    tx.close()
    wait_message_count(connection, queue, 2)
    assert [d.body for d in get_all(channel, queue)] == [b"m4", b"m5"]


def test_a_rolled_back_delivery_settled_by_an_ack_with_multiple_is_unknown_after(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Once an ack with multiple took a rolled-back delivery, acking its tag again is 406
    "unknown delivery tag"; the tags after it are still held and requeue."""
    queue = _queue(channel)
    tx, tags = _tx_channel_holding(connection, queue, [b"a", b"b", b"c"])
    tx.basic_ack(tags[0])
    tx.tx_rollback()
    tx.basic_nack(tags[1], multiple=True, requeue=True)
    tx.tx_commit()
    with expect_channel_close(tx, 406, f"unknown delivery tag {tags[0]}"):
        tx.basic_ack(tags[0])
        tx.tx_commit()
    wait_message_count(connection, queue, 3)
    assert [(d.body, d.method.redelivered) for d in get_all(channel, queue)] == [
        (b"a", True),
        (b"b", True),
        (b"c", True),
    ]


@pytest.mark.parametrize("method", ["commit", "rollback"])
def test_tx_end_without_select_is_406(channel: BlockingChannel, method: str) -> None:
    """Tx.Commit / Tx.Rollback on a non-transactional channel: 406 "channel is not
    transactional"."""
    with expect_channel_close(channel, 406, "channel is not transactional"):
        getattr(channel, f"tx_{method}")()


def test_tx_select_on_confirm_channel_is_406(channel: BlockingChannel) -> None:
    """Tx.Select after Confirm.Select: 406 "cannot switch from confirm to tx mode"."""
    channel.confirm_delivery()
    with expect_channel_close(channel, 406, "cannot switch from confirm to tx mode"):
        channel.tx_select()


def test_confirm_select_on_tx_channel_is_406(channel: BlockingChannel) -> None:
    """Confirm.Select after Tx.Select: 406 "cannot switch from tx to confirm mode"."""
    channel.tx_select()
    with expect_channel_close(channel, 406, "cannot switch from tx to confirm mode"):
        channel.confirm_delivery()
