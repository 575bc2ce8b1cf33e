"""Segment summaries: what replay needs of a segment, without reading its bodies.

Replaying ten million queued messages by scanning the log reads every body (gigabytes) and
parses every record in Python. The log's owner knows, when it appends a message record, the
few facts recovery keeps of it (its id, queue, sizes, TTL); it hands them to `append` as a
fixed-size row. The log keeps, per segment, those rows and their offsets, and the offsets of
every other record (definitions, settles, marks) with how many rows came before each. The
worker thread appends them to ``<id>.sum`` beside ``<id>.wal`` in chunks, each covering the
records from where the previous chunk ended up to bytes already fsynced: while the segment
grows (every SUMMARY_STEP of it), when it is sealed, and when the log closes cleanly. Replay
reads the chunks, then only the other records (a pread each), in log order, hands rows over in
runs, and scans what no chunk covers (after a crash, the newest part of the newest segment).

A summary is a cache, never the only copy: a chunk is written after the fsync of the records it
covers, is not fsynced itself, and is used only when its CRC holds, it names the segment, it
starts where the previous one ended and ends within the file. The first chunk that fails ends
the summary (a crash tears the last one); what follows is scanned as before. Message records
replayed from rows are not CRC-checked at start; their CRC is checked when the message is read
back for delivery, which sets a damaged one aside and logs it.

File layout (native byte order, which each head records), chunk after chunk::

    head: magic "WSUM" | version u8 | little-endian u8 | 2 pad | segment id u64 |
          start u64 | end u64 | row size u32 | rows u64 | others u64 | CRC-32 of the body u32
    body: row offsets (u64 each) | others (offset, rows before it in the segment: u64 pairs) |
          rows
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
from array import array
from pathlib import Path
from typing import NamedTuple

from zlib_ng.zlib_ng import crc32

from broker.logs import fields

logger = logging.getLogger("warren.wal")

_MAGIC = b"WSUM"
_VERSION = 2
_HEAD = struct.Struct("=4sBB2xQQQIQQI")
_LITTLE = int(sys.byteorder == "little")
SUMMARY_NAME = re.compile(r"^(\d+)\.sum$")


class SummaryBuilder:
    """The summary of a segment: the log fills it in `append` (on the loop); the worker
    thread writes it out in chunks and remembers how much it wrote (`done_*`); between
    batches, the loop drops what was written (`trim`). Counts of rows and other items are
    of the whole segment; the arrays hold them from `rows_base` and `others_base` on."""

    __slots__ = (
        "broken",
        "done_end",
        "done_others",
        "done_rows",
        "others",
        "others_base",
        "row_offsets",
        "row_size",
        "rows",
        "rows_base",
    )

    def __init__(self) -> None:
        self.row_offsets = array("Q")
        self.others = array("Q")  # (offset, rows before it in the segment) pairs
        self.rows = bytearray()
        self.rows_base = self.others_base = 0  # dropped from the front, written already
        self.row_size = 0  # learnt on the loop (`settle`): the worker may see a row half added
        self.done_end = 0  # the file covers the segment up to here
        self.done_rows = 0
        self.done_others = 0  # array items, two a record
        self.broken = False  # a write failed: no more chunks (the rest is scanned)

    @property
    def row_count(self) -> int:
        return self.rows_base + len(self.row_offsets)

    @property
    def other_count(self) -> int:
        return self.others_base + len(self.others)

    def learn_row_size(self) -> None:
        """On the loop, between appends: the worker could see an offset whose row is not
        added yet, so it never works the row size out itself."""
        if self.row_offsets and not self.row_size:
            self.row_size = len(self.rows) // len(self.row_offsets)

    def settle(self) -> None:
        """`learn_row_size`, and, while the worker is idle, drop what the file holds already,
        so memory keeps what the next chunk needs, not a whole segment's rows."""
        self.learn_row_size()
        written = self.done_rows - self.rows_base
        if written > 0:
            del self.row_offsets[:written]
            del self.rows[: written * self.row_size]
            self.rows_base = self.done_rows
        written = self.done_others - self.others_base
        if written > 0:
            del self.others[:written]
            self.others_base = self.done_others

    def chunk(self, segment_id: int, end: int, rows: int, others: int) -> bytes | None:
        """The chunk covering the records from `done_end` to `end` (rows and other items up
        to the counts `rows` and `others`); None when the rows are not all of one size."""
        count = rows - self.done_rows
        row_size = self.row_size
        first, stop = self.done_rows - self.rows_base, rows - self.rows_base
        chunk_rows = self.rows[first * row_size : stop * row_size]
        if row_size * count != len(chunk_rows):
            return None
        body = b"".join(
            (
                self.row_offsets[first:stop].tobytes(),
                self.others[
                    self.done_others - self.others_base : others - self.others_base
                ].tobytes(),
                chunk_rows,
            )
        )
        head = _HEAD.pack(
            _MAGIC,
            _VERSION,
            _LITTLE,
            segment_id,
            self.done_end,
            end,
            row_size,
            count,
            (others - self.done_others) // 2,
            crc32(body),
        )
        return head + body


class Summary(NamedTuple):
    """A summary read back and checked: row offsets, others as (offset, rows before) pairs,
    the rows (row_size bytes each), and where in the segment the last good chunk ended."""

    row_offsets: array[int]
    others: array[int]
    rows: memoryview
    row_size: int
    end: int


def summary_path(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:010d}.sum"


def write_chunk(
    directory: Path, segment_id: int, builder: SummaryBuilder, end: int, rows: int, others: int
) -> None:
    """Append a chunk covering up to `end` (worker thread, after the fsync of those bytes). A
    failure costs only the speed of the next start: logged, the file removed, and no more
    chunks for the segment (it is scanned)."""
    if builder.broken or end <= builder.done_end:
        return
    data = builder.chunk(segment_id, end, rows, others)
    path = summary_path(directory, segment_id)
    if data is None:
        logger.warning("wal.summary_skipped", extra=fields(segment=segment_id, reason="row sizes"))
        builder.broken = True
        path.unlink(missing_ok=True)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    if not builder.done_end:
        flags |= os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as error:
        logger.warning(
            "wal.summary_unwritten",
            extra=fields(segment=segment_id, error=error, consequence="the next start scans it"),
        )
        builder.broken = True
        path.unlink(missing_ok=True)
        return
    builder.done_end, builder.done_rows, builder.done_others = end, rows, others


def read_summary(directory: Path, segment_id: int, size: int, row_size: int) -> Summary | None:
    """The segment's summary, its chunks up to the first that does not hold (see the module
    docstring); None when there is none (logged when a file was there but no chunk held)."""
    path = summary_path(directory, segment_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        _unusable(path, f"unreadable: {error}")
        return None
    view = memoryview(data)
    row_offsets, others, rows = array("Q"), array("Q"), []
    position = covered = 0
    problem = "no complete chunk"
    while position + _HEAD.size <= len(data):
        magic, version, little, found_id, start, end, found_row, count, pairs, crc = (
            _HEAD.unpack_from(data, position)
        )
        if magic != _MAGIC or version != _VERSION or little != _LITTLE:
            problem = "not a summary of this version and byte order"
            break
        if found_id != segment_id or start != covered or not start <= end <= size:
            problem = f"a chunk of segment {found_id} for {start}..{end}, not of {size} bytes"
            break
        if count and found_row != row_size:
            problem = f"rows of {found_row} bytes, not {row_size}"
            break
        body_at = position + _HEAD.size
        stop = body_at + 8 * count + 16 * pairs + found_row * count
        if stop > len(data) or crc32(view[body_at:stop]) != crc:
            problem = "torn or damaged (length or CRC does not match)"
            break  # a crash tears the last chunk: the rest of the segment is scanned
        row_offsets.frombytes(view[body_at : body_at + 8 * count])
        others.frombytes(view[body_at + 8 * count : body_at + 8 * count + 16 * pairs])
        rows.append(view[body_at + 8 * count + 16 * pairs : stop])
        covered, position = end, stop
    if not covered:
        _unusable(path, problem)
        return None
    return Summary(row_offsets, others, memoryview(b"".join(rows)), row_size, covered)


def _unusable(path: Path, reason: str) -> None:
    logger.warning(
        "wal.summary_unused",
        extra=fields(path=path, reason=reason, consequence="the segment is scanned instead"),
    )
