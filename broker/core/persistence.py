"""What the model asks of durable storage.

The model calls these hooks as things happen (a durable queue declared, a persistent message
routed to durable queues, deliveries settled); the implementation decides how to log them. Keeping
the interface this small lets the model run in unit tests without a disk, and lets the
write-ahead log batch and order records however it likes.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

from broker.core.errors import INTERNAL_ERROR, ChannelException

SyncCallback = Callable[[BaseException | None], None]
# A logged message a queue keeps as a compact record instead of an object: its id and where
# its record is (segment, offset).
PagedRef = tuple[int, int, int]
# The message id of a PagedRef (and of a compact record) whose message is transient, paged
# out to the store's spill files under memory pressure: read back once, never logged.
SPILLED: Final = -2
# A record's place in the log as one integer, segment << OFFSET_BITS | offset: what compact
# records keep in their arrays and what `load` takes, so a batch read back is two lists of
# integers from array slices, not a tuple per record.
OFFSET_BITS: Final = 40
OFFSET_MASK: Final = (1 << OFFSET_BITS) - 1
# The bytes of a location, as a native 64-bit integer, that hold its segment (its top 24 bits).
SEGMENT_BYTES: Final = (5, 6, 7) if sys.byteorder == "little" else (0, 1, 2)
# Compact records in bulk: their message ids, and how many of them each log segment holds.
PagedBatch = tuple[Sequence[int], dict[int, int]]
Loaded = Callable[[list["Message | BaseException"]], None]


def pack_location(segment: int, offset: int) -> int:
    return segment << OFFSET_BITS | offset


def pack_locations(segment: int, offsets: array[int]) -> array[int]:
    """`pack_location` of many records of one segment (recovery's summary rows, "Q" offsets):
    the segment's bytes written into each offset's top three bytes by strided slices, in C,
    where or-ing them one by one took a Python int per record. Offsets fit OFFSET_BITS."""
    count = len(offsets)
    packed = bytearray(offsets.tobytes())
    segment_bytes = (segment << OFFSET_BITS).to_bytes(8, sys.byteorder)
    for at in SEGMENT_BYTES:
        packed[at::8] = segment_bytes[at : at + 1] * count
    return array("Q", packed)


def unpack_location(location: int) -> tuple[int, int]:
    return location >> OFFSET_BITS, location & OFFSET_MASK


class LogUnavailable(ChannelException):
    """The store refused a record (its log failed): the change did not happen. A publisher in
    confirm mode gets a nack for the message; anyone else sees the channel closed with 541."""

    def __init__(self, what: str, error: BaseException) -> None:
        super().__init__(
            INTERNAL_ERROR,
            f"the write-ahead log cannot save {what}: {error}; check the data directory's disk",
        )


if TYPE_CHECKING:
    from broker.core.exchange import Binding, Exchange
    from broker.core.message import Message, QueuedMessage
    from broker.core.queue import Queue
    from broker.core.read_ahead import ReadAheadBudget


class MessageStore:
    """The hooks, each a no-op here: a store that keeps nothing (nothing survives a restart).

    `broker.store.durable.DurableStore` overrides them to write the write-ahead log.
    """

    # True while recovery rebuilds the model from the log: what it restores was accepted once
    # and is already logged, so it is neither logged nor refused again.
    replaying = False

    def exchange_declared(self, vhost: str, exchange: Exchange) -> None:
        """A durable exchange was created."""

    def exchange_deleted(self, vhost: str, exchange: Exchange) -> None:
        """A durable exchange was deleted."""

    def queue_declared(self, queue: Queue) -> None:
        """A queue that survives restarts was created; a durable store sets `queue.store_id`."""

    def queue_deleted(
        self, queue: Queue, held: Iterable[QueuedMessage], paged: Iterable[PagedBatch] = ()
    ) -> None:
        """A surviving queue was deleted with the messages it still held (ready or unacked),
        those it kept as compact records among them."""

    def binding_changed(self, vhost: str, binding: Binding, added: bool) -> None:
        """A binding was added or removed (the store decides whether it is durable)."""

    def persist(self, message: Message, queues: list[Queue]) -> None:
        """Log a persistent message routed to these surviving queues; raises LogUnavailable
        (and logs nothing) when it cannot."""

    def moved(
        self, queue: Queue, entry: QueuedMessage, copy: Message, targets: list[Queue]
    ) -> None:
        """A logged message left `queue` and its dead-lettered `copy` entered these surviving
        queues: one record, so a crash leaves it in exactly one place; raises LogUnavailable
        (and logs nothing) when it cannot."""

    def dedup_remembered(self, vhost: str, exchange: str, key: str, expires: float) -> None:
        """A deduplication exchange with disk persistence routed a message with this value
        (logged after the message, never before)."""

    def rerouted(
        self, queue: Queue, entry: QueuedMessage, targets: list[Queue], routed_at: float
    ) -> None:
        """A logged message left `queue` for these surviving queues unchanged (a delayed
        message came due): one record, its message record kept; raises LogUnavailable."""

    def delivered(self, queue: Queue, entry: QueuedMessage) -> None:
        """A logged message was handed to a consumer that must ack it (for redelivered flags;
        every delivery, where the queue counts them)."""

    def returned(self, queue: Queue, entries: Iterable[QueuedMessage]) -> None:
        """Logged messages came back to a queue that counts deliveries (delivery limit)."""

    def settled(self, queue: Queue, entries: Iterable[QueuedMessage]) -> None:
        """Logged messages left the queue for good (ack, reject, purge, no-ack delivery)."""

    def settled_paged(self, queue: Queue, paged: Iterable[PagedBatch]) -> None:
        """Logged messages the queue kept as compact records left it for good (a purge)."""

    def uncertain(self, message: Message) -> bool:
        """Whether a logged message came back after an unclean shutdown, when whatever moved
        it before the crash (a dead-letter, a delayed release) may have reached a consumer
        without its record reaching the disk: where it goes next, it goes redelivered."""
        return False

    def sync(self, callback: SyncCallback) -> None:
        """Call back once everything logged so far is on disk (or failed to get there)."""
        callback(None)

    def read_body(self, message: Message) -> bytes:
        """Load the body of a message whose body is not in memory."""
        raise LookupError("this store keeps every body in memory")

    # Whether a queue may keep logged messages as compact records (`PagedRef`) and have them
    # read back, with their bodies, when they near the head: only a store that keeps them.
    pages = False
    # What those queues may hold read back ahead of their consumers, all together: a store
    # that `pages` has one.
    read_ahead: ReadAheadBudget

    def reading_bytes(self) -> int:
        """Bytes being read back from disk right now, for the memory alarm (once back, they
        are counted as the queues' messages)."""
        return 0

    def load(self, msg_ids: list[int], locations: list[int]) -> list[Message | BaseException]:
        """The messages of these records (ids, and places as `pack_location`'s) read back now,
        bodies in memory, each with `refs` 1 (only a message one queue holds is paged), or
        the error reading it."""
        raise LookupError("this store keeps every message in memory")

    def load_ahead(self, msg_ids: list[int], locations: list[int], done: Loaded) -> None:
        """As `load`, off the event loop: `done` gets the results later, on the loop."""
        done(self.load(msg_ids, locations))

    @property
    def spilling(self) -> bool:
        """Memory is past the paging ratio of the high watermark: a queue that pages writes
        the transient messages it would keep past its window to the spill files (`spill`)."""
        return False

    def spill(self, message: Message) -> tuple[int, int] | None:
        """Write a transient message out (with `spilling`); where it went, or None when it
        could not be (it stays in memory then)."""
        return None

    def unspilled(self, segments: dict[int, int]) -> None:
        """Spilled messages were read back or dropped: spill segment -> how many."""
