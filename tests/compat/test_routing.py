"""Routing through direct, fanout, topic and headers exchanges, and exchange-to-exchange graphs,
exactly as RabbitMQ 3.10 matches. Routed-or-not is decided by a mandatory publish on a confirm
channel (Basic.Return 312 before the Basic.Ack means "no queue")."""

from __future__ import annotations

from typing import Any

import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.compat.helpers import (
    Cleanup,
    cleanup_fixture,  # noqa: F401  (fixture)
    get_all,
    routed,
)

pytestmark = pytest.mark.timeout(30)


def _exchange(channel: BlockingChannel, cleanup: Cleanup, name: str, kind: str) -> str:
    channel.exchange_declare(cleanup.exchange(name), kind)
    return name


def _queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True).method.queue


def _bodies(channel: BlockingChannel, queue: str) -> list[bytes]:
    return [d.body for d in get_all(channel, queue)]


def test_direct_matches_exact_key_only(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Direct: the routing key must equal the binding key (case-sensitive); every queue bound
    with that key gets a copy."""
    exchange = _exchange(channel, cleanup, name, "direct")
    q1, q2, q3 = _queue(channel), _queue(channel), _queue(channel)
    channel.queue_bind(q1, exchange, "red")
    channel.queue_bind(q2, exchange, "red")
    channel.queue_bind(q3, exchange, "blue")
    channel.confirm_delivery()
    assert routed(channel, exchange, "red", b"r")
    assert not routed(channel, exchange, "Red")
    assert not routed(channel, exchange, "red.x")
    assert not routed(channel, exchange, "")
    assert [_bodies(channel, q) for q in (q1, q2, q3)] == [[b"r"], [b"r"], []]


def test_fanout_ignores_routing_key(channel: BlockingChannel, name: str, cleanup: Cleanup) -> None:
    """Fanout: every bound queue gets every message whatever the keys."""
    exchange = _exchange(channel, cleanup, name, "fanout")
    q1, q2 = _queue(channel), _queue(channel)
    channel.queue_bind(q1, exchange, "ignored")
    channel.queue_bind(q2, exchange, "")
    channel.confirm_delivery()
    assert routed(channel, exchange, "anything", b"1")
    assert routed(channel, exchange, "", b"2")
    assert _bodies(channel, q1) == [b"1", b"2"]
    assert _bodies(channel, q2) == [b"1", b"2"]


TOPIC_CASES: list[tuple[str, str, bool]] = [
    ("#", "", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("*", "", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.#", "", False),
    ("#.*", "a", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("a.*.b", "a..b", True),
    ("a..b", "a..b", True),
    ("a..b", "a.x.b", False),
    ("#.a.#", "a", True),
    ("#.a.#", "x.y.a.z", True),
    ("#.a.#", "x.b.z", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.b.c", False),
    ("*.*", ".", True),
    ("a.*", "a.", True),
    ("a", "a.", False),
    ("", "", True),
    ("", "a", False),
    ("a.b", "A.B", False),
    ("a#", "ab", False),
    ("a#", "a#", True),
]


@pytest.mark.parametrize(("pattern", "key", "matches"), TOPIC_CASES)
def test_topic_matching(
    channel: BlockingChannel, name: str, cleanup: Cleanup, pattern: str, key: str, matches: bool
) -> None:
    """Topic: words split on '.', '*' is exactly one (possibly empty) word, '#' zero or more
    words; '' has zero words; '#'/'*' inside a word are literal."""
    exchange = _exchange(channel, cleanup, name, "topic")
    queue = _queue(channel)
    channel.queue_bind(queue, exchange, pattern)
    channel.confirm_delivery()
    assert routed(channel, exchange, key, key.encode()) is matches
    assert _bodies(channel, queue) == ([key.encode()] if matches else [])


HEADERS_CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None, bool]] = [
    ("all", {"a": 1, "b": "x"}, {"a": 1, "b": "x", "extra": True}, True),
    ("all", {"a": 1, "b": "x"}, {"a": 1}, False),
    ("all", {"a": 1}, None, False),
    ("all", {"a": 1}, {"a": 2}, False),
    ("all", {"a": 1}, {"a": "1"}, False),
    ("any", {"a": 1, "b": "x"}, {"b": "x"}, True),
    ("any", {"a": 1, "b": "x"}, {"c": 1}, False),
    ("all", {"a": 1, "x-k": "v"}, {"a": 1}, True),
    ("any", {"x-k": "v"}, {"x-k": "v"}, False),
    ("all-with-x", {"a": 1, "x-k": "v"}, {"a": 1}, False),
    ("all-with-x", {"a": 1, "x-k": "v"}, {"a": 1, "x-k": "v"}, True),
    ("any-with-x", {"x-k": "v"}, {"x-k": "v"}, True),
    ("all", {}, {"q": 1}, True),
    ("any", {}, {"q": 1}, False),
    ("all", {"a": None}, {"a": 5}, True),
    ("all", {"a": "s"}, {"a": b"s"}, True),
]


@pytest.mark.parametrize(("x_match", "binding", "headers", "matches"), HEADERS_CASES)
def test_headers_matching(
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    x_match: str,
    binding: dict[str, Any],
    headers: dict[str, Any] | None,
    matches: bool,
) -> None:
    """Headers: x-match all/any ignore binding keys starting with 'x-'; all-with-x/any-with-x
    compare them too. An empty 'all' binding matches everything, an empty 'any' nothing; a void
    binding value only requires the header to be present; longstr and bytes compare equal."""
    exchange = _exchange(channel, cleanup, name, "headers")
    queue = _queue(channel)
    channel.queue_bind(queue, exchange, "", arguments={"x-match": x_match, **binding})
    channel.confirm_delivery()
    assert routed(channel, exchange, "ignored", headers=headers) is matches


def test_headers_default_x_match_is_all(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Without x-match a headers binding behaves as x-match=all."""
    exchange = _exchange(channel, cleanup, name, "headers")
    queue = _queue(channel)
    channel.queue_bind(queue, exchange, "", arguments={"a": 1, "b": 2})
    channel.confirm_delivery()
    assert not routed(channel, exchange, "", headers={"a": 1})
    assert routed(channel, exchange, "", headers={"a": 1, "b": 2})


def test_multiple_matching_bindings_deliver_once(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A queue that matches through several bindings still gets one copy."""
    exchange = _exchange(channel, cleanup, name, "topic")
    queue = _queue(channel)
    for pattern in ("a.b", "a.*", "#", "*.b"):
        channel.queue_bind(queue, exchange, pattern)
    channel.confirm_delivery()
    assert routed(channel, exchange, "a.b", b"once")
    assert _bodies(channel, queue) == [b"once"]


def test_exchange_chain_and_diamond_deliver_once(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """x1 -> x2 -> x4 and x1 -> x3 -> x4 -> q, plus q bound to x2 too: one copy per publish."""
    x1, x2, x3, x4 = (_exchange(channel, cleanup, f"{name}-{i}", "fanout") for i in range(1, 5))
    channel.exchange_bind(destination=x2, source=x1)
    channel.exchange_bind(destination=x3, source=x1)
    channel.exchange_bind(destination=x4, source=x2)
    channel.exchange_bind(destination=x4, source=x3)
    queue = _queue(channel)
    channel.queue_bind(queue, x4)
    channel.queue_bind(queue, x2)
    channel.confirm_delivery()
    assert routed(channel, x1, "k", b"diamond")
    assert routed(channel, x3, "k", b"from-x3")
    assert _bodies(channel, queue) == [b"diamond", b"from-x3"]


def test_exchange_cycle_terminates_and_delivers_once(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """x1 <-> x2 bound both ways (a cycle) with a queue on each: each queue gets one copy."""
    x1 = _exchange(channel, cleanup, f"{name}-1", "fanout")
    x2 = _exchange(channel, cleanup, f"{name}-2", "fanout")
    channel.exchange_bind(destination=x2, source=x1)
    channel.exchange_bind(destination=x1, source=x2)
    q1, q2 = _queue(channel), _queue(channel)
    channel.queue_bind(q1, x1)
    channel.queue_bind(q2, x2)
    channel.confirm_delivery()
    assert routed(channel, x1, "", b"cycle")
    assert _bodies(channel, q1) == [b"cycle"]
    assert _bodies(channel, q2) == [b"cycle"]


def test_exchange_to_exchange_uses_binding_keys(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A topic source filters by the E2E binding key before the destination routes again."""
    src = _exchange(channel, cleanup, f"{name}-src", "topic")
    dst = _exchange(channel, cleanup, f"{name}-dst", "direct")
    channel.exchange_bind(destination=dst, source=src, routing_key="orders.#")
    queue = _queue(channel)
    channel.queue_bind(queue, dst, "orders.eu")
    channel.confirm_delivery()
    assert routed(channel, src, "orders.eu", b"eu")
    assert not routed(channel, src, "orders.us")
    assert not routed(channel, src, "invoices.eu")
    assert _bodies(channel, queue) == [b"eu"]
