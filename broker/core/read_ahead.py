"""One memory budget for every paging queue's read-ahead.

A paging queue reads the next few thousand messages back from the log before its consumers
ask for them (broker/core/paging.py). One queue's read-ahead is a few MiB; a consumer that
starts on a thousand queues at once made each of them read ahead together, and the broker held
gigabytes of bodies (and of read buffers) that the memory alarm never saw. The queues now ask
this budget first: what they hold read back (in flight or waiting in their windows) counts
against one limit, and a queue that finds it spent waits its turn, unless its window is empty:
then it may read a small floor anyway, so a consumer is never starved by another queue's
idle window.
"""

from __future__ import annotations

from typing import Final, Protocol

# A grant smaller than this is not worth a read: the queue waits for more to be free.
MIN_GRANT: Final = 256 * 1024
# What a queue whose window is empty may read even when the budget is spent.
FLOOR: Final = 64 * 1024
# The broker's limit unless limits.read_ahead_bytes says otherwise.
DEFAULT_READ_AHEAD_BYTES: Final = 64 * 1024 * 1024


class Reader(Protocol):
    def resume_read_ahead(self) -> None:
        """The budget has room again: read ahead now if still wanted."""


class ReadAheadBudget:
    """Bytes the paging queues hold read ahead (window cost: bodies plus the objects each
    entry makes), and the queues waiting for room, first come first served."""

    __slots__ = ("_waiting", "held", "in_flight", "limit", "peak", "waits")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # charged by queues: in flight, or read back and not yet taken
        self.in_flight = 0  # of it, reads not back yet (the memory alarm counts these)
        self._waiting: dict[Reader, None] = {}  # insertion-ordered set
        # For metrics: the most ever held, and how often a queue was told to wait. Waits
        # while consumers starve say limits.read_ahead_bytes is short.
        self.peak = 0
        self.waits = 0

    def grant(self, reader: Reader, wanted: int, starving: bool) -> int:
        """How many bytes `reader` may read ahead now (the caller charges what it reads);
        0 when it must wait (it is resumed once there is room). A `starving` reader (its
        window is empty) gets at least FLOOR."""
        free = self.limit - self.held
        if free >= MIN_GRANT or free >= wanted:
            self._waiting.pop(reader, None)
            return min(wanted, free)
        if starving:
            self._waiting.pop(reader, None)
            return min(wanted, FLOOR)
        self._waiting[reader] = None
        self.waits += 1
        return 0

    def charge(self, size: int) -> None:
        self.held += size
        self.in_flight += size
        if self.held > self.peak:
            self.peak = self.held

    def arrived(self, size: int) -> None:
        """Reads charged as in flight are back (their messages are in a window now)."""
        self.in_flight -= size

    def release(self, size: int) -> None:
        """Read-back messages left their window (taken, expired, purged): room for others."""
        self.held -= size
        waiting = self._waiting
        while waiting and self.limit - self.held >= MIN_GRANT:
            reader = next(iter(waiting))
            del waiting[reader]
            reader.resume_read_ahead()

    def forget(self, reader: Reader) -> None:
        """A reader that no longer wants to be resumed (its tail is empty)."""
        self._waiting.pop(reader, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
