"""kill -9 at random moments while publishers confirm and consumers ack: nothing confirmed is
lost and nothing acked comes back.

What counts as "acked": the consumer acks, then publishes a checkpoint message in confirm mode on
the same channel; the confirm proves the log was synced past those acks. (An ack the broker
processed but had not yet written may legitimately come back after a crash: at-least-once.)
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pytest

from tests.support import BrokerProcess

QUEUE = "crash-orders"
CHECKPOINTS = "crash-checkpoints"
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


@dataclass
class Ledger:
    """What the clients know for sure, shared by the worker threads."""

    next_id: int = 0
    confirmed: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    delivered_before_checkpoint: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def declare(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.queue_declare(CHECKPOINTS, durable=True)
    connection.close()


def publisher(url: str, ledger: Ledger, stop: threading.Event) -> None:
    """Publish numbered persistent orders one by one; a returned publish is a confirm."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        while not stop.is_set():
            with ledger.lock:
                ledger.next_id += 1
                order = ledger.next_id
            channel.basic_publish("", QUEUE, str(order).encode(), PERSISTENT)
            with ledger.lock:
                ledger.confirmed.add(order)
    except (pika.exceptions.AMQPError, OSError):
        return  # the broker died under us


def consumer(url: str, ledger: Ledger, stop: threading.Event) -> None:
    """Ack orders; every few acks, a confirmed checkpoint makes them count as acked."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=20)
        pending_acks: list[int] = []
        received: list[int] = []
        for method, _, body in channel.consume(QUEUE, inactivity_timeout=0.05):
            if stop.is_set():
                break
            if method is not None:
                order = int(body)
                received.append(order)
                if random.random() < 0.9:  # leave some delivered but unacked
                    channel.basic_ack(method.delivery_tag)
                    pending_acks.append(order)
            if len(pending_acks) >= 10 or (method is None and pending_acks):
                channel.basic_publish("", CHECKPOINTS, b"checkpoint", PERSISTENT)
                with ledger.lock:
                    ledger.acked.update(pending_acks)
                    ledger.delivered_before_checkpoint.update(received)
                pending_acks.clear()
                received.clear()
    except (pika.exceptions.AMQPError, OSError):
        return


def drain(url: str) -> list[tuple[int, bool]]:
    """Everything left in the queue after a restart, in order, with its redelivered flag."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    found = []
    while True:
        method, _, body = channel.basic_get(QUEUE, auto_ack=True)
        if method is None:
            break
        found.append((int(body), method.redelivered))
    channel.queue_purge(CHECKPOINTS)
    connection.close()
    return found


@pytest.mark.timeout(180)
def test_random_kill_9_loses_nothing_confirmed_and_revives_nothing_acked(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    rng = random.Random()
    broker = BrokerProcess(data_dir)
    declare(broker.url)
    ledger = Ledger()
    checked_confirmed = checked_acked = recovered_total = 0
    try:
        for cycle in range(4):
            stop = threading.Event()
            workers = [
                threading.Thread(target=publisher, args=(broker.url, ledger, stop)),
                threading.Thread(target=consumer, args=(broker.url, ledger, stop)),
            ]
            for worker in workers:
                worker.start()
            time.sleep(rng.uniform(0.5, 2.0))
            broker.kill()  # SIGKILL while both are busy
            stop.set()
            for worker in workers:
                worker.join(10)
            broker = BrokerProcess(data_dir)
            found = drain(broker.url)
            ids = [order for order, _ in found]
            with ledger.lock:
                must_survive = ledger.confirmed - ledger.acked
                missing = must_survive - set(ids)
                revived = ledger.acked & set(ids)
                not_redelivered = [
                    order
                    for order, redelivered in found
                    if order in ledger.delivered_before_checkpoint and not redelivered
                ]
                published = ledger.next_id
                # Drained messages count as acked from now on.
                ledger.acked.update(ids)
                ledger.confirmed.update(ids)
            print(
                f"cycle {cycle}: published {published}, confirmed-unacked {len(must_survive)},"
                f" recovered {len(ids)}, acked so far {len(ledger.acked)}"
            )
            assert not missing, f"confirmed but unacked orders lost: {sorted(missing)[:20]}"
            assert not revived, f"acked orders came back: {sorted(revived)[:20]}"
            assert ids == sorted(ids), "recovered orders are not in publish order"
            assert not not_redelivered, f"delivered orders lost redelivered: {not_redelivered[:20]}"
            assert len(ids) == len(set(ids)), "an order was recovered twice"
            checked_confirmed += len(must_survive)
            checked_acked += len(revived) + len(ledger.acked)
            recovered_total += len(ids)
    finally:
        broker.stop()
    print(
        f"checked {checked_confirmed} confirmed-unacked orders survive and"
        f" {len(ledger.acked)} acked orders stay gone over 4 kill -9 cycles"
    )
    assert checked_confirmed > 0 and recovered_total > 0
