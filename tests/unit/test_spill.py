"""Transient messages paged out to the spill files while memory is past the paging ratio
(broker/store/spill.py): order and bodies kept through window, tail and spill files; spill
segments freed as messages come back; purge, delete, expiry deep in the tail and requeue of a
message read back; what a restart and a failing spill disk do."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from broker.core.paging import WINDOW_ENTRIES, PagedFifoStore
from broker.core.queue import Queue
from broker.store.spill import SpillFiles
from tests.unit.helpers import ManualClock, make_message
from tests.unit.test_durable_store import (
    Node,
    fanout_to,
    start_node,
    stop_node,
    synced,
    take,
)
from tests.unit.test_paging import body_of, drain

SPILL_SEGMENT = 64 * 1024  # small spill files: several of them, freed one by one


async def spilling_node(directory: Path, active: bool = True, **options: object) -> Node:
    spill = SpillFiles(directory / "spill", SPILL_SEGMENT)
    spill.active = active
    return await start_node(directory / "wal", spill=spill, **options)  # type: ignore[arg-type]


def publish_transient(node: Node, queue: str, count: int, start: int = 0, **props: object) -> None:
    vhost = node.vhost
    for index in range(start, start + count):
        message = make_message(queue, body_of(index), delivery_mode=1, **props)
        vhost.publish(vhost.get_exchange(""), message)


def spill_of(node: Node) -> SpillFiles:
    assert node.store.spill_files is not None
    return node.store.spill_files


async def settle_spill(node: Node) -> None:
    """Let the spill files write and collect what was read back."""
    for _ in range(3):
        done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        spill_of(node).log.sync(done.set_result)
        assert await done is None
        await asyncio.sleep(0)


def spill_files(node: Node) -> list[Path]:
    return sorted((node.directory.parent / "spill").glob("*.wal"))


async def test_transient_messages_past_the_window_go_to_the_spill_files_and_come_back(
    tmp_path: Path,
) -> None:
    """While memory is short, transient messages past the window become compact records with
    their bodies on disk (not in memory); they come back in order with their bodies, and the
    spill segments go once read back."""
    node = await spilling_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    count = WINDOW_ENTRIES + 2000
    publish_transient(node, "q", count)
    assert queue.paged_count == 2000
    assert spill_of(node).count == 2000
    assert queue.resident_bytes < 2000 * 100 + WINDOW_ENTRIES * 1000  # no body past the window
    await settle_spill(node)
    assert len(spill_files(node)) > 2
    got = drain(queue, count)
    assert got == [body_of(index) for index in range(count)]
    assert spill_of(node).count == 0
    await settle_spill(node)
    assert len(spill_files(node)) == 1  # the active one
    for path in node.directory.glob("*.wal"):  # transient: never in the write-ahead log
        assert body_of(300) not in path.read_bytes()
    await stop_node(node)


async def test_without_memory_pressure_transient_messages_stay_in_memory(tmp_path: Path) -> None:
    node = await spilling_node(tmp_path, active=False)
    queue = node.vhost.declare_queue("q", None, durable=True)
    publish_transient(node, "q", WINDOW_ENTRIES + 50)
    assert queue.paged_count == 0
    assert spill_of(node).count == 0
    assert drain(queue, WINDOW_ENTRIES + 50) == [body_of(i) for i in range(WINDOW_ENTRIES + 50)]
    await stop_node(node)


async def test_persistent_and_spilled_transient_messages_keep_their_order(tmp_path: Path) -> None:
    node = await spilling_node(tmp_path)
    vhost = node.vhost
    queue = vhost.declare_queue("q", None, durable=True)
    count = WINDOW_ENTRIES + 600
    for index in range(count):
        message = make_message("q", body_of(index), delivery_mode=2 if index % 3 else 1)
        vhost.publish(vhost.get_exchange(""), message)
    assert 0 < spill_of(node).count < 600
    assert drain(queue, count) == [body_of(index) for index in range(count)]
    await stop_node(node)


async def test_purge_and_delete_free_the_spilled_messages(tmp_path: Path) -> None:
    node = await spilling_node(tmp_path)
    first = node.vhost.declare_queue("first", None, durable=True)
    node.vhost.declare_queue("second", None, durable=True)
    publish_transient(node, "first", WINDOW_ENTRIES + 700)
    publish_transient(node, "second", WINDOW_ENTRIES + 700)
    assert spill_of(node).count == 1400
    assert first.purge() == WINDOW_ENTRIES + 700
    assert spill_of(node).count == 700
    node.vhost.delete_queue("second", None)
    assert spill_of(node).count == 0
    await settle_spill(node)
    assert len(spill_files(node)) == 1
    await stop_node(node)


async def test_a_spilled_message_expires_where_it_is_and_is_dead_lettered_whole(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    node = await spilling_node(tmp_path, clock=clock)
    vhost = node.vhost
    dead = vhost.declare_queue("dead", None, durable=True)
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}
    queue = vhost.declare_queue("q", None, durable=True, arguments=arguments)
    publish_transient(node, "q", WINDOW_ENTRIES + 10)
    publish_transient(node, "q", 1, start=9999, expiration="500")
    publish_transient(node, "q", 10, start=WINDOW_ENTRIES + 10)
    assert spill_of(node).count == 21
    clock.advance(0.6)
    assert (queue.message_count, dead.message_count) == (WINDOW_ENTRIES + 20, 1)
    (entry,) = take(dead, 1)
    assert entry.message.body == body_of(9999)
    assert b"x-death" in entry.message.header
    rest = drain(queue, WINDOW_ENTRIES + 20)
    assert rest == [body_of(index) for index in range(WINDOW_ENTRIES + 20)]
    assert spill_of(node).count == 0
    await stop_node(node)


async def test_a_spilled_message_read_back_and_requeued_keeps_its_body(tmp_path: Path) -> None:
    node = await spilling_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    publish_transient(node, "q", WINDOW_ENTRIES + 5)
    drain(queue, WINDOW_ENTRIES)
    (entry,) = take(queue, 1)
    assert entry.message.body == body_of(WINDOW_ENTRIES)
    queue.requeue([entry])
    await settle_spill(node)  # its spill segment may go now
    assert drain(queue, 5) == [body_of(WINDOW_ENTRIES + index) for index in range(5)]
    await stop_node(node)


async def test_spilled_messages_do_not_survive_a_restart(tmp_path: Path) -> None:
    """Transient means gone after a restart, spilled or not; the spill files are emptied."""
    node = await spilling_node(tmp_path)
    node.vhost.declare_queue("q", None, durable=True)
    publish_transient(node, "q", WINDOW_ENTRIES + 300)
    node.vhost.publish(
        node.vhost.get_exchange(""), make_message("q", b"persistent", delivery_mode=2)
    )
    assert await synced(node.store) is None
    await stop_node(node)
    node = await spilling_node(tmp_path)
    queue: Queue = node.vhost.queues["q"]
    assert queue.message_count == 1
    assert drain(queue, 1) == [b"persistent"]
    assert spill_of(node).count == 0
    assert len(spill_files(node)) <= 1
    await stop_node(node)


async def test_a_spill_disk_that_fails_keeps_the_messages_in_memory(tmp_path: Path) -> None:
    node = await spilling_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    await spill_of(node).close()  # appends now fail: as a failed spill disk does
    publish_transient(node, "q", WINDOW_ENTRIES + 20)
    assert queue.paged_count == 0
    assert drain(queue, WINDOW_ENTRIES + 20) == [body_of(i) for i in range(WINDOW_ENTRIES + 20)]
    node.store.spill_files = None  # already closed
    await stop_node(node)


async def test_compaction_passes_over_spilled_records(tmp_path: Path) -> None:
    """Spilled records point into the spill files, not the log: compaction looking for the
    compact records in log segment N never takes spilled ones in spill segment N for them."""
    node = await spilling_node(tmp_path)
    vhost = node.vhost
    queue = vhost.declare_queue("q", None, durable=True)
    for index in range(WINDOW_ENTRIES + 30):
        vhost.publish(vhost.get_exchange(""), make_message("q", body_of(index), delivery_mode=2))
    publish_transient(node, "q", 40)
    segment = node.wal.active_segment
    assert segment in spill_of(node).waiting  # both files number their first segment alike
    assert len(queue.paged_in_segment(segment)) == 30  # the logged ones only
    await stop_node(node)


@pytest.mark.pure_python
async def test_a_spill_disk_failing_under_writes_loses_no_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spill files' disk fails while spilled messages wait to be written: the failure is
    logged as the spill files' (nothing durable is affected), the messages it holds in memory
    are still read back, later ones stay in memory, and every message comes out in order."""
    node = await spilling_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    spill = spill_of(node)

    def full(chunks: object) -> None:
        raise OSError(28, "No space left on device")

    spill.log._writer.write = full  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "warren.wal"):
        publish_transient(node, "q", WINDOW_ENTRIES + 100)
        await asyncio.sleep(0.05)  # the flusher tries, and fails
        publish_transient(node, "q", 100, start=WINDOW_ENTRIES + 100)
    (failure,) = [r for r in caplog.records if r.getMessage() == "wal.failed"]
    assert "nothing durable is affected" in failure.fields["consequence"]  # type: ignore[attr-defined]
    assert spill.count == 100  # the first hundred, held in memory by the failed log
    count = WINDOW_ENTRIES + 200
    assert drain(queue, count) == [body_of(index) for index in range(count)]
    node.store.spill_files = None  # failed: closing it would raise nothing new
    await spill.close()
    await stop_node(node)


async def test_huge_transient_messages_spill_and_come_back_whole(tmp_path: Path) -> None:
    """Bodies far larger than a spill segment (3 MiB against 64 KiB) each get a segment of
    their own, come back whole, in order, and their segments go once read back."""
    node = await spilling_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    bodies = [bytes([65 + index]) * (3 << 20) for index in range(6)]
    for body in bodies:
        node.vhost.publish(node.vhost.get_exchange(""), make_message("q", body, delivery_mode=1))
    assert spill_of(node).count >= 5  # past the window's 1 MiB of bodies
    await settle_spill(node)
    got = []
    while (entry := queue.get(ack_required=False)) is not None:
        got.append(entry.message.body)
    assert got == bodies
    await settle_spill(node)
    assert spill_of(node).count == 0 and len(spill_files(node)) == 1
    await stop_node(node)


async def test_a_spilled_message_the_disk_cannot_give_back_is_dropped_not_parked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spill files lose their bytes: a transient message there cannot come back, so it is
    logged (message.unreadable) and dropped, its spill record released; not set aside for a
    restart as a logged message would be, since no restart could bring it back. The window's
    messages are delivered."""
    node = await spilling_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    publish_transient(node, "q", WINDOW_ENTRIES + 50)
    await settle_spill(node)
    for path in spill_files(node):
        path.write_bytes(b"")  # the disk loses what was written
    with caplog.at_level(logging.ERROR):
        got = []
        while (entry := queue.get(ack_required=False)) is not None:
            got.append(entry.message.body)
    assert got == [body_of(index) for index in range(WINDOW_ENTRIES)]
    assert "message.unreadable" in caplog.text
    assert queue.message_count == 0
    assert spill_of(node).count == 0
    assert isinstance(queue._ready, PagedFifoStore) and not queue._ready.unreadable
    await stop_node(node)


async def test_a_queue_that_does_not_survive_restarts_spills_only_while_memory_is_short(
    tmp_path: Path,
) -> None:
    """A non-durable queue logs nothing: while memory is plentiful its window has no bound (a
    plain FIFO's objects), and once it is short the transient messages past the window go to
    the spill files and come back in order, bodies and all."""
    node = await spilling_node(tmp_path, active=False)
    queue = node.vhost.declare_queue("q", None, durable=False)
    count = WINDOW_ENTRIES + 1000
    publish_transient(node, "q", count)
    assert (queue.paged_count, spill_of(node).count) == (0, 0)  # all objects, none pinned
    spill_of(node).active = True
    publish_transient(node, "q", 1500, start=count)
    assert (queue.paged_count, spill_of(node).count) == (1500, 1500)
    spill_of(node).active = False
    publish_transient(node, "q", 10, start=count + 1500)  # behind the tail: its place is kept
    assert drain(queue, count + 1510) == [body_of(index) for index in range(count + 1510)]
    assert spill_of(node).count == 0
    await stop_node(node)


async def test_a_non_durable_queue_keeps_a_message_a_durable_queue_logged_as_an_object(
    tmp_path: Path,
) -> None:
    """A persistent message routed to a durable and a non-durable queue is logged for the
    durable one alone. The non-durable queue must not keep it as a record of the log: the
    durable queue's ack settles that record and its segment is deleted, and the non-durable
    queue still delivers the message, body and all."""
    node = await spilling_node(tmp_path, segment_size=SPILL_SEGMENT)
    vhost = node.vhost
    durable = vhost.declare_queue("durable", None, durable=True)
    transient = vhost.declare_queue("transient", None, durable=False)
    fanout_to(vhost, "durable", "transient")
    count = WINDOW_ENTRIES + 1000
    for index in range(count):
        message = make_message("", body_of(index), exchange="fan", delivery_mode=2)
        vhost.publish(vhost.get_exchange("fan"), message)
    assert durable.paged_count == 1000 and transient.paged_count == 0
    first_segment = min(node.wal.segment_ids())
    assert drain(durable, count) == [body_of(index) for index in range(count)]
    assert await synced(node.store) is None
    assert await synced(node.store) is None  # the settles are out, their segments collected
    assert first_segment not in node.wal.segment_ids()
    assert drain(transient, count) == [body_of(index) for index in range(count)]
    await stop_node(node)
