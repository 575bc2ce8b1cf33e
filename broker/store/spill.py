"""Spill files: transient messages paged out of memory while memory is short.

RabbitMQ's classic queues write transient messages to disk once memory passes a fraction of the
high watermark (`vm_memory_high_watermark_paging_ratio`, 0.5), so a backlog of transient
messages does not run into the memory alarm. Warren's paging queues do the same: a transient
message that would wait past the queue's window, while memory is past
`limits.memory_paging_ratio` of the high watermark, is written here and kept as a compact
record, and read back, like a logged message, as consumers near it.

The files are a second `WriteAheadLog` in ``data_dir/spill`` (its buffering, worker-thread
writes and readers of records not written yet come with it), never replayed: a transient
message does not survive a restart, so the directory is emptied at start, nothing is fsynced
for a confirm, and a record is forgotten once read back. A segment goes when every record in it
was read back or dropped and it is written.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from broker.core.message import Message
from broker.logs import fields
from broker.store import records
from broker.store.wal import RecordReader, WriteAheadLog

log = logging.getLogger("warren.spill")

# Nothing here needs an fsync; the log fsyncs only when it rolls to a new file.
_NEVER = 24 * 3600.0


class SpillFiles:
    """Where transient messages wait on disk, and how many wait in each segment."""

    def __init__(self, directory: Path, segment_size: int) -> None:
        shutil.rmtree(directory, ignore_errors=True)  # what a previous run spilled is gone
        self.log = WriteAheadLog(
            directory,
            segment_size=segment_size,
            sync_policy="periodic",
            sync_interval=_NEVER,
            summaries=False,
            failure_note=(
                "transient messages stay in memory from now on; nothing durable is affected",
                "free disk space or fix the device; a restart empties the spill files",
            ),
        )
        # Memory is past the paging ratio (the server's memory monitor sets it).
        self.active = False
        self.waiting: dict[int, int] = {}  # segment -> spilled messages not read back yet
        self.count = 0
        self._collecting = False

    async def start(self) -> None:
        await self.log.start()

    async def close(self) -> None:
        await self.log.close()

    def write(self, message: Message) -> tuple[int, int] | None:
        """Write a transient message out; where it went, or None when it could not be (a
        failed disk: the message stays in memory)."""
        if self.log.failed is not None:
            return None  # the log said so once, as wal.failed: no warning per message
        payload = records.encode_message(
            0,
            [],
            message.route_bytes,
            message.header,
            message.body or b"",
            records.timed(message.published_at),
        )
        try:
            location = self.log.append(records.MESSAGE_AT, payload)
        except (OSError, RuntimeError) as error:
            log.warning("spill.unavailable", extra=fields(error=error))
            return None
        self.waiting[location[0]] = self.waiting.get(location[0], 0) + 1
        self.count += 1
        return location

    def reader(self, locations: list[int]) -> RecordReader:
        return self.log.reader(locations)

    def read_back(self, segments: dict[int, int]) -> None:
        """Spilled messages read back (or lost with a failing disk): segment -> how many. An
        emptied segment goes once everything in it is written."""
        waiting = self.waiting
        emptied = False
        for segment, count in segments.items():
            left = waiting.get(segment, 0) - count
            self.count -= count
            if left > 0:
                waiting[segment] = left
            else:
                waiting.pop(segment, None)
                emptied = True
        if emptied and not self._collecting:
            self._collecting = True
            try:
                self.log.sync(self._collect)
            except RuntimeError:  # closing: the directory is emptied at the next start
                self._collecting = False

    def _collect(self, error: BaseException | None) -> None:
        self._collecting = False
        if error is not None:
            return
        for segment in self.log.segment_ids()[:-1]:  # every sealed one
            if segment not in self.waiting:
                try:
                    self.log.delete_segment(segment)
                except ValueError:
                    pass  # records of it still wait to be written: the next collection
                except OSError as failure:
                    log.warning("spill.delete_failed", extra=fields(segment=segment, error=failure))
