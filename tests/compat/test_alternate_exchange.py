"""Alternate exchanges (the `alternate-exchange` exchange argument) as RabbitMQ 3.10 routes them.

What RabbitMQ does, in short: when an exchange's own bindings (to queues *or* exchanges) match
nothing, the message is routed again through its alternate exchange, with the original routing key
and headers; alternate exchanges chain, cycles terminate, and an alternate exchange that does not
exist (looked up at publish time) routes nothing. A mandatory publish is returned (312 NO_ROUTE,
naming the exchange published to) only when the whole chain reached no queue. Routed-or-not is
decided by a mandatory publish on a confirm channel (`routed`); the delivered message names the
exchange it was published to, not the alternate one.
"""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    cleanup_fixture,  # noqa: F401  (fixture)
    exchange_exists,
    expect_channel_close,
    get_all,
    pump,
    routed,
    wait_message_count,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


def _exchange(
    channel: BlockingChannel,
    cleanup: Cleanup,
    name: str,
    kind: str,
    ae: str | None = None,
    **flags: Any,
) -> str:
    arguments = None if ae is None else {"alternate-exchange": ae}
    channel.exchange_declare(cleanup.exchange(name), kind, arguments=arguments, **flags)
    return name


def _queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True).method.queue


def _received(channel: BlockingChannel, queue: str) -> list[tuple[bytes, str, str]]:
    """(body, exchange, routing key) of every message in `queue`."""
    return [(d.body, d.method.exchange, d.method.routing_key) for d in get_all(channel, queue)]


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_unroutable_message_goes_to_the_alternate_exchange(
    channel: BlockingChannel, name: str, cleanup: Cleanup, kind: str
) -> None:
    """Whatever the exchange type, a message its bindings do not match goes through the alternate
    exchange (and a mandatory publish is not returned); a matching one does not also go there. The
    delivery names the exchange published to and the original routing key."""
    ae = _exchange(channel, cleanup, f"{name}-ae", "fanout")
    ae_queue = _queue(channel)
    channel.queue_bind(ae_queue, ae)
    main = _exchange(channel, cleanup, name, kind, ae=ae)
    main_queue = _queue(channel)
    if kind == "headers":
        channel.queue_bind(main_queue, main, "", arguments={"x-match": "all", "h": "v"})
    elif kind != "fanout":  # a fanout exchange without bindings routes nothing
        channel.queue_bind(main_queue, main, "key")
    channel.confirm_delivery()
    assert routed(channel, main, "key", b"match", headers={"h": "v"}) is True
    assert routed(channel, main, "other", b"miss", headers={"h": "w"}) is True
    if kind == "fanout":
        assert _received(channel, main_queue) == []
        assert _received(channel, ae_queue) == [(b"match", main, "key"), (b"miss", main, "other")]
    else:
        assert _received(channel, main_queue) == [(b"match", main, "key")]
        assert _received(channel, ae_queue) == [(b"miss", main, "other")]


def test_alternate_exchange_routes_with_the_original_key_and_headers(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """The alternate exchange applies its own type and bindings to the original routing key (a
    direct AE) and headers (a headers AE); what it does not match is unroutable."""
    direct_ae = _exchange(channel, cleanup, f"{name}-dae", "direct")
    headers_ae = _exchange(channel, cleanup, f"{name}-hae", "headers")
    q_direct, q_headers = _queue(channel), _queue(channel)
    channel.queue_bind(q_direct, direct_ae, "wanted")
    channel.queue_bind(q_headers, headers_ae, "", arguments={"x-match": "any", "a": 1, "b": 2})
    x_direct = _exchange(channel, cleanup, f"{name}-d", "topic", ae=direct_ae)
    x_headers = _exchange(channel, cleanup, f"{name}-h", "direct", ae=headers_ae)
    channel.confirm_delivery()
    assert routed(channel, x_direct, "wanted", b"d1")
    assert not routed(channel, x_direct, "unwanted", b"d2")
    assert routed(channel, x_headers, "k", b"h1", headers={"b": 2})
    assert not routed(channel, x_headers, "k", b"h2", headers={"a": 2})
    assert _received(channel, q_direct) == [(b"d1", x_direct, "wanted")]
    assert _received(channel, q_headers) == [(b"h1", x_headers, "k")]


def test_alternate_exchanges_chain(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """x1 -> AE x2 -> AE x3: an alternate exchange's own alternate is used when it routes nothing
    either; one that does route stops the chain there."""
    x3 = _exchange(channel, cleanup, f"{name}-3", "direct")
    x2 = _exchange(channel, cleanup, f"{name}-2", "topic", ae=x3)
    x1 = _exchange(channel, cleanup, f"{name}-1", "direct", ae=x2)
    q2, q3 = _queue(channel), _queue(channel)
    channel.queue_bind(q2, x2, "two.#")
    channel.queue_bind(q3, x3, "three")
    channel.queue_bind(q3, x3, "two.x")
    channel.confirm_delivery()
    assert routed(channel, x1, "three", b"to-x3")
    assert routed(channel, x1, "two.x", b"to-x2")
    assert not routed(channel, x1, "none", b"nowhere")
    assert _received(channel, q2) == [(b"to-x2", x1, "two.x")]
    assert _received(channel, q3) == [(b"to-x3", x1, "three")]


def test_missing_alternate_exchange_drops_or_returns(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """An alternate-exchange naming no exchange is accepted at declare time and routes nothing: a
    plain publish is dropped silently, a mandatory one comes back as Basic.Return 312 NO_ROUTE
    naming the exchange published to."""
    missing = f"{name}-missing"
    x = _exchange(channel, cleanup, name, "direct", ae=missing)
    assert not exchange_exists(connection, missing)
    returns: list[tuple[pika.spec.Basic.Return, bytes]] = []
    channel.add_on_return_callback(lambda _ch, method, _props, body: returns.append((method, body)))
    channel.basic_publish(x, "k", b"dropped")
    channel.basic_publish(x, "k", b"returned", mandatory=True)
    wait_until(connection, lambda: bool(returns), what="Basic.Return")
    pump(connection, 0.1)
    assert len(returns) == 1
    method, body = returns[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key, body) == (
        312,
        "NO_ROUTE",
        x,
        "k",
        b"returned",
    )
    channel.confirm_delivery()
    assert not routed(channel, x, "k")


def test_mandatory_is_not_returned_when_the_alternate_exchange_routes(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Mandatory only asks that some queue got the message: one routed by the alternate exchange
    is not returned (no confirm channel here: nothing comes back, the message is queued)."""
    ae = _exchange(channel, cleanup, f"{name}-ae", "fanout")
    queue = _queue(channel)
    channel.queue_bind(queue, ae)
    x = _exchange(channel, cleanup, name, "direct", ae=ae)
    returns: list[bytes] = []
    channel.add_on_return_callback(lambda _ch, _method, _props, body: returns.append(body))
    channel.basic_publish(x, "k", b"kept", mandatory=True)
    wait_message_count(connection, queue, 1)
    pump(connection, 0.1)
    assert returns == []
    assert _received(channel, queue) == [(b"kept", x, "k")]


def test_mandatory_is_returned_when_the_alternate_exchange_routes_nowhere(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """When the alternate exchange matches nothing either, a mandatory publish is returned: 312
    NO_ROUTE with the exchange published to (not the AE), routing key, properties and body."""
    ae = _exchange(channel, cleanup, f"{name}-ae", "direct")
    x = _exchange(channel, cleanup, name, "topic", ae=ae)
    returns: list[tuple[pika.spec.Basic.Return, pika.BasicProperties, bytes]] = []
    channel.add_on_return_callback(
        lambda _ch, method, props, body: returns.append((method, props, body))
    )
    channel.basic_publish(x, "rk", b"back", pika.BasicProperties(message_id="id-1"), mandatory=True)
    wait_until(connection, lambda: bool(returns), what="Basic.Return")
    method, properties, body = returns[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == (
        312,
        "NO_ROUTE",
        x,
        "rk",
    )
    assert (properties.message_id, body) == ("id-1", b"back")


def test_alternate_exchange_cycle_terminates(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """a <-> b as each other's alternate exchange, or an exchange that is its own: routing stops
    (the message is unroutable); once b has a binding the cycle delivers one copy."""
    a, b = f"{name}-a", f"{name}-b"
    _exchange(channel, cleanup, a, "direct", ae=b)
    _exchange(channel, cleanup, b, "direct", ae=a)
    own = _exchange(channel, cleanup, f"{name}-self", "direct", ae=f"{name}-self")
    channel.confirm_delivery()
    assert not routed(channel, a, "k", b"cycle")
    assert not routed(channel, own, "k", b"self")
    queue = _queue(channel)
    channel.queue_bind(queue, b, "k")
    assert routed(channel, a, "k", b"once")
    assert not routed(channel, b, "other", b"via-a")
    assert _received(channel, queue) == [(b"once", a, "k")]


def test_alternate_exchange_is_only_used_when_no_binding_matches(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """An exchange whose binding to another exchange matches has routed (even if that exchange
    then reaches no queue): its alternate exchange is not used. The destination exchange's own
    alternate exchange is."""
    ae = _exchange(channel, cleanup, f"{name}-ae", "fanout")
    ae_queue = _queue(channel)
    channel.queue_bind(ae_queue, ae)
    empty_dst = _exchange(channel, cleanup, f"{name}-dst", "direct")
    src = _exchange(channel, cleanup, f"{name}-src", "fanout", ae=ae)
    channel.exchange_bind(destination=empty_dst, source=src)
    dst_ae = _exchange(channel, cleanup, f"{name}-dstae", "fanout")
    dst_ae_queue = _queue(channel)
    channel.queue_bind(dst_ae_queue, dst_ae)
    dst = _exchange(channel, cleanup, f"{name}-dst2", "direct", ae=dst_ae)
    src2 = _exchange(channel, cleanup, f"{name}-src2", "fanout")
    channel.exchange_bind(destination=dst, source=src2)
    channel.confirm_delivery()
    assert not routed(channel, src, "k", b"lost")
    assert routed(channel, src2, "k", b"dst-ae")
    assert _received(channel, ae_queue) == []
    assert _received(channel, dst_ae_queue) == [(b"dst-ae", src2, "k")]


def test_internal_exchange_works_as_alternate_exchange(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """An internal exchange (no direct publishing) can be an alternate exchange."""
    ae = _exchange(channel, cleanup, f"{name}-ae", "fanout", internal=True)
    queue = _queue(channel)
    channel.queue_bind(queue, ae)
    x = _exchange(channel, cleanup, name, "direct", ae=ae)
    channel.confirm_delivery()
    assert routed(channel, x, "k", b"internal")
    assert _received(channel, queue) == [(b"internal", x, "k")]


def test_alternate_exchange_is_looked_up_at_publish_time(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """The alternate exchange is found by name on each publish: unroutable before it is declared,
    used once it exists, unroutable again after it is deleted."""
    ae = f"{name}-ae"
    x = _exchange(channel, cleanup, name, "direct", ae=ae)
    channel.confirm_delivery()
    assert not routed(channel, x, "k", b"before")
    _exchange(channel, cleanup, ae, "fanout")
    queue = _queue(channel)
    channel.queue_bind(queue, ae)
    assert routed(channel, x, "k", b"while")
    channel.exchange_delete(ae)
    assert not routed(channel, x, "k", b"after")
    assert _received(channel, queue) == [(b"while", x, "k")]


def test_empty_alternate_exchange_name_is_accepted_but_routes_nothing(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """alternate-exchange '' is accepted, but it does not mean the default exchange: a message
    whose routing key names a queue is still unroutable."""
    x = _exchange(channel, cleanup, name, "direct", ae="")
    queue = _queue(channel)
    channel.confirm_delivery()
    assert not routed(channel, x, queue, b"not-default")
    assert _received(channel, queue) == []


@pytest.mark.parametrize(("value", "kind"), [(5, "signedint"), (True, "bool")])
def test_non_string_alternate_exchange_is_406(
    connection: BlockingConnection, channel: BlockingChannel, name: str, value: object, kind: str
) -> None:
    """alternate-exchange must be a string: 406 "invalid type 'TYPE' for arg 'alternate-exchange'
    in exchange 'X' in vhost '/'"; the exchange is not created."""
    expected = (
        f"invalid type '{kind}' for arg 'alternate-exchange' in exchange '{name}' in vhost '/'"
    )
    with expect_channel_close(channel, 406, expected):
        channel.exchange_declare(name, "direct", arguments={"alternate-exchange": value})
    assert not exchange_exists(connection, name)
