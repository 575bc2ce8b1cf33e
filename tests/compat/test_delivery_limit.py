"""Quorum queue delivery counting (`x-delivery-count`) and `x-delivery-limit` as RabbitMQ 3.10
does them.

A quorum queue counts how often each message came back: every return of a delivered message
adds one - Basic.Nack/Reject with requeue=true, Basic.Recover, and a channel or connection that
closes (or a consumer cancelled and then closed) while holding it unacked. Reject/Nack with
requeue=false is not a return: it dead-letters as 'rejected'.

The count reaches the client as an `x-delivery-count` header of type 'l' (signed 64-bit):

- A consumer's delivery carries it only once the message has been returned at least once; the
  first delivery to a consumer is the message exactly as published (no header added, the
  client's own headers untouched in their wire order, even a client-supplied x-delivery-count).
- Basic.Get always carries it, 0 on the first delivery.
- Adding it re-sorts the top-level headers table by key (byte order, 'Mid' before 'aaa'); nested
  tables are left as they are; a client's own x-delivery-count is overwritten.
- redelivered is true exactly when the count is above 0.

With `x-delivery-limit` N a return that makes the count exceed N removes the message: after
N + 1 deliveries it is dropped, or dead-lettered with reason 'delivery_limit' when the queue has a
dead-letter exchange. Limit 0 (and any negative limit) removes it on its first return. The
dead-lettered copy is the message as published (no x-delivery-count added). RabbitMQ does not
validate the argument's value at all: any type is accepted, and a value that is not an integer
means no limit.

Clients read the header with type-specific decoders, so some tests read the content header with
the type-preserving decoder of test_dead_lettering (pika drops the type tags).
"""

from __future__ import annotations

import decimal
import struct
from typing import Any

import pika
import pytest
from pamqp import commands
from pamqp.body import ContentBody
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    Collector,
    Delivery,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    message_count,
    publish_confirmed,
    pump,
    wait_message_count,
    wait_until,
)
from tests.compat.rawamqp import RawAMQP, raw_connection
from tests.compat.test_dead_lettering import (
    FIRST_DEATH_ORDER,
    RawMessage,
    _decode_properties,
    get_raw,
    plain,
    raw_get,
    tags,
)

pytestmark = pytest.mark.timeout(30)

QUORUM = {"x-queue-type": "quorum"}


# --- helpers --------------------------------------------------------------------------------------


def _quorum(channel: BlockingChannel, cleanup: Cleanup, name: str, **arguments: Any) -> str:
    """Declare a (durable) quorum queue with `arguments`."""
    channel.queue_declare(cleanup.queue(name), durable=True, arguments={**QUORUM, **arguments})
    return name


def _quorum_with_dlx(
    channel: BlockingChannel, cleanup: Cleanup, name: str, **arguments: Any
) -> tuple[str, str]:
    """A quorum queue that dead-letters via the default exchange into a new classic queue."""
    dead = cleanup.queue(f"{name}-dead")
    channel.queue_declare(dead)
    dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    return _quorum(channel, cleanup, f"{name}-src", **dlx, **arguments), dead


def _death(properties: pika.BasicProperties) -> tuple[str, str, int]:
    """(reason, queue, count) of the only x-death entry."""
    [death] = properties.headers["x-death"]
    return death["reason"], death["queue"], death["count"]


def read_raw_delivery(client: RawAMQP, channel: int = 1) -> RawMessage:
    """The next Basic.Deliver on a raw connection, keeping the content header's type tags."""
    _, method = client.read_frame()
    assert isinstance(method, commands.Basic.Deliver), f"expected Deliver, got {method.name}"
    frame_type, frame_channel, size = struct.unpack(">BHI", client.read_bytes(7))
    assert (frame_type, frame_channel) == (2, channel), "expected the delivery's content header"
    payload = client.read_bytes(size + 1)[:-1]
    (body_size,) = struct.unpack_from(">Q", payload, 4)
    body = b""
    while len(body) < body_size:
        _, part = client.read_frame()
        assert isinstance(part, ContentBody), part.name
        body += part.value
    return RawMessage(
        method.delivery_tag,
        method.redelivered,
        method.exchange,
        method.routing_key,
        _decode_properties(payload),
        body,
    )


RETURNS = [
    "nack",
    "reject",
    "recover",
    "channel-close",
    "connection-close",
    "cancel-then-close",
    "cancel-then-nack",
]


def _deliver_and_return(
    connection: BlockingConnection,
    params: pika.URLParameters,
    queue: str,
    how: str,
    rounds: int,
) -> list[Delivery]:
    """Have the (only) message of `queue` delivered to a manual-ack consumer and returned by
    `how`, `rounds` times; the deliveries seen, in order."""
    collector = Collector()
    if how in ("nack", "reject", "recover"):
        # one consumer that gets the message back after each return
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue, collector)
        for round_ in range(rounds):
            collector.wait_for(connection, round_ + 1)
            tag = collector.deliveries[-1].method.delivery_tag
            if how == "nack":
                channel.basic_nack(tag, requeue=True)
            elif how == "reject":
                channel.basic_reject(tag, requeue=True)
            else:
                channel.basic_recover(requeue=True)
        return collector.deliveries
    for round_ in range(rounds):
        # a fresh consumer for every delivery
        conn = pika.BlockingConnection(params) if how == "connection-close" else connection
        channel = conn.channel()
        tag = channel.basic_consume(queue, collector)
        collector.wait_for(conn, round_ + 1)
        if how == "connection-close":
            conn.close()
            continue
        if how.startswith("cancel"):
            channel.basic_cancel(tag)
        if how == "cancel-then-nack":
            channel.basic_nack(collector.deliveries[-1].method.delivery_tag, requeue=True)
        channel.close()
    return collector.deliveries


# --- x-delivery-count -----------------------------------------------------------------------------


def test_first_consumer_delivery_has_no_delivery_count(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """The first delivery of a message to a consumer carries no x-delivery-count and is not
    redelivered: a message published without headers still has none, and the headers of one
    that had some are exactly as published (same order, not sorted)."""
    queue = _quorum(channel, cleanup, name)
    publish_confirmed(connection, queue, [b"bare"])
    headers = {"zzz": 1, "aaa": "x", "Mid": True}
    publish_confirmed(connection, queue, [b"with-headers"], pika.BasicProperties(headers=headers))
    collector = Collector(auto_ack_after=True)
    channel.basic_consume(queue, collector)
    collector.wait_for(connection, 2)
    bare, with_headers = collector.deliveries
    assert (bare.body, with_headers.body) == (b"bare", b"with-headers")
    assert not bare.method.redelivered
    assert not with_headers.method.redelivered
    assert bare.properties.headers is None
    assert with_headers.properties.headers == headers
    assert list(with_headers.properties.headers) == ["zzz", "aaa", "Mid"]


def test_basic_get_always_carries_delivery_count(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """Basic.Get adds x-delivery-count ('l') from the first delivery on, 0 then (also with
    no_ack), and redelivered is true once it is above 0. A client-supplied x-delivery-count is
    overwritten with the queue's count (now 'l') and the headers are re-sorted by key."""
    queue = _quorum(channel, cleanup, name)
    publish_confirmed(connection, queue, [b"bare"])
    own = pika.BasicProperties(headers={"x-delivery-count": 7, "b": 1})
    publish_confirmed(connection, queue, [b"own"], own)
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        first = get_raw(client, queue, no_ack=False)
        assert (first.body, first.redelivered) == (b"bare", False)
        assert first.headers == [("x-delivery-count", ("l", 0))]

        second = get_raw(client, queue, no_ack=True)
        assert (second.body, second.redelivered) == (b"own", False)
        assert second.headers == [("b", ("I", 1)), ("x-delivery-count", ("l", 0))]

        for count in (1, 2):
            client.send(commands.Basic.Nack(delivery_tag=first.delivery_tag, requeue=True), 1)
            wait_message_count(connection, queue, 1)
            first = get_raw(client, queue, no_ack=False)
            assert (first.body, first.redelivered) == (b"bare", True)
            assert first.headers == [("x-delivery-count", ("l", count))]


@pytest.mark.parametrize("how", RETURNS)
def test_every_return_counts(
    connection: BlockingConnection,
    channel: BlockingChannel,
    params: pika.URLParameters,
    name: str,
    cleanup: Cleanup,
    how: str,
) -> None:
    """Each way a delivered message goes back to the queue adds one to its delivery count:
    Nack/Reject with requeue, Basic.Recover, closing the channel or the connection that holds it,
    and a consumer cancelled with it unacked and then closed or nacked. The next delivery is
    redelivered with x-delivery-count 1, 2, ...; with x-delivery-limit 2 the third return
    dead-letters it as 'delivery_limit'."""
    source, dead = _quorum_with_dlx(channel, cleanup, name, **{"x-delivery-limit": 2})
    publish_confirmed(connection, source, [b"boomerang"])
    deliveries = _deliver_and_return(connection, params, source, how, rounds=3)
    wait_message_count(connection, dead, 1)
    pump(connection, 0.1)
    assert [d.body for d in deliveries] == [b"boomerang"] * 3
    assert [d.method.redelivered for d in deliveries] == [False, True, True]
    assert [d.properties.headers for d in deliveries] == [
        None,
        {"x-delivery-count": 1},
        {"x-delivery-count": 2},
    ]
    assert message_count(channel, source) == 0
    _, properties, body = channel.basic_get(dead, auto_ack=True)
    assert body == b"boomerang"
    assert _death(properties) == ("delivery_limit", source, 1)


def test_delivery_count_wire_format_and_position(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """On a redelivery to a consumer x-delivery-count is a 'l' (signed 64-bit) and the whole
    top-level headers table is re-sorted by key in byte order ('Mid' < 'aaa' < 'tbl' <
    'x-delivery-count' < 'zzz'); the client's values keep their types and a nested table keeps
    its own order. A client-supplied x-delivery-count is left alone on the first delivery (still
    its 'I' 7, first in the table) and replaced by the queue's count afterwards."""
    queue = _quorum(channel, cleanup, name)
    headers = {"zzz": 1, "aaa": "x", "Mid": True, "tbl": {"b": 1, "a": 2}}
    publish_confirmed(connection, queue, [b"m1"], pika.BasicProperties(headers=headers))
    own = pika.BasicProperties(headers={"x-delivery-count": 7, "b": 1})
    publish_confirmed(connection, queue, [b"m2"], own)
    nested = ("F", [("b", ("I", 1)), ("a", ("I", 2))])
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.Consume(queue=queue, consumer_tag="wire"), 1)
        client.expect(commands.Basic.ConsumeOk, channel=1)
        m1, m2 = read_raw_delivery(client), read_raw_delivery(client)
        assert (m1.body, m2.body) == (b"m1", b"m2")
        assert not m1.redelivered
        assert m1.headers == [
            ("zzz", ("I", 1)),
            ("aaa", ("S", b"x")),
            ("Mid", ("t", True)),
            ("tbl", nested),
        ]
        assert m2.headers == [("x-delivery-count", ("I", 7)), ("b", ("I", 1))]

        client.send(commands.Basic.Nack(delivery_tag=m2.delivery_tag, multiple=True), 1)
        again = sorted((read_raw_delivery(client) for _ in range(2)), key=lambda m: m.body)
        assert [m.body for m in again] == [b"m1", b"m2"]
        assert all(m.redelivered for m in again)
        assert again[0].headers == [
            ("Mid", ("t", True)),
            ("aaa", ("S", b"x")),
            ("tbl", nested),
            ("x-delivery-count", ("l", 1)),
            ("zzz", ("I", 1)),
        ]
        assert again[1].headers == [("b", ("I", 1)), ("x-delivery-count", ("l", 1))]


# --- x-delivery-limit -----------------------------------------------------------------------------


@pytest.mark.parametrize("dlx", [False, True], ids=["no-dlx", "dlx"])
@pytest.mark.parametrize("limit", [0, 1, 2])
def test_delivery_limit_boundary(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    limit: int,
    dlx: bool,
) -> None:
    """x-delivery-limit N: the message is delivered N + 1 times (counts 0..N) and the return
    that would make its count N + 1 removes it instead - dropped without a dead-letter exchange,
    dead-lettered with reason 'delivery_limit' (x-death count 1) with one."""
    arguments = {"x-delivery-limit": limit}
    if dlx:
        source, dead = _quorum_with_dlx(channel, cleanup, name, **arguments)
    else:
        source = _quorum(channel, cleanup, name, **arguments)
    publish_confirmed(connection, source, [b"poison"])
    for count in range(limit + 1):
        wait_message_count(connection, source, 1)
        method, properties, body = channel.basic_get(source)
        assert body == b"poison"
        assert properties.headers == {"x-delivery-count": count}
        assert method.redelivered == (count > 0)
        channel.basic_nack(method.delivery_tag, requeue=True)
    if dlx:
        wait_message_count(connection, dead, 1)
        _, properties, _ = channel.basic_get(dead, auto_ack=True)
        assert _death(properties) == ("delivery_limit", source, 1)
        assert properties.headers["x-first-death-reason"] == "delivery_limit"
    pump(connection, 0.3)
    assert message_count(channel, source) == 0
    assert channel.basic_get(source) == (None, None, None)


def test_delivery_limit_dead_letter_wire_format(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """The copy dead-lettered for 'delivery_limit' has the usual first-death x-death entry
    (count 'l' 1, reason, queue, time, exchange, routing-keys, in that order) and x-first-death-*
    headers, the top-level table sorted by key. It is the message as published: no
    x-delivery-count is added (a client-supplied one is kept, with its own type)."""
    source, dead = _quorum_with_dlx(channel, cleanup, name, **{"x-delivery-limit": 0})
    publish_confirmed(connection, source, [b"plain"], pika.BasicProperties(headers={"h": 1}))
    own = pika.BasicProperties(headers={"x-delivery-count": 9, "h": 1})
    publish_confirmed(connection, source, [b"own"], own)
    for _ in range(2):
        method, _, _ = channel.basic_get(source)
        channel.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, dead, 2)
    plain_copy, own_copy = raw_get(amqp_url, dead), raw_get(amqp_url, dead)
    assert (plain_copy.body, own_copy.body) == (b"plain", b"own")
    assert tags(plain_copy.headers) == [
        ("h", "I"),
        ("x-death", "A"),
        ("x-first-death-exchange", "S"),
        ("x-first-death-queue", "S"),
        ("x-first-death-reason", "S"),
    ]
    assert tags(own_copy.headers) == [
        ("h", "I"),
        ("x-death", "A"),
        ("x-delivery-count", "I"),
        ("x-first-death-exchange", "S"),
        ("x-first-death-queue", "S"),
        ("x-first-death-reason", "S"),
    ]
    assert own_copy.header("x-delivery-count") == ("I", 9)
    for copy in (plain_copy, own_copy):
        assert not copy.redelivered
        assert (copy.exchange, copy.routing_key) == ("", dead)
        [entry] = copy.x_death
        assert tags(entry) == FIRST_DEATH_ORDER
        assert {key: plain(value) for key, value in entry if key != "time"} == {
            "count": 1,
            "reason": "delivery_limit",
            "queue": source,
            "exchange": "",
            "routing-keys": [source],
        }
        assert plain(copy.header("x-first-death-reason")) == "delivery_limit"
        assert plain(copy.header("x-first-death-queue")) == source
        assert plain(copy.header("x-first-death-exchange")) == ""


def test_reject_without_requeue_is_rejected_not_delivery_limit(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Reject/Nack with requeue=false is not a return: a message is dead-lettered with reason
    'rejected' - on its first delivery, and also after earlier returns when its count is at the
    limit (so that a requeue would have removed it as 'delivery_limit') - and the copy has no
    x-delivery-count."""
    source, dead = _quorum_with_dlx(channel, cleanup, name, **{"x-delivery-limit": 1})
    publish_confirmed(connection, source, [b"first", b"second"])
    method, _, body = channel.basic_get(source)
    assert body == b"first"
    channel.basic_reject(method.delivery_tag, requeue=False)
    wait_message_count(connection, dead, 1)

    method, _, body = channel.basic_get(source)
    assert body == b"second"
    channel.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, source, 1)
    method, properties, body = channel.basic_get(source)
    assert properties.headers == {"x-delivery-count": 1}
    channel.basic_nack(method.delivery_tag, requeue=False)
    wait_message_count(connection, dead, 2)

    for expected in (b"first", b"second"):
        _, properties, body = channel.basic_get(dead, auto_ack=True)
        assert body == expected
        assert _death(properties) == ("rejected", source, 1)
        assert "x-delivery-count" not in properties.headers
    assert message_count(channel, source) == 0


def test_limit_removes_only_the_message_that_exceeds_it(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """The count is per message: with x-delivery-limit 1 a consumer that nacks everything gets
    each message twice and then the queue is empty, while a message acked on its first delivery
    never counts."""
    queue = _quorum(channel, cleanup, name, **{"x-delivery-limit": 1})
    publish_confirmed(connection, queue, [b"a", b"keep", b"b"])
    seen: list[tuple[bytes, int | None]] = []

    def on_message(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        seen.append((body, (properties.headers or {}).get("x-delivery-count")))
        if body == b"keep":
            ch.basic_ack(method.delivery_tag)
        else:
            ch.basic_nack(method.delivery_tag, requeue=True)

    channel.basic_consume(queue, on_message)
    wait_until(connection, lambda: len(seen) >= 5, what="5 deliveries")
    pump(connection, 0.3)
    assert sorted(seen, key=lambda item: (item[0], item[1] or 0)) == [
        (b"a", None),
        (b"a", 1),
        (b"b", None),
        (b"b", 1),
        (b"keep", None),
    ]
    assert message_count(channel, queue) == 0


# --- the argument ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [-1, 2**40, "5", "abc", True, decimal.Decimal("1.5"), None, {"a": 1}, [1]],
    ids=[
        "negative",
        "long",
        "string-number",
        "string",
        "bool",
        "decimal",
        "void",
        "table",
        "array",
    ],
)
def test_delivery_limit_value_is_not_validated(
    channel: BlockingChannel, name: str, cleanup: Cleanup, value: Any
) -> None:
    """A quorum queue accepts any x-delivery-limit, whatever its type or sign (classic queues
    refuse the argument altogether, see test_queue_arguments); an identical redeclare is fine."""
    arguments = {"x-delivery-limit": value}
    ok = channel.queue_declare(cleanup.queue(name), durable=True, arguments={**QUORUM, **arguments})
    assert ok.method.queue == name
    channel.queue_declare(name, durable=True, arguments={**QUORUM, **arguments})


def test_negative_delivery_limit_removes_on_first_return(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A negative x-delivery-limit acts like 0: the first return dead-letters the message."""
    source, dead = _quorum_with_dlx(channel, cleanup, name, **{"x-delivery-limit": -5})
    publish_confirmed(connection, source, [b"once"])
    method, _, _ = channel.basic_get(source)
    channel.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, dead, 1)
    _, properties, _ = channel.basic_get(dead, auto_ack=True)
    assert _death(properties) == ("delivery_limit", source, 1)
    assert message_count(channel, source) == 0


@pytest.mark.parametrize("value", ["1", True], ids=["string", "bool"])
def test_non_integer_delivery_limit_means_no_limit(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    value: Any,
) -> None:
    """An x-delivery-limit that is not an integer (even the string "1") limits nothing: the
    message keeps coming back, its count going past what the number would allow."""
    queue = _quorum(channel, cleanup, name, **{"x-delivery-limit": value})
    publish_confirmed(connection, queue, [b"forever"])
    for count in range(4):
        wait_message_count(connection, queue, 1)
        method, properties, _ = channel.basic_get(queue)
        assert properties.headers == {"x-delivery-count": count}
        channel.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, queue, 1)


@pytest.mark.parametrize(
    ("second", "mention"),
    [
        ({"x-delivery-limit": 4}, "received '4' but current is '3'"),
        ({}, "received none but current is the value '3' of type 'signedint'"),
    ],
    ids=["other-value", "missing"],
)
def test_redeclare_with_other_delivery_limit_is_406(
    channel: BlockingChannel, name: str, cleanup: Cleanup, second: dict[str, Any], mention: str
) -> None:
    """x-delivery-limit takes part in the equivalence check like the other arguments."""
    _quorum(channel, cleanup, name, **{"x-delivery-limit": 3})
    expected = f"inequivalent arg 'x-delivery-limit' for queue '{name}' in vhost '/'"
    with expect_channel_close(channel, 406, expected, mention):
        channel.queue_declare(name, durable=True, arguments={**QUORUM, **second})
