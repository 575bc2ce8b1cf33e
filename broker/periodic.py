"""A check the broker runs every few seconds on its loop (memory alarm, consumer timeouts).

An exception in one run is logged and the next run still happens: a check that stops silently
(an alarm that can never clear, timeouts never enforced again) is worse than a noisy one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("warren.periodic")


class Periodic:
    def __init__(self, interval: float, check: Callable[[], None], failure_event: str) -> None:
        self.interval = interval
        self._check = check
        self._failure_event = failure_event
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self._check()
            except Exception:
                log.exception(self._failure_event)
            await asyncio.sleep(self.interval)
