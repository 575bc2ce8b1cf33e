"""Segment summaries (broker/store/summary.py): a restart that reads them recovers exactly
what a scan of the whole log recovers, and a summary that cannot be trusted (missing, torn,
damaged, another segment's, left behind by a deleted segment) is never used."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from broker.core.queue import Queue
from broker.store import records, summary as summary_module, wal as wal_module
from broker.store.recovery import RecoveredState, recover
from broker.store.wal import CorruptLogError, WriteAheadLog
from tests.unit.helpers import make_message
from tests.unit.test_durable_store import Node, publish, start_node, stop_node, synced, take

SEGMENT = 16 * 1024  # small segments: many rolls, summaries and collections


def _without_summaries(directory: Path, copy: Path) -> Path:
    shutil.copytree(directory, copy)
    for path in copy.glob("*.sum"):
        path.unlink()
    return copy


def _recovered(directory: Path) -> RecoveredState:
    return recover(WriteAheadLog(directory, segment_size=SEGMENT))


def _facts(state: RecoveredState) -> dict[str, Any]:
    """Everything recovery found, comparable: the index drained, objects by their facts."""
    indexed = []
    for queue_id, run in state.index.drain_runs():
        columns = (run.locations, run.published_at, run.body_sizes, run.header_lens, run.ttls)
        for index, msg_id in enumerate(run.msg_ids):
            indexed.append((queue_id, msg_id, *(column[index] for column in columns)))
    objects = {
        msg_id: (queues, message.location, message.header, message.body_size)
        for msg_id, (message, queues) in state.messages.items()
    }
    return {
        "indexed": indexed,
        "objects": objects,
        "delivered": state.delivered,
        "returned": state.returned,
        "queues": state.queues,
        "exchanges": state.exchanges,
        "bindings": state.bindings,
        "ids": (state.next_msg_id, state.next_queue_id, state.redelivered_upto, state.clean),
        "last_msg_id": state.last_msg_id,
    }


def _drained(node: Node) -> dict[str, list[tuple[int, bytes, bool]]]:
    """Each queue's messages as a consumer would get them: id, body, redelivered."""
    found = {}
    for name, queue in sorted(node.vhost.queues.items()):
        got = []
        while (entry := queue.get(ack_required=False)) is not None:
            message = entry.message
            body = message.body if message.body is not None else node.store.read_body(message)
            got.append((message.msg_id, body, entry.redelivered))
        found[name] = got
    return found


async def _busy_log(directory: Path, seed: int) -> Node:
    """A log with everything a segment can hold: messages for one queue that pages, for a
    priority queue (which keeps objects), for two queues at once (fanout), with TTLs;
    acks, requeues (marks), dead-lettering (MOVE), a deleted queue, a purge, segments
    collected and compacted. Returns the node still running, everything synced."""
    rng = random.Random(seed)
    node = await start_node(directory, segment_size=SEGMENT)
    vhost = node.vhost
    queues: dict[str, Queue] = {
        "paged": vhost.declare_queue("paged", None, durable=True),
        "other": vhost.declare_queue("other", None, durable=True),
        "prio": vhost.declare_queue("prio", None, durable=True, arguments={"x-max-priority": 5}),
        "dead": vhost.declare_queue("dead", None, durable=True),
        "src": vhost.declare_queue(
            "src",
            None,
            durable=True,
            arguments={"x-dead-letter-routing-key": "dead", "x-dead-letter-exchange": ""},
        ),
        "gone": vhost.declare_queue("gone", None, durable=True),
    }
    vhost.declare_exchange("fan", "fanout", durable=True)
    vhost.bind("fan", "paged", "", None)
    vhost.bind("fan", "other", "", None)
    for step in range(1500):
        action = rng.random()
        name = rng.choice(["paged", "paged", "other", "prio", "src", *queues.keys() & {"gone"}])
        body = b"m%05d" % step + b"x" * rng.randrange(0, 300)
        if action < 0.55:
            properties: dict[str, Any] = {"delivery_mode": rng.choice([2, 2, 2, 1])}
            if rng.random() < 0.1:
                properties["expiration"] = str(rng.randrange(3_600_000, 7_200_000))
            if name == "prio":
                properties["priority"] = rng.randrange(6)
            message = make_message(name, body, **properties)
            vhost.publish(vhost.get_exchange(""), message)
        elif action < 0.65:
            publish(vhost, "", body, exchange="fan")
        elif action < 0.8 and queues[name].message_count:
            queues[name].settle(take(queues[name], 1))
        elif action < 0.9 and queues[name].message_count:
            queues[name].requeue(take(queues[name], 1))  # a DELIVERED mark
        elif queues["src"].message_count:
            queues["src"].reject(take(queues["src"], 1))  # dead-lettered: a MOVE
        if step == 700:
            vhost.delete_queue("gone", None)
            del queues["gone"]
        if step == 1000:
            queues["other"].purge()
        if step % 100 == 0:
            assert await synced(node.store) is None
    queues["paged"].requeue(take(queues["paged"], 3))  # marks of the last segment
    assert await synced(node.store) is None
    return node


@pytest.mark.parametrize(("seed", "step"), [(1, 4 << 20), (2, 4 << 20), (3, 1024), (4, 300)])
async def test_a_restart_from_summaries_recovers_what_a_scan_recovers(
    tmp_path: Path, seed: int, step: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clean stop (every segment summarized, the last one at close) and a crash (copied while
    running: the newest segment summarized only in part, or not at all), each recovered with
    and without summaries: the same state, the same messages in every queue, in the same
    order, with the same flags. Small steps write chunks while segments grow."""
    monkeypatch.setattr(wal_module, "SUMMARY_STEP", step)
    node = await _busy_log(tmp_path / "live", seed)
    shutil.copytree(tmp_path / "live", tmp_path / "crash")
    await stop_node(node)
    for name in ("live", "crash"):
        directory = tmp_path / name
        assert list(directory.glob("*.sum")), "no segment was summarized"
        scanned = _without_summaries(directory, tmp_path / f"{name}-scanned")
        with_summaries = _recovered(directory)
        assert with_summaries.report is not None and with_summaries.report.summarized > 0
        assert _facts(with_summaries) == _facts(_recovered(scanned))
        nodes = [await start_node(path, SEGMENT) for path in (directory, scanned)]
        try:
            first, second = (_drained(each) for each in nodes)
            assert first == second
            assert sum(len(messages) for messages in first.values()) > 100
        finally:
            for each in nodes:
                await stop_node(each)


async def _sealed_segments(directory: Path) -> None:
    node = await start_node(directory, segment_size=SEGMENT)
    node.vhost.declare_queue("orders", None, durable=True)
    for number in range(200):
        publish(node.vhost, "orders", b"message %03d" % number + b"x" * 200)
    assert await synced(node.store) is None
    await stop_node(node)


def _bodies(node: Node) -> list[bytes]:
    return [body for _, body, _ in _drained(node)["orders"]]


EXPECTED = [b"message %03d" % number + b"x" * 200 for number in range(200)]


@pytest.mark.parametrize(
    "damage",
    ["truncated", "flipped", "other segment's", "emptied"],
)
async def test_a_summary_that_does_not_hold_is_not_used(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn or damaged summary, or one describing another segment: the segment is scanned
    (logged), and every message comes back."""
    await _sealed_segments(tmp_path)
    first, second = sorted(tmp_path.glob("*.sum"))[:2]
    data = first.read_bytes()
    if damage == "truncated":
        first.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        first.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "other segment's":
        first.write_bytes(second.read_bytes())
    else:
        first.write_bytes(b"")
    with caplog.at_level(logging.WARNING, "warren.wal"):
        state = _recovered(tmp_path)
    assert "wal.summary_unused" in caplog.text
    assert state.report is not None
    assert state.report.summarized == state.report.segments - 1
    node = await start_node(tmp_path, SEGMENT)
    try:
        assert _bodies(node) == EXPECTED
    finally:
        await stop_node(node)


async def test_a_summary_left_by_a_deleted_segment_is_removed_at_open(tmp_path: Path) -> None:
    """A crash between a summary's write and its segment's delete (or a summary written just
    after the delete) leaves a summary with no segment: a later segment of that id must never
    meet it, so opening the log removes it; delete_segment removes a segment's summary first."""
    await _sealed_segments(tmp_path)
    segments = sorted(tmp_path.glob("*.wal"))
    newest = int(segments[-1].stem)
    orphan = summary_module.summary_path(tmp_path, newest + 1)
    shutil.copy(summary_module.summary_path(tmp_path, newest), orphan)
    wal = WriteAheadLog(tmp_path, segment_size=SEGMENT)
    assert not orphan.exists()
    wal.replay(lambda *record: None)
    await wal.start()
    oldest = int(segments[0].stem)
    wal.delete_segment(oldest)
    assert not summary_module.summary_path(tmp_path, oldest).exists()
    await wal.close()


async def test_a_summary_chunk_is_written_only_after_what_it_covers_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk must never describe bytes a crash can still lose: every chunk (of a segment
    still growing, and the last one at its seal) follows an fsync of its segment that covered
    its end (here every event of the worker thread is recorded in order, each fsync with the
    file's size then)."""
    events: list[tuple[str, int, int]] = []
    real_chunk = wal_module.write_chunk

    def write_chunk(
        directory: Path, segment_id: int, builder: Any, end: int, rows: int, others: int
    ) -> None:
        events.append(("chunk", segment_id, end))
        real_chunk(directory, segment_id, builder, end, rows, others)

    real_fsync = os.fsync
    monkeypatch.setattr(wal_module, "SUMMARY_STEP", 2048)  # read when the log is made
    wal = WriteAheadLog(tmp_path, segment_size=SEGMENT)

    def fsync(fd: int) -> None:
        writer = wal._writer
        if writer._fd == fd and writer.segment is not None:
            events.append(("fsync", writer.segment, os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(wal_module, "write_chunk", write_chunk)
    monkeypatch.setattr(wal_module.os, "fsync", fsync)
    await wal.start()
    ids = iter(range(1, 1000))
    for _ in range(12):
        for _ in range(25):
            row = records.SUMMARY_ROW.pack(next(ids), 1, 0.0, 10, 10, -1)
            wal.append(records.MESSAGE_AT, b"y" * 200, row)
        done = asyncio.get_running_loop().create_future()
        wal.sync(done.set_result)
        assert await done is None
    await wal.close()
    chunks = [(index, segment, end) for index, (kind, segment, end) in enumerate(events)
              if kind == "chunk"]  # fmt: skip
    assert len({segment for _, segment, _ in chunks}) >= 3
    assert len(chunks) > len({segment for _, segment, _ in chunks})  # chunks while growing
    for index, segment, end in chunks:
        assert any(
            kind == "fsync" and fsynced == segment and size >= end
            for kind, fsynced, size in events[:index]
        ), f"chunk of segment {segment} up to {end} before its fsync"
    state = RecoveredState()
    report = WriteAheadLog(tmp_path, segment_size=SEGMENT).replay(
        state.apply, None, state.apply_rows, records.SUMMARY_ROW.size
    )
    assert report.summarized == report.segments
    assert state.index.count == 12 * 25


async def test_damage_to_a_definition_in_a_summarized_segment_still_stops_the_start(
    tmp_path: Path,
) -> None:
    """Records a summary does not stand for (definitions, settles, marks) are read from the
    segment and checked: damage there is corruption, named by segment and offset."""
    await _sealed_segments(tmp_path)
    first = sorted(tmp_path.glob("*.wal"))[0]
    raw = bytearray(first.read_bytes())
    raw[raw.index(b"orders") + 2] ^= 0xFF  # its first mention: the queue's declaration
    first.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError) as raised:
        _recovered(tmp_path)
    assert raised.value.segment == int(first.stem)


async def test_a_damaged_body_in_a_summarized_segment_is_set_aside_on_read_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A summary stands for a message record without reading it, so damage to its bytes is
    found when it is read back for delivery: that message is set aside (logged, kept in the
    log for the operator), every other one is delivered."""
    await _sealed_segments(tmp_path)
    (segment,) = [path for path in tmp_path.glob("*.wal") if b"message 150" in path.read_bytes()]
    assert summary_module.summary_path(tmp_path, int(segment.stem)).exists()
    raw = bytearray(segment.read_bytes())
    raw[raw.index(b"message 150") + 3] ^= 0xFF
    segment.write_bytes(bytes(raw))
    node = await start_node(tmp_path, SEGMENT)
    try:
        with caplog.at_level(logging.WARNING):
            bodies = _bodies(node)
        assert bodies == EXPECTED[:150] + EXPECTED[151:]
        assert "message.unreadable" in caplog.text
    finally:
        await stop_node(node)


def test_rows_of_a_queue_that_keeps_objects_are_read_whole(tmp_path: Path) -> None:
    """A row names its queue; when that queue does not page (a priority queue), recovery
    reads the record itself and keeps the message as an object, as a scan would."""
    state = RecoveredState()
    state.queues = {7: {"vhost": "/", "name": "p", "arguments": {"x-max-priority": 3}}}
    payload = records.encode_message(
        5, [7], b"\x00\x01p", make_message("p", b"body").header, b"body", records.timed(1.0)
    )
    row = records.SUMMARY_ROW.pack(5, 7, 1.0, 4, len(make_message("p", b"body").header), -1)
    from array import array

    state.apply_rows(1, array("Q", [40]), memoryview(row), lambda offset: (14, payload))
    assert state.index.count == 0
    message, queue_ids = state.messages[5]
    assert queue_ids == (7,) and message.location == (1, 40) and message.body_size == 4


async def test_a_summary_that_cannot_be_written_costs_only_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Disk full while writing a summary: logged, no partial file left, the log goes on
    confirming, and the next start scans those segments and loses nothing."""
    real_write = summary_module.os.write

    def full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(summary_module.os, "write", full)
    with caplog.at_level(logging.WARNING, "warren.wal"):
        await _sealed_segments(tmp_path)
    assert "wal.summary_unwritten" in caplog.text
    assert not list(tmp_path.glob("*.sum"))
    monkeypatch.undo()
    state = _recovered(tmp_path)
    assert state.report is not None and state.report.summarized == 0
    node = await start_node(tmp_path, SEGMENT)
    try:
        assert _bodies(node) == EXPECTED
    finally:
        await stop_node(node)


async def test_the_newest_segment_is_scanned_past_its_summary_and_its_torn_tail_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash the newest segment's summary covers only what was fsynced a while ago:
    replay takes that part from it, scans the rest, and cuts a torn tail there as before."""
    monkeypatch.setattr(wal_module, "SUMMARY_STEP", 1024)
    node = await start_node(tmp_path / "live", segment_size=1 << 20)
    node.vhost.declare_queue("orders", None, durable=True)
    for number in range(200):
        publish(node.vhost, "orders", b"message %03d" % number + b"x" * 200)
        if number % 20 == 0 or number == 197:
            assert await synced(node.store) is None
    assert await synced(node.store) is None  # the last two: less than a step past the chunk
    crash = tmp_path / "crash"
    shutil.copytree(tmp_path / "live", crash)
    await stop_node(node)
    (newest,) = sorted(crash.glob("*.wal"))[-1:]
    summary = _recovered_summary(crash, int(newest.stem), newest.stat().st_size)
    assert 0 < summary.end < newest.stat().st_size  # a part, not all of it
    with newest.open("ab") as file:
        file.write(b"\x00\x01garbage past the fsynced length")
    state = _recovered(crash)
    assert state.report is not None and state.report.truncated_bytes > 0
    node = await start_node(crash, SEGMENT)
    try:
        assert [body for _, body, _ in _drained(node)["orders"]] == [
            b"message %03d" % number + b"x" * 200 for number in range(200)
        ]
    finally:
        await stop_node(node)


def _recovered_summary(directory: Path, segment: int, size: int) -> summary_module.Summary:
    found = summary_module.read_summary(directory, segment, size, records.SUMMARY_ROW.size)
    assert found is not None
    return found


def test_a_chunk_taken_while_a_row_is_half_added_is_still_whole() -> None:
    """The worker writes a chunk while the loop appends: it may see a row's offset before
    the row itself. The row size is learnt on the loop, so the chunk still holds exactly the
    rows counted when its batch was taken, and rows already written are dropped from memory."""
    builder = summary_module.SummaryBuilder()
    for number in range(3):
        builder.row_offsets.append(100 * number)
        builder.rows += records.SUMMARY_ROW.pack(number + 1, 7, 0.0, 10, 20, -1)
    builder.settle()  # the loop, taking a batch
    rows, others = builder.row_count, builder.other_count
    builder.row_offsets.append(300)  # the loop, half way through adding a fourth row
    data = builder.chunk(1, 400, rows, others)
    assert data is not None
    builder.done_end, builder.done_rows, builder.done_others = 400, rows, others
    builder.rows += records.SUMMARY_ROW.pack(4, 7, 0.0, 10, 20, -1)
    builder.settle()
    assert (builder.rows_base, len(builder.row_offsets)) == (3, 1)
    assert builder.chunk(1, 500, 4, others) is not None
