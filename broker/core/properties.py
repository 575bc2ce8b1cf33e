"""Lazy decoding of an AMQP content header's property list.

The broker keeps the header bytes the publisher sent and writes them back out unchanged; it only
needs a few fields (delivery-mode, priority, expiration, headers). Decoding walks the property
flags once and stops at the last field asked for, so a plain publish pays nothing.
"""

from __future__ import annotations

import struct
from typing import Any

from broker.core.errors import (
    PRECONDITION_FAILED,
    SYNTAX_ERROR,
    ChannelException,
    ConnectionException,
)
from broker.core.tables import decode_table

# Property order and wire types as the spec lists them (bit 15 first).
PROPERTY_TYPES = (
    ("content_type", "shortstr"),
    ("content_encoding", "shortstr"),
    ("headers", "table"),
    ("delivery_mode", "octet"),
    ("priority", "octet"),
    ("correlation_id", "shortstr"),
    ("reply_to", "shortstr"),
    ("expiration", "shortstr"),
    ("message_id", "shortstr"),
    ("timestamp", "timestamp"),
    ("type", "shortstr"),
    ("user_id", "shortstr"),
    ("app_id", "shortstr"),
    ("cluster_id", "shortstr"),
)
_LONG_LONG = struct.Struct(">Q")


class PropertyError(ConnectionException, ValueError):
    """The property list is malformed (truncated or with a bad field table): a syntax error
    that closes the connection, found only when a property is first needed."""

    def __init__(self, text: str) -> None:
        super().__init__(SYNTAX_ERROR, text)


def decode_properties(raw: bytes | bytearray) -> dict[str, Any]:
    """Decode every property present in a content header payload (class, weight, size, flags...)."""
    header = bytes(raw)  # the same object when it is bytes already
    if len(header) < 14:
        raise PropertyError("content header shorter than 14 bytes")
    flags = int.from_bytes(header[12:14], "big")
    offset = 14
    while flags & 1:  # continuation flag words: Basic has none, so skip any present
        flags_more = header[offset : offset + 2]
        if len(flags_more) < 2:
            raise PropertyError("truncated property flags")
        offset += 2
        flags = int.from_bytes(flags_more, "big") | (flags & 0xFFFE)
    values: dict[str, Any] = {}
    data = memoryview(header)
    try:
        for bit, (name, kind) in zip(range(15, 1, -1), PROPERTY_TYPES, strict=True):
            if not flags & (1 << bit):
                continue
            if kind == "shortstr":
                length = data[offset]
                values[name] = bytes(data[offset + 1 : offset + 1 + length]).decode(
                    "utf-8", "replace"
                )
                offset += 1 + length
                if offset > len(data):
                    raise PropertyError(f"truncated property {name}")
            elif kind == "octet":
                values[name] = data[offset]
                offset += 1
            elif kind == "timestamp":
                values[name] = _LONG_LONG.unpack_from(data, offset)[0]
                offset += 8
            else:
                offset, values[name] = decode_table(header, offset)
    except (IndexError, struct.error, ValueError, TypeError) as error:
        raise PropertyError(f"malformed content header properties: {error}") from error
    return values


_PRESENCE = tuple(
    (1 << bit, kind) for bit, (_, kind) in zip(range(15, 1, -1), PROPERTY_TYPES, strict=True)
)


def check_properties(header: bytes) -> None:
    """Raise PropertyError unless the property list decodes, without decoding its strings.

    RabbitMQ decodes the properties of every publish, so a header no client could read never
    reaches a consumer (one that did would lose its connection reading it, and a requeued
    message the next consumer's too). A channel calls this only when a publisher's header
    differs from its previous one."""
    if len(header) < 14 or header[13] & 1:
        decode_properties(header)  # short or with flag continuations: the full decoder says
        return
    flags = header[12] << 8 | header[13]
    offset = 14
    try:
        for mask, kind in _PRESENCE:
            if flags & mask:
                if kind == "shortstr":
                    offset += 1 + header[offset]
                elif kind == "octet":
                    offset += 1
                elif kind == "timestamp":
                    offset += 8
                else:
                    offset = decode_table(header, offset)[0]
    except (IndexError, ValueError) as error:
        raise PropertyError(f"malformed content header properties: {error}") from error
    if offset > len(header):
        raise PropertyError("content header properties run past the end of the header")


def delivery_mode(header: bytes) -> int:
    """The delivery-mode property without decoding the rest (it decides what gets logged).

    Only content-type, content-encoding and headers come before it; their lengths are skipped.
    """
    flags = header[12]
    if not flags & 0x10:
        return 0
    offset = 14
    try:
        if flags & 0x80:
            offset += 1 + header[offset]
        if flags & 0x40:
            offset += 1 + header[offset]
        if flags & 0x20:
            offset += 4 + int.from_bytes(header[offset : offset + 4], "big")
        return header[offset]
    except IndexError:
        return 0


# RabbitMQ's upper bound for TTLs, queue expiry and expirations, in milliseconds: ten years
# (rabbit_misc:check_expiry in the RabbitMQ 3.10 this project is checked against).
MAX_EXPIRY_MS = 315_360_000_000


def timing(header: bytes) -> tuple[int, int]:
    """(priority, expiration in ms or -1): the two properties that order and expire a message.

    An expiration that is not a decimal count of milliseconds within RabbitMQ's bound is refused
    as RabbitMQ refuses it: the publishing channel is closed with 406."""
    values = decode_properties(header)
    priority = values.get("priority") or 0
    expiration = values.get("expiration")
    if expiration is None:
        return priority, -1
    return priority, parse_expiration(expiration)


def parse_expiration(text: str) -> int:
    """The expiration property as RabbitMQ parses it (rabbit_basic:parse_expiration)."""
    digits = text.lstrip("+-")
    sign_len = len(text) - len(digits)
    number_len = len(digits) - len(digits.lstrip("0123456789"))
    if sign_len > 1 or number_len == 0:
        raise _invalid_expiration(text, "no_integer")
    if number_len < len(digits):
        raise _invalid_expiration(text, f'{{leftover_string,"{digits[number_len:]}"}}')
    value = int(text[: sign_len + number_len])
    if value < 0:
        raise _invalid_expiration(text, f"{{value_negative,{value}}}")
    if value > MAX_EXPIRY_MS:
        raise _invalid_expiration(text, f"{{value_too_large,{value}}}")
    return value


def _invalid_expiration(text: str, reason: str) -> ChannelException:
    return ChannelException(PRECONDITION_FAILED, f"invalid expiration '{text}': {reason}")
