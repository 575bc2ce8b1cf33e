"""kill -9 while a durable queue dead-letters en masse (expiry, rejection): afterwards every
confirmed message is in exactly one of the two queues, never both and never neither.

RabbitMQ's classic queues dead-letter at most once: a crash between removing a message from
its queue and publishing it to the dead-letter exchange loses it. Warren logs the move as one
record (MOVE: the settle in the source and the copy in the targets), so there is no moment at
which a crash can separate them. Warren-only (a crash test against a broker process).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pika
import pytest

from tests.support import BrokerProcess

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
MESSAGES = 1500
CYCLES = 2


def _declare(url: str, ttl: int | None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare("dead", durable=True)
    arguments: dict[str, object] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dead",
    }
    if ttl is not None:
        arguments["x-message-ttl"] = ttl
    channel.queue_declare("work", durable=True, arguments=arguments)
    connection.close()


def _publish(url: str, ids: range) -> None:
    """Publish persistent messages with confirms, 100 in flight at a time."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for order in ids:
        channel.basic_publish("", "work", str(order).encode(), PERSISTENT)
    connection.close()


def _drain(url: str, queue: str) -> list[int]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    found = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        found.append(int(body))
    connection.close()
    return found


def _count(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    count = connection.channel().queue_declare(queue, passive=True).method.message_count
    connection.close()
    return count


def _wait_until_empty(url: str, queue: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _count(url, queue):
        assert time.monotonic() < deadline, f"{queue} still holds messages after {timeout}s"
        time.sleep(0.05)


def _check_each_exactly_once(url: str, expected: set[int]) -> None:
    work, dead = _drain(url, "work"), _drain(url, "dead")
    everything = work + dead
    duplicated = len(everything) - len(set(everything))
    missing = expected - set(everything)
    assert not duplicated and not missing, (
        f"{len(missing)} confirmed messages are in neither queue and {duplicated} are in both"
        f" (work {len(work)}, dead {len(dead)})"
    )


@pytest.mark.timeout(240)
def test_kill_9_during_mass_expiry_leaves_each_message_in_exactly_one_queue(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    data_dir = tmp_path / "broker"
    for cycle in range(CYCLES):
        broker = BrokerProcess(data_dir)
        if cycle == 0:
            _declare(broker.url, ttl=400)
        ids = range(cycle * MESSAGES, (cycle + 1) * MESSAGES)
        _publish(broker.url, ids)
        time.sleep(rng.uniform(0.0, 0.6))  # the publishes expire from 0.4 s on: kill around it
        broker.kill()
        broker = BrokerProcess(data_dir)
        _wait_until_empty(broker.url, "work")  # what expired while down goes at recovery
        dead = _drain(broker.url, "dead")
        assert sorted(dead) == list(ids), f"cycle {cycle}: seed {seed}"
        broker.stop()


@pytest.mark.timeout(240)
def test_kill_9_during_mass_rejection_leaves_each_message_in_exactly_one_queue(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    data_dir = tmp_path / "broker"
    for cycle in range(CYCLES):
        broker = BrokerProcess(data_dir)
        if cycle == 0:
            _declare(broker.url, ttl=None)
        _drain(broker.url, "dead")
        ids = range(cycle * MESSAGES, (cycle + 1) * MESSAGES)
        _publish(broker.url, ids)
        stop = threading.Event()

        def reject_everything(url: str = broker.url, stop: threading.Event = stop) -> None:
            try:
                connection = pika.BlockingConnection(pika.URLParameters(url))
                channel = connection.channel()
                channel.basic_qos(prefetch_count=200)
                for method, _, _ in channel.consume("work", inactivity_timeout=0.5):
                    if stop.is_set() or method is None:
                        break
                    channel.basic_nack(method.delivery_tag, multiple=True, requeue=False)
            except pika.exceptions.AMQPError:
                pass  # the broker was killed under it

        worker = threading.Thread(target=reject_everything)
        worker.start()
        time.sleep(rng.uniform(0.05, 0.8))
        broker.kill()
        stop.set()
        worker.join(10)
        broker = BrokerProcess(data_dir)
        _check_each_exactly_once(broker.url, set(ids))
        broker.stop()
