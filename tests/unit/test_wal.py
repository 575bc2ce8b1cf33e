"""The write-ahead log on real files: replay order, rollover, torn tails, power-loss tails and the
sync marker, corruption, group commit, failure handling and the periodic policy."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import random
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.core.persistence import pack_location
from broker.store import wal as wal_module
from broker.store.wal import (
    HEADER_SIZE,
    CorruptLogError,
    RecoveryReport,
    WalError,
    WriteAheadLog,
)

Record = tuple[int, int, int, bytes]  # segment, offset, type, payload
MARKER = "synced"  # the sync marker's file name, beside the segments


async def synced(wal: WriteAheadLog) -> BaseException | None:
    """Wait for a sync() callback and return what it was called with."""
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    wal.sync(done.set_result)
    return await asyncio.wait_for(done, 5)


def replay_all(directory: Path, **kwargs: object) -> tuple[list[Record], RecoveryReport]:
    """Replay a directory with a fresh log, as a restart would."""
    seen: list[Record] = []
    log = WriteAheadLog(directory, **kwargs)  # type: ignore[arg-type]
    report = log.replay(lambda s, o, t, p: seen.append((s, o, t, bytes(p))))
    return seen, report


async def write_log(
    directory: Path, records: list[tuple[int, bytes]], segment_size: int = 64 * 1024
) -> list[tuple[int, int]]:
    """Append, sync and close; return where each record went."""
    log = WriteAheadLog(directory, segment_size=segment_size)
    await log.start()
    positions = [log.append(record_type, payload) for record_type, payload in records]
    assert await synced(log) is None
    await log.close()
    return positions


async def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def numbered(count: int, size: int = 100) -> list[tuple[int, bytes]]:
    return [(1 + i % 7, f"record {i:06d} ".encode().ljust(size, b".")) for i in range(count)]


def segment_file(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:010d}.wal"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(data)


def frame(record_type: int, payload: bytes) -> bytes:
    """A record as the module docstring lays it out, built independently of the writer."""
    crc = zlib.crc32(bytes([record_type]) + payload)
    length = len(payload)
    return struct.pack(">IIIB", length, length ^ 0xFFFFFFFF, crc, record_type) + payload


def garbage(size: int, seed: int = 12) -> bytes:
    """Random bytes, as a page written back out of order or never written can hold."""
    data = random.Random(seed).randbytes(size)
    assert data.count(0) < size // 16
    return data


def overwrite(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------- round trip, rollover


async def test_round_trip_keeps_order_across_segments(tmp_path: Path) -> None:
    """Every record comes back once, in append order, at the position append() returned."""
    records = [(1 + i % 5, bytes([i % 256]) * (i % 37)) for i in range(500)]
    positions = await write_log(tmp_path, records, segment_size=512)

    seen, report = replay_all(tmp_path)

    expected = [(s, o, t, p) for (s, o), (t, p) in zip(positions, records, strict=True)]
    assert seen == expected
    segments = sorted({segment for segment, _ in positions})
    assert len(segments) > 5
    assert report.records == 500
    assert report.segments == len(segments)
    assert report.bytes == sum(HEADER_SIZE + len(payload) for _, payload in records)
    assert report.truncated_segment is None and report.truncated_bytes == 0
    assert all(segment_file(tmp_path, s).stat().st_size <= 512 for s in segments)


async def test_records_on_disk_carry_zlibs_crc_as_logs_of_earlier_versions_do(
    tmp_path: Path,
) -> None:
    """The log computes its CRCs with zlib-ng: each record it writes is byte for byte the one
    built here with the standard library's zlib, so logs written before the change and after
    it read alike. Sizes from empty to past the read-back's copy threshold."""
    payloads = [(2, b""), (10, b"x"), (14, garbage(300)), (10, garbage(70_000, seed=5))]
    await write_log(tmp_path, payloads)
    on_disk = b"".join(path.read_bytes() for path in sorted(tmp_path.glob("*.wal")))
    assert on_disk == b"".join(frame(record_type, payload) for record_type, payload in payloads)


async def test_appends_after_replay_go_to_a_new_segment(tmp_path: Path) -> None:
    """Replayed segments are never written again; a restart's records follow them in order."""
    first = await write_log(tmp_path, numbered(3))
    log = WriteAheadLog(tmp_path)
    log.replay(lambda *_: None)
    assert log.active_segment == first[-1][0] + 1
    await log.start()
    later = log.append(2, b"after restart")
    assert later == (first[-1][0] + 1, 0)
    await log.close()

    seen, _ = replay_all(tmp_path)
    assert [payload for *_, payload in seen] == [p for _, p in numbered(3)] + [b"after restart"]


async def test_segment_roll_lets_the_owner_write_a_snapshot_first(tmp_path: Path) -> None:
    """on_segment_roll runs before the record that caused the roll is framed; what it appends is
    the first record of the new segment."""
    log = WriteAheadLog(tmp_path, segment_size=100)
    rolled: list[int] = []

    def snapshot(segment_id: int) -> None:
        rolled.append(segment_id)
        assert log.append(9, b"snapshot") == (segment_id, 0)

    log.on_segment_roll = snapshot
    await log.start()
    positions = [log.append(1, bytes([i]) * 30) for i in range(10)]
    await log.close()

    assert rolled == log.segment_ids()[1:]
    assert len(rolled) >= 3
    seen, _ = replay_all(tmp_path)
    for segment_id in rolled:
        in_segment = [(o, t, p) for s, o, t, p in seen if s == segment_id]
        assert in_segment[0] == (0, 9, b"snapshot")
        assert in_segment[1][:2] == (HEADER_SIZE + len(b"snapshot"), 1)
        assert (segment_id, in_segment[1][0]) in positions
    assert [p for _, _, t, p in seen if t == 1] == [bytes([i]) * 30 for i in range(10)]


async def test_a_snapshot_larger_than_a_segment_does_not_roll_every_append(
    tmp_path: Path,
) -> None:
    """Finding 8: definitions with huge arguments made each segment's snapshot larger than a
    segment, so every append rolled and wrote (and fsynced) another snapshot. A segment now
    holds segment_size of records besides its snapshot."""
    log = WriteAheadLog(tmp_path, segment_size=64 * 1024)
    rolled: list[int] = []

    def snapshot(segment_id: int) -> None:
        rolled.append(segment_id)
        log.append(9, b"S" * 100_000)  # bigger than a whole segment

    log.on_segment_roll = snapshot
    await log.start()
    for number in range(1000):  # 200 KB of records: about three segments' worth
        log.append(1, b"%05d" % number + b"r" * 195)
    await log.close()
    assert 3 <= len(rolled) <= 4, f"{len(rolled)} rolls for 200 KB of records"
    seen, _ = replay_all(tmp_path)
    assert len([t for _, _, t, _ in seen if t == 1]) == 1000


async def test_record_bigger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    positions = await write_log(
        tmp_path, [(1, b"small"), (2, b"B" * 1000), (3, b"after")], segment_size=200
    )
    assert [segment for segment, _ in positions] == [1, 2, 3]
    assert [offset for _, offset in positions] == [0, 0, 0]
    seen, _ = replay_all(tmp_path)
    assert [t for _, _, t, _ in seen] == [1, 2, 3]


async def test_previous_segment_is_durable_before_the_next_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ordering recovery relies on: only the newest segment can end in a torn record."""
    events: list[str] = []
    real_open, real_fsync = os.open, os.fsync

    def logged_open(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        if flags & os.O_CREAT:
            events.append(f"create {Path(str(path)).name}")
        return fd

    def logged_fsync(fd: int) -> None:
        events.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    monkeypatch.setattr(os, "open", logged_open)
    monkeypatch.setattr(os, "fsync", logged_fsync)
    log = WriteAheadLog(tmp_path, segment_size=100)
    await log.start()
    log.append(1, b"a" * 80)
    log.append(1, b"b" * 80)  # rolls; both segments go out in one batch
    assert await synced(log) is None
    await log.close()

    first, second = "0000000001.wal", "0000000002.wal"
    assert events.index(f"fsync {first}") < events.index(f"create {second}")
    assert f"fsync {second}" in events


# ------------------------------------------------------------------------- torn tail


async def _ten_records(directory: Path) -> tuple[Path, int]:
    """A one-segment log of ten records, the last of which reached the file but was never covered
    by a completed fsync (as a crash leaves it); returns its file and the last record's offset."""
    records = numbered(10)
    positions = await write_log(directory, records[:9])
    path = segment_file(directory, positions[-1][0])
    last = path.stat().st_size
    with path.open("ab") as file:
        file.write(frame(*records[9]))
    return path, last


@pytest.mark.parametrize(
    "cut",
    [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 50, HEADER_SIZE + 99],
    ids=["one-byte", "partial-header", "header-only", "half-body", "all-but-one-byte"],
)
async def test_torn_final_record_is_truncated(tmp_path: Path, cut: int) -> None:
    path, last = await _ten_records(tmp_path)
    os.truncate(path, last + cut)

    seen, report = replay_all(tmp_path)

    assert [p for *_, p in seen] == [p for _, p in numbered(9)]
    assert path.stat().st_size == last
    assert report.truncated_segment == 1
    assert report.truncated_bytes == cut


async def test_final_record_with_bad_crc_at_eof_is_truncated(tmp_path: Path) -> None:
    path, last = await _ten_records(tmp_path)
    size = path.stat().st_size
    flip_byte(path, size - 1)

    seen, report = replay_all(tmp_path)

    assert len(seen) == 9
    assert path.stat().st_size == last
    assert (report.truncated_segment, report.truncated_bytes) == (1, size - last)


async def test_zero_filled_tail_is_truncated(tmp_path: Path) -> None:
    """A machine crash can leave file space allocated but never written: zeros hold no record."""
    path, _ = await _ten_records(tmp_path)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(bytes(4096))

    seen, report = replay_all(tmp_path)

    assert len(seen) == 10
    assert path.stat().st_size == size
    assert report.truncated_bytes == 4096


async def test_record_with_zeroed_body_and_zero_tail_is_truncated(tmp_path: Path) -> None:
    path, last = await _ten_records(tmp_path)
    data = bytearray(path.read_bytes())
    data[last + HEADER_SIZE :] = bytes(len(data) - last - HEADER_SIZE + 512)
    path.write_bytes(data)

    seen, _ = replay_all(tmp_path)

    assert len(seen) == 9
    assert path.stat().st_size == last


async def test_log_after_truncation_appends_and_replays_cleanly(tmp_path: Path) -> None:
    path, last = await _ten_records(tmp_path)
    os.truncate(path, last + 5)
    log = WriteAheadLog(tmp_path)
    log.replay(lambda *_: None)
    await log.start()
    log.append(1, b"fresh")
    await log.close()

    seen, report = replay_all(tmp_path)
    assert [p for *_, p in seen][-2:] == [numbered(9)[-1][1], b"fresh"]
    assert report.truncated_segment is None


# ------------------------------------------------------------------------- corruption


async def test_crc_mismatch_mid_segment_is_reported_not_skipped(tmp_path: Path) -> None:
    positions = await write_log(tmp_path, numbered(10))
    path = segment_file(tmp_path, 1)
    size = path.stat().st_size
    bad_offset = positions[5][1]
    flip_byte(path, bad_offset + HEADER_SIZE + 10)

    seen: list[int] = []
    log = WriteAheadLog(tmp_path)
    with pytest.raises(CorruptLogError) as caught:
        log.replay(lambda s, o, t, p: seen.append(o))

    error = caught.value
    assert (error.segment, error.offset) == (1, bad_offset)
    assert "CRC mismatch" in error.reason
    assert str(bad_offset) in str(error) and path.name in str(error)
    assert seen == [offset for _, offset in positions[:5]]
    assert path.stat().st_size == size  # nothing truncated


async def test_crc_mismatch_in_an_earlier_segment_is_reported(tmp_path: Path) -> None:
    """Even at the very end of its file: only the newest segment can be torn by a crash."""
    positions = await write_log(tmp_path, numbered(20), segment_size=500)
    last_in_first = max(o for s, o in positions if s == 1)
    path = segment_file(tmp_path, 1)
    flip_byte(path, path.stat().st_size - 1)

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert (caught.value.segment, caught.value.offset) == (1, last_in_first)
    assert "segment 1" in str(caught.value)


async def test_short_earlier_segment_is_reported(tmp_path: Path) -> None:
    positions = await write_log(tmp_path, numbered(20), segment_size=500)
    last_in_first = max(o for s, o in positions if s == 1)
    os.truncate(segment_file(tmp_path, 1), last_in_first + 20)

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert (caught.value.segment, caught.value.offset) == (1, last_in_first)


async def test_damaged_length_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    """A length that now points past EOF must not make the valid records behind it vanish."""
    positions = await write_log(tmp_path, numbered(10))
    path = segment_file(tmp_path, 1)
    size = path.stat().st_size
    flip_byte(path, positions[3][1])  # high byte of the length: a huge record

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert caught.value.offset == positions[3][1]
    assert "header" in caught.value.reason
    assert path.stat().st_size == size


# ------------------------------------------------------------------------- power loss, sync marker


def truncations(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if r.getMessage() == "wal.torn_tail_truncated"]  # type: ignore[attr-defined]


def marker_slots(directory: Path) -> list[tuple[int, int, int]]:
    """(sequence, segment, length) of every valid slot of the sync marker."""
    data = (directory / MARKER).read_bytes()
    slots = []
    for start in (0, 512):
        slot = data[start : start + 28]
        if len(slot) == 28 and zlib.crc32(slot[:24]) == int.from_bytes(slot[24:], "big"):
            slots.append(struct.unpack(">QQQ", slot[:24]))
    return slots


@pytest.mark.parametrize(
    ("tail", "kept"),
    [
        pytest.param(garbage(3000), [], id="garbage"),
        # a later page was written back, the one before it never was
        pytest.param(garbage(700) + frame(1, b"written back early"), [], id="valid-after-hole"),
        pytest.param(
            frame(2, b"unsynced") + garbage(500, seed=3), [b"unsynced"], id="valid-then-garbage"
        ),
    ],
)
@pytest.mark.parametrize("marker", ["marker", "no-marker"])
async def test_garbage_tail_past_the_last_fsync_is_truncated(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tail: bytes,
    kept: list[bytes],
    marker: str,
) -> None:
    """Power loss: the bytes written after the last completed fsync can come back as any mix of
    garbage, zeros and valid records. The start succeeds; the tail goes from the first bad record
    on; the records before it (a log prefix) stay. Without a marker (a log from before markers)
    the newest segment's fsynced length is taken as 0."""
    positions = await write_log(tmp_path, numbered(10))
    path = segment_file(tmp_path, 1)
    synced = path.stat().st_size
    if marker == "no-marker":
        (tmp_path / MARKER).unlink(missing_ok=True)  # as a log from before markers
    with path.open("ab") as file:
        file.write(tail)
    end = synced + sum(HEADER_SIZE + len(payload) for payload in kept)
    caplog.set_level(logging.WARNING, logger="warren.wal")

    seen, report = replay_all(tmp_path)

    assert [p for *_, p in seen] == [p for _, p in numbered(10)] + kept
    assert [(s, o) for s, o, *_ in seen][:10] == positions
    assert path.stat().st_size == end
    assert (report.truncated_segment, report.truncated_bytes) == (1, synced + len(tail) - end)
    (logged,) = truncations(caplog)
    assert logged["offset"] == end and logged["path"] == path
    assert "header" in str(logged["reason"]) or "CRC" in str(logged["reason"])
    assert logged["synced_bytes"] == (synced if marker == "marker" else 0)


async def test_power_loss_during_an_fsync_keeps_every_confirmed_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The real writer, policy "always": batch 1 is confirmed; batch 2 is written and its fsync
    never finishes. The disk as the power cut leaves it is the files at that moment with a page
    of batch 2 never written back (garbage) while later pages were. Recovery starts, returns every
    confirmed record and drops the unconfirmed tail from the hole on."""
    log = WriteAheadLog(tmp_path / "wal")
    await log.start()
    confirmed = numbered(20, size=200)
    for record in confirmed:
        log.append(*record)
    assert await synced(log) is None

    gate, blocked = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def stuck_fsync(fd: int) -> None:
        blocked.set()
        gate.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stuck_fsync)
    unconfirmed = [(3, f"unconfirmed {i}".encode().ljust(200, b"-")) for i in range(20)]
    positions = [log.append(*record) for record in unconfirmed]
    callback: list[BaseException | None] = []
    log.sync(callback.append)
    await wait_until(blocked.is_set)
    crashed = tmp_path / "after-power-loss"
    shutil.copytree(tmp_path / "wal", crashed)  # what the disk holds when the power goes
    gate.set()
    await log.close()
    assert callback == [None]

    hole = positions[5][1] + 40  # inside the sixth unconfirmed record
    overwrite(segment_file(crashed, 1), hole, garbage(4096 - hole % 4096))
    caplog.set_level(logging.WARNING, logger="warren.wal")
    seen, report = replay_all(crashed)

    payloads = [p for *_, p in seen]
    assert payloads == [p for _, p in confirmed] + [p for _, p in unconfirmed[:5]]
    assert report.truncated_segment == 1
    assert segment_file(crashed, 1).stat().st_size == positions[5][1]
    assert [f["offset"] for f in truncations(caplog)] == [positions[5][1]]


async def test_damage_followed_by_fsynced_records_in_the_newest_segment_is_corruption(
    tmp_path: Path,
) -> None:
    """Garbage in the middle of the newest segment with fsynced records behind it is not a crash
    tail: the start stops, naming segment and offset, and nothing is truncated."""
    positions = await write_log(tmp_path, numbered(10))
    path = segment_file(tmp_path, 1)
    size = path.stat().st_size
    overwrite(path, positions[4][1], garbage(60))

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert (caught.value.segment, caught.value.offset) == (1, positions[4][1])
    assert "fsynced" in caught.value.reason
    assert path.name in str(caught.value) and str(positions[4][1]) in str(caught.value)
    assert path.stat().st_size == size


@pytest.mark.parametrize("damage", ["crc-at-eof", "zeroed-tail"])
async def test_damaged_last_record_that_was_fsynced_is_corruption(
    tmp_path: Path, damage: str
) -> None:
    """A crash cannot damage fsynced bytes, so a bad last record inside the marked length is
    reported, not dropped as if torn: it was confirmed."""
    positions = await write_log(tmp_path, numbered(10))
    path = segment_file(tmp_path, 1)
    size = path.stat().st_size
    last = positions[-1][1]
    if damage == "crc-at-eof":
        flip_byte(path, size - 1)
    else:
        overwrite(path, last + HEADER_SIZE, bytes(size - last - HEADER_SIZE))

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert (caught.value.segment, caught.value.offset) == (1, last)
    assert path.stat().st_size == size


@pytest.mark.parametrize("cut", ["mid-record", "record-boundary"])
async def test_newest_segment_shorter_than_its_fsynced_length_is_corruption(
    tmp_path: Path, cut: str
) -> None:
    positions = await write_log(tmp_path, numbered(10))
    path = segment_file(tmp_path, 1)
    last = positions[-1][1]
    length = last + 20 if cut == "mid-record" else last
    os.truncate(path, length)

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert (caught.value.segment, caught.value.offset) == (1, last)
    assert path.stat().st_size == length


async def test_garbage_tail_in_an_older_segment_is_corruption(tmp_path: Path) -> None:
    """Every segment but the newest was fsynced whole before the next one was created."""
    positions = await write_log(tmp_path, numbered(20), segment_size=500)
    assert positions[-1][0] >= 2
    last_in_first = max(o for s, o in positions if s == 1)
    path = segment_file(tmp_path, 1)
    overwrite(path, last_in_first, garbage(path.stat().st_size - last_in_first))

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert (caught.value.segment, caught.value.offset) == (1, last_in_first)


async def test_missing_segment_named_by_the_marker_is_corruption(tmp_path: Path) -> None:
    await write_log(tmp_path, numbered(3))
    segment_file(tmp_path, 1).unlink()

    with pytest.raises(CorruptLogError) as caught:
        replay_all(tmp_path)

    assert caught.value.segment == 1 and "missing" in caught.value.reason


async def test_marker_follows_the_fsync_and_costs_no_fsync_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker is written after the segment's fsync (and the directory's), before the sync()
    callback runs, and is not fsynced per batch (no second fsync on the confirm's path); it is
    made durable when the log closes."""
    events: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def name(fd: int) -> str:
        return Path(os.readlink(f"/proc/self/fd/{fd}")).name

    def logged_fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(f"fsync {name(fd)}")

    def logged_fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        events.append(f"fdatasync {name(fd)}")

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "fdatasync", logged_fdatasync)
    log = WriteAheadLog(tmp_path)
    await log.start()
    for round_ in range(3):
        log.append(1, b"x" * (10 + round_))
        log.sync(lambda error, round_=round_: events.append(f"confirm {round_} {error}"))
        await wait_until(lambda round_=round_: f"confirm {round_} None" in events)
    await log.close()

    marker = MARKER
    assert events[:3] == [
        "fsync 0000000001.wal",
        f"fsync {tmp_path.name}",  # the new segment and the marker file
        "confirm 0 None",
    ]
    assert events[3:5] == ["fsync 0000000001.wal", "confirm 1 None"]
    assert events[-1] == f"fdatasync {marker}"  # the clean close
    size = segment_file(tmp_path, 1).stat().st_size
    # Rewritten at most every MARK_INTERVAL while the segment grows, exactly at the close.
    assert max(marker_slots(tmp_path))[1:] == (1, size)
    assert len(marker_slots(tmp_path)) == 2  # the previous value survives in the other slot


async def test_torn_marker_slot_falls_back_to_the_previous_fsynced_length(
    tmp_path: Path,
) -> None:
    """A marker write torn by the crash leaves the other slot: an older, smaller length, so damage
    past it counts as a crash tail (never the other way round)."""
    log = WriteAheadLog(tmp_path)
    await log.start()
    first = [log.append(*record) for record in numbered(5)]
    assert await synced(log) is None
    second = [log.append(*record) for record in numbered(5)]
    assert await synced(log) is None
    await log.close()
    slots = sorted(marker_slots(tmp_path))
    assert [slot[2] for slot in slots] == [second[0][1], log.disk_usage()]
    newest = 512 * (slots[-1][0] % 2)
    overwrite(tmp_path / MARKER, newest, garbage(28))
    overwrite(segment_file(tmp_path, 1), second[2][1], garbage(40))

    seen, report = replay_all(tmp_path)

    assert [o for _, o, *_ in seen] == [o for _, o in first + second[:2]]
    assert report.truncated_bytes == log.disk_usage() - second[2][1]


async def test_creating_the_log_directory_fsyncs_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new wal/ (and a new data_dir) is made durable in its parent before any segment is
    written into it: the segments' fsyncs do not cover the directory's own entry."""
    fsynced: list[tuple[Path, list[str]]] = []
    real_fsync = os.fsync

    def logged_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        fsynced.append((path, sorted(p.name for p in path.iterdir()) if path.is_dir() else []))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    data_dir = tmp_path / "data"
    log = WriteAheadLog(data_dir / "wal")
    assert fsynced == [(tmp_path, ["data"]), (data_dir, ["wal"])]

    fsynced.clear()
    WriteAheadLog(data_dir / "wal")  # an existing directory is left alone
    assert fsynced == []
    await log.close()


# ------------------------------------------------------------------------- group commit


def _ticketed(
    ticket: int, fired: list[int], done: asyncio.Future[BaseException | None]
) -> Callable[[BaseException | None], None]:
    """A sync callback that records its place in the firing order."""

    def callback(error: BaseException | None) -> None:
        fired.append(ticket)
        done.set_result(error)

    return callback


async def test_group_commit_shares_fsyncs_and_keeps_callback_order(tmp_path: Path) -> None:
    """100 publishers x 10 rounds of append+sync: far fewer fsyncs than syncs, callbacks in the
    order sync() was called."""
    log = WriteAheadLog(tmp_path)
    await log.start()
    loop = asyncio.get_running_loop()
    tickets = itertools.count()
    fired: list[int] = []

    async def publisher(number: int) -> None:
        for round_ in range(10):
            log.append(1, f"publisher {number} round {round_}".encode())
            done: asyncio.Future[BaseException | None] = loop.create_future()
            log.sync(_ticketed(next(tickets), fired, done))
            assert await done is None

    await asyncio.gather(*(publisher(n) for n in range(100)))
    await log.close()

    print(f"\n1000 syncs -> {log.stats.fsyncs} fsyncs in {log.stats.writes} writes")
    assert fired == list(range(1000))
    assert log.stats.fsyncs < 100
    assert len(replay_all(tmp_path)[0]) == 1000


async def test_sync_with_nothing_new_still_waits_for_earlier_appends(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    await log.start()
    order: list[str] = []
    log.append(1, b"x")
    log.sync(lambda error: order.append("first"))
    log.sync(lambda error: order.append("second"))
    assert await synced(log) is None
    assert order == ["first", "second"]
    await log.close()


async def test_close_flushes_without_start(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    log.append(3, b"pending")
    await log.close()
    seen, _ = replay_all(tmp_path)
    assert seen == [(1, 0, 3, b"pending")]


# ------------------------------------------------------------------------- read, segments


async def test_read_from_memory_and_from_disk(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    small = log.append(4, b"small")
    large = log.append(5, b"L" * 10_000)  # needs a second pread once on disk
    assert log.read(*small) == (4, b"small")
    assert log.read(*large) == (5, b"L" * 10_000)
    await log.start()
    assert await synced(log) is None
    assert not log._pending and not log._inflight
    assert log.read(*small) == (4, b"small")
    assert log.read(*large) == (5, b"L" * 10_000)
    await log.close()


def packed(locations: list[tuple[int, int]]) -> list[int]:
    """(segment, offset) places as `WriteAheadLog.reader` takes them."""
    return [pack_location(segment, offset) for segment, offset in locations]


def _views(log: WriteAheadLog, locations: list[tuple[int, int]]) -> list[object]:
    """What a RecordReader gives for these records: (type, payload) or the error."""
    reader = log.reader(packed(locations))
    reader.read()
    return _payloads(reader)


async def test_a_reader_reads_neighbours_together_and_what_is_not_written_from_memory(
    tmp_path: Path,
) -> None:
    """Records on disk come from one span read (one too large for its span read alone);
    records in flight to the file, or pending, from memory, whatever their order in the
    log's lists (a record in flight was once read from a file not created yet)."""
    log = WriteAheadLog(tmp_path)
    on_disk = [log.append(4, b"a" * 100), log.append(4, b"b" * 10_000), log.append(4, b"c")]
    await log.start()
    assert await synced(log) is None
    await log.close()
    log = WriteAheadLog(tmp_path)
    in_flight = log.append(6, b"in flight")
    log._inflight, log._pending, log._buffer = log._pending, [], None  # as the flusher has it
    pending = log.append(7, b"pending")
    assert _views(log, [*on_disk, in_flight, pending, (1, 999_999)])[:5] == [
        (4, b"a" * 100),
        (4, b"b" * 10_000),
        (4, b"c"),
        (6, b"in flight"),
        (7, b"pending"),
    ]
    assert isinstance(_views(log, [(1, 999_999)])[0], CorruptLogError)


async def test_a_reader_keeps_only_what_lone_records_use_of_their_reads(tmp_path: Path) -> None:
    """Records far apart are read a pread each, with a read-ahead of 4 KiB past each: what
    waits for the loop is cut to the record (thousands of such reads wait together when many
    queues read ahead). A record whose length field is damaged is still reported as damaged,
    not cut short and passed."""
    log = WriteAheadLog(tmp_path)
    lone = []
    for index in range(3):
        lone.append(log.append(4, str(index).encode() * 300))
        log.append(5, b"x" * 20_000)  # keeps the next one out of this one's span
    await log.start()
    assert await synced(log) is None
    await log.close()
    log = WriteAheadLog(tmp_path)
    reader = log.reader(packed(lone))
    reader.read()
    assert [len(span[3]) for span in reader._spans] == [HEADER_SIZE + 300] * 3
    assert [(view[0], view[1][view[2] : view[3]]) for view in reader.records()] == [
        (4, str(index).encode() * 300) for index in range(3)
    ]
    with open(segment_file(tmp_path, 1), "r+b") as segment:
        segment.seek(lone[1][1])
        segment.write((4).to_bytes(4, "big"))  # says 4 bytes: the cut would end mid-record
    found = _views(log, lone)
    assert found[0] == (4, b"0" * 300) and found[2] == (4, b"2" * 300)
    assert isinstance(found[1], CorruptLogError)
    await log.close()


def watch_preads(monkeypatch: pytest.MonkeyPatch, passing: bool = True) -> list[int]:
    """The offsets every os.pread from now on reads at; with `passing` False, nothing is
    read (a test that expects no pread fails on what it got, not on a crash)."""
    preads: list[int] = []
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        preads.append(offset)
        return real_pread(fd, size, offset) if passing else b""

    monkeypatch.setattr(os, "pread", pread)
    return preads


async def _lone_records(directory: Path, count: int) -> list[tuple[int, int]]:
    """`count` records of type 4, each 300 bytes of its index's digit, far enough apart to be
    read one by one; written, fsynced and the log closed."""
    log = WriteAheadLog(directory)
    lone = []
    for index in range(count):
        lone.append(log.append(4, str(index % 10).encode() * 300))
        log.append(5, b"x" * 20_000)  # keeps the next one out of this one's span
    await log.start()
    assert await synced(log) is None
    await log.close()
    return lone


def _cached_up_to(limit: int, pread: Callable[[int, int, int], bytes]) -> Callable[..., int]:
    """An os.preadv for reads that never wait, on a file whose cached pages end `limit` bytes
    into any read: it stops there."""

    def preadv(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        data = pread(fd, min(len(buffers[0]), limit), offset)
        buffers[0][: len(data)] = data
        return len(data)

    return preadv


def _payloads(reader: wal_module.RecordReader) -> list[object]:
    """(type, payload) of each record the reader gives, or the error."""
    return [
        found if isinstance(found, BaseException) else (found[0], found[1][found[2] : found[3]])
        for found in reader.records()
    ]


async def test_lone_records_in_the_page_cache_are_read_without_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`read_cached` copies lone records with reads that never wait for the disk, and leaves
    to `read` a span of neighbours whose last record runs past the span's read; what comes
    back is what a plain `read` gives."""
    lone = await _lone_records(tmp_path, 4)
    log = WriteAheadLog(tmp_path)
    plain = log.reader(packed([*lone, lone[0]]))
    plain.read()
    expected = _payloads(plain)
    neighbour = (lone[0][0], lone[0][1] + HEADER_SIZE + 300)  # the 20 kB record after it
    expected_neighbour = _views(log, [neighbour])[0]
    with open(segment_file(tmp_path, 1), "rb") as segment:
        segment.read()  # in the page cache, whatever the machine did meanwhile

    reader = log.reader(packed([*lone[1:], lone[0], neighbour]))
    assert reader.read_cached() is False  # lone[0] and its long neighbour: a span for `read`
    assert [len(span[4]) for span in reader._planned or []] == [2]
    preads = watch_preads(monkeypatch)
    reader.read()
    # The span only (the lone ones were copied already): its read-ahead, then the rest of its
    # last record, which is longer than that; in the thread, so the loop reads nothing more.
    assert preads == [lone[0][1], neighbour[1] + wal_module._READ_AHEAD]
    preads.clear()
    assert _payloads(reader) == [*expected[1:4], expected[0], expected_neighbour]
    assert preads == []
    await log.close()


async def test_a_span_of_neighbours_in_the_page_cache_is_copied_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue's backlog is read back a span of neighbouring records at a time. When the page
    cache holds all of a span, `read_cached` copies it on the loop: no pread, nothing left for
    the thread. When it holds only the start (the read that never waits stops short of the
    last record's end), the whole span is left to `read`. Either way the records are those a
    plain `read` gives."""
    log = WriteAheadLog(tmp_path)
    neighbours = [log.append(4, bytes([65 + index % 26]) * 300) for index in range(50)]
    await log.start()
    assert await synced(log) is None
    await log.close()
    log = WriteAheadLog(tmp_path)
    plain = log.reader(packed(neighbours))
    plain.read()
    expected = _payloads(plain)
    with open(segment_file(tmp_path, 1), "rb") as segment:
        segment.read()  # in the page cache, whatever the machine did meanwhile
    real_pread = os.pread

    monkeypatch.setattr(os, "preadv", _cached_up_to(6000, real_pread))
    reader = log.reader(packed(neighbours))
    assert reader.read_cached() is False
    assert [len(span[4]) for span in reader._planned or []] == [50]  # the span, whole
    reader.read()
    assert _payloads(reader) == expected

    monkeypatch.undo()
    preads = watch_preads(monkeypatch, passing=False)
    reader = log.reader(packed(neighbours))
    assert reader.read_cached() is True
    assert _payloads(reader) == expected
    assert preads == []
    await log.close()


async def test_records_not_in_the_page_cache_are_left_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment the kernel dropped from its cache: the reads that never wait fail at once and
    `read` (the thread's) reads those records, all right. After a few misses in a row the rest
    are not even tried; when the kernel has no such reads at all, `read` reads everything."""
    lone = await _lone_records(tmp_path, 20)
    log = WriteAheadLog(tmp_path)
    expected = _views(log, lone)
    fd = os.open(segment_file(tmp_path, 1), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages (fsynced): dropped
    finally:
        os.close(fd)
    reader = log.reader(packed(lone))
    if reader.read_cached():
        pytest.skip("this file system kept the segment cached (tmpfs?): no cold read here")
    assert reader._planned  # left to the thread
    reader.read()
    assert _payloads(reader) == expected

    tried: list[int] = []

    def cold(fd: int, buffers: object, offset: int, flags: int) -> int:
        tried.append(offset)
        raise BlockingIOError(errno.EAGAIN, "not cached")

    monkeypatch.setattr(os, "preadv", cold)
    reader = log.reader(packed(lone))
    assert reader.read_cached() is False
    assert len(tried) == wal_module._NOWAIT_MISSES
    reader.read()
    assert _payloads(reader) == expected

    def unsupported(fd: int, buffers: object, offset: int, flags: int) -> int:
        tried.append(offset)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    tried.clear()
    monkeypatch.setattr(os, "preadv", unsupported)
    reader = log.reader(packed(lone))
    assert reader.read_cached() is False
    assert len(tried) == 1
    reader.read()
    assert _payloads(reader) == expected
    await log.close()


async def test_damaged_payloads_either_side_of_the_crc_copy_size_are_reported(
    tmp_path: Path,
) -> None:
    """The read-back takes a short payload's CRC of a copy and a long one's of a view: a
    flipped payload byte is a CRC mismatch either way, and the records beside it still read."""
    log = WriteAheadLog(tmp_path)
    threshold = wal_module._CRC_COPY_BYTES
    sizes = [300, threshold, threshold + 1, 40_000]
    places = []
    for index, size in enumerate(sizes):
        places.append(log.append(4, bytes([65 + index]) * size))
        places.append(log.append(4, b"ok" * 10))
    await log.start()
    assert await synced(log) is None
    await log.close()
    for segment, offset in places[::2]:
        flip_byte(segment_file(tmp_path, segment), offset + HEADER_SIZE + 1)
    log = WriteAheadLog(tmp_path)
    reader = log.reader(packed(places))
    reader.read_cached()
    reader.read()
    found = _payloads(reader)
    assert all(isinstance(damaged, CorruptLogError) for damaged in found[::2])
    assert all("CRC mismatch" in str(damaged) for damaged in found[::2])
    assert found[1::2] == [(4, b"ok" * 10)] * len(sizes)
    await log.close()


async def test_a_long_lone_record_is_read_whole_from_the_cache_or_by_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone record longer than the read-ahead: copied whole on the loop when all of it is
    cached; when only its first page is (or none), the thread reads it, its rest included, and
    the loop makes no pread."""
    log = WriteAheadLog(tmp_path)
    long = [log.append(4, bytes([65 + index]) * 20_000) for index in range(3)]
    await log.start()
    assert await synced(log) is None
    await log.close()
    log = WriteAheadLog(tmp_path)
    expected = [(4, bytes([65 + index]) * 20_000) for index in range(3)]
    with open(segment_file(tmp_path, 1), "rb") as segment:
        segment.read()
    real_pread = os.pread  # for the test's own reads
    preads = watch_preads(monkeypatch)
    reader = log.reader(packed(long))
    assert reader.read_cached() is True
    assert _payloads(reader) == expected
    assert preads == []

    fd = os.open(segment_file(tmp_path, 1), os.O_RDONLY)
    try:  # all of it leaves the cache; then the middle record's first page alone comes back
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead on this descriptor
        real_pread(fd, 16, long[1][1])
    finally:
        os.close(fd)
    reader = log.reader(packed(long))
    if reader.read_cached():
        pytest.skip("this file system kept the segment cached (tmpfs?): no cold read here")
    left = len(reader._planned or [])
    reader.read()
    assert len(preads) == 2 * left  # in the thread: each read-ahead, then its record's rest
    assert _payloads(reader) == expected
    assert len(preads) == 2 * left  # and nothing on the loop

    monkeypatch.setattr(os, "preadv", _cached_up_to(6000, real_pread))
    reader = log.reader(packed(long))
    assert reader.read_cached() is False
    assert len(reader._planned or []) == 3
    await log.close()


async def test_a_record_too_big_to_copy_on_the_loop_is_left_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's body bigger than SPAN_BYTES, all of it cached: the loop does not copy it
    (a copy that size would hold the loop), the thread reads it whole, and the loop makes no
    pread when the records are checked."""
    log = WriteAheadLog(tmp_path)
    huge = bytes(range(256)) * ((wal_module.SPAN_BYTES + 4096) // 256)
    location = log.append(4, huge)
    await log.start()
    assert await synced(log) is None
    await log.close()
    log = WriteAheadLog(tmp_path)
    with open(segment_file(tmp_path, 1), "rb") as segment:
        segment.read()
    reader = log.reader(packed([location]))
    assert reader.read_cached() is False
    reader.read()
    preads = watch_preads(monkeypatch, passing=False)
    assert _payloads(reader) == [(4, huge)]
    assert preads == []
    await log.close()


async def test_a_damaged_lone_record_read_from_the_cache_is_reported(tmp_path: Path) -> None:
    """A length field that says less (the record would end mid-payload) or more (past what was
    read) than the record: reported as damage, never cut and passed."""
    lone = await _lone_records(tmp_path, 3)
    with open(segment_file(tmp_path, 1), "r+b") as segment:
        segment.seek(lone[0][1])
        segment.write((4).to_bytes(4, "big"))
        segment.seek(lone[2][1])
        segment.write((9000).to_bytes(4, "big"))
    log = WriteAheadLog(tmp_path)
    reader = log.reader(packed(lone))
    reader.read_cached()
    reader.read()
    found = _payloads(reader)
    assert isinstance(found[0], CorruptLogError) and isinstance(found[2], CorruptLogError)
    assert found[1] == (4, b"1" * 300)
    await log.close()


async def test_read_verifies_the_crc(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    await log.start()
    position = log.append(1, b"payload")
    assert await synced(log) is None
    flip_byte(segment_file(tmp_path, 1), HEADER_SIZE + 2)
    with pytest.raises(CorruptLogError, match="CRC mismatch"):
        log.read(*position)
    with pytest.raises(CorruptLogError):
        log.read(1, 1000)
    await log.close()


async def test_delete_segment(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, segment_size=100)
    log.append(1, b"a" * 80)
    log.append(1, b"b" * 80)
    assert log.segment_ids() == [1, 2]
    with pytest.raises(ValueError, match="still has records"):
        log.delete_segment(1)
    await log.start()
    assert await synced(log) is None
    usage = log.disk_usage()
    with pytest.raises(ValueError, match="active segment"):
        log.delete_segment(log.active_segment)
    with pytest.raises(ValueError, match="no segment 7"):
        log.delete_segment(7)

    log.delete_segment(1)

    assert log.segment_ids() == [2]
    assert not segment_file(tmp_path, 1).exists()
    assert log.disk_usage() == usage - HEADER_SIZE - 80
    await log.close()
    assert [p for *_, p in replay_all(tmp_path)[0]] == [b"b" * 80]


async def test_disk_usage_counts_files_and_pending(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, segment_size=300)
    for _ in range(10):
        log.append(1, b"z" * 50)
    assert log.disk_usage() == 10 * (HEADER_SIZE + 50)
    await log.close()
    on_disk = sum(path.stat().st_size for path in tmp_path.glob("*.wal"))
    assert on_disk == 10 * (HEADER_SIZE + 50)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    for record_type in (0, 256):
        with pytest.raises(ValueError, match="record_type"):
            log.append(record_type, b"")
    with pytest.raises(ValueError, match="sync_policy"):
        WriteAheadLog(tmp_path, sync_policy="sometimes")


# ------------------------------------------------------------------------- failures


def _failing(code: int) -> Callable[..., None]:
    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


async def test_fsync_failure_fails_waiters_and_everything_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = WriteAheadLog(tmp_path)
    await log.start()
    log.append(1, b"safe")
    assert await synced(log) is None

    monkeypatch.setattr(os, "fsync", _failing(errno.ENOSPC))
    caplog.set_level(logging.ERROR, logger="warren.wal")
    unsafe = log.append(1, b"unsafe")
    errors: list[BaseException | None] = []
    log.sync(errors.append)
    log.sync(errors.append)
    assert isinstance(await synced(log), OSError)

    assert len(errors) == 2 and all(e is log.failed for e in errors)
    assert isinstance(log.failed, OSError) and log.failed.errno == errno.ENOSPC
    (failure,) = [r for r in caplog.records if r.getMessage() == "wal.failed"]
    assert failure.fields["directory"] == tmp_path  # type: ignore[attr-defined]
    assert "nothing written from now on will be confirmed" in failure.fields["consequence"]  # type: ignore[attr-defined]

    monkeypatch.undo()  # the disk recovers; the log still never reports success again
    assert await synced(log) is log.failed
    with pytest.raises(WalError) as refused:
        log.append(1, b"more")
    assert refused.value.errno == errno.ENOSPC
    assert log.read(*unsafe) == (1, b"unsafe")
    await log.close()


async def test_write_failure_fails_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "pwrite", _failing(errno.EIO))
    log = WriteAheadLog(tmp_path)
    await log.start()
    position = log.append(1, b"lost")
    error = await synced(log)
    assert isinstance(error, OSError) and error.errno == errno.EIO
    assert log.failed is error
    assert log.read(*position) == (1, b"lost")  # still readable from memory
    await log.close()


# ------------------------------------------------------------------------- periodic policy


async def test_periodic_fires_callbacks_before_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    started = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        started.set()
        gate.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    log = WriteAheadLog(tmp_path, sync_policy="periodic", sync_interval=0.05)
    await log.start()
    log.append(1, b"fast")
    try:
        assert await synced(log) is None  # fires although fsync cannot finish
        assert not gate.is_set()
    finally:
        gate.set()
    await log.close()
    assert started.is_set()


async def test_periodic_fsyncs_at_most_every_interval(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, sync_policy="periodic", sync_interval=0.5)
    await log.start()
    log.append(1, b"first")
    assert await synced(log) is None
    await wait_until(lambda: log.stats.fsyncs == 2)  # at once: the new file and the directory
    for i in range(20):
        log.append(1, b"burst %d" % i)
        assert await synced(log) is None
    assert log.stats.fsyncs == 2  # inside the interval: written, not fsynced
    await wait_until(lambda: log.stats.fsyncs == 3)  # the timer fsyncs the whole burst once
    await log.close()
    assert len(replay_all(tmp_path)[0]) == 21


async def test_durable_sync_fsyncs_under_periodic(tmp_path: Path) -> None:
    """sync(durable=True) fsyncs at once even inside the interval (segment deletion needs it),
    and covers records already written but not yet fsynced."""
    log = WriteAheadLog(tmp_path, sync_policy="periodic", sync_interval=3600)
    await log.start()
    log.append(1, b"one")
    assert await synced(log) is None
    await wait_until(lambda: log.stats.fsyncs == 2)
    log.append(1, b"two")
    assert await synced(log) is None
    assert log.stats.fsyncs == 2  # written, not fsynced
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    log.sync(done.set_result, durable=True)
    assert await done is None
    assert log.stats.fsyncs == 3  # nothing new was appended, the written batch got its fsync
    await log.close()


async def test_close_fsyncs_under_periodic(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, sync_policy="periodic", sync_interval=3600)
    await log.start()
    log.append(1, b"one")
    assert await synced(log) is None
    await wait_until(lambda: log.stats.fsyncs == 2)
    log.append(1, b"two")
    assert await synced(log) is None
    await log.close()
    assert log.stats.fsyncs == 3


# ------------------------------------------------------------------------- replay speed


async def test_replay_of_200k_records_is_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WriteAheadLog(tmp_path, segment_size=1024 * 1024)
    await log.start()
    for i in range(200_000):
        log.append(1, b"message %08d" % i)
    await log.close()

    monkeypatch.setattr(wal_module, "_PROGRESS_STEP", 1024 * 1024)
    reports: list[tuple[int, int]] = []
    count = 0

    def on_record(segment: int, offset: int, record_type: int, payload: memoryview) -> None:
        nonlocal count
        count += 1

    started = time.perf_counter()
    report = WriteAheadLog(tmp_path).replay(on_record, lambda d, t: reports.append((d, t)))
    elapsed = time.perf_counter() - started

    print(f"\nreplayed {report.records} records ({report.bytes} bytes) in {elapsed:.3f}s")
    assert count == report.records == 200_000
    assert elapsed < 5
    assert len(reports) > 3
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert reports[-1] == (report.bytes, report.bytes)
