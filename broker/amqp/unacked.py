"""Deliveries a channel holds unacked, and the ones a Tx.Rollback gave back out of tag order.

A channel keeps its unacked deliveries in a dict in tag order, so that an ack with `multiple`
walks it from the front and stops at the first later tag. A rollback gives back deliveries the
transaction had settled, mostly with tags older than ones still held: putting them back in order
meant rebuilding the whole dict, once per rollback, which let a client spend a linear pass over
everything the channel holds for each 33-byte ack + rollback pair it sent. They wait here
instead, in a heap, and only settling them costs anything.
"""

from __future__ import annotations

import heapq
from typing import Final

from broker.core.consumer import Consumer
from broker.core.message import QueuedMessage
from broker.core.queue import Queue

# An unacked delivery: the queue it came from, its entry there, and the consumer (None for get).
Unacked = tuple[Queue, QueuedMessage, Consumer | None]

# The heap keeps tags settled one by one until they reach its top; past this many stale tags
# (and twice the live ones) it is rebuilt from the live ones, so repeated single acks and
# rollbacks of one delivery cannot grow it without bound.
STALE_SLACK: Final = 64


class RolledBack:
    """Deliveries given back by Tx.Rollback with tags before the channel's newest ones."""

    __slots__ = ("_tags", "entries")

    def __init__(self) -> None:
        self.entries: dict[int, Unacked] = {}
        self._tags: list[int] = []  # a heap of the tags in entries, plus ones settled since

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, tag: int, entry: Unacked) -> None:
        self.entries[tag] = entry
        heapq.heappush(self._tags, tag)
        if len(self._tags) > 2 * len(self.entries) + STALE_SLACK:
            self._tags = sorted(self.entries)  # a sorted list is a heap

    def pop(self, tag: int) -> Unacked | None:
        """Take one delivery (a single ack or reject); its tag leaves the heap when it surfaces."""
        return self.entries.pop(tag, None)

    def take_through(self, tag: int) -> list[tuple[int, Unacked]]:
        """Take every delivery up to `tag`, in tag order (an ack or reject with `multiple`)."""
        tags, entries = self._tags, self.entries
        taken: list[tuple[int, Unacked]] = []
        while tags and tags[0] <= tag:
            oldest = heapq.heappop(tags)
            entry = entries.pop(oldest, None)
            if entry is not None:
                taken.append((oldest, entry))
        return taken

    def take_all(self) -> list[tuple[int, Unacked]]:
        """Take every delivery, in tag order (the channel closes or recovers)."""
        taken = sorted(self.entries.items())  # tags are unique: entries are never compared
        self.entries.clear()
        self._tags.clear()
        return taken

    def oldest(self) -> int | None:
        """The oldest tag still held, dropping settled ones that surfaced at the top."""
        tags, entries = self._tags, self.entries
        while tags and tags[0] not in entries:
            heapq.heappop(tags)
        return tags[0] if tags else None
