"""Hand-written codecs in broker.amqp.frames against pamqp's own encoders and decoders: what we
decode is what pamqp encoded, and what we encode pamqp decodes to the same method."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import commands, frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from broker.amqp import frames
from broker.amqp.frames import (
    FRAME_METHOD,
    MalformedFrame,
    body_size,
    confirm_frame,
    content_frames,
    declare_ok_payload,
    decode_ack,
    decode_method,
    decode_publish,
    deliver_frames,
    frame,
    get_ok_payload,
    method_frame,
    return_payload,
    short_string,
)
from tests.unit.helpers import content_header

LONG_NAME = "k" * 255
# pamqp validates exchange names (at most 127 of [A-Za-z0-9-_.:]); routing keys are free.
NAMES = ["", "amq.direct", "orders.eu-1:x_y", "e" * 127]


def _payload(method: Any, channel: int = 1) -> bytes:
    """The method payload pamqp would put on the wire (the frame minus prefix and frame-end)."""
    data = pamqp_frame.marshal(method, channel)
    assert data[-1] == frames.FRAME_END
    return data[7:-1]


def _unmarshal(data: bytes) -> Any:
    """Decode one whole frame with pamqp, checking it consumed all of it."""
    consumed, _channel, value = pamqp_frame.unmarshal(data)
    assert consumed == len(data)
    return value


def _route(exchange: str, routing_key: str) -> bytes:
    return short_string(exchange) + short_string(routing_key)


def _split_frames(data: bytes) -> list[tuple[int, int, Any, bytes]]:
    """Cut a byte stream into frames: (type, channel, pamqp value, raw payload)."""
    result = []
    offset = 0
    while offset < len(data):
        kind, channel, size = frames.FRAME_PREFIX.unpack_from(data, offset)
        end = offset + 7 + size + 1
        raw = data[offset:end]
        assert raw[-1] == frames.FRAME_END
        result.append((kind, channel, _unmarshal(raw), raw[7:-1]))
        offset = end
    return result


# ------------------------------------------------------------------------------------ publish/ack


@pytest.mark.parametrize("exchange", NAMES)
@pytest.mark.parametrize("routing_key", ["", "a.b.c", "ключ", LONG_NAME])
@pytest.mark.parametrize(("mandatory", "immediate"), [(False, False), (True, False), (True, True)])
def test_decode_publish_matches_pamqp(
    exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> None:
    """decode_publish reads what pamqp encodes, and keeps the raw route bytes."""
    method = commands.Basic.Publish(
        exchange=exchange, routing_key=routing_key, mandatory=mandatory, immediate=immediate
    )
    result = decode_publish(_payload(method))
    assert result == (
        exchange,
        routing_key,
        _route(exchange, routing_key),
        mandatory,
        immediate,
    )


def test_decode_publish_any_utf8_names() -> None:
    """Names pamqp would refuse (unicode, 255 bytes) decode from a hand-built payload."""
    route = _route("exchange é", LONG_NAME)
    payload = b"\x00\x3c\x00\x28\x00\x00" + route + b"\x01"
    assert decode_publish(payload) == ("exchange é", LONG_NAME, route, True, False)


def test_decode_ack_full_64_bit_tag() -> None:
    """Delivery tags are unsigned 64-bit on the wire (pamqp's encoder stops at 2**63 - 1)."""
    payload = b"\x00\x3c\x00\x50" + b"\xff" * 8 + b"\x01"
    assert decode_ack(payload) == (2**64 - 1, True)


def test_decode_publish_only_immediate_flag() -> None:
    """The immediate bit is the second bit, independent of mandatory."""
    method = commands.Basic.Publish(exchange="x", routing_key="k", immediate=True)
    assert decode_publish(_payload(method))[3:] == (False, True)


def test_decode_publish_truncated() -> None:
    """Every truncation of a publish payload raises MalformedFrame."""
    payload = _payload(commands.Basic.Publish(exchange="ex", routing_key="key", mandatory=True))
    for cut in range(len(payload)):
        with pytest.raises(MalformedFrame):
            decode_publish(payload[:cut])


@pytest.mark.parametrize("tag", [0, 1, 2**32 + 5, 2**63 - 1])
@pytest.mark.parametrize("multiple", [False, True])
def test_decode_ack_matches_pamqp(tag: int, multiple: bool) -> None:
    """decode_ack reads pamqp's Basic.Ack encoding."""
    assert decode_ack(_payload(commands.Basic.Ack(delivery_tag=tag, multiple=multiple))) == (
        tag,
        multiple,
    )


def test_decode_ack_truncated() -> None:
    """A short Basic.Ack payload raises MalformedFrame."""
    payload = _payload(commands.Basic.Ack(delivery_tag=7, multiple=True))
    for cut in range(len(payload)):
        with pytest.raises(MalformedFrame):
            decode_ack(payload[:cut])


# ------------------------------------------------------------------------------------ outgoing


@pytest.mark.parametrize("exchange", NAMES)
@pytest.mark.parametrize("redelivered", [False, True])
def test_deliver_frames_roundtrip(exchange: str, redelivered: bool) -> None:
    """Basic.Deliver framed by hand, its pieces unjoined, decodes in pamqp and is
    byte-identical to pamqp's frame; the content header follows it."""
    tag = 2**40 + 3
    header = content_header(0)
    parts = deliver_frames(
        3, short_string("ctag-1"), tag, redelivered, _route(exchange, "rk.1"), header, b"", 4096
    )
    data = b"".join(parts)
    assert _split_frames(data)[1][3] == header  # the method frame, then the content header
    data = data[: -len(header) - 8]  # the Deliver's frame alone
    method = _unmarshal(data)
    assert isinstance(method, commands.Basic.Deliver)
    assert (method.consumer_tag, method.delivery_tag, method.redelivered) == (
        "ctag-1",
        tag,
        redelivered,
    )
    assert (method.exchange, method.routing_key) == (exchange, "rk.1")
    expected = commands.Basic.Deliver(
        consumer_tag="ctag-1",
        delivery_tag=tag,
        redelivered=redelivered,
        exchange=exchange,
        routing_key="rk.1",
    )
    assert data == pamqp_frame.marshal(expected, 3)


@pytest.mark.parametrize("redelivered", [False, True])
@pytest.mark.parametrize("message_count", [0, 1, 2**32 - 1])
def test_get_ok_payload_roundtrip(redelivered: bool, message_count: int) -> None:
    """Basic.GetOk built by hand decodes in pamqp to the same fields."""
    payload = get_ok_payload(9, redelivered, _route("amq.topic", "a.b"), message_count)
    method = _unmarshal(frame(FRAME_METHOD, 1, payload))
    assert isinstance(method, commands.Basic.GetOk)
    assert (
        method.delivery_tag,
        method.redelivered,
        method.exchange,
        method.routing_key,
        method.message_count,
    ) == (9, redelivered, "amq.topic", "a.b", message_count)


@pytest.mark.parametrize("exchange", NAMES)
def test_return_payload_roundtrip(exchange: str) -> None:
    """Basic.Return built by hand decodes in pamqp to the same fields."""
    payload = return_payload(312, "NO_ROUTE", _route(exchange, "key"))
    method = _unmarshal(frame(FRAME_METHOD, 1, payload))
    assert isinstance(method, commands.Basic.Return)
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == (
        312,
        "NO_ROUTE",
        exchange,
        "key",
    )


@pytest.mark.parametrize("queue", ["q", "amq.gen-abcdefghijklmnopqrstuv", "a:b.c-d_e"])
def test_declare_ok_payload_roundtrip(queue: str) -> None:
    """Queue.DeclareOk built by hand decodes in pamqp and is byte-identical to pamqp's."""
    data = frame(FRAME_METHOD, 2, declare_ok_payload(queue, 17, 4))
    method = _unmarshal(data)
    assert isinstance(method, commands.Queue.DeclareOk)
    assert (method.queue, method.message_count, method.consumer_count) == (queue, 17, 4)
    assert data == pamqp_frame.marshal(
        commands.Queue.DeclareOk(queue=queue, message_count=17, consumer_count=4), 2
    )


def test_declare_ok_payload_any_queue_name() -> None:
    """Names pamqp would refuse (spaces, unicode) are still encoded as a plain short string."""
    payload = declare_ok_payload("my queue é", 1, 2)
    encoded = "my queue é".encode()
    assert payload == b"\x00\x32\x00\x0b" + bytes([len(encoded)]) + encoded + b"\x00" * 3 + (
        b"\x01\x00\x00\x00\x02"
    )


@pytest.mark.parametrize("ack", [True, False])
@pytest.mark.parametrize("multiple", [True, False])
def test_confirm_frame_roundtrip(ack: bool, multiple: bool) -> None:
    """Publisher confirms decode in pamqp as Basic.Ack / Basic.Nack."""
    method = _unmarshal(confirm_frame(5, 1234, multiple, ack=ack))
    assert isinstance(method, commands.Basic.Ack if ack else commands.Basic.Nack)
    assert (method.delivery_tag, method.multiple) == (1234, multiple)


def test_short_string_limit() -> None:
    """Short strings are length-prefixed UTF-8 and refuse more than 255 bytes."""
    assert short_string("é") == b"\x02\xc3\xa9"
    assert short_string(LONG_NAME)[0] == 255
    with pytest.raises(ValueError):
        short_string("k" * 256)
    with pytest.raises(ValueError):
        short_string("é" * 128)


def test_method_frame_and_decode_method_use_pamqp() -> None:
    """The long tail goes through pamqp both ways."""
    method = commands.Queue.Declare(queue="q", durable=True, arguments={"x-max-length": 5})
    data = method_frame(4, method)
    assert data == pamqp_frame.marshal(method, 4)
    decoded = decode_method(data[7:-1])
    assert isinstance(decoded, commands.Queue.Declare)
    assert (decoded.queue, decoded.durable, decoded.arguments) == ("q", True, {"x-max-length": 5})


def test_decode_method_errors() -> None:
    """Unknown method ids raise KeyError; truncated payloads raise MalformedFrame."""
    with pytest.raises(KeyError):
        decode_method(b"\x00\x63\x00\x01")
    payload = _payload(commands.Queue.Declare(queue="some-queue"))
    with pytest.raises(MalformedFrame):
        decode_method(payload[:8])


def test_body_size_reads_header() -> None:
    """body_size reads the 64-bit size from a content header payload."""
    assert body_size(content_header(2**33 + 1, delivery_mode=2)) == 2**33 + 1


# ------------------------------------------------------------------------------------ content


def test_frame_prefixes_stay_right_past_a_full_cache() -> None:
    """Prefixes come from a bounded cache: every one matches the struct's packing, on every
    channel and frame type, while the cache fills, after it is emptied, and for sizes seen
    before it was."""
    sizes = range(0, 3 * frames.PREFIX_CACHE_SIZE, 3)
    for _ in range(2):
        for size in sizes:
            for frame_type, channel in ((1, 1), (2, 65535), (3, 0), (3, 257)):
                packed = frames.FRAME_PREFIX.pack(frame_type, channel, size)
                assert frames.frame_prefix(frame_type, channel, size) == packed
    assert len(frames._PREFIXES) <= frames.PREFIX_CACHE_SIZE
    assert frames.frame_prefix(3, 1, 0xFFFFFFFF) == frames.FRAME_PREFIX.pack(3, 1, 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("size", "frame_max"),
    [
        (0, 4096),
        (1, 4096),
        (4088, 4096),
        (4089, 4096),
        (4088 * 3, 4096),
        (4088 * 3 + 1, 4096),
        (100_000, 4096),
        (300_000, 131072),
    ],
)
def test_content_frames_split_body(size: int, frame_max: int) -> None:
    """Method, header, then body frames each <= frame_max - 8 bytes whose join is the body."""
    body = bytes(i % 251 for i in range(size))
    header = content_header(size, delivery_mode=2, content_type="text/plain")
    route = _route("x", "k")
    method = b"\x00\x3c\x00\x3c" + short_string("c") + (1).to_bytes(8, "big") + b"\x00" + route
    data = b"".join(content_frames(7, method, header, body, frame_max))
    delivered = deliver_frames(7, short_string("c"), 1, False, route, header, body, frame_max)
    assert b"".join(delivered) == data
    parsed = _split_frames(data)
    assert all(channel == 7 for _, channel, _, _ in parsed)
    assert all(len(raw) + 8 <= frame_max for _, _, _, raw in parsed)
    kind, _, deliver, _ = parsed[0]
    assert kind == frames.FRAME_METHOD
    assert isinstance(deliver, commands.Basic.Deliver)
    kind, _, content, raw = parsed[1]
    assert kind == frames.FRAME_HEADER
    assert isinstance(content, ContentHeader)
    assert content.body_size == size
    assert raw == header
    chunks = parsed[2:]
    assert all(kind == frames.FRAME_BODY for kind, _, _, _ in chunks)
    assert all(isinstance(value, ContentBody) for _, _, value, _ in chunks)
    assert all(len(raw) <= frame_max - 8 for _, _, _, raw in chunks)
    assert b"".join(raw for _, _, _, raw in chunks) == body
    expected_chunks = -(-size // (frame_max - 8))
    assert len(chunks) == expected_chunks
    assert all(len(raw) == frame_max - 8 for _, _, _, raw in chunks[:-1])


def test_heartbeat_frame_decodes() -> None:
    """The prebuilt heartbeat frame is what pamqp calls a heartbeat on channel 0."""
    consumed, channel, value = pamqp_frame.unmarshal(frames.HEARTBEAT_FRAME)
    assert (consumed, channel, type(value).__name__) == (8, 0, "Heartbeat")
