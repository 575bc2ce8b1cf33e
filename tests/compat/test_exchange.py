"""Exchange.Declare / Delete / Bind / Unbind as RabbitMQ 3.10 does them."""

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
    expect_connection_close,
    get_all,
    routed,
)

pytestmark = pytest.mark.timeout(30)

BUILTIN = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}


def _queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True).method.queue


def test_passive_declare_of_missing_exchange_is_404(channel: BlockingChannel, name: str) -> None:
    """Passive declare of an unknown exchange: channel closed 404 "no exchange 'X' in vhost '/'"."""
    with expect_channel_close(channel, 404, f"no exchange '{name}'", "vhost '/'"):
        channel.exchange_declare(name, passive=True)


def test_passive_declare_ignores_type_and_flags(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A passive declare only checks existence: a different type or durability is not compared."""
    channel.exchange_declare(cleanup.exchange(name), "direct")
    channel.exchange_declare(name, "fanout", passive=True, durable=True)
    assert channel.is_open


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_each_type(
    channel: BlockingChannel, connection: BlockingConnection, name: str, cleanup: Cleanup, kind: str
) -> None:
    """All four standard types can be declared, redeclared identically and found passively."""
    ok = channel.exchange_declare(cleanup.exchange(name), kind)
    assert isinstance(ok.method, pika.spec.Exchange.DeclareOk)
    channel.exchange_declare(name, kind)
    assert exchange_exists(connection, name)


def test_durable_exchange_redeclare(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """A durable exchange redeclared with the same flags is fine."""
    channel.exchange_declare(cleanup.exchange(name), "topic", durable=True)
    channel.exchange_declare(name, "topic", durable=True)
    channel.exchange_declare(name, passive=True)


@pytest.mark.parametrize(
    ("field", "first", "second", "mention"),
    [
        ("type", {"exchange_type": "direct"}, {"exchange_type": "fanout"}, "received 'fanout'"),
        ("durable", {}, {"durable": True}, "received 'true' but current is 'false'"),
        ("auto_delete", {"auto_delete": True}, {}, "received 'false' but current is 'true'"),
        ("internal", {}, {"internal": True}, "received 'true' but current is 'false'"),
        (
            "alternate-exchange",
            {},
            {"arguments": {"alternate-exchange": "ae"}},
            "received the value 'ae' of type 'longstr' but current is none",
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
    """Equivalence check: "inequivalent arg 'F' for exchange 'X' in vhost '/': received ..."."""
    first = {"exchange_type": "direct", **first}
    second = {"exchange_type": "direct", **second}
    channel.exchange_declare(cleanup.exchange(name), **first)
    with expect_channel_close(channel, 406, f"inequivalent arg '{field}'", f"'{name}'", mention):
        channel.exchange_declare(name, **second)


def test_internal_exchange_refuses_publish_but_routes_from_exchanges(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """An internal exchange only receives through E2E bindings; publishing to it is 403."""
    inner = cleanup.exchange(name)
    outer = cleanup.exchange(f"{name}-outer")
    channel.exchange_declare(inner, "fanout", internal=True)
    channel.exchange_declare(outer, "fanout")
    channel.exchange_bind(destination=inner, source=outer)
    queue = _queue(channel)
    channel.queue_bind(queue, inner)
    channel.confirm_delivery()
    assert routed(channel, outer, "", b"via-outer")
    assert [d.body for d in get_all(channel, queue)] == [b"via-outer"]

    with expect_channel_close(channel, 403, f"cannot publish to internal exchange '{inner}'"):
        channel.basic_publish(inner, "", b"direct")
    assert connection.is_open


def test_delete_if_unused_refuses_bound_exchange(
    channel: BlockingChannel, connection: BlockingConnection, name: str, cleanup: Cleanup
) -> None:
    """if_unused with a queue binding: 406 "exchange 'X' in vhost '/' in use"; unbound it works."""
    channel.exchange_declare(cleanup.exchange(name), "direct")
    queue = _queue(channel)
    channel.queue_bind(queue, name, "k")
    with expect_channel_close(channel, 406, f"exchange '{name}' in vhost '/' in use"):
        channel.exchange_delete(name, if_unused=True)
    assert exchange_exists(connection, name)

    channel = connection.channel()
    channel.queue_unbind(queue, name, "k")
    channel.exchange_delete(name, if_unused=True)
    assert not exchange_exists(connection, name)


def test_delete_if_unused_counts_only_outgoing_bindings(
    channel: BlockingChannel, connection: BlockingConnection, name: str, cleanup: Cleanup
) -> None:
    """An exchange that is only the *destination* of an E2E binding is 'unused' for if_unused;
    one that is the source of an E2E binding is in use."""
    src = cleanup.exchange(f"{name}-src")
    dst = cleanup.exchange(f"{name}-dst")
    channel.exchange_declare(src, "fanout")
    channel.exchange_declare(dst, "fanout")
    channel.exchange_bind(destination=dst, source=src)
    with expect_channel_close(channel, 406, f"exchange '{src}' in vhost '/' in use"):
        channel.exchange_delete(src, if_unused=True)
    channel = connection.channel()
    channel.exchange_delete(dst, if_unused=True)
    assert not exchange_exists(connection, dst)


def test_delete_missing_exchange_is_ok(channel: BlockingChannel, name: str) -> None:
    """RabbitMQ 3.10 answers Exchange.Delete of an unknown exchange with DeleteOk (idempotent)."""
    ok = channel.exchange_delete(name)
    assert isinstance(ok.method, pika.spec.Exchange.DeleteOk)
    ok = channel.exchange_delete(name, if_unused=True)
    assert isinstance(ok.method, pika.spec.Exchange.DeleteOk)
    assert channel.is_open


def test_delete_removes_bindings(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """Deleting an exchange drops its bindings: a new exchange of that name routes nowhere."""
    channel.exchange_declare(cleanup.exchange(name), "direct")
    queue = _queue(channel)
    channel.queue_bind(queue, name, "k")
    channel.exchange_delete(name)
    channel.exchange_declare(name, "direct")
    channel.confirm_delivery()
    assert not routed(channel, name, "k")


def test_exchange_to_exchange_bind_and_unbind(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Exchange.Bind routes src -> dst by the binding key; Exchange.Unbind stops it."""
    src = cleanup.exchange(f"{name}-src")
    dst = cleanup.exchange(f"{name}-dst")
    channel.exchange_declare(src, "direct")
    channel.exchange_declare(dst, "fanout")
    ok = channel.exchange_bind(destination=dst, source=src, routing_key="green")
    assert isinstance(ok.method, pika.spec.Exchange.BindOk)
    queue = _queue(channel)
    channel.queue_bind(queue, dst)
    channel.confirm_delivery()
    assert routed(channel, src, "green", b"g")
    assert not routed(channel, src, "red")
    ok = channel.exchange_unbind(destination=dst, source=src, routing_key="green")
    assert isinstance(ok.method, pika.spec.Exchange.UnbindOk)
    assert not routed(channel, src, "green")
    assert [d.body for d in get_all(channel, queue)] == [b"g"]


@pytest.mark.parametrize("missing", ["source", "destination"])
def test_exchange_bind_with_missing_exchange_is_404(
    channel: BlockingChannel, name: str, missing: str
) -> None:
    """Exchange.Bind naming an unknown source or destination: 404 "no exchange 'X'"."""
    kwargs = {"source": "amq.fanout", "destination": "amq.direct", missing: name}
    with expect_channel_close(channel, 404, f"no exchange '{name}' in vhost '/'"):
        channel.exchange_bind(**kwargs)


def test_unbind_of_missing_binding_is_ok(channel: BlockingChannel, name: str) -> None:
    """RabbitMQ 3.10: unbinding what is not bound (even from/to unknown exchanges) is UnbindOk."""
    channel.exchange_unbind(destination="amq.direct", source="amq.fanout", routing_key=name)
    channel.exchange_unbind(destination=name, source="amq.fanout", routing_key="k")
    assert channel.is_open


@pytest.mark.parametrize("exchange", sorted(BUILTIN))
def test_builtin_exchanges_exist(channel: BlockingChannel, exchange: str) -> None:
    """amq.direct/fanout/topic/headers/match are predeclared, durable, of their type."""
    channel.exchange_declare(exchange, passive=True)
    channel.exchange_declare(exchange, BUILTIN[exchange], durable=True)
    assert channel.is_open


def test_default_exchange_routes_by_queue_name(channel: BlockingChannel) -> None:
    """The nameless default exchange delivers to the queue named by the routing key."""
    queue = _queue(channel)
    channel.confirm_delivery()
    assert routed(channel, "", queue, b"hello")
    assert not routed(channel, "", f"{queue}-nope")
    assert [d.body for d in get_all(channel, queue)] == [b"hello"]


def test_passive_declare_of_default_exchange_is_403(channel: BlockingChannel) -> None:
    """Surprise: RabbitMQ 3.10 refuses even a *passive* declare of '' with 403."""
    with expect_channel_close(channel, 403, "operation not permitted on the default exchange"):
        channel.exchange_declare("", passive=True)


def test_declare_amq_prefix_is_403(channel: BlockingChannel, name: str) -> None:
    """Names starting with 'amq.' are reserved: "exchange name 'amq.X' contains reserved prefix"."""
    reserved = f"amq.{name}"
    with expect_channel_close(
        channel, 403, f"exchange name '{reserved}' contains reserved prefix 'amq.*'"
    ):
        channel.exchange_declare(reserved, "direct")


def test_passive_declare_amq_prefix_is_404(channel: BlockingChannel) -> None:
    """A passive declare of an unknown 'amq.' name is just 404, not 403."""
    with expect_channel_close(channel, 404, "no exchange 'amq.foo'"):
        channel.exchange_declare("amq.foo", passive=True)


def test_delete_builtin_exchange_is_403(channel: BlockingChannel) -> None:
    """System exchanges cannot be deleted: "deletion of system exchange 'amq.direct' ..."."""
    with expect_channel_close(
        channel, 403, "deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    ):
        channel.exchange_delete("amq.direct")


@pytest.mark.parametrize(
    "operation",
    ["declare", "delete", "queue_bind", "queue_unbind", "bind_source", "bind_destination"],
)
def test_default_exchange_operations_are_403(channel: BlockingChannel, operation: str) -> None:
    """Declaring, deleting or binding to/from '' is 403 "operation not permitted on the default
    exchange"."""
    queue = _queue(channel)
    actions = {
        "declare": lambda: channel.exchange_declare("", "direct", durable=True),
        "delete": lambda: channel.exchange_delete(""),
        "queue_bind": lambda: channel.queue_bind(queue, "", queue),
        "queue_unbind": lambda: channel.queue_unbind(queue, "", queue),
        "bind_source": lambda: channel.exchange_bind(destination="amq.fanout", source=""),
        "bind_destination": lambda: channel.exchange_bind(destination="", source="amq.fanout"),
    }
    with expect_channel_close(channel, 403, "operation not permitted on the default exchange"):
        actions[operation]()


def test_unknown_exchange_type(
    connection: BlockingConnection, channel: BlockingChannel, name: str, target_is_warren: bool
) -> None:
    """RabbitMQ 3.10 closes the *connection* with 503 "unknown exchange type 'T'"; Warren (like
    newer RabbitMQ) closes only the channel with 406."""
    if target_is_warren:
        with expect_channel_close(channel, 406, "x-no-such-type"):
            channel.exchange_declare(name, "x-no-such-type")
    else:
        with expect_connection_close(connection, 503, "unknown exchange type 'x-no-such-type'"):
            channel.exchange_declare(name, "x-no-such-type")


def test_auto_delete_exchange_survives_until_first_binding(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A fresh auto-delete exchange with no bindings yet stays around."""
    channel.exchange_declare(cleanup.exchange(name), "direct", auto_delete=True)
    assert exchange_exists(connection, name)


def test_auto_delete_exchange_goes_with_last_unbind(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Removing one of two bindings keeps an auto-delete exchange; removing the last deletes it."""
    channel.exchange_declare(cleanup.exchange(name), "direct", auto_delete=True)
    queue = _queue(channel)
    channel.queue_bind(queue, name, "a")
    channel.queue_bind(queue, name, "b")
    channel.queue_unbind(queue, name, "a")
    assert exchange_exists(connection, name)
    channel.queue_unbind(queue, name, "b")
    assert not exchange_exists(connection, name)


def test_auto_delete_exchange_goes_with_its_queue(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Deleting the only bound queue removes the binding and with it the auto-delete exchange."""
    channel.exchange_declare(cleanup.exchange(name), "fanout", auto_delete=True)
    queue = _queue(channel)
    channel.queue_bind(queue, name)
    channel.queue_delete(queue)
    assert not exchange_exists(connection, name)
