"""The x-delayed-message exchange (RabbitMQ's delayed-message plugin, as clients use it), with a
clock the tests move, and over the write-ahead log: validation, what is delayed and what is
routed at once, order of coming due, routing by the delayed type, the mandatory return, and
durable pending messages across restarts (one that came due while the broker was down is routed
at recovery, once)."""

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


def _delayed(vhost: VirtualHost, kind: str = "direct", durable: bool = False) -> None:
    vhost.declare_exchange(
        "later", "x-delayed-message", durable=durable, arguments={"x-delayed-type": kind}
    )


def _publish(vhost: VirtualHost, key: str, body: bytes, delay: Any = None, **props: Any) -> Any:
    headers = {} if delay is None else {"x-delay": delay}
    message = make_message(key, body, exchange="later", headers=headers, **props)
    return vhost.publish(vhost.exchanges["later"], message)


def _bodies(vhost: VirtualHost, queue: str) -> list[bytes]:
    found = []
    for entry in vhost.queues[queue].ready_entries():
        message = entry.message
        found.append(message.body if message.body is not None else vhost.store.read_body(message))
    return found


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        ({}, "'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": "nope"}, "'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": 5}, "'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": "x-delayed-message"}, "can't be 'x-delayed-message'"),
    ],
)
def test_x_delayed_type_must_name_a_routing_type(
    vhost: VirtualHost, arguments: dict[str, Any], text: str
) -> None:
    """As the plugin: 406 "Invalid argument, 'x-delayed-type' ..."; nothing is declared."""
    with pytest.raises(ChannelException) as info:
        vhost.declare_exchange("later", "x-delayed-message", arguments=arguments)
    assert info.value.code == 406 and text in info.value.reply_text
    assert "later" not in vhost.exchanges


def test_a_delayed_message_is_routed_when_due_with_its_headers(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    _delayed(vhost)
    vhost.declare_queue("q", None)
    vhost.bind("later", "q", "k", None)
    routed, logged, refused = _publish(vhost, "k", b"m", 1000)
    assert (routed, logged, refused) == (False, False, False)  # mandatory: returned (plugin)
    assert vhost.queues["q"].message_count == 0
    clock.advance(0.99)
    assert vhost.queues["q"].message_count == 0
    clock.advance(0.02)
    (entry,) = vhost.queues["q"].ready_entries()
    assert entry.message.headers == {"x-delay": 1000}
    assert entry.message.exchange == "later" and entry.message.routing_key == "k"
    assert len(clock.pending) == 0


@pytest.mark.parametrize("delay", [None, 0, -5, "1000", 2**32])
def test_without_a_positive_integer_delay_a_message_is_routed_at_once(
    vhost: VirtualHost, delay: Any
) -> None:
    """No x-delay, zero, negative, not an integer, or past 2^32-1 ms: routed at publish."""
    _delayed(vhost)
    vhost.declare_queue("q", None)
    vhost.bind("later", "q", "k", None)
    routed, _, _ = _publish(vhost, "k", b"m", delay)
    assert routed and vhost.queues["q"].message_count == 1


def test_messages_come_due_in_delay_order_with_one_timer(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    _delayed(vhost, "fanout")
    vhost.declare_queue("q", None)
    vhost.bind("later", "q", "", None)
    for delay in (300, 100, 200, 50):
        _publish(vhost, "", str(delay).encode(), delay)
    assert len(clock.pending) == 1
    clock.advance(0.5)
    assert _bodies(vhost, "q") == [b"50", b"100", b"200", b"300"]


def test_routing_follows_the_delayed_type(vhost: VirtualHost, clock: ManualClock) -> None:
    _delayed(vhost, "topic")
    for name, pattern in (("eu", "orders.eu.*"), ("all", "orders.#")):
        vhost.declare_queue(name, None)
        vhost.bind("later", name, pattern, None)
    _publish(vhost, "orders.eu.refund", b"r", 10)
    _publish(vhost, "orders.us.charge", b"c", 10)
    clock.advance(0.1)
    assert (_bodies(vhost, "eu"), _bodies(vhost, "all")) == ([b"r"], [b"r", b"c"])


def test_deleting_the_exchange_drops_what_waits(vhost: VirtualHost, clock: ManualClock) -> None:
    _delayed(vhost)
    vhost.declare_queue("q", None)
    vhost.bind("later", "q", "k", None)
    _publish(vhost, "k", b"m", 100)
    vhost.delete_exchange("later")
    clock.advance(1)
    assert vhost.queues["q"].message_count == 0


async def test_durable_delayed_messages_survive_restarts_and_come_due_once(
    tmp_path: Path,
) -> None:
    """Persistent messages on a durable delayed exchange are logged before the confirm (with
    their bodies kept only in the log), survive a restart while pending, and one that came due
    while the broker was down is routed at recovery, once."""
    clock = ManualClock()
    node = await start_node(tmp_path, clock=clock)
    _delayed(node.vhost, durable=True)
    node.vhost.declare_queue("q", None, durable=True)
    node.vhost.bind("later", "q", "k", None)
    _, logged, _ = _publish(node.vhost, "k", b"soon", 1000, delivery_mode=2)
    _publish(node.vhost, "k", b"late", 60_000, delivery_mode=2)
    assert logged
    holding = node.vhost.exchanges["later"].holding  # type: ignore[attr-defined]
    assert all(entry.message.body is None for entry in holding.ready_entries())
    node = await restart(node, clock=ManualClock(clock.time + 0.5))
    assert node.vhost.queues["q"].message_count == 0
    await stop_node(node)
    clock = ManualClock(clock.time + 5)  # down while "soon" came due
    node = await start_node(tmp_path, clock=clock)
    clock.advance(0.01)
    assert _bodies(node.vhost, "q") == [b"soon"]
    assert await synced(node.store) is None
    node = await restart(node, clock=ManualClock(clock.time + 120))
    node.vhost.clock.advance(0.01)  # type: ignore[attr-defined]
    assert _bodies(node.vhost, "q") == [b"soon", b"late"]
    node = await restart(node, clock=ManualClock(clock.time + 240))
    node.vhost.clock.advance(0.01)  # type: ignore[attr-defined]
    assert _bodies(node.vhost, "q") == [b"soon", b"late"]  # never twice
    await stop_node(node)


async def test_released_again_after_a_crash_lost_the_release_it_comes_redelivered(
    tmp_path: Path,
) -> None:
    """A delayed message came due and was delivered, but the crash took its REROUTE record:
    after the restart it comes due again, and this delivery says redelivered (the consumer
    may have seen it), as every message recovered after an unclean shutdown does."""
    from broker.store import records
    from tests.unit.test_durable_store import log_records

    clock = ManualClock()
    node = await start_node(tmp_path, clock=clock)
    _delayed(node.vhost, durable=True)
    node.vhost.declare_queue("q", None, durable=True)
    node.vhost.bind("later", "q", "k", None)
    _publish(node.vhost, "k", b"m", 100, delivery_mode=2)
    assert await synced(node.store) is None
    clock.advance(0.2)
    first = node.vhost.queues["q"].get(ack_required=True)
    assert first is not None and first.redelivered is False
    assert await synced(node.store) is None
    await node.wal.close()  # kill -9 ...
    reroute = next(r for r in log_records(tmp_path) if r[2] == records.REROUTE)
    segment = tmp_path / f"{reroute[0]:010d}.wal"
    with segment.open("r+b") as handle:  # ... before the REROUTE record reached the disk
        handle.truncate(reroute[1])
    (tmp_path / "synced").unlink(missing_ok=True)
    clock = ManualClock(clock.time + 1)
    node = await start_node(tmp_path, clock=clock)
    clock.advance(0.01)
    again = node.vhost.queues["q"].get(ack_required=True)
    assert again is not None and again.message.headers == {"x-delay": 100}
    assert again.redelivered is True
    await stop_node(node)
