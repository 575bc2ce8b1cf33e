"""The write-ahead log: segmented, append-only files, a CRC per record, and group commit.

Everything durable goes through here, and a publisher confirm is only as good as this file's
promise: a sync() callback reports success only after the bytes are written and (policy "always")
fsynced. The log knows nothing about what records mean; it stores (type, payload) pairs.

Record framing (13-byte header, big-endian, then the payload)::

    length u32 | length ^ 0xFFFFFFFF u32 | crc32 u32 | type u8 | payload (length bytes)

The CRC is zlib's CRC-32 of the type byte followed by the payload. The length is stored twice (the
second copy inverted) so that a damaged length is recognised as a damaged header, instead of
passing for a record that merely runs past the end of the file.

Segments are files named ``<id>.wal`` (ids grow by one, zero-padded to ten digits). A record never
spans segments: append() rolls to a new segment when the record would push the active one past
segment_size, and a record bigger than segment_size gets a segment of its own. Each WriteAheadLog
appends to a segment of its own, one past the highest id on disk, so replayed segments are never
written again and a truncated tail is never appended to.

Ordering that recovery relies on: a new segment file is created only after the previous one is
fsynced. So after a crash only the newest segment can hold damage; a bad record in any other
segment is corruption.

What a crash can leave, and how recovery tells it from corruption. Bytes covered by a completed
fsync survive a crash intact. Bytes written after the last completed fsync may reach the disk in
any order, page by page (out-of-order write-back): after a power loss the newest segment can end in
any mix of zeros, garbage and valid-looking records, even valid records after a hole. No scan can
tell such a tail from damage to fsynced records, so the log records the boundary: the sync marker,
the file ``synced`` beside the segments, holds (segment id, length) of the fsynced prefix of the
segment written last. After a completed segment fsync (and the directory fsync, when a segment
was created) the writer stores the new length there: at most every MARK_INTERVAL (50 ms) while
the segment grows, and always when a segment is sealed or the log closes. The marker is written
only after the fsync it describes has completed, so whatever value of it reaches the disk never
claims bytes that were not fsynced. It is not fsynced itself on every batch (that would be a
second fsync per group commit, on the confirm's path): after a power loss it may lag behind the
fsynced length, by MARK_INTERVAL and the kernel's write-back delay; it is fsynced when a segment
is sealed and on a clean close. A lagging
marker only makes recovery more lenient: damage in the few most recently fsynced records of the
newest segment is then truncated as a crash tail (and logged) instead of reported as corruption.
(Two CRC-checked slots, written alternately and told apart by a sequence number, so a write torn
by the crash leaves the previous value readable.)

The recovery rule, with S the marked length of the newest segment (0 when the marker names an
older segment or is missing, as for a log written before markers existed, or unreadable):

- A bad record in any segment but the newest: CorruptLogError (the segment was fully fsynced).
- A bad record in the newest segment at an offset below S, or a segment shorter than its marked
  length: CorruptLogError, naming segment and offset (fsynced bytes were damaged or lost).
- A bad record in the newest segment at offset S or beyond: a crash tail. The file is truncated at
  that record, whatever follows it (zeros, garbage, or records never covered by a completed fsync),
  and wal.torn_tail_truncated is logged with the reason. Valid records before it are kept: they
  are the log's prefix, in order.
- A marker naming a segment newer than every segment on disk: CorruptLogError (fsynced data lost).

Under policy "always" nothing past the fsynced length was ever confirmed, and S never exceeds
it, so the truncation drops no confirmed record unless fsynced bytes were damaged after the marker
last reached the disk. Under "periodic" records written after the last fsync may have been
confirmed; losing them in a machine crash is what that policy accepts. The log keeps a prefix:
a record after a hole is dropped even if it reached the disk, because replaying it without the
records in the hole could apply an effect without its cause.

Group commit: append() only frames the record into an in-memory buffer. One flusher task swaps
the buffer out, writes and fsyncs it in a dedicated worker thread, then runs the callbacks of every
sync() that was waiting for that batch. Whatever is appended meanwhile goes into the next batch, so
all publishers share each fsync. A write or fsync error fails the log for good: an fsync error may
already have dropped the dirty pages, so retrying could report data safe that is not.

Segment summaries (broker/store/summary.py): append() takes an optional fixed-size row the
owner makes of a record; per segment the log keeps those rows and the offsets of the other
records, and the worker appends them beside the segment in chunks, each after the fsync of what
it covers (every SUMMARY_STEP of a growing segment, at its seal, at a clean close). replay()
with `on_rows` then reads the chunks and the other records only, and scans what they do not
cover.

Policy "periodic" trades safety for speed: each batch is written at once and its callbacks run
after the write, but fsync runs at most every sync_interval seconds. A crash of the machine (not
just the process) can lose what was confirmed during the last interval.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import struct
import time
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, NoReturn

from zlib_ng import zlib_ng

from broker.core.persistence import OFFSET_BITS, OFFSET_MASK, SyncCallback, pack_location
from broker.core.stats import LatencyHistogram
from broker.logs import fields
from broker.store.records import read_u32
from broker.store.summary import (
    SUMMARY_NAME,
    Summary,
    SummaryBuilder,
    read_summary,
    summary_path,
    write_chunk,
)
from broker.store.wal_errors import WalError

logger = logging.getLogger("warren.wal")

_HEADER: Final = struct.Struct(">IIIB")
HEADER_SIZE: Final = _HEADER.size
_MASK: Final = 0xFFFFFFFF
MAX_PAYLOAD = _MASK
# crc32(bytes([type]) + payload) == crc32(payload, _TYPE_SEED[type]): one C call per record.
# zlib-ng's CRC-32 is zlib's, value for value (the log's format is unchanged), computed with
# carry-less multiplies: a third of zlib's time for a 300-byte record, a thirtieth for a
# segment that recovery checks whole. Final, so compiled code holds it, not looks it up.
crc32: Final = zlib_ng.crc32
_TYPE_SEED: Final = tuple(crc32(bytes([record_type])) for record_type in range(256))
_SEGMENT_NAME = re.compile(r"^(\d+)\.wal$")
# The sync marker: (sequence, segment id, fsynced length, CRC-32 of the first three), in two slots
# one sector apart, written alternately (slot = sequence % 2).
SYNC_MARKER = "synced"
_MARK = struct.Struct(">QQQI")
_MARK_BODY = 24
_MARK_SLOT = 512
_PROGRESS_STEP = 16 * 1024 * 1024
# Most records (a message, an ack) fit one pread of this size.
_READ_AHEAD: Final = 4096
# Payloads up to this size are copied for their CRC on read-back (`_crc_in`).
_CRC_COPY_BYTES: Final = 16 * 1024
# A record as `WriteAheadLog.reader` gives it: type, and its payload as buffer[start:end].
RecordView = tuple[int, bytes, int, int]
# A place in `WriteAheadLog.reader`'s results that its thread fills in.
_NOT_READ: Final[RecordView] = (0, b"", 0, 0)
# Records read back together come from one pread of at most about this many bytes, as long
# as each starts within SPAN_GAP of the one before: a queue's records that other queues'
# records separate (publishes round-robin over many queues) are read one by one, not with
# everything between them.
SPAN_BYTES: Final = 1 << 20
SPAN_GAP: Final = 8192
# A read to make: (descriptor, segment, offset, bytes, offsets of its records, their indices
# in the results).
_Span = tuple[int, int, int, int, list[int], list[int]]
# Reads that fail rather than wait for the disk (Linux); None elsewhere.
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
# Lone records not in the page cache one after another before the rest are left to `read`.
_NOWAIT_MISSES: Final = 8
SYNC_POLICIES = ("always", "periodic")
# Summary rows go to replay's on_rows this many at a time at most.
ROWS_PER_CALL = 4096
# The active segment's summary gets a chunk each time this much more of it is fsynced (or a
# quarter of a segment, if less), so after a crash replay scans at most about this much of it.
SUMMARY_STEP = 4 << 20
# The sync marker is rewritten after an fsync at most this often (and always when a segment is
# sealed or the log closes): it may lag, never lead, so a syscall per group commit buys nothing.
MARK_INTERVAL = 0.05

RecordCallback = Callable[[int, int, int, memoryview], None]
# on_rows(segment id, offsets, rows, read): a run of summary rows (see broker/store/summary.py),
# with read(offset) -> (type, payload) for the records a row cannot stand for.
RowsCallback = Callable[[int, "array[int]", memoryview, Callable[[int], tuple[int, bytes]]], None]
ProgressCallback = Callable[[int, int], None]


class CorruptLogError(Exception):
    """A record that is damaged, not merely torn off by a crash: recovery stops there."""

    def __init__(self, segment: int, offset: int, reason: str, path: Path | None = None) -> None:
        self.segment = segment
        self.offset = offset
        self.reason = reason
        self.path = path
        where = f"segment {segment} ({path})" if path is not None else f"segment {segment}"
        super().__init__(
            f"corrupt write-ahead log record in {where} at offset {offset}: {reason}. "
            "Nothing was skipped or truncated. Copy the data directory aside, then restore it "
            f"from a backup, or truncate the segment file to {offset} bytes and delete the "
            f"'{SYNC_MARKER}' file beside it (it records how much of the log was fsynced) to start "
            "without the records from that offset on."
        )


@dataclass(slots=True)
class RecoveryReport:
    """What replay() found: for the startup log line and the recovery-time metric."""

    segments: int
    records: int
    bytes: int
    summarized: int  # segments replayed from their summaries, without a scan
    truncated_segment: int | None
    truncated_bytes: int
    seconds: float


@dataclass(slots=True)
class WalStats:
    """Counters for metrics. Written only by the flusher's worker thread, read anywhere."""

    fsyncs: int = 0
    writes: int = 0
    bytes_written: int = 0
    last_fsync_seconds: float = 0.0
    fsync_latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # per sync()


class _Chunk(NamedTuple):
    """Framed records not yet written: they belong at `start` in segment `segment_id`."""

    segment_id: int
    start: int
    data: bytearray


class _BadRecord(NamedTuple):
    offset: int
    reason: str


class WriteAheadLog:
    """A segmented log in one directory. Use from one event loop thread: replay(), start(),
    then append()/sync() freely, read() and delete_segment() as needed, close()."""

    def __init__(
        self,
        directory: Path,
        segment_size: int = 64 * 1024 * 1024,
        sync_policy: str = "always",
        sync_interval: float = 0.2,
        summaries: bool = True,
        failure_note: tuple[str, str] = (
            "nothing written from now on will be confirmed",
            "free disk space or fix the device, then restart the broker;"
            " recovery keeps every confirmed record",
        ),
    ) -> None:
        if sync_policy not in SYNC_POLICIES:
            raise ValueError(f"sync_policy must be one of {SYNC_POLICIES}, not {sync_policy!r}")
        if segment_size <= 0:
            raise ValueError(f"segment_size must be positive, not {segment_size}")
        if sync_interval <= 0:
            raise ValueError(f"sync_interval must be positive, not {sync_interval}")
        self.directory = Path(directory)
        _make_directory(self.directory)
        self._segment_size = segment_size
        self._periodic = sync_policy == "periodic"
        self._sync_interval = sync_interval
        # Called with the new segment id right after a roll, before the record that caused it.
        self.on_segment_roll: Callable[[int], None] | None = None
        self.stats = WalStats()
        self._sealed = _existing_segments(self.directory)  # id -> size, every segment but active
        self._active = max(self._sealed, default=0) + 1
        _remove_orphan_summaries(self.directory, self._sealed)
        self._summaries = summaries  # keep segment summaries (a log that is replayed)
        self._failure_note = failure_note  # (consequence, action) logged with wal.failed
        self._summary_step = min(SUMMARY_STEP, max(segment_size // 4, 1))
        self._summary = SummaryBuilder()  # of the active segment
        # Sealed segments (id, size, summary) whose summary waits for their fsync.
        self._sealing: list[tuple[int, int, SummaryBuilder]] = []
        self._active_size = 0  # including records still in memory
        # Bytes the roll callback wrote at the start of the active segment (the snapshot): a
        # segment holds segment_size of records besides them, so a snapshot larger than a
        # segment cannot make every append roll (and write another snapshot).
        self._segment_base = 0
        self._pending: list[_Chunk] = []
        self._inflight: list[_Chunk] = []
        self._buffer: bytearray | None = None  # the data of the last pending chunk
        self._waiters: list[SyncCallback] = []
        self._rolling = False
        self._wake = asyncio.Event()
        self._failed: BaseException | None = None
        self._closing = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._writer = _SegmentWriter(self.directory, self.stats)
        self._read_fds: dict[int, int] = {}
        self._unsynced = False  # periodic: written since the last fsync
        self._force_fsync = False  # periodic: a waiter needs this batch fsynced
        self._last_fsync = float("-inf")
        self._fsync_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------------------ recovery

    def replay(
        self,
        on_record: RecordCallback,
        progress: ProgressCallback | None = None,
        on_rows: RowsCallback | None = None,
        row_size: int = 0,
    ) -> RecoveryReport:
        """Feed every valid record on disk to on_record(segment_id, offset, type, payload), in
        log order, truncating the newest segment's tail past its fsynced length at the first bad
        record; raise CorruptLogError on any other damage (see the module docstring).

        With `on_rows`, a segment with a usable summary of rows of `row_size` bytes is not
        scanned: its rows go to on_rows in runs, its other records to on_record, in log order.

        payload is a view into the segment's bytes: copy what you keep, or the whole segment stays
        in memory. Blocks the calling thread: call it once, before start().
        """
        if self._flusher is not None or self._closing:
            raise RuntimeError("replay() must run before start()")
        started = time.perf_counter()
        segment_ids = list(self._sealed)
        tracker = _Progress(sum(self._sealed.values()), progress)
        records = replayed_bytes = truncated_bytes = summarized = 0
        truncated_segment = None
        marked_segment, marked_length = _read_sync_marker(self.directory)
        if marked_segment > max(segment_ids, default=0):
            raise CorruptLogError(
                marked_segment,
                0,
                f"the segment file is missing although its first {marked_length} bytes were "
                f"fsynced (according to {self.directory / SYNC_MARKER})",
                self._segment_path(marked_segment),
            )
        for segment_id in segment_ids:
            path = self._segment_path(segment_id)
            synced = marked_length if segment_id == marked_segment else 0
            size = self._sealed[segment_id]
            summary = None
            if on_rows is not None and size >= synced:
                summary = read_summary(self.directory, segment_id, size, row_size)
            covered = 0
            if summary is not None and on_rows is not None:
                records += _replay_summary(segment_id, path, summary, on_record, on_rows)
                summarized += 1
                covered = summary.end
                if covered == size:
                    replayed_bytes += size
                    tracker.segment_done(size)
                    continue
            with path.open("rb") as file:  # what no summary chunk covers
                file.seek(covered)
                data = file.read()
            count, bad = _scan(segment_id, data, on_record, tracker, covered)
            records += count
            size = covered + len(data)
            if bad is not None:
                if segment_id != segment_ids[-1]:
                    raise CorruptLogError(segment_id, bad.offset, bad.reason, path)
                if bad.offset < synced:
                    reason = f"{bad.reason}, within the first {synced} bytes, which were fsynced"
                    raise CorruptLogError(segment_id, bad.offset, reason, path)
                _truncate_crash_tail(path, bad, size, synced)
                truncated_segment, truncated_bytes, size = segment_id, size - bad.offset, bad.offset
            elif size < synced:
                reason = f"the file ends here, but its first {synced} bytes were fsynced"
                raise CorruptLogError(segment_id, size, reason, path)
            self._sealed[segment_id] = size
            replayed_bytes += size
            tracker.segment_done(size)
        tracker.finish()
        report = RecoveryReport(
            segments=len(segment_ids),
            records=records,
            bytes=replayed_bytes,
            summarized=summarized,
            truncated_segment=truncated_segment,
            truncated_bytes=truncated_bytes,
            seconds=time.perf_counter() - started,
        )
        logger.info(
            "wal.replayed",
            extra=fields(
                directory=self.directory,
                records=report.records,
                bytes=report.bytes,
                segments=report.segments,
                summarized=report.summarized,
                seconds=round(report.seconds, 3),
            ),
        )
        return report

    # ------------------------------------------------------------------------------ hot path

    def append(
        self, record_type: int, payload: bytes | bytearray | memoryview, row: bytes | None = None
    ) -> tuple[int, int]:
        """Frame a record into the in-memory buffer; return (segment_id, offset) where it will be
        on disk. No syscalls: durability comes from a later sync(). A memoryview must be of bytes.
        `row` stands for the record in the segment's summary (the owner's fixed-size facts of
        it, see broker/store/summary.py); without one, replay reads the record itself.

        Raises WalError once the log has failed: nothing appended after that could be made safe.
        """
        if self._closing or self._failed is not None:
            self._refuse()
        if not 0 < record_type < 256:
            raise ValueError(f"record_type must be 1..255, not {record_type}")
        size = len(payload)
        if size > MAX_PAYLOAD:
            raise ValueError(f"a record payload is at most {MAX_PAYLOAD} bytes, not {size}")
        active_size = self._active_size
        base = self._segment_base
        if (
            active_size > base
            and active_size - base + HEADER_SIZE + size > self._segment_size
            and not self._rolling
        ):
            self._roll()
        buffer = self._buffer
        if buffer is None:
            buffer = self._new_chunk()
        offset = self._active_size
        buffer += _HEADER.pack(
            size, size ^ _MASK, crc32(payload, _TYPE_SEED[record_type]), record_type
        )
        buffer += payload
        self._active_size = offset + HEADER_SIZE + size
        if self._summaries:
            summary = self._summary
            if row is None:
                summary.others.append(offset)
                summary.others.append(summary.rows_base + len(summary.row_offsets))
            else:
                summary.row_offsets.append(offset)
                summary.rows += row
        self._wake.set()
        return self._active, offset

    def sync(self, callback: SyncCallback, durable: bool = False) -> None:
        """Call callback(None) on the loop once everything appended so far is written (and, policy
        "always", fsynced), or callback(error) if that failed. Callbacks run in call order.

        `durable` forces the fsync under policy "periodic" too: deleting old segments must wait
        until the snapshot that replaces them is really on disk."""
        if self._closing:
            raise RuntimeError("the write-ahead log is closed")
        if self._failed is not None:
            assert self._loop is not None  # failure only happens once the flusher runs
            self._loop.call_soon(self._fire, [callback], self._failed)
            return
        self._waiters.append(callback)
        self._force_fsync = self._force_fsync or durable
        self._wake.set()

    def _refuse(self) -> NoReturn:
        if self._closing:
            raise RuntimeError("the write-ahead log is closed")
        failure = self._failed
        code = failure.errno if isinstance(failure, OSError) and failure.errno else errno.EIO
        raise WalError(code, f"the write-ahead log failed earlier ({failure}); refusing records")

    def _roll(self) -> None:
        """Seal the active segment and start the next; let the owner write a snapshot first."""
        self._sealed[self._active] = self._active_size
        if self._summaries:
            self._summary.learn_row_size()  # the worker may be writing a chunk of it now
            self._sealing.append((self._active, self._active_size, self._summary))
            self._summary = SummaryBuilder()
        self._active += 1
        self._active_size = self._segment_base = 0
        self._buffer = None
        if self.on_segment_roll is not None:
            # Records appended from the callback land in the new segment however big they are.
            self._rolling = True
            try:
                self.on_segment_roll(self._active)
            except Exception as exc:
                # The new segment lacks the snapshot that lets older ones go: a log failure,
                # so nothing from here on is confirmed (and no segment is collected).
                self._fail(exc, [])
                self._refuse()
            finally:
                self._rolling = False
            self._segment_base = self._active_size

    def _new_chunk(self) -> bytearray:
        chunk = _Chunk(self._active, self._active_size, bytearray())
        self._pending.append(chunk)
        self._buffer = chunk.data
        return chunk.data

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the flusher on the running loop."""
        if self._flusher is not None or self._closing:
            raise RuntimeError("the write-ahead log was already started")
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warren-wal")
        self._flusher = self._loop.create_task(self._run(), name="warren-wal-flusher")

    async def close(self) -> None:
        """Write and fsync everything pending, run the last callbacks, stop, close the files.

        An I/O error on the way is reported through the callbacks, the log and `failed`.
        """
        if self._closing:
            return
        if self._flusher is None:
            await self.start()
        assert self._flusher is not None and self._executor is not None
        self._closing = True
        if self._summaries and self._active_size:  # the next log starts a segment of its own
            self._summary.learn_row_size()
            self._sealing.append((self._active, self._active_size, self._summary))
        self._wake.set()
        await self._flusher
        self._executor.shutdown(wait=False)
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        self._closed = True

    @property
    def failed(self) -> BaseException | None:
        """The write or fsync error that stopped the log, if one did."""
        return self._failed

    # ------------------------------------------------------------------------------ flusher

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            final = self._closing
            await self._flush(final)
            if final:
                return

    async def _flush(self, final: bool) -> None:
        """One group commit: write (and fsync) what is pending, then release its waiters."""
        waiters, self._waiters = self._waiters, []
        if final and self._fsync_timer is not None:
            self._fsync_timer.cancel()
            self._fsync_timer = None
        if self._failed is not None:
            self._fire(waiters, self._failed)
            if final:
                await self._in_worker(self._writer.close, False)
            return
        chunks, self._pending, self._buffer = self._pending, [], None
        force, self._force_fsync = self._force_fsync and self._periodic, False
        if chunks or final or (force and self._unsynced):
            self._inflight = chunks
            sealing, self._sealing = self._sealing, []
            summary = self._summary
            summary.settle()  # the worker is idle between batches
            mark = (
                self._active,
                self._active_size,
                summary.row_count,
                summary.other_count,
                summary,
            )
            try:
                waiting = await self._in_worker(
                    self._write_batch, chunks, not self._periodic or force, final, sealing, mark
                )
            except Exception as exc:
                self._pending[:0] = chunks  # unwritten records stay readable from memory
                self._fail(exc, waiters)
                if final:
                    await self._in_worker(self._writer.close, False)
                return
            finally:
                self._inflight = []
            self._sealing[:0] = waiting
            self._unsynced = self._periodic and not final and not force
            if force:
                self._last_fsync = self._loop.time()  # type: ignore[union-attr]
        self._fire(waiters, None)
        if self._unsynced:
            await self._periodic_fsync()

    def _write_batch(
        self,
        chunks: list[_Chunk],
        fsync: bool,
        final: bool,
        sealing: list[tuple[int, int, SummaryBuilder]],
        mark: tuple[int, int, int, int, SummaryBuilder],
    ) -> list[tuple[int, int, SummaryBuilder]]:
        """Worker thread: the only place records reach the files. Then summaries, only of
        what is fsynced by now: the last chunk of sealed segments the writer moved past (or
        closed), the others go back to wait for a later batch; and a chunk of the active
        segment (`mark`: id, size, rows and other items when this batch was taken) each
        SUMMARY_STEP."""
        self._writer.write(chunks)
        if final:
            self._writer.close(True)
        elif fsync:
            self._writer.sync()
        current = self._writer.segment
        waiting = []
        for segment_id, size, summary in sealing:
            if final or (current is not None and segment_id < current):
                rows, others = summary.row_count, summary.other_count
                write_chunk(self.directory, segment_id, summary, size, rows, others)
            else:
                waiting.append((segment_id, size, summary))
        segment_id, size, rows, others, summary = mark
        if fsync and segment_id == current and size - summary.done_end >= self._summary_step:
            write_chunk(self.directory, segment_id, summary, size, rows, others)
        return waiting

    async def _periodic_fsync(self) -> None:
        """Policy "periodic": fsync if the interval has passed, else make sure a timer will."""
        assert self._loop is not None
        wait = self._last_fsync + self._sync_interval - self._loop.time()
        if wait > 0:
            if self._fsync_timer is None:
                self._fsync_timer = self._loop.call_later(wait, self._fsync_due)
            return
        self._unsynced = False
        self._last_fsync = self._loop.time()
        try:
            await self._in_worker(self._writer.sync)
        except Exception as exc:
            self._fail(exc, [])

    def _fsync_due(self) -> None:
        self._fsync_timer = None
        self._wake.set()

    async def _in_worker(self, function: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, function, *args)

    def _fail(self, exc: BaseException, waiters: list[SyncCallback]) -> None:
        """Stop confirming for good and fail everyone waiting."""
        waiters = [*waiters, *self._waiters]
        self._waiters = []
        if self._failed is None:
            self._failed = exc
            logger.error(
                "wal.failed",
                extra=fields(
                    directory=self.directory,
                    error=exc,
                    failed_syncs=len(waiters),
                    consequence=self._failure_note[0],
                    action=self._failure_note[1],
                ),
                exc_info=exc if not isinstance(exc, OSError) else None,
            )
        self._fire(waiters, exc)

    @staticmethod
    def _fire(callbacks: Iterable[SyncCallback], error: BaseException | None) -> None:
        for callback in callbacks:
            try:
                callback(error)
            except Exception:
                logger.exception("wal.callback_failed", extra=fields(callback=repr(callback)))

    # ------------------------------------------------------------------------------ reading

    def read(self, segment_id: int, offset: int) -> tuple[int, bytes]:
        """(record_type, payload) of the record at (segment_id, offset), checked against its CRC.

        Records not yet written come from memory; others cost one pread (two if large).
        """
        if self._closed:
            raise RuntimeError("the write-ahead log is closed")
        in_memory = self._in_memory(segment_id, offset)
        if in_memory is not None:
            return in_memory
        return _pread_record(self._read_fd(segment_id), segment_id, offset)

    def _in_memory(self, segment_id: int, offset: int) -> tuple[int, bytes] | None:
        for chunk in (*self._pending, *self._inflight):
            position = offset - chunk.start
            if chunk.segment_id == segment_id and 0 <= position < len(chunk.data):
                return _decode(segment_id, offset, chunk.data, position)
        return None

    def reader(self, locations: list[int]) -> RecordReader:
        """A reader of these records (places as `pack_location`'s; see RecordReader): what
        is still in memory is copied now and the files are opened now, so its `read` shares
        nothing with the loop."""
        if self._closed:
            raise RuntimeError("the write-ahead log is closed")
        reader = RecordReader()
        # Records before the oldest one not written yet (in flight to the file, or pending)
        # are all in the files.
        unwritten = [
            pack_location(chunk.segment_id, chunk.start)
            for chunk in (*self._inflight, *self._pending)
        ]
        written_before = min(unwritten, default=-1)
        fd_segment, fd = -1, -1  # a backlog's records share a segment: one lookup for all
        for location in locations:
            segment_id, offset = location >> OFFSET_BITS, location & OFFSET_MASK
            try:
                if 0 <= written_before <= location:
                    found = self._in_memory(segment_id, offset)
                    if found is not None:
                        reader.results.append((found[0], found[1], 0, len(found[1])))
                        continue
                if segment_id != fd_segment:
                    fd = self._read_fd(segment_id)
                    fd_segment = segment_id
                reader.wants(fd, segment_id, offset)
            except (OSError, CorruptLogError) as error:
                reader.results.append(error)
        return reader

    def _read_fd(self, segment_id: int) -> int:
        fd = self._read_fds.get(segment_id)
        if fd is None:
            fd = os.open(self._segment_path(segment_id), os.O_RDONLY | os.O_CLOEXEC)
            self._read_fds[segment_id] = fd
        return fd

    # ------------------------------------------------------------------------------ segments

    def segment_ids(self) -> list[int]:
        """Every segment, oldest first; the last is the active one (its file may not exist yet)."""
        return [*self._sealed, self._active]

    @property
    def active_segment(self) -> int:
        """The segment appends go to."""
        return self._active

    def delete_segment(self, segment_id: int) -> None:
        """Remove a segment whose records are all settled. Blocks: unlink + directory fsync."""
        if self._closed:
            raise RuntimeError("the write-ahead log is closed")
        if segment_id == self._active:
            raise ValueError(f"segment {segment_id} is the active segment and cannot be deleted")
        if any(chunk.segment_id == segment_id for chunk in (*self._pending, *self._inflight)):
            raise ValueError(f"segment {segment_id} still has records waiting to be written")
        if segment_id not in self._sealed:
            raise ValueError(f"there is no segment {segment_id} in {self.directory}")
        self._sealing = [sealed for sealed in self._sealing if sealed[0] != segment_id]
        fd = self._read_fds.pop(segment_id, None)
        if fd is not None:
            os.close(fd)
        # The summary first: a crash in between leaves a segment without one (scanned), never
        # a summary without its segment.
        summary_path(self.directory, segment_id).unlink(missing_ok=True)
        self._segment_path(segment_id).unlink()
        _fsync_directory(self.directory)
        del self._sealed[segment_id]

    def pending_bytes(self) -> int:
        """Framed records held in memory until the flusher has written them (the memory alarm
        counts them: a slow disk makes them pile up)."""
        return sum(len(chunk.data) for chunk in (*self._pending, *self._inflight))

    def disk_usage(self) -> int:
        """Bytes in all segments, counting records still in memory; no syscalls."""
        return sum(self._sealed.values()) + self._active_size

    def _segment_path(self, segment_id: int) -> Path:
        return _segment_path(self.directory, segment_id)


class _SegmentWriter:
    """The worker thread's side: the one open write descriptor, always of the newest segment.

    Only the log's single worker thread calls it, so it needs no locks.
    """

    def __init__(self, directory: Path, stats: WalStats) -> None:
        self._directory = directory
        self._stats = stats
        self._segment: int | None = None
        self._fd: int | None = None
        self._end = 0  # bytes written to the segment
        self._dirty = False  # written since the last fsync
        self._directory_dirty = False  # a file was created since the last directory fsync
        self._marker_fd: int | None = None
        self._marker_sequence: int | None = None  # of the last marker slot written
        self._marked: tuple[int, int] | None = None  # (segment, length) the marker holds
        self._marked_at = float("-inf")  # time.monotonic() of the last marker write

    @property
    def segment(self) -> int | None:
        """The segment written last, still open; every earlier one is fsynced."""
        return self._segment

    def write(self, chunks: list[_Chunk]) -> None:
        for chunk in chunks:
            if chunk.segment_id != self._segment:
                self._create(chunk.segment_id)
            assert self._fd is not None
            _pwrite_all(self._fd, chunk.data, chunk.start)
            self._end = max(self._end, chunk.start + len(chunk.data))
            self._dirty = True
            self._stats.bytes_written += len(chunk.data)
        if chunks:
            self._stats.writes += 1

    def sync(self, exact_mark: bool = False) -> None:
        """fsync the segment written last and, if a file was created, the directory; then record
        the segment's fsynced length in the sync marker (at most every MARK_INTERVAL unless
        `exact_mark`), so that recovery can tell a crash tail from damage to confirmed records
        (see the module docstring)."""
        started = time.perf_counter_ns()
        synced = False
        if self._dirty and self._marker_fd is None:
            self._open_marker()  # created before the directory fsync below covers it
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
            self._dirty = False
            self._stats.fsyncs += 1
            synced = True
        if self._directory_dirty:
            _fsync_directory(self._directory)
            self._directory_dirty = False
            self._stats.fsyncs += 1
            synced = True
        if self._segment is not None and self._marked != (self._segment, self._end):
            moved_on = self._marked is None or self._marked[0] != self._segment
            if exact_mark or moved_on or time.monotonic() - self._marked_at >= MARK_INTERVAL:
                self._mark(self._segment, self._end)
                synced = True
        if synced:
            elapsed = time.perf_counter_ns() - started
            self._stats.last_fsync_seconds = elapsed / 1e9
            self._stats.fsync_latency.observe(elapsed)

    def close(self, durable: bool) -> None:
        """Close the write descriptor, after an fsync when `durable`."""
        if self._fd is None:
            return
        try:
            if durable:
                self.sync(exact_mark=True)
                if self._marker_fd is not None:  # a sealed segment's marker is exact
                    os.fdatasync(self._marker_fd)
        finally:
            os.close(self._fd)
            self._fd = self._segment = None
            if self._marker_fd is not None:
                os.close(self._marker_fd)
                self._marker_fd = None

    def _create(self, segment_id: int) -> None:
        # The previous segment is made durable before the next file exists, so that after a crash
        # only the newest segment can end in a torn record.
        self.close(True)
        path = _segment_path(self._directory, segment_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o644)
        self._segment = segment_id
        self._end = 0
        self._directory_dirty = True

    def _open_marker(self) -> None:
        path = self._directory / SYNC_MARKER
        if self._marker_sequence is None:
            self._marker_sequence = _read_marker_slots(path)[0]
        try:
            self._marker_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._marker_fd = os.open(path, flags, 0o644)
            self._directory_dirty = True

    def _mark(self, segment_id: int, length: int) -> None:
        """Record that the first `length` bytes of the segment are fsynced; only ever called
        after that fsync (and the directory's) completed, so the marker never claims too much."""
        if self._marker_fd is None:
            self._open_marker()
            if self._directory_dirty:
                _fsync_directory(self._directory)
                self._directory_dirty = False
        assert self._marker_fd is not None and self._marker_sequence is not None
        sequence = self._marker_sequence + 1
        _pwrite_all(self._marker_fd, _mark_slot(sequence, segment_id, length), _slot(sequence))
        self._marker_sequence = sequence
        self._marked = (segment_id, length)
        self._marked_at = time.monotonic()


class _Progress:
    """Calls progress(done, total) about every _PROGRESS_STEP bytes, cheaply per record."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self._callback = callback
        self._base = 0  # bytes in the segments already replayed
        self._next: float = _PROGRESS_STEP if callback is not None else float("inf")

    def next_offset(self) -> float:
        """The offset in the current segment at which the next report is due."""
        return self._next - self._base

    def reached(self, offset: int) -> float:
        assert self._callback is not None
        done = self._base + offset
        self._callback(done, self.total)
        self._next = float(done + _PROGRESS_STEP)
        return self.next_offset()

    def segment_done(self, size: int) -> None:
        self._base += size
        if self._base >= self._next:  # a segment replayed from its summary reports here
            self.reached(0)

    def finish(self) -> None:
        if self._callback is not None:
            self._callback(self._base, self.total)


def _scan(
    segment_id: int, data: bytes, on_record: RecordCallback, progress: _Progress, base: int = 0
) -> tuple[int, _BadRecord | None]:
    """Replay one segment's valid records from offset `base` (where `data` starts; what a
    summary covers comes before it) on; return how many, and the first bad record if any,
    offsets in the segment."""
    view = memoryview(data)
    end = len(data)
    unpack = _HEADER.unpack_from
    seeds = _TYPE_SEED
    report_at = progress.next_offset() - base
    position = count = 0
    while position < end:
        body = position + HEADER_SIZE
        if body > end:
            reason = f"incomplete record header ({end - position} of {HEADER_SIZE} bytes)"
            return count, _BadRecord(base + position, reason)
        length, check, crc, record_type = unpack(data, position)
        if check != length ^ _MASK or record_type == 0:
            reason = "damaged record header (length check or record type is invalid)"
            return count, _BadRecord(base + position, reason)
        stop = body + length
        if stop > end:
            reason = f"record of {length} bytes runs {stop - end} bytes past the end of the file"
            return count, _BadRecord(base + position, reason)
        payload = view[body:stop]
        actual = crc32(payload, seeds[record_type])
        if actual != crc:
            reason = f"CRC mismatch (stored {crc:#010x}, computed {actual:#010x})"
            return count, _BadRecord(base + position, reason)
        on_record(segment_id, base + position, record_type, payload)
        count += 1
        position = stop
        if position >= report_at:
            report_at = progress.reached(base + position) - base
    return count, None


def _replay_summary(
    segment_id: int,
    path: Path,
    summary: Summary,
    on_record: RecordCallback,
    on_rows: RowsCallback,
) -> int:
    """Replay a sealed segment from its summary: runs of rows to on_rows, each other record
    read from the file (checked against its CRC) to on_record, in log order. Returns how many
    records that was."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:

        def read(offset: int) -> tuple[int, bytes]:
            try:
                return _pread_record(fd, segment_id, offset)
            except CorruptLogError as error:
                raise CorruptLogError(segment_id, offset, error.reason, path) from None

        row_offsets, others, rows, row_size, _ = summary

        def rows_upto(done: int, stop: int) -> None:
            for start in range(done, stop, ROWS_PER_CALL):  # small pieces: no big temporaries
                end = min(stop, start + ROWS_PER_CALL)
                on_rows(
                    segment_id,
                    row_offsets[start:end],
                    rows[start * row_size : end * row_size],
                    read,
                )

        done = 0
        for index in range(0, len(others), 2):
            offset, before = others[index], others[index + 1]
            rows_upto(done, before)
            done = max(done, before)
            record_type, payload = read(offset)
            on_record(segment_id, offset, record_type, memoryview(payload))
        rows_upto(done, len(row_offsets))
    finally:
        os.close(fd)
    return len(row_offsets) + len(others) // 2


def _decode(
    segment_id: int, offset: int, data: bytes | bytearray, position: int
) -> tuple[int, bytes]:
    """Check and unpack the record at `position` in data, which holds it from `offset` on."""
    if len(data) - position < HEADER_SIZE:
        raise CorruptLogError(segment_id, offset, "no complete record header at this position")
    length, check, crc, record_type = _HEADER.unpack_from(data, position)
    if check != length ^ _MASK or record_type == 0:
        raise CorruptLogError(segment_id, offset, "damaged record header")
    body = position + HEADER_SIZE
    if body + length > len(data):
        raise CorruptLogError(segment_id, offset, f"record of {length} bytes is cut short")
    with memoryview(data) as view:  # released at once: `data` may be a growing buffer
        payload = bytes(view[body : body + length])
    actual = crc32(payload, _TYPE_SEED[record_type])
    if actual != crc:
        reason = f"CRC mismatch (stored {crc:#010x}, computed {actual:#010x})"
        raise CorruptLogError(segment_id, offset, reason)
    return record_type, payload


def _trimmed(data: bytes, last: int) -> bytes:
    """A span read with a read-ahead past its last record (at `last`), cut at that record's
    end when most of it is waste: a lone 300-byte record is not kept in a 4 KiB buffer while
    thousands of reads wait for the loop. A damaged length is left to `records`."""
    if len(data) >= last + HEADER_SIZE:
        end = last + HEADER_SIZE + _HEADER.unpack_from(data, last)[0]
        if 2 * end < len(data):
            return data[:end]
    return data


def _missing(data: bytes | bytearray, last: int, got: int) -> int:
    """Bytes the record at `last` has past the `got` read of `data`: 0 when none, and when its
    length field is damaged or not read (never trusted; `records` says what is wrong)."""
    if got < last + HEADER_SIZE:
        return 0
    length, check = _HEADER.unpack_from(data, last)[:2]
    if check != length ^ _MASK:
        return 0
    return max(0, last + HEADER_SIZE + length - got)


def _cached_span(fd: int, start: int, size: int, last: int) -> bytes | None:
    """Neighbouring records (the last at `last`) read from the page cache only, as `read`
    reads them; None when the read stopped short of the last record's end (a page not
    cached, or a damaged length): the thread reads the span then."""
    assert _NOWAIT is not None
    buffer = bytearray(size)
    got = os.preadv(fd, (buffer,), start, _NOWAIT)
    if got < last + HEADER_SIZE or _missing(buffer, last, got):
        return None
    with memoryview(buffer) as view:
        return _trimmed(bytes(view[:got]), last)


def _cached_record(fd: int, start: int, buffer: bytearray) -> bytes | None:
    """The record at `start`, read whole from the page cache only (RWF_NOWAIT: BlockingIOError
    when its first page is not there), as bytes cut at its end; None when the rest of it is
    not cached, or it is too big to copy on the loop: the thread reads it then. A damaged
    length field gives what was read, for `records` to report. `buffer` (a read-ahead's
    size) is reused from record to record: most records fit it."""
    assert _NOWAIT is not None
    got = os.preadv(fd, (buffer,), start, _NOWAIT)
    if got < HEADER_SIZE:
        return None
    end = HEADER_SIZE + _HEADER.unpack_from(buffer)[0]
    if end > got:  # longer than the read, or a damaged length
        if not _missing(buffer, 0, got):  # damaged: what was read, for `records`
            end = got
        elif end > SPAN_BYTES:
            return None
        else:
            whole = bytearray(end)
            return bytes(whole) if os.preadv(fd, (whole,), start, _NOWAIT) == end else None
    with memoryview(buffer) as view:
        return bytes(view[:end])


def _pread_record(fd: int, segment_id: int, offset: int) -> tuple[int, bytes]:
    """One record from a segment file: one pread, two when it is larger than a read-ahead."""
    data = os.pread(fd, _READ_AHEAD, offset)
    missing = _missing(data, 0, len(data))
    if missing:
        data += os.pread(fd, missing, offset + len(data))
    return _decode(segment_id, offset, data, 0)


class RecordReader:
    """Records read back together, in three steps: made on the loop (`WriteAheadLog.reader`),
    `read` in any thread (preads, each buffer cut to the records it holds: neighbouring
    records, as a backlog's lie, come from one pread of up to SPAN_BYTES), `records`
    back on the loop (checks each record's CRC and gives its type and place in the span, a
    RecordView, or the error reading it). A segment deleted meanwhile makes its reads fail
    (or, once its descriptor number is reused, read another record: callers check what they
    got)."""

    def __init__(self) -> None:
        self.results: list[RecordView | BaseException] = []
        self._on_disk: dict[int, _Wanted] = {}  # by descriptor
        self._last: _Wanted | None = None  # the descriptor `wants` was given last
        self._planned: list[_Span] | None = None  # what `read` still has to read
        self._spans: list[tuple[int, int, int, bytes | OSError, list[int], list[int]]] = []

    def wants(self, fd: int, segment_id: int, offset: int) -> None:
        wanted = self._last
        if wanted is None or wanted.fd != fd:
            wanted = self._on_disk.get(fd)
            if wanted is None:
                wanted = self._on_disk[fd] = _Wanted(fd, segment_id)
            self._last = wanted
        wanted.offsets.append(offset)
        wanted.indices.append(len(self.results))
        self.results.append(_NOT_READ)

    def read_cached(self) -> bool:
        """On the loop, before `read`: copy what is in the page cache, with reads that never
        wait for the disk (RWF_NOWAIT: a page that is not cached fails at once, and the span
        is left to `read`). True when `read` has nothing left.

        Why: in the reading thread each pread gives up the GIL and must win it back from the
        busy loop, which keeps it for up to the switch interval (5 ms) each time. A backlog
        spread over many queues is read back one record per queue every few hundred
        kilobytes of log, so each record is its own read: 1M messages over 1,000 queues made
        746k preads, the thread spent half its time in them, and the drain waited on the
        thread. One queue's backlog is read a span of a thousand records at a time, and each
        span sent to the thread waited for the GIL twice on its way back. On the loop, a
        cached lone record costs about a microsecond, and a span a copy of its bytes."""
        planned = self._plan()
        if _NOWAIT is None:
            return not planned
        left: list[_Span] = []
        misses = 0
        buffer = bytearray(_READ_AHEAD)  # a lone record's span is this size
        for span in planned:
            fd, segment_id, start, size, offsets, indices = span
            if misses >= _NOWAIT_MISSES:
                left.append(span)
                continue
            try:
                if len(offsets) == 1:
                    data = _cached_record(fd, start, buffer)
                else:
                    data = _cached_span(fd, start, size, offsets[-1] - start)
            except BlockingIOError:  # its first page is not in the page cache
                data = None
            except OSError:  # not supported here, or failing: `read` says what is wrong
                misses = _NOWAIT_MISSES
                left.append(span)
                continue
            if data is None:
                misses += 1
                left.append(span)
                continue
            misses = 0
            self._spans.append((fd, segment_id, start, data, offsets, indices))
        self._planned = left
        return not left

    def read(self) -> None:
        for fd, segment_id, start, size, offsets, indices in self._plan():
            data: bytes | OSError
            last = offsets[-1] - start
            try:
                data = os.pread(fd, size, start)
                missing = _missing(data, last, len(data))
                if missing:  # the last record is longer than the read-ahead: its rest too
                    data += os.pread(fd, missing, start + len(data))
                data = _trimmed(data, last)
            except OSError as error:
                data = error
            self._spans.append((fd, segment_id, start, data, offsets, indices))
        self._planned = []

    def _plan(self) -> list[_Span]:
        """The reads to make, once: neighbouring records share one (see the class)."""
        if self._planned is not None:
            return self._planned
        planned: list[_Span] = []
        for wanted in self._on_disk.values():
            offsets, indices = wanted.in_order()
            first, count = 0, len(offsets)
            while first < count:
                start, last = offsets[first], first
                while (
                    last + 1 < count
                    and offsets[last + 1] - start < SPAN_BYTES
                    and offsets[last + 1] - offsets[last] <= SPAN_GAP
                ):
                    last += 1
                size = offsets[last] - start + _READ_AHEAD
                planned.append(
                    (wanted.fd, wanted.segment_id, start, size,
                     offsets[first : last + 1], indices[first : last + 1])
                )  # fmt: skip
                first = last + 1
        self._planned = planned
        return planned

    def records(self) -> list[RecordView | BaseException]:
        results = self.results
        seeds = _TYPE_SEED
        for fd, segment_id, start, data, offsets, indices in self._spans:
            if isinstance(data, OSError):
                for index in indices:
                    results[index] = data
                continue
            size = len(data)
            for member in range(len(offsets)):
                offset, index = offsets[member], indices[member]
                position = offset - start
                body = position + HEADER_SIZE
                if body <= size:  # the header (`_HEADER`), read in place
                    length = read_u32(data, position)
                    end = body + length
                    record_type = data[position + 12]
                    if (
                        end <= size
                        and read_u32(data, position + 4) == length ^ _MASK
                        and record_type
                        and _crc_in(data, body, end, seeds[record_type])
                        == read_u32(data, position + 8)
                    ):
                        results[index] = (record_type, data, body, end)
                        continue
                try:  # past its span, or damaged: read alone, which says what is wrong
                    record_type, payload = _pread_record(fd, segment_id, offset)
                    results[index] = (record_type, payload, 0, len(payload))
                except (OSError, CorruptLogError) as error:
                    results[index] = error
        self._spans.clear()
        return results


def _crc_in(data: bytes, start: int, end: int, seed: int) -> int:
    """The CRC of data[start:end]: of a copy when it is short, as a backlog's records are (a few
    hundred bytes copy faster than a memoryview is made and read through the buffer protocol,
    which cost more than the CRC itself), of a view when a copy would double a big one."""
    if end - start <= _CRC_COPY_BYTES:
        return crc32(data[start:end], seed)
    with memoryview(data) as view:
        return crc32(view[start:end], seed)


class _Wanted:
    """The records a reader wants from one file: offsets, and their places in its results."""

    __slots__ = ("fd", "indices", "offsets", "segment_id")

    def __init__(self, fd: int, segment_id: int) -> None:
        self.fd = fd
        self.segment_id = segment_id
        self.offsets: list[int] = []
        self.indices: list[int] = []

    def in_order(self) -> tuple[list[int], list[int]]:
        """Offsets in ascending order with their indices: as asked, the usual case (a queue's
        records lie in the order it logged them), or sorted."""
        offsets, indices = self.offsets, self.indices
        for position in range(1, len(offsets)):
            if offsets[position] < offsets[position - 1]:
                order = sorted(range(len(offsets)), key=offsets.__getitem__)
                return [offsets[i] for i in order], [indices[i] for i in order]
        return offsets, indices


def _truncate_crash_tail(path: Path, bad: _BadRecord, size: int, synced: int) -> None:
    """Cut the newest segment at a bad record past its fsynced length: a crash left it."""
    logger.warning(
        "wal.torn_tail_truncated",
        extra=fields(
            path=path,
            offset=bad.offset,
            reason=bad.reason,
            truncated_bytes=size - bad.offset,
            synced_bytes=synced,
            note="bytes past the last completed fsync, left by a crash; with sync 'always' none"
            " of them was confirmed",
        ),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, bad.offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytearray, offset: int) -> None:
    done = 0
    with memoryview(data) as view:
        while done < len(view):
            written = os.pwrite(fd, view[done:], offset + done)
            if written <= 0:
                raise OSError(errno.EIO, "write to a write-ahead log segment made no progress")
            done += written


def _fsync_directory(directory: Path) -> None:
    """Make file creations and deletions in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directory(directory: Path) -> None:
    """Create `directory` and any missing parents, each made durable by an fsync of its parent: a
    segment fsynced into a directory whose own entry a crash can lose is not on disk."""
    missing: list[Path] = []
    path = directory.absolute()
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
        _fsync_directory(path.parent)


def _slot(sequence: int) -> int:
    return (sequence % 2) * _MARK_SLOT


def _mark_slot(sequence: int, segment_id: int, length: int) -> bytearray:
    slot = bytearray(_MARK.pack(sequence, segment_id, length, 0))
    slot[_MARK_BODY:] = crc32(slot[:_MARK_BODY]).to_bytes(4, "big")
    return slot


def _read_marker_slots(path: Path) -> tuple[int, int, int, bool]:
    """(sequence, segment id, length, found) of the newest valid slot; zeros if none is."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, 0, 0, False
    best = (0, 0, 0, False)
    for sequence in (0, 1):
        start = _slot(sequence)
        slot = data[start : start + _MARK.size]
        if len(slot) < _MARK.size:
            continue
        found, segment_id, length, crc = _MARK.unpack(slot)
        if crc == crc32(slot[:_MARK_BODY]) and _slot(found) == start and found > best[0]:
            best = (found, segment_id, length, True)
    if not best[3] and data:
        logger.warning(
            "wal.sync_marker_unreadable",
            extra=fields(
                path=path,
                size=len(data),
                consequence="any damage in the newest segment is treated as a crash tail",
            ),
        )
    return best


def _read_sync_marker(directory: Path) -> tuple[int, int]:
    """(segment id, fsynced length) from the sync marker; (0, 0) when there is none."""
    _, segment_id, length, _ = _read_marker_slots(directory / SYNC_MARKER)
    return segment_id, length


def _segment_path(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:010d}.wal"


def _remove_orphan_summaries(directory: Path, segments: dict[int, int]) -> None:
    """Summaries whose segment is gone (deleted after a crash left the summary, or written
    just after the delete): a new segment of that id must never meet one."""
    with os.scandir(directory) as entries:
        for entry in entries:
            match = SUMMARY_NAME.match(entry.name)
            if match and int(match.group(1)) not in segments:
                os.unlink(entry.path)


def _existing_segments(directory: Path) -> dict[int, int]:
    """Segment id -> file size of the segments on disk, oldest first."""
    found = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _SEGMENT_NAME.match(entry.name)
            if match and entry.is_file():
                found[int(match.group(1))] = entry.stat().st_size
    return dict(sorted(found.items()))
