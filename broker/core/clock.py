"""Time for the model: what time it is and a way to be called back later, injectable for tests.

Deadlines (message TTL, queue expiry) are wall-clock seconds, not the loop's monotonic time,
because they are written to the log and must mean the same after a restart (RabbitMQ's expiry
uses the system time too). Timers run on the event loop. Unit tests pass a clock they advance by
hand, so no test waits for a TTL to pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` after `delay` seconds."""


class SystemClock:
    """The real time, with timers on the running event loop."""

    def now(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(delay, 0.0), callback)


SYSTEM_CLOCK = SystemClock()
