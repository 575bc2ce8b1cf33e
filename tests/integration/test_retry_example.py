"""The README's retry recipe, run as a user runs it: a pika script against a real broker, then
the parking lot read back with its x-death history. The same script passes against RabbitMQ
(`WARREN_TEST_TARGET` is not needed: the recipe only uses what both brokers do alike)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pika

from tests.support import BrokerProcess

SCRIPT = Path(__file__).parent / "retry_example" / "retry_worker.py"


def test_retry_recipe_retries_then_parks_with_the_full_history(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "broker")
    try:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--url", broker.url, "--retry-ms", "200"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = result.stdout.splitlines()
        assert sorted(lines) == sorted(
            [
                "failed 0 (attempt 1)",
                "failed 0 (attempt 2)",
                "parked 0 after 3 attempts",
                "failed 1 (attempt 1)",
                "charged 1 (attempt 2)",
                "charged 2 (attempt 1)",
                "charged 3 (attempt 1)",
            ]
        )
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        method, properties, body = channel.basic_get("payment_parking_lot", auto_ack=True)
        assert method is not None and b'"order_id": 0' in body
        deaths = [(d["queue"], d["reason"], d["count"]) for d in properties.headers["x-death"]]
        assert deaths == [("payment_retry", "expired", 2), ("payment_work", "rejected", 2)]
        assert properties.headers["x-first-death-queue"] == "payment_work"
        assert properties.delivery_mode == 2
        for queue in ("payment_work", "payment_retry", "payment_parking_lot"):
            assert channel.queue_declare(queue, passive=True).method.message_count == 0
        connection.close()
    finally:
        broker.stop()
