"""Rewriting a content header the way RabbitMQ does, keeping every other byte as it was.

The broker rewrites a publisher's properties in two places: dead-lettering (x-death headers,
`expiration` removed) and sender-selected distribution (the BCC header is removed before the
message is stored). Decoding and re-encoding the whole property list would change the types of
fields it did not touch (pamqp picks integer widths by value), and consumers read those types;
so the property list is split into raw fields and only the changed ones are rebuilt.
"""

from __future__ import annotations

from broker.core.properties import PropertyError, decode_properties
from broker.core.tables import join_entries, raw_entries

HEADERS = 0x2000  # the headers property's flag bit
EXPIRATION = 0x0100
_KINDS = (
    (0x8000, "shortstr"),
    (0x4000, "shortstr"),
    (HEADERS, "table"),
    (0x1000, "octet"),
    (0x0800, "octet"),
    (0x0400, "shortstr"),
    (0x0200, "shortstr"),
    (EXPIRATION, "shortstr"),
    (0x0080, "shortstr"),
    (0x0040, "timestamp"),
    (0x0020, "shortstr"),
    (0x0010, "shortstr"),
    (0x0008, "shortstr"),
    (0x0004, "shortstr"),
)


def split_properties(header: bytes) -> tuple[bytes, dict[int, bytes]]:
    """(class, weight and body size, {flag bit: the property's raw bytes}).

    Flag continuation words (Basic has no properties past the first word) are read as
    `decode_properties` reads them and not written back: the rebuilt header has one."""
    if len(header) < 14:
        decode_properties(header)  # raises for what is malformed
    flags = header[12] << 8 | header[13]
    offset = 14
    fields: dict[int, bytes] = {}
    try:
        while flags & 1:
            more = header[offset : offset + 2]
            if len(more) < 2:
                raise PropertyError("truncated property flags")
            offset += 2
            flags = int.from_bytes(more, "big") | (flags & 0xFFFE)
        for mask, kind in _KINDS:
            if not flags & mask:
                continue
            start = offset
            if kind == "shortstr":
                offset += 1 + header[offset]
            elif kind == "octet":
                offset += 1
            elif kind == "timestamp":
                offset += 8
            else:  # the table's own length: its contents were checked at publish
                offset += 4 + int.from_bytes(header[offset : offset + 4], "big")
            if offset > len(header):
                raise PropertyError("content header properties run past the end of the header")
            fields[mask] = header[start:offset]
    except IndexError as error:
        raise PropertyError(f"malformed content header properties: {error}") from error
    return header[:12], fields


def join_properties(prefix: bytes, fields: dict[int, bytes]) -> bytes:
    flags = 0
    for mask in fields:
        flags |= mask
    ordered = b"".join(fields[mask] for mask, _ in _KINDS if mask in fields)
    return prefix + flags.to_bytes(2, "big") + ordered


def header_entries(fields: dict[int, bytes]) -> list[tuple[str, bytes]]:
    """The headers table as raw (key, value) pairs ([] when there is none)."""
    raw = fields.get(HEADERS)
    return raw_entries(raw)[1] if raw is not None else []


def set_header_entries(fields: dict[int, bytes], entries: list[tuple[str, bytes]]) -> None:
    """Replace the headers table; an empty one is kept (RabbitMQ keeps the property)."""
    fields[HEADERS] = join_entries(entries)
