"""The payloads of the write-ahead log's records: MESSAGE, SETTLE / DELIVERED id lists, metadata
field tables and the route bytes of Basic.Publish. Each encoder must be undone exactly by its
decoder, because recovery rebuilds the broker from nothing else."""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import pytest

from broker.amqp.frames import short_string
from broker.store import records
from tests.unit.helpers import content_header

# ------------------------------------------------------------------------------------ MESSAGE


def _round_trip_message(
    msg_id: int, queue_ids: list[int], route: bytes, header: bytes, body: bytes
) -> tuple[int, tuple[int, ...], bytes, bytes, bytes]:
    """Encode, decode from a memoryview as replay hands it over, and cut the body out."""
    payload = records.encode_message(msg_id, queue_ids, route, header, body)
    view = memoryview(payload)
    got_id, got_queues, got_route, got_header, body_offset = records.decode_message(view)
    return got_id, got_queues, got_route, got_header, bytes(view[body_offset:])


@pytest.mark.parametrize("queue_ids", [[7], [1, 2], [3, 1, 2**40, 9]], ids=["one", "two", "four"])
def test_message_round_trip_keeps_every_queue_id_in_order(queue_ids: list[int]) -> None:
    """Every queue id comes back, in the order written, including ids beyond 32 bits."""
    route = short_string("orders") + short_string("eu.new")
    header = content_header(5, delivery_mode=2)
    decoded = _round_trip_message(42, queue_ids, route, header, b"hello")
    assert decoded == (42, tuple(queue_ids), route, header, b"hello")


def test_message_round_trip_with_empty_body_and_empty_route() -> None:
    """An empty body and the default exchange with an empty routing key survive: the body offset
    is the end of the payload, not a guess."""
    route = short_string("") + short_string("")
    header = content_header(0, delivery_mode=2)
    payload = records.encode_message(1, [1], route, header, b"")
    msg_id, queue_ids, got_route, got_header, body_offset = records.decode_message(
        memoryview(payload)
    )
    assert (msg_id, queue_ids, got_route, got_header) == (1, (1,), route, header)
    assert body_offset == len(payload)


def test_message_round_trip_binary_header_and_body() -> None:
    """Header and body bytes are opaque: every byte value, including what looks like framing
    (0xCE frame-end, NULs, length-like prefixes), comes back unchanged."""
    header = content_header(
        256,
        delivery_mode=2,
        content_type="application/octet-stream",
        headers={"blob": bytearray(range(256)), "nested": {"n": [1, 2.5, None]}},
    )
    body = bytes(range(256)) + b"\xce\x00\x00\x00\xff"
    route = short_string("bin") + short_string("\u00e9t\u00e9")
    decoded = _round_trip_message(2**63 - 1, [5], route, header, body)
    assert decoded == (2**63 - 1, (5,), route, header, body)


def test_message_layout_is_fixed_head_then_ids_route_header_body() -> None:
    """Pins the on-disk layout: changing it makes existing logs unreadable."""
    payload = records.encode_message(3, [1, 2], b"\x01x\x01y", b"HDR", b"BODY")
    expected = (
        struct.pack(">QH", 3, 2)
        + struct.pack(">QQ", 1, 2)
        + struct.pack(">H", 4)
        + b"\x01x\x01y"
        + struct.pack(">I", 3)
        + b"HDR"
        + b"BODY"
    )
    assert payload == expected


def test_decode_message_accepts_bytes_and_returns_bytes_not_views() -> None:
    """Route and header come back as bytes (not views into a segment that is later freed)."""
    payload = records.encode_message(9, [1], b"\x00\x01k", b"H", b"B")
    _, _, route, header, _ = records.decode_message(memoryview(bytearray(payload)))
    assert type(route) is bytes and type(header) is bytes


# ------------------------------------------------------------------------ SETTLE / DELIVERED


@pytest.mark.parametrize(
    "msg_ids",
    [[], [17], list(range(1, 1001)), [2**64 - 1, 1, 2**33]],
    ids=["none", "one", "thousand", "extremes"],
)
def test_ids_round_trip(msg_ids: list[int]) -> None:
    """A queue id and a list of message ids (0, 1 or many, up to 64 bits) come back unchanged."""
    payload = records.encode_ids(12, msg_ids)
    assert len(payload) == 12 + 8 * len(msg_ids)
    assert records.decode_ids(memoryview(payload)) == (12, tuple(msg_ids))


def test_ids_decode_ignores_nothing_and_reads_count_from_the_head() -> None:
    """The count in the head decides how many ids are read, so trailing bytes are not ids."""
    payload = records.encode_ids(3, [4, 5]) + b"\x00" * 8
    assert records.decode_ids(memoryview(payload)) == (3, (4, 5))


# ------------------------------------------------------------------------------- field tables


def _definition_table() -> dict[str, Any]:
    """A queue/binding definition with every argument type a client can send that pamqp
    decodes to a value it can also encode."""
    return {
        "vhost": "/prod",
        "name": "orders",
        "id": 12,
        "to_exchange": False,
        "auto_delete": True,
        "arguments": {
            "x-message-ttl": 60000,
            "x-max-length-bytes": 2**40,
            "x-negative": -3,
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            "x-flag-off": False,
            "x-none": None,
            "x-decimal": decimal.Decimal("1.25"),
            "x-half": 0.5,
            "x-when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
            "x-raw": bytearray(b"\x00\xff\xce"),
            "x-list": [1, "two", [3, {"four": 4}], {}],
            "x-nested": {"level1": {"level2": {"level3": ["deep", True]}}},
            "x-unicode": "\u00fcber \u2603",
        },
    }


def test_field_table_round_trips_nested_argument_types() -> None:
    """Metadata records keep argument values and their Python types through nesting."""
    table = _definition_table()
    decoded = records.decode_table(memoryview(records.encode_table(table)))
    assert decoded == table
    arguments = decoded["arguments"]
    assert type(arguments["x-raw"]) is bytearray
    assert type(arguments["x-decimal"]) is decimal.Decimal
    assert arguments["x-single-active-consumer"] is True
    assert arguments["x-flag-off"] is False


def test_field_table_round_trips_a_snapshot_shape() -> None:
    """A snapshot (lists of tables plus next-id counters) decodes back to the same structure."""
    snapshot = {
        "exchanges": [{"vhost": "/", "name": "x", "type": "topic", "arguments": {}}],
        "queues": [_definition_table(), {"vhost": "/", "name": "q2", "id": 2, "arguments": {}}],
        "bindings": [],
        "next_queue_id": 13,
        "next_msg_id": 2**40,
    }
    assert records.decode_table(records.encode_table(snapshot)) == snapshot


def test_empty_field_table() -> None:
    """An empty table is a zero length and nothing else."""
    assert records.encode_table({}) == b"\x00\x00\x00\x00"
    assert records.decode_table(memoryview(b"\x00\x00\x00\x00")) == {}


def test_field_table_keeps_double_precision() -> None:
    """A double-precision argument (e.g. a headers-exchange binding value) comes back exactly;
    otherwise bindings stop matching and redeclares fail equivalence after a restart."""
    table = {"arguments": {"x-match": "all", "price": 1.1, "ratio": 1 / 3}}
    assert records.decode_table(records.encode_table(table)) == table


def test_field_table_accepts_what_pamqp_decodes_from_a_client() -> None:
    """Whatever pamqp hands the broker as an argument value must be loggable: a longstr holding
    invalid UTF-8 arrives as bytes."""
    from pamqp import decode

    wire = b"S" + struct.pack(">I", 2) + b"\xff\xfe"
    _, value = decode.embedded_value(wire)
    assert value == b"\xff\xfe"
    table = {"arguments": {"x-note": value}}
    assert records.decode_table(records.encode_table(table)) == table


# ------------------------------------------------------------------------------- split_route


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [
        ("", ""),
        ("", "queue-name"),
        ("amq.topic", "a.b.#"),
        ("x" * 255, "k" * 255),
        ("\u00e9change", "cl\u00e9.\u2603"),
    ],
    ids=["default-empty", "default-exchange", "topic", "max-lengths", "utf8"],
)
def test_split_route(exchange: str, routing_key: str) -> None:
    """Basic.Publish's two short strings split back into exchange and routing key."""
    route = short_string(exchange) + short_string(routing_key)
    assert records.split_route(route) == (exchange, routing_key)


def test_split_route_replaces_invalid_utf8_instead_of_failing() -> None:
    """Recovery never dies on a name that is not UTF-8: bad bytes become U+FFFD."""
    route = b"\x02\xff\xfe" + b"\x01\xff"
    assert records.split_route(route) == ("\ufffd\ufffd", "\ufffd")


@pytest.mark.parametrize("value", [0, 1, 0xFF, 0x1234, 0xFFFF])
def test_read_u16_is_a_big_endian_short(value: int) -> None:
    data = b"\xaa" + struct.pack(">H", value)
    assert records.read_u16(data, 1) == value


@pytest.mark.parametrize("value", [0, 1, 0x80, 0x12345678, 0xFFFFFFFF])
def test_read_u32_is_a_big_endian_long(value: int) -> None:
    data = b"\xaa\xbb" + struct.pack(">I", value)
    assert records.read_u32(data, 2) == value


@pytest.mark.parametrize("value", [0, 1, 1 << 31, 1 << 62, (1 << 64) - 1])
def test_read_u64_is_a_big_endian_long_long_past_the_native_int_range(value: int) -> None:
    data = struct.pack(">Q", value) + b"\xcc"
    assert records.read_u64(data, 0) == value


def test_reading_past_the_end_raises_index_error() -> None:
    with pytest.raises(IndexError):
        records.read_u32(b"\x00\x00\x00", 0)
    with pytest.raises(IndexError):
        records.read_u64(b"\x00" * 8, 1)


def test_record_types_are_distinct_and_metadata_set_is_exact() -> None:
    """Record type numbers are on disk: they must stay distinct, in 1..255, and only the
    metadata ones are decoded as field tables."""
    types = {
        "SNAPSHOT": records.SNAPSHOT,
        "EXCHANGE_DECLARE": records.EXCHANGE_DECLARE,
        "EXCHANGE_DELETE": records.EXCHANGE_DELETE,
        "QUEUE_DECLARE": records.QUEUE_DECLARE,
        "QUEUE_DELETE": records.QUEUE_DELETE,
        "BIND": records.BIND,
        "UNBIND": records.UNBIND,
        "MESSAGE": records.MESSAGE,
        "SETTLE": records.SETTLE,
        "DELIVERED": records.DELIVERED,
        "CLEAN_SHUTDOWN": records.CLEAN_SHUTDOWN,
        "MESSAGE_AT": records.MESSAGE_AT,
        "MOVE": records.MOVE,
        "RETURNED": records.RETURNED,
        "DEDUP": records.DEDUP,
        "REROUTE": records.REROUTE,
        "RUNTIME": records.RUNTIME,
    }
    assert len(set(types.values())) == len(types)
    assert all(0 < value < 256 for value in types.values())
    assert {
        records.SNAPSHOT,
        records.EXCHANGE_DECLARE,
        records.EXCHANGE_DELETE,
        records.QUEUE_DECLARE,
        records.QUEUE_DELETE,
        records.BIND,
        records.UNBIND,
        records.DEDUP,
        records.RUNTIME,
    } == records.METADATA_TYPES


def test_summary_columns_narrow_sizes_up_to_32_bits_exactly() -> None:
    """Body and header sizes leave the rows as 32-bit arrays, taken as every other word of the
    64-bit fields: each value comes back whole, up to 2**32 - 1, beside its neighbours."""
    values = [(7, 3, 1.5, 0, 0, -1), (8, 3, 2.5, 2**32 - 1, 2**32 - 1, 60_000),
              (2**63 - 1, 2**62, -0.0, 256, 65_535, -2**63)]  # fmt: skip
    rows = b"".join(records.SUMMARY_ROW.pack(*row) for row in values)
    msg_ids, queue_ids, published_at, sizes, header_lens, ttls = records.summary_columns(
        memoryview(rows)
    )
    assert (sizes.typecode, header_lens.typecode) == ("I", "I")
    assert list(zip(msg_ids, queue_ids, published_at, sizes, header_lens, ttls, strict=True)) == (
        values
    )
