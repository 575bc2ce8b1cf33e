"""The memory alarm: above the high watermark, publishers are blocked until memory drops.

As in RabbitMQ, connections that publish get connection.blocked and their sockets stop being
read; consumers keep draining queues, which is what brings memory back down. Python seldom gives
freed memory back to the system, so the resident size would stay high after queues drain and the
alarm would never clear. The broker's memory is therefore estimated as what the process used when
it started serving plus what its queues hold now (bodies, headers and per-message bookkeeping),
a sum kept by the queues and read once a second, off the per-message path, plus the definitions
(queues, exchanges, bindings), what clients make the broker hold outside queues (channels,
consumers, uncommitted transactions, bodies being assembled, buffered input and output) and the
log's unwritten records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from broker.logs import fields
from broker.periodic import Periodic

log = logging.getLogger("warren.alarms")

CHECK_INTERVAL = 1.0


def _cgroup_limit_files() -> list[str]:
    """memory.max of this process's own cgroup (v2, e.g. a systemd unit with MemoryMax=), then
    the root files a container sees (v2 and v1)."""
    files = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                files.append(f"/sys/fs/cgroup{line[3:].rstrip('/')}/memory.max")
    except OSError:
        pass
    return [*files, "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]


def total_memory() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in _cgroup_limit_files():
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def resident_memory() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def watermark_bytes(setting: float) -> int:
    """limits.memory_high_watermark: a fraction of memory up to 1, a number of bytes above."""
    return int(setting * total_memory()) if setting <= 1 else int(setting)


class MemoryMonitor:
    """Polls memory use and calls `on_change(alarm_active)` when it crosses the watermark, and
    `on_paging(paging)` when it crosses `paging_ratio` of it (queues page transient messages
    out above that)."""

    def __init__(
        self,
        limit: int,
        on_change: Callable[[bool], None],
        accounted: Callable[[], int],
        paging_ratio: float = 1.0,
        on_paging: Callable[[bool], None] | None = None,
    ) -> None:
        self.limit = limit
        self.active = False
        self.paging_limit = int(limit * paging_ratio)
        self.paging = False
        self._on_paging = on_paging
        self.used = 0
        self.baseline = 0  # the process's own memory, without what queues hold
        self._on_change = on_change
        self._accounted = accounted
        # The alarm must keep being checked, or it could never clear.
        self._periodic = Periodic(CHECK_INTERVAL, self.check, "alarm.memory.check_failed")

    def start(self) -> None:
        self.baseline = max(0, resident_memory() - self._accounted())
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    def check(self) -> None:
        self.used = self.baseline + self._accounted()
        paging = self.used > self.paging_limit
        if paging != self.paging and self._on_paging is not None:
            self.paging = paging
            log.info(
                "memory.paging.started" if paging else "memory.paging.stopped",
                extra=fields(used_bytes=self.used, paging_limit_bytes=self.paging_limit),
            )
            self._on_paging(paging)
        above = self.used > self.limit
        if above == self.active:
            return
        self.active = above
        log.log(
            logging.WARNING if above else logging.INFO,
            "alarm.memory.set" if above else "alarm.memory.cleared",
            extra=fields(used_bytes=self.used, limit_bytes=self.limit),
        )
        self._on_change(above)
