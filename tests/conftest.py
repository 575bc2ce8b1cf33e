"""Fixtures for every suite.

The compat tests run against whatever `WARREN_TEST_TARGET` names: unset or `warren` starts a Warren
broker process on a free port for the session; an `amqp://` URL points them at another broker
(CI runs them against Debian's rabbitmq-server too). `WARREN_TEST_MANAGEMENT` is then that broker's
management API (`http://user:password@host:port`); with Warren, the session's process serves it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pika
import pytest

import broker
from tests.support import SUMMARIES, BrokerProcess, free_port, unique

TARGET = os.environ.get("WARREN_TEST_TARGET", "warren")
MANAGEMENT_TARGET = os.environ.get("WARREN_TEST_MANAGEMENT", "")
# Summary sections the pytest-xdist workers sent (scripts/test runs two): {title: lines}.
_WORKER_SUMMARIES: dict[str, list[str]] = {}


@pytest.fixture(scope="session")
def warren_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One Warren process shared by the session's tests."""
    broker = BrokerProcess(tmp_path_factory.mktemp("warren"), management_port=free_port())
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    """The AMQP URL of the broker under test."""
    if TARGET == "warren":
        return request.getfixturevalue("warren_broker").url
    return TARGET


@pytest.fixture(scope="session")
def management_url(request: pytest.FixtureRequest) -> str:
    """The management HTTP API of the broker under test, `http://user:password@host:port`."""
    if TARGET == "warren":
        return request.getfixturevalue("warren_broker").management_url
    if not MANAGEMENT_TARGET:
        pytest.skip("WARREN_TEST_MANAGEMENT names no management API for the target broker")
    return MANAGEMENT_TARGET


@pytest.fixture(scope="session")
def target_is_warren() -> bool:
    return TARGET == "warren"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if TARGET != "warren":
        skips["warren_only"] = "Warren-specific behaviour; target is another broker"
    if broker.PURE_REASON is None:
        skips["pure_python"] = (
            "patches or subclasses classes that run compiled in this process; the unit run on "
            "the Python sources (WARREN_PURE_PYTHON=1) covers it"
        )
    for item in items:
        for marker, reason in skips.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """A worker is done: keep the summary sections it sent (a fuzz run's seed, say)."""
    _WORKER_SUMMARIES.update(getattr(node, "workeroutput", {}).get(SUMMARIES, {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in _WORKER_SUMMARIES.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def params(amqp_url: str) -> pika.URLParameters:
    return pika.URLParameters(amqp_url)


@pytest.fixture
def connection(params: pika.URLParameters) -> Iterator[pika.BlockingConnection]:
    conn = pika.BlockingConnection(params)
    yield conn
    if conn.is_open:
        conn.close()


@pytest.fixture
def channel(connection: pika.BlockingConnection):
    return connection.channel()


@pytest.fixture
def name() -> str:
    """A fresh name for a queue or exchange."""
    return unique()
