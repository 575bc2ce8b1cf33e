"""A FIFO ready store whose tail lives in the log: queues far longer than memory.

A queue that survives restarts keeps a short window of message objects at its head, with their
bodies; past the window, a logged message is kept as one compact record (its sequence number,
message id, where its record is in the log, its sizes, deadline and flags: 44 bytes in arrays)
and its objects and body are dropped. As consumers take from the window, the next records are
read back from the log ahead of them (read-ahead), a run of neighbours at a time taken from the
arrays as two slices, and become objects again; the store reads a run the page cache holds on
the loop, with reads that never wait for the disk, and the rest off the loop. If consumers
outrun the read-ahead, the head is read on the loop rather than waiting.

A transient message past the window, while the store says memory is short (`spilling`), is
written to the store's spill files and kept as a compact record too (message id SPILLED); read
back, it is an ordinary transient message again and its spill record goes. A message that
cannot be paged (transient while memory is not short, or held by more than one queue, whose
shared object counts its holders) takes its place in the tail as a record pointing to its entry
("pinned"), so the order is kept. Everything in the window precedes everything in the tail:
pushes go to the tail once it has anything, requeues (of entries handed out from the window) to
the window.

A queue that does not survive restarts logs nothing, so it pages only to the spill files: its
window is unbounded (it is a plain FIFO) until memory is short, and then its transient messages
past the window are spilled as above (`logged` False).

Deadlines of compact records live in a heap of plain integers (deadline in ms, then sequence
number); an expiry away from the head reads that one message back to dead-letter it.
"""

from __future__ import annotations

import heapq
import logging
import math
from array import array
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.core.message import ENTRY_OVERHEAD, GONE, READY, Message, QueuedMessage
from broker.core.persistence import (
    OFFSET_BITS,
    OFFSET_MASK,
    SEGMENT_BYTES,
    SPILLED,
    MessageStore,
    PagedBatch,
    PagedRef,
    pack_location,
    unpack_location,
)
from broker.core.ready import FifoStore
from broker.logs import fields

log = logging.getLogger("warren.queue")

# Entries the window holds before messages go to the tail, and the body bytes it may hold. A
# thousand queues with full windows hold a quarter of a million objects: the window is short.
WINDOW_ENTRIES: Final = 256
WINDOW_BYTES: Final = 1 << 20
# While consumers take from it, the window is topped up to READ_AHEAD records (and at most
# READ_AHEAD_BYTES of window cost: bodies plus ENTRY_OVERHEAD each) whenever it falls below
# READ_AHEAD_BELOW: a consumer with a prefetch of 1000 finds its next thousand read already.
# The top-ups are a few hundred records each, not thousands: the records of one are checked
# and made messages on the loop in one go, and a batch of 2,000 held deliveries and acks up
# for milliseconds, so that a consumer's pipeline ran dry and the loop idled (an eighth of a
# drain at 4,096). What every queue holds read ahead together is bounded by the store's
# ReadAheadBudget.
READ_AHEAD: Final = 2560
READ_AHEAD_BYTES: Final = 4 << 20
READ_AHEAD_BELOW: Final = 2048
# Records read on the loop when a consumer finds the window empty (the read-ahead is late).
SYNC_BATCH: Final = 256
# What a compact record costs in memory (its seven array slots), for the memory alarm.
TAIL_RECORD_BYTES: Final = 44
CHUNK_RECORDS: Final = 4096
_SEQ_BITS: Final = 64
_SEQ_MASK: Final = (1 << _SEQ_BITS) - 1
DEAD: Final = -1  # flags of a record that left the tail
_PINNED: Final = 0  # msg_id of a record whose entry is kept as an object


@dataclass(slots=True)
class RecoveredRecords:
    """Messages recovery hands a queue as compact records, in id order, one list per field:
    ids, log locations (`pack_location`), when each was routed, body sizes, content header
    lengths, expiration properties (ms, -1: none), flags (redelivered | returns << 1)."""

    msg_ids: Sequence[int]
    locations: Sequence[int]
    published_at: Sequence[float]
    body_sizes: Sequence[int]
    header_lens: Sequence[int]
    ttls: Sequence[int]
    flags: Sequence[int] = field(default_factory=list)

    def part(self, start: int, stop: int | None = None) -> RecoveredRecords:
        return RecoveredRecords(
            self.msg_ids[start:stop],
            self.locations[start:stop],
            self.published_at[start:stop],
            self.body_sizes[start:stop],
            self.header_lens[start:stop],
            self.ttls[start:stop],
            self.flags[start:stop],
        )


class _Chunk:
    """Up to CHUNK_RECORDS records in sequence order, one array per field; records before
    `head` have left."""

    __slots__ = ("expires", "flags", "footprint", "head", "location", "msg_id", "seq", "size")

    def __init__(self) -> None:
        self.seq = array("q")
        self.msg_id = array("q")
        self.location = array("Q")
        self.size = array("I")
        self.footprint = array("I")
        self.expires = array("d")
        self.flags = array("i")
        self.head = 0


class _Tail:
    """The records past the window, in sequence order, in chunks of arrays."""

    __slots__ = ("chunks", "compact", "compact_bytes", "compact_footprint", "live", "live_bytes")

    def __init__(self) -> None:
        self.chunks: deque[_Chunk] = deque()
        self.live = 0  # records that have not left, pinned ones included
        self.live_bytes = 0
        self.compact = 0  # of them, records without an object
        self.compact_bytes = 0
        self.compact_footprint = 0  # what their objects cost before they were paged

    def append(self, seq: int, msg_id: int, location: int, size: int, footprint: int,
               expires: float, flags: int) -> None:  # fmt: skip
        chunks = self.chunks
        if not chunks or len(chunks[-1].seq) >= CHUNK_RECORDS:
            chunks.append(_Chunk())
        chunk = chunks[-1]
        chunk.seq.append(seq)
        chunk.msg_id.append(msg_id)
        chunk.location.append(location)
        chunk.size.append(size)
        chunk.footprint.append(footprint)
        chunk.expires.append(expires)
        chunk.flags.append(flags)
        self._count(msg_id, size, footprint, 1)

    def extend(
        self,
        seqs: range,
        records: RecoveredRecords,
        footprints: array[int],
        expires: array[float],
        footprint: int,
        size: int,
    ) -> None:
        """Compact records in bulk, chunk by chunk (recovery restoring a long queue);
        `footprint` and `size` are the sums of `footprints` and of the body sizes."""
        chunks = self.chunks
        done, count = 0, len(seqs)
        while done < count:
            if not chunks or len(chunks[-1].seq) >= CHUNK_RECORDS:
                chunks.append(_Chunk())
            chunk = chunks[-1]
            end = min(count, done + CHUNK_RECORDS - len(chunk.seq))
            chunk.seq.extend(seqs[done:end])
            chunk.msg_id.extend(records.msg_ids[done:end])
            chunk.location.extend(records.locations[done:end])
            chunk.size.extend(records.body_sizes[done:end])
            chunk.footprint.extend(footprints[done:end])
            chunk.expires.extend(expires[done:end])
            chunk.flags.extend(records.flags[done:end])
            done = end
        self.live += count
        self.live_bytes += size
        self.compact += count
        self.compact_bytes += size
        self.compact_footprint += footprint

    def _count(self, msg_id: int, size: int, footprint: int, change: int) -> None:
        self.live += change
        self.live_bytes += change * size
        if msg_id != _PINNED:
            self.compact += change
            self.compact_bytes += change * size
            self.compact_footprint += change * footprint

    def first(self) -> tuple[_Chunk, int] | None:
        """The first record that has not left (dropping chunks that are done)."""
        chunks = self.chunks
        while chunks:
            chunk = chunks[0]
            flags, end = chunk.flags, len(chunk.seq)
            index = chunk.head
            while index < end and flags[index] == DEAD:
                index += 1
            chunk.head = index
            if index < end:
                return chunk, index
            chunks.popleft()
        return None

    def first_seq(self) -> int:
        found = self.first()
        return found[0].seq[found[1]] if found is not None else -1

    def head_run(self, limit: int, max_bytes: int) -> _Run | None:
        """The compact records first in the tail, up to `limit` of them and, past the first,
        up to `max_bytes` of what they cost as window entries (body and objects), within one
        chunk and up to the first pinned record or one that left; None when the first is
        pinned (or there is none). Found with scans in C, not a step per record."""
        found = self.first()
        if found is None:
            return None
        chunk, start = found
        stop = min(len(chunk.seq), start + limit)
        stop = _index_of(chunk.flags, DEAD, start, stop)
        stop = _index_of(chunk.msg_id, _PINNED, start, stop)
        if stop == start:
            return None
        sizes = chunk.size[start:stop]
        cost = sum(sizes) + len(sizes) * ENTRY_OVERHEAD
        if cost > max_bytes:  # cut where it passes max_bytes (one record at least)
            cost = 0
            for count, size in enumerate(sizes):
                if count and cost + size + ENTRY_OVERHEAD > max_bytes:
                    stop = start + count
                    break
                cost += size + ENTRY_OVERHEAD
        msg_ids = chunk.msg_id[start:stop].tolist()
        return _Run(chunk, start, stop, msg_ids, chunk.location[start:stop].tolist(), cost)

    def take(self, run: _Run) -> int:
        """The records of `run` still first in the tail leave it: from the index returned to
        the run's end (its end: none is). A read on the loop or an expiry may have taken the
        first ones meanwhile, and an expiry ones in between, which are passed over."""
        found = self.first()
        if found is None or found[0] is not run.chunk or not run.start <= found[1] < run.stop:
            return run.stop
        chunk, first = found
        stop = run.stop
        if _index_of(chunk.flags, DEAD, first, stop) == stop:  # all of them, at once
            count, size = stop - first, sum(chunk.size[first:stop])
            self.live -= count
            self.live_bytes -= size
            self.compact -= count
            self.compact_bytes -= size
            self.compact_footprint -= sum(chunk.footprint[first:stop])
        else:
            for index in range(first, stop):
                if chunk.flags[index] != DEAD:
                    self._count(chunk.msg_id[index], chunk.size[index], chunk.footprint[index], -1)
        chunk.head = stop
        return first

    def kill(self, chunk: _Chunk, index: int) -> None:
        """The record leaves the tail (to the window, or out of the queue)."""
        chunk.flags[index] = DEAD
        self._count(chunk.msg_id[index], chunk.size[index], chunk.footprint[index], -1)

    def find(self, seq: int) -> tuple[_Chunk, int] | None:
        """The live record with this sequence number, by binary search."""
        chunks = self.chunks
        low, high = 0, len(chunks)
        while low < high:  # the last chunk whose first sequence number is <= seq
            middle = (low + high) // 2
            if chunks[middle].seq[0] <= seq:
                low = middle + 1
            else:
                high = middle
        if low == 0:
            return None
        chunk = chunks[low - 1]
        index = bisect_right(chunk.seq, seq) - 1
        if index < chunk.head or chunk.seq[index] != seq or chunk.flags[index] == DEAD:
            return None
        return chunk, index


class _Run:
    """Compact records first in the tail, read back together: `start` to `stop` in one chunk,
    none pinned, none that had left; their ids and places copied out of the arrays in C, and
    what they cost as window entries (bodies and objects), which the read-ahead charges."""

    __slots__ = ("chunk", "cost", "locations", "msg_ids", "start", "stop")

    def __init__(
        self,
        chunk: _Chunk,
        start: int,
        stop: int,
        msg_ids: list[int],
        locations: list[int],
        cost: int,
    ) -> None:
        self.chunk = chunk
        self.cost = cost
        self.start = start
        self.stop = stop
        self.msg_ids = msg_ids
        self.locations = locations


def _index_of(values: array[int], value: int, start: int, stop: int) -> int:
    """Where `value` first is in values[start:stop], by a scan in C; `stop` when it is not."""
    try:
        return values.index(value, start, stop)
    except ValueError:
        return stop


class PagedFifoStore(FifoStore):
    """Publish order, with the tail in the log (see the module's docstring)."""

    pages = True

    __slots__ = (
        "_budget",
        "_charged",
        "_deferred",
        "_in_flight",
        "_loading",
        "_logged",
        "_pinned",
        "_source",
        "_tail",
        "_tail_deadlines",
        "_waiting",
        "unreadable",
    )

    def __init__(self, source: MessageStore, logged: bool = True) -> None:
        super().__init__()
        self._source = source
        self._logged = logged  # whether logged messages past the window become records
        self._tail = _Tail()
        self._pinned: dict[int, QueuedMessage] = {}  # seq -> entry, for pinned records
        # (deadline in ms << 64 | seq) of compact records with a deadline; items of records
        # that left stay until they reach the top.
        self._tail_deadlines: list[int] = []
        self._loading = False  # a read-ahead is under way
        self._waiting = False  # a consumer found the window empty meanwhile
        # The store's budget for reading ahead: what this queue has charged to it (read back
        # and still in the window, or in flight), the in-flight part, and whether the queue
        # waits for room (`resume_read_ahead`).
        self._budget = source.read_ahead
        self._charged = 0
        self._in_flight = 0
        self._deferred = False
        # Records the log could not give back (a disk error): out of the queue's count, not
        # settled, so a restart brings them back; deleting the queue releases them.
        self.unreadable: list[PagedRef] = []

    # ---------------------------------------------------------------- what is paged
    @property
    def paged_count(self) -> int:
        """Ready messages kept as compact records."""
        return self._tail.compact

    @property
    def paged_bytes(self) -> int:
        return self._tail.compact_bytes

    @property
    def paged_savings(self) -> int:
        """Memory the compact records save against the objects they replaced."""
        tail = self._tail
        return tail.compact_footprint - tail.compact * TAIL_RECORD_BYTES

    def paged(self, unreadable: bool = False) -> Iterator[PagedBatch]:
        """The compact records (with `unreadable`, those set aside too: a delete releases
        them, a purge leaves them, as it leaves unacked messages), a chunk at a time: their
        ids straight from the chunk's array when it holds nothing else (a purge of ten
        million records is a few thousand slices, not ten million tuples)."""
        for chunk in list(self._tail.chunks):
            head = chunk.head
            msg_ids, locations = chunk.msg_id[head:], chunk.location[head:]
            flags = chunk.flags[head:]
            if DEAD in flags or _PINNED in msg_ids or SPILLED in msg_ids:  # not all logged
                kept = [i for i, f in enumerate(flags) if f != DEAD and msg_ids[i] > 0]
                msg_ids = array("q", [msg_ids[i] for i in kept])
                locations = array("Q", [locations[i] for i in kept])
            if msg_ids:
                yield msg_ids, segment_counts(locations)
        if unreadable and self.unreadable:
            segments = Counter(segment for _, segment, _ in self.unreadable)
            yield [ref[0] for ref in self.unreadable], dict(segments)

    def paged_in_segment(self, segment: int) -> list[tuple[int, int, int, int]]:
        """(seq, message id, offset, flags) of the compact records whose record is in
        `segment`, for the log's compaction."""
        found = []
        for chunk in list(self._tail.chunks):
            locations = chunk.location
            # A chunk whose records all lie in other segments is passed over by two scans in
            # C: compaction looks at the oldest segment, which a long tail rarely reaches.
            if max(locations) >> OFFSET_BITS < segment or min(locations) >> OFFSET_BITS > segment:
                continue
            msg_ids, flags, seqs = chunk.msg_id, chunk.flags, chunk.seq
            for index in range(chunk.head, len(locations)):
                location = locations[index]
                if (
                    location >> OFFSET_BITS == segment
                    and msg_ids[index] > 0  # logged (not pinned, not spilled)
                    and flags[index] != DEAD
                ):
                    offset = location & OFFSET_MASK
                    found.append((seqs[index], msg_ids[index], offset, flags[index]))
        return found

    def relocated(self, seq: int, segment: int, offset: int) -> None:
        """A compact record's message was copied to another place in the log."""
        found = self._tail.find(seq)
        if found is not None:
            chunk, index = found
            chunk.location[index] = pack_location(segment, offset)

    # ---------------------------------------------------------------- in
    def push(self, entry: QueuedMessage) -> None:
        """To the window while it has room and the tail is empty, else to the tail."""
        if not self.takes_records:
            FifoStore.push(self, entry)
            return
        self._page_out(entry)
        self.count += 1
        self.body_bytes += entry.message.body_size

    def _page_out(self, entry: QueuedMessage) -> None:
        message = entry.message
        flags = int(entry.redelivered) | entry.returns << 1
        if self._logged and message.msg_id and message.refs == 1 and type(message) is Message:
            location = pack_location(*message.location)
            self._append_compact(
                entry.seq,
                message.msg_id,
                location,
                message.body_size,
                message.footprint,
                entry.expires_at,
                flags,
            )
            entry.state = GONE  # this object is dropped; the record stands for it
            return
        source = self._source
        if source.spilling and not message.msg_id and type(message) is Message and message.body:
            # Transient, past the window, memory past the paging ratio: to the spill files.
            where = source.spill(message)
            if where is not None:
                self._append_compact(entry.seq, SPILLED, pack_location(*where),
                                     message.body_size, message.footprint, entry.expires_at,
                                     flags)  # fmt: skip
                entry.state = GONE
                return
        self._tail.append(entry.seq, _PINNED, 0, message.body_size, 0, entry.expires_at, flags)
        self._pinned[entry.seq] = entry
        entry.state = READY
        if entry.expires_at:
            self._index_deadline(entry)

    @property
    def takes_records(self) -> bool:
        """Whether a message pushed now would become a compact record (the window is full,
        or the tail has begun): recovery hands those over as records, the others as objects,
        so a restarted queue looks as it did, its window of objects first. A queue that logs
        nothing has a window without bounds until memory is short."""
        if self._tail.live:
            return True
        if self.count < WINDOW_ENTRIES and self.body_bytes < WINDOW_BYTES:
            return False
        return self._logged or self._source.spilling

    def push_records(
        self,
        seqs: range,
        records: RecoveredRecords,
        footprints: array[int],
        expires: array[float],
        footprint: int,
    ) -> None:
        """Recovered messages straight to the tail (where `takes_records`), in bulk."""
        tail = self._tail
        size = sum(records.body_sizes)
        tail.extend(seqs, records, footprints, expires, footprint, size)
        if expires.count(0.0) != len(expires):
            deadlines = self._tail_deadlines
            for seq, expires_at in zip(seqs, expires, strict=True):
                if expires_at:
                    heapq.heappush(deadlines, math.ceil(expires_at * 1000) << _SEQ_BITS | seq)
        self.count += len(seqs)
        self.body_bytes += size

    def _append_compact(self, seq: int, msg_id: int, location: int, body_size: int,
                        footprint: int, expires_at: float, flags: int) -> None:  # fmt: skip
        self._tail.append(seq, msg_id, location, body_size, footprint, expires_at, flags)
        if expires_at:
            deadline = math.ceil(expires_at * 1000)
            heapq.heappush(self._tail_deadlines, deadline << _SEQ_BITS | seq)

    # ---------------------------------------------------------------- out
    def pop(self) -> QueuedMessage | None:
        if not (self._tail.live or self._charged):  # nothing paged, nothing read back
            return FifoStore.pop(self)
        return self._pop_paged()

    def _pop_paged(self) -> QueuedMessage | None:
        entry = FifoStore.pop(self)
        if entry is None and self._tail.live:
            self._fill(SYNC_BATCH)
            entry = FifoStore.pop(self)
        if self._charged:
            self._settle_charge()
        if self._wants_read_ahead() and (
            not self._deferred or self.count == self._tail.live  # waiting, unless starving
        ):
            self._read_ahead()
        return entry

    def pop_for_consumer(self) -> QueuedMessage | None:
        """Without reading on the loop what a read-ahead under way is reading already (that
        read twice what consumers outran): they wait for it, and `on_refill` wakes them."""
        if not (self._tail.live or self._charged or self._loading):
            return FifoStore.pop(self)
        if self._loading and not self._fifo.entries:
            self._waiting = True
            return None
        return self._pop_paged()

    def peek(self) -> QueuedMessage | None:
        entry = self._fifo.head()
        if entry is None and self._tail.live:
            self._fill(SYNC_BATCH)
            entry = self._fifo.head()
        return entry

    def remove(self, entry: QueuedMessage) -> None:
        pinned = self._pinned.pop(entry.seq, None)
        if pinned is None:
            FifoStore.remove(self, entry)
            return
        found = self._tail.find(entry.seq)
        if found is not None:
            self._tail.kill(*found)
        self._take(entry, GONE)

    def _take(self, entry: QueuedMessage, state: int) -> None:
        super()._take(entry, state)
        if self._charged:
            self._settle_charge()

    def due(self, now: float, limit: int = -1) -> list[QueuedMessage]:
        expired = super().due(now, limit)
        deadlines = self._tail_deadlines
        now_ms = now * 1000
        tail = self._tail
        while deadlines and deadlines[0] >> _SEQ_BITS <= now_ms and len(expired) != limit:
            seq = heapq.heappop(deadlines) & _SEQ_MASK
            found = tail.find(seq)
            if found is None:
                continue  # gone, or in the window (its entry's deadline is indexed there)
            chunk, index = found
            entry = self._materialise_one(chunk, index)
            if entry is None:
                continue  # unreadable: it expires at the head once it can be read
            tail.kill(chunk, index)
            self._take(entry, GONE)
            expired.append(entry)
        return expired

    def next_due(self) -> float:
        due = super().next_due()
        deadlines = self._tail_deadlines
        first = self._tail.first_seq()
        while deadlines:
            top = deadlines[0]
            if first >= 0 and top & _SEQ_MASK >= first and self._tail.find(top & _SEQ_MASK):
                return min(due, (top >> _SEQ_BITS) / 1000)
            heapq.heappop(deadlines)  # its record left the tail
        return due

    def purge(self) -> list[QueuedMessage]:
        """The window's and pinned entries, now out; compact records are dropped (the caller
        settles logged ones through `paged` first; spilled ones are released here)."""
        spilled = [
            chunk.location[index]
            for chunk in self._tail.chunks
            if SPILLED in chunk.msg_id
            for index in range(chunk.head, len(chunk.msg_id))
            if chunk.msg_id[index] == SPILLED and chunk.flags[index] != DEAD
        ]
        if spilled:
            self._source.unspilled(segment_counts(spilled))
        taken = super().purge()  # iterates the pinned entries too
        self._tail = _Tail()
        self._pinned.clear()
        self._tail_deadlines.clear()
        self._deferred = False
        self._budget.forget(self)
        if self._charged:
            self._settle_charge()  # what is still in flight stays charged until it is back
        return taken

    def __iter__(self) -> Iterator[QueuedMessage]:
        """The entries that exist as objects, in order: the window's, then pinned ones;
        compact records through `paged`."""
        yield from self._fifo
        yield from list(self._pinned.values())

    # ---------------------------------------------------------------- back from the log
    def _fill(self, limit: int) -> None:
        """Move up to `limit` records from the tail to the window, read on the loop."""
        while limit > 0:
            self._pinned_to_window()
            run = self._tail.head_run(limit, READ_AHEAD_BYTES)
            if run is None:
                return
            self._run_to_window(run, self._source.load(run.msg_ids, run.locations), False)
            limit -= run.stop - run.start

    def _pinned_to_window(self) -> None:
        """Pinned records first in the tail join the window: their entries are objects
        already, nothing is read."""
        tail = self._tail
        while (found := tail.first()) is not None:
            chunk, index = found
            if chunk.msg_id[index] != _PINNED:
                return
            tail.kill(chunk, index)
            self._fifo.entries.append(self._pinned.pop(chunk.seq[index]))

    def _run_to_window(
        self, run: _Run, loaded: list[Message | BaseException], read_ahead: bool
    ) -> None:
        """The records of `run` still first in the tail become entries at the window's end,
        in order, with the messages read for them; one whose message could not be read is set
        aside. Read ahead (`read_ahead`), a record may have moved in the log meanwhile, or its
        read failed as its segment was compacted away: it is read again where it is now."""
        tail, chunk, stop = self._tail, run.chunk, run.stop
        first = tail.take(run)
        if first == stop:
            return
        skip = first - run.start
        msg_ids, locations = run.msg_ids, chunk.location[first:stop].tolist()
        flags = chunk.flags[first:stop].tolist()
        if read_ahead and (
            locations != run.locations[skip:]
            or not all(isinstance(result, Message) for result in loaded)
        ):
            loaded = self._read_again(run, loaded, locations, skip)
        seqs, footprints = chunk.seq[first:stop].tolist(), chunk.footprint[first:stop].tolist()
        expires, sizes = chunk.expires[first:stop].tolist(), chunk.size[first:stop].tolist()
        if SPILLED in msg_ids:  # back in memory (or lost with the disk): their spill records go
            spilled = [
                location
                for position, location in enumerate(locations)
                if msg_ids[skip + position] == SPILLED and flags[position] != DEAD
            ]
            if spilled:
                self._source.unspilled(segment_counts(spilled))
        append = self._fifo.entries.append
        for position in range(len(seqs)):
            if flags[position] == DEAD:
                continue  # expired while it was read
            entry = self._entry(
                seqs[position],
                msg_ids[skip + position],
                locations[position],
                footprints[position],
                expires[position],
                flags[position],
                loaded[skip + position],
            )
            if entry is None:
                self.count -= 1
                self.body_bytes -= sizes[position]
                continue
            append(entry)
            if entry.expires_at:
                self._index_deadline(entry)

    def _read_again(
        self, run: _Run, loaded: list[Message | BaseException], locations: list[int], skip: int
    ) -> list[Message | BaseException]:
        """`loaded` with the records (from `skip`, now at `locations`) that moved while they
        were read, or whose read failed, read again on the loop."""
        again = [
            skip + position
            for position, location in enumerate(locations)
            if location != run.locations[skip + position]
            or not isinstance(loaded[skip + position], Message)
        ]
        results = self._source.load(
            [run.msg_ids[index] for index in again], [locations[index - skip] for index in again]
        )
        loaded = list(loaded)
        for index, result in zip(again, results, strict=True):
            loaded[index] = result
        return loaded

    def _materialise_one(self, chunk: _Chunk, index: int) -> QueuedMessage | None:
        """The entry of one compact record read on the loop (an expiry away from the head)."""
        msg_id, location = chunk.msg_id[index], chunk.location[index]
        entry = self._entry(
            chunk.seq[index],
            msg_id,
            location,
            chunk.footprint[index],
            chunk.expires[index],
            chunk.flags[index],
            self._source.load([msg_id], [location])[0],
            park=False,
        )
        if msg_id == SPILLED and entry is not None:
            self._source.unspilled(segment_counts([location]))
        return entry

    def _entry(
        self,
        seq: int,
        msg_id: int,
        location: int,
        footprint: int,
        expires: float,
        flags: int,
        loaded: Message | BaseException,
        park: bool = True,
    ) -> QueuedMessage | None:
        """The entry a compact record stands for, or None when the log could not give its
        message back (then, with `park`, kept aside as unreadable)."""
        message = loaded
        spilled = msg_id == SPILLED
        if not isinstance(message, Message) or message.msg_id != (0 if spilled else msg_id):
            log.error(
                "message.unreadable",
                extra=fields(msg_id=msg_id, location=unpack_location(location), error=message),
            )
            if park and not spilled:  # a transient one is not in the log: it is lost
                self.unreadable.append((msg_id, *unpack_location(location)))
            return None
        # What the queue counted when it took the message. The body read back is dropped once
        # delivered (lazy, as a recovered message's): it is held only between the read and
        # the delivery, at most a read-ahead's worth of bytes per queue. A spilled message's
        # body stays: its spill record goes now.
        message.footprint = footprint
        message.lazy = not spilled
        entry = QueuedMessage(message, seq, expires)
        if flags:
            entry.redelivered = bool(flags & 1)
            entry.returns = flags >> 1
        return entry

    def _read_ahead(self) -> None:
        """Read the next records back off the loop, as many as the store's budget allows now
        (none: the queue waits for `resume_read_ahead`)."""
        self._pinned_to_window()
        tail = self._tail
        window = self.count - tail.live
        allowed = self._budget.grant(self, READ_AHEAD_BYTES, starving=window == 0)
        self._deferred = not allowed
        if not allowed:
            return
        run = tail.head_run(READ_AHEAD - window, allowed)
        if run is None:
            return
        cost = run.cost
        self._charged += cost
        self._in_flight = cost
        self._budget.charge(cost)
        self._loading = True
        self._source.load_ahead(
            run.msg_ids, run.locations, lambda results: self._read_ahead_done(run, results)
        )

    def _read_ahead_done(self, run: _Run, results: list[Message | BaseException]) -> None:
        """Records read ahead join the window while they are still first in the tail (any the
        queue took meanwhile, by a read on the loop or an expiry, are passed over)."""
        self._loading = False
        self._budget.arrived(self._in_flight)
        self._in_flight = 0
        self._run_to_window(run, results, True)
        if self._charged:
            self._settle_charge()  # of what was read, what the queue took meanwhile
        if self._waiting:
            self._waiting = False
            if self.on_refill is not None:
                self.on_refill()

    def resume_read_ahead(self) -> None:
        """The budget has room again for this queue, which waited for it."""
        self._deferred = False
        if self._wants_read_ahead():
            self._read_ahead()

    def _wants_read_ahead(self) -> bool:
        """Records wait in the tail, none is being read, and the window ran low."""
        tail_live = self._tail.live
        return bool(tail_live) and not self._loading and self.count - tail_live < READ_AHEAD_BELOW

    def _settle_charge(self) -> None:
        """Give back to the budget what left the window since it was charged: the charge is
        at most what the window costs now (bodies plus objects) and what is in flight."""
        tail = self._tail
        held = self.body_bytes - tail.live_bytes + (self.count - tail.live) * ENTRY_OVERHEAD
        held += self._in_flight
        if held < self._charged:
            released = self._charged - held
            self._charged = held
            self._budget.release(released)


def segment_counts(locations: Sequence[int]) -> dict[int, int]:
    """How many of these locations each segment holds: at once when all share one (for an
    array, seen by comparing each location's segment bytes with the first's, in C; min and
    max took a Python int per location)."""
    count = len(locations)
    if not count:
        return {}
    if isinstance(locations, array) and locations.itemsize == 8:
        raw = locations.tobytes()
        if all(raw[at::8] == raw[at : at + 1] * count for at in SEGMENT_BYTES):
            return {locations[0] >> OFFSET_BITS: count}
    elif min(locations) >> OFFSET_BITS == max(locations) >> OFFSET_BITS:
        return {locations[0] >> OFFSET_BITS: count}
    return dict(Counter(location >> OFFSET_BITS for location in locations))
