"""Lazy property decoding against pamqp's encoder and decoder, and the Message fields on it."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pamqp import commands, frame as pamqp_frame, header as pamqp_header

from broker.core.message import Message
from broker.core.properties import (
    PROPERTY_TYPES,
    PropertyError,
    check_properties,
    decode_properties,
)
from tests.unit.helpers import content_header, make_message

TIMESTAMP = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
ALL_PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "gzip",
    "headers": {
        "int": 1,
        "neg": -5,
        "big": 2**40,
        "str": "x",
        "bool": True,
        "void": None,
        "float": 1.5,
        "nested": {"k": [1, "two", {"three": 3}]},
    },
    "delivery_mode": 2,
    "priority": 7,
    "correlation_id": "corr-1",
    "reply_to": "amq.rabbitmq.reply-to",
    "expiration": "60000",
    "message_id": "msg-1",
    "timestamp": TIMESTAMP,
    "message_type": "order.created",
    "user_id": "guest",
    "app_id": "warren-tests",
}
# pamqp's attribute names where they differ from the wire/property names we decode to.
PAMQP_NAME = {"type": "message_type"}


def _all_fields_header(body_size: int = 5) -> bytes:
    props = commands.Basic.Properties(**ALL_PROPERTIES)
    props.cluster_id = "cluster-1"  # pamqp refuses it in the constructor but still encodes it
    return pamqp_header.ContentHeader(0, body_size, props).marshal()


def _pamqp_decode(header: bytes) -> commands.Basic.Properties:
    frame = b"\x02\x00\x01" + len(header).to_bytes(4, "big") + header + b"\xce"
    consumed, _, value = pamqp_frame.unmarshal(frame)
    assert consumed == len(frame)
    assert isinstance(value, pamqp_header.ContentHeader)
    return value.properties


def test_decode_all_properties_matches_pamqp() -> None:
    """Every property pamqp encodes decodes to the same value pamqp reads back."""
    header = _all_fields_header()
    ours = decode_properties(header)
    theirs = _pamqp_decode(header)
    assert set(ours) == {name for name, _ in PROPERTY_TYPES}
    for name, _ in PROPERTY_TYPES:
        expected = getattr(theirs, PAMQP_NAME.get(name, name))
        if name == "timestamp":
            assert ours[name] == int(expected.timestamp()) == int(TIMESTAMP.timestamp())
        else:
            assert ours[name] == expected, name
    assert ours["headers"] == ALL_PROPERTIES["headers"]
    assert ours["type"] == "order.created"
    assert ours["cluster_id"] == "cluster-1"


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"delivery_mode": 1},
        {"priority": 0},
        {"headers": {}},
        {"app_id": "only-last-but-one"},
        {"content_type": "text/plain", "expiration": "5", "timestamp": TIMESTAMP},
        {"headers": {"a": "b"}, "user_id": "u"},
    ],
)
def test_decode_subsets_match_pamqp(properties: dict[str, Any]) -> None:
    """Sparse property lists decode to exactly the fields that were set."""
    header = content_header(0, **properties)
    ours = decode_properties(header)
    theirs = _pamqp_decode(header)
    expected_names = {"type" if k == "message_type" else k for k in properties}
    assert set(ours) == expected_names
    for name, value in ours.items():
        want = getattr(theirs, PAMQP_NAME.get(name, name))
        if name == "timestamp":
            want = int(want.timestamp())
        assert value == want


def test_decode_truncated_raises_property_error() -> None:
    """Every truncation of a full header raises PropertyError, never another exception."""
    header = _all_fields_header()
    for cut in range(len(header)):
        with pytest.raises(PropertyError):
            decode_properties(header[:cut])


def test_decode_bad_field_table_raises_property_error() -> None:
    """A headers table with an unknown field type is a PropertyError."""
    header = content_header(0, headers={"a": 1})
    start = 14 + 4 + 2  # flags, table length, key shortstr ("\x01a"): then the type octet
    assert header[start - 2 : start] == b"\x01a"
    broken = header[:start] + b"\x00" + header[start + 1 :]
    with pytest.raises(PropertyError):
        decode_properties(broken)


def test_decode_properties_accepts_bytearray() -> None:
    """The header may be bytes or a bytearray (as sliced from the read buffer)."""
    header = _all_fields_header()
    assert decode_properties(bytearray(header)) == decode_properties(header)


@pytest.mark.parametrize(
    ("properties", "persistent"),
    [
        ({"delivery_mode": 2}, True),
        ({"delivery_mode": 1}, False),
        ({}, False),
        ({"content_type": "x", "headers": {"delivery_mode": 2}}, False),
        ({"content_type": "x", "headers": {"a": 1}, "delivery_mode": 2}, True),
        ({"content_type": "x", "priority": 2}, False),
    ],
)
def test_message_persistent(properties: dict[str, Any], persistent: bool) -> None:
    """Only delivery_mode 2 makes a message persistent; absent or 1 is transient."""
    assert make_message("k", b"body", **properties).persistent is persistent


def test_message_properties_are_decoded_on_use_and_not_kept() -> None:
    """properties decode at each use and are not kept on the message (a decoded headers table
    can be many times its bytes, for as long as the message is queued); headers default to an
    empty dict."""
    message = make_message("k", b"b", delivery_mode=2)
    first = message.properties
    assert first == {"delivery_mode": 2}
    assert message.properties is not first
    assert not hasattr(message, "_properties")
    assert message.headers == {}
    with_headers = make_message("k", b"b", headers={"x": "y"})
    assert with_headers.headers == {"x": "y"}


def test_message_keeps_raw_fields() -> None:
    """A Message keeps the route bytes and header it was given, unchanged."""
    header = content_header(3, delivery_mode=1)
    message = Message("ex", "rk", b"\x02ex\x02rk", header, b"abc")
    assert (message.exchange, message.routing_key, message.body) == ("ex", "rk", b"abc")
    assert message.route_bytes == b"\x02ex\x02rk"
    assert message.header is header


def _with_flags(flags: int, properties: bytes) -> bytes:
    return (
        bytes.fromhex("003c0000") + (1).to_bytes(8, "big") + flags.to_bytes(2, "big") + (properties)
    )


@pytest.mark.parametrize(
    "header",
    [
        _with_flags(0x2000, b"\x00\x00\x00\x03\x01kU"),  # unknown field type in headers
        _with_flags(0x2000, b"\x00\x00\x00\x05\x01kS\x00\x00"),  # value past its table
        _with_flags(0x0001, b""),  # a continuation flag with nothing after it
        _with_flags(0x1000, b""),  # delivery-mode announced, absent
        _with_flags(0x8000, b"\x09json"),  # content-type shorter than its length
        _with_flags(0x0040, b"\x00\x00\x00"),  # timestamp cut short
    ],
    ids=["unknown-type", "past-table", "continuation", "octet", "shortstr", "timestamp"],
)
def test_check_properties_refuses_what_no_client_could_decode(header: bytes) -> None:
    """Found by the fuzz test: such headers were stored and delivered, and the consumer's
    client lost its connection decoding them. They are now refused at publish (502)."""
    with pytest.raises(PropertyError) as refused:
        check_properties(header)
    assert refused.value.code == 502
    with pytest.raises(PropertyError):
        decode_properties(header)


def test_check_properties_accepts_valid_headers() -> None:
    check_properties(_all_fields_header())
    for properties in (
        {},
        {"delivery_mode": 2, "message_id": "m-1", "headers": {"a": [1, "b", {"c": None}]}},
    ):
        check_properties(content_header(5, **properties))
