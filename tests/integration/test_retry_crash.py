"""kill -9 against the retry machinery: delivery counts never reset, and durable delayed
messages are neither lost, nor delivered early, nor delivered twice without `redelivered`.

Delayed messages encode the delayed-message plugin's behaviour as clients use it (exchange type
x-delayed-message, x-delayed-type, the x-delay header in ms); the plugin keeps its schedule on
one node and has lost or stranded messages across restarts, which is what these tests drive.
Warren-only: RabbitMQ here has no delayed-message plugin, and these are crash tests.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

from tests.support import BrokerProcess

PERSISTENT = pika.DeliveryMode.Persistent
CHECKPOINT = "checkpoints"


def _sync_point(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    """A confirmed publish: every mark the broker logged before it is on disk now."""
    channel.basic_publish("", CHECKPOINT, b"", pika.BasicProperties(delivery_mode=PERSISTENT))


@pytest.mark.timeout(120)
def test_kill_9_while_a_poison_message_is_out_never_resets_its_count(tmp_path: Path) -> None:
    """A message whose consumer never acks, with the broker killed each time it is out: every
    kill counts as a return (x-delivery-count 0 -> 1 -> 2 across three brokers), and past
    x-delivery-limit 2 it lands in the dead-letter queue, reason delivery_limit."""
    data_dir = tmp_path / "broker"
    broker = BrokerProcess(data_dir)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(CHECKPOINT, durable=True)
    channel.queue_declare("dead", durable=True)
    channel.queue_declare(
        "work",
        durable=True,
        arguments={
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dead",
        },
    )
    channel.basic_publish("", "work", b"poison", pika.BasicProperties(delivery_mode=PERSISTENT))
    connection.close()
    counts = []
    for _ in range(3):
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        method, properties, _ = next(channel.consume("work", inactivity_timeout=10))
        assert method is not None, f"the poison message did not come back after {counts}"
        counts.append((properties.headers or {}).get("x-delivery-count"))
        _sync_point(channel)  # its delivery is logged: the crash below finds it out
        broker.kill()
        broker = BrokerProcess(data_dir)
    assert counts == [None, 1, 2]
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    assert channel.queue_declare("work", passive=True).method.message_count == 0
    method, properties, body = channel.basic_get("dead", auto_ack=True)
    assert body == b"poison"
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    connection.close()
    broker.stop()


class Arrivals:
    """What a consumer saw, across broker restarts: (order, redelivered, monotonic time)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, float]] = []
        self.lock = threading.Lock()

    def consume(self, url: str, stop: threading.Event) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=100)
            for method, _, body in channel.consume("due", inactivity_timeout=0.2):
                if method is not None:
                    with self.lock:
                        self.seen.append((int(body), method.redelivered, time.monotonic()))
                    channel.basic_ack(method.delivery_tag)
                if stop.is_set():
                    break
            connection.close()
        except pika.exceptions.AMQPError:
            pass  # the broker was killed under it


@pytest.mark.timeout(180)
def test_kill_9_with_delayed_messages_pending_loses_none_and_routes_none_early_or_twice(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    data_dir = tmp_path / "broker"
    broker = BrokerProcess(data_dir)
    setup = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = setup.channel()
    channel.exchange_declare(
        "later", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"}
    )
    channel.queue_declare("due", durable=True)
    channel.queue_bind("due", "later", "k")
    setup.close()
    arrivals = Arrivals()
    confirmed: dict[int, float] = {}  # order -> earliest allowed arrival (monotonic)
    for cycle in range(3):
        stop = threading.Event()
        consumer = threading.Thread(target=arrivals.consume, args=(broker.url, stop))
        consumer.start()
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        publishing = connection.channel()
        publishing.confirm_delivery()
        for n in range(300):
            order = cycle * 1000 + n
            delay = rng.randrange(100, 1500)
            sent = time.monotonic()
            publishing.basic_publish(
                "later",
                "k",
                str(order).encode(),
                pika.BasicProperties(delivery_mode=PERSISTENT, headers={"x-delay": delay}),
            )
            confirmed[order] = sent + delay / 1000
        time.sleep(rng.uniform(0.0, 1.0))  # some came due and were delivered, some wait
        broker.kill()
        stop.set()
        consumer.join(10)
        broker = BrokerProcess(data_dir)
    stop = threading.Event()
    consumer = threading.Thread(target=arrivals.consume, args=(broker.url, stop))
    consumer.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with arrivals.lock:
            if set(confirmed) <= {order for order, _, _ in arrivals.seen}:
                break
        time.sleep(0.1)
    time.sleep(0.5)  # anything routed twice would show up now
    stop.set()
    consumer.join(10)
    broker.stop()
    firsts: dict[int, tuple[bool, float]] = {}
    twice_without_flag = []
    for order, redelivered, at in arrivals.seen:
        if order in firsts and not redelivered:
            twice_without_flag.append(order)
        firsts.setdefault(order, (redelivered, at))
    lost = set(confirmed) - set(firsts)
    early = [order for order, (_, at) in firsts.items() if at < confirmed[order] - 0.05]
    assert not lost and not early and not twice_without_flag, (
        f"seed {seed}: {len(lost)} lost, {len(early)} early, {len(twice_without_flag)} twice"
        " without redelivered"
    )


@pytest.mark.timeout(180)
def test_kill_9_never_makes_deduplication_drop_a_message_that_was_not_kept(
    tmp_path: Path,
) -> None:
    """Publishers retry what was not confirmed before a kill -9, with the same
    x-deduplication-header (the deduplication plugin's exchange, disk persistence): every order
    ends in the queue, and each confirmed one exactly once."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    data_dir = tmp_path / "broker"
    broker = BrokerProcess(data_dir)
    setup = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = setup.channel()
    channel.exchange_declare(
        "once",
        "x-message-deduplication",
        durable=True,
        arguments={"x-cache-size": 100_000, "x-cache-persistence": "disk"},
    )
    channel.queue_declare("orders", durable=True)
    channel.queue_bind("orders", "once", "")
    setup.close()
    confirmed: set[int] = set()
    pending = list(range(2000))
    for _ in range(3):
        done = threading.Event()

        def publish(url: str = broker.url, done: threading.Event = done) -> None:
            try:
                connection = pika.BlockingConnection(pika.URLParameters(url))
                publishing = connection.channel()
                publishing.confirm_delivery()
                for order in list(pending):
                    headers = {"x-deduplication-header": f"order-{order}"}
                    properties = pika.BasicProperties(delivery_mode=PERSISTENT, headers=headers)
                    publishing.basic_publish("once", "", str(order).encode(), properties)
                    confirmed.add(order)
                connection.close()
            except pika.exceptions.AMQPError:
                pass  # killed under it: what was not confirmed is retried
            finally:
                done.set()

        worker = threading.Thread(target=publish)
        worker.start()
        time.sleep(rng.uniform(0.05, 0.6))
        broker.kill()
        done.wait(10)
        worker.join(10)
        broker = BrokerProcess(data_dir)
        pending[:] = [order for order in range(2000) if order not in confirmed]
    # the last retry, with everything still unconfirmed and some confirmed ones again
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    publishing = connection.channel()
    publishing.confirm_delivery()
    for order in [*pending, *rng.sample(sorted(confirmed), min(200, len(confirmed)))]:
        headers = {"x-deduplication-header": f"order-{order}"}
        properties = pika.BasicProperties(delivery_mode=PERSISTENT, headers=headers)
        publishing.basic_publish("once", "", str(order).encode(), properties)
    queued: list[int] = []
    while True:
        method, _, body = publishing.basic_get("orders", auto_ack=True)
        if method is None:
            break
        queued.append(int(body))
    connection.close()
    broker.stop()
    missing = set(range(2000)) - set(queued)
    twice = [order for order in confirmed if queued.count(order) > 1]
    assert not missing and not twice, (
        f"seed {seed}: {len(missing)} orders never kept, {len(twice)} confirmed ones twice"
    )
