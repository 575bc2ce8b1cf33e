"""Hardening regressions (issue 7): each test drives the real trigger a review found, over the
wire against a broker process, and checks that nothing confirmed is lost and nobody else stalls."""

from __future__ import annotations

import struct
from pathlib import Path

import pika
from pamqp import commands

from tests.compat.rawamqp import RawAMQP, assert_broker_alive, method_payload, raw_frame
from tests.support import BrokerProcess, publish_persistent, small_segment_config

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
FRAME_METHOD = 1


def nested_table(depth: int) -> bytes:
    """A field table nested `depth` levels deep, built by hand (encoders refuse it)."""
    raw = b"\x00\x00\x00\x00"
    for _ in range(depth - 1):
        body = b"\x01aF" + raw
        raw = len(body).to_bytes(4, "big") + body
    return raw


def bind_payload(queue: str, exchange: str, routing_key: str, arguments: bytes) -> bytes:
    """Queue.Bind with a raw arguments table in place of the encoded empty one."""
    payload = method_payload(
        commands.Queue.Bind(queue=queue, exchange=exchange, routing_key=routing_key)
    )
    assert payload.endswith(b"\x00\x00\x00\x00")
    return payload[:-4] + arguments


def drain(url: str, queue: str) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


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
                                                        nested_table(300)))
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
                                                        nested_table(90)))
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
