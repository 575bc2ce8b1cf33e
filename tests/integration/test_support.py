"""The test suite's broker helper: it reads the port a broker bound from this run's log, so it
must not take a port an earlier run logged, nor wait out its timeout for a broker that died."""

from __future__ import annotations

from pathlib import Path

import pika
import pytest

from tests.support import AMQP_LISTENING, BrokerProcess


def test_a_restart_on_the_same_data_dir_reports_its_own_port(tmp_path: Path) -> None:
    """The log is appended to across restarts: the second run's port is the one it logged,
    not the first run's, and a client reaches it."""
    first = BrokerProcess(tmp_path)
    first_port = first.port
    first.stop()
    second = BrokerProcess(tmp_path)
    try:
        logged = AMQP_LISTENING.findall(second.log_path.read_bytes())
        assert len(logged) == 2 and int(logged[0]) == first_port
        assert second.port == int(logged[1])
        connection = pika.BlockingConnection(pika.URLParameters(second.url))
        connection.close()
    finally:
        second.stop()


def test_a_broker_that_exits_before_listening_is_reported_at_once(tmp_path: Path) -> None:
    """A config the broker refuses: it exits, and the helper says so with its exit status
    instead of waiting out the start timeout."""
    config = tmp_path / "broker.yaml"
    config.write_text("log_level: loud\n")
    with pytest.raises(RuntimeError, match="broker exited with 2 before listening"):
        BrokerProcess(tmp_path / "data", config, start_timeout=120)  # waited out: TimeoutError
