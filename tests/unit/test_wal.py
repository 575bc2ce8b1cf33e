"""The write-ahead log on real files: replay order, rollover, torn tails, corruption, group commit,
failure handling and the periodic policy."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.store import wal as wal_module
from broker.store.wal import (
    HEADER_SIZE,
    CorruptLogError,
    RecoveryReport,
    WalError,
    WriteAheadLog,
)

Record = tuple[int, int, int, bytes]  # segment, offset, type, payload


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
    """A one-segment log of ten records; returns its file and the last record's offset."""
    positions = await write_log(directory, numbered(10))
    segment, last_offset = positions[-1]
    return segment_file(directory, segment), last_offset


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
