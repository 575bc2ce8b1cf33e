"""Segment summaries: what replay needs of a sealed segment, without reading its bodies.

Replaying ten million queued messages by scanning the log reads every body (gigabytes) and
parses every record in Python. The log's owner knows, when it appends a message record, the
few facts recovery keeps of it (its id, queue, sizes, TTL); it hands them to `append` as a
fixed-size row. The log keeps, per segment, those rows and their offsets, and the offsets of
every other record (definitions, settles, marks) with how many rows came before each. When a
segment has been sealed and fsynced (or the log closes cleanly), the worker thread writes this
to ``<id>.sum`` beside ``<id>.wal``. Replay then reads the summary and only the other records
(a pread each), in log order, and hands rows over in runs.

A summary is a cache, never the only copy: it is written after the segment's fsync, is not
fsynced itself, and is used only when its CRC holds and it names the segment's id and exact
size. Anything else (missing, torn by a crash, from another segment, rows of another size) and
replay scans the segment as before. Message records replayed from rows are not CRC-checked at
start; their CRC is checked when the message is read back for delivery, which sets a damaged
one aside and logs it.

File layout (native byte order, which the head records)::

    head: magic "WSUM" | version u8 | little-endian u8 | 2 pad | segment id u64 |
          segment size u64 | row size u32 | rows u64 | others u64 | CRC-32 of the body u32
    body: row offsets (u64 each) | others (offset, rows before it: u64 pairs) | rows
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
import zlib
from array import array
from pathlib import Path
from typing import NamedTuple

from broker.logs import fields

logger = logging.getLogger("warren.wal")

_MAGIC = b"WSUM"
_VERSION = 1
_HEAD = struct.Struct("=4sBB2xQQIQQI")
_LITTLE = int(sys.byteorder == "little")
SUMMARY_NAME = re.compile(r"^(\d+)\.sum$")


class SummaryBuilder:
    """The summary of the segment being appended to; the log fills it in `append`."""

    __slots__ = ("others", "row_offsets", "rows")

    def __init__(self) -> None:
        self.row_offsets = array("Q")
        self.others = array("Q")  # (offset, rows before it) pairs
        self.rows = bytearray()

    def to_bytes(self, segment_id: int, segment_size: int) -> bytes | None:
        """The file's bytes; None when the rows are not all of one size (no summary then)."""
        count = len(self.row_offsets)
        row_size = len(self.rows) // count if count else 0
        if row_size * count != len(self.rows):
            return None
        body = b"".join((self.row_offsets.tobytes(), self.others.tobytes(), self.rows))
        head = _HEAD.pack(
            _MAGIC,
            _VERSION,
            _LITTLE,
            segment_id,
            segment_size,
            row_size,
            count,
            len(self.others) // 2,
            zlib.crc32(body),
        )
        return head + body


class Summary(NamedTuple):
    """A summary read back and checked: row offsets, others as (offset, rows before) pairs,
    and the rows (row_size bytes each)."""

    row_offsets: array[int]
    others: array[int]
    rows: memoryview
    row_size: int


def summary_path(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:010d}.sum"


def write_summary(directory: Path, segment_id: int, size: int, builder: SummaryBuilder) -> None:
    """Write a sealed, fsynced segment's summary (worker thread). A failure costs only the
    speed of the next start, so it is logged, the partial file removed, and the log goes on."""
    data = builder.to_bytes(segment_id, size)
    if data is None:
        logger.warning("wal.summary_skipped", extra=fields(segment=segment_id, reason="row sizes"))
        return
    path = summary_path(directory, segment_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
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
        path.unlink(missing_ok=True)


def read_summary(directory: Path, segment_id: int, size: int, row_size: int) -> Summary | None:
    """The segment's summary if there is one that holds (see the module docstring), else None
    (logged when a file was there but could not be used)."""
    path = summary_path(directory, segment_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        return _unusable(path, f"unreadable: {error}")
    if len(data) < _HEAD.size:
        return _unusable(path, "shorter than its head")
    magic, version, little, found_id, found_size, found_row, rows, others, crc = _HEAD.unpack_from(
        data
    )
    if magic != _MAGIC or version != _VERSION or little != _LITTLE:
        return _unusable(path, "not a summary of this version and byte order")
    if found_id != segment_id or found_size != size:
        reason = f"it describes segment {found_id} of {found_size} bytes, not of {size}"
        return _unusable(path, reason)
    if rows and found_row != row_size:
        return _unusable(path, f"rows of {found_row} bytes, not {row_size}")
    expected = _HEAD.size + 8 * rows + 16 * others + found_row * rows
    body = memoryview(data)[_HEAD.size :]
    if len(data) != expected or zlib.crc32(body) != crc:
        return _unusable(path, "torn or damaged (length or CRC does not match)")
    row_offsets, pairs = array("Q"), array("Q")
    row_offsets.frombytes(body[: 8 * rows])
    pairs.frombytes(body[8 * rows : 8 * rows + 16 * others])
    return Summary(row_offsets, pairs, body[8 * rows + 16 * others :], found_row)


def _unusable(path: Path, reason: str) -> None:
    logger.warning(
        "wal.summary_unused",
        extra=fields(path=path, reason=reason, consequence="the segment is scanned instead"),
    )
    return None
