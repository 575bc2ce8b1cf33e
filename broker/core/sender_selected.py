"""Sender-selected distribution: the CC and BCC headers add routing keys to a publish.

RabbitMQ routes a message by its routing key and every long string in the `CC` and `BCC`
header arrays, and removes `BCC` from the message before it is stored, so no consumer sees it.
Most publishes carry neither; a byte search for the two keys keeps those on the fast path.
"""

from __future__ import annotations

from broker.core.header_edit import (
    header_entries,
    join_properties,
    set_header_entries,
    split_properties,
)
from broker.core.message import BccMessage, Message
from broker.core.tables import TableError, decode_array

HEADERS_FLAG = 0x20  # the headers property's bit in the high byte of the property flags
_CC = b"\x02CCA"  # the key as a table holds it, then the array type letter
_BCC = b"\x03BCCA"


def string_array(raw: bytes | None) -> list[str]:
    """The long strings of an array value (anything else routes nowhere, as in RabbitMQ)."""
    if raw is None or raw[:1] != b"A":
        return []
    try:
        return [value for value in decode_array(raw, 1)[1] if isinstance(value, str)]
    except TableError:
        return []


def may_select(header: bytes) -> bool:
    """Whether a header with a headers table may carry CC or BCC (a byte search)."""
    return _CC in header or _BCC in header


def routing_keys(message: Message) -> tuple[list[str], list[str] | None]:
    """([routing key, CC..., BCC...], the BCC keys when there is a BCC header), or
    ([], None) when the message has neither header (route by its routing key alone)."""
    header = message.header
    if not header[12] & HEADERS_FLAG or (_CC not in header and _BCC not in header):
        return [], None
    entries = dict(header_entries(split_properties(header)[1]))
    cc, bcc = string_array(entries.get("CC")), string_array(entries.get("BCC"))
    has_bcc = bcc if "BCC" in entries else None
    if not cc and not bcc:
        return [], has_bcc
    return list(dict.fromkeys((message.routing_key, *cc, *bcc))), has_bcc


def without_bcc(message: Message, bcc: list[str]) -> Message:
    """The message with its BCC header removed, as RabbitMQ stores it (the keys are kept for
    a dead-lettered copy's routing)."""
    prefix, props = split_properties(message.header)
    set_header_entries(props, [item for item in header_entries(props) if item[0] != "BCC"])
    copy = BccMessage(
        message.exchange,
        message.routing_key,
        message.route_bytes,
        join_properties(prefix, props),
        message.body,
        tuple(bcc),
    )
    copy.published_at = message.published_at
    return copy
