"""Hardening regressions (issue 7): each test drives the real trigger a review found, over the
wire against a broker process, and checks that nothing confirmed is lost and nobody else stalls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from pamqp import commands, frame, header
from pamqp.body import ContentBody

from broker.config import load_config
from broker.server import Broker
from broker.store import records
from broker.store.durable import DurableStore
from broker.store.wal import WriteAheadLog
from tests.compat.rawamqp import RawAMQP, assert_broker_alive, method_payload, raw_frame
from tests.support import (
    BrokerProcess,
    drain,
    nested_table_bytes,
    publish_persistent,
    resident_bytes,
    small_segment_config,
)

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
FRAME_METHOD = 1


def bind_payload(queue: str, exchange: str, routing_key: str, arguments: bytes) -> bytes:
    """Queue.Bind with a raw arguments table in place of the encoded empty one."""
    payload = method_payload(
        commands.Queue.Bind(queue=queue, exchange=exchange, routing_key=routing_key)
    )
    assert payload.endswith(b"\x00\x00\x00\x00")
    return payload[:-4] + arguments


def consume_and_ack(url: str, queue: str, count: int) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        bodies = []
        for _ in range(count):
            method, _, body = channel.basic_get(queue)
            assert method is not None
            channel.basic_ack(method.delivery_tag)
            bodies.append(body)
        channel.confirm_delivery()  # a confirmed publish after the acks: they are on disk
        channel.basic_publish("", "checkpoint-unused", b"", PERSISTENT)
        return bodies
    finally:
        connection.close()


def test_deep_bind_arguments_cannot_cost_confirmed_messages(tmp_path: Path) -> None:
    """Finding 1: Queue.Bind with arguments nested 300 levels used to be refused with 541 while
    the binding stayed in memory; every later segment roll then failed to write its snapshot,
    publishers still got acks, and once GC removed the last good snapshot a restart came back
    without the durable queue. Now the frame is refused (501) before anything changes, an
    oversized but legal argument table is refused with 406, a deep but legal one is kept, and
    after segment rolls, GC and kill -9 every confirmed, unacked message is back."""
    data_dir = tmp_path / "broker"
    config = small_segment_config(tmp_path, 64 * 1024)
    broker = BrokerProcess(data_dir, config)
    try:
        publish_persistent(broker.url, "orders", [])  # declares the durable queue
        with RawAMQP(broker.url) as raw:
            raw.handshake()
            raw.open_channel(1)
            raw.send_bytes(
                raw_frame(FRAME_METHOD, 1, bind_payload("orders", "amq.direct", "deep",
                                                        nested_table_bytes(300)))
            )  # fmt: skip
            close = raw.expect_connection_close(501)
            assert "nested deeper than 100" in close.reply_text or "cannot decode" in (
                close.reply_text
            )
        with RawAMQP(broker.url) as raw:
            raw.handshake()
            raw.open_channel(1)
            huge = b"".join(b"\x03k%02dS" % (i % 100) + struct.pack(">I", 900) + b"v" * 900
                            for i in range(20))  # fmt: skip
            raw.send_bytes(
                raw_frame(FRAME_METHOD, 1, bind_payload("orders", "amq.direct", "huge",
                                                        struct.pack(">I", len(huge)) + huge))
            )  # fmt: skip
            assert "at most 16384" in raw.expect_channel_close(1, 406).reply_text
            raw.open_channel(2)
            raw.send_bytes(
                raw_frame(FRAME_METHOD, 2, bind_payload("orders", "amq.direct", "legal",
                                                        nested_table_bytes(90)))
            )  # fmt: skip
            raw.expect(commands.Queue.BindOk, channel=2)

        body = b"o" * 1000
        publish_persistent(broker.url, "orders", [b"%05d" % n + body for n in range(600)])
        acked = consume_and_ack(broker.url, "orders", 450)  # old segments become garbage
        publish_persistent(broker.url, "orders", [b"%05d" % n + body for n in range(600, 700)])
        broker.kill()

        broker = BrokerProcess(data_dir, config)
        assert acked == [b"%05d" % n + body for n in range(450)]
        publish_persistent(broker.url, "orders", [])
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("amq.direct", "legal", b"through-the-deep-binding", PERSISTENT)
        channel.basic_publish("amq.direct", "huge", b"unroutable", PERSISTENT)
        connection.close()
        remaining = drain(broker.url, "orders")
        assert remaining[:-1] == [b"%05d" % n + body for n in range(450, 700)]
        assert remaining[-1] == b"through-the-deep-binding"
        assert "wal.failed" not in broker.log_text()
        assert_broker_alive(broker.url)
    finally:
        broker.stop()


# ----------------------------------------------------------------------------- helpers, 3-7


def round_trip_seconds(url: str) -> float:
    """A canary: how long a fresh client takes to connect, publish and get one message."""
    started = time.monotonic()
    assert_broker_alive(url)
    return time.monotonic() - started


# ----------------------------------------------------------------------------- finding 3
async def test_non_table_capabilities_break_neither_the_alarm_nor_other_clients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 3: client_properties={"capabilities": "x"} used to raise AttributeError inside
    the memory monitor (the task died, the alarm never cleared) and inside another client's
    queue delete (541, half done). As RabbitMQ, a capabilities value that is not a table
    announces nothing: the alarm blocks and unblocks, the other client's delete succeeds."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    async with Broker(config) as broker:
        raw = RawAMQP(broker.url)
        try:
            await asyncio.to_thread(raw.read_start)
            raw.login(properties={"product": "odd", "capabilities": "x"})
            await asyncio.to_thread(raw.read_tune)
            raw.tune_ok(heartbeat=0)
            raw.open()
            await asyncio.to_thread(raw.expect, commands.Connection.OpenOk)
            await asyncio.to_thread(raw.open_channel, 1)
            raw.send(commands.Queue.Declare(queue="odd-q"), 1)
            await asyncio.to_thread(raw.expect, commands.Queue.DeclareOk)
            raw.send(commands.Basic.Consume(queue="odd-q", consumer_tag="odd"), 1)
            await asyncio.to_thread(raw.expect, commands.Basic.ConsumeOk)
            raw.publish(1, b"makes it a publisher", routing_key="odd-q")
            await asyncio.sleep(0.2)

            broker.memory.limit = 1  # everything is above it
            await asyncio.sleep(1.5)  # the monitor's own task notices, twice
            assert broker.memory_alarm
            broker.memory.limit = 1 << 40
            await asyncio.sleep(1.5)
            assert not broker.memory_alarm  # the monitor survived and cleared the alarm
            failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert failures == []

            connection = await asyncio.to_thread(
                pika.BlockingConnection, pika.URLParameters(broker.url)
            )
            channel = await asyncio.to_thread(connection.channel)
            await asyncio.to_thread(channel.queue_delete, "odd-q")  # 541 before the fix
            assert "odd-q" not in broker.vhosts["/"].queues
            await asyncio.to_thread(connection.close)
        finally:
            raw.close()


# ----------------------------------------------------------------------------- finding 4
def test_client_that_never_reads_cannot_make_the_broker_buffer_its_replies(
    broker: BrokerProcess,
) -> None:
    """Finding 4: Basic.Get / Basic.Reject(requeue) pairs on a 1 MB message, pipelined by a
    client that never reads its socket, used to make the broker frame a Get-Ok per pair into
    memory (gigabytes). Now the broker stops reading that socket while its replies are backed
    up: its memory stays bounded and other clients are served meanwhile."""
    publish_persistent(broker.url, "big", [b"m" * 1_000_000])
    raw = RawAMQP(broker.url)
    try:
        raw.handshake()
        raw.open_channel(1)
        before = resident_bytes(broker.proc.pid)
        pairs = b"".join(
            raw_frame(FRAME_METHOD, 1, method_payload(commands.Basic.Get(queue="big")))
            + raw_frame(
                FRAME_METHOD,
                1,
                method_payload(commands.Basic.Reject(delivery_tag=tag, requeue=True)),
            )
            for tag in range(1, 401)
        )  # 400 pairs: 400 MB of Get-Ok if all were answered
        raw.send_bytes(pairs)
        time.sleep(2.0)
        assert round_trip_seconds(broker.url) < 1.0
        grown = resident_bytes(broker.proc.pid) - before
        assert grown < 60_000_000, f"the broker grew by {grown} bytes"
        # Reading the replies lets the broker go on: back-pressure, not a stall.
        raw.sock.settimeout(5)
        received = 0
        while received < 5_000_000:
            chunk = raw.sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    finally:
        raw.close()


def test_a_consumer_that_stops_reading_stops_its_deliveries_mid_iteration(
    broker: BrokerProcess,
) -> None:
    """A consumer without a prefetch limit that never reads its socket: deliveries are written
    in pieces while an iteration frames them (so a busy loop's consumers start on them early),
    and the piece the socket cannot take stops them there, as the end of an iteration would.
    The queue is not framed into memory, other clients are served meanwhile, and every message
    arrives once the consumer reads."""
    count, size = 20_000, 2_000
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.queue_declare("unread")
    channel.confirm_delivery()
    for _ in range(count):
        channel.basic_publish("", "unread", b"u" * size)
    connection.close()
    raw = RawAMQP(broker.url)
    try:
        raw.handshake()
        raw.open_channel(1)
        before = resident_bytes(broker.proc.pid)
        consume = commands.Basic.Consume(queue="unread", no_ack=True)
        raw.send_raw(FRAME_METHOD, 1, method_payload(consume))
        time.sleep(2.0)
        assert round_trip_seconds(broker.url) < 1.0
        grown = resident_bytes(broker.proc.pid) - before
        assert grown < count * size // 4, f"the broker grew by {grown} bytes"
        raw.sock.settimeout(10)
        received = 0
        while received < count * size:  # reading lets it go on: back-pressure, not a stall
            chunk = raw.sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    finally:
        raw.close()
    assert round_trip_seconds(broker.url) < 1.0


# ----------------------------------------------------------------------------- finding 5
def start_ok_with_entries(entries: int) -> bytes:
    """A StartOk for guest whose client properties hold `entries` empty-keyed voids (2 bytes
    each, the cheapest entry to send and, for the old decoder, the dearest to decode)."""
    table = b"\x00V" * entries
    return b"".join(
        (
            struct.pack(">I", commands.Connection.StartOk.index),
            struct.pack(">I", len(table)) + table,
            b"\x05PLAIN",
            struct.pack(">I", 12) + b"\x00guest\x00guest",
            b"\x05en_US",
        )
    )


def test_large_start_ok_before_tune_is_refused_before_it_is_decoded(
    broker: BrokerProcess,
) -> None:
    """Finding 5: before Tune-Ok only frames up to 4096 bytes are accepted (as RabbitMQ), so an
    unauthenticated StartOk of 60,000 empty-keyed entries (120 KB, which the old quadratic
    decoder spent most of a second on) is refused at once with 501; one that fits is decoded
    in linear time; the canary is served throughout."""
    raw = RawAMQP(broker.url)
    try:
        raw.read_start()
        started = time.monotonic()
        raw.send_bytes(raw_frame(FRAME_METHOD, 0, start_ok_with_entries(60_000)))
        close = raw.expect_connection_close(501, timeout=2)
        assert time.monotonic() - started < 0.5
        assert "frame_too_large" in close.reply_text
    finally:
        raw.close()
    with RawAMQP(broker.url) as small:
        small.read_start()
        small.send_bytes(raw_frame(FRAME_METHOD, 0, start_ok_with_entries(1_900)))  # < 4 KiB
        small.read_tune()
    assert round_trip_seconds(broker.url) < 1.0


# ----------------------------------------------------------------------------- finding 6
def test_nothing_is_buffered_after_a_broken_frame(broker: BrokerProcess) -> None:
    """Finding 6: after an oversized frame header the connection used to keep appending all the
    peer sent for the 3 s close-ok wait. Now the broker answers 501, drops its buffer and stops
    reading: the peer's writes stall within the socket buffers and the broker does not grow."""
    raw = RawAMQP(broker.url)
    try:
        raw.handshake()
        before = resident_bytes(broker.proc.pid)
        raw.send_bytes(struct.pack(">BHI", 1, 1, 0x7FFFFFF0))
        junk = memoryview(b"j" * (1 << 20))
        raw.sock.settimeout(1.0)
        sent = 0
        try:
            while sent < 400_000_000:
                sent += raw.sock.send(junk)
        except TimeoutError:
            pass
        assert sent < 64_000_000, f"the broker read {sent} bytes after the broken frame"
        grown = resident_bytes(broker.proc.pid) - before
        assert grown < 30_000_000, f"the broker grew by {grown} bytes"
        raw.sock.settimeout(5)
        assert raw.expect_connection_close(501).reply_text.find("frame_too_large") > 0
    finally:
        raw.close()
    assert round_trip_seconds(broker.url) < 1.0


# ----------------------------------------------------------------------------- finding 7
async def test_memory_held_outside_queues_trips_the_alarm(tmp_path: Path) -> None:
    """Finding 7: uncommitted tx publishes and bodies still being assembled were invisible to
    the memory alarm, so Tx.Select + endless publishes without a commit (or bodies that never
    complete, on many channels) ran to the OOM killer. Both now count: the alarm trips and the
    publisher is blocked, and the memory is released when the channel goes."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    async with Broker(config) as broker:
        broker.memory.limit = broker.memory.baseline + 20_000_000
        raw = RawAMQP(broker.url)
        try:
            await asyncio.to_thread(raw.handshake)
            await asyncio.to_thread(raw.open_channel, 1)
            raw.send(commands.Tx.Select(), 1)
            await asyncio.to_thread(raw.expect, commands.Tx.SelectOk)
            for _ in range(15):  # 15 MB held by an uncommitted transaction
                await asyncio.to_thread(raw.publish, 1, b"t" * 1_000_000, "", "nowhere")
            for number in range(2, 12):  # 10 MB more in bodies that never complete
                await asyncio.to_thread(raw.open_channel, number)
                raw.send(commands.Basic.Publish(routing_key="nowhere"), number)
                raw.send(header.ContentHeader(0, 10_000_000, commands.Basic.Properties()), number)
                for _ in range(8):
                    await asyncio.to_thread(raw.send, ContentBody(b"b" * 125_000), number)
            await asyncio.sleep(0.3)
            assert broker.accounted_bytes() > 25_000_000
            broker.memory.check()
            assert broker.memory_alarm
            (held,) = broker.connections
            assert held.blocked  # its socket is not read until memory drops
        finally:
            raw.close()
        # A blocked socket is not read, so its close is seen once the alarm clears (or when a
        # heartbeat write fails); then what the connection held is released.
        broker.memory.limit = broker.memory.baseline + 100_000_000
        broker.memory.check()
        assert not broker.memory_alarm
        await asyncio.sleep(0.3)
        assert not broker.connections
        assert broker.accounted_bytes() < 1_000_000


# ----------------------------------------------------------------------------- review: confirms
@pytest.mark.pure_python
async def test_no_ack_covers_a_publish_the_log_never_wrote(tmp_path: Path) -> None:
    """Found in review: when the log failed inside a segment roll while pipelined publishes of
    the same loop iteration were still unsynced, the nack of the refused publish was preceded
    by Basic.Ack(multiple) up to the tag below it, covering publishes the log then never wrote.
    Every publish now gets exactly one answer, and every ack is for a message on disk."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    config_small = dataclasses.replace(
        config, store=dataclasses.replace(config.store, segment_size=1 << 20)
    )
    async with Broker(config_small) as broker:
        store = broker.store
        assert isinstance(store, DurableStore)
        rolls = 0

        def snapshot_fails_on_second_roll() -> None:
            nonlocal rolls
            rolls += 1
            if rolls >= 2:
                raise RuntimeError("simulated snapshot failure")

        store.write_snapshot = snapshot_fails_on_second_roll  # type: ignore[method-assign]
        raw = RawAMQP(broker.url)
        try:
            await asyncio.to_thread(raw.handshake)
            await asyncio.to_thread(raw.open_channel, 1)
            raw.send(commands.Queue.Declare(queue="orders", durable=True), 1)
            await asyncio.to_thread(raw.expect, commands.Queue.DeclareOk)
            raw.send(commands.Confirm.Select(), 1)
            await asyncio.to_thread(raw.expect, commands.Confirm.SelectOk)
            persistent = commands.Basic.Properties(delivery_mode=2)
            wire = b"".join(
                frame.marshal(commands.Basic.Publish(routing_key="orders"), 1)
                + frame.marshal(header.ContentHeader(0, 2048, persistent), 1)
                + frame.marshal(ContentBody(b"%06d" % seq + b"p" * 2042), 1)
                for seq in range(1, 1201)
            )
            raw.send_bytes(wire)  # one write: one loop iteration appends many of them
            answers: dict[int, str] = {}
            while len(answers) < 1200:
                _, reply = await asyncio.to_thread(raw.read_frame, 10)
                if isinstance(reply, commands.Basic.Ack | commands.Basic.Nack):
                    kind = "ack" if isinstance(reply, commands.Basic.Ack) else "nack"
                    first = reply.delivery_tag if not reply.multiple else 1
                    for seq in range(first, reply.delivery_tag + 1):
                        if seq not in answers:
                            answers[seq] = kind
                        elif reply.multiple is False or seq == reply.delivery_tag:
                            raise AssertionError(f"publish {seq} answered twice")
        finally:
            raw.close()
        assert broker.wal is not None and broker.wal.failed is not None
    logged = {
        bytes(payload[offset : offset + 6])
        for payload, offset in message_payloads(tmp_path / "d" / "wal")
    }
    acked = [seq for seq, kind in answers.items() if kind == "ack"]
    assert "nack" in answers.values()
    missing = [seq for seq in acked if b"%06d" % seq not in logged]
    assert missing == [], f"{len(missing)} acked publishes are not in the log"


def message_payloads(directory: Path) -> list[tuple[bytes, int]]:
    """(payload, body offset) of every message record in a closed log."""
    found: list[tuple[bytes, int]] = []

    def keep(segment: int, offset: int, record_type: int, payload: memoryview) -> None:
        if record_type in records.MESSAGE_TYPES:
            message = records.message_part(record_type, payload)[1]
            found.append((bytes(message), records.decode_message(message)[4]))

    WriteAheadLog(directory).replay(keep)
    return found


# ----------------------------------------------------------------------------- review: loop
class Canary:
    """A client on its own connection timing publish + get round trips while others misbehave;
    `worst` is the longest one seen."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.worst = 0.0

    def round_trip(self) -> None:
        started = time.monotonic()
        self.channel.basic_publish("", self.queue, b"tweet")
        while self.channel.basic_get(self.queue, auto_ack=True)[0] is None:
            pass
        self.worst = max(self.worst, time.monotonic() - started)

    def watch(self, busy: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while busy() and time.monotonic() < deadline:
            self.round_trip()
            time.sleep(0.01)

    def close(self) -> None:
        self.connection.close()


def test_expensive_frames_cost_their_sender_not_everyone(broker: BrokerProcess) -> None:
    """Found in review: a client whose frames are each expensive (here publishes to a headers
    exchange with 200 bindings of 1,000 keys, ~25 ms of matching each) pipelined hundreds in one
    write and held the event loop for all of them. Each connection now gets a few milliseconds
    of the loop per turn: the canary stays served while the work goes on."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.exchange_declare("wide", "headers")
    channel.queue_declare("wide-q")
    for binding in range(200):
        keys = {"x-match": "any", **{f"b{binding}k{key}": "v" for key in range(1000)}}
        channel.queue_bind("wide-q", "wide", arguments=keys)
    connection.close()
    canary = Canary(broker.url)
    raw = RawAMQP(broker.url)
    try:
        raw.handshake()
        raw.open_channel(1)
        wire = b"".join(
            frame.marshal(commands.Basic.Publish(exchange="wide"), 1)
            + frame.marshal(header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
            + frame.marshal(ContentBody(b"x"), 1)
            for _ in range(200)
        )
        raw.send_bytes(wire)
        raw.send(commands.Basic.Qos(prefetch_count=1), 1)  # answered once all were routed
        started = time.monotonic()
        done: list[bool] = []

        def wait_for_qos_ok() -> None:
            raw.expect(commands.Basic.QosOk, timeout=60)
            done.append(True)

        waiter = threading.Thread(target=wait_for_qos_ok)
        waiter.start()
        canary.watch(lambda: not done, 60)
        waiter.join()
        busy_for = time.monotonic() - started
        assert busy_for > 1.0, "the attack was too cheap to show anything"
        assert canary.worst < 0.5, f"canary waited {canary.worst:.2f} s while {busy_for:.1f} s"
    finally:
        raw.close()
        canary.close()


def hold_deliveries_in_a_tx_channel(url: str, held: int) -> RawAMQP:
    """A raw client that holds `held` deliveries unacked on channel 1, in tx mode."""
    raw = RawAMQP(url)
    raw.handshake()
    raw.open_channel(1)
    raw.send(commands.Queue.Declare(queue="held"), 1)
    raw.expect(commands.Queue.DeclareOk)
    raw.send_bytes(
        b"".join(
            frame.marshal(commands.Basic.Publish(routing_key="held"), 1)
            + frame.marshal(header.ContentHeader(0, 0, commands.Basic.Properties()), 1)
            for _ in range(held)
        )
    )
    raw.send(commands.Basic.Consume(queue="held", consumer_tag="all"), 1)
    raw.sock.settimeout(1.0)
    with contextlib.suppress(TimeoutError):
        while raw.sock.recv(1 << 20):  # the deliveries, unparsed
            pass
    raw._buf = b""
    raw.send(commands.Tx.Select(), 1)
    raw.expect(commands.Tx.SelectOk)
    return raw


def ack_the_oldest_and_roll_back(raw: RawAMQP, pairs: int) -> None:
    """`pairs` ack + rollback pairs (33 bytes each) for tag 1, in one write; every Rollback-Ok
    read back."""
    raw.send_bytes(
        b"".join(
            frame.marshal(commands.Basic.Ack(delivery_tag=1), 1)
            + frame.marshal(commands.Tx.Rollback(), 1)
            for _ in range(pairs)
        )
    )
    for _ in range(pairs):
        raw.expect(commands.Tx.RollbackOk, timeout=30)


async def test_tx_rollback_does_not_rebuild_the_unacked_table(tmp_path: Path) -> None:
    """Found in review: each Tx.Rollback rebuilt the channel's whole unacked table (first a
    sort, then a merge), a linear pass over 40,000 deliveries per 33-byte ack + rollback pair.
    The table is now left as it is: the rolled-back delivery waits apart, still counted, and
    goes back to the queue with the rest when the client leaves."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    async with Broker(config) as broker:
        raw = await asyncio.to_thread(hold_deliveries_in_a_tx_channel, broker.url, 40_000)
        try:
            (connection,) = broker.connections
            channel = connection.channels[1]
            table = channel.unacked
            await asyncio.to_thread(ack_the_oldest_and_roll_back, raw, 300)
            assert channel.unacked is table and len(table) == 39_999 and 1 not in table
            assert channel.rolled_back is not None and len(channel.rolled_back) == 1
            assert channel.unacked_count() == 40_000
        finally:
            raw.close()
        queue = broker.vhosts["/"].queues["held"]
        deadline = time.monotonic() + 10
        while queue.message_count < 40_000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert queue.message_count == 40_000  # every delivery went back when the client left


def test_many_consumers_are_added_in_linear_time(broker: BrokerProcess) -> None:
    """Found in review: every Basic.Consume scanned the queue's consumers for an exclusive one,
    so 30,000 consumers took seconds to add. The exclusive consumer is now kept."""
    publish_persistent(broker.url, "crowded", [])
    raw = RawAMQP(broker.url)
    try:
        raw.handshake()
        raw.open_channel(1)
        started = time.monotonic()
        raw.send_bytes(
            b"".join(
                frame.marshal(
                    commands.Basic.Consume(queue="crowded", consumer_tag=f"c{n}", nowait=True), 1
                )
                for n in range(30_000)
            )
        )
        raw.send(commands.Basic.Qos(prefetch_count=1), 1)
        raw.expect(commands.Basic.QosOk, timeout=60)
        assert time.monotonic() - started < 3.0
    finally:
        raw.close()
    assert round_trip_seconds(broker.url) < 1.0


async def test_the_first_snapshot_is_durable_before_clients_are_served(tmp_path: Path) -> None:
    """Found in review: after a clean stop the log ends with the clean-shutdown record, and the
    next run served clients before its own first snapshot was fsynced; a power loss then would
    make the following start trust delivery marks this run had not written. The broker now
    listens only once that snapshot is on disk."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    async with Broker(config):
        pass  # a clean stop: the log ends with its clean-shutdown record
    async with Broker(config) as broker:
        assert broker.wal is not None
        assert broker.wal.stats.fsyncs >= 1 and broker.wal.pending_bytes() == 0


def test_large_content_headers_are_not_kept_after_their_message(broker: BrokerProcess) -> None:
    """Found in review: every channel kept its last content header for reuse, however large,
    and a message kept its decoded properties while queued: 2,000 channels that each published
    one unroutable message with a 120 KB header held ~250 MB the alarm never saw. Only small
    headers are kept for reuse, and decoded properties are not kept at all."""
    raw = RawAMQP(broker.url)
    try:
        raw.handshake()
        before = resident_bytes(broker.proc.pid)
        big = commands.Basic.Properties(
            reply_to="r", headers={"pad": "h" * 120_000}, user_id="guest"
        )
        for number in range(1, 401):
            raw.send(commands.Channel.Open(), number)
            raw.send(commands.Basic.Publish(routing_key="nowhere"), number)
            raw.send(header.ContentHeader(0, 0, big), number)
        raw.send(commands.Basic.Qos(prefetch_count=1), 400)
        while not isinstance(raw.read_frame(30)[1], commands.Basic.QosOk):
            pass  # the channels' Open-Oks
        grown = resident_bytes(broker.proc.pid) - before
        assert grown < 25_000_000, f"the broker grew by {grown} bytes"
    finally:
        raw.close()


def test_reply_text_with_multibyte_names_stays_a_channel_error(broker: BrokerProcess) -> None:
    """Found in review: reply texts were cut at 255 characters, not 255 bytes, so a missing
    queue named with 85 three-byte characters made the 404 unencodable and the connection was
    closed with 541 instead. The text is now cut at a character boundary within 255 bytes."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            connection.channel().queue_declare("€" * 85, passive=True)
        assert closed.value.reply_code == 404
        assert len(closed.value.reply_text.encode()) <= 255
        assert connection.is_open
        connection.channel().queue_declare("", exclusive=True)
    finally:
        connection.close()


def test_properties_no_client_could_decode_are_refused_at_publish(broker: BrokerProcess) -> None:
    """Found by the fuzz test: a content header whose property list does not decode (here an
    unknown field type in the headers table) was stored and delivered as is, and the consumer's
    client lost its connection decoding it, the next one too once it was requeued. As RabbitMQ
    decodes every publish's properties, Warren now checks them: the publisher's connection is
    closed with 502 (RabbitMQ 3.10 answers 541) and nothing reaches the queue."""
    publish_persistent(broker.url, "clean", [])
    with RawAMQP(broker.url) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send(commands.Basic.Publish(routing_key="clean"), 1)
        table = b"\x01kU"
        raw.send_raw(2, 1, struct.pack(">HHQHI", 60, 0, 1, 0x2000, len(table)) + table)
        raw.send_raw(3, 1, b"x")
        close = raw.expect_connection_close(502)
        assert (close.class_id, close.method_id) == (60, 40)
    assert drain(broker.url, "clean") == []


async def test_a_log_that_cannot_sync_at_start_keeps_the_broker_from_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first snapshot must be on disk before clients are served; if its fsync fails the
    start fails (nothing listens), rather than serving on a log that cannot keep promises."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated disk failure")

    broker = Broker(config)  # creates (and fsyncs) the data directory
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated disk failure"):
        await broker.start()
    assert broker._server is None
    monkeypatch.undo()
    assert broker.wal is not None
    await broker.wal.close()


async def test_one_connection_failing_its_alarm_notice_leaves_the_others_blocked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 3, the broker's side: notifying connections of the alarm goes on past one that
    raises, so every other publisher is still blocked (and unblocked later)."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    async with Broker(config) as broker:
        clients = [RawAMQP(broker.url) for _ in range(3)]
        try:
            for raw in clients:
                await asyncio.to_thread(raw.handshake)
                await asyncio.to_thread(raw.open_channel, 1)
                raw.publish(1, b"a publisher", routing_key="nowhere")
            await asyncio.sleep(0.2)
            connections = list(broker.connections)
            assert len(connections) == 3

            def broken() -> None:
                raise RuntimeError("simulated failure in one connection")

            connections[0].memory_alarm_set = broken  # type: ignore[method-assign]
            broker.memory.limit = 1
            broker.memory.check()
            assert [c.blocked for c in connections[1:]] == [True, True]
            assert "alarm.memory.connection_failed" in caplog.text
            broker.memory.limit = 1 << 40
            broker.memory.check()
            assert not any(c.blocked for c in connections)
        finally:
            for raw in clients:
                raw.close()
