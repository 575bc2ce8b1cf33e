"""Integration tests always drive a Warren broker process of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BrokerProcess


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A fresh Warren process for one test."""
    process = BrokerProcess(tmp_path / "broker")
    yield process
    process.stop()
