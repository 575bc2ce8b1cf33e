"""A backlog of persistent messages costs a compact record each, not its body: the acceptance
test of paging, on a real broker process measured from /proc."""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel as Channel

from tests.support import (
    BrokerProcess,
    resident_bytes,
    running_broker,
    shipped_config,
    write_config,
)

BODY = 4096
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def body_of(index: int) -> bytes:
    return f"{index:08d}".encode().ljust(BODY, b"-")


def publish(
    channel: Channel, start: int, count: int, confirmed: Channel, persistent: bool = True
) -> None:
    """Publish without waiting for each confirm, a thousand at a time, each thousand followed by
    a confirmed message on another channel: the log's group commit writes in order, so that
    confirm means all before it are on disk. The pause keeps what the broker holds in transit
    (records waiting for the disk, input not parsed yet) small whatever else the machine runs,
    so resident memory measures what the queued messages cost, not the burst: flat out on a
    busy 2-core machine the log's buffers grew to tens of MiB, and the allocator kept them."""
    for chunk in range(start, start + count, 1000):
        for index in range(chunk, min(chunk + 1000, start + count)):
            channel.basic_publish("", "backlog", body_of(index), PERSISTENT if persistent else None)
        confirmed.basic_publish("", "marker", b"", PERSISTENT)


def open_backlog(url: str) -> tuple[pika.BlockingConnection, Channel, Channel]:
    """A connection, a channel for publishing and consuming, a channel in confirm mode, and
    the durable queues "backlog" and "marker" (for `publish`'s confirmed marker)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    confirmed = connection.channel()
    confirmed.confirm_delivery()
    channel.queue_declare("backlog", durable=True)
    channel.queue_declare("marker", durable=True)
    return connection, channel, confirmed


def test_queued_persistent_bodies_stay_in_the_log_not_in_memory(tmp_path: Path) -> None:
    """The broker's resident memory grows by far less than a body per queued message as the
    queue grows (a resident 4 KiB body would cost over 4 KiB), and every message comes back, in
    order, when a consumer drains the queue."""
    with running_broker(tmp_path / "data") as broker:
        connection, channel, confirmed = open_backlog(broker.url)
        publish(channel, 0, 5_000, confirmed)
        before = resident_bytes(broker.proc.pid)
        publish(channel, 5_000, 25_000, confirmed)
        queued = channel.queue_declare("backlog", passive=True).method.message_count
        grown = resident_bytes(broker.proc.pid) - before
        assert queued == 30_000
        per_message = grown / 25_000
        assert per_message < 512, f"resident memory grew {per_message:.0f} B per queued message"

        channel.basic_qos(prefetch_count=1000)
        got: list[bytes] = []

        def on_message(ch, method, properties, body):  # type: ignore[no-untyped-def]
            got.append(body)
            if len(got) % 500 == 0 or len(got) == 30_000:
                ch.basic_ack(method.delivery_tag, multiple=True)
            if len(got) == 30_000:
                ch.stop_consuming()

        channel.basic_consume("backlog", on_message)
        connection.call_later(60, channel.stop_consuming)  # bounded whatever happens
        channel.start_consuming()
        assert len(got) == 30_000
        assert got == [body_of(index) for index in range(30_000)]
        connection.close()


def test_kill_9_while_a_paged_backlog_drains_loses_nothing_and_revives_nothing(
    tmp_path: Path,
) -> None:
    """A backlog mostly kept as compact records, drained part way (acks made durable by a
    later confirm), then kill -9: the restart brings back exactly the unacked messages, in
    order, deep tail included, flagged redelivered (an unclean stop), and no acked one."""
    broker = BrokerProcess(tmp_path / "data")
    try:
        _, channel, confirmed = open_backlog(broker.url)
        publish(channel, 0, 5_000, confirmed)
        channel.basic_qos(prefetch_count=500)
        deliveries = channel.consume("backlog", inactivity_timeout=10)
        for received, (method, _, body) in enumerate(deliveries, start=1):
            assert method is not None, "the backlog stopped flowing"
            assert body == body_of(received - 1)
            if received <= 2_500 and received % 100 == 0:
                channel.basic_ack(method.delivery_tag, multiple=True)
            if received == 3_000:  # 2,500 acked, 500 out unacked
                break
        confirmed.basic_publish("", "marker", b"", PERSISTENT)  # the acks are logged before it
        broker.kill()
        broker = BrokerProcess(tmp_path / "data")
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        got: list[tuple[bytes, bool]] = []
        while (message := channel.basic_get("backlog", auto_ack=True))[0] is not None:
            got.append((message[2], message[0].redelivered))
        assert [body for body, _ in got] == [body_of(index) for index in range(2_500, 5_000)]
        assert all(redelivered for _, redelivered in got)
        connection.close()
    finally:
        broker.stop()


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "non-durable"])
def test_transient_backlog_past_the_paging_ratio_goes_to_disk_not_memory(
    tmp_path: Path, durable: bool
) -> None:
    """With memory past limits.memory_paging_ratio of the high watermark (here a ratio of 0:
    always), transient messages queued past the window are written to the spill files, in a
    durable queue and in one that does not survive restarts alike: the broker's resident
    memory grows by far less than a body per message, nothing reaches the write-ahead log, and
    every message comes back in order; a restart keeps none of them."""
    config = shipped_config()
    config["limits"]["memory_paging_ratio"] = 0.0
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir, write_config(tmp_path, config))
    try:
        connection, channel, confirmed = open_backlog(broker.url)
        if not durable:
            channel.queue_delete("backlog")
            channel.queue_declare("backlog", durable=False)
        deadline = time.monotonic() + 5  # the memory monitor checks every second
        while "memory.paging.started" not in broker.log_text():
            assert time.monotonic() < deadline, "paging did not start"
            time.sleep(0.05)
        publish(channel, 0, 5_000, confirmed, persistent=False)  # routed once confirmed
        before = resident_bytes(broker.proc.pid)
        publish(channel, 5_000, 25_000, confirmed, persistent=False)
        assert channel.queue_declare("backlog", passive=True).method.message_count == 30_000
        per_message = (resident_bytes(broker.proc.pid) - before) / 25_000
        assert per_message < 512, f"resident memory grew {per_message:.0f} B per queued message"
        spilled = sum(path.stat().st_size for path in (data_dir / "spill").glob("*.wal"))
        assert spilled > 25_000 * BODY
        logged = sum(path.stat().st_size for path in (data_dir / "wal").glob("*.wal"))
        assert logged < 1_000_000  # definitions and markers: no transient body

        got = []
        while len(got) < 15_000:
            method, _, body = channel.basic_get("backlog", auto_ack=True)
            assert method is not None
            got.append(body)
        assert got == [body_of(index) for index in range(15_000)]
        connection.close()
        broker.stop()

        broker = BrokerProcess(data_dir, write_config(tmp_path, config))
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        if durable:
            assert channel.queue_declare("backlog", passive=True).method.message_count == 0
        else:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                channel.queue_declare("backlog", passive=True)
        assert not any(path.stat().st_size > 1_000 for path in (data_dir / "spill").glob("*.wal"))
        connection.close()
    finally:
        broker.stop()


def peak_resident_bytes_since_reset(pid: int) -> int:
    """VmHWM, the process's peak resident memory since `reset_peak` (or its start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


def test_many_queues_drained_at_once_share_one_read_ahead_budget(tmp_path: Path) -> None:
    """A consumer that starts on many long paging queues at once makes every one of them read
    ahead together. Their read-ahead shares limits.read_ahead_bytes (here 4 MiB), so the
    broker's peak resident memory while draining grows by a few MiB, not by the backlog (each
    queue alone would read all of its 3 MiB back at once, 192 MiB in all), and every message
    comes back, each queue's in order."""
    queues, per_queue, size = 64, 256, 16384
    config = shipped_config()
    config["limits"]["read_ahead_bytes"] = 4 * 1024 * 1024
    broker = BrokerProcess(tmp_path / "data", write_config(tmp_path, config))
    try:
        connection, channel, confirmed = open_backlog(broker.url)
        names = [f"many-{queue}" for queue in range(queues)]
        for name in names:
            channel.queue_declare(name, durable=True)

        def body(queue: int, index: int) -> bytes:
            return f"{queue}:{index}".encode().ljust(size, b"-")

        for index in range(per_queue):  # round robin: a queue's records lie 1 MiB apart
            for queue, name in enumerate(names):
                channel.basic_publish("", name, body(queue, index), PERSISTENT)
        confirmed.basic_publish("", "marker", b"", PERSISTENT)
        before = resident_bytes(broker.proc.pid)
        reset_peak(broker.proc.pid)

        got: dict[str, list[bytes]] = {name: [] for name in names}
        total = 0

        def on_message(ch, method, properties, body):  # type: ignore[no-untyped-def]
            nonlocal total
            got[method.routing_key].append(body)
            total += 1
            ch.basic_ack(method.delivery_tag)
            if total == queues * per_queue:
                ch.stop_consuming()

        channel.basic_qos(prefetch_count=32)
        for name in names:
            channel.basic_consume(name, on_message)
        connection.call_later(120, channel.stop_consuming)  # bounded whatever happens
        channel.start_consuming()
        grown = peak_resident_bytes_since_reset(broker.proc.pid) - before
        assert total == queues * per_queue
        for queue, name in enumerate(names):
            assert got[name] == [body(queue, index) for index in range(per_queue)], name
        assert grown < 48 * 1024 * 1024, f"peak resident memory grew {grown >> 20} MiB"
        connection.close()
    finally:
        broker.stop()
