"""Frame-level errors and content framing, driven by the raw client, as RabbitMQ 3.10 answers.

RabbitMQ sends every frame-level error as a Connection.Close with class/method 0/0 (except
errors found while decoding a method, which blame that method)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pika
import pytest
from pamqp import commands, header
from pamqp.body import ContentBody

from tests.compat.rawamqp import (
    PROTOCOL_HEADER,
    RawAMQP,
    assert_broker_alive,
    assert_reply,
    method_payload,
    parse_frames,
    raw_connection,
)

METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8


@pytest.fixture(autouse=True)
def _broker_survives(amqp_url: str) -> Iterator[None]:
    """After every test a fresh pika connection must still work (the broker did not crash)."""
    yield
    assert_broker_alive(amqp_url)


@pytest.fixture
def queue(channel: pika.adapters.blocking_connection.BlockingChannel, name: str) -> Iterator[str]:
    """A plain queue declared with pika (reachable from raw connections), deleted afterwards."""
    channel.queue_declare(name)
    yield name
    channel.queue_delete(name)


def content_header(size: int, **props: str) -> header.ContentHeader:
    return header.ContentHeader(0, size, commands.Basic.Properties(**props))


def publish_start(client: RawAMQP, size: int, channel: int = 1, routing_key: str = "") -> None:
    """Basic.Publish plus its content header, leaving the body to the test."""
    client.send(commands.Basic.Publish(routing_key=routing_key), channel)
    client.send(content_header(size), channel)


# -- frame size and framing errors -------------------------------------------------------------


def _big_body(client: RawAMQP) -> None:
    publish_start(client, client.frame_max + 1)
    client.send(ContentBody(b"x" * (client.frame_max + 1)), 1)


def _big_method(client: RawAMQP) -> None:
    pad = "y" * (client.frame_max + 100)
    client.send(commands.Queue.Declare(queue="", exclusive=True, arguments={"x-pad": pad}), 1)


@pytest.mark.parametrize(
    ("frame_max", "action", "detail"),
    [
        (4096, _big_body, "type 3, all octets = <<>>: {frame_too_large,4097,4088}"),
        (4096, _big_method, "type 1, all octets = <<>>: {frame_too_large,"),
        (131072, _big_body, "type 3, all octets = <<>>: {frame_too_large,131073,131064}"),
    ],
    ids=["body-4096", "method-4096", "body-default"],
)
def test_frame_larger_than_frame_max(
    amqp_url: str, frame_max: int, action: Callable[[RawAMQP], None], detail: str
) -> None:
    """A frame whose payload exceeds the negotiated frame_max: Close 501 FRAME_ERROR.
    (RabbitMQ tolerates payloads up to frame_max itself, though it reports frame_max - 8.)"""
    with raw_connection(amqp_url, frame_max=frame_max) as client:
        client.open_channel(1)
        action(client)
        close = client.expect_connection_close()
        assert_reply(close, 501, class_method=(0, 0))
        assert close.reply_text.startswith(f"FRAME_ERROR - {detail}")


def test_frame_larger_than_4096_before_tune_ok(amqp_url: str, target_is_warren: bool) -> None:
    """Before Tune-Ok the limit is the spec's minimum frame size: an unauthenticated client
    cannot make the broker read and decode a 128 KiB StartOk. RabbitMQ closes the socket
    without a word; Warren sends Close 501 frame_too_large first. Neither sends Tune."""
    client = RawAMQP(amqp_url)
    try:
        client.read_start()
        client.login(properties={"product": "big", "padding": "p" * 5000})
        if target_is_warren:
            close = client.expect_connection_close()
            assert_reply(close, 501, class_method=(0, 0))
            assert "frame_too_large" in close.reply_text
        else:
            leftover = client.expect_closed_socket()
            assert all(not isinstance(f, commands.Connection.Tune) for _, f in
                       parse_frames(leftover))  # fmt: skip
    finally:
        client.close()


@pytest.mark.parametrize(
    ("frame_type", "channel", "payload", "octets"),
    [
        (
            METHOD,
            1,
            method_payload(commands.Basic.Qos(prefetch_count=1)),
            "<<0,60,0,10,0,0,0,0,0,1,0>>",
        ),
        (HEARTBEAT, 0, b"", "<<>>"),
    ],
    ids=["method", "heartbeat"],
)
def test_bad_frame_end(
    amqp_url: str, frame_type: int, channel: int, payload: bytes, octets: str
) -> None:
    """A frame-end octet other than 0xCE: Close 501 '... {invalid_frame_end_marker,N}'."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send_raw(frame_type, channel, payload, end=0x00)
        close = client.expect_connection_close()
        marker = "{invalid_frame_end_marker,0}"
        text = f"FRAME_ERROR - type {frame_type}, all octets = {octets}: {marker}"
        assert_reply(close, 501, text, (0, 0))


@pytest.mark.parametrize("frame_type", [5, 9], ids=["type-5", "type-9"])
def test_unknown_frame_type(amqp_url: str, frame_type: int) -> None:
    """An undefined frame type: Close 501
    'FRAME_ERROR - type N, all octets = ...: unknown_frame'."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send_raw(frame_type, 1, b"abc")
        close = client.expect_connection_close()
        text = f'FRAME_ERROR - type {frame_type}, all octets = <<"abc">>: unknown_frame'
        assert_reply(close, 501, text, (0, 0))


def test_protocol_header_mid_stream(amqp_url: str) -> None:
    """A second protocol header after the handshake is parsed as a frame: 501 FRAME_ERROR."""
    with raw_connection(amqp_url) as client:
        client.send_bytes(PROTOCOL_HEADER)
        assert_reply(client.expect_connection_close(), 501, class_method=(0, 0))


@pytest.mark.parametrize(
    ("channel", "payload", "octets"),
    [(1, b"", "<<>>"), (0, b"abc", '<<"abc">>')],
    ids=["channel-1", "with-payload"],
)
def test_bad_heartbeat(amqp_url: str, channel: int, payload: bytes, octets: str) -> None:
    """A heartbeat on a non-zero channel is 505 UNEXPECTED_FRAME; one with a payload is 501."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send_raw(HEARTBEAT, channel, payload)
        close = client.expect_connection_close()
        if payload:
            text = f"FRAME_ERROR - type 8, all octets = {octets}: unknown_frame"
            assert_reply(close, 501, text, (0, 0))
        else:
            assert_reply(close, 505, f"UNEXPECTED_FRAME - type 8, all octets = {octets}", (0, 0))


@pytest.mark.parametrize("frame_type", [HEADER, BODY], ids=["header", "body"])
def test_content_frame_on_channel_zero(amqp_url: str, frame_type: int) -> None:
    """Content header/body frames on channel 0: Close 505 'UNEXPECTED_FRAME - type N, ...'."""
    with raw_connection(amqp_url) as client:
        if frame_type == HEADER:
            client.send(content_header(3), 0)
        else:
            client.send(ContentBody(b"abc"), 0)
        close = client.expect_connection_close()
        assert_reply(close, 505, class_method=(0, 0))
        assert close.reply_text.startswith(f"UNEXPECTED_FRAME - type {frame_type}, all octets = ")


# -- method decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_id", "method_id", "channel"),
    [(99, 10, 1), (60, 99, 1), (10, 99, 0)],
    ids=["class-99", "basic-method-99", "connection-method-99"],
)
def test_unknown_class_or_method(
    amqp_url: str, class_id: int, method_id: int, channel: int
) -> None:
    """An unknown class/method id ends the connection. RabbitMQ 3.10's reader crashes on it
    (unknown_method_id) and drops the socket without any Close; a Close, if sent, must be
    503 COMMAND_INVALID or 540 NOT_IMPLEMENTED."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send_raw(METHOD, channel, struct.pack(">HH", class_id, method_id))
        for _, value in parse_frames(client.expect_closed_socket(5)):
            assert isinstance(value, commands.Connection.Close), value.name
            assert value.reply_code in (503, 540), value.reply_text
            assert_reply(value, value.reply_code)


@pytest.mark.parametrize(
    ("method", "cut", "octets"),
    [
        (commands.Queue.Declare(queue="abc"), 9, "<<0,0,3,97,98>>"),
        (commands.Basic.Qos(prefetch_count=1), 6, "<<0,0>>"),
    ],
    ids=["queue.declare", "basic.qos"],
)
def test_truncated_method_arguments(
    amqp_url: str, method: commands.Basic.Qos, cut: int, octets: str
) -> None:
    """Method arguments cut short: Close 501 'FRAME_ERROR - cannot decode <<...>>' blaming the
    method (RabbitMQ does not use 502 SYNTAX_ERROR here)."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send_raw(METHOD, 1, method_payload(method)[:cut])
        close = client.expect_connection_close()
        text = f"FRAME_ERROR - cannot decode {octets}"
        assert_reply(close, 501, text, divmod(method.index, 0x10000))


@pytest.mark.parametrize(
    ("payload", "octets"), [(b"", "<<>>"), (b"\x00\x3c", "<<0,60>>")], ids=["empty", "2-bytes"]
)
def test_method_frame_without_method_id(amqp_url: str, payload: bytes, octets: str) -> None:
    """A method frame too short to hold class and method ids: 501 '... unknown_frame'."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send_raw(METHOD, 1, payload)
        close = client.expect_connection_close()
        text = f"FRAME_ERROR - type 1, all octets = {octets}: unknown_frame"
        assert_reply(close, 501, text, (0, 0))


# -- content sequencing ------------------------------------------------------------------------

EXPECTED_METHOD = "UNEXPECTED_FRAME - expected method frame, got non method frame instead"


@pytest.mark.parametrize("frame_type", [HEADER, BODY], ids=["header", "body"])
def test_content_without_publish(amqp_url: str, frame_type: int) -> None:
    """A content header or body with no Basic.Publish before it: Close 505 (class/method 0/0)."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        if frame_type == HEADER:
            client.send(content_header(3), 1)
        else:
            client.send(ContentBody(b"abc"), 1)
        assert_reply(client.expect_connection_close(), 505, EXPECTED_METHOD, (0, 0))


@pytest.mark.parametrize(
    ("send_header", "text"),
    [
        (
            False,
            "UNEXPECTED_FRAME - expected content header for class 60, "
            "got non content header frame instead",
        ),
        (True, "UNEXPECTED_FRAME - expected content body, got non content body frame instead"),
    ],
    ids=["expecting-header", "expecting-body"],
)
def test_method_interrupting_content(amqp_url: str, send_header: bool, text: str) -> None:
    """A method where the publish's content header/body should come: Close 505 blaming
    basic.publish."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.Publish(routing_key="nowhere"), 1)
        if send_header:
            client.send(content_header(3), 1)
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        assert_reply(client.expect_connection_close(), 505, text, (60, 40))


def test_content_header_for_wrong_class(amqp_url: str) -> None:
    """A content header naming class 50 after Basic.Publish: Close 505 blaming basic.publish."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.Publish(routing_key="nowhere"), 1)
        client.send_raw(HEADER, 1, struct.pack(">HHQH", 50, 0, 3, 0))
        text = (
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead"
        )
        assert_reply(client.expect_connection_close(), 505, text, (60, 40))


@pytest.mark.parametrize("frame_type", [HEADER, BODY], ids=["header", "body"])
def test_content_on_other_channel(amqp_url: str, frame_type: int) -> None:
    """The publish's header or body sent on another open channel: that channel expects a method,
    so Close 505 'expected method frame' (class/method 0/0)."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.open_channel(2)
        client.send(commands.Basic.Publish(routing_key="nowhere"), 1)
        if frame_type == HEADER:
            client.send(content_header(3), 2)
        else:
            client.send(content_header(3), 1)
            client.send(ContentBody(b"abc"), 2)
        assert_reply(client.expect_connection_close(), 505, EXPECTED_METHOD, (0, 0))


def test_body_longer_than_declared(
    amqp_url: str, channel: pika.adapters.blocking_connection.BlockingChannel, queue: str
) -> None:
    """More body bytes than body_size: RabbitMQ never completes the message (nothing is
    delivered) and keeps expecting body, so the next method on that channel gets 505
    'expected content body'. A broker that notices at once with 501 FRAME_ERROR also passes."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.open_channel(2)
        publish_start(client, 3, routing_key=queue)
        client.send(ContentBody(b"abcd"), 1)
        client.send(commands.Basic.Qos(prefetch_count=1), 2)  # other channel: unaffected
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        close = client.expect_connection_close()
        assert close.reply_code in (501, 505), close.reply_text
        assert_reply(close, close.reply_code)
        if close.reply_code == 505:
            text = "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
            assert_reply(close, 505, text, (60, 40))
    method, _, _ = channel.basic_get(queue, auto_ack=True)
    assert method is None


# -- content that must work ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_max", "size", "chunk"),
    [(131072, 3000, 1000), (131072, 10, 1), (4096, 10000, 4088), (131072, 300000, 131064)],
    ids=["3-frames", "1-byte-frames", "frame_max-4096-full-frames", "default-full-frames"],
)
def test_split_body_publish(
    amqp_url: str, queue: str, frame_max: int, size: int, chunk: int
) -> None:
    """A body split over several body frames (sizes adding up exactly, each at most
    frame_max - 8) arrives intact, with its properties."""
    body = bytes(i % 251 for i in range(size))
    with raw_connection(amqp_url, frame_max=frame_max) as client:
        client.open_channel(1)
        client.publish(
            1,
            body,
            routing_key=queue,
            chunk=chunk,
            properties=commands.Basic.Properties(content_type="application/x-test"),
        )
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        client.expect(commands.Basic.QosOk, 1)  # the publish was processed
        got = client.basic_get(1, queue)
        assert got is not None
        get_ok, props, received = got
        assert get_ok.routing_key == queue and get_ok.message_count == 0
        assert props.body_size == size
        assert props.properties.content_type == "application/x-test"
        assert received == body


def test_zero_size_body_without_body_frame(
    amqp_url: str, channel: pika.adapters.blocking_connection.BlockingChannel, queue: str
) -> None:
    """body_size 0 with no body frame completes the publish; pika gets an empty body."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.Publish(routing_key=queue), 1)
        client.send(content_header(0, message_id="empty-1"), 1)
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        client.expect(commands.Basic.QosOk, 1)
    method, props, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    assert body == b"" and props.message_id == "empty-1"


def test_frame_max_exact_payload_accepted(amqp_url: str, queue: str) -> None:
    """A body frame of exactly frame_max - 8 payload octets (frame of frame_max) is fine."""
    with raw_connection(amqp_url, frame_max=4096) as client:
        client.open_channel(1)
        publish_start(client, 4088, routing_key=queue)
        client.send_raw(BODY, 1, b"z" * 4088)
        got = client.basic_get(1, queue)
        assert got is not None and got[2] == b"z" * 4088
