"""Message rates for the management API and console, from counters sampled every few seconds.

The hot path only bumps plain integers (queue totals, node `Counters`); every SAMPLE_INTERVAL
the sampler reads them and keeps the last few samples per object, so a rate is the difference
of two samples over their interval, as RabbitMQ's management plugin reports `*_details.rate`.
Objects that are gone are dropped from the sample table at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable

SAMPLE_INTERVAL = 5.0  # seconds, RabbitMQ's default collect_statistics_interval
KEPT = 13  # samples per object: one minute of history for the console's charts

Counts = tuple[int, ...]
Source = Callable[[], Iterable[tuple[object, Counts]]]


class RateSampler:
    """Samples `source()` ((key, counts) pairs) every interval; `rates(key)` gives per-second
    rates of each count between the two latest samples."""

    def __init__(self, source: Source, interval: float = SAMPLE_INTERVAL) -> None:
        self.source = source
        self.interval = interval
        self._samples: dict[object, deque[tuple[float, Counts]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def sample(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        seen = set()
        for key, counts in self.source():
            seen.add(key)
            history = self._samples.get(key)
            if history is None:
                history = self._samples[key] = deque(maxlen=KEPT)
            history.append((now, counts))
        for key in [key for key in self._samples if key not in seen]:
            del self._samples[key]

    def rates(self, key: object, width: int) -> tuple[float, ...]:
        """Per-second rates of the `width` counts of `key` (zeros until two samples exist)."""
        history = self._samples.get(key)
        if history is None or len(history) < 2:
            return (0.0,) * width
        (then, old), (now, new) = history[-2], history[-1]
        span = max(now - then, 1e-9)
        return tuple(round(max(b - a, 0) / span, 1) for a, b in zip(old, new, strict=True))

    def history(self, key: object) -> list[tuple[float, Counts]]:
        """The samples kept for `key`, oldest first, with times in seconds before now."""
        history = self._samples.get(key, ())
        now = time.monotonic()
        return [(round(now - at, 1), counts) for at, counts in history]
