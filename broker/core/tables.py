"""AMQP field tables: a bounded decoder and an encoder that round-trips what it decodes.

Clients control these bytes, some before they authenticate (Connection.StartOk's properties), so
decoding must cost no more than the bytes it reads. pamqp's decoder slices the rest of the buffer
at every value (quadratic in the number of entries: a 65,000-entry table took 0.7 s) and recurses
once per nesting level without a limit (300 levels decode, then re-encoding them for the log hit
RecursionError). This decoder walks offsets over one buffer, refuses tables nested deeper than
MAX_DEPTH levels and more than MAX_ENTRIES values per decode, and checks every length against the
table that holds it. RabbitMQ's own limit on nesting is its process stack; 100 levels is far past
anything a client sends on purpose.

Values decode to exactly what pamqp produces (str, or bytes when not UTF-8; signed/unsigned ints by
type letter; datetime for timestamps; Decimal; bytearray for 'x'), so a table read from the wire,
from the log or from pamqp compares and re-encodes the same. `install()` makes pamqp use this
decoder for the table and array fields of every method it unmarshals.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

from pamqp import decode as pamqp_decode, encode as pamqp_encode

from broker.core.fields import Float32

MAX_DEPTH = 100
MAX_ENTRIES = 65_536


class TableError(ValueError):
    """Bytes that are not a field table Warren accepts (malformed, too deep or too many values)."""


_U32 = struct.Struct(">I")
_UTC = datetime.UTC
# type letter -> (size, struct) for the fixed-size values; the others are decoded by hand below.
_FIXED: dict[int, tuple[int, struct.Struct]] = {
    ord("b"): (1, struct.Struct(">b")),
    ord("B"): (1, struct.Struct(">B")),
    ord("s"): (2, struct.Struct(">h")),
    ord("u"): (2, struct.Struct(">H")),
    ord("I"): (4, struct.Struct(">l")),
    ord("i"): (4, struct.Struct(">L")),
    ord("l"): (8, struct.Struct(">q")),
    ord("L"): (8, struct.Struct(">q")),  # pamqp reads L as signed too
    ord("f"): (4, struct.Struct(">f")),
    ord("d"): (8, struct.Struct(">d")),
}
_DECIMAL = struct.Struct(">Bi")
_TIMESTAMP = struct.Struct(">Q")


class _Budget:
    """Values left to decode in this call (the cap on total work, whatever the nesting) and
    the deepest nesting allowed."""

    __slots__ = ("left", "max_depth")

    def __init__(self, max_depth: int) -> None:
        self.left = MAX_ENTRIES
        self.max_depth = max_depth

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TableError(f"field table holds more than {MAX_ENTRIES} values")


def decode_table(
    data: bytes, offset: int = 0, max_depth: int = MAX_DEPTH
) -> tuple[int, dict[str, Any]]:
    """The table whose 4-byte length starts at `offset`: (offset just past it, the table).

    `max_depth` is MAX_DEPTH for what clients send; the log's records wrap client tables in a
    few levels of their own and pass a larger one."""
    return _table(data, offset, len(data), 1, _Budget(max_depth))


def decode_array(data: bytes, offset: int = 0) -> tuple[int, list[Any]]:
    """The field array whose 4-byte length starts at `offset`: (offset past it, the values)."""
    return _array(data, offset, len(data), 1, _Budget(MAX_DEPTH))


def _span(data: bytes, offset: int, limit: int, what: str) -> tuple[int, int]:
    """(start, end) of a 4-byte-length-prefixed span inside data[:limit]."""
    if offset + 4 > limit:
        raise TableError(f"{what} length runs past the end of its field table")
    start = offset + 4
    end = start + _U32.unpack_from(data, offset)[0]
    if end > limit:
        raise TableError(f"{what} of {end - start} bytes runs past the end of its field table")
    return start, end


def _table(
    data: bytes, offset: int, limit: int, depth: int, budget: _Budget
) -> tuple[int, dict[str, Any]]:
    """The table at `offset`, which must end by `limit` (the end of what holds it)."""
    if depth > budget.max_depth:
        raise TableError(f"field table nested deeper than {budget.max_depth} levels")
    position, end = _span(data, offset, limit, "field table")
    table: dict[str, Any] = {}
    while position < end:
        key_end = position + 1 + data[position]
        if key_end > end:
            raise TableError("field table key runs past the end of its table")
        try:
            key = data[position + 1 : key_end].decode("utf-8")
        except UnicodeDecodeError:
            raise TableError("field table key is not UTF-8") from None
        position, table[key] = _value(data, key_end, end, depth, budget)
    return end, table


def _array(
    data: bytes, offset: int, limit: int, depth: int, budget: _Budget
) -> tuple[int, list[Any]]:
    if depth > budget.max_depth:
        raise TableError(f"field array nested deeper than {budget.max_depth} levels")
    position, end = _span(data, offset, limit, "field array")
    values: list[Any] = []
    while position < end:
        position, value = _value(data, position, end, depth, budget)
        values.append(value)
    return end, values


def _value(data: bytes, offset: int, end: int, depth: int, budget: _Budget) -> tuple[int, Any]:
    """One typed value at `offset`, which must end by `end` (its table's end)."""
    budget.spend()
    if offset >= end:
        raise TableError("field value type missing at the end of its table")
    kind = data[offset]
    offset += 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        size, packer = fixed
        if offset + size > end:
            raise TableError(f"field value {chr(kind)!r} runs past the end of its table")
        if kind == 0x66:  # f: kept apart from doubles, for reply texts and re-encoding
            return offset + size, Float32(packer.unpack_from(data, offset)[0])
        return offset + size, packer.unpack_from(data, offset)[0]
    if kind == 0x53:  # S: long string, text when it is UTF-8
        start, stop = _span(data, offset, end, "long string")
        raw = data[start:stop]
        try:
            return stop, raw.decode("utf-8")
        except UnicodeDecodeError:
            return stop, raw
    if kind == 0x46:  # F
        return _table(data, offset, end, depth + 1, budget)
    if kind == 0x41:  # A
        return _array(data, offset, end, depth + 1, budget)
    if kind == 0x74:  # t
        if offset + 1 > end:
            raise TableError("boolean runs past the end of its table")
        return offset + 1, bool(data[offset])
    if kind == 0x56 or kind == 0:  # V, and NUL as pamqp accepts it
        return offset, None
    if kind == 0x78:  # x: byte array
        start, stop = _span(data, offset, end, "byte array")
        return stop, bytearray(data[start:stop])
    if kind == 0x44:  # D: scale, then a signed 32-bit integer
        if offset + 5 > end:
            raise TableError("decimal runs past the end of its table")
        scale, digits = _DECIMAL.unpack_from(data, offset)
        return offset + 5, decimal.Decimal(digits) * (decimal.Decimal(10) ** -scale)
    if kind == 0x54:  # T
        if offset + 8 > end:
            raise TableError("timestamp runs past the end of its table")
        return offset + 8, _timestamp(_TIMESTAMP.unpack_from(data, offset)[0])
    raise TableError(f"unknown field value type {kind:#04x}")


def _timestamp(seconds: float) -> datetime.datetime:
    if seconds > 0xFFFFFFFF:  # as pamqp: past the year 2106 it is most likely milliseconds
        seconds /= 1000.0
    try:
        return datetime.datetime.fromtimestamp(seconds, tz=_UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise TableError(f"timestamp {seconds} is out of range") from error


# ---------------------------------------------------------------------------------- encoding


def encode_table(values: dict[str, Any], max_depth: int = MAX_DEPTH) -> bytes:
    """A field table that decodes back to the same values (with `decode_table`).

    pamqp's encoder writes floats as 32-bit and cannot write raw bytes (a client's non-UTF-8
    string), so those are encoded here; scalars go through pamqp. Nesting past MAX_DEPTH raises
    TableError, so no input can exhaust the stack, and nothing decoded from the wire reaches it.
    """
    return _encode_table(values, 1, max_depth)


def _encode_table(values: dict[str, Any], depth: int, max_depth: int) -> bytes:
    if depth > max_depth:
        raise TableError(f"field table nested deeper than {max_depth} levels")
    body = b"".join(
        pamqp_encode.short_string(str(key)) + _encode_value(value, depth, max_depth)
        for key, value in values.items()
    )
    return len(body).to_bytes(4, "big") + body


def _encode_value(value: Any, depth: int, max_depth: int) -> bytes:
    if isinstance(value, Float32):
        return b"f" + struct.pack(">f", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, bytes | bytearray):
        return b"x" + len(value).to_bytes(4, "big") + bytes(value)
    if isinstance(value, dict):
        return b"F" + _encode_table(value, depth + 1, max_depth)
    if isinstance(value, list | tuple):
        if depth + 1 > max_depth:
            raise TableError(f"field array nested deeper than {max_depth} levels")
        items = b"".join(_encode_value(item, depth + 1, max_depth) for item in value)
        return b"A" + len(items).to_bytes(4, "big") + items
    return pamqp_encode.encode_table_value(value)


# ---------------------------------------------------------------------------------- pamqp


def install() -> None:
    """Make pamqp decode method arguments (and nested values) with this module's decoder.

    pamqp looks its decoders up by type name at call time, so replacing the table and array
    entries covers every method's table fields (both decoders take the bytes from the value on
    and return what they consumed, as pamqp's do); idempotent."""
    pamqp_decode.METHODS["table"] = decode_table
    pamqp_decode.METHODS["array"] = decode_array
    pamqp_decode.TABLE_MAPPING[b"F"] = decode_table
    pamqp_decode.TABLE_MAPPING[b"A"] = decode_array


# ---------------------------------------------------------------------------------- raw entries


def raw_entries(data: bytes, offset: int = 0) -> tuple[int, list[tuple[str, bytes]]]:
    """The table at `offset` as (key, type letter + value bytes) pairs, not decoded: a header
    rewritten by the broker (dead-lettering) keeps every field it does not change byte for
    byte, with the type its publisher chose. Nested values are stepped over by their lengths
    (the bytes were checked when they were published), so this costs the table's top level."""
    position, end = _span(data, offset, len(data), "field table")
    entries: list[tuple[str, bytes]] = []
    while position < end:
        key_end = position + 1 + data[position]
        if key_end > end:
            raise TableError("field table key runs past the end of its table")
        try:
            key = data[position + 1 : key_end].decode("utf-8")
        except UnicodeDecodeError:
            raise TableError("field table key is not UTF-8") from None
        position = _value_end(data, key_end, end)
        entries.append((key, bytes(data[key_end:position])))
    return end, entries


def raw_array_items(raw: bytes) -> list[bytes]:
    """The items (type letter + value bytes) of an 'A' value as `raw_entries` returns it."""
    position, end = _span(raw, 1, len(raw), "field array")
    items = []
    while position < end:
        start = position
        position = _value_end(raw, position, end)
        items.append(raw[start:position])
    return items


_LENGTH_PREFIXED = frozenset(b"SFAx")
_SIZES = {kind: size for kind, (size, _) in _FIXED.items()} | {
    ord("t"): 1,
    ord("V"): 0,
    0: 0,
    ord("D"): 5,
    ord("T"): 8,
}


def _value_end(data: bytes, offset: int, end: int) -> int:
    """Where the typed value at `offset` ends, from its type and length alone."""
    if offset >= end:
        raise TableError("field value type missing at the end of its table")
    kind = data[offset]
    if kind in _LENGTH_PREFIXED:
        return _span(data, offset + 1, end, "field value")[1]
    size = _SIZES.get(kind)
    if size is None:
        raise TableError(f"unknown field value type {kind:#04x}")
    if offset + 1 + size > end:
        raise TableError(f"field value {chr(kind)!r} runs past the end of its table")
    return offset + 1 + size


def join_entries(entries: list[tuple[str, bytes]]) -> bytes:
    """A table (4-byte length first) from (key, raw value) pairs."""
    body = b"".join(pamqp_encode.short_string(key) + raw for key, raw in entries)
    return len(body).to_bytes(4, "big") + body


def join_array(items: list[bytes]) -> bytes:
    """An 'A' value from raw items."""
    body = b"".join(items)
    return b"A" + len(body).to_bytes(4, "big") + body
