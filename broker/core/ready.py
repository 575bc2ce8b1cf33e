"""The ready messages of one queue, behind a small interface with one implementation per order.

A queue hands its ready messages to a store and asks it for the next one; it never touches the
collection itself, and neither does anyone else (metrics, admin and the log read counts and
iterate). FIFO is the default; a priority queue keeps one FIFO per level. Both keep messages
that are requeued at their original place (by their sequence number in the queue), as RabbitMQ's
classic queues do.

Each store also indexes the deadlines of the messages that have one (TTL), so a queue keeps one
timer for its earliest deadline and can expire a message wherever it sits, not only at the head.
A message removed away from the head becomes a tombstone that the next pass over the head (or a
compaction, once tombstones are the majority) drops: removing from the middle of a deque would
cost a walk per message.

The interface leaves room for a store whose tail lives on disk: entries carry their message,
whose body may be None until the queue loads it for delivery.
"""

from __future__ import annotations

import bisect
import heapq
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from broker.core.message import GONE, OUT, READY, QueuedMessage
from broker.core.persistence import PagedBatch

if TYPE_CHECKING:
    from array import array

    from broker.core.paging import RecoveredRecords

# Tombstones are dropped in one pass once there are this many and they outnumber live entries.
COMPACT_MIN_TOMBSTONES = 1024
# The deadline heap is rebuilt from the ready entries once its stale items (entries delivered,
# acked or removed before their deadline) are this many and the majority.
COMPACT_MIN_DEADLINES = 1024


def _seq_of(entry: QueuedMessage) -> int:
    return entry.seq


class _SeqDeque:
    """Entries in sequence order, with tombstones for entries removed away from the head."""

    __slots__ = ("entries", "tombstones")

    def __init__(self) -> None:
        self.entries: deque[QueuedMessage] = deque()
        self.tombstones = 0

    def __len__(self) -> int:
        return len(self.entries) - self.tombstones

    def head(self) -> QueuedMessage | None:
        entries = self.entries
        while entries:
            entry = entries[0]
            if entry.state == READY:
                return entry
            entries.popleft()  # a tombstone: its entry was removed earlier
            self.tombstones -= 1
        return None

    def put_back(self, returned: list[QueuedMessage]) -> None:
        """Entries (sorted by seq) go back to their places: at the head in one C call when
        they all precede it, else each found by binary search (a Python walk to a reject deep
        in a long queue cost seconds); the insert itself moves entries in C."""
        entries = self.entries
        if not entries or returned[-1].seq < entries[0].seq:
            entries.extendleft(reversed(returned))
            return
        for entry in returned:
            entries.insert(bisect.bisect_left(entries, entry.seq, key=_seq_of), entry)

    def forget(self) -> None:
        """One entry in the deque became a tombstone; compact when they are the majority."""
        self.tombstones += 1
        if self.tombstones >= COMPACT_MIN_TOMBSTONES and self.tombstones * 2 > len(self.entries):
            self.entries = deque(entry for entry in self.entries if entry.state == READY)
            self.tombstones = 0

    def __iter__(self) -> Iterator[QueuedMessage]:
        for entry in self.entries:  # a generator function: see TimeOrderedStore.__iter__
            if entry.state == READY:
                yield entry


class ReadyStore(ABC):
    """What every store shares: counts, body bytes and the deadline index; subclasses decide
    the order."""

    __slots__ = ("_deadlines", "body_bytes", "count", "on_refill")

    def __init__(self) -> None:
        self.count = 0  # ready entries (len() of the store, read directly on the hot path)
        # Called when entries a consumer could not have yet (being read back) are ready.
        self.on_refill: Callable[[], None] | None = None
        # Body bytes of the ready messages (x-max-length-bytes counts bodies only).
        self.body_bytes = 0
        # (deadline, seq, entry) for ready entries with a deadline. Entries handed out stay in
        # the heap until they reach its top; a requeue pushes them again (the duplicate finds
        # the entry gone or out and is skipped).
        self._deadlines: list[tuple[float, int, QueuedMessage]] = []

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    # ---------------------------------------------------------------- what is paged
    # A store that keeps logged messages as compact records (broker/core/paging.py) says how
    # many, and lists them; the others keep every message as an object.
    @property
    def paged_count(self) -> int:
        return 0

    @property
    def paged_bytes(self) -> int:
        return 0

    @property
    def paged_savings(self) -> int:
        return 0

    def paged(self, unreadable: bool = False) -> Iterator[PagedBatch]:
        """The compact records, a batch at a time (message ids, count per segment); with
        `unreadable`, those the log could not give back too."""
        return iter(())

    def paged_in_segment(self, segment: int) -> list[tuple[int, int, int, int]]:
        """(seq, message id, offset, flags) of the compact records in a log segment."""
        return []

    @property
    def takes_records(self) -> bool:
        return False

    pages = False  # keeps compact records at all (`push_records` works)

    def push_records(
        self,
        seqs: range,
        records: RecoveredRecords,
        footprints: array[int],
        expires: array[float],
        footprint: int,
    ) -> None:
        """Recovered messages straight to compact records (only where `takes_records`);
        `footprint` is the sum of `footprints`, which the caller knows."""
        raise TypeError(f"{type(self).__name__} keeps every message as an object")

    def relocated(self, seq: int, segment: int, offset: int) -> None:  # noqa: B027
        """A compact record's message was copied to another place in the log (only a store
        that keeps compact records has anything to do)."""

    # ---------------------------------------------------------------- the interface
    @abstractmethod
    def __iter__(self) -> Iterator[QueuedMessage]:
        """Ready entries in delivery order."""

    def unordered(self) -> Iterator[QueuedMessage]:
        """Ready entries in whatever order is cheapest (the log's compaction looks at all)."""
        return iter(self)

    @abstractmethod
    def push(self, entry: QueuedMessage) -> None:
        """A new message at the tail (of its level)."""

    @abstractmethod
    def peek(self) -> QueuedMessage | None:
        """The entry delivered next, still in the store."""

    @abstractmethod
    def pop(self) -> QueuedMessage | None:
        """The next entry to deliver, now out of the store."""

    def pop_for_consumer(self) -> QueuedMessage | None:
        """`pop` for a consumer, which can wait: a store may answer None while it reads the
        next entries back and call `on_refill` when they are there."""
        return self.pop()

    @abstractmethod
    def requeue(self, entries: list[QueuedMessage]) -> None:
        """Entries handed out earlier (sorted by seq) go back to their original places."""

    @abstractmethod
    def remove(self, entry: QueuedMessage) -> None:
        """Take one ready entry out wherever it is (an expiry away from the head)."""

    def drop_while(self, predicate: Callable[[QueuedMessage], bool]) -> list[QueuedMessage]:
        """Take entries from the head while `predicate` holds for the head."""
        dropped: list[QueuedMessage] = []
        while True:
            entry = self.peek()
            if entry is None or not predicate(entry):
                return dropped
            popped = self.pop()  # the entry just peeked
            if popped is not None:
                dropped.append(popped)

    def purge(self) -> list[QueuedMessage]:
        """Everything ready, now out of the store."""
        taken = list(self)
        for entry in taken:
            entry.state = GONE
        self._clear()
        self.count = self.body_bytes = 0
        self._deadlines.clear()
        return taken

    def next_due(self) -> float:
        """The earliest deadline of a ready entry (infinity when none has one)."""
        deadlines = self._deadlines
        while deadlines:
            deadline, _, entry = deadlines[0]
            if entry.state == READY and entry.expires_at == deadline:
                return deadline
            heapq.heappop(deadlines)
        return float("inf")

    def due(self, now: float, limit: int = -1) -> list[QueuedMessage]:
        """Remove and return the ready entries whose deadline has passed, earliest first (at
        most `limit` of them when it is not negative)."""
        expired: list[QueuedMessage] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now and len(expired) != limit:
            deadline, _, entry = heapq.heappop(deadlines)
            if entry.state == READY and entry.expires_at == deadline:
                self.remove(entry)
                expired.append(entry)
        return expired

    # ---------------------------------------------------------------- bookkeeping
    def _add(self, entry: QueuedMessage) -> None:
        entry.state = READY
        self.count += 1
        self.body_bytes += entry.message.body_size
        if entry.expires_at:
            self._index_deadline(entry)

    def _index_deadline(self, entry: QueuedMessage) -> None:
        """Index a ready entry's deadline. Items of entries that left stay in the heap until
        they reach its top; when they are the majority the heap is rebuilt, so a queue whose
        consumers keep up (a long TTL, messages delivered long before it) does not hold every
        delivered message, and its body, until its deadline."""
        deadlines = self._deadlines
        heapq.heappush(deadlines, (entry.expires_at, entry.seq, entry))
        if len(deadlines) >= COMPACT_MIN_DEADLINES and len(deadlines) > 2 * self.count:
            live = [
                item
                for item in deadlines
                if item[2].state == READY and item[2].expires_at == item[0]
            ]
            heapq.heapify(live)
            self._deadlines = live

    def _take(self, entry: QueuedMessage, state: int) -> None:
        entry.state = state
        self.count -= 1
        self.body_bytes -= entry.message.body_size

    @abstractmethod
    def _clear(self) -> None:
        """Forget every entry (purge has taken them)."""


class LaneStore(ReadyStore):
    """Stores made of FIFO lanes (`_SeqDeque`): `_lane` picks the lane an entry belongs to,
    `_next_lane` the one served next."""

    __slots__ = ()

    @abstractmethod
    def _lane(self, entry: QueuedMessage) -> _SeqDeque:
        """The lane `entry` belongs to."""

    @abstractmethod
    def _next_lane(self) -> _SeqDeque | None:
        """The lane whose head is delivered next, or None when nothing is ready."""

    def push(self, entry: QueuedMessage) -> None:
        """A new message at the tail (of its level)."""
        self._lane(entry).entries.append(entry)
        self._add(entry)

    def peek(self) -> QueuedMessage | None:
        lane = self._next_lane()
        return lane.head() if lane is not None else None

    def pop(self) -> QueuedMessage | None:
        """The next entry to deliver, now out of the store."""
        lane = self._next_lane()
        if lane is None:
            return None
        entry = lane.entries.popleft()  # _next_lane left a ready entry at its head
        self._take(entry, OUT)
        return entry

    def pop_for_consumer(self) -> QueuedMessage | None:
        return self.pop()  # no read-ahead to wait for

    def requeue(self, entries: list[QueuedMessage]) -> None:
        """Entries handed out earlier (sorted by seq) go back to their original places."""
        by_lane: dict[int, tuple[_SeqDeque, list[QueuedMessage]]] = {}
        for entry in entries:
            lane = self._lane(entry)
            by_lane.setdefault(id(lane), (lane, []))[1].append(entry)
            self._add(entry)
        for lane, returned in by_lane.values():
            lane.put_back(returned)

    def remove(self, entry: QueuedMessage) -> None:
        """Take one ready entry out wherever it is (an expiry away from the head)."""
        self._take(entry, GONE)
        self._lane(entry).forget()


class FifoStore(LaneStore):
    """Publish order: RabbitMQ's classic queue."""

    __slots__ = ("_fifo",)

    def __init__(self) -> None:
        super().__init__()
        self._fifo = _SeqDeque()

    def _lane(self, entry: QueuedMessage) -> _SeqDeque:
        return self._fifo

    def _next_lane(self) -> _SeqDeque | None:
        return self._fifo if self._fifo.head() is not None else None

    def push(self, entry: QueuedMessage) -> None:
        """The base class's push, inlined: every publish to a plain queue comes here."""
        self._fifo.entries.append(entry)
        self.count += 1
        self.body_bytes += entry.message.body_size
        if entry.expires_at:
            self._index_deadline(entry)

    def pop(self) -> QueuedMessage | None:
        """The base class's pop, inlined: every delivery from a plain queue comes here."""
        fifo = self._fifo
        entries = fifo.entries
        if not entries:
            return None
        entry = entries.popleft()
        while entry.state != READY:  # a tombstone of an entry removed earlier
            fifo.tombstones -= 1
            if not entries:
                return None
            entry = entries.popleft()
        entry.state = OUT
        self.count -= 1
        self.body_bytes -= entry.message.body_size
        return entry

    def pop_for_consumer(self) -> QueuedMessage | None:
        return self.pop()  # a subclass overriding `pop` overrides this too

    def __iter__(self) -> Iterator[QueuedMessage]:
        return iter(self._fifo)

    def _clear(self) -> None:
        self._fifo = _SeqDeque()


class PriorityStore(LaneStore):
    """x-max-priority: one FIFO per level, highest level first (LavinMQ's PriorityMessageStore,
    RabbitMQ's priority backing queue). A message without a priority is at level 0; one above
    the queue's maximum counts as the maximum."""

    __slots__ = ("_levels", "_top", "max_priority")

    def __init__(self, max_priority: int) -> None:
        super().__init__()
        self.max_priority = max_priority
        # A level's FIFO is made when a message first needs it: x-max-priority 255 costs an
        # empty queue 256 list slots, not 256 deques.
        self._levels: list[_SeqDeque | None] = [None] * (max_priority + 1)
        self._top = 0  # no level above this one holds an entry: pops start here, not at 255

    def _lane(self, entry: QueuedMessage) -> _SeqDeque:
        level = min(entry.message.priority, self.max_priority)
        if level > self._top:
            self._top = level
        lane = self._levels[level]
        if lane is None:
            lane = self._levels[level] = _SeqDeque()
        return lane

    def _next_lane(self) -> _SeqDeque | None:
        levels = self._levels
        for level in range(self._top, -1, -1):
            lane = levels[level]
            if lane is not None and lane.head() is not None:
                self._top = level
                return lane
        self._top = 0
        return None

    def __iter__(self) -> Iterator[QueuedMessage]:
        for lane in reversed(self._levels):
            if lane is not None:
                yield from lane

    def _clear(self) -> None:
        self._levels = [None] * (self.max_priority + 1)
        self._top = 0


class TimeOrderedStore(ReadyStore):
    """Entries in deadline order, held only in the deadline heap: the store of a delayed
    exchange's pending messages, which leave when they come due (`due`), never from the head
    to a consumer. No deque and no tombstones: a million pending messages cost a heap item
    each."""

    __slots__ = ()

    def push(self, entry: QueuedMessage) -> None:
        self._add(entry)

    def requeue(self, entries: list[QueuedMessage]) -> None:
        for entry in entries:
            self._add(entry)

    def remove(self, entry: QueuedMessage) -> None:
        self._take(entry, GONE)  # its heap item is skipped when it reaches the top

    def peek(self) -> QueuedMessage | None:
        deadline = self.next_due()
        return self._deadlines[0][2] if deadline != float("inf") else None

    def pop(self) -> QueuedMessage | None:
        entry = self.peek()
        if entry is not None:
            heapq.heappop(self._deadlines)
            self._take(entry, OUT)
        return entry

    # Generator functions, not generator expressions: mypyc turns a returned expression into a
    # list of every entry, a million of them in a long queue.
    def __iter__(self) -> Iterator[QueuedMessage]:
        live = [item for item in self._deadlines if item[2].state == READY]
        live.sort(key=lambda item: (item[0], item[1]))
        for item in live:
            yield item[2]

    def unordered(self) -> Iterator[QueuedMessage]:
        """The heap as it lies: no sort of a million pending messages."""
        for item in self._deadlines:
            if item[2].state == READY:
                yield item[2]

    def _clear(self) -> None:
        pass  # purge emptied the heap
