"""Single active consumer (the `x-single-active-consumer` queue argument) as RabbitMQ 3.10 classic
queues do it.

What RabbitMQ does, in short: the first consumer to subscribe is the active one and gets every
message; later consumers wait (registered, counted in consumer_count, receiving nothing, even
while the active one is blocked by its prefetch). When the active consumer goes (Basic.Cancel,
its channel or its connection closing) the waiting consumer with the highest `x-priority` takes
over, ties going to the earliest subscriber; a higher-priority newcomer does not displace an active
consumer. Messages requeued by a closing channel go to the new active consumer first, in their
original order. Exclusive Basic.Consume on such a queue is always 403. Basic.Get still works.

RabbitMQ 3.10.8 bug (rabbitmq-server#5460): after the active consumer is *cancelled* while the
queue holds ready messages, the next consumer is marked active but nothing is delivered to it and
the next publish crashes the queue process (it restarts empty). The cancel tests below therefore
cancel only when the queue has no ready messages; `test_cancel_with_ready_messages_hands_them_over`
is what Warren should do instead (warren_only).
"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    Collector,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    message_count,
    other_connection_fixture,  # noqa: F401  (fixture)
    publish_confirmed,
    pump,
    queue_exists,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

SAC = {"x-single-active-consumer": True}


def _bodies(n: int, start: int = 0) -> list[bytes]:
    return [f"m{i}".encode() for i in range(start, start + n)]


def _sac_queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True, arguments=SAC).method.queue


@pytest.fixture
def shared_queue(channel: BlockingChannel, name: str, cleanup: Cleanup) -> Iterator[str]:
    """A non-exclusive SAC queue, so consumers on other connections can use it."""
    channel.queue_declare(cleanup.queue(name), arguments=SAC)
    yield name


class Consumer:
    """One consumer on its own channel, collecting what it gets."""

    def __init__(
        self,
        connection: BlockingConnection,
        queue: str,
        tag: str,
        prefetch: int = 0,
        priority: int | None = None,
    ) -> None:
        self.connection = connection
        self.channel = connection.channel()
        if prefetch:
            self.channel.basic_qos(prefetch_count=prefetch)
        self.collector = Collector()
        self.tag = self.channel.basic_consume(
            queue,
            self.collector,
            consumer_tag=tag,
            arguments=None if priority is None else {"x-priority": priority},
        )

    @property
    def bodies(self) -> list[bytes]:
        return self.collector.bodies

    def received(self) -> list[tuple[bytes, bool]]:
        return [(d.body, d.method.redelivered) for d in self.collector.deliveries]

    def wait_for(self, count: int) -> None:
        self.collector.wait_for(self.connection, count)

    def ack_all(self) -> None:
        self.channel.basic_ack(0, multiple=True)


# --- who gets the messages ------------------------------------------------------------------------


def test_first_consumer_gets_everything(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """The first subscriber is the single active consumer: it gets every message; two later
    subscribers get nothing."""
    queue = _sac_queue(channel)
    first, second, third = (Consumer(connection, queue, tag) for tag in ("A", "B", "C"))
    publish_confirmed(connection, queue, _bodies(6))
    first.wait_for(6)
    pump(connection, 0.2)
    assert first.bodies == _bodies(6)
    assert (second.bodies, third.bodies) == ([], [])


def test_waiting_consumer_gets_nothing_while_the_active_one_is_full(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """An active consumer blocked by its prefetch keeps the rest ready: the waiting consumer (with
    room to spare) still gets nothing, until the active one acks."""
    queue = _sac_queue(channel)
    active = Consumer(connection, queue, "A", prefetch=1)
    waiting = Consumer(connection, queue, "B", prefetch=10)
    publish_confirmed(connection, queue, _bodies(3))
    active.wait_for(1)
    pump(connection, 0.2)
    assert (active.bodies, waiting.bodies) == ([b"m0"], [])
    assert message_count(channel, queue) == 2
    active.ack_all()
    active.wait_for(2)
    pump(connection, 0.1)
    assert (active.bodies, waiting.bodies) == (_bodies(2), [])


def test_declare_ok_consumer_count_includes_waiting_consumers(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """DeclareOk.consumer_count counts every subscribed consumer, active or waiting;
    message_count the ready messages."""
    queue = _sac_queue(channel)
    active = Consumer(connection, queue, "A", prefetch=1)
    Consumer(connection, queue, "B")
    Consumer(connection, queue, "C")
    publish_confirmed(connection, queue, _bodies(4))
    active.wait_for(1)
    ok = channel.queue_declare(queue, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 3)


def test_basic_get_works_while_a_consumer_is_active(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Basic.Get is allowed on a SAC queue with an active consumer: it takes the next ready message
    (the active consumer then continues after it)."""
    queue = _sac_queue(channel)
    active = Consumer(connection, queue, "A", prefetch=1)
    publish_confirmed(connection, queue, _bodies(3))
    active.wait_for(1)
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.message_count) == (b"m1", 1)
    active.ack_all()
    active.wait_for(2)
    assert active.bodies == [b"m0", b"m2"]


# --- hand-over ------------------------------------------------------------------------------------


def test_channel_close_hands_over_with_requeued_messages_first(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """When the active consumer's channel closes, its unacked messages are requeued and the next
    subscriber takes over: it gets them first (redelivered, original order), then new ones.

    Nothing is ready when the channel closes: pika cancels a channel's consumers before closing
    it, and RabbitMQ 3.10 does not run the queue when the active consumer is cancelled with
    ready messages (rabbitmq-server#5460), so with ready messages the order would encode that
    bug (see test_cancel_with_ready_messages_hands_them_over)."""
    queue = _sac_queue(channel)
    first = Consumer(connection, queue, "A", prefetch=2)
    second = Consumer(connection, queue, "B")
    third = Consumer(connection, queue, "C")
    publish_confirmed(connection, queue, _bodies(2))
    first.wait_for(2)
    first.channel.close()
    second.wait_for(2)
    publish_confirmed(connection, queue, _bodies(3, start=2))
    second.wait_for(5)
    pump(connection, 0.1)
    assert second.received() == [
        (b"m0", True),
        (b"m1", True),
        (b"m2", False),
        (b"m3", False),
        (b"m4", False),
    ]
    assert third.bodies == []


def test_connection_close_hands_over(
    connection: BlockingConnection,
    channel: BlockingChannel,
    other_connection: BlockingConnection,
    shared_queue: str,
) -> None:
    """The active consumer's connection closing hands over like a channel close: the next
    subscriber (on another connection) gets the requeued messages first, then new ones."""
    first = Consumer(other_connection, shared_queue, "A", prefetch=2)
    second = Consumer(connection, shared_queue, "B")
    publish_confirmed(connection, shared_queue, _bodies(2))
    first.wait_for(2)
    pump(connection, 0.1)
    assert second.bodies == []
    other_connection.close()
    second.wait_for(2)
    publish_confirmed(connection, shared_queue, _bodies(2, start=2))
    second.wait_for(4)
    assert second.received() == [(b"m0", True), (b"m1", True), (b"m2", False), (b"m3", False)]


def test_takeover_follows_subscription_order(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """With equal priorities the consumers take over in the order they subscribed: A, then B, then
    C; each new active consumer also gets the previous one's requeued messages."""
    queue = _sac_queue(channel)
    a, b = (Consumer(connection, queue, tag, prefetch=2) for tag in ("A", "B"))
    c = Consumer(connection, queue, "C")
    publish_confirmed(connection, queue, _bodies(2))
    a.wait_for(2)
    a.channel.close()
    b.wait_for(2)
    pump(connection, 0.1)
    assert c.bodies == []
    b.channel.close()
    c.wait_for(2)
    publish_confirmed(connection, queue, [b"m2"])
    c.wait_for(3)
    assert c.received() == [(b"m0", True), (b"m1", True), (b"m2", False)]


def test_closing_a_waiting_consumer_changes_nothing(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Cancelling or closing the channel of a waiting consumer leaves the active one in place; the
    remaining waiting consumer takes over when the active one goes."""
    queue = _sac_queue(channel)
    a, b, c, d = (Consumer(connection, queue, tag) for tag in ("A", "B", "C", "D"))
    b.channel.basic_cancel(b.tag)
    c.channel.close()
    publish_confirmed(connection, queue, _bodies(2))
    a.wait_for(2)
    a.ack_all()
    a.channel.close()
    publish_confirmed(connection, queue, [b"m2"])
    d.wait_for(1)
    pump(connection, 0.1)
    assert (a.bodies, b.bodies, c.bodies, d.bodies) == (_bodies(2), [], [], [b"m2"])


def test_cancel_hands_over_to_the_next_consumer(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Basic.Cancel of the active consumer (with the queue empty) makes the next subscriber active:
    later messages go to it. The cancelled consumer's unacked messages stay with its channel
    (cancel does not requeue); nacking them with requeue hands them to the new active consumer."""
    queue = _sac_queue(channel)
    first = Consumer(connection, queue, "A")
    second = Consumer(connection, queue, "B")
    publish_confirmed(connection, queue, _bodies(2))
    first.wait_for(2)
    first.channel.basic_cancel(first.tag)
    publish_confirmed(connection, queue, [b"m2"])
    second.wait_for(1)
    assert second.received() == [(b"m2", False)]
    first.channel.basic_nack(0, multiple=True, requeue=True)
    second.wait_for(3)
    pump(connection, 0.1)
    assert second.received() == [(b"m2", False), (b"m0", True), (b"m1", True)]
    assert first.bodies == _bodies(2)


def test_cancel_after_acking_everything_hands_over(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """The active consumer acks all, then cancels: everything published afterwards goes to the
    next subscriber."""
    queue = _sac_queue(channel)
    first = Consumer(connection, queue, "A")
    second = Consumer(connection, queue, "B")
    publish_confirmed(connection, queue, _bodies(2))
    first.wait_for(2)
    first.ack_all()
    first.channel.basic_cancel(first.tag)
    publish_confirmed(connection, queue, _bodies(3, start=2))
    second.wait_for(3)
    pump(connection, 0.1)
    assert (first.bodies, second.bodies) == (_bodies(2), _bodies(3, start=2))


def test_new_consumer_becomes_active_after_the_last_one_left(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """With the only consumer cancelled, messages wait in the queue; the next subscriber becomes
    active and gets them."""
    queue = _sac_queue(channel)
    first = Consumer(connection, queue, "A")
    first.channel.basic_cancel(first.tag)
    publish_confirmed(connection, queue, _bodies(3))
    assert message_count(channel, queue) == 3
    second = Consumer(connection, queue, "B")
    later = Consumer(connection, queue, "C")
    second.wait_for(3)
    pump(connection, 0.1)
    assert (first.bodies, second.bodies, later.bodies) == ([], _bodies(3), [])


@pytest.mark.warren_only
def test_cancel_with_ready_messages_hands_them_over(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """Warren: cancelling the active consumer while messages are ready hands those messages to
    the next consumer at once. (RabbitMQ 3.10.8 marks the next consumer active but delivers
    nothing, and its queue process crashes on the next publish: rabbitmq-server#5460.)"""
    queue = _sac_queue(channel)
    first = Consumer(connection, queue, "A", prefetch=2)
    second = Consumer(connection, queue, "B", prefetch=2)
    publish_confirmed(connection, queue, _bodies(6))
    first.wait_for(2)
    first.channel.basic_cancel(first.tag)
    second.wait_for(2)
    assert second.bodies == [b"m2", b"m3"]
    publish_confirmed(connection, queue, [b"m6"])
    second.ack_all()
    second.wait_for(4)
    assert second.bodies == [b"m2", b"m3", b"m4", b"m5"]
    first.channel.close()
    second.ack_all()
    second.wait_for(6)
    assert second.received()[4:] == [(b"m0", True), (b"m1", True)]


# --- consumer priorities --------------------------------------------------------------------------


def test_higher_priority_newcomer_does_not_displace_the_active_consumer(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """RabbitMQ 3.10 classic queues: the first subscriber becomes active whatever its x-priority;
    a later consumer with a higher x-priority waits."""
    queue = _sac_queue(channel)
    low = Consumer(connection, queue, "low", priority=1)
    high = Consumer(connection, queue, "high", priority=10)
    publish_confirmed(connection, queue, _bodies(3))
    low.wait_for(3)
    pump(connection, 0.1)
    assert (low.bodies, high.bodies) == (_bodies(3), [])


def test_takeover_picks_the_highest_priority_waiting_consumer(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """When the active consumer goes, the waiting consumer with the highest x-priority takes over
    (earliest subscriber among equals): A(0) active; then C(10), then D(10), then B(5)."""
    queue = _sac_queue(channel)
    consumers = {
        tag: Consumer(connection, queue, tag, priority=priority)
        for tag, priority in (("A", 0), ("B", 5), ("C", 10), ("D", 10))
    }
    order: list[str] = []
    for round_ in range(4):
        body = f"r{round_}".encode()
        publish_confirmed(connection, queue, [body])
        wait_until(
            connection,
            lambda body=body: any(body in c.bodies for c in consumers.values()),
            what=f"delivery of {body!r}",
        )
        got = [t for t, c in consumers.items() if body in c.bodies]
        order.extend(got)
        consumers[got[0]].ack_all()
        consumers[got[0]].channel.close()
    assert order == ["A", "C", "D", "B"]


# --- refusals and arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("with_consumer", [False, True])
def test_exclusive_consume_is_403(
    connection: BlockingConnection, channel: BlockingChannel, with_consumer: bool
) -> None:
    """An exclusive Basic.Consume on a SAC queue is refused even when it would be the only
    consumer: 403 "queue 'Q' in vhost '/' in exclusive use"."""
    queue = _sac_queue(channel)
    if with_consumer:
        Consumer(connection, queue, "A")
    other = connection.channel()
    with expect_channel_close(other, 403, f"queue '{queue}' in vhost '/' in exclusive use"):
        other.basic_consume(queue, Collector(), exclusive=True)
    assert channel.queue_declare(queue, passive=True).method.consumer_count == int(with_consumer)


@pytest.mark.parametrize(
    ("value", "kind"), [("true", "longstr"), (1, "signedint"), (0, "signedint"), (None, "void")]
)
def test_non_boolean_argument_is_406(
    connection: BlockingConnection, channel: BlockingChannel, name: str, value: object, kind: str
) -> None:
    """x-single-active-consumer must be a boolean: 406 "invalid arg 'x-single-active-consumer' for
    queue 'Q' in vhost '/': {unacceptable_type,TYPE}"."""
    expected = (
        f"invalid arg 'x-single-active-consumer' for queue '{name}' in vhost '/': "
        f"{{unacceptable_type,{kind}}}"
    )
    with expect_channel_close(channel, 406, expected):
        channel.queue_declare(name, arguments={"x-single-active-consumer": value})
    assert not queue_exists(connection, name)


def test_false_is_a_normal_queue(connection: BlockingConnection, channel: BlockingChannel) -> None:
    """x-single-active-consumer=false is accepted and changes nothing: consumers round-robin."""
    queue = channel.queue_declare(
        "", exclusive=True, arguments={"x-single-active-consumer": False}
    ).method.queue
    a, b = Consumer(connection, queue, "A"), Consumer(connection, queue, "B")
    publish_confirmed(connection, queue, _bodies(4))
    wait_until(connection, lambda: len(a.bodies) + len(b.bodies) == 4)
    assert (a.bodies, b.bodies) == ([b"m0", b"m2"], [b"m1", b"m3"])


@pytest.mark.parametrize(
    ("first", "second", "mention"),
    [
        (SAC, {}, "received none but current is the value 'true' of type 'bool'"),
        (SAC, {"x-single-active-consumer": False}, "received 'false' but current is 'true'"),
        ({}, SAC, "received the value 'true' of type 'bool' but current is none"),
    ],
)
def test_redeclare_with_different_argument_is_406(
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    first: dict[str, bool],
    second: dict[str, bool],
    mention: str,
) -> None:
    """x-single-active-consumer is part of queue equivalence: 406 "inequivalent arg
    'x-single-active-consumer' for queue 'Q' in vhost '/': received ..."."""
    channel.queue_declare(cleanup.queue(name), arguments=first)
    channel.queue_declare(name, arguments=first)
    expected = f"inequivalent arg 'x-single-active-consumer' for queue '{name}' in vhost '/'"
    with expect_channel_close(channel, 406, expected, mention):
        channel.queue_declare(name, arguments=second)


def test_priority_queue_with_single_active_consumer(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """x-max-priority and x-single-active-consumer combine: the active consumer gets the backlog
    highest priority first; the waiting one gets nothing; Basic.Get takes from the top."""
    queue = channel.queue_declare(
        "", exclusive=True, arguments={**SAC, "x-max-priority": 5}
    ).method.queue
    publisher = connection.channel()
    publisher.confirm_delivery()
    for priority, body in ((1, b"l1"), (5, b"h1"), (3, b"m1"), (5, b"h2")):
        publisher.basic_publish("", queue, body, pika.BasicProperties(priority=priority))
    active = Consumer(connection, queue, "A", prefetch=2)
    waiting = Consumer(connection, queue, "B")
    active.wait_for(2)
    _, _, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"m1"
    active.ack_all()
    active.wait_for(3)
    pump(connection, 0.1)
    assert (active.bodies, waiting.bodies) == ([b"h1", b"h2", b"l1"], [])
    assert message_count(channel, queue) == 0
