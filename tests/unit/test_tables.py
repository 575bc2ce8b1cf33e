"""The bounded field-table codec: same values as pamqp, linear time, depth and size limits."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import time

import pytest
from hypothesis import given, settings, strategies as st
from pamqp import commands, decode as pamqp_decode, encode as pamqp_encode

from broker.amqp import frames
from broker.core import tables
from broker.core.tables import MAX_DEPTH, TableError, decode_table, encode_table
from tests.support import nested_table_bytes


def nested(depth: int) -> dict:
    table: dict = {}
    for _ in range(depth - 1):
        table = {"a": table}
    return table


def pamqp_reference(raw: bytes) -> dict:
    """pamqp's own decoder, with its nested decoders restored (frames installs ours)."""
    mapping = pamqp_decode.TABLE_MAPPING
    saved = mapping[b"F"], mapping[b"A"]
    mapping[b"F"], mapping[b"A"] = pamqp_decode.field_table, pamqp_decode.field_array
    try:
        return pamqp_decode.field_table(raw)[1]
    finally:
        mapping[b"F"], mapping[b"A"] = saved


scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=20),
    st.binary(max_size=10).filter(lambda b: not _utf8(b)),
    st.none(),
    st.floats(allow_nan=False),
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
    st.decimals(places=2, min_value=-1000, max_value=1000, allow_nan=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
def test_tables_round_trip_and_match_pamqp(table: dict) -> None:
    raw = encode_table(table)
    end, decoded = decode_table(raw)
    assert end == len(raw)
    assert decoded == pamqp_reference(raw)
    assert encode_table(decoded) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_table_error(raw: bytes) -> None:
    data = len(raw).to_bytes(4, "big") + raw
    with contextlib.suppress(TableError):  # anything else escaping fails the test
        decode_table(data)


def test_pamqp_scalar_encodings_decode_as_pamqp_does() -> None:
    table = {
        "i": 7,
        "big": 2**40,
        "neg": -5,
        "s": "text",
        "t": True,
        "d": decimal.Decimal("1.25"),
        "ts": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        "v": None,
        "a": [1, "x", {"n": 2}],
    }
    raw = pamqp_encode.field_table(table)
    assert decode_table(raw)[1] == pamqp_reference(raw)


def test_depth_limit_accepts_the_limit_and_refuses_one_more() -> None:
    assert decode_table(nested_table_bytes(MAX_DEPTH))[1] == nested(MAX_DEPTH)
    with pytest.raises(TableError, match="nested deeper than 100"):
        decode_table(nested_table_bytes(MAX_DEPTH + 1))
    with pytest.raises(TableError, match="nested deeper than 100"):
        decode_table(nested_table_bytes(5000))


def test_arrays_count_towards_depth() -> None:
    value: list = []
    for _ in range(MAX_DEPTH + 5):
        value = [value]
    with pytest.raises(TableError):
        encode_table({"a": value})


def test_encoding_refuses_depth_instead_of_overflowing_the_stack() -> None:
    assert decode_table(encode_table(nested(MAX_DEPTH)))[1] == nested(MAX_DEPTH)
    with pytest.raises(TableError, match="nested deeper"):
        encode_table(nested(MAX_DEPTH + 1))
    with pytest.raises(TableError):
        encode_table(nested(10_000))


def test_entry_cap() -> None:
    body = b"\x01aV" * (tables.MAX_ENTRIES + 1)
    with pytest.raises(TableError, match="more than"):
        decode_table(len(body).to_bytes(4, "big") + body)


def test_many_entries_decode_in_linear_time() -> None:
    """40,000 entries in one 128 KiB frame: pamqp's slicing decoder took seconds."""
    body = b"".join(b"\x02" + i.to_bytes(2, "big") + b"V" for i in range(40_000))
    raw = len(body).to_bytes(4, "big") + body
    started = time.perf_counter()
    with pytest.raises(TableError, match="UTF-8"):  # some 2-byte keys are not UTF-8
        decode_table(raw)
    body = b"".join(b"\x04" + b"%04d" % (i % 10_000) + b"V" for i in range(40_000))
    raw = len(body).to_bytes(4, "big") + body
    assert len(decode_table(raw)[1]) == 10_000
    assert time.perf_counter() - started < 0.5


def test_lengths_are_checked_against_the_enclosing_table() -> None:
    inner = b"S\x00\x00\x00\x10abc"  # claims 16 bytes, the table ends after 3
    body = b"\x01k" + inner
    with pytest.raises(TableError, match="runs past"):
        decode_table(len(body).to_bytes(4, "big") + body + b"x" * 20)


def test_out_of_range_timestamp_is_a_table_error() -> None:
    body = b"\x01kT" + b"\xff" * 8
    with pytest.raises(TableError, match="timestamp"):
        decode_table(len(body).to_bytes(4, "big") + body)


def test_methods_decoded_through_pamqp_use_the_bounded_decoder() -> None:
    """Queue.Bind with arguments nested 300 deep: refused as a malformed frame, which the
    connection answers with 501, instead of a binding the log cannot encode."""
    bind = commands.Queue.Bind(queue="q", exchange="amq.direct", routing_key="k")
    payload = frames.method_frame(1, bind)[7:-1]
    # Replace the empty arguments table at the end of the payload with a 300-deep one.
    assert payload.endswith(b"\x00\x00\x00\x00")
    deep = payload[:-4] + nested_table_bytes(300)
    with pytest.raises(frames.MalformedFrame):
        frames.decode_method(deep)
    legal = payload[:-4] + nested_table_bytes(50)
    assert frames.decode_method(legal).arguments == nested(50)
