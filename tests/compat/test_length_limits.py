"""Queue length limits (x-max-length, x-max-length-bytes, x-overflow) as RabbitMQ 3.10 does them.

Limits count ready messages only (not unacked ones) and, for bytes, message bodies only.
Overflow 'drop-head' (the default) drops - and dead-letters with reason 'maxlen' - the oldest
messages; 'reject-publish' refuses the new message (Basic.Nack to a confirming publisher, silently
dropped otherwise, never dead-lettered); 'reject-publish-dlx' refuses it and dead-letters it.
"""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import commands, header
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
    queue_exists,
    wait_message_count,
)
from tests.compat.rawamqp import RawAMQP, RawTimeout, raw_connection

pytestmark = pytest.mark.timeout(30)


def _limited(
    channel: BlockingChannel,
    cleanup: Cleanup,
    name: str,
    dead_letter: bool = False,
    **arguments: Any,
) -> tuple[str, str]:
    """A queue with `arguments` (and, if asked, a DLX '' routing to a new dead queue)."""
    queue = cleanup.queue(f"{name}-q")
    dead = cleanup.queue(f"{name}-dead")
    channel.queue_declare(dead)
    if dead_letter:
        arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead, **arguments}
    channel.queue_declare(queue, arguments=arguments)
    return queue, dead


def _publish(channel: BlockingChannel, queue: str, body: bytes) -> bool:
    """Publish on a confirm-mode channel: True if acked, False if nacked."""
    try:
        channel.basic_publish("", queue, body)
    except pika.exceptions.NackError:
        return False
    return True


def _raw_publish(client: RawAMQP, routing_key: str, body: bytes) -> None:
    """A mandatory Basic.Publish to the default exchange on channel 1 of a raw connection."""
    client.send(commands.Basic.Publish(routing_key=routing_key, mandatory=True), 1)
    client.send(header.ContentHeader(0, len(body), commands.Basic.Properties()), 1)
    client.send(ContentBody(body), 1)


def _bodies(channel: BlockingChannel, queue: str) -> list[bytes]:
    return [d.body for d in get_all(channel, queue)]


def _reasons(channel: BlockingChannel, queue: str) -> list[tuple[bytes, str]]:
    """(body, newest x-death reason) of every message in `queue`."""
    return [(d.body, d.properties.headers["x-death"][0]["reason"]) for d in get_all(channel, queue)]


# --- drop-head ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overflow", [None, "drop-head"], ids=["default", "explicit"])
def test_max_length_drops_oldest(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    overflow: str | None,
) -> None:
    """x-max-length N with drop-head (the default): every publish is accepted (confirmed) and
    the oldest ready messages are discarded so that N remain."""
    args: dict[str, Any] = {"x-max-length": 3}
    if overflow:
        args["x-overflow"] = overflow
    queue, _ = _limited(channel, cleanup, name, **args)
    publish_confirmed(connection, queue, [f"m{i}".encode() for i in range(5)])
    assert message_count(channel, queue) == 3
    assert _bodies(channel, queue) == [b"m2", b"m3", b"m4"]


def test_max_length_drop_head_dead_letters_maxlen(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """With a DLX the dropped messages are dead-lettered, oldest first, with reason 'maxlen'."""
    queue, dead = _limited(channel, cleanup, name, dead_letter=True, **{"x-max-length": 2})
    publish_confirmed(connection, queue, [f"m{i}".encode() for i in range(5)])
    wait_message_count(connection, dead, 3)
    got = get_all(channel, dead)
    assert [d.body for d in got] == [b"m0", b"m1", b"m2"]
    for delivery in got:
        [death] = delivery.properties.headers["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("maxlen", queue, 1)
        assert death["routing-keys"] == [queue]
        assert delivery.properties.headers["x-first-death-reason"] == "maxlen"
    assert _bodies(channel, queue) == [b"m3", b"m4"]


def test_max_length_bytes_counts_bodies_only(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """x-max-length-bytes counts body bytes only (large headers do not count): 4+4 fit in 10,
    adding 3 more drops the head. A body alone larger than the limit empties the queue (it and
    everything before it are dropped); one exactly at the limit fits; empty bodies count 0."""
    queue, _ = _limited(channel, cleanup, name, **{"x-max-length-bytes": 10})
    heavy = pika.BasicProperties(headers={"pad": "x" * 1000}, content_type="y" * 200)
    publish_confirmed(connection, queue, [b"aaaa", b"bbbb"], heavy)
    assert message_count(channel, queue) == 2
    publish_confirmed(connection, queue, [b"ccc"], heavy)
    assert _bodies(channel, queue) == [b"bbbb", b"ccc"]

    publish_confirmed(connection, queue, [b"y", b"z" * 11])
    assert message_count(channel, queue) == 0
    publish_confirmed(connection, queue, [b"w" * 10, b"", b"", b""])
    assert _bodies(channel, queue) == [b"w" * 10, b"", b"", b""]


def test_both_limits_apply(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """With x-max-length and x-max-length-bytes both set, whichever is exceeded drops the head."""
    queue, _ = _limited(channel, cleanup, name, **{"x-max-length": 3, "x-max-length-bytes": 6})
    publish_confirmed(connection, queue, [b"a", b"bb", b"ccc", b"d"])
    assert _bodies(channel, queue) == [b"bb", b"ccc", b"d"]


def test_limits_count_ready_messages_only(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Unacked messages held by a consumer do not count: with x-max-length 2 and two unacked,
    two more publishes are both kept. Requeueing the unacked ones then puts them back at the
    head, over the limit, so drop-head drops (and dead-letters as 'maxlen') exactly them."""
    queue, dead = _limited(channel, cleanup, name, dead_letter=True, **{"x-max-length": 2})
    publish_confirmed(connection, queue, [b"m1", b"m2"])
    consumer = connection.channel()
    collector = Collector()
    consumer.basic_consume(queue, collector)
    collector.wait_for(connection, 2)
    consumer.basic_cancel(consumer.consumer_tags[0])
    publish_confirmed(connection, queue, [b"m3", b"m4"])
    assert message_count(channel, queue) == 2
    assert message_count(channel, dead) == 0

    consumer.basic_nack(collector.deliveries[-1].method.delivery_tag, multiple=True, requeue=True)
    wait_message_count(connection, dead, 2)
    assert [body for body, _ in _reasons(channel, dead)] == [b"m1", b"m2"]
    assert _bodies(channel, queue) == [b"m3", b"m4"]


# --- reject-publish -------------------------------------------------------------------------------


def test_reject_publish_nacks_the_publish_over_the_limit(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """x-overflow reject-publish: a confirming publisher gets Basic.Nack (pika: NackError) for
    the publish that would exceed the limit; the queue keeps its old messages. Once there is
    room again publishes are accepted."""
    queue, _ = _limited(
        channel, cleanup, name, **{"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    channel.confirm_delivery()
    assert [_publish(channel, queue, b) for b in (b"1", b"2", b"3", b"4")] == [
        True,
        True,
        False,
        False,
    ]
    assert channel.basic_get(queue, auto_ack=True)[2] == b"1"
    assert _publish(channel, queue, b"5")
    assert _bodies(channel, queue) == [b"2", b"5"]


def test_reject_publish_with_max_length_bytes(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """With x-max-length-bytes, reject-publish refuses a message whose body would take the
    total over the limit (8 + 3 > 10 nacked, 8 + 2 = 10 accepted, then an empty body still
    fits); a body larger than the limit is refused even by an empty queue."""
    queue, _ = _limited(
        channel, cleanup, name, **{"x-max-length-bytes": 10, "x-overflow": "reject-publish"}
    )
    channel.confirm_delivery()
    results = [_publish(channel, queue, b) for b in (b"aaaa", b"bbbb", b"ccc", b"dd", b"")]
    assert results == [True, True, False, True, True]
    assert _bodies(channel, queue) == [b"aaaa", b"bbbb", b"dd", b""]
    assert not _publish(channel, queue, b"x" * 11)
    assert message_count(channel, queue) == 0


def test_reject_publish_other_queues_keep_the_message(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A fanout publish reaching a full reject-publish queue and another queue: the publisher
    is nacked, yet the other queue has the message (there is no all-or-nothing)."""
    fanout = cleanup.exchange(f"{name}-fan")
    channel.exchange_declare(fanout, "fanout")
    full, _ = _limited(
        channel, cleanup, name, **{"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    other = cleanup.queue(f"{name}-other")
    channel.queue_declare(other)
    channel.queue_bind(full, fanout)
    channel.queue_bind(other, fanout)
    channel.confirm_delivery()
    channel.basic_publish(fanout, "", b"one")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish(fanout, "", b"two")
    assert _bodies(channel, full) == [b"one"]
    assert _bodies(channel, other) == [b"one", b"two"]


def test_reject_publish_without_confirms_drops_silently(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Without confirms the refused message just disappears: no error, no close, no return."""
    queue, _ = _limited(
        channel, cleanup, name, **{"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    returned: list[bytes] = []
    channel.add_on_return_callback(lambda _ch, _m, _p, body: returned.append(body))
    channel.basic_publish("", queue, b"kept")
    channel.basic_publish("", queue, b"dropped", mandatory=True)
    pump(connection, 0.2)
    assert channel.is_open
    assert returned == []
    assert _bodies(channel, queue) == [b"kept"]


def test_reject_publish_does_not_dead_letter(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """reject-publish with a DLX configured: the refused message is nacked, not dead-lettered."""
    queue, dead = _limited(
        channel,
        cleanup,
        name,
        dead_letter=True,
        **{"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    channel.confirm_delivery()
    assert _publish(channel, queue, b"one")
    assert not _publish(channel, queue, b"two")
    pump(connection, 0.2)
    assert message_count(channel, dead) == 0
    assert _bodies(channel, queue) == [b"one"]


def test_reject_publish_dlx_dead_letters_and_nacks(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """reject-publish-dlx: the publisher is nacked AND the refused (newest) message is
    dead-lettered with reason 'maxlen'; the queue keeps its old messages."""
    queue, dead = _limited(
        channel,
        cleanup,
        name,
        dead_letter=True,
        **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"},
    )
    channel.confirm_delivery()
    assert _publish(channel, queue, b"one")
    assert not _publish(channel, queue, b"two")
    wait_message_count(connection, dead, 1)
    [delivery] = get_all(channel, dead)
    assert delivery.body == b"two"
    [death] = delivery.properties.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("maxlen", queue, 1)
    assert (death["exchange"], death["routing-keys"]) == ("", [queue])
    assert _bodies(channel, queue) == [b"one"]


def test_requeue_may_exceed_reject_publish_limit(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Requeued messages are never refused: with x-max-length 1, one unacked and one ready,
    the requeue makes 2 ready; publishes stay nacked until the queue is below the limit."""
    queue, _ = _limited(
        channel, cleanup, name, **{"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    publisher = connection.channel()
    publisher.confirm_delivery()
    assert _publish(publisher, queue, b"a")
    method, _, _ = channel.basic_get(queue)
    assert _publish(publisher, queue, b"b")
    assert not _publish(publisher, queue, b"c")
    channel.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, queue, 2)
    assert not _publish(publisher, queue, b"d")
    assert _bodies(channel, queue) == [b"a", b"b"]


def test_reject_publish_mandatory_gets_nack_not_return(
    amqp_url: str, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A mandatory publish refused by a full reject-publish queue was routed, so there is no
    Basic.Return: only Basic.Nack. On the wire RabbitMQ sends Nack(delivery_tag=1,
    multiple=true, requeue=true) - 'multiple' because no lower tag is outstanding, 'requeue'
    is simply its default. A mandatory unroutable publish next to it gets Return + Ack."""
    queue, _ = _limited(
        channel, cleanup, name, **{"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    publish_confirmed(channel.connection, queue, [b"full"])
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Confirm.Select(), 1)
        client.expect(commands.Confirm.SelectOk, channel=1)
        _raw_publish(client, queue, b"refused")
        nack = client.expect(commands.Basic.Nack, channel=1)
        assert (nack.delivery_tag, nack.multiple, nack.requeue) == (1, True, True)
        with pytest.raises(RawTimeout):
            client.read_frame(timeout=0.3)

        _raw_publish(client, f"{name}-nowhere", b"unroutable")
        returned = client.expect(commands.Basic.Return, channel=1)
        assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
        client.read_frame()  # content header
        client.read_frame()  # body
        ack = client.expect(commands.Basic.Ack, channel=1)
        assert ack.delivery_tag == 2
    assert _bodies(channel, queue) == [b"full"]


# --- x-max-length 0 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overflow", "accepted", "dead_lettered"),
    [
        ("drop-head", True, True),
        ("reject-publish", False, False),
        ("reject-publish-dlx", False, True),
    ],
)
def test_max_length_zero(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    overflow: str,
    accepted: bool,
    dead_lettered: bool,
) -> None:
    """x-max-length 0 is valid: nothing ever stays ready. drop-head confirms the publish and
    drops (dead-letters, 'maxlen') it at once; reject-publish nacks it; reject-publish-dlx nacks
    and dead-letters it."""
    queue, dead = _limited(
        channel,
        cleanup,
        name,
        dead_letter=True,
        **{"x-max-length": 0, "x-overflow": overflow},
    )
    channel.confirm_delivery()
    assert _publish(channel, queue, b"zero") is accepted
    if dead_lettered:
        wait_message_count(connection, dead, 1)
        assert _reasons(channel, dead) == [(b"zero", "maxlen")]
    else:
        pump(connection, 0.2)
        assert message_count(channel, dead) == 0
    assert message_count(channel, queue) == 0


@pytest.mark.parametrize(
    ("overflow", "delivered"),
    [("drop-head", True), ("reject-publish", False), ("reject-publish-dlx", False)],
)
def test_max_length_zero_with_waiting_consumer(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    overflow: str,
    delivered: bool,
) -> None:
    """x-max-length 0 with a consumer ready to take the message: with drop-head it goes straight
    to the consumer (never counted, not dropped); with reject-publish(-dlx) it is still nacked
    and not delivered (reject-publish-dlx dead-letters it)."""
    queue, dead = _limited(
        channel,
        cleanup,
        name,
        dead_letter=True,
        **{"x-max-length": 0, "x-overflow": overflow},
    )
    consumer = connection.channel()
    collector = Collector(auto_ack_after=True)
    consumer.basic_consume(queue, collector)
    channel.confirm_delivery()
    assert _publish(channel, queue, b"direct") is delivered
    if delivered:
        collector.wait_for(connection, 1)
    elif overflow == "reject-publish-dlx":
        wait_message_count(connection, dead, 1)
    pump(connection, 0.2)
    assert collector.bodies == ([b"direct"] if delivered else [])
    expected_dead = 1 if overflow == "reject-publish-dlx" else 0
    assert message_count(channel, dead) == expected_dead


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        (
            {"x-overflow": "bogus"},
            "invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow",
        ),
        (
            {"x-max-length": -1},
            "invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}",
        ),
        (
            {"x-max-length-bytes": -1},
            "invalid arg 'x-max-length-bytes' for queue '{q}' in vhost '/': {{value_negative,-1}}",
        ),
        (
            {"x-max-length": "5"},
            "invalid arg 'x-max-length' for queue '{q}' in vhost '/': "
            '"expected integer, got longstr"',
        ),
    ],
    ids=["bad-overflow", "negative-length", "negative-bytes", "string-length"],
)
def test_invalid_limit_arguments_are_406(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    arguments: dict[str, Any],
    detail: str,
) -> None:
    """Bad x-overflow / x-max-length / x-max-length-bytes: 406 PRECONDITION_FAILED with the
    Erlang reason after the colon; the queue is not created."""
    with expect_channel_close(channel, 406, detail.format(q=name)):
        channel.queue_declare(name, arguments=arguments)
    assert not queue_exists(connection, name)


def test_reject_publish_in_a_transaction_fails_the_commit(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A tx commit whose publish a full reject-publish queue refused: the channel closes with
    406 "partial tx completion"; what the queue took stays."""
    queue = cleanup.queue(name)
    channel.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.tx_select()
    channel.basic_publish("", queue, b"1")
    channel.basic_publish("", queue, b"2")
    with expect_channel_close(channel, 406, "partial tx completion"):
        channel.tx_commit()
    other = channel.connection.channel()
    assert other.queue_declare(queue, passive=True).method.message_count == 1
