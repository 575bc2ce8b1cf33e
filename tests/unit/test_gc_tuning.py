"""The served broker collects young objects every GC_YOUNG_THRESHOLD allocations instead of
CPython's 700 (broker/cli.py). The failure path of that choice: reference cycles, which only
the collector frees, piling up. They must still go, without anyone calling gc.collect()."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from broker import cli


class _Node:
    """An object in a reference cycle with itself, as an exception's traceback or a future's
    callback can make."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def tuned() -> Iterator[None]:
    thresholds = gc.get_threshold()
    cli._tune_garbage_collection()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_cycles_are_still_collected_under_the_raised_threshold(tuned: None) -> None:
    assert gc.get_threshold()[0] == cli.GC_YOUNG_THRESHOLD
    freed = [0]

    def count() -> None:
        freed[0] += 1

    made = 5 * cli.GC_YOUNG_THRESHOLD
    for _ in range(made):
        node = _Node()
        weakref.finalize(node, count)
        del node  # unreachable now: only the collector can free it
    # Every young collection frees the cycles made before it: at most the last
    # threshold's worth (two allocations a node) can still be waiting.
    assert freed[0] >= made - cli.GC_YOUNG_THRESHOLD
