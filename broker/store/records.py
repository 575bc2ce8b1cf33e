"""The payloads of the write-ahead log's records.

Message records are packed by hand (they are on the hot path): the raw route bytes and content
header the publisher sent, then the body, so recovery rebuilds a message without re-encoding it
and can skip the body entirely. Metadata records (declares, deletes, bindings, snapshots) are
AMQP field tables, which already round-trip every argument type a client can send.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any, Final

from broker.core import tables

SNAPSHOT = 1
EXCHANGE_DECLARE = 2
EXCHANGE_DELETE = 3
QUEUE_DECLARE = 4
QUEUE_DELETE = 5
BIND = 6
UNBIND = 7
MESSAGE: Final = 10
SETTLE = 11
DELIVERED = 12
# The last record of a clean shutdown: without it, recovery cannot trust DELIVERED marks to be
# complete (they are logged lazily) and treats every recovered message as possibly delivered.
CLEAN_SHUTDOWN = 13
# A message with the wall-clock time it was routed (its TTL deadlines count from it): MESSAGE's
# payload after 8 bytes of time. Written for every message since; MESSAGE is still read.
MESSAGE_AT: Final = 14
# Dead-lettering as one record: a queue settled one message and its dead-lettered copy entered
# other queues (a MESSAGE_AT payload after the queue and message ids), so a crash cannot leave
# the message in both queues or in neither.
MOVE: Final = 15
MESSAGE_TYPES: Final = frozenset((MESSAGE, MESSAGE_AT, MOVE))
# Messages that came back to a queue counting deliveries (as SETTLE: queue id and message ids;
# an id repeated n times is n returns).
RETURNED = 16
# A value a deduplication exchange (disk persistence) routed: vhost, exchange, key, expiry.
DEDUP = 17
# A logged message moved, unchanged, from one queue to others (a delayed message coming due):
# source queue id, message id, when it was routed, target queue ids. Its MESSAGE record stays.
REROUTE = 18
# Users, vhosts, permissions and policies, whole (they change rarely and are small): the last
# one logged, or the last snapshot's, is the broker's.
RUNTIME = 19

METADATA_TYPES = frozenset(
    (
        SNAPSHOT,
        EXCHANGE_DECLARE,
        EXCHANGE_DELETE,
        QUEUE_DECLARE,
        QUEUE_DELETE,
        BIND,
        UNBIND,
        DEDUP,
        RUNTIME,
    )
)

_MESSAGE_HEAD: Final = struct.Struct(">QH")  # message id, number of queue ids
_ROUTE_LEN: Final = struct.Struct(">H")
HEADER_LEN: Final = struct.Struct(">I")
_IDS_HEAD: Final = struct.Struct(">QI")  # queue id, number of message ids
_ONE_ID: Final = struct.Struct(">Q")
_PUBLISHED_AT: Final = struct.Struct(">d")
_MOVE_HEAD: Final = struct.Struct(">QQ")  # queue id, message id it settled
# A MESSAGE_AT payload's head when it names one queue: time, message id, count, queue, route length.
TIMED_ONE_HEAD: Final = struct.Struct(">dQHQH")
# Sizes and a method of structs, as Finals the compiled read-back holds rather than reads.
_TIMED_ONE_SIZE: Final = TIMED_ONE_HEAD.size
_HEADER_LEN_SIZE: Final = HEADER_LEN.size
_unpack_time: Final = _PUBLISHED_AT.unpack_from


# A MESSAGE_AT record for one queue as a segment summary's row (broker/store/summary.py):
# message id, queue id, time routed, body size, content header size, expiration property (ms,
# -1: none). Native order, eight bytes a field, so each field is a strided slice of the rows.
SUMMARY_ROW = struct.Struct("=QqdQQq")
_ROW_FIELDS = 6


def summary_columns(
    rows: memoryview,
) -> tuple[array[int], array[int], array[float], array[int], array[int], array[int]]:
    """Summary rows as one array per field (message ids, queue ids, times routed, body sizes,
    header sizes, expirations), typed as the recovery index keeps them, without a Python step
    per row."""
    table = array("Q")
    table.frombytes(rows)
    column = [table[index::_ROW_FIELDS] for index in range(_ROW_FIELDS)]
    return (  # signed and float fields reinterpret the bytes; sizes narrow to 32 bits
        array("q", column[0].tobytes()),
        array("q", column[1].tobytes()),
        array("d", column[2].tobytes()),
        _narrowed(column[3]),
        _narrowed(column[4]),
        array("q", column[5].tobytes()),
    )


# Of a native 64-bit field's two 32-bit words, the one that holds its low 32 bits.
_LOW_WORD: Final = 0 if sys.byteorder == "little" else 1


def _narrowed(column: array[int]) -> array[int]:
    """64-bit sizes as 32-bit ones: every other word of their bytes, a strided slice in C where
    converting them one by one took a Python int per row. Body and header sizes fit 32 bits
    (frame and message limits keep them far below 4 GiB)."""
    return array("I", column.tobytes())[_LOW_WORD::2]


def _pack_ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f">{len(ids)}Q", *ids)


# Metadata records hold client argument tables (at most tables.MAX_DEPTH deep) a few levels
# down: a snapshot is a table of lists of definitions whose "arguments" is the client's table.
RECORD_MAX_DEPTH = tables.MAX_DEPTH + 3


def encode_table(values: dict[str, Any]) -> bytes:
    return tables.encode_table(values, RECORD_MAX_DEPTH)


def decode_table(payload: bytes | memoryview) -> dict[str, Any]:
    return tables.decode_table(bytes(payload), 0, RECORD_MAX_DEPTH)[1]


def encode_message(
    msg_id: int, queue_ids: list[int], route: bytes, header: bytes, body: bytes, prefix: bytes = b""
) -> bytes:
    """A MESSAGE payload after `prefix` (`timed` for MESSAGE_AT, `moved` for MOVE). The body
    is copied once, into the record."""
    ids = _ONE_ID.pack(queue_ids[0]) if len(queue_ids) == 1 else _pack_ids(queue_ids)
    return b"".join(
        (
            prefix,
            _MESSAGE_HEAD.pack(msg_id, len(queue_ids)),
            ids,
            _ROUTE_LEN.pack(len(route)),
            route,
            HEADER_LEN.pack(len(header)),
            header,
            body,
        )
    )


def timed(published_at: float) -> bytes:
    """The prefix of a MESSAGE_AT payload: when the message was routed."""
    return _PUBLISHED_AT.pack(published_at)


def moved(queue_id: int, msg_id: int, published_at: float) -> bytes:
    """The prefix of a MOVE payload: the (queue, message) it settles, then `timed`'s."""
    return _MOVE_HEAD.pack(queue_id, msg_id) + _PUBLISHED_AT.pack(published_at)


def decode_message(payload: memoryview) -> tuple[int, tuple[int, ...], bytes, bytes, int]:
    """(message id, queue ids, route bytes, content header, offset of the body in payload)."""
    msg_id, count = _MESSAGE_HEAD.unpack_from(payload, 0)
    offset = _MESSAGE_HEAD.size
    queue_ids = struct.unpack_from(f">{count}Q", payload, offset)
    offset += 8 * count
    (route_len,) = _ROUTE_LEN.unpack_from(payload, offset)
    offset += 2
    route = bytes(payload[offset : offset + route_len])
    offset += route_len
    (header_len,) = HEADER_LEN.unpack_from(payload, offset)
    offset += 4
    header = bytes(payload[offset : offset + header_len])
    return msg_id, queue_ids, route, header, offset + header_len


def read_u16(data: bytes, at: int) -> int:
    """The big-endian u16 at data[at:]. Compiled, these readers are a few native byte reads,
    where a struct call is a method lookup, a tuple and an int object each (the read-back path
    reads several integers from every record of a backlog; a loop over the bytes cost a
    quarter more than these). IndexError past the end."""
    return data[at] << 8 | data[at + 1]


def read_u32(data: bytes, at: int) -> int:
    return data[at] << 24 | data[at + 1] << 16 | data[at + 2] << 8 | data[at + 3]


def read_u64(data: bytes, at: int) -> int:
    return read_u32(data, at) << 32 | read_u32(data, at + 4)


def unpack_message(
    record_type: int, data: bytes, start: int, end: int
) -> tuple[int, float, bytes, bytes, bytes]:
    """(message id, time routed, route bytes, content header, body) of the MESSAGE, MESSAGE_AT
    or MOVE payload at data[start:end], each part sliced from `data` once: the read-back path,
    where a message is built for every delivery of a backlog."""
    if record_type == MESSAGE_AT and read_u16(data, start + 16) == 1:
        # The common case, one queue (TIMED_ONE_HEAD): the integers read in place, compiled,
        # without a struct call and its tuple for each; the time through a bound method held
        # in a Final (compiled code looks a method up by name at every call otherwise).
        (published_at,) = _unpack_time(data, start)
        msg_id, route_len = read_u64(data, start + 8), read_u16(data, start + 26)
        position = start + _TIMED_ONE_SIZE
        return _message_parts(msg_id, published_at, data, position, route_len, end)
    position = start
    published_at = 0.0
    if record_type != MESSAGE:
        if record_type == MOVE:
            position += _MOVE_HEAD.size
        (published_at,) = _PUBLISHED_AT.unpack_from(data, position)
        position += _PUBLISHED_AT.size
    msg_id, count = _MESSAGE_HEAD.unpack_from(data, position)
    position += _MESSAGE_HEAD.size + 8 * count
    (route_len,) = _ROUTE_LEN.unpack_from(data, position)
    return _message_parts(msg_id, published_at, data, position + 2, route_len, end)


def _message_parts(
    msg_id: int, published_at: float, data: bytes, position: int, route_len: int, end: int
) -> tuple[int, float, bytes, bytes, bytes]:
    """`unpack_message`'s result: the route (`route_len` bytes at `position`), header and
    body that follow, sliced from `data`."""
    route = data[position : position + route_len]
    position += route_len
    header_len = read_u32(data, position)
    position += _HEADER_LEN_SIZE
    header = data[position : position + header_len]
    position += header_len
    if position > end:
        raise ValueError("a message record shorter than its own lengths")
    return msg_id, published_at, route, header, data[position:end]


def message_part(record_type: int, payload: memoryview) -> tuple[float, memoryview]:
    """The time a message was routed (0.0 when its record predates MESSAGE_AT) and the
    MESSAGE payload inside a MESSAGE, MESSAGE_AT or MOVE record."""
    if record_type == MESSAGE:
        return 0.0, payload
    if record_type == MOVE:
        payload = payload[_MOVE_HEAD.size :]
    return _PUBLISHED_AT.unpack_from(payload, 0)[0], payload[_PUBLISHED_AT.size :]


_REROUTE_HEAD = struct.Struct(">QQdH")


def encode_reroute(queue_id: int, msg_id: int, routed_at: float, targets: list[int]) -> bytes:
    return _REROUTE_HEAD.pack(queue_id, msg_id, routed_at, len(targets)) + _pack_ids(targets)


def decode_reroute(payload: memoryview) -> tuple[int, int, float, tuple[int, ...]]:
    queue_id, msg_id, routed_at, count = _REROUTE_HEAD.unpack_from(payload, 0)
    targets = struct.unpack_from(f">{count}Q", payload, _REROUTE_HEAD.size)
    return queue_id, msg_id, routed_at, targets


def decode_move(payload: memoryview) -> tuple[int, int]:
    """(queue id, message id) a MOVE record settles."""
    return _MOVE_HEAD.unpack_from(payload, 0)


def encode_ids(queue_id: int, msg_ids: Sequence[int]) -> bytes:
    """SETTLE / DELIVERED: one queue and the messages it settled or handed out."""
    return _IDS_HEAD.pack(queue_id, len(msg_ids)) + _pack_ids(msg_ids)


def decode_ids(payload: memoryview) -> tuple[int, tuple[int, ...]]:
    queue_id, count = _IDS_HEAD.unpack_from(payload, 0)
    return queue_id, struct.unpack_from(f">{count}Q", payload, _IDS_HEAD.size)


def split_route(route: bytes) -> tuple[str, str]:
    """The exchange and routing key from Basic.Publish's raw short strings."""
    exchange_len = route[0]
    exchange = route[1 : 1 + exchange_len].decode("utf-8", "replace")
    routing_key = route[2 + exchange_len :].decode("utf-8", "replace")
    return exchange, routing_key
