"""The README's payment example, run as a user runs it: two pika scripts against a real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pika

from tests.support import BrokerProcess

EXAMPLE = Path(__file__).parent / "payment_example"


def run_script(name: str, url: str, count: int) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / name), "--url", url, "--count", str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def wait_for_consumer(url: str, queue: str, timeout: float = 20.0) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            channel = connection.channel()
            try:
                ok = channel.queue_declare(queue, passive=True)
                if ok.method.consumer_count:
                    return
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass  # the worker has not declared the queue yet
            time.sleep(0.05)
        raise AssertionError(f"no consumer on {queue} after {timeout}s")
    finally:
        connection.close()


def test_ten_payment_orders_arrive_in_order_with_manual_acks(broker: BrokerProcess) -> None:
    """Producer publishes 10 orders to durable payment_queue; the worker acks all 10 in order."""
    sent = run_script("producer.py", broker.url, 10)
    assert sent == [f"sent order {n}" for n in range(10)]
    charged = run_script("worker.py", broker.url, 10)
    assert charged == [f"charged order {n}" for n in range(10)]


def test_worker_started_first_receives_orders_as_they_come(broker: BrokerProcess) -> None:
    """A worker waiting on the queue gets every order published afterwards, in order."""
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "worker.py"), "--url", broker.url, "--count", "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_consumer(broker.url, "payment_queue")
        run_script("producer.py", broker.url, 10)
        out, _ = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert out.splitlines() == [f"charged order {n}" for n in range(10)]
