"""Queue features over the write-ahead log: TTL deadlines survive restarts (a message that
expired while the broker was down is dead-lettered at recovery, not delivered), queue expiry and
priority order survive restarts, and a dead-lettered message moves with one record, so no cut
of the log finds it in both queues or in neither."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from broker.core.properties import decode_properties
from broker.core.queue import Queue
from broker.core.vhost import VirtualHost
from broker.store import records
from tests.unit.helpers import ManualClock, make_message
from tests.unit.test_durable_store import (
    SEGMENT,
    _publish_and_ack,
    _settle_and_collect,
    log_records,
    restart,
    start_node,
    stop_node,
    synced,
)

DLX_TO_DEAD = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}


def _publish(vhost: VirtualHost, queue: str, body: bytes, **properties: object) -> None:
    message = make_message(queue, body, delivery_mode=2, **properties)
    vhost.publish(vhost.exchanges[""], message)


def _bodies(queue: Queue) -> list[bytes]:
    return [
        entry.message.body
        if entry.message.body is not None
        else queue.store.read_body(entry.message)
        for entry in queue.ready_entries()
    ]


def _declare_pair(vhost: VirtualHost, **arguments: object) -> None:
    vhost.declare_queue("dead", None, durable=True)
    vhost.declare_queue("work", None, durable=True, arguments={**DLX_TO_DEAD, **arguments})


async def test_a_message_that_expired_while_down_is_dead_lettered_at_recovery(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    node = await start_node(tmp_path, clock=clock)
    _declare_pair(node.vhost, **{"x-message-ttl": 1000})
    _publish(node.vhost, "work", b"order", expiration="60000")
    clock = ManualClock(clock.time + 0.5)  # a new process: the old one's timers are gone
    node = await restart(node, clock=clock)
    work, dead = node.vhost.queues["work"], node.vhost.queues["dead"]
    clock.advance(0.4)  # 0.9 s after the publish: the deadline came through the restart
    assert (work.message_count, dead.message_count) == (1, 0)
    await stop_node(node)
    clock = ManualClock(clock.time + 5)  # the broker is down when the deadline passes
    node = await start_node(tmp_path, clock=clock)
    work, dead = node.vhost.queues["work"], node.vhost.queues["dead"]
    assert work.get(ack_required=False) is None  # never delivered, even before the timer
    clock.advance(0)
    assert (work.message_count, dead.message_count) == (0, 1)
    node = await restart(node, clock=ManualClock(clock.time))
    work, dead = node.vhost.queues["work"], node.vhost.queues["dead"]
    assert (work.message_count, dead.message_count) == (0, 1)
    (entry,) = dead.ready_entries()
    headers = decode_properties(entry.message.header)["headers"]
    assert headers["x-death"][0]["reason"] == "expired"
    assert headers["x-death"][0]["original-expiration"] == "60000"
    assert entry.redelivered is False
    await stop_node(node)


async def test_queue_expiry_and_priority_order_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    node = await start_node(tmp_path, clock=clock)
    node.vhost.declare_queue("short-lived", None, durable=True, arguments={"x-expires": 1000})
    node.vhost.declare_queue("prio", None, durable=True, arguments={"x-max-priority": 9})
    for body, priority in ((b"low", 1), (b"high", 9), (b"none", None), (b"mid", 5)):
        props = {} if priority is None else {"priority": priority}
        _publish(node.vhost, "prio", body, **props)
    clock = ManualClock(clock.time)
    node = await restart(node, clock=clock)
    assert "short-lived" in node.vhost.queues
    prio = node.vhost.queues["prio"]
    assert _bodies(prio) == [b"high", b"mid", b"low", b"none"]
    clock.advance(1.1)  # unused since the restart: deleted, and the log says so
    assert "short-lived" not in node.vhost.queues
    node = await restart(node, clock=ManualClock(clock.time))
    assert "short-lived" not in node.vhost.queues
    await stop_node(node)


async def _moved_log(directory: Path) -> None:
    """A rejected persistent message dead-lettered from one durable queue to another."""
    node = await start_node(directory)
    _declare_pair(node.vhost)
    _publish(node.vhost, "work", b"order")
    work = node.vhost.queues["work"]
    entry = work.get(ack_required=True)
    assert entry is not None
    work.reject([entry])
    assert await synced(node.store) is None
    await node.wal.close()  # a crash: no clean shutdown record


async def test_a_dead_letter_move_is_one_record_and_no_cut_of_the_log_splits_it(
    tmp_path: Path,
) -> None:
    """Cut the log after every record (as a crash at that point leaves it): each recovery finds
    the message in exactly one queue, the source before the MOVE record and the target after."""
    source_dir = tmp_path / "source"
    await _moved_log(source_dir)
    log = log_records(source_dir)
    kinds = [record_type for _, _, record_type, _ in log]
    assert kinds.count(records.MOVE) == 1
    move_at = kinds.index(records.MOVE)
    assert records.SETTLE not in kinds[move_at:]  # the settle travels inside the MOVE
    published_at = kinds.index(records.MESSAGE_AT)
    for cut, (segment, offset, _, _) in enumerate(log):
        end = offset + 1  # inside this record: a torn tail recovery truncates
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(source_dir, copy)
        cut_segment = copy / f"{segment:010d}.wal"
        for later in copy.glob("*.wal"):
            if later.name > cut_segment.name:
                later.unlink()
        with cut_segment.open("r+b") as handle:
            handle.truncate(end)
        (copy / "synced").unlink(missing_ok=True)
        node = await start_node(copy)
        queues = node.vhost.queues
        if cut > published_at:  # the message was confirmed: it must be somewhere, once
            held = queues["work"].message_count + queues["dead"].message_count
            where = "work" if queues["work"].message_count else "dead"
            assert held == 1, f"cut inside record {cut}: the message is in {held} queues"
            assert where == ("work" if cut <= move_at else "dead"), f"cut {cut}"
        await node.wal.close()


async def test_a_moved_message_keeps_its_segment_until_the_move_is_written(
    tmp_path: Path,
) -> None:
    """The source of a dead-letter move is released (its segment may be deleted) only after a
    sync requested once the MOVE record was appended: a segment deletion already under way
    must not see it released while the MOVE is still in memory."""
    node = await start_node(tmp_path)
    _declare_pair(node.vhost)
    _publish(node.vhost, "work", b"order")
    work = node.vhost.queues["work"]
    entry = work.get(ack_required=True)
    assert entry is not None
    segment = entry.message.location[0]
    live = node.store.live[segment]
    work.reject([entry])
    await asyncio.sleep(0)  # the turn ends: the release waits for the sync it requested
    assert node.store.live[segment] == live + 1  # the copy counts, the source still does
    assert await synced(node.store) is None
    assert node.store.live[segment] == live  # the copy lives in this segment too; source gone
    await stop_node(node)


async def test_compaction_finds_old_messages_behind_newer_ones_in_priority_order(
    tmp_path: Path,
) -> None:
    """A priority queue serves a newer high-priority message before an older one: compaction
    of the older one's segment still finds it (the head-first scan falls back to a full one)
    and the segment goes; both messages survive the restart."""
    node = await start_node(tmp_path, segment_size=SEGMENT)
    prio = node.vhost.declare_queue("prio", None, durable=True, arguments={"x-max-priority": 9})
    work = node.vhost.declare_queue("filler", None, durable=True)
    _publish(node.vhost, "prio", b"old-low", priority=0)
    first_segment = next(iter(prio.ready_entries())).message.location[0]
    await _publish_and_ack(node, work, 100)
    _publish(node.vhost, "prio", b"new-high", priority=9)
    for _ in range(3):
        await _publish_and_ack(node, work, 100)
        await _settle_and_collect(node)
    assert first_segment not in node.wal.segment_ids()
    node = await restart(node, segment_size=SEGMENT)
    assert _bodies(node.vhost.queues["prio"]) == [b"new-high", b"old-low"]
    await stop_node(node)


async def test_a_queue_logged_with_arguments_now_refused_still_starts(tmp_path: Path) -> None:
    """Older Warrens accepted arguments without checking them: a data directory holding such a
    durable queue starts, the queue keeps its messages and acts on none of its arguments."""
    node = await start_node(tmp_path)
    queue_id = node.store.next_queue_id
    node.store.next_queue_id += 1
    bad = {"x-message-ttl": "60000", "x-delivery-limit": 3}
    node.store._append_table(
        records.QUEUE_DECLARE, {"vhost": "/", "name": "legacy", "id": queue_id, "arguments": bad}
    )
    node = await restart(node)
    legacy = node.vhost.queues["legacy"]
    assert legacy.arguments == bad and legacy.settings.message_ttl is None
    _publish(node.vhost, "legacy", b"kept")
    node = await restart(node)
    assert _bodies(node.vhost.queues["legacy"]) == [b"kept"]
    await stop_node(node)


async def test_a_queue_left_over_its_length_limit_by_a_crash_is_trimmed_at_recovery(
    tmp_path: Path,
) -> None:
    """Drops past x-max-length are logged lazily, like acks: a crash before that leaves the
    queue over its limit in the log. Recovery trims it (drop-head) and logs the drop."""
    node = await start_node(tmp_path)
    node.vhost.declare_queue("capped", None, durable=True, arguments={"x-max-length": 2})
    for body in (b"a", b"b", b"c"):
        _publish(node.vhost, "capped", body)
    node.store._settles.clear()  # the crash: the drop's SETTLE never reached the log
    assert await synced(node.store) is None
    await node.wal.close()
    node = await start_node(tmp_path)
    assert _bodies(node.vhost.queues["capped"]) == [b"b", b"c"]
    node = await restart(node)
    assert _bodies(node.vhost.queues["capped"]) == [b"b", b"c"]
    await stop_node(node)


async def test_delivery_counts_survive_restarts_and_a_crash_counts_as_a_return(
    tmp_path: Path,
) -> None:
    """A poison message that takes the broker down with it while out: each crash counts as a
    return (its deliveries were logged), so it cannot get a fresh budget; past the limit it is
    dead-lettered at recovery. Returns by consumers survive clean restarts too."""
    node = await start_node(tmp_path)
    _declare_pair(node.vhost, **{"x-delivery-limit": 2})
    _publish(node.vhost, "work", b"poison")
    work = node.vhost.queues["work"]
    work.requeue([work.get(ack_required=True)])  # type: ignore[list-item]
    node = await restart(node)
    (entry,) = node.vhost.queues["work"].ready_entries()
    assert entry.returns == 1
    for crash in range(2):
        work = node.vhost.queues["work"]
        assert work.get(ack_required=True) is not None  # out when the broker dies
        assert await synced(node.store) is None
        await node.wal.close()  # kill -9: no clean shutdown
        node = await start_node(tmp_path)
        if crash == 0:
            (entry,) = node.vhost.queues["work"].ready_entries()
            assert entry.returns == 2
    assert node.vhost.queues["work"].message_count == 0
    assert await synced(node.store) is None
    node = await restart(node)
    assert node.vhost.queues["work"].message_count == 0
    (copy,) = node.vhost.queues["dead"].ready_entries()
    headers = decode_properties(copy.message.header)["headers"]
    assert headers["x-death"][0]["reason"] == "delivery_limit"
    await stop_node(node)


async def test_three_crashes_with_compaction_between_dead_letter_a_poison_message(
    tmp_path: Path,
) -> None:
    """Each restart relocates the pinned message (compaction) and logs the restart's return;
    marks written just before a relocated copy, whose original segment is already gone, must
    not be counted twice: the third crash takes it past x-delivery-limit 2, not the second."""
    node = await start_node(tmp_path)
    _declare_pair(node.vhost, **{"x-delivery-limit": 2})
    _publish(node.vhost, "work", b"poison")
    counts = []
    for _ in range(3):
        entry = node.vhost.queues["work"].get(ack_required=True)
        assert entry is not None
        counts.append(entry.returns)
        assert await synced(node.store) is None
        await node.wal.close()  # kill -9 while it is out
        node = await start_node(tmp_path)
    assert counts == [0, 1, 2]
    assert node.vhost.queues["work"].message_count == 0
    assert _bodies(node.vhost.queues["dead"]) == [b"poison"]
    await stop_node(node)
