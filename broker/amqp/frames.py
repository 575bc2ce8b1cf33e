"""AMQP 0-9-1 framing: constants, hand-written codecs for the hot methods, frame builders.

pamqp handles the long tail of methods; the methods on every message's path (Basic.Publish in,
Basic.Deliver / GetOk / Return out, Basic.Ack in and out) are encoded and decoded here with
precompiled structs, because pamqp's generic attribute walk costs several times more per call.
"""

from __future__ import annotations

import struct
from typing import Final, TypeAlias

from pamqp import commands, frame as pamqp_frame
from pamqp.base import Frame as PamqpMethod

from broker.core import tables

tables.install()  # method arguments decode with Warren's bounded table decoder

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_END_BYTE: Final = b"\xce"
# A piece of output: the bytes of a frame, or a view of a large body split across frames.
Chunk: TypeAlias = bytes | memoryview
FRAME_OVERHEAD: Final = 8  # 7-byte frame header + frame-end octet

FRAME_PREFIX: Final = struct.Struct(">BHI")
HEARTBEAT_FRAME: Final = b"\x08\x00\x00\x00\x00\x00\x00\xce"

ACCESS_REQUEST: Final = 0x001E000A  # (30, 10), not in pamqp's tables
ACCESS_REQUEST_OK: Final = b"\x00\x1e\x00\x0b\x00\x01"  # ticket 1, as RabbitMQ answers
BASIC_PUBLISH: Final = 0x003C0028  # (60, 40)
BASIC_ACK: Final = 0x003C0050  # (60, 80)

_DELIVER_PREFIX: Final = b"\x00\x3c\x00\x3c"
# A Deliver's bytes besides its consumer tag and route: class and method, tag, redelivered.
_DELIVER_FIXED: Final = 4 + 8 + 1
_GET_OK_PREFIX: Final = b"\x00\x3c\x00\x47"
_RETURN_PREFIX: Final = b"\x00\x3c\x00\x32"
_ACK_PREFIX: Final = b"\x00\x3c\x00\x50"
_NACK_PREFIX: Final = b"\x00\x3c\x00\x78"
_TAG_AND_FLAG: Final = struct.Struct(">QB")
_LONG: Final = struct.Struct(">I")
_SHORT: Final = struct.Struct(">H")
_TWO_LONGS: Final = struct.Struct(">II")
_BODY_SIZE: Final = struct.Struct(">Q")


class MalformedFrame(ValueError):
    """A method payload that cannot be decoded (truncated or with bad values)."""


# With an empty channel-id, as RabbitMQ.
CHANNEL_OPEN_OK: Final = b"\x00\x14\x00\x0b\x00\x00\x00\x00"


def erlang_binary(data: bytes) -> str:
    """Bytes the way RabbitMQ's reply texts print them: <<"abc">> or <<0,60,0,10>>."""
    if data and all(32 <= byte < 127 for byte in data):
        return '<<"' + data.decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '">>'
    return "<<" + ",".join(str(byte) for byte in data) + ">>"


def short_string(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


def decode_publish(payload: bytes) -> tuple[str, str, bytes, bool, bool]:
    """Basic.Publish -> (exchange, routing_key, raw route bytes, mandatory, immediate)."""
    try:
        exchange_len = payload[6]
        routing_start = 7 + exchange_len
        routing_len = payload[routing_start]
        end = routing_start + 1 + routing_len
        flags = payload[end]
    except IndexError as error:
        raise MalformedFrame(f"cannot decode {erlang_binary(payload[4:])}") from error
    route_bytes = payload[6:end]
    exchange = payload[7:routing_start].decode("utf-8", "replace")
    routing_key = payload[routing_start + 1 : end].decode("utf-8", "replace")
    return exchange, routing_key, route_bytes, bool(flags & 1), bool(flags & 2)


def decode_ack(payload: bytes) -> tuple[int, bool]:
    """Basic.Ack -> (delivery_tag, multiple)."""
    try:
        tag, flags = _TAG_AND_FLAG.unpack_from(payload, 4)
    except struct.error as error:
        raise MalformedFrame(f"cannot decode {erlang_binary(payload[4:])}") from error
    return tag, bool(flags & 1)


def decode_method(payload: bytes) -> PamqpMethod:
    """Any other method, through pamqp. Raises KeyError for an unknown class/method id."""
    index = int.from_bytes(payload[:4], "big")
    method = commands.INDEX_MAPPING[index]()
    try:
        method.unmarshal(payload[4:])
    except (struct.error, ValueError, IndexError, TypeError, UnicodeDecodeError) as error:
        raise MalformedFrame(f"cannot decode {erlang_binary(payload[4:])}") from error
    return method


def body_size(header_payload: bytes) -> int:
    return _BODY_SIZE.unpack_from(header_payload, 4)[0]


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return FRAME_PREFIX.pack(frame_type, channel, len(payload)) + payload + FRAME_END_BYTE


def method_frame(channel: int, method: PamqpMethod) -> bytes:
    """Encode a pamqp method for the long tail (declare-ok, close, ...)."""
    return pamqp_frame.marshal(method, channel)


# Frame prefixes already packed, by (frame type, channel, size): a delivery's three prefixes
# repeat from message to message (one consumer's channel, bodies and headers of a few sizes),
# and a lookup here costs less than half of a struct call made from compiled code. Bounded:
# emptied when full, so a stream of ever new sizes costs a miss each, never memory.
_PREFIXES: Final[dict[int, bytes]] = {}
PREFIX_CACHE_SIZE: Final = 4096


def frame_prefix(frame_type: int, channel: int, size: int) -> bytes:
    """FRAME_PREFIX.pack(frame_type, channel, size), from the cache when it is there."""
    key = size << 24 | channel << 8 | frame_type
    found = _PREFIXES.get(key)
    if found is None:
        if len(_PREFIXES) >= PREFIX_CACHE_SIZE:
            _PREFIXES.clear()
        found = _PREFIXES[key] = FRAME_PREFIX.pack(frame_type, channel, size)
    return found


def content_frames(
    channel: int, method_payload: bytes, header: bytes, body: bytes, frame_max: int
) -> list[Chunk]:
    """Method + content header + body frames, the body split to respect frame_max (the
    pieces of a big body are views of it, not copies)."""
    parts: list[Chunk] = [
        frame_prefix(FRAME_METHOD, channel, len(method_payload)),
        method_payload,
        FRAME_END_BYTE,
    ]
    _add_content(parts, channel, header, body, frame_max)
    return parts


def deliver_frames(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    route: bytes,
    header: bytes,
    body: bytes,
    frame_max: int,
) -> list[Chunk]:
    """content_frames for a Basic.Deliver (`consumer_tag` already a short string, `route` the
    publish's raw bytes), its method's pieces left in the list unjoined: the connection joins
    all it writes once, and a join per delivery here was a copy and an allocation more. The
    tag is packed by int.to_bytes: compiled, a fifth less than a struct's call."""
    size = _DELIVER_FIXED + len(consumer_tag) + len(route)
    parts: list[Chunk] = [
        frame_prefix(FRAME_METHOD, channel, size),
        _DELIVER_PREFIX,
        consumer_tag,
        delivery_tag.to_bytes(8, "big"),
        b"\x01" if redelivered else b"\x00",
        route,
        FRAME_END_BYTE,
    ]
    _add_content(parts, channel, header, body, frame_max)
    return parts


def _add_content(
    parts: list[Chunk], channel: int, header: bytes, body: bytes, frame_max: int
) -> None:
    """The content header frame, then the body in frames of at most frame_max."""
    parts += (frame_prefix(FRAME_HEADER, channel, len(header)), header, FRAME_END_BYTE)
    size = len(body)
    if size:
        chunk = frame_max - FRAME_OVERHEAD
        if size <= chunk:
            parts += (frame_prefix(FRAME_BODY, channel, size), body, FRAME_END_BYTE)
        else:
            view = memoryview(body)
            for start in range(0, size, chunk):
                piece = view[start : start + chunk]
                parts += (FRAME_PREFIX.pack(FRAME_BODY, channel, len(piece)), piece, FRAME_END_BYTE)


def get_ok_payload(delivery_tag: int, redelivered: bool, route: bytes, message_count: int) -> bytes:
    return b"".join(
        (
            _GET_OK_PREFIX,
            _TAG_AND_FLAG.pack(delivery_tag, redelivered),
            route,
            _LONG.pack(message_count),
        )
    )


def declare_ok_payload(queue: str, message_count: int, consumer_count: int) -> bytes:
    """Queue.DeclareOk by hand: pamqp refuses queue names RabbitMQ accepts."""
    return (
        b"\x00\x32\x00\x0b" + short_string(queue) + _TWO_LONGS.pack(message_count, consumer_count)
    )


def return_payload(reply_code: int, reply_text: str, route: bytes) -> bytes:
    return b"".join((_RETURN_PREFIX, _SHORT.pack(reply_code), short_string(reply_text), route))


def confirm_frame(channel: int, delivery_tag: int, multiple: bool, ack: bool = True) -> bytes:
    """Basic.Ack / Basic.Nack from the broker for publisher confirms. A nack carries
    requeue=true, as RabbitMQ's (the field's default there; it means nothing to a publisher)."""
    if ack:
        return frame(
            FRAME_METHOD, channel, _ACK_PREFIX + _TAG_AND_FLAG.pack(delivery_tag, multiple)
        )
    flags = 2 | multiple
    return frame(FRAME_METHOD, channel, _NACK_PREFIX + _TAG_AND_FLAG.pack(delivery_tag, flags))
