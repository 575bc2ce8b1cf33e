"""Paging: a durable FIFO queue keeps a short window of message objects and the rest of its
logged messages as compact records, read back from the log as they near the head.

Driven on real files (the durable store's test node): order and bodies through the window, the
read on the loop when the read-ahead is late, the read-ahead in the executor, restarts with
redelivered flags, purge, delete, expiry away from the head, pinned entries (transient and
shared messages), compaction moving paged messages, a log that cannot give a message back, and
what the memory alarm is told."""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.core import paging
from broker.core.paging import TAIL_RECORD_BYTES, WINDOW_ENTRIES
from broker.core.persistence import pack_location, pack_locations, unpack_location
from broker.core.queue import Queue
from broker.store import records
from tests.unit.helpers import FakeSink, ManualClock, add_consumer, make_message
from tests.unit.test_durable_store import (
    _settle_and_collect,
    fanout_to,
    publish,
    restart,
    start_node,
    stop_node,
    synced,
    take,
)

BODY = 256


def body_of(index: int) -> bytes:
    return f"{index:08d}".encode().ljust(BODY, b".")


@contextlib.contextmanager
def damaged(directory: Path, body: bytes) -> Iterator[None]:
    """The record holding `body` damaged on disk, one byte of the body changed so that its
    CRC fails as a bad sector would; repaired on leaving, a read error the disk got over. Real
    files, no patching, so it drives the compiled modules as well as their sources."""
    for segment in sorted(directory.glob("*.wal")):
        at = segment.read_bytes().find(body)
        if at >= 0:
            break
    else:
        raise AssertionError(f"no segment in {directory} holds {body[:8]!r}")
    with segment.open("r+b") as file:
        file.seek(at)
        file.write(b"X")
    try:
        yield
    finally:
        with segment.open("r+b") as file:
            file.seek(at)
            file.write(body[:1])


def fill(vhost, queue: str, count: int, start: int = 0, **properties: object) -> None:  # type: ignore[no-untyped-def]
    for index in range(start, start + count):
        message = make_message(queue, body_of(index), delivery_mode=2, **properties)
        vhost.publish(vhost.get_exchange(""), message)


def drain(queue: Queue, count: int) -> list[bytes]:
    """Basic.Get with ack, `count` times: the bodies, each acked at once."""
    got = []
    for entry in take(queue, count):
        assert entry.message.body is not None
        got.append(entry.message.body)
        queue.settle([entry])
    return got


async def test_past_the_window_messages_are_compact_records_and_come_back_in_order(
    tmp_path: Path,
) -> None:
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 3000)
    assert queue.message_count == 3000
    assert queue.paged_count == 3000 - WINDOW_ENTRIES
    assert queue.paged_bytes == (3000 - WINDOW_ENTRIES) * BODY
    # The alarm counts a compact record at its own size, not the objects it replaced.
    objects = WINDOW_ENTRIES * (queue.memory_bytes // 3000)
    assert queue.resident_bytes <= objects + (3000 - WINDOW_ENTRIES) * TAIL_RECORD_BYTES
    assert drain(queue, 3000) == [body_of(index) for index in range(3000)]
    assert (queue.message_count, queue.paged_count, queue.memory_bytes) == (0, 0, 0)
    await stop_node(node)


async def test_read_back_messages_keep_their_own_routes_when_neighbours_differ(
    tmp_path: Path,
) -> None:
    """A read-back run reuses the route of the record before when it is the same: records
    whose routes alternate, repeat, and come back after others each keep their own exchange,
    routing key and route bytes."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    vhost.declare_queue("q", None, durable=True)
    vhost.declare_exchange("x", "direct", durable=True)
    keys = ["a", "b", "b", "a", "ccc", "a"]
    for key in keys:
        vhost.bind("x", "q", key, None)
    routed = [keys[index % len(keys)] for index in range(1000)]
    for index, key in enumerate(routed):
        message = make_message(key, body_of(index), exchange="x", delivery_mode=2)
        vhost.publish(vhost.get_exchange("x"), message)
    queue = vhost.queues["q"]
    assert queue.paged_count == 1000 - WINDOW_ENTRIES
    for index, entry in enumerate(take(queue, 1000)):
        message = entry.message
        assert (message.exchange, message.routing_key) == ("x", routed[index])
        assert (
            message.route_bytes == b"\x01x" + bytes([len(routed[index])]) + routed[index].encode()
        )
        assert message.body == body_of(index)
        queue.settle([entry])
    await stop_node(node)


@pytest.mark.pure_python
async def test_the_read_ahead_fills_the_window_off_the_loop(tmp_path: Path) -> None:
    """Once consumers take the window below half, the next records are read in the executor;
    the loop reads them itself only when a consumer finds the window empty."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 2000)
    assert await synced(node.store) is None  # on disk: the read-ahead preads the files
    loaded_on_loop: list[int] = []
    load = node.store.load

    def counting_load(ids, places):  # type: ignore[no-untyped-def]
        loaded_on_loop.append(len(ids))
        return load(ids, places)

    node.store.load = counting_load  # type: ignore[method-assign]
    got = []
    for _ in range(10):
        got += drain(queue, 150)
        await asyncio.sleep(0.05)  # the read-ahead's turn
    assert got == [body_of(index) for index in range(1500)]
    assert loaded_on_loop == []
    assert queue.paged_count < 2000 - 1500
    got = drain(queue, 500)  # without a pause: the loop reads what the read-ahead has not
    assert got == [body_of(index) for index in range(1500, 2000)]
    await stop_node(node)


async def test_a_restart_keeps_order_and_redelivered_flags_of_paged_messages(
    tmp_path: Path,
) -> None:
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 1000)
    taken = take(queue, 3)
    queue.requeue(taken[1:])  # two delivered and returned: redelivered after any restart
    queue.settle(taken[:1])
    node = await restart(node)
    queue = node.vhost.queues["q"]
    assert queue.message_count == 999
    assert queue.paged_count == 999 - WINDOW_ENTRIES
    entries = take(queue, 999)
    assert [entry.message.body for entry in entries] == [body_of(i) for i in range(1, 1000)]
    assert [entry.redelivered for entry in entries[:3]] == [True, True, False]
    assert not any(entry.redelivered for entry in entries[2:])
    await stop_node(node)


async def test_purge_settles_every_paged_message_in_bounded_records(tmp_path: Path) -> None:
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 2000)
    assert queue.purge() == 2000
    assert (queue.message_count, queue.paged_count, queue.memory_bytes) == (0, 0, 0)
    await _settle_and_collect(node)
    node = await restart(node)
    assert node.vhost.queues["q"].message_count == 0
    assert node.restored == (1, 0)
    await stop_node(node)


async def test_deleting_a_paged_queue_frees_its_segments(tmp_path: Path) -> None:
    node = await start_node(tmp_path, segment_size=1 << 16)
    node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 2000)
    assert await synced(node.store) is None
    assert len(node.wal.segment_ids()) > 5
    node.vhost.delete_queue("q", None, if_unused=False, if_empty=False)
    await _settle_and_collect(node)
    await _settle_and_collect(node)
    assert len(node.wal.segment_ids()) <= 2
    assert sum(node.store.live.values()) == 0
    await stop_node(node)


async def test_a_paged_message_expires_where_it_is_and_is_dead_lettered_whole(
    tmp_path: Path,
) -> None:
    """A message with its own short TTL deep in the tail expires on time, read back from the
    log to dead-letter it with its body and headers."""
    clock = ManualClock()
    node = await start_node(tmp_path, clock=clock)
    node.vhost.declare_queue("dead", None, durable=True)
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}
    queue = node.vhost.declare_queue("q", None, durable=True, arguments=arguments)
    fill(node.vhost, "q", 1000)
    fill(node.vhost, "q", 1, start=1000, expiration="500")
    fill(node.vhost, "q", 10, start=1001)
    assert queue.paged_count == 1011 - WINDOW_ENTRIES
    clock.advance(0.6)
    dead = node.vhost.queues["dead"]
    assert (queue.message_count, dead.message_count) == (1010, 1)
    (entry,) = take(dead, 1)
    assert entry.message.body == body_of(1000)
    assert b"x-death" in entry.message.header
    assert drain(queue, 1010) == [body_of(i) for i in range(1011) if i != 1000]
    await stop_node(node)


async def test_transient_and_shared_messages_keep_their_place_in_the_tail(tmp_path: Path) -> None:
    """A message that cannot be a compact record (transient; or routed to two durable queues,
    whose object counts its holders) waits in the tail as its entry, in order."""
    node = await start_node(tmp_path)
    vhost = node.vhost
    queue = vhost.declare_queue("q", None, durable=True)
    vhost.declare_queue("other", None, durable=True)
    fanout_to(vhost, "q", "other")
    fill(vhost, "q", WINDOW_ENTRIES + 10)
    publish(vhost, "q", b"transient", mode=1)
    publish(vhost, "", b"shared", exchange="fan")
    fill(vhost, "q", 10, start=WINDOW_ENTRIES + 10)
    assert queue.paged_count == 20
    assert queue.message_count == WINDOW_ENTRIES + 22
    got = drain(queue, WINDOW_ENTRIES + 22)
    expected = [body_of(i) for i in range(WINDOW_ENTRIES + 10)]
    expected += [b"transient", b"shared"]
    expected += [body_of(i) for i in range(WINDOW_ENTRIES + 10, WINDOW_ENTRIES + 20)]
    assert got == expected
    assert vhost.queues["other"].message_count == 1
    await stop_node(node)


async def test_compaction_moves_paged_messages_and_they_survive_a_restart(
    tmp_path: Path,
) -> None:
    """A few paged messages in an old segment full of settled ones are copied forward, their
    records pointing at the copies; old segments go, and the queue comes back whole."""
    node = await start_node(tmp_path, segment_size=1 << 16)
    vhost = node.vhost
    parked = vhost.declare_queue("parked", None, durable=True)
    busy = vhost.declare_queue("busy", None, durable=True)
    fill(vhost, "busy", 200)
    fill(vhost, "parked", WINDOW_ENTRIES + 5)  # five compact records in the early segments
    first = min(node.wal.segment_ids())
    drain(busy, 200)
    for round_ in range(6):
        fill(vhost, "busy", 300, start=round_ * 300)
        drain(busy, 300)
        await _settle_and_collect(node)
    assert first not in node.wal.segment_ids()
    assert parked.paged_count == 5
    node = await restart(node, segment_size=1 << 16)
    parked = node.vhost.queues["parked"]
    assert drain(parked, WINDOW_ENTRIES + 5) == [body_of(i) for i in range(WINDOW_ENTRIES + 5)]
    await stop_node(node)


async def test_a_message_the_log_cannot_give_back_is_set_aside_not_lost(tmp_path: Path) -> None:
    """A read error parks that one record (out of the count, not settled): the rest of the
    queue flows, and a restart brings the parked message back."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", WINDOW_ENTRIES + 3)
    assert await synced(node.store) is None
    with damaged(tmp_path, body_of(WINDOW_ENTRIES + 1)):  # the second compact record
        got = drain(queue, WINDOW_ENTRIES + 2)
    assert body_of(WINDOW_ENTRIES + 1) not in got
    assert len(got) == WINDOW_ENTRIES + 2
    assert queue.message_count == 0
    node = await restart(node)
    queue = node.vhost.queues["q"]
    assert drain(queue, 1) == [body_of(WINDOW_ENTRIES + 1)]
    await stop_node(node)


@pytest.mark.pure_python
async def test_the_read_ahead_passes_over_what_left_while_it_was_reading(tmp_path: Path) -> None:
    """Results of a read-ahead that arrive after the queue took those records (a read on
    the loop, a purge) change nothing."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 1000)
    held: list[tuple[object, object, object]] = []
    node.store.load_ahead = lambda ids, places, done: held.append((ids, places, done))  # type: ignore[method-assign]
    got = drain(queue, 600)  # the window empties: the loop reads; the read-ahead waits
    assert got == [body_of(i) for i in range(600)]
    ids, places, done = held[0]
    done(node.store.load(ids, places))  # type: ignore[operator, arg-type]
    assert drain(queue, 400) == [body_of(i) for i in range(600, 1000)]
    assert queue.message_count == 0
    await stop_node(node)


def test_a_deep_message_is_found_by_binary_search() -> None:
    tail = paging._Tail()
    for seq in range(0, 30_000, 3):
        tail.append(seq, seq + 1, pack_location(7, seq * 10), 1, 500, 0.0, 0)
    found = tail.find(2_997 * 3)
    assert found is not None and found[0].msg_id[found[1]] == 2_997 * 3 + 1
    assert tail.find(2_997 * 3 + 1) is None
    tail.kill(*found)
    assert tail.find(2_997 * 3) is None
    assert tail.live == 9_999 and tail.compact_footprint == 9_999 * 500
    assert unpack_location(pack_location(123_456, (1 << 34) + 5)) == (
        123_456,
        (1 << 34) + 5,
    )


@pytest.mark.parametrize("segment", [0, 1, 255, 256, 65_537, (1 << 24) - 1])
def test_locations_packed_in_bulk_match_one_by_one_and_count_as_one_segment(segment: int) -> None:
    """pack_locations writes the segment into each offset's top bytes; segment_counts sees one
    segment by comparing those bytes. Both agree with the arithmetic, up to the largest offset
    and segment."""
    offsets = array("Q", [0, 1, 255, 256, (1 << 32) - 1, 1 << 32, (1 << 40) - 1, 123_456_789])
    packed = pack_locations(segment, offsets)
    assert list(packed) == [pack_location(segment, offset) for offset in offsets]
    assert paging.segment_counts(packed) == {segment: len(offsets)}


def test_segment_counts_of_locations_in_several_segments() -> None:
    """Locations that differ in any byte of their segment are counted apart; one location,
    a list and nothing at all are counted too."""
    places = [(3, 10), (4, 10), (3, 11), (259, 1), (3 + (1 << 16), 5), (3, 12)]
    locations = array("Q", [pack_location(*place) for place in places])
    assert paging.segment_counts(locations) == {3: 3, 4: 1, 259: 1, 3 + (1 << 16): 1}
    assert paging.segment_counts(list(locations)) == {3: 3, 4: 1, 259: 1, 3 + (1 << 16): 1}
    assert paging.segment_counts(array("Q", [pack_location(9, 1)])) == {9: 1}
    assert paging.segment_counts(array("Q")) == {}


def test_a_run_read_back_is_taken_as_the_tail_is_when_it_arrives() -> None:
    """A run is cut at a pinned record and by bytes; what left the tail while it was read (the
    first ones taken on the loop, one in the middle expired) is passed over when it arrives,
    and the tail's counts drop by what it took; a run whose records all left takes nothing."""
    tail = paging._Tail()
    for seq in range(10):
        msg_id = 0 if seq == 8 else seq + 1  # the ninth is pinned
        tail.append(seq, msg_id, pack_location(1, seq * 400), 300, 900, 0.0, 0)
    run = tail.head_run(100, 1 << 20)
    assert run is not None and (run.start, run.stop) == (0, 8)  # up to the pinned one
    assert run.msg_ids == list(range(1, 9))
    assert run.locations == [pack_location(1, seq * 400) for seq in range(8)]
    small = tail.head_run(100, 3 * (300 + paging.ENTRY_OVERHEAD))
    assert small is not None and small.stop == 3  # by bytes
    assert (run.cost, small.cost) == (8 * 700, 3 * 700)  # what the read-ahead charges
    chunk = tail.chunks[0]
    tail.kill(chunk, 0)  # taken on the loop meanwhile
    tail.kill(chunk, 1)
    tail.kill(chunk, 5)  # expired meanwhile
    assert tail.take(run) == 2
    assert (tail.live, tail.compact, tail.compact_bytes) == (2, 1, 300)  # the pinned, the last
    assert tail.compact_footprint == 900
    assert tail.take(run) == run.stop  # nothing of it is first any more
    found = tail.first()
    assert found is not None and found[0].seq[found[1]] == 8


def test_records_are_read_back_as_the_messages_that_were_logged() -> None:
    """The log's message record holds everything a delivery needs: route, header, body."""
    message = make_message("key", b"body", delivery_mode=2)
    payload = b"pad" + records.encode_message(
        9, [1, 2], message.route_bytes, message.header, b"body", records.timed(12.5)
    )
    back = records.unpack_message(records.MESSAGE_AT, payload, 3, len(payload))
    assert back == (9, 12.5, message.route_bytes, message.header, b"body")


@pytest.mark.pure_python
async def test_a_consumer_waits_for_the_read_ahead_instead_of_reading_twice(
    tmp_path: Path,
) -> None:
    """A consumer that empties the window while a read-ahead is under way gets nothing read
    on the loop: the read-ahead's arrival dispatches to it."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 1000)
    held: list[tuple[object, object, object]] = []
    node.store.load_ahead = lambda ids, places, done: held.append((ids, places, done))  # type: ignore[method-assign]
    loads: list[int] = []
    load = node.store.load
    node.store.load = lambda ids, places: loads.append(len(ids)) or load(ids, places)  # type: ignore[method-assign]
    sink = FakeSink()
    add_consumer(queue, sink, "c", credit=1000)
    assert len(sink.delivered) == WINDOW_ENTRIES  # the window; then it waits
    assert loads == [] and len(held) == 1
    ids, places, done = held.pop()
    done(node.store.load(ids, places))  # type: ignore[operator, arg-type]
    assert len(sink.delivered) == 1000
    assert [body for _, body, _ in sink.delivered] == [body_of(i) for i in range(1000)]
    await stop_node(node)


async def test_a_restart_indexes_a_long_queue_and_keeps_its_deadlines(tmp_path: Path) -> None:
    """Recovery rebuilds a long queue as its window of objects (bodies left in the log) and
    compact records, each record's deadline taken from its expiration property without the
    message being read back: one that comes due deep in the tail is dead-lettered whole."""
    clock = ManualClock()
    node = await start_node(tmp_path, clock=clock)
    node.vhost.declare_queue("dead", None, durable=True)
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}
    node.vhost.declare_queue("q", None, durable=True, arguments=arguments)
    fill(node.vhost, "q", 500)
    fill(node.vhost, "q", 1, start=500, expiration="1000")
    fill(node.vhost, "q", 99, start=501)
    clock = ManualClock(clock.time + 0.5)
    node = await restart(node, clock=clock)
    queue, dead = node.vhost.queues["q"], node.vhost.queues["dead"]
    assert (queue.message_count, queue.paged_count) == (600, 600 - WINDOW_ENTRIES)
    assert all(entry.message.body is None for entry in queue.ready_entries())
    clock.advance(0.6)
    assert (queue.message_count, dead.message_count) == (599, 1)
    assert drain(dead, 1) == [body_of(500)]
    assert drain(queue, 599) == [body_of(i) for i in range(600) if i != 500]
    await stop_node(node)


async def test_a_queue_counting_deliveries_gets_its_returns_counted_past_the_window(
    tmp_path: Path,
) -> None:
    """A quorum queue's messages out with a consumer at the stop come back counted, those
    read back from records too, and past the delivery limit they are dead-lettered."""
    node = await start_node(tmp_path)
    node.vhost.declare_queue("dead", None, durable=True)
    arguments = {
        "x-queue-type": "quorum",
        "x-delivery-limit": 1,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dead",
    }
    queue = node.vhost.declare_queue("q", None, durable=True, arguments=arguments)
    fill(node.vhost, "q", 1000)
    out = take(queue, 600)  # out at the stop, past the window of 256
    queue.requeue(out[:10])  # returned once already: the restart makes two, over the limit
    take(queue, 10)
    node = await restart(node)
    queue, dead = node.vhost.queues["q"], node.vhost.queues["dead"]
    assert (queue.message_count, dead.message_count) == (990, 10)
    entries = take(queue, 990)
    assert [entry.message.body for entry in entries] == [body_of(i) for i in range(10, 1000)]
    assert [entry.returns for entry in entries[:591]] == [1] * 590 + [0]
    assert not any(entry.returns for entry in entries[590:])
    await stop_node(node)


async def test_compaction_does_not_walk_a_long_tail_the_objects_account_for(
    tmp_path: Path, monkeypatch: object
) -> None:
    """Compacting the oldest segment looks for compact records only when the message objects
    found there fall short of its live count: a long backlog's tail is not walked at every
    segment roll because of an old unacked message."""
    calls: list[int] = []
    original = paging.PagedFifoStore.paged_in_segment

    def counted(self, segment):  # type: ignore[no-untyped-def]
        calls.append(segment)
        return original(self, segment)

    monkeypatch.setattr(paging.PagedFifoStore, "paged_in_segment", counted)  # type: ignore[attr-defined]
    node = await start_node(tmp_path, segment_size=1 << 16)
    vhost = node.vhost
    parked = vhost.declare_queue("parked", None, durable=True)
    busy = vhost.declare_queue("busy", None, durable=True)
    fill(vhost, "parked", 2)
    (held,) = take(parked, 1)  # unacked: pins the first segment
    fill(vhost, "busy", 150)  # the rest of the first segment, settled below
    drain(busy, 150)
    long = vhost.declare_queue("long", None, durable=True)
    fill(vhost, "long", 2000, start=10_000)
    for round_ in range(4):
        fill(vhost, "busy", 300, start=round_ * 300)
        drain(busy, 300)
        await _settle_and_collect(node)
    assert held.message.location[0] > 1  # relocated: the first segment went
    assert calls == []
    assert long.paged_count == 2000 - WINDOW_ENTRIES
    await stop_node(node)


async def test_purge_leaves_a_set_aside_record_and_delete_releases_it(tmp_path: Path) -> None:
    """A record the log could not give back is like an unacked message: a purge leaves it
    (its segment stays), deleting the queue releases it (nothing is counted twice)."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", WINDOW_ENTRIES + 10)
    publish(node.vhost, "q", b"transient", mode=1)  # a pinned entry among the records
    fill(node.vhost, "q", 10, start=WINDOW_ENTRIES + 10)
    assert await synced(node.store) is None
    with damaged(tmp_path, body_of(WINDOW_ENTRIES)):  # the first compact record
        drain(queue, WINDOW_ENTRIES + 5)  # the window, and records read back past it
    assert len(queue._ready.unreadable) == 1  # type: ignore[attr-defined]
    assert queue.purge() == 15  # 14 records and the transient message
    assert await synced(node.store) is None
    assert sum(node.store.live.values()) == 1  # the one set aside
    node.vhost.delete_queue("q", None, if_unused=False, if_empty=False)
    assert sum(node.store.live.values()) == 0
    await stop_node(node)


@pytest.mark.pure_python
async def test_a_record_moved_while_it_was_read_ahead_is_read_again_where_it_is(
    tmp_path: Path,
) -> None:
    """Compaction copies a paged message elsewhere in the log while a read-ahead is reading
    it: the copy the read-ahead brings back names the old place, so that message is read again
    at its new one, and delivered knowing it (its settle then counts down the right segment);
    the others of the batch are taken as read."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 1000)
    assert await synced(node.store) is None
    held: list[tuple[list[int], list[int], object]] = []
    node.store.load_ahead = lambda ids, places, done: held.append((ids, places, done))  # type: ignore[method-assign]
    loads: list[list[int]] = []
    load = node.store.load
    node.store.load = lambda ids, places: loads.append(places) or load(ids, places)  # type: ignore[method-assign]
    sink = FakeSink()
    add_consumer(queue, sink, "c", credit=1000)
    assert len(sink.delivered) == WINDOW_ENTRIES and len(held) == 1
    ids, places, done = held.pop()
    record_type, payload = node.wal.read(*unpack_location(places[3]))
    moved = node.wal.append(record_type, bytes(payload))  # as compaction copies a record
    assert await synced(node.store) is None
    chunk, first = queue._ready._tail.first()  # type: ignore[attr-defined]
    queue._ready.relocated(chunk.seq[first + 3], *moved)  # type: ignore[attr-defined]
    done(load(ids, places))  # type: ignore[operator]
    assert loads == [[pack_location(*moved)]]  # that one only, where it is now
    assert [body for _, body, _ in sink.delivered] == [body_of(i) for i in range(1000)]
    assert sink.entries[WINDOW_ENTRIES + 3].message.location == moved
    assert sink.entries[WINDOW_ENTRIES + 2].message.location == unpack_location(places[2])
    await stop_node(node)


@pytest.mark.pure_python
async def test_a_read_ahead_that_fails_while_a_consumer_waits_still_wakes_it(
    tmp_path: Path,
) -> None:
    """Every read of the read-ahead fails (its executor shut down, say): the waiting consumer
    is woken all the same, the records are read again on the loop, in order, none lost."""
    node = await start_node(tmp_path)
    queue = node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 600)
    held: list[tuple[object, object, object]] = []
    node.store.load_ahead = lambda ids, places, done: held.append((ids, places, done))  # type: ignore[method-assign]
    sink = FakeSink()
    add_consumer(queue, sink, "c", credit=600)
    assert len(sink.delivered) == WINDOW_ENTRIES
    ids, _, done = held.pop()
    done([RuntimeError("cannot schedule new futures after shutdown")] * len(ids))  # type: ignore[operator, arg-type]
    assert [body for _, body, _ in sink.delivered] == [body_of(i) for i in range(600)]
    assert queue._ready.unreadable == []  # type: ignore[attr-defined]
    await stop_node(node)


async def test_huge_messages_page_and_come_back_whole(tmp_path: Path) -> None:
    """Bodies larger than the window's bytes and than a read-ahead's: the window takes what
    fits (at least one), each read-ahead at least one record, a record longer than its span
    read is read whole; after a restart too."""
    node = await start_node(tmp_path, segment_size=64 << 20)
    queue = node.vhost.declare_queue("q", None, durable=True)
    huge = [bytes([65 + index]) * (3 << 20) for index in range(6)]
    for body in huge:
        publish(node.vhost, "q", body)
    assert (queue.message_count, queue.paged_count) == (6, 5)
    assert await synced(node.store) is None
    got = [entry.message.body for entry in take(queue, 3)]
    assert got == huge[:3]
    node = await restart(node, segment_size=64 << 20)
    queue = node.vhost.queues["q"]
    assert queue.message_count == 6  # the three taken were not acked
    entries = take(queue, 6)
    assert [bytes(entry.message.body or b"") for entry in entries] == huge
    await stop_node(node)


async def test_a_window_message_unreadable_at_restore_is_kept_and_set_aside_in_its_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Restore reads back each queue's window; with segment summaries nothing had read a
    record before, so one that fails then is not a reason to stop the start: it stays a
    compact record (logged), the queue keeps its order, and when its turn comes it is set
    aside like any record the log cannot give back; the others are delivered."""
    node = await start_node(tmp_path)
    node.vhost.declare_queue("q", None, durable=True)
    fill(node.vhost, "q", 10)
    await stop_node(node)
    with damaged(tmp_path, body_of(2)), caplog.at_level("ERROR"):  # message 3
        node = await start_node(tmp_path)
        assert "recovery.unreadable" in caplog.text
        queue = node.vhost.queues["q"]
        assert queue.message_count == 10
        assert drain(queue, 9) == [body_of(index) for index in range(10) if index != 2]
    assert queue.message_count == 0
    await stop_node(node)
