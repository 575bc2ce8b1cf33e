"""The durable store end to end on real files, without a broker process: a VirtualHost on a
DurableStore on a WriteAheadLog in tmp_path, then a restart the way Broker._recover does it
(recover + restore into fresh VirtualHosts, start the log, store.recovered()).

Pinned: which definitions and messages survive (durable ones only), publish order, settlement
(ack, no-ack get, purge, queue delete), redelivered flags, bindings, bodies left in the log,
segment garbage collection with snapshots, and sync/fsync error reporting."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.core.clock import SYSTEM_CLOCK, Clock
from broker.core.errors import INTERNAL_ERROR, ChannelException
from broker.core.message import QueuedMessage
from broker.core.persistence import LogUnavailable
from broker.core.queue import Queue
from broker.core.tables import MAX_DEPTH
from broker.core.vhost import VirtualHost
from broker.store import records
from broker.store.durable import DurableStore
from broker.store.recovery import UnknownVhostError, recover, restore
from broker.store.spill import SpillFiles
from broker.store.wal import WriteAheadLog
from tests.unit.helpers import make_message

OWNER = object()
Record = tuple[int, int, int, bytes]  # segment, offset, type, payload


@dataclass
class Node:
    """One broker lifetime: the log, the store and the vhosts over one data directory."""

    directory: Path
    wal: WriteAheadLog
    store: DurableStore
    vhosts: dict[str, VirtualHost]
    restored: tuple[int, int]  # (queues, messages) restore() reported

    @property
    def vhost(self) -> VirtualHost:
        return self.vhosts["/"]


async def start_node(
    directory: Path,
    segment_size: int = 1 << 20,
    names: tuple[str, ...] = ("/",),
    clock: Clock = SYSTEM_CLOCK,
    spill: SpillFiles | None = None,
) -> Node:
    """Open the log and rebuild the model from it, in Broker._recover's order."""
    wal = WriteAheadLog(directory, segment_size=segment_size)
    vhosts: dict[str, VirtualHost] = {}
    store = DurableStore(wal, vhosts.values, spill=spill)
    vhosts.update({name: VirtualHost(name, store, clock) for name in names})
    state = recover(wal)
    restored = restore(state, vhosts, store)
    await wal.start()
    if spill is not None:
        await spill.start()
    store.recovered()
    return Node(directory, wal, store, vhosts, restored)


async def synced(store: DurableStore) -> BaseException | None:
    """What a store.sync() callback is called with, once it is."""
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    store.sync(done.set_result)
    return await asyncio.wait_for(done, 5)


async def stop_node(node: Node) -> None:
    """A clean shutdown, in Broker.stop's order: the store says so, then the log closes."""
    assert await synced(node.store) is None
    node.store.shutdown()
    await node.wal.close()
    if node.store.spill_files is not None:
        await node.store.spill_files.close()


async def restart(node: Node, segment_size: int = 1 << 20, clock: Clock = SYSTEM_CLOCK) -> Node:
    await stop_node(node)
    return await start_node(node.directory, segment_size, clock=clock)


def log_records(directory: Path) -> list[Record]:
    """Every record on disk, replayed by a fresh log (call with the log closed)."""
    seen: list[Record] = []
    WriteAheadLog(directory).replay(lambda s, o, t, p: seen.append((s, o, t, bytes(p))))
    return seen


def publish(vhost: VirtualHost, key: str, body: bytes, exchange: str = "", mode: int = 2) -> bool:
    """Publish like Basic.Publish does; True when the message was logged."""
    message = make_message(key, body, exchange=exchange, delivery_mode=mode)
    return vhost.publish(vhost.get_exchange(exchange), message)[1]


def contents(node: Node, queue: Queue) -> list[tuple[bytes, bool]]:
    """(body, redelivered) of the ready messages, bodies read from the log when not in memory."""
    result = []
    for entry in queue.ready_entries():
        message = entry.message
        body = message.body if message.body is not None else node.store.read_body(message)
        result.append((body, entry.redelivered))
    return result


def fanout_to(vhost: VirtualHost, *queues: str) -> None:
    """A durable fanout exchange "fan" bound to these queues."""
    vhost.declare_exchange("fan", "fanout", durable=True)
    for name in queues:
        vhost.bind("fan", name, "", None)


def take(queue: Queue, count: int) -> list[QueuedMessage]:
    """Basic.Get with manual ack, count times."""
    taken = []
    for _ in range(count):
        entry = queue.get(ack_required=True)
        assert entry is not None
        taken.append(entry)
    return taken


def bindings_of(vhost: VirtualHost, exchange: str) -> set[tuple[str, str]]:
    """(destination name, routing key) of an exchange's bindings."""
    return {
        (b.destination.name, b.routing_key) for b in vhost.exchanges[exchange].bindings.values()
    }


def message_records(directory: Path) -> list[tuple[tuple[int, ...], bytes]]:
    """(queue ids, body) of every MESSAGE record on disk."""
    found = []
    for _, _, record_type, payload in log_records(directory):
        if record_type in records.MESSAGE_TYPES:
            message = records.message_part(record_type, memoryview(payload))[1]
            _, queue_ids, _, _, body_offset = records.decode_message(message)
            found.append((queue_ids, bytes(message[body_offset:])))
    return found


# ------------------------------------------------------------------------------ definitions


async def test_only_durable_definitions_survive_a_restart(tmp_path: Path) -> None:
    """Durable exchanges, surviving queues (durable, not exclusive, not auto-delete) and the
    bindings between durable ends come back; transient, exclusive and auto-delete ones do not."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    vhost.declare_exchange("orders", "direct", durable=True)
    vhost.declare_exchange("audit", "fanout", durable=True)
    vhost.declare_exchange("temp", "topic", durable=False)
    durable = vhost.declare_queue("q", None, durable=True)
    vhost.declare_queue("exclusive", OWNER, durable=True, exclusive=True)
    vhost.declare_queue("auto", None, durable=True, auto_delete=True)
    vhost.declare_queue("transient", None, durable=False)
    for queue in ("q", "exclusive", "auto", "transient"):
        vhost.bind("orders", queue, "to-" + queue, None, owner=OWNER)
    vhost.bind("orders", "audit", "e2e", None, to_exchange=True)
    vhost.bind("temp", "q", "from-temp", None)
    vhost.bind("orders", "temp", "to-temp", None, to_exchange=True)
    vhost.bind("amq.direct", "q", "builtin", None)
    store_id = durable.store_id

    node = await restart(node)
    vhost = node.vhost
    builtin = {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"}
    builtin.add("amq.rabbitmq.trace")
    assert set(vhost.exchanges) == builtin | {"orders", "audit"}
    assert (vhost.exchanges["orders"].type_name, vhost.exchanges["audit"].type_name) == (
        "direct",
        "fanout",
    )
    assert all(vhost.exchanges[name].durable for name in ("orders", "audit"))
    assert list(vhost.queues) == ["q"]
    assert vhost.queues["q"].durable and vhost.queues["q"].store_id == store_id
    assert bindings_of(vhost, "orders") == {("q", "to-q"), ("audit", "e2e")}
    assert bindings_of(vhost, "amq.direct") == {("q", "builtin")}
    assert node.restored == (1, 0)
    await stop_node(node)


async def test_definition_flags_and_nested_arguments_come_back(tmp_path: Path) -> None:
    """Exchange type/auto-delete/internal flags and argument tables with nested values are
    restored as declared, so a client's redeclare after a restart passes equivalence."""
    exchange_args = {"alternate-exchange": "ae", "x-meta": {"owner": "team", "tags": [1, "a"]}}
    queue_args = {"x-message-ttl": 60000, "x-max-length": 10, "x-extra": {"deep": {"n": True}}}
    binding_args = {"x-match": "all", "region": "eu", "tier": 2}
    node = await start_node(tmp_path)
    vhost = node.vhost
    vhost.declare_exchange("ae", "fanout", durable=True, internal=True)
    vhost.declare_exchange("x", "topic", durable=True, auto_delete=True, arguments=exchange_args)
    vhost.declare_exchange("h", "headers", durable=True)
    vhost.declare_queue("q", None, durable=True, arguments=queue_args)
    vhost.bind("x", "q", "a.#", None)  # keeps the auto-delete exchange alive
    vhost.bind("h", "q", "", binding_args)

    node = await restart(node)
    vhost = node.vhost
    ae, x = vhost.exchanges["ae"], vhost.exchanges["x"]
    assert (ae.type_name, ae.internal, ae.auto_delete) == ("fanout", True, False)
    assert (x.type_name, x.auto_delete, x.arguments) == ("topic", True, exchange_args)
    assert vhost.queues["q"].arguments == queue_args
    assert [b.arguments for b in vhost.exchanges["h"].bindings.values()] == [binding_args]
    # The client's own redeclares after the restart are accepted as equivalent.
    assert (
        vhost.declare_exchange(
            "x", "topic", durable=True, auto_delete=True, arguments=exchange_args
        )
        is x
    )
    assert vhost.declare_queue("q", None, durable=True, arguments=queue_args) is vhost.queues["q"]
    routed = vhost.route(vhost.exchanges["h"], make_message(headers={"region": "eu", "tier": 2}))
    assert [queue.name for queue in routed] == ["q"]
    await stop_node(node)


async def test_unbind_and_queue_delete_remove_bindings(tmp_path: Path) -> None:
    """An unbind is logged, and deleting a queue logs the loss of its bindings."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    vhost.declare_exchange("x", "direct", durable=True)
    for name in ("a", "b", "c"):
        vhost.declare_queue(name, None, durable=True)
        vhost.bind("x", name, "one", None)
        vhost.bind("x", name, "two", None)
    vhost.unbind("x", "a", "one", None)
    vhost.delete_queue("c", None)

    node = await restart(node)
    assert bindings_of(node.vhost, "x") == {("a", "two"), ("b", "one"), ("b", "two")}
    node.vhost.unbind("x", "b", "two", None)  # unbinding a restored binding is logged too

    node = await restart(node)
    assert bindings_of(node.vhost, "x") == {("a", "two"), ("b", "one")}
    await stop_node(node)


async def test_exchange_delete_removes_its_bindings(tmp_path: Path) -> None:
    """Deleting a durable exchange removes its bindings to queues and the exchange-to-exchange
    bindings in and out of it; unrelated bindings stay."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    for name in ("gone", "upstream", "downstream", "other"):
        vhost.declare_exchange(name, "fanout", durable=True)
    vhost.declare_queue("q", None, durable=True)
    vhost.bind("gone", "q", "", None)
    vhost.bind("upstream", "gone", "", None, to_exchange=True)
    vhost.bind("gone", "downstream", "", None, to_exchange=True)
    vhost.bind("other", "q", "", None)
    vhost.delete_exchange("gone")

    node = await restart(node)
    vhost = node.vhost
    assert "gone" not in vhost.exchanges
    assert bindings_of(vhost, "upstream") == set()
    assert bindings_of(vhost, "other") == {("q", "")}
    assert vhost.exchanges["downstream"].incoming == {}
    assert len(vhost.queues["q"].incoming) == 1
    await stop_node(node)


async def test_exchange_redeclared_after_delete_comes_back_without_old_bindings(
    tmp_path: Path,
) -> None:
    """Delete then redeclare a durable exchange: it survives, its old bindings do not."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    vhost.declare_exchange("x", "direct", durable=True)
    vhost.declare_queue("q", None, durable=True)
    vhost.bind("x", "q", "old", None)
    vhost.delete_exchange("x")
    vhost.declare_exchange("x", "topic", durable=True)
    vhost.bind("x", "q", "new", None)

    node = await restart(node)
    assert node.vhost.exchanges["x"].type_name == "topic"
    assert bindings_of(node.vhost, "x") == {("q", "new")}
    await stop_node(node)


async def test_server_named_durable_queue_survives_a_restart(tmp_path: Path) -> None:
    """A durable, non-exclusive queue declared with an empty name gets an amq.gen-* name; as in
    RabbitMQ it is an ordinary durable queue and must be restored with its messages."""
    node = await start_node(tmp_path)
    name = node.vhost.declare_queue("", None, durable=True).name
    assert name.startswith("amq.gen-")
    publish(node.vhost, name, b"kept")
    await stop_node(node)

    node = await start_node(tmp_path)
    try:
        assert contents(node, node.vhost.queues[name]) == [(b"kept", False)]
    finally:
        await stop_node(node)


# ------------------------------------------------------------------------------ messages


async def test_messages_come_back_in_order_with_redelivered_flags(tmp_path: Path) -> None:
    """Settled messages stay gone; delivered-but-unacked ones come back redelivered; never
    delivered ones come back not redelivered; all in publish order, including a requeued one."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    for n in range(1, 7):
        assert publish(node.vhost, "q", b"m%d" % n)
    m1, m2, m3, m4 = take(queue, 4)
    queue.settle([m1, m3])  # acked
    queue.requeue([m4])  # nacked with requeue: back in place, delivered before
    assert m2 in queue.unacked_entries()

    node = await restart(node)
    queue = node.vhost.queues["q"]
    assert contents(node, queue) == [
        (b"m2", True),
        (b"m4", True),
        (b"m5", False),
        (b"m6", False),
    ]
    assert node.restored == (1, 4)
    assert all(entry.message.body is None for entry in queue.ready_entries())
    assert all(entry.message.persistent for entry in queue.ready_entries())
    assert [entry.message.routing_key for entry in queue.ready_entries()] == ["q"] * 4
    await stop_node(node)


async def test_settlements_after_a_restart_are_logged_against_recovered_messages(
    tmp_path: Path,
) -> None:
    """Recovered messages keep their ids: acking one after a restart keeps it gone after the
    next; the redelivered flag survives a second restart; new messages queue behind old ones."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    for n in range(1, 4):
        publish(node.vhost, "q", b"old%d" % n)
    take(queue, 1)  # old1 delivered, never acked

    node = await restart(node)
    queue = node.vhost.queues["q"]
    (old1,) = take(queue, 1)
    assert old1.redelivered
    (old2,) = take(queue, 1)
    queue.settle([old2])
    publish(node.vhost, "q", b"new1")
    queue.requeue([old1])

    node = await restart(node)
    queue = node.vhost.queues["q"]
    assert contents(node, queue) == [(b"old1", True), (b"old3", False), (b"new1", False)]
    ids = [entry.message.msg_id for entry in queue.ready_entries()]
    assert ids == sorted(ids) and len(set(ids)) == 3
    await stop_node(node)


async def test_get_without_ack_settles(tmp_path: Path) -> None:
    """Basic.Get with no-ack settles at once: the message does not come back."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    publish(node.vhost, "q", b"a")
    publish(node.vhost, "q", b"b")
    entry = queue.get(ack_required=False)
    assert entry is not None and entry.message.body == b"a"

    node = await restart(node)
    assert contents(node, node.vhost.queues["q"]) == [(b"b", False)]
    await stop_node(node)


async def test_transient_messages_and_non_durable_queues_are_never_logged(
    tmp_path: Path,
) -> None:
    """Delivery-mode 1 (or no mode) messages, and persistent messages routed only to queues that
    do not survive, never reach the log; a persistent message routed to a durable and a
    transient queue is logged with the durable queue's id only."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    durable = vhost.declare_queue("durable", None, durable=True)
    vhost.declare_queue("transient", None, durable=False)
    vhost.declare_queue("exclusive", OWNER, durable=True, exclusive=True)
    vhost.declare_queue("auto", None, durable=True, auto_delete=True)
    vhost.declare_exchange("fan", "fanout", durable=True)
    for name in ("durable", "transient", "exclusive", "auto"):
        vhost.bind("fan", name, "", None, owner=OWNER)

    assert not publish(vhost, "durable", b"mode-1", mode=1)
    assert not vhost.publish(vhost.exchanges[""], make_message("durable", b"no-mode"))[1]
    for name in ("transient", "exclusive", "auto"):
        assert not publish(vhost, name, b"persistent-to-" + name.encode())
    assert publish(vhost, "", b"fanned-out", exchange="fan")
    assert publish(vhost, "nowhere", b"unroutable") is False
    await stop_node(node)

    assert message_records(tmp_path) == [((durable.store_id,), b"fanned-out")]
    node = await start_node(tmp_path)
    assert contents(node, node.vhost.queues["durable"]) == [(b"fanned-out", False)]
    await stop_node(node)


async def test_settle_in_one_queue_keeps_the_message_in_the_other(tmp_path: Path) -> None:
    """A message logged once for two durable queues is acked in one: the other still has it,
    and it is still logged once."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    first = vhost.declare_queue("first", None, durable=True)
    second = vhost.declare_queue("second", None, durable=True)
    fanout_to(vhost, "first", "second")
    publish(vhost, "", b"shared", exchange="fan")
    first.settle(take(first, 1))
    take(second, 1)  # delivered in the second queue, not acked

    node = await restart(node)
    assert contents(node, node.vhost.queues["first"]) == []
    assert contents(node, node.vhost.queues["second"]) == [(b"shared", True)]
    await stop_node(node)
    assert [ids for ids, _ in message_records(tmp_path)] == [(first.store_id, second.store_id)]


async def test_deleted_then_redeclared_queue_does_not_get_old_messages_back(
    tmp_path: Path,
) -> None:
    """Deleting a queue drops its messages (ready and unacked) for good: a new queue with the
    same name gets a new store id and only what was published to it."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    old = vhost.declare_queue("q", None, durable=True)
    publish(vhost, "q", b"old-ready")
    publish(vhost, "q", b"old-unacked")
    queue_take = old.get(ack_required=True)
    assert queue_take is not None
    vhost.delete_queue("q", None)
    new = vhost.declare_queue("q", None, durable=True)
    assert new.store_id != old.store_id
    publish(vhost, "q", b"new")

    node = await restart(node)
    assert contents(node, node.vhost.queues["q"]) == [(b"new", False)]
    assert node.vhost.queues["q"].store_id == new.store_id
    await stop_node(node)


async def test_purge_settles_ready_messages_but_not_unacked_ones(tmp_path: Path) -> None:
    """Queue.Purge settles every ready message; one out with a consumer is not purged and comes
    back redelivered."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    for n in range(1, 5):
        publish(node.vhost, "q", b"m%d" % n)
    take(queue, 1)
    assert node.vhost.purge_queue("q", None) == 3

    node = await restart(node)
    assert contents(node, node.vhost.queues["q"]) == [(b"m1", True)]
    await stop_node(node)


async def test_read_body_of_recovered_messages_and_bodies_stay_out_of_memory(
    tmp_path: Path,
) -> None:
    """Recovered messages hold no body; read_body fetches the exact bytes (binary, empty,
    larger than a read-ahead) from the log."""
    bodies = [b"", bytes(range(256)) * 3, b"\xce" * 10_000, b"tail"]
    node = await start_node(tmp_path)
    node.vhost.declare_queue("q", None, durable=True)
    for body in bodies:
        publish(node.vhost, "q", body)
    # Before the restart, read_body also works from the unwritten buffer.
    first = list(node.vhost.queues["q"].ready_entries())[1].message
    assert node.store.read_body(first) == bodies[1]

    node = await restart(node)
    ready = list(node.vhost.queues["q"].ready_entries())
    assert [entry.message.body for entry in ready] == [None] * 4
    assert [node.store.read_body(entry.message) for entry in ready] == bodies
    await stop_node(node)


async def test_restore_refuses_an_unconfigured_vhost_and_keeps_its_data(tmp_path: Path) -> None:
    """A vhost missing from the config stops the start (UnknownVhostError naming it) instead of
    dropping its definitions and messages; with the vhost back, everything restores."""
    node = await start_node(tmp_path, names=("/", "/gone"))
    node.vhosts["/gone"].declare_queue("lost", None, durable=True)
    node.vhost.declare_queue("kept", None, durable=True)
    publish(node.vhosts["/gone"], "lost", b"x")
    publish(node.vhost, "kept", b"y")
    await stop_node(node)
    with pytest.raises(UnknownVhostError, match="vhost '/gone'"):
        await start_node(tmp_path)
    node = await start_node(tmp_path, names=("/", "/gone"))
    assert contents(node, node.vhosts["/gone"].queues["lost"]) == [(b"x", False)]
    assert contents(node, node.vhost.queues["kept"]) == [(b"y", False)]
    assert node.restored == (2, 2)
    await stop_node(node)


# ------------------------------------------------------------------------------ garbage collection

SEGMENT = 64 * 1024
BODY = b"b" * 1000


async def _publish_and_ack(node: Node, queue: Queue, count: int) -> None:
    """Publish and ack `count` persistent messages, syncing like confirms would."""
    for _ in range(count):
        publish(node.vhost, queue.name, BODY)
        queue.settle(take(queue, 1))
    assert await synced(node.store) is None


async def _settle_and_collect(node: Node) -> None:
    """Two syncs: the first lets the settles out and runs the collection it scheduled."""
    assert await synced(node.store) is None
    assert await synced(node.store) is None


async def test_settled_segments_are_deleted_and_disk_use_stays_bounded(tmp_path: Path) -> None:
    """Steady publish+ack through a durable queue with 64 KiB segments: old segments are deleted
    as they fill, so disk use stays within a few segments while the total logged is many."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    queue = node.vhost.declare_queue("q", None, durable=True)
    peak = 0
    for _ in range(40):
        await _publish_and_ack(node, queue, 20)
        peak = max(peak, node.wal.disk_usage())
    await _settle_and_collect(node)

    assert node.wal.active_segment >= 12  # about 800 KB went through the log
    assert len(node.wal.segment_ids()) <= 3
    assert peak <= 3 * SEGMENT
    files = list(tmp_path.glob("*.wal"))
    assert {int(path.stem) for path in files} <= set(node.wal.segment_ids())
    assert len(files) <= 3
    assert sum(path.stat().st_size for path in files) <= 3 * SEGMENT
    await stop_node(node)


async def test_one_ack_of_messages_over_several_segments_releases_each_segment(
    tmp_path: Path,
) -> None:
    """A settle counts a run of messages in one segment down at once: one batch whose messages
    lie in several segments, one message of another queue among them, leaves each segment's
    live count right: every segment goes once the message still held is moved out of its own."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    vhost = node.vhost
    queue = vhost.declare_queue("q", None, durable=True)
    vhost.declare_queue("kept", None, durable=True)
    for index in range(400):
        publish(vhost, "q", bytes([index % 256]) * 600)
        if index == 150:
            publish(vhost, "kept", b"k" * 600)
    held = node.vhost.queues["kept"]
    entries = take(queue, 400)
    segments = {entry.message.location[0] for entry in entries}
    assert len(segments) >= 3
    kept = take(held, 1)[0].message
    kept_segment = kept.location[0]
    queue.settle(entries)  # one batch over every segment
    assert all(node.store.live.get(segment, 0) == 0 for segment in segments - {kept_segment})
    assert node.store.live[kept_segment] == 1
    await _settle_and_collect(node)  # the kept message is relocated, its old segment goes
    assert not (segments - {node.wal.active_segment}) & set(node.wal.segment_ids())
    assert node.store.read_body(kept) == b"k" * 600
    await stop_node(node)


async def test_long_lived_message_is_relocated_so_old_segments_go(tmp_path: Path) -> None:
    """One unacked message must not pin the log: the oldest segment's few live messages are
    copied forward and old segments are deleted; after a restart the message is still there,
    once, in order and flagged redelivered; acking it afterwards frees everything."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    parked = node.vhost.declare_queue("parked", None, durable=True)
    queue = node.vhost.declare_queue("q", None, durable=True)
    publish(node.vhost, "parked", b"first")
    publish(node.vhost, "parked", b"pinned")
    (first,) = take(parked, 1)  # delivered, unacked: must come back redelivered
    first_segment = first.message.location[0]
    await _publish_and_ack(node, queue, 300)
    await _settle_and_collect(node)
    await _settle_and_collect(node)

    kept = node.wal.segment_ids()
    assert first_segment not in kept
    assert len(kept) <= 3
    assert first.message.location[0] > first_segment

    node = await restart(node, segment_size=SEGMENT)
    parked = node.vhost.queues["parked"]
    assert contents(node, parked) == [(b"first", True), (b"pinned", False)]
    parked.settle(take(parked, 2))
    await _settle_and_collect(node)
    await _settle_and_collect(node)
    assert len(node.wal.segment_ids()) <= 2
    await stop_node(node)


async def test_segment_with_only_messages_of_a_deleted_queue_is_collected(tmp_path: Path) -> None:
    """Deleting a queue releases the messages it held, so their segments can go."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    node.vhost.declare_queue("doomed", None, durable=True)
    for _ in range(150):
        publish(node.vhost, "doomed", BODY)
    await _settle_and_collect(node)
    assert len(node.wal.segment_ids()) >= 3
    node.vhost.delete_queue("doomed", None)
    await _settle_and_collect(node)
    assert len(node.wal.segment_ids()) == 1
    await stop_node(node)


async def test_rolled_segments_start_with_a_snapshot_and_definitions_survive_collection(
    tmp_path: Path,
) -> None:
    """Every segment after the first begins with a SNAPSHOT, so after the segments holding the
    original declarations are deleted, a restart still has the queue, exchange and bindings,
    and the queue's unacked and ready messages."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    vhost = node.vhost
    vhost.declare_exchange("x", "topic", durable=True, arguments={"k": {"nested": [1]}})
    vhost.declare_exchange("x2", "fanout", durable=True)
    queue = vhost.declare_queue("q", None, durable=True, arguments={"x-max-length": 100000})
    vhost.bind("x", "q", "a.*", None)
    vhost.bind("x", "x2", "b.#", None, to_exchange=True)
    first_segment = node.wal.active_segment
    await _publish_and_ack(node, queue, 200)
    publish(vhost, "q", b"last-unacked")
    publish(vhost, "q", b"last-ready")
    take(queue, 1)
    await _settle_and_collect(node)
    assert first_segment not in node.wal.segment_ids()
    await stop_node(node)

    on_disk = log_records(tmp_path)
    first_of_each = {}
    for segment, offset, record_type, _ in on_disk:
        if offset == 0:
            first_of_each[segment] = record_type
    assert first_of_each and set(first_of_each.values()) == {records.SNAPSHOT}
    assert min(first_of_each) > first_segment

    node = await start_node(tmp_path, segment_size=SEGMENT)
    vhost = node.vhost
    assert vhost.exchanges["x"].arguments == {"k": {"nested": [1]}}
    assert bindings_of(vhost, "x") == {("q", "a.*"), ("x2", "b.#")}
    assert vhost.queues["q"].arguments == {"x-max-length": 100000}
    assert contents(node, vhost.queues["q"]) == [(b"last-unacked", True), (b"last-ready", False)]
    # Ids keep growing after the restart although the segments that used them are gone.
    publish(vhost, "q", b"after")
    ids = [entry.message.msg_id for entry in vhost.queues["q"].ready_entries()]
    assert ids == sorted(ids) and ids[-1] > 200
    await stop_node(node)


async def test_collection_never_deletes_the_last_durable_copy_of_definitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash at any moment must leave the definitions on disk. Here: a queue delete frees the
    only segment and asks for a collection; while that sync's write is in flight, a publish
    rolls to segment 2 (snapshot still in memory); the collection then runs. We copy the data
    directory at that moment (a crash) and recover from the copy."""
    node = await start_node(tmp_path / "wal", segment_size=4096)
    vhost = node.vhost
    vhost.declare_exchange("keep-x", "direct", durable=True)
    vhost.declare_queue("keep", None, durable=True)
    vhost.bind("keep-x", "keep", "k", None)
    vhost.declare_queue("doomed", None, durable=True)
    publish(vhost, "doomed", b"small")
    assert await synced(node.store) is None
    assert node.wal.segment_ids() == [1]

    real_fsync, real_open = os.fsync, os.open
    in_fsync, release_fsync = threading.Event(), threading.Event()
    release_create = threading.Event()

    def gated_fsync(fd: int) -> None:
        if not release_fsync.is_set():
            in_fsync.set()
            release_fsync.wait(5)
        real_fsync(fd)

    def gated_open(path: object, flags: int, *args: int) -> int:
        if str(path).endswith("0000000002.wal") and flags & os.O_CREAT:
            release_create.wait(5)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", gated_fsync)
    monkeypatch.setattr(os, "open", gated_open)
    crash_copy = tmp_path / "crash"
    try:
        vhost.delete_queue("doomed", None)  # segment 1 holds nothing live: collection requested
        batch: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        node.store.sync(batch.set_result)  # fires right after the collection's callback
        await _wait(in_fsync.is_set)
        publish(vhost, "keep", b"x" * 4096)  # rolls: segment 2 = snapshot + this message
        assert node.wal.active_segment == 2
        release_fsync.set()
        assert await asyncio.wait_for(batch, 5) is None
        shutil.copytree(tmp_path / "wal", crash_copy)  # what a crash now would leave
    finally:
        release_fsync.set()
        release_create.set()
        await node.wal.close()
        monkeypatch.undo()

    crashed = await start_node(crash_copy)
    try:
        assert "keep" in crashed.vhost.queues
        assert bindings_of(crashed.vhost, "keep-x") == {("keep", "k")}
    finally:
        await stop_node(crashed)


async def _wait(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Let the loop run until condition() holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


# ------------------------------------------------------------------------------ sync


async def test_sync_callback_fires_only_after_the_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """store.sync(callback) reports success only once the segment holding the message was
    fsynced, and the pending SETTLE/DELIVERED records go out in that same sync."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    assert await synced(node.store) is None
    fsynced: list[str] = []
    real_fsync = os.fsync

    def logged_fsync(fd: int) -> None:
        real_fsync(fd)
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", logged_fsync)
    publish(node.vhost, "q", b"confirm-me")
    take(queue, 1)
    seen_at_callback: list[list[str]] = []
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def callback(error: BaseException | None) -> None:
        seen_at_callback.append(list(fsynced))
        done.set_result(error)

    node.store.sync(callback)
    assert await asyncio.wait_for(done, 5) is None
    segment_file = tmp_path / f"{node.wal.active_segment:010d}.wal"
    assert str(segment_file) in seen_at_callback[0]
    data = segment_file.read_bytes()
    assert b"confirm-me" in data
    monkeypatch.undo()
    await node.wal.close()
    types = [record_type for _, _, record_type, _ in log_records(tmp_path)]
    assert types[-2:] == [records.MESSAGE_AT, records.DELIVERED]


async def test_fsync_error_fails_the_sync_and_nothing_after_looks_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at fsync reaches the sync callback (the confirm would be nacked). After that
    a persistent publish is still routed but is not logged and its sync fails too (nack, never
    a false ack), a durable declare is refused with 541, and acks do not raise."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    assert await synced(node.store) is None

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert publish(node.vhost, "q", b"never-confirmed")
    error = await synced(node.store)
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert node.wal.failed is error

    with pytest.raises(LogUnavailable) as unlogged:  # the channel nacks it at once
        publish(node.vhost, "q", b"after-failure")
    assert unlogged.value.code == INTERNAL_ERROR
    # not enqueued:
    assert [entry.message.body for entry in queue.ready_entries()] == [b"never-confirmed"]
    queue.settle(take(queue, 1))  # settles after the failure are dropped, not raised
    with pytest.raises(ChannelException) as refused:
        node.vhost.declare_queue("another", None, durable=True)
    assert refused.value.code == INTERNAL_ERROR
    assert "write-ahead log" in refused.value.reply_text
    assert not publish(node.vhost, "q", b"transient-still-fine", mode=1)
    assert await synced(node.store) is error
    await node.wal.close()
    monkeypatch.undo()
    # The failed batch was written, only not fsynced: it may come back (it was nacked, so a
    # copy is harmless). Nothing published after the failure is in the log.
    assert [body for _, body in message_records(tmp_path)] == [b"never-confirmed"]


@pytest.mark.pure_python
async def test_refused_definition_changes_leave_memory_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change is applied in memory only after its record is logged: when the log refuses a
    bind, unbind or exchange delete, the model still matches what a restart would rebuild."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    vhost.declare_exchange("payments", "direct", durable=True)
    vhost.declare_queue("q", None, durable=True)
    vhost.bind("payments", "q", "kept", {})

    def refuse(*args: object) -> None:
        raise OSError(errno.EIO, "simulated log failure")

    monkeypatch.setattr(node.wal, "append", refuse)
    for change in (
        lambda: vhost.bind("payments", "q", "new", {}),
        lambda: vhost.unbind("payments", "q", "kept", {}),
        lambda: vhost.delete_exchange("payments"),
    ):
        with pytest.raises(LogUnavailable):
            change()
        assert bindings_of(vhost, "payments") == {("q", "kept")}
        assert "payments" in vhost.exchanges
    assert set(vhost.queues["q"].incoming) == {
        (id(vhost.exchanges["payments"]), *binding.key)
        for binding in vhost.exchanges["payments"].bindings.values()
    }
    monkeypatch.undo()
    await stop_node(node)


@pytest.mark.pure_python
async def test_a_snapshot_that_cannot_be_written_fails_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record that rolls a segment waits for the new segment's snapshot; if the snapshot
    cannot be written, the log fails: the publish is refused (nack), earlier unsynced confirms
    fail, and no segment is collected, so the last good snapshot stays on disk."""
    node = await start_node(tmp_path, segment_size=64 * 1024)
    node.vhost.declare_queue("q", None, durable=True)
    assert await synced(node.store) is None

    def broken_snapshot() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(node.store, "write_snapshot", broken_snapshot)
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    with pytest.raises(LogUnavailable):
        for number in range(200):
            publish(node.vhost, "q", b"%03d" % number + b"x" * 1000)
            if not done.done() and number == 10:
                node.store.sync(done.set_result)
    assert isinstance(node.wal.failed, RecursionError)
    assert isinstance(await asyncio.wait_for(done, 5), RecursionError)
    assert isinstance(await synced(node.store), RecursionError)
    segments_before = node.wal.segment_ids()
    await node.wal.close()
    monkeypatch.undo()
    assert node.wal.segment_ids() == segments_before
    restarted = await start_node(tmp_path)
    assert "q" in restarted.vhost.queues  # the snapshot that declares it is still there
    await stop_node(restarted)


class CountingReady:
    """Counts the ready entries anyone iterates over in a queue."""

    seen = 0

    @classmethod
    def wrap(cls, queue: Queue) -> None:
        original = queue.ready_entries

        def counting() -> Iterator[QueuedMessage]:
            for entry in original():
                cls.seen += 1
                yield entry

        queue.ready_entries = counting  # type: ignore[method-assign]


@pytest.mark.pure_python
async def test_compaction_looks_at_what_the_segment_holds_not_every_queued_message(
    tmp_path: Path,
) -> None:
    """Finding 9: compaction used to scan every queued message of every durable queue on the
    event loop, at every roll while one long-lived message pinned a segment. Queues hold logged
    messages in id order, so it now reads each queue's head only up to the segment's last id:
    with 5,000 messages backed up behind the pinned one, it looks at a handful. A backlog is
    not copied from segment to segment either."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    parked = node.vhost.declare_queue("parked", None, durable=True)
    work = node.vhost.declare_queue("work", None, durable=True)
    backlog = node.vhost.declare_queue("backlog", None, durable=True)
    CountingReady.wrap(backlog)
    publish(node.vhost, "parked", b"long-lived")
    (pinned,) = take(parked, 1)
    first_segment = pinned.message.location[0]
    await _publish_and_ack(node, work, 100)  # the rest of the first segments is garbage
    for _ in range(5000):
        publish(node.vhost, "backlog", b"k" * 100)
    await _settle_and_collect(node)
    await _settle_and_collect(node)
    assert pinned.message.location[0] > first_segment  # relocated
    assert first_segment not in node.wal.segment_ids()
    CountingReady.seen = 0
    for _ in range(3):  # more rolls, more collections: the backlog's segments stay as they are
        await _publish_and_ack(node, work, 100)
        await _settle_and_collect(node)
    assert CountingReady.seen < 50, f"compaction iterated {CountingReady.seen} backlog entries"
    node = await restart(node, segment_size=SEGMENT)
    assert contents(node, node.vhost.queues["parked"]) == [(b"long-lived", True)]
    assert node.vhost.queues["backlog"].message_count == 5000
    await stop_node(node)


async def test_a_delivery_whose_mark_was_not_logged_comes_back_redelivered(
    tmp_path: Path,
) -> None:
    """Finding 13: a DELIVERED mark reaches the log with the next group commit, the delivery
    goes out at once. A crash in between used to bring the message back redelivered=false
    although a consumer had it. After an unclean shutdown every recovered message now comes
    back redelivered (and stays so across later clean restarts); after a clean one the marks
    are exact."""
    live = tmp_path / "live"
    node = await start_node(live)
    queue = node.vhost.declare_queue("q", None, durable=True)
    for body in (b"0", b"1", b"2"):
        publish(node.vhost, "q", body)
    assert await synced(node.store) is None
    take(queue, 1)  # handed to a consumer; its mark is still in memory
    crashed = tmp_path / "crashed"
    shutil.copytree(live, crashed)  # kill -9 now: the files as they are
    await stop_node(node)

    node = await start_node(live)  # after the clean stop: exact marks
    assert contents(node, node.vhost.queues["q"]) == [(b"0", True), (b"1", False), (b"2", False)]
    await stop_node(node)

    node = await start_node(crashed)
    assert contents(node, node.vhost.queues["q"]) == [(b"0", True), (b"1", True), (b"2", True)]
    publish(node.vhost, "q", b"3")  # published after the crash: never delivered
    node = await restart(node)  # a clean restart remembers what the crash left uncertain
    assert contents(node, node.vhost.queues["q"]) == [
        (b"0", True),
        (b"1", True),
        (b"2", True),
        (b"3", False),
    ]
    await stop_node(node)


async def test_an_idle_backlog_is_not_compacted_over_and_over(tmp_path: Path) -> None:
    """A backlog larger than a segment used to be copied forward at every collection, each copy
    rolling a segment that scheduled the next collection: an idle broker rolled hundreds of
    segments a second. Live messages that fill their segment are left where they are."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    node.vhost.declare_queue("parked", None, durable=True)
    for _ in range(300):  # 600 KB: about ten segments, all live
        publish(node.vhost, "parked", b"x" * 2048)
    await _settle_and_collect(node)
    settled = node.wal.segment_ids()
    for _ in range(10):
        await _settle_and_collect(node)
    assert node.wal.segment_ids() == settled
    await stop_node(node)


def deepest(depth: int = MAX_DEPTH) -> dict:
    """An argument table nested as deep as a client may send."""
    table: dict = {"leaf": 1}
    for _ in range(depth - 1):
        table = {"a": table}
    return table


async def test_every_definition_a_client_may_send_can_be_snapshotted(tmp_path: Path) -> None:
    """A snapshot nests each definition's arguments three levels down (snapshot, list,
    definition): arguments as deep as the wire allows used to be accepted at declare and then
    fail every snapshot, failing the log. Records now allow those levels on top."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    node.vhost.declare_exchange("deep-x", "direct", durable=True, arguments=deepest())
    node.vhost.declare_queue("deep-q", None, durable=True, arguments=deepest())
    node.vhost.bind("deep-x", "deep-q", "k", deepest())
    for _ in range(200):  # several rolls, each writing a snapshot
        publish(node.vhost, "deep-q", BODY)
    assert await synced(node.store) is None
    assert node.wal.failed is None and len(node.wal.segment_ids()) > 2
    node = await restart(node, segment_size=SEGMENT)
    assert node.vhost.queues["deep-q"].arguments == deepest()
    assert node.vhost.exchanges["deep-x"].arguments == deepest()
    assert bindings_of(node.vhost, "deep-x") == {("deep-q", "k")}
    assert node.vhost.queues["deep-q"].message_count == 200
    await stop_node(node)
