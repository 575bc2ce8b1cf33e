"""Durability seen from a client: restarts, bounded disk use, and a disk that fails."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pika
import pytest

from broker.config import load_config
from broker.server import Broker
from tests.support import (
    PROJECT_ROOT,
    BrokerProcess,
    publish_persistent,
    shipped_config,
    small_segment_config,
    write_config,
)

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def wal_bytes(data_dir: Path) -> int:
    """The log's size on disk; a segment the broker deletes between the listing and its stat
    (garbage collection runs while the test reads) counts as gone."""
    total = 0
    for segment in (data_dir / "wal").glob("*.wal"):
        with contextlib.suppress(FileNotFoundError):
            total += segment.stat().st_size
    return total


def test_definitions_and_messages_survive_a_clean_restart(tmp_path: Path) -> None:
    """Durable exchange/queue/binding and persistent messages come back; transient ones do not."""
    data_dir = tmp_path / "broker"
    broker = BrokerProcess(data_dir)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.exchange_declare("payments", "direct", durable=True)
    channel.exchange_declare("scratch", "fanout")
    channel.queue_declare("approvals", durable=True)
    channel.queue_declare("transient-q")
    channel.queue_bind("approvals", "payments", "approve")
    channel.confirm_delivery()
    for number in range(5):
        channel.basic_publish("payments", "approve", f"p{number}".encode(), PERSISTENT)
    channel.basic_publish("payments", "approve", b"transient-message")
    connection.close()
    broker.stop()

    broker = BrokerProcess(data_dir)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.exchange_declare("payments", passive=True)
        bodies = []
        while True:
            method, _, body = channel.basic_get("approvals", auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        assert bodies == [f"p{n}".encode() for n in range(5)]
        channel.confirm_delivery()
        channel.basic_publish("payments", "approve", b"still-bound", PERSISTENT)
        assert channel.basic_get("approvals", auto_ack=True)[2] == b"still-bound"
        for gone in ("transient-q",):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
                connection.channel().queue_declare(gone, passive=True)
            assert closed.value.reply_code == 404
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            connection.channel().exchange_declare("scratch", passive=True)
        connection.close()
    finally:
        broker.stop()


def test_log_stays_bounded_under_publish_and_ack(tmp_path: Path) -> None:
    """40 MB of persistent messages through a durable queue leave a log of a few segments."""
    segment_size = 1 << 20
    data_dir = tmp_path / "broker"
    broker = BrokerProcess(data_dir, small_segment_config(tmp_path, segment_size))
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        publisher = connection.channel()
        consumer = connection.channel()
        publisher.queue_declare("steady", durable=True)
        consumer.basic_qos(prefetch_count=200)
        body = os.urandom(1000)
        total = peak = 0
        rounds = 40
        for _ in range(rounds):
            for _ in range(1000):
                publisher.basic_publish("", "steady", body, PERSISTENT)
            total += 1000 * len(body)
            for received, (method, _, _) in enumerate(
                consumer.consume("steady", inactivity_timeout=5), start=1
            ):
                assert method is not None, "messages stopped arriving"
                if received % 100 == 0 or received == 1000:
                    consumer.basic_ack(method.delivery_tag, multiple=True)
                if received == 1000:
                    break
            peak = max(peak, wal_bytes(data_dir))
        consumer.cancel()
        publisher.confirm_delivery()  # a sync point: every ack before it is logged
        publisher.basic_publish("", "steady-marker", b"", PERSISTENT)
        connection.close()
        final = wal_bytes(data_dir)
        print(
            f"{rounds * 1000} messages, {total >> 20} MiB through the queue;"
            f" log peak {peak >> 20} MiB, final {final >> 20} MiB"
        )
        assert final < 4 * segment_size
        assert peak < total / 4
    finally:
        broker.stop()


async def test_fsync_failure_nacks_confirms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails fsync (ENOSPC) gets publishes nacked, never falsely confirmed."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "data"), metrics_port=0, management_port=0
    )
    async with Broker(config) as broker:
        synced = asyncio.get_running_loop().create_future()
        broker.store.sync(synced.set_result)  # let start-up writes finish on a healthy disk
        assert await synced is None

        def failing_fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", failing_fsync)

        def publish() -> str:
            connection = pika.BlockingConnection(pika.URLParameters(broker.url))
            try:
                channel = connection.channel()
                channel.queue_declare("orders", durable=True)
                channel.confirm_delivery()
                try:
                    channel.basic_publish("", "orders", b"order", PERSISTENT)
                except pika.exceptions.NackError:
                    return "nacked"
                return "confirmed"
            finally:
                connection.close()

        assert await asyncio.to_thread(publish) == "nacked"
        assert await asyncio.to_thread(publish) == "nacked"  # the failure sticks


def test_vhosts_live_in_the_data_directory_once_seeded(tmp_path: Path) -> None:
    """The config seeds vhosts and users at the first start; then the log holds them. Dropping
    a vhost from the config neither drops it nor its confirmed messages, and the log says the
    config's lists were not read."""
    data_dir = tmp_path / "data"
    with_v2 = shipped_config()
    with_v2["vhosts"] = ["/", "v2"]
    with_v2["users"][0]["permissions"]["v2"] = {"configure": ".*", "write": ".*", "read": ".*"}
    config = write_config(tmp_path, with_v2, "with-v2.yaml")
    broker = BrokerProcess(data_dir, config)
    publish_persistent(f"amqp://guest:guest@127.0.0.1:{broker.port}/v2", "orders", [b"kept"])
    broker.stop()

    broker = BrokerProcess(data_dir)  # the shipped config, which lists only "/"
    try:
        connection = pika.BlockingConnection(
            pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.port}/v2")
        )
        assert connection.channel().basic_get("orders", auto_ack=True)[2] == b"kept"
        connection.close()
    finally:
        broker.stop()
    assert "config.accounts_seeded_earlier" in broker.log_text()


@pytest.mark.parametrize("damaged", ["definition", "message without a summary"])
def test_corrupt_record_stops_the_start_naming_segment_and_offset(
    tmp_path: Path, damaged: str
) -> None:
    """A CRC mismatch in the middle of the log, in a record replay reads (a definition; or
    any record of a segment without a summary, as after a crash before it was written), is
    reported with its segment and offset and the broker refuses to start (exit 3) rather
    than skip records behind it."""
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir)
    publish_persistent(broker.url, "orders", [b"order %02d" % number for number in range(20)])
    broker.stop()

    (segment,) = sorted((data_dir / "wal").glob("*.wal"))[:1]
    raw = bytearray(segment.read_bytes())
    if damaged == "definition":
        position = raw.index(b"orders")  # its first mention: the queue's declaration
    else:
        position = raw.index(b"order 05")  # a record with valid records after it
        for summary in (data_dir / "wal").glob("*.sum"):
            summary.unlink()
    raw[position] ^= 0xFF
    segment.write_bytes(bytes(raw))

    result = subprocess.run(
        [sys.executable, "-m", "broker", "--data-dir", str(data_dir), "--metrics-port", "0",
         "--management-port", "0", "--port", "0"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 3
    assert segment.name in result.stderr
    assert "offset" in result.stderr


def test_corrupt_message_in_a_summarized_segment_is_set_aside_and_the_rest_delivered(
    tmp_path: Path,
) -> None:
    """A segment summary stands for message records without reading them at start: damage to
    one is found when it is read back, and that message is set aside (logged, kept in the
    log), while the broker starts and delivers every other message."""
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir)
    bodies = [b"order %02d" % number for number in range(20)]
    publish_persistent(broker.url, "orders", bodies)
    broker.stop()
    (segment,) = [
        path for path in (data_dir / "wal").glob("*.wal") if b"order 05" in path.read_bytes()
    ]
    assert segment.with_suffix(".sum").exists()
    raw = bytearray(segment.read_bytes())
    raw[raw.index(b"order 05") + 6] ^= 0xFF
    segment.write_bytes(bytes(raw))

    broker = BrokerProcess(data_dir)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        got = []
        while (delivery := channel.basic_get("orders", auto_ack=True))[0] is not None:
            got.append(delivery[2])
        connection.close()
        assert got == bodies[:5] + bodies[6:]
        assert "event=recovery.unreadable" in broker.log_text()  # at restore
        assert "event=message.unreadable" in broker.log_text()  # in its turn
    finally:
        broker.stop()


def test_unreadable_recovered_body_is_parked_not_lost(tmp_path: Path) -> None:
    """If the log cannot give back a recovered message's body (here its segment lost its
    bytes), the message is parked: not delivered, not settled, logged as message.unreadable;
    the consumer's connection and other messages carry on."""
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir)
    publish_persistent(broker.url, "orders", [b"lost-bytes"])
    broker.stop()

    broker = BrokerProcess(data_dir)  # recovered: the body stays in the log
    try:
        for segment in sorted((data_dir / "wal").glob("*.wal"))[:1]:
            segment.write_bytes(b"")  # the disk loses the record's bytes
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        assert channel.basic_get("orders")[0] is None  # parked, not delivered
        channel.confirm_delivery()
        channel.basic_publish("", "orders", b"fresh", PERSISTENT)
        method, _, body = channel.basic_get("orders")
        assert body == b"fresh"
        channel.basic_ack(method.delivery_tag)
        ok = channel.queue_declare("orders", passive=True)
        assert ok.method.message_count == 0
        connection.close()
        assert "event=message.unreadable" in broker.log_text()
    finally:
        broker.stop()


async def test_recovered_bodies_are_read_per_delivery_not_kept(tmp_path: Path) -> None:
    """After a restart bodies stay in the log: delivering, requeueing and fetching them again
    does not keep them in memory, so the memory alarm's count (which excludes them) stays true."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "data"), metrics_port=0, management_port=0
    )
    body = b"b" * 100_000

    def take_and_requeue(url: str) -> list[bytes]:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        bodies = []
        for _ in range(20):
            _, _, got = channel.basic_get("backlog")
            bodies.append(got)
        channel.basic_nack(0, multiple=True, requeue=True)
        connection.close()
        return bodies

    async with Broker(config) as broker:
        await asyncio.to_thread(publish_persistent, broker.url, "backlog", [body] * 20)
    async with Broker(config) as broker:
        queue = broker.vhosts["/"].queues["backlog"]
        counted = queue.memory_bytes
        assert counted < 20 * 1000  # headers and bookkeeping only
        assert await asyncio.to_thread(take_and_requeue, broker.url) == [body] * 20
        await asyncio.sleep(0.1)
        assert queue.message_count == 20
        assert all(entry.message.body is None for entry in queue.ready_entries())
        assert queue.memory_bytes == counted
