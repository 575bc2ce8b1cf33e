"""The memory monitor keeps checking whatever one check raises."""

from __future__ import annotations

import asyncio

import pytest

from broker import alarms
from broker.alarms import MemoryMonitor


async def test_a_failing_check_does_not_stop_the_monitor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 3: an exception inside one check used to end the monitor's task, so an alarm
    that was set never cleared and every publisher stayed blocked."""
    monkeypatch.setattr(alarms, "CHECK_INTERVAL", 0.01)
    calls = 0
    changes: list[bool] = []

    def accounted() -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise AttributeError("'str' object has no attribute 'get'")
        return 10**12 if calls < 4 else 0  # above the watermark, then below it

    monitor = MemoryMonitor(limit=1 << 30, on_change=changes.append, accounted=accounted)
    monitor.start()  # the baseline is the first call
    for _ in range(200):
        if changes == [True, False]:
            break
        await asyncio.sleep(0.01)
    await monitor.stop()
    assert changes == [True, False]
    assert "alarm.memory.check_failed" in caplog.text
