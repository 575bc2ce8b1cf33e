"""One fuzzed broker per module, and the run's seed, example counts and findings in the
terminal summary (printed with or without -s, also under -q)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.harness import REPORT, FuzzBroker
from tests.support import SUMMARIES


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzBroker]:
    base = tmp_path_factory.mktemp("fuzz")
    # WARREN_FUZZ_FINDINGS keeps them somewhere pytest does not rotate away.
    REPORT.findings_path = Path(os.environ.get("WARREN_FUZZ_FINDINGS") or base / "findings.json")
    broker = FuzzBroker(base)
    yield broker
    broker.stop()
    REPORT.save()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker (scripts/test), whose terminal nobody sees, the summary goes
    to the controller instead (tests/conftest.py prints it)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and REPORT.examples:
        workeroutput.setdefault(SUMMARIES, {})["warren fuzz"] = REPORT.lines()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT.examples:
        return
    terminalreporter.section("warren fuzz")
    for line in REPORT.lines():
        terminalreporter.write_line(line)
