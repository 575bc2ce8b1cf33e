"""Priority queues (the `x-max-priority` queue argument) as RabbitMQ 3.10 classic queues do them.

What RabbitMQ does, in short: a message's effective priority is its `priority` property capped at
the queue's `x-max-priority` (a missing property is 0); ready messages leave highest effective
priority first and FIFO within one level; the `priority` property itself is delivered unchanged.
Requeued messages go back to their original place within their level (by publish order, ahead of
never-delivered ones). `x-max-length` drop-head drops the *head*, i.e. the oldest message of the
highest level, which may be the message just published.

Messages are published while no consumer can take them (otherwise each is delivered the moment it
arrives and there is nothing to order).
"""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    Collector,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    get_all,
    message_count,
    pump,
    queue_exists,
    wait_message_count,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

Item = tuple[int | None, str]  # (priority property, body)


def _priority_queue(channel: BlockingChannel, max_priority: int = 5, **arguments: Any) -> str:
    """An exclusive server-named queue with `x-max-priority` (and any other arguments)."""
    arguments = {"x-max-priority": max_priority, **arguments}
    return channel.queue_declare("", exclusive=True, arguments=arguments).method.queue


def _publish(connection: BlockingConnection, queue: str, items: list[Item]) -> None:
    """Publish (priority, body) pairs via the default exchange on a throwaway confirm channel, so
    they are all in the queue when this returns."""
    channel = connection.channel()
    channel.confirm_delivery()
    for priority, body in items:
        channel.basic_publish("", queue, body.encode(), pika.BasicProperties(priority=priority))
    channel.close()


def _drain(channel: BlockingChannel, queue: str) -> list[str]:
    return [d.body.decode() for d in get_all(channel, queue)]


# --- ordering -------------------------------------------------------------------------------------


def test_get_returns_highest_priority_first_and_fifo_within_a_level(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Basic.Get takes the highest level first, FIFO inside a level; a missing priority is level
    0, a priority above x-max-priority (9 > 5) is level 5 and stays FIFO with the 5s; the
    delivered `priority` property is the published one (9 stays 9, missing stays missing);
    GetOk.message_count counts the ready messages left across all levels."""
    queue = _priority_queue(channel, 5)
    _publish(
        connection,
        queue,
        [(None, "a"), (1, "b"), (5, "c"), (9, "d"), (1, "e"), (0, "f"), (5, "g"), (3, "h")],
    )
    got = get_all(channel, queue)
    assert [(d.body, d.properties.priority, d.method.message_count) for d in got] == [
        (b"c", 5, 7),
        (b"d", 9, 6),
        (b"g", 5, 5),
        (b"h", 3, 4),
        (b"b", 1, 3),
        (b"e", 1, 2),
        (b"a", None, 1),
        (b"f", 0, 0),
    ]
    assert not any(d.method.redelivered for d in got)


def test_missing_priority_is_fifo_with_priority_zero(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """No priority property and priority=0 share level 0 and keep publish order among them."""
    queue = _priority_queue(channel, 3)
    _publish(connection, queue, [(None, "n1"), (0, "z1"), (None, "n2"), (2, "two"), (0, "z2")])
    assert _drain(channel, queue) == ["two", "n1", "z1", "n2", "z2"]


def test_priority_above_max_counts_as_max(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """With x-max-priority 5, priorities 9, 5, 255 and 7 all mean 5: FIFO between them, all ahead
    of level 4."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(4, "four"), (9, "p9"), (5, "p5"), (255, "p255"), (7, "p7")])
    assert _drain(channel, queue) == ["p9", "p5", "p255", "p7", "four"]


def test_max_priority_zero_is_fifo(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """x-max-priority 0 is accepted; every priority caps to 0, so the queue is plain FIFO."""
    queue = _priority_queue(channel, 0)
    _publish(connection, queue, [(0, "a"), (5, "b"), (None, "c"), (255, "d")])
    assert _drain(channel, queue) == ["a", "b", "c", "d"]


def test_queue_without_max_priority_ignores_priority(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """A queue without x-max-priority is FIFO whatever the messages' priority property."""
    queue = channel.queue_declare("", exclusive=True).method.queue
    _publish(connection, queue, [(1, "a"), (9, "b"), (None, "c"), (5, "d")])
    assert _drain(channel, queue) == ["a", "b", "c", "d"]


def test_max_priority_255_uses_every_level(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """x-max-priority 255 (the largest allowed) orders the whole octet range."""
    queue = _priority_queue(channel, 255)
    _publish(connection, queue, [(0, "p0"), (254, "p254"), (255, "p255"), (128, "p128")])
    assert _drain(channel, queue) == ["p255", "p254", "p128", "p0"]


# --- counts ---------------------------------------------------------------------------------------


def test_message_count_counts_every_level_and_excludes_unacked(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """DeclareOk.message_count and Purge count ready messages of all levels; unacked ones (from
    Basic.Get without auto-ack) are not counted."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(None, "a"), (5, "b"), (2, "c"), (7, "d"), (0, "e")])
    assert message_count(channel, queue) == 5
    method, _, body = channel.basic_get(queue, auto_ack=False)
    assert (body, method.message_count) == (b"b", 4)
    assert message_count(channel, queue) == 4
    assert channel.queue_purge(queue).method.message_count == 4
    channel.basic_ack(method.delivery_tag)
    assert message_count(channel, queue) == 0


# --- consumers ------------------------------------------------------------------------------------


def test_consumer_gets_backlog_in_priority_order(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """A consumer (no prefetch limit, auto-ack) on a filled queue gets it highest first, FIFO
    within a level."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(1, "l1"), (None, "n"), (5, "h1"), (3, "m"), (1, "l2"), (9, "h2")])
    collector = Collector()
    channel.basic_consume(queue, collector, auto_ack=True)
    collector.wait_for(connection, 6)
    assert collector.bodies == [b"h1", b"h2", b"m", b"l1", b"l2", b"n"]


def test_prefetch_limits_deliveries_and_each_ack_releases_the_next_highest(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """With prefetch 2 the consumer gets the two highest; each ack releases the next highest,
    including a higher-priority message published while the consumer was full."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(1, "l1"), (4, "h1"), (1, "l2"), (4, "h2"), (2, "m1")])
    channel.basic_qos(prefetch_count=2)
    collector = Collector()
    channel.basic_consume(queue, collector)
    collector.wait_for(connection, 2)
    pump(connection, 0.1)
    assert collector.bodies == [b"h1", b"h2"]
    assert message_count(channel, queue) == 3
    _publish(connection, queue, [(0, "late-low"), (5, "late-high")])
    channel.basic_ack(collector.deliveries[0].method.delivery_tag)
    collector.wait_for(connection, 3)
    assert collector.bodies[2] == b"late-high"
    channel.basic_ack(collector.deliveries[1].method.delivery_tag)
    collector.wait_for(connection, 4)
    channel.basic_ack(collector.deliveries[2].method.delivery_tag)
    collector.wait_for(connection, 5)
    pump(connection, 0.1)
    assert collector.bodies == [b"h1", b"h2", b"late-high", b"m1", b"l1"]


def test_consumer_acking_one_by_one_sees_priority_order(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """prefetch 1 with an ack per delivery: the consumer walks the queue in priority order."""
    queue = _priority_queue(channel, 10)
    items: list[Item] = [(i % 4, f"m{i}") for i in range(12)]
    _publish(connection, queue, items)
    channel.basic_qos(prefetch_count=1)
    collector = Collector(auto_ack_after=True)
    channel.basic_consume(queue, collector)
    collector.wait_for(connection, 12)
    expected = [body for _, body in sorted(items, key=lambda item: -(item[0] or 0))]
    assert [b.decode() for b in collector.bodies] == expected


def test_two_prefetch_one_consumers_share_the_backlog_in_priority_order(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Two prefetch-1 consumers on a filled priority queue: the first gets the highest message,
    the second the next; whichever acks gets the next highest."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(1, "l1"), (5, "h1"), (3, "m1"), (5, "h2"), (3, "m2")])
    first, second = connection.channel(), connection.channel()
    first.basic_qos(prefetch_count=1)
    second.basic_qos(prefetch_count=1)
    a, b = Collector(), Collector()
    first.basic_consume(queue, a)
    a.wait_for(connection, 1)
    second.basic_consume(queue, b)
    b.wait_for(connection, 1)
    assert (a.bodies, b.bodies) == ([b"h1"], [b"h2"])
    second.basic_ack(b.deliveries[0].method.delivery_tag)
    b.wait_for(connection, 2)
    first.basic_ack(a.deliveries[0].method.delivery_tag)
    a.wait_for(connection, 2)
    second.basic_ack(b.deliveries[1].method.delivery_tag)
    b.wait_for(connection, 3)
    pump(connection, 0.1)
    assert (a.bodies, b.bodies) == ([b"h1", b"m2"], [b"h2", b"m1", b"l1"])


def test_round_robin_between_two_consumers(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Consumers of a priority queue still alternate when both can take messages."""
    queue = _priority_queue(channel, 5)
    order: list[str] = []
    for tag in ("a", "b"):
        channel.basic_consume(
            queue,
            lambda _ch, _m, _p, _b, tag=tag: order.append(tag),
            auto_ack=True,
            consumer_tag=tag,
        )
    _publish(connection, queue, [(i % 6, f"m{i}") for i in range(10)])
    wait_until(connection, lambda: len(order) >= 10)
    pump(connection, 0.1)
    assert order.count("a") == order.count("b") == 5
    assert all(order[i] != order[i + 1] for i in range(9)), order


# --- requeue --------------------------------------------------------------------------------------


def test_nack_requeue_puts_messages_back_at_their_place_within_their_level(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """A requeued message goes back to the front part of its own level (where it was), ahead of
    messages of that level published later, behind higher levels; redelivered=True."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(1, "a1"), (1, "a2"), (1, "a3"), (1, "a4"), (2, "b1"), (2, "b2")])
    taken = {
        body.decode(): method.delivery_tag
        for method, _, body in (channel.basic_get(queue) for _ in range(4))
    }
    assert list(taken) == ["b1", "b2", "a1", "a2"]
    _publish(connection, queue, [(2, "b3"), (1, "a5")])
    channel.basic_nack(taken["b2"], requeue=True)
    channel.basic_nack(taken["a2"], requeue=True)
    wait_message_count(connection, queue, 6)
    rest = get_all(channel, queue)
    assert [(d.body.decode(), d.method.redelivered) for d in rest] == [
        ("b2", True),
        ("b3", False),
        ("a2", True),
        ("a3", False),
        ("a4", False),
        ("a5", False),
    ]
    channel.basic_ack(taken["a1"])
    channel.basic_ack(taken["b1"])


@pytest.mark.parametrize("how", ["nack", "reject", "recover"])
def test_several_requeued_messages_keep_publish_order(
    connection: BlockingConnection, channel: BlockingChannel, how: str
) -> None:
    """Requeued one at a time in the order x3, x1, x2 (or all at once by Basic.Recover), they come
    back as x1, x2, x3 (publish order, not requeue order), then the never-delivered x4."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(1, "x1"), (1, "x2"), (1, "x3"), (1, "x4")])
    taken = {
        body.decode(): method.delivery_tag
        for method, _, body in (channel.basic_get(queue) for _ in range(3))
    }
    if how == "recover":
        channel.basic_recover(requeue=True)
    else:
        for ready, body in enumerate(("x3", "x1", "x2"), start=2):
            if how == "nack":
                channel.basic_nack(taken[body], requeue=True)
            else:
                channel.basic_reject(taken[body], requeue=True)
            wait_message_count(connection, queue, ready)
    wait_message_count(connection, queue, 4)
    rest = get_all(channel, queue)
    assert [(d.body.decode(), d.method.redelivered) for d in rest] == [
        ("x1", True),
        ("x2", True),
        ("x3", True),
        ("x4", False),
    ]


def test_channel_close_requeues_into_each_level(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Closing a channel with unacked messages from several levels puts each back at the front
    of its level, ahead of that level's later messages."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(0, "p0a"), (3, "p3a"), (0, "p0b"), (3, "p3b"), (5, "p5a")])
    getter = connection.channel()
    taken = [getter.basic_get(queue)[2] for _ in range(3)]
    assert taken == [b"p5a", b"p3a", b"p3b"]
    _publish(connection, queue, [(3, "p3c"), (5, "p5b")])
    getter.close()
    wait_message_count(connection, queue, 7)
    rest = get_all(channel, queue)
    assert [(d.body.decode(), d.method.redelivered) for d in rest] == [
        ("p5a", True),
        ("p5b", False),
        ("p3a", True),
        ("p3b", True),
        ("p3c", False),
        ("p0a", False),
        ("p0b", False),
    ]


def test_requeued_message_goes_to_waiting_consumer_before_lower_levels(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """A consumer that rejects its high-priority message with requeue gets it again before any
    lower-priority message."""
    queue = _priority_queue(channel, 5)
    _publish(connection, queue, [(1, "low1"), (4, "high"), (1, "low2")])
    channel.basic_qos(prefetch_count=1)
    collector = Collector()
    channel.basic_consume(queue, collector)
    collector.wait_for(connection, 1)
    channel.basic_reject(collector.deliveries[0].method.delivery_tag, requeue=True)
    collector.wait_for(connection, 2)
    again = collector.deliveries[1]
    assert (again.body, again.method.redelivered) == (b"high", True)


# --- x-max-length ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ({"x-max-length": 3}, ["m1", "l1", "l2"]),
        ({"x-max-length": 3, "x-overflow": "drop-head"}, ["m1", "l1", "l2"]),
        ({"x-max-length": 1}, ["l2"]),
        ({"x-max-length-bytes": 4}, ["l1", "l2"]),
    ],
)
def test_max_length_drop_head_drops_the_highest_priority_head(
    connection: BlockingConnection,
    channel: BlockingChannel,
    limit: dict[str, Any],
    expected: list[str],
) -> None:
    """Surprise: drop-head on a priority queue drops the head, i.e. the oldest message of the
    highest level, even the one just published. Publishing l1(1) h1(5) m1(3) l2(1) h2(5) into
    max-length 3 keeps m1, l1, l2 (h1 dropped when l2 came, h2 dropped at once)."""
    queue = _priority_queue(channel, 5, **limit)
    _publish(connection, queue, [(1, "l1"), (5, "h1"), (3, "m1"), (1, "l2"), (5, "h2")])
    assert _drain(channel, queue) == expected


def test_max_length_drop_head_dead_letters_in_drop_order(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """The messages drop-head removes from a priority queue are dead-lettered in the order they
    were dropped: with max-length 2, h1, m1 and then the newly published h2."""
    dead = channel.queue_declare("", exclusive=True).method.queue
    queue = _priority_queue(
        channel,
        5,
        **{"x-max-length": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    _publish(connection, queue, [(1, "l1"), (5, "h1"), (3, "m1"), (1, "l2"), (5, "h2")])
    wait_message_count(connection, dead, 3)
    assert _drain(channel, dead) == ["h1", "m1", "h2"]
    assert _drain(channel, queue) == ["l1", "l2"]


def test_max_length_reject_publish_refuses_new_messages_whatever_their_priority(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """x-overflow reject-publish on a full priority queue nacks every new publish, even one of a
    higher priority than everything queued; nothing queued is displaced."""
    queue = _priority_queue(channel, 5, **{"x-max-length": 3, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    outcomes = []
    for priority, body in [(1, "l1"), (5, "h1"), (3, "m1"), (1, "l2"), (5, "h2")]:
        try:
            channel.basic_publish("", queue, body.encode(), pika.BasicProperties(priority=priority))
            outcomes.append("ack")
        except pika.exceptions.NackError:
            outcomes.append("nack")
    assert outcomes == ["ack", "ack", "ack", "nack", "nack"]
    assert _drain(channel, queue) == ["h1", "m1", "l1"]


# --- declaration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (256, "{max_value_exceeded,256}"),
        (1_000_000, "{max_value_exceeded,1000000}"),
        (-1, "{value_negative,-1}"),
        ("5", '"expected integer, got longstr"'),
    ],
)
def test_invalid_max_priority_is_406(
    connection: BlockingConnection, channel: BlockingChannel, name: str, value: object, reason: str
) -> None:
    """x-max-priority must be an integer 0..255: 406 "invalid arg 'x-max-priority' for queue 'Q'
    in vhost '/': REASON"; the queue is not created."""
    expected = f"invalid arg 'x-max-priority' for queue '{name}' in vhost '/': {reason}"
    with expect_channel_close(channel, 406, expected):
        channel.queue_declare(name, arguments={"x-max-priority": value})
    assert not queue_exists(connection, name)


@pytest.mark.parametrize(
    ("first", "second", "mention"),
    [
        ({"x-max-priority": 5}, {"x-max-priority": 6}, "received '6' but current is '5'"),
        (
            {"x-max-priority": 5},
            {},
            "received none but current is the value '5' of type 'signedint'",
        ),
        (
            {},
            {"x-max-priority": 5},
            "received the value '5' of type 'signedint' but current is none",
        ),
    ],
)
def test_redeclare_with_different_max_priority_is_406(
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    first: dict[str, Any],
    second: dict[str, Any],
    mention: str,
) -> None:
    """x-max-priority is part of queue equivalence: 406 "inequivalent arg 'x-max-priority' for
    queue 'Q' in vhost '/': received ..."; the same value redeclares fine."""
    channel.queue_declare(cleanup.queue(name), arguments=first)
    channel.queue_declare(name, arguments=first)
    expected = f"inequivalent arg 'x-max-priority' for queue '{name}' in vhost '/'"
    with expect_channel_close(channel, 406, expected, mention):
        channel.queue_declare(name, arguments=second)
