"""Why a connection's socket is not being read right now.

Four independent reasons stop reading: the client's own output is backed up (the transport's
write buffer passed its high-water mark, or one loop iteration framed a full batch for it), the
memory alarm blocks it as a publisher, the stream broke (a framing error: nothing after it can
be parsed), or the connection used up its turn of the event loop and lets the others go first.
Each is set and cleared on its own; the socket is read again only when none holds.
Keeping them in one place is what lets every reply path honour back-pressure: a client that
pipelines requests without reading its replies stops being read, instead of making the broker
buffer replies without bound.
"""

from __future__ import annotations

import asyncio
from typing import Final

WRITES: Final = "writes"
ALARM: Final = "alarm"
BROKEN: Final = "broken"
TURN: Final = "turn"


class ReadFlow:
    """The set of reasons reading is paused, mapped onto the transport's pause/resume."""

    __slots__ = ("_reasons", "_transport", "paused")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reasons: set[str] = set()
        self.paused = False  # a plain attribute: the frame loop reads it for every frame

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def holds(self, reason: str) -> bool:
        return reason in self._reasons

    def pause(self, reason: str) -> None:
        if not self._reasons and self._transport is not None:
            self._transport.pause_reading()
        self._reasons.add(reason)
        self.paused = True

    def resume(self, reason: str) -> bool:
        """Clear one reason; True when reading is resumed by it."""
        if reason not in self._reasons:
            return False
        self._reasons.discard(reason)
        self.paused = bool(self._reasons)
        if self.paused or self._transport is None or self._transport.is_closing():
            return False
        self._transport.resume_reading()
        return True
