"""Deduplication with the rabbitmq-message-deduplication plugin's arguments: the exchange type
(fanout routing, x-cache-size, x-cache-ttl from the exchange or the message, the bounded
cache, a key remembered only once its message was routed, disk persistence across restarts)
and the queue argument (a value is kept out while a message with it is held)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import ChannelException
from broker.core.vhost import VirtualHost
from tests.unit.helpers import ManualClock, make_message
from tests.unit.test_durable_store import restart, start_node, stop_node, synced


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def vhost(clock: ManualClock) -> VirtualHost:
    return VirtualHost("/", clock=clock)


def _dedup_exchange(vhost: VirtualHost, durable: bool = False, **arguments: Any) -> None:
    vhost.declare_exchange(
        "once",
        "x-message-deduplication",
        durable=durable,
        arguments={"x-cache-size": 2, **arguments},
    )


def _publish(vhost: VirtualHost, body: bytes, key: Any = None, **headers: Any) -> Any:
    if key is not None:
        headers["x-deduplication-header"] = key
    message = make_message("", body, exchange="once", headers=headers, delivery_mode=2)
    return vhost.publish(vhost.exchanges["once"], message)


def _count(vhost: VirtualHost, queue: str) -> int:
    return vhost.queues[queue].message_count


def test_cache_size_is_required_and_positive(vhost: VirtualHost) -> None:
    for arguments in ({}, {"x-cache-size": 0}, {"x-cache-size": "10"}):
        with pytest.raises(ChannelException) as info:
            vhost.declare_exchange("once", "x-message-deduplication", arguments=arguments)
        assert info.value.code == 406 and "x-cache-size" in info.value.reply_text


def test_a_value_is_routed_once_within_its_ttl(vhost: VirtualHost, clock: ManualClock) -> None:
    _dedup_exchange(vhost, **{"x-cache-ttl": 1000})
    vhost.declare_queue("orders", None)
    vhost.bind("once", "orders", "anything", None)  # fanout: the key does not matter
    assert _publish(vhost, b"1", "order-7")[0]
    assert not _publish(vhost, b"2", "order-7")[0]  # dropped (a mandatory one is returned)
    assert _publish(vhost, b"3")[0]  # no header: never checked
    clock.advance(1.01)
    assert _publish(vhost, b"4", "order-7")[0]  # the TTL passed
    assert _publish(vhost, b"5", "order-8", **{"x-cache-ttl": 10})[0]
    clock.advance(0.02)
    assert _publish(vhost, b"6", "order-8")[0]  # the message's own TTL (10 ms) passed
    assert _count(vhost, "orders") == 5


def test_the_cache_is_bounded_and_an_unrouted_value_is_not_remembered(
    vhost: VirtualHost,
) -> None:
    _dedup_exchange(vhost)
    assert not _publish(vhost, b"nowhere", "a")[0]  # no binding: not routed, not remembered
    vhost.declare_queue("orders", None)
    vhost.bind("once", "orders", "", None)
    for key in ("a", "b", "c"):  # cache size 2: "a" makes room for "c"
        assert _publish(vhost, key.encode(), key)[0]
    assert _publish(vhost, b"a again", "a")[0]
    assert not _publish(vhost, b"c again", "c")[0]


def test_a_deduplicating_queue_keeps_a_value_out_while_it_holds_one(vhost: VirtualHost) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-message-deduplication": True})
    other = vhost.declare_queue("plain", None)
    vhost.declare_exchange("fan", "fanout")
    for name in ("q", "plain"):
        vhost.bind("fan", name, "", None)

    def publish(body: bytes) -> None:
        headers = {"x-deduplication-header": "order-1"}
        message = make_message("", body, exchange="fan", headers=headers)
        vhost.publish(vhost.exchanges["fan"], message)

    publish(b"first")
    publish(b"second")
    assert (queue.message_count, other.message_count) == (1, 2)
    entry = queue.get(ack_required=True)
    publish(b"while unacked")
    assert queue.message_count == 0
    queue.settle([entry])  # type: ignore[list-item]
    publish(b"after the ack")
    assert queue.message_count == 1


async def test_a_disk_cache_survives_restarts_and_follows_its_messages(tmp_path: Path) -> None:
    clock = ManualClock()
    node = await start_node(tmp_path, clock=clock)
    _dedup_exchange(node.vhost, durable=True, **{"x-cache-persistence": "disk"})
    node.vhost.declare_queue("orders", None, durable=True)
    node.vhost.bind("once", "orders", "", None)
    assert _publish(node.vhost, b"1", "order-1")[0]
    assert await synced(node.store) is None
    node = await restart(node, clock=ManualClock(clock.time))
    assert not _publish(node.vhost, b"2", "order-1")[0]
    assert _count(node.vhost, "orders") == 1
    node = await restart(node, clock=ManualClock(clock.time))  # the snapshot keeps it too
    assert not _publish(node.vhost, b"3", "order-1")[0]
    await stop_node(node)
