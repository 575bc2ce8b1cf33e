"""kill -9 checking shared by tests/integration/test_crash_recovery.py and
`scripts/bench --scenario crash`: the clients' ledger, the pika workers that fill it, and the
check of what a restarted broker gives back.

What the clients know for sure, per queue:
- confirmed: the broker confirmed the publish, so the order is on disk.
- acked: the consumer acked, then published a checkpoint message in confirm mode on the same
  channel; that confirm proves the log was synced past those acks. (An ack the broker processed
  but had not yet written may legitimately come back after a crash: at-least-once.)
- in doubt: acks sent whose checkpoint was not confirmed before the crash. Each such order may
  come back or not; after the restart's check it counts as acked.
- delivered: a consumer received the order (recorded on receipt, before it is acked, nacked or
  held). Such an order may come back after a crash, but only with redelivered=true: consumers
  rely on the flag to decide when to look for duplicates of a payment.

After each restart, `check_recovery` compares what the queue holds with the ledger: every
confirmed, unacked order is back, no acked order is, no order is there twice, each publisher's
orders are in publish order, and every order delivered before the crash carries redelivered=true.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import pika
import pika.exceptions

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
CHECKPOINT_EVERY = 10  # acks per checkpoint publish


def encode_order(order: int, size: int = 0) -> bytes:
    """The order number as the body, padded with spaces to `size` bytes (for segment rolls)."""
    return str(order).encode().ljust(size)


def decode_order(body: bytes) -> int:
    return int(body)


@dataclass
class Ledger:
    """What the clients know for sure about one queue, shared by the worker threads."""

    queue: str
    next_id: int = 0
    confirmed: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    in_doubt: set[int] = field(default_factory=set)
    delivered: set[int] = field(default_factory=set)
    publisher_of: dict[int, int] = field(default_factory=dict)
    buffered_at_kill: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allocate(self, publisher: int) -> int:
        with self.lock:
            self.next_id += 1
            self.publisher_of[self.next_id] = publisher
            return self.next_id

    def confirm(self, order: int) -> None:
        with self.lock:
            self.confirmed.add(order)

    def record_delivery(self, order: int) -> None:
        with self.lock:
            self.delivered.add(order)

    def ack_sent(self, order: int) -> None:
        with self.lock:
            self.in_doubt.add(order)

    def settle(self, orders: list[int]) -> None:
        with self.lock:
            self.acked.update(orders)
            self.in_doubt.difference_update(orders)


@dataclass
class RecoveryCheck:
    """One queue after one restart: what had to come back and what went wrong."""

    queue: str
    published: int
    must_survive: int  # confirmed and not acked before the crash
    in_doubt: int  # acked, but the crash came before a checkpoint proved the ack synced
    recovered: int
    delivered_recovered: int  # recovered orders a consumer had received before the crash
    missing: list[int]  # confirmed, not acked, not back: lost
    revived: list[int]  # acked (and synced) but back
    duplicates: list[int]  # back more than once in the queue
    out_of_order: list[int]  # back ahead of an earlier order of the same publisher
    redelivered_lost: list[int]  # delivered before the crash, back with redelivered=false

    def failures(self) -> list[str]:
        """One line per kind of violation, empty when the restart lost and revived nothing."""
        found = []
        for name, orders in (
            ("confirmed but unacked orders lost", self.missing),
            ("acked orders came back", self.revived),
            ("orders recovered twice", self.duplicates),
            ("orders recovered out of publish order", self.out_of_order),
            ("delivered orders came back with redelivered=false", self.redelivered_lost),
        ):
            if orders:
                found.append(f"{self.queue}: {len(orders)} {name}: {sorted(orders)[:20]}")
        return found

    def summary(self) -> str:
        return (
            f"{self.queue}: published {self.published}, confirmed-unacked {self.must_survive},"
            f" acks in doubt {self.in_doubt},"
            f" recovered {self.recovered} ({self.delivered_recovered} delivered before),"
            f" missing {len(self.missing)}, revived {len(self.revived)},"
            f" duplicates {len(self.duplicates)}, out-of-order {len(self.out_of_order)},"
            f" redelivered-lost {len(self.redelivered_lost)}"
        )


def check_recovery(ledger: Ledger, found: list[tuple[int, bool]], settled: bool) -> RecoveryCheck:
    """Compare what a restarted queue held (`found`: order and redelivered flag, in queue order)
    with the ledger, then update the ledger: recovered orders are on disk now, so they count as
    confirmed; when the drain `settled` them they count as acked, otherwise (a peek that
    requeued them) as delivered. Acks in doubt that did not come back count as acked."""
    ids = [order for order, _ in found]
    present = set(ids)
    seen: set[int] = set()
    duplicates = []
    for order in ids:
        if order in seen:
            duplicates.append(order)
        seen.add(order)
    with ledger.lock:
        must_survive = ledger.confirmed - ledger.acked - ledger.in_doubt
        last_of: dict[int, int] = {}
        out_of_order = []
        for order in ids:
            publisher = ledger.publisher_of.get(order, -1)
            if order < last_of.get(publisher, 0):
                out_of_order.append(order)
            last_of[publisher] = max(order, last_of.get(publisher, 0))
        check = RecoveryCheck(
            queue=ledger.queue,
            published=ledger.next_id,
            must_survive=len(must_survive),
            in_doubt=len(ledger.in_doubt),
            recovered=len(ids),
            delivered_recovered=len(present & ledger.delivered),
            missing=sorted(must_survive - present),
            revived=sorted(ledger.acked & present),
            duplicates=duplicates,
            out_of_order=out_of_order,
            redelivered_lost=[
                order
                for order, redelivered in found
                if order in ledger.delivered and not redelivered
            ],
        )
        ledger.confirmed.update(present)
        ledger.acked.update(ledger.in_doubt - present)
        ledger.in_doubt.clear()
        if settled:
            ledger.acked.update(present)
        else:
            ledger.delivered.update(present)
    return check


# ---------------------------------------------------------------- clients (pika, in threads)


def declare(url: str, *queues: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for queue in queues:
        channel.queue_declare(queue, durable=True)
    connection.close()


def publisher(
    url: str,
    ledger: Ledger,
    stop: threading.Event,
    number: int = 0,
    body_size: int = 0,
    pause: float = 0.0,
) -> None:
    """Publish numbered persistent orders one by one; a returned publish is a confirm."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        while not stop.is_set():
            order = ledger.allocate(number)
            channel.basic_publish("", ledger.queue, encode_order(order, body_size), PERSISTENT)
            ledger.confirm(order)
            if pause:
                stop.wait(pause)
    except (pika.exceptions.AMQPError, OSError):
        return  # the broker died under us


def consumer(
    url: str,
    ledger: Ledger,
    checkpoints: str,
    stop: threading.Event,
    *,
    prefetch: int = 20,
    leave_unacked: float = 0.0,
    requeue: float = 0.0,
    hold: int = 0,
    pause: float = 0.0,
    rng: random.Random | None = None,
) -> None:
    """Consume orders with manual acks, recording each delivery as it arrives. The first `hold`
    deliveries stay unacked for good (they pin the log's older segments); after that, a share
    `leave_unacked` stays unacked, a share `requeue` is nacked back to the queue, and the rest
    is acked. Every CHECKPOINT_EVERY acks (or when the queue is idle) a confirmed checkpoint
    publish on the same channel makes them count as acked. `pause` seconds after each delivery
    make it slower than the publishers, so that orders queue up.

    Runs until `stop` is set (after the broker was killed) and it has recorded every delivery
    already received."""
    rng = rng or random.Random()
    channel = None
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=prefetch)
        pending_acks: list[int] = []
        held = 0
        for method, _, body in channel.consume(ledger.queue, inactivity_timeout=0.05):
            if method is not None:
                ledger.record_delivery(decode_order(body))
            if stop.is_set():
                if method is None:
                    break
                continue  # record what was received before the kill, settle nothing
            if method is not None:
                order = decode_order(body)
                roll = rng.random()
                if held < hold:
                    held += 1
                elif roll < leave_unacked:
                    pass
                elif roll < leave_unacked + requeue:
                    channel.basic_nack(method.delivery_tag, requeue=True)
                else:
                    ledger.ack_sent(order)
                    channel.basic_ack(method.delivery_tag)
                    pending_acks.append(order)
                if pause:
                    stop.wait(pause)
            if len(pending_acks) >= CHECKPOINT_EVERY or (method is None and pending_acks):
                channel.basic_publish("", checkpoints, b"checkpoint", PERSISTENT)
                ledger.settle(pending_acks)
                pending_acks.clear()
    except (pika.exceptions.AMQPError, OSError):
        record_buffered(channel, ledger)


def record_buffered(channel: object, ledger: Ledger) -> None:
    """Record the deliveries pika had read from the socket but not yet handed out when the
    connection died (the kill often comes while the consumer waits for a checkpoint's confirm):
    they reached the client, so they count as delivered. pika keeps them in a private queue;
    without it the check only sees fewer deliveries."""
    generator = getattr(channel, "_queue_consumer_generator", None)
    for event in list(getattr(generator, "pending_events", ())):
        body = getattr(event, "body", None)
        if body is not None:
            ledger.record_delivery(decode_order(body))
            ledger.buffered_at_kill += 1


def drain(url: str, queue: str, checkpoints: str, settle: bool = True) -> list[tuple[int, bool]]:
    """Everything in `queue` after a restart, in order, with its redelivered flag.

    With `settle` the orders are taken (auto-ack); without, they are only looked at: fetched
    with manual ack and requeued by closing the channel. Either way the checkpoint queue is
    purged and one confirmed publish then makes sure the log holds all of it before the next
    kill."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=settle)
            if method is None:
                break
            found.append((decode_order(body), method.redelivered))
        channel.close()  # requeues what a peek fetched
        channel = connection.channel()
        channel.queue_purge(checkpoints)
        channel.confirm_delivery()
        channel.basic_publish("", checkpoints, b"sync", PERSISTENT)
    finally:
        connection.close()
    return found
