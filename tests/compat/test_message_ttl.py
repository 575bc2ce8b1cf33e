"""Message TTL (the x-message-ttl queue argument and the `expiration` property) and queue expiry
(x-expires), as RabbitMQ 3.10 does them for a classic queue.

TTLs here are 50-300 ms. Waits poll with a deadline; a lower bound ("not gone before the TTL")
is measured from a time taken before the publish or declare, so it cannot fail on a slow run.
"""

from __future__ import annotations

import time

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
    publish_confirmed,
    pump,
    queue_exists,
    routed,
    wait_message_count,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

# Timing slack for lower bounds: the broker's clock and ours tick differently by a few ms.
EARLY = 0.02


def _queue(channel: BlockingChannel, **arguments: object) -> str:
    """A fresh exclusive server-named queue with `arguments`."""
    return channel.queue_declare("", exclusive=True, arguments=arguments or None).method.queue


def _wait_empty(connection: BlockingConnection, queue: str, timeout: float = 3.0) -> float:
    """Wait until `queue` holds no ready message; return the time (monotonic) it was seen so."""
    wait_message_count(connection, queue, 0, timeout)
    return time.monotonic()


def _wait_queue_gone(connection: BlockingConnection, queue: str, timeout: float = 3.0) -> float:
    """Wait until `queue` no longer exists; return the time (monotonic) it was seen gone.

    Polls with mandatory publishes (returned once the queue is gone), not passive declares: in
    RabbitMQ a passive Queue.Declare counts as a use and restarts the x-expires timer."""
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        deadline = time.monotonic() + timeout
        while routed(channel, "", queue):
            if time.monotonic() > deadline:
                raise AssertionError(f"queue {queue} still exists after {timeout}s")
            connection.process_data_events(time_limit=0.02)
        return time.monotonic()
    finally:
        channel.close()


def _still_exists(connection: BlockingConnection, queue: str) -> bool:
    """Whether `queue` exists, without touching its expiry timer (a mandatory publish)."""
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        return routed(channel, "", queue)
    finally:
        channel.close()


# --- per-queue and per-message TTL ----------------------------------------------------------------


def test_message_expires_after_queue_ttl(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """x-message-ttl: messages nobody consumes are removed from the queue once their TTL has
    passed (no consumer or get needed to trigger it): message_count drops to 0, and not
    before the TTL."""
    ttl = 0.2
    queue = _queue(channel, **{"x-message-ttl": int(ttl * 1000)})
    start = time.monotonic()
    publish_confirmed(connection, queue, [b"a", b"b", b"c"])
    count = message_count(channel, queue)
    assert count == 3 or time.monotonic() - start >= ttl
    assert _wait_empty(connection, queue) - start >= ttl - EARLY
    assert get_all(channel, queue) == []


def test_message_expires_after_its_expiration(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """The `expiration` property ("100", milliseconds as a decimal string) is a per-message TTL;
    a message without it stays."""
    queue = _queue(channel)
    start = time.monotonic()
    publish_confirmed(connection, queue, [b"short"], pika.BasicProperties(expiration="100"))
    publish_confirmed(connection, queue, [b"forever"])
    wait_message_count(connection, queue, 1)
    assert time.monotonic() - start >= 0.1 - EARLY
    assert [d.body for d in get_all(channel, queue)] == [b"forever"]


@pytest.mark.parametrize(
    ("queue_ttl", "expiration", "effective"),
    [(5000, "100", 0.1), (100, "5000", 0.1)],
    ids=["message-shorter", "queue-shorter"],
)
def test_effective_ttl_is_the_smaller_of_queue_and_message_ttl(
    connection: BlockingConnection,
    channel: BlockingChannel,
    queue_ttl: int,
    expiration: str,
    effective: float,
) -> None:
    """With both an x-message-ttl and an expiration, the message expires after the smaller."""
    queue = _queue(channel, **{"x-message-ttl": queue_ttl})
    start = time.monotonic()
    publish_confirmed(connection, queue, [b"m"], pika.BasicProperties(expiration=expiration))
    gone = _wait_empty(connection, queue, timeout=2.0)
    assert effective - EARLY <= gone - start < 2.0


@pytest.mark.parametrize(
    ("expiration", "why"),
    [
        ("abc", "no_integer"),
        ("", "no_integer"),
        (" 100", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("1.5", '{leftover_string,".5"}'),
        ("100 ", '{leftover_string," "}'),
        ("1e3", '{leftover_string,"e3"}'),
        ("315360000001", "{value_too_large,315360000001}"),
    ],
)
def test_invalid_expiration_closes_the_channel(
    connection: BlockingConnection, channel: BlockingChannel, expiration: str, why: str
) -> None:
    """An expiration that is not a decimal integer 0..315360000000: the publish closes the
    channel with 406 "invalid expiration 'E': WHY" (WHY as Erlang's string:to_integer/1 failure
    or RabbitMQ's range check puts it); nothing is enqueued."""
    queue = _queue(connection.channel())
    with expect_channel_close(channel, 406, "invalid expiration") as close:
        channel.basic_publish("", queue, b"m", pika.BasicProperties(expiration=expiration))
    assert close.text == f"PRECONDITION_FAILED - invalid expiration '{expiration}': {why}"
    assert message_count(connection.channel(), queue) == 0


def test_invalid_expiration_closes_the_channel_even_when_unroutable(
    channel: BlockingChannel, name: str
) -> None:
    """The expiration is checked before routing: an unroutable publish with a bad one is 406
    too, not a silent drop."""
    with expect_channel_close(channel, 406) as close:
        channel.basic_publish("", name, b"m", pika.BasicProperties(expiration="abc"))
    assert close.text == "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"


@pytest.mark.parametrize("expiration", ["60000", "+60000", "060000", "315360000000"])
def test_expiration_property_is_delivered_as_sent(
    connection: BlockingConnection, channel: BlockingChannel, expiration: str
) -> None:
    """A message that has not expired keeps its expiration property byte for byte ("+60000" and
    "060000" are valid and are not normalised), on Basic.Get and on Basic.Deliver."""
    queue = _queue(channel)
    properties = pika.BasicProperties(expiration=expiration)
    publish_confirmed(connection, queue, [b"get", b"deliver"], properties)
    _, got_properties, body = channel.basic_get(queue, auto_ack=True)
    assert (body, got_properties.expiration) == (b"get", expiration)
    collector = Collector()
    channel.basic_consume(queue, collector, auto_ack=True)
    collector.wait_for(connection, 1)
    assert collector.deliveries[0].properties.expiration == expiration


def test_queue_ttl_does_not_add_an_expiration_property(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """x-message-ttl does not show on the message: it is delivered without an expiration."""
    queue = _queue(channel, **{"x-message-ttl": 60000})
    publish_confirmed(connection, queue, [b"m"])
    _, properties, _ = channel.basic_get(queue, auto_ack=True)
    assert properties.expiration is None


@pytest.mark.parametrize("how", ["queue-ttl", "expiration"])
def test_expired_message_is_never_returned_by_basic_get(
    connection: BlockingConnection, channel: BlockingChannel, how: str
) -> None:
    """Basic.Get after the TTL has passed is GetEmpty, whichever way the TTL was set."""
    if how == "queue-ttl":
        queue = _queue(channel, **{"x-message-ttl": 50})
        properties = None
    else:
        queue = _queue(channel)
        properties = pika.BasicProperties(expiration="50")
    publish_confirmed(connection, queue, [b"m"], properties)
    pump(connection, 0.2)
    method, _, _ = channel.basic_get(queue, auto_ack=True)
    assert method is None
    assert message_count(channel, queue) == 0


def test_short_ttl_message_behind_a_long_ttl_one_is_never_delivered(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """RabbitMQ only expires messages at the head of the queue: a short-TTL message behind a
    long-TTL one stays (message_count still counts it) until it reaches the head, where it is
    dropped instead of delivered. Warren expires messages wherever they are, deliberately, so
    this checks only what both brokers guarantee: the long-TTL message is delivered and the
    expired one never is."""
    queue = _queue(channel)
    publish_confirmed(connection, queue, [b"long"], pika.BasicProperties(expiration="60000"))
    publish_confirmed(connection, queue, [b"short"], pika.BasicProperties(expiration="50"))
    pump(connection, 0.2)
    assert [d.body for d in get_all(channel, queue)] == [b"long"]
    assert message_count(channel, queue) == 0


# --- TTL and acknowledgements ---------------------------------------------------------------------


def test_requeued_message_keeps_its_original_expiry(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """The TTL runs from the publish, not from the last enqueue: a message consumed with manual
    ack and nacked back 200 ms into a 300 ms TTL expires at its original deadline (~300 ms),
    not 300 ms after the requeue (~500 ms)."""
    queue = _queue(channel, **{"x-message-ttl": 300})
    start = time.monotonic()
    publish_confirmed(connection, queue, [b"m"])
    collector = Collector()
    tag = channel.basic_consume(queue, collector)
    collector.wait_for(connection, 1)
    channel.basic_cancel(tag)  # so that the requeued message stays in the queue
    wait_until(connection, lambda: time.monotonic() - start >= 0.2, what="200 ms")
    channel.basic_nack(collector.deliveries[0].method.delivery_tag, requeue=True)
    gone = _wait_empty(connection, queue) - start
    assert 0.3 - EARLY <= gone < 0.45


@pytest.mark.parametrize("how", ["reject", "nack", "channel-close"])
def test_message_requeued_after_its_ttl_is_dropped(
    connection: BlockingConnection, channel: BlockingChannel, how: str
) -> None:
    """A message is not expired while it is out for delivery (the ack after the TTL is fine,
    see below), but once requeued past its deadline it is dropped at once: Basic.Get right
    after the requeue is GetEmpty."""
    queue = _queue(channel, **{"x-message-ttl": 100})
    publish_confirmed(connection, queue, [b"m"])
    holder = connection.channel()
    method, _, _ = holder.basic_get(queue, auto_ack=False)
    assert method is not None
    pump(connection, 0.25)
    if how == "reject":
        holder.basic_reject(method.delivery_tag, requeue=True)
    elif how == "nack":
        holder.basic_nack(method.delivery_tag, requeue=True)
    else:
        holder.close()
    if how != "channel-close":
        assert holder.basic_get(queue, auto_ack=True)[0] is None
    assert channel.basic_get(queue, auto_ack=True)[0] is None
    assert message_count(channel, queue) == 0


def test_unacked_message_is_not_expired_while_delivered(
    connection: BlockingConnection, channel: BlockingChannel
) -> None:
    """TTL applies while a message waits in the queue only: one fetched with manual ack can be
    acked after its TTL has passed."""
    queue = _queue(channel, **{"x-message-ttl": 100})
    publish_confirmed(connection, queue, [b"m"])
    method, _, body = channel.basic_get(queue, auto_ack=False)
    assert body == b"m"
    pump(connection, 0.25)
    channel.basic_ack(method.delivery_tag)
    assert message_count(channel, queue) == 0  # a synchronous call: the ack was accepted
    assert channel.is_open


@pytest.mark.parametrize("how", ["queue-ttl", "expiration"])
def test_ttl_zero_delivers_to_a_ready_consumer_and_drops_the_rest(
    connection: BlockingConnection, channel: BlockingChannel, how: str
) -> None:
    """TTL 0 (x-message-ttl 0 or expiration "0"): a message goes to a consumer that can take it
    right away; otherwise it is dropped. With prefetch 1 and three publishes the consumer gets
    the first, the two others expire; without a consumer Basic.Get finds nothing."""
    arguments = {"x-message-ttl": 0} if how == "queue-ttl" else {}
    properties = pika.BasicProperties(expiration="0") if how == "expiration" else None
    queue = _queue(channel, **arguments)
    publish_confirmed(connection, queue, [b"nobody"], properties)
    assert channel.basic_get(queue, auto_ack=True)[0] is None

    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=1)
    collector = Collector()
    consumer.basic_consume(queue, collector)
    publish_confirmed(connection, queue, [b"one", b"two", b"three"], properties)
    collector.wait_for(connection, 1)
    assert message_count(channel, queue) == 0
    consumer.basic_ack(collector.deliveries[0].method.delivery_tag)
    pump(connection, 0.15)
    assert collector.bodies == [b"one"]


# --- queue expiry (x-expires) ---------------------------------------------------------------------


def test_unused_queue_expires(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """x-expires: a queue without consumers, gets or redeclares for that long is deleted (after,
    never before, the delay); publishing to it does not count as use. Afterwards a passive
    declare is 404."""
    start = time.monotonic()
    channel.queue_declare(cleanup.queue(name), arguments={"x-expires": 200})
    gone = _wait_queue_gone(connection, name)
    assert gone - start >= 0.2 - EARLY
    with expect_channel_close(channel, 404, f"no queue '{name}' in vhost '/'"):
        channel.queue_declare(name, passive=True)


def test_queue_with_a_consumer_does_not_expire(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A queue with a consumer is in use and does not expire; the delay starts again when the
    last consumer goes."""
    consumer = connection.channel()
    consumer.queue_declare(cleanup.queue(name), arguments={"x-expires": 200})
    tag = consumer.basic_consume(name, Collector(auto_ack_after=True))
    pump(connection, 0.6)
    assert _still_exists(connection, name)
    cancelled = time.monotonic()
    consumer.basic_cancel(tag)
    assert _wait_queue_gone(connection, name) - cancelled >= 0.2 - EARLY


@pytest.mark.parametrize("use", ["basic-get", "redeclare", "passive-declare"])
def test_queue_use_restarts_the_expiry_timer(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    use: str,
) -> None:
    """Basic.Get (even one that finds nothing), a redeclare and (surprisingly) a passive declare
    each count as a use: touched every 150 ms for 800 ms, a queue with x-expires 400 still
    exists; it expires 400 ms after the last touch."""
    arguments = {"x-expires": 400}
    channel.queue_declare(cleanup.queue(name), arguments=arguments)
    start = time.monotonic()
    while time.monotonic() - start < 0.8:
        if use == "basic-get":
            channel.basic_get(name, auto_ack=True)
        elif use == "redeclare":
            channel.queue_declare(name, arguments=arguments)
        else:
            channel.queue_declare(name, passive=True)
        last = time.monotonic()
        pump(connection, 0.15)
    assert _still_exists(connection, name)
    assert _wait_queue_gone(connection, name) - last >= 0.4 - EARLY


def test_purge_does_not_restart_the_expiry_timer(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Queue.Purge is not a use: a queue purged every 50 ms still expires on time (the purge after
    that is 404)."""
    start = time.monotonic()
    channel.queue_declare(cleanup.queue(name), arguments={"x-expires": 300})
    with expect_channel_close(channel, 404, f"no queue '{name}' in vhost '/'"):
        while time.monotonic() - start < 3.0:
            channel.queue_purge(name)
            pump(connection, 0.05)
    assert time.monotonic() - start >= 0.3 - EARLY


def test_expired_queue_messages_are_not_dead_lettered(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """When a queue expires its messages go with it: they are not dead-lettered, even with
    x-dead-letter-exchange set (whereas a message that expires by TTL would be)."""
    dead = _queue(channel)
    channel.queue_declare(
        cleanup.queue(name),
        arguments={
            "x-expires": 200,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    publish_confirmed(connection, name, [b"a", b"b", b"c"])
    _wait_queue_gone(connection, name)
    assert not queue_exists(connection, name)
    pump(connection, 0.2)
    assert message_count(channel, dead) == 0


@pytest.mark.warren_only
def test_an_expired_message_behind_a_live_one_is_removed_where_it_is(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Warren expires a message wherever it sits in its queue; RabbitMQ leaves it (counted, in
    memory) until it reaches the head (rabbitmq-server issues 2074, 2007)."""
    queue = cleanup.queue(name)
    channel.queue_declare(queue)
    publish_confirmed(connection, queue, [b"long"], pika.BasicProperties(expiration="60000"))
    publish_confirmed(connection, queue, [b"short"], pika.BasicProperties(expiration="50"))
    wait_message_count(connection, queue, 1)
    assert [d.body for d in get_all(channel, queue)] == [b"long"]
