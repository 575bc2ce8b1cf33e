"""The in-process API: a real broker inside a pytest-asyncio test, on a free port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pika

from broker.config import load_config
from broker.server import Broker


def publish_and_get(url: str) -> bytes:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare("in-process", exclusive=True)
        channel.confirm_delivery()
        channel.basic_publish("", "in-process", b"embedded")
        _, _, body = channel.basic_get("in-process", auto_ack=True)
        return body
    finally:
        connection.close()


async def test_broker_runs_inside_the_test_loop(tmp_path: Path) -> None:
    """`async with Broker(...)` serves real clients and stops cleanly on exit."""
    config = load_config().with_overrides(
        port=0, metrics_port=0, management_port=0, data_dir=str(tmp_path / "data")
    )
    async with Broker(config) as broker:
        assert broker.port != 0
        assert await asyncio.to_thread(publish_and_get, broker.url) == b"embedded"
        assert broker.connections == set()
    assert broker.connections == set()


async def test_stop_closes_clients_with_connection_forced(tmp_path: Path) -> None:
    """Stopping the broker closes open client connections with 320 CONNECTION_FORCED."""
    config = load_config().with_overrides(
        port=0, metrics_port=0, management_port=0, data_dir=str(tmp_path / "data")
    )
    broker = Broker(config)
    await broker.start()
    connection = await asyncio.to_thread(pika.BlockingConnection, pika.URLParameters(broker.url))
    await broker.stop()

    def wait_closed() -> tuple[int, str]:
        try:
            connection.process_data_events(time_limit=5)
        except pika.exceptions.ConnectionClosedByBroker as closed:
            return closed.reply_code, closed.reply_text
        raise AssertionError("connection was not closed by the broker")

    code, text = await asyncio.to_thread(wait_closed)
    assert code == 320
    assert text.startswith("CONNECTION_FORCED - ")
