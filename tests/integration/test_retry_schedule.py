"""The README's retry schedule, run as a user runs it: a failing charge is retried after
1 s, 10 s and 60 s (scaled down 100x here) through TTL queues or the delayed exchange, then
parked with its history; a worker killed while holding an order gets it back redelivered with a
higher x-delivery-count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pika
import pytest

from tests.support import BrokerProcess

SCRIPT = Path(__file__).parent / "retry_example" / "retry_schedule.py"
CRASHING_WORKER = """
import os, sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
for method, properties, body in channel.consume("payments.work"):
    print("took", body.decode(), flush=True)
    os._exit(1)  # crashes holding the order, unacked
"""


@pytest.mark.parametrize("via", ["ttl", "delayed"])
def test_a_failing_charge_is_retried_on_schedule_then_parked(tmp_path: Path, via: str) -> None:
    broker = BrokerProcess(tmp_path / "broker")
    try:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--url", broker.url, "--via", via, "--scale", "0.01"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = result.stdout.splitlines()
        assert [line for line in lines if line.startswith(("retry 0", "parked 0"))] == [
            "retry 0 in 1000 ms",
            "retry 0 in 10000 ms",
            "retry 0 in 60000 ms",
            "parked 0 after 3 retries",
        ]
        assert sorted(line for line in lines if line.startswith("charged")) == [
            "charged 1 after 0 retries",
            "charged 2 after 0 retries",
        ]
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        method, properties, body = channel.basic_get("payments.parking", auto_ack=True)
        assert method is not None and b'"order_id": 0' in body
        headers = properties.headers
        if via == "ttl":
            # RabbitMQ regroups older deaths in reverse from two on: its order, checked there
            deaths = [(d["queue"], d["reason"], d["count"]) for d in headers["x-death"]]
            assert deaths == [
                ("payments.retry.2", "expired", 1),
                ("payments.retry.0", "expired", 1),
                ("payments.retry.1", "expired", 1),
            ]
        else:
            assert headers["x-attempt"] == 3
        connection.close()
    finally:
        broker.stop()


def test_a_crashed_workers_order_comes_back_redelivered_with_a_higher_count(
    tmp_path: Path,
) -> None:
    broker = BrokerProcess(tmp_path / "broker")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("payments.work", durable=True, arguments={"x-queue-type": "quorum"})
        channel.confirm_delivery()
        channel.basic_publish(
            "", "payments.work", b"order-1", pika.BasicProperties(delivery_mode=2)
        )
        worker = subprocess.run(
            [sys.executable, "-c", CRASHING_WORKER, broker.url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert worker.stdout.strip() == "took order-1"
        method, properties, body = next(channel.consume("payments.work", inactivity_timeout=10))
        assert method is not None and body == b"order-1"
        assert method.redelivered
        assert properties.headers == {"x-delivery-count": 1}
        channel.basic_ack(method.delivery_tag)
        connection.close()
    finally:
        broker.stop()
