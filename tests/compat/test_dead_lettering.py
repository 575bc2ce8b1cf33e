"""Dead-lettering (x-dead-letter-exchange / x-dead-letter-routing-key) as RabbitMQ 3.10 does it.

A message is dead-lettered when it is rejected/nacked with requeue=false ('rejected'), expires
('expired') or is dropped from the head of a full queue ('maxlen'); never by purge, queue delete,
queue expiry or a requeue. The copy is republished to the DLX with an `x-death` header (an array
of tables, newest first, one per (queue, reason)) and `x-first-death-*` headers.

Clients read x-death with type-specific decoders, so the wire format matters: some tests read the
content header with a small type-preserving field-table decoder below (pika and pamqp decode the
values but drop the AMQP type tags).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

import pika
import pytest
from pamqp import commands, header
from pamqp.body import ContentBody
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    get_all,
    message_count,
    publish_confirmed,
    pump,
    queue_exists,
    routed,
    wait_message_count,
    wait_until,
)
from tests.compat.rawamqp import RawAMQP, RawTimeout, raw_connection

pytestmark = pytest.mark.timeout(30)


# --- a type-preserving reader for content headers -------------------------------------------------

Field = tuple[str, Any]  # (AMQP field type tag, value); 'A' holds list[Field], 'F' holds Table
Table = list[tuple[str, Field]]  # a field table in wire order

_FIXED: dict[str, str] = {
    "t": ">B",
    "b": ">b",
    "B": ">B",
    "s": ">h",
    "u": ">H",
    "I": ">i",
    "i": ">I",
    "l": ">q",
    "T": ">Q",
    "f": ">f",
    "d": ">d",
}


def _decode_value(data: bytes, offset: int) -> tuple[Field, int]:
    tag = chr(data[offset])
    offset += 1
    if tag in _FIXED:
        fmt = _FIXED[tag]
        (value,) = struct.unpack_from(fmt, data, offset)
        return (tag, bool(value) if tag == "t" else value), offset + struct.calcsize(fmt)
    if tag == "D":
        scale, digits = struct.unpack_from(">BI", data, offset)
        return (tag, (scale, digits)), offset + 5
    if tag in ("S", "x"):
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        return (tag, bytes(data[offset : offset + size])), offset + size
    if tag == "A":
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        end, items = offset + size, []
        while offset < end:
            item, offset = _decode_value(data, offset)
            items.append(item)
        return (tag, items), offset
    if tag == "F":
        table, offset = decode_table(data, offset)
        return (tag, table), offset
    if tag == "V":
        return (tag, None), offset
    raise AssertionError(f"unknown field type tag {tag!r} at offset {offset - 1}")


def decode_table(data: bytes, offset: int = 0) -> tuple[Table, int]:
    """A field table (4-byte size first) as [(key, (tag, value))] in wire order."""
    (size,) = struct.unpack_from(">I", data, offset)
    offset += 4
    end, table = offset + size, []
    while offset < end:
        length = data[offset]
        key = bytes(data[offset + 1 : offset + 1 + length]).decode()
        value, offset = _decode_value(data, offset + 1 + length)
        table.append((key, value))
    assert offset == end, "field table size does not match its content"
    return table, offset


def plain(field: Field) -> Any:
    """A tagged value without its tags ('S' as str, arrays as lists, tables as dicts)."""
    tag, value = field
    if tag == "S":
        return value.decode()
    if tag == "A":
        return [plain(item) for item in value]
    if tag == "F":
        return {key: plain(item) for key, item in value}
    return value


def tags(table: Table) -> list[tuple[str, str]]:
    """[(key, type tag)] of a table in wire order."""
    return [(key, tag) for key, (tag, _) in table]


PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


@dataclass
class RawMessage:
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: dict[str, Any]  # the properties present on the wire; headers as a Table
    body: bytes

    @property
    def headers(self) -> Table:
        return self.properties.get("headers", [])

    def header(self, key: str) -> Field:
        return dict(self.headers)[key]

    @property
    def x_death(self) -> list[Table]:
        """The x-death entries (each a Table) in wire order."""
        tag, entries = self.header("x-death")
        assert tag == "A"
        assert all(entry_tag == "F" for entry_tag, _ in entries)
        return [table for _, table in entries]


def _decode_properties(payload: bytes) -> dict[str, Any]:
    """A content header frame's payload (class, weight, body size, flags, properties)."""
    _, _, _, flags = struct.unpack_from(">HHQH", payload, 0)
    offset, properties = 14, {}
    for bit, prop in enumerate(PROPERTY_NAMES):
        if not flags & (1 << (15 - bit)):
            continue
        if prop == "headers":
            properties[prop], offset = decode_table(payload, offset)
        elif prop in ("delivery_mode", "priority"):
            properties[prop], offset = payload[offset], offset + 1
        elif prop == "timestamp":
            (properties[prop],) = struct.unpack_from(">Q", payload, offset)
            offset += 8
        else:
            size = payload[offset]
            properties[prop] = bytes(payload[offset + 1 : offset + 1 + size]).decode()
            offset += 1 + size
    assert offset == len(payload), "content header has bytes after its properties"
    return properties


def get_raw(client: RawAMQP, queue: str, no_ack: bool = True, channel: int = 1) -> RawMessage:
    """Basic.Get on a raw connection, keeping the content header's bytes (and so the tags)."""
    client.send(commands.Basic.Get(queue=queue, no_ack=no_ack), channel)
    _, reply = client.read_frame()
    assert isinstance(reply, commands.Basic.GetOk), f"expected GetOk, got {reply.name}"
    frame_header = client.read_bytes(7)
    frame_type, _, size = struct.unpack(">BHI", frame_header)
    assert frame_type == 2, f"expected a content header frame, got type {frame_type}"
    payload = client.read_bytes(size + 1)[:-1]
    (body_size,) = struct.unpack_from(">Q", payload, 4)
    body = b""
    while len(body) < body_size:
        _, part = client.read_frame()
        assert isinstance(part, ContentBody), part.name
        body += part.value
    return RawMessage(
        reply.delivery_tag,
        reply.redelivered,
        reply.exchange,
        reply.routing_key,
        _decode_properties(payload),
        body,
    )


def raw_get(amqp_url: str, queue: str) -> RawMessage:
    """Take one message (auto-ack) from `queue` on a throwaway raw connection."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        return get_raw(client, queue)


def raw_publish(
    client: RawAMQP,
    routing_key: str,
    body: bytes,
    exchange: str = "",
    mandatory: bool = False,
    channel: int = 1,
) -> None:
    client.send(
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
        channel,
    )
    client.send(header.ContentHeader(0, len(body), commands.Basic.Properties()), channel)
    if body:
        client.send(ContentBody(body), channel)


# --- helpers --------------------------------------------------------------------------------------


def _dead_letter_pair(
    channel: BlockingChannel, cleanup: Cleanup, name: str, **source_args: Any
) -> tuple[str, str]:
    """A source queue that dead-letters via the default exchange (DLRK) into a new queue."""
    dead = cleanup.queue(f"{name}-dead")
    source = cleanup.queue(f"{name}-src")
    channel.queue_declare(dead)
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead, **source_args}
    channel.queue_declare(source, arguments=arguments)
    return source, dead


def _deaths(properties: pika.BasicProperties) -> list[dict[str, Any]]:
    """pika's view of the x-death entries (values only)."""
    return properties.headers["x-death"]


def _reject(channel: BlockingChannel, queue: str) -> None:
    """Basic.Get one message and reject it without requeue."""
    method, _, _ = channel.basic_get(queue)
    assert method is not None, f"no message in {queue}"
    channel.basic_reject(method.delivery_tag, requeue=False)


FIRST_DEATH_ORDER = [
    ("count", "l"),
    ("reason", "S"),
    ("queue", "S"),
    ("time", "T"),
    ("exchange", "S"),
    ("routing-keys", "A"),
]
SORTED_ORDER = [
    ("count", "l"),
    ("exchange", "S"),
    ("queue", "S"),
    ("reason", "S"),
    ("routing-keys", "A"),
    ("time", "T"),
]


# --- why messages are dead-lettered ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["reject", "nack", "nack-multiple", "consumer-reject"])
def test_reject_or_nack_without_requeue_dead_letters_as_rejected(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup, how: str
) -> None:
    """Basic.Reject / Basic.Nack (also multiple) with requeue=false dead-letters each message,
    in order, with reason 'rejected'; the copy is a fresh delivery (redelivered=false) even if
    the original had been redelivered."""
    source, dead = _dead_letter_pair(channel, cleanup, name)
    publish_confirmed(connection, source, [b"m0", b"m1", b"m2"])
    if how == "consumer-reject":
        seen: list[int] = []

        def on_message(ch: BlockingChannel, method: Any, _props: Any, _body: bytes) -> None:
            seen.append(method.delivery_tag)
            ch.basic_reject(method.delivery_tag, requeue=False)

        channel.basic_consume(source, on_message)
        wait_until(connection, lambda: len(seen) == 3, what="3 deliveries")
    else:
        first, _, _ = channel.basic_get(source)
        channel.basic_nack(first.delivery_tag, requeue=True)  # redelivered from now on
        tags_ = [channel.basic_get(source)[0].delivery_tag for _ in range(3)]
        if how == "reject":
            for tag in tags_:
                channel.basic_reject(tag, requeue=False)
        elif how == "nack":
            for tag in tags_:
                channel.basic_nack(tag, multiple=False, requeue=False)
        else:
            channel.basic_nack(tags_[-1], multiple=True, requeue=False)
    wait_message_count(connection, dead, 3)
    assert message_count(channel, source) == 0
    got = get_all(channel, dead)
    assert [d.body for d in got] == [b"m0", b"m1", b"m2"]
    for delivery in got:
        assert not delivery.method.redelivered
        assert (delivery.method.exchange, delivery.method.routing_key) == ("", dead)
        [death] = _deaths(delivery.properties)
        assert (death["reason"], death["queue"], death["count"]) == ("rejected", source, 1)
        assert delivery.properties.headers["x-first-death-reason"] == "rejected"


@pytest.mark.parametrize("how", ["requeue", "channel-close"])
def test_requeue_does_not_dead_letter(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup, how: str
) -> None:
    """A requeue (reject/nack requeue=true, or closing the channel with the message unacked)
    puts it back in the source queue and does not dead-letter it."""
    source, dead = _dead_letter_pair(channel, cleanup, name)
    publish_confirmed(connection, source, [b"back"])
    getter = connection.channel()
    method, _, _ = getter.basic_get(source)
    if how == "requeue":
        getter.basic_reject(method.delivery_tag, requeue=True)
    else:
        getter.close()
    wait_message_count(connection, source, 1)
    assert message_count(channel, dead) == 0


@pytest.mark.parametrize("ttl", ["queue", "message"])
def test_expired_message_dead_letters_as_expired(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup, ttl: str
) -> None:
    """A message whose TTL runs out (x-message-ttl or the expiration property) is dead-lettered
    with reason 'expired'. Only a per-message expiration leaves an 'original-expiration' in the
    x-death entry (as the string it was); the copy has no expiration property."""
    args = {"x-message-ttl": 50} if ttl == "queue" else {}
    source, dead = _dead_letter_pair(channel, cleanup, name, **args)
    props = pika.BasicProperties(expiration="50") if ttl == "message" else None
    publish_confirmed(connection, source, [b"old"], props)
    wait_message_count(connection, dead, 1)
    [delivery] = get_all(channel, dead)
    assert delivery.body == b"old"
    assert delivery.properties.expiration is None
    [death] = _deaths(delivery.properties)
    assert (death["reason"], death["queue"], death["count"]) == ("expired", source, 1)
    assert (death["exchange"], death["routing-keys"]) == ("", [source])
    if ttl == "message":
        assert death["original-expiration"] == "50"
    else:
        assert "original-expiration" not in death
    headers = delivery.properties.headers
    assert (headers["x-first-death-reason"], headers["x-first-death-queue"]) == ("expired", source)


def test_max_length_drop_head_dead_letters_as_maxlen(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """x-max-length (default overflow drop-head) dead-letters the dropped oldest message with
    reason 'maxlen'."""
    source, dead = _dead_letter_pair(channel, cleanup, name, **{"x-max-length": 1})
    publish_confirmed(connection, source, [b"first", b"second"])
    wait_message_count(connection, dead, 1)
    [delivery] = get_all(channel, dead)
    assert delivery.body == b"first"
    [death] = _deaths(delivery.properties)
    assert (death["reason"], death["queue"], death["routing-keys"]) == ("maxlen", source, [source])
    assert [d.body for d in get_all(channel, source)] == [b"second"]


@pytest.mark.parametrize("how", ["purge", "delete", "x-expires"])
def test_purge_delete_and_queue_expiry_do_not_dead_letter(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup, how: str
) -> None:
    """Queue.Purge, Queue.Delete and a queue expiring through x-expires discard the messages:
    none is dead-lettered."""
    args = {"x-expires": 100} if how == "x-expires" else {}
    source, dead = _dead_letter_pair(channel, cleanup, name, **args)
    publish_confirmed(connection, source, [b"a", b"b"])
    if how == "purge":
        assert channel.queue_purge(source).method.message_count == 2
    elif how == "delete":
        assert channel.queue_delete(source).method.message_count == 2
    else:
        # A (passive) Queue.Declare or Basic.Get would restart the x-expires timer; a mandatory
        # publish does not, so watch for the queue's binding to vanish.
        channel.queue_bind(source, "amq.direct", source)
        channel.confirm_delivery()
        wait_until(connection, lambda: not routed(channel, "amq.direct", source), what="expiry")
        assert not queue_exists(connection, source)
    pump(connection, 0.3)
    assert message_count(channel, dead) == 0


@pytest.mark.parametrize("reason", ["rejected", "expired"])
def test_missing_dead_letter_exchange_drops_silently(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    reason: str,
) -> None:
    """x-dead-letter-exchange may name an exchange that does not exist (declare accepts it); a
    message dead-lettered there is dropped without any error on any channel."""
    missing = f"{name}-missing"
    source = cleanup.queue(f"{name}-src")
    args: dict[str, Any] = {"x-dead-letter-exchange": missing}
    if reason == "expired":
        args["x-message-ttl"] = 50
    channel.queue_declare(source, arguments=args)
    publish_confirmed(connection, source, [b"lost"])
    if reason == "rejected":
        _reject(channel, source)
    else:
        wait_message_count(connection, source, 0)
    pump(connection, 0.2)
    assert channel.is_open
    assert message_count(channel, source) == 0
    assert channel.basic_get(source) == (None, None, None)


# --- routing of the dead-lettered copy ------------------------------------------------------------


def _routing_setup(
    channel: BlockingChannel, cleanup: Cleanup, name: str, dlrk: str | None
) -> tuple[str, dict[str, str]]:
    """A direct DLX with one queue bound per key (orig, cc1, cc2, bcc1, dlrk) and a source queue
    bound to amq.direct with 'orig' that dead-letters there (with `dlrk` if given)."""
    dlx = cleanup.exchange(f"{name}-dlx")
    channel.exchange_declare(dlx, "direct")
    queues = {}
    for key in ("orig", "cc1", "cc2", "bcc1", "dlrk"):
        queues[key] = cleanup.queue(f"{name}-{key}")
        channel.queue_declare(queues[key])
        channel.queue_bind(queues[key], dlx, key)
    source = cleanup.queue(f"{name}-src")
    args = {"x-dead-letter-exchange": dlx}
    if dlrk is not None:
        args["x-dead-letter-routing-key"] = dlrk
    channel.queue_declare(source, arguments=args)
    channel.queue_bind(source, "amq.direct", "orig")
    channel.confirm_delivery()
    headers = {"CC": ["cc1", "cc2"], "BCC": ["bcc1"], "other": "kept"}
    channel.basic_publish("amq.direct", "orig", b"routed", pika.BasicProperties(headers=headers))
    return source, queues


def test_dead_letter_routing_key_replaces_keys_and_removes_cc(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """With x-dead-letter-routing-key the copy is routed with that key only: the original key,
    CC and BCC play no part, and the CC header is removed from the copy (BCC never reaches a
    consumer at all). x-death routing-keys still lists the original key plus the CC keys."""
    source, queues = _routing_setup(channel, cleanup, name, dlrk="dlrk")
    _reject(channel, source)
    wait_message_count(connection, queues["dlrk"], 1)
    for key in ("orig", "cc1", "cc2", "bcc1"):
        assert message_count(channel, queues[key]) == 0, key
    [delivery] = get_all(channel, queues["dlrk"])
    assert (delivery.method.exchange, delivery.method.routing_key) == (f"{name}-dlx", "dlrk")
    headers = delivery.properties.headers
    assert "CC" not in headers
    assert "BCC" not in headers
    assert headers["other"] == "kept"
    [death] = headers["x-death"]
    assert death["exchange"] == "amq.direct"
    assert death["routing-keys"] == ["orig", "cc1", "cc2"]


def test_without_dead_letter_routing_key_original_keys_route(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Without x-dead-letter-routing-key the copy is routed with the keys the message was
    originally published with: its routing key, the CC keys AND (surprise) the BCC keys, although
    BCC was stripped from the headers at publish time. The copy keeps the CC header, has no BCC,
    and its x-death routing-keys list the routing key plus CC (never BCC)."""
    source, queues = _routing_setup(channel, cleanup, name, dlrk=None)
    _reject(channel, source)
    for key in ("orig", "cc1", "cc2", "bcc1"):
        wait_message_count(connection, queues[key], 1)
    assert message_count(channel, queues["dlrk"]) == 0
    for key in ("orig", "cc1", "cc2", "bcc1"):
        [delivery] = get_all(channel, queues[key])
        # the delivery names the first routing key, whichever key matched
        assert (delivery.method.exchange, delivery.method.routing_key) == (f"{name}-dlx", "orig")
        headers = delivery.properties.headers
        assert headers["CC"] == ["cc1", "cc2"]
        assert "BCC" not in headers
        [death] = headers["x-death"]
        assert death["routing-keys"] == ["orig", "cc1", "cc2"]


def test_properties_are_kept_but_expiration_is_removed(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    params: pika.URLParameters,
) -> None:
    """The copy carries every property of the original unchanged, except `expiration`, which is
    removed (and kept as 'original-expiration' in the x-death entry); the body is unchanged."""
    source, dead = _dead_letter_pair(channel, cleanup, name)
    user = params.credentials.username
    props = pika.BasicProperties(
        content_type="text/plain",
        content_encoding="utf-8",
        delivery_mode=2,
        priority=3,
        correlation_id="corr",
        reply_to="replies",
        expiration="60000",
        message_id="mid",
        timestamp=12345,
        type="kind",
        user_id=user,
        app_id="app",
    )
    publish_confirmed(connection, source, [b"payload"], props)
    _reject(channel, source)
    wait_message_count(connection, dead, 1)
    message = raw_get(amqp_url, dead)
    assert message.body == b"payload"
    [entry] = message.x_death
    assert dict(entry)["original-expiration"] == ("S", b"60000")
    properties = dict(message.properties)
    del properties["headers"]
    assert properties == {
        "content_type": "text/plain",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 3,
        "correlation_id": "corr",
        "reply_to": "replies",
        "message_id": "mid",
        "timestamp": 12345,
        "type": "kind",
        "user_id": user,
        "app_id": "app",
    }


# --- the x-death header on the wire ---------------------------------------------------------------


def test_x_death_wire_format_of_a_first_death(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """The exact field types and order RabbitMQ writes on the first dead-lettering:

    - x-death is 'A' (array) holding one 'F' (table) per death; the first-ever entry's keys are
      in this order: count 'l' (signed 64-bit), reason 'S', queue 'S', time 'T' (timestamp, whole
      seconds), exchange 'S', routing-keys 'A' of 'S', original-expiration 'S' (only if the
      message had an expiration).
    - x-first-death-exchange / -queue / -reason are 'S'.
    - The whole top-level headers table is re-sorted by key (byte order: 'Zed' before 'aaa'),
      with the client's own headers keeping their types; nested tables are left as they were.
    """
    source, dead = _dead_letter_pair(channel, cleanup, name)
    headers = {"zzz": 7, "tbl": {"b": 1, "a": 2}, "aaa": "x", "Zed": True, "CC": ["cc1"]}
    props = pika.BasicProperties(expiration="60000", headers=headers)
    publish_confirmed(connection, source, [b"wire"], props)
    before = int(time.time())
    _reject(channel, source)
    wait_message_count(connection, dead, 1)
    message = raw_get(amqp_url, dead)
    after = int(time.time()) + 1

    assert tags(message.headers) == [
        ("Zed", "t"),
        ("aaa", "S"),
        ("tbl", "F"),
        ("x-death", "A"),
        ("x-first-death-exchange", "S"),
        ("x-first-death-queue", "S"),
        ("x-first-death-reason", "S"),
        ("zzz", "I"),
    ]  # CC removed (x-dead-letter-routing-key is set)
    assert message.header("tbl") == ("F", [("b", ("I", 1)), ("a", ("I", 2))])
    assert message.header("x-first-death-exchange") == ("S", b"")
    assert message.header("x-first-death-queue") == ("S", source.encode())
    assert message.header("x-first-death-reason") == ("S", b"rejected")

    [entry] = message.x_death
    assert tags(entry) == [*FIRST_DEATH_ORDER, ("original-expiration", "S")]
    values = dict(entry)
    assert values["count"] == ("l", 1)
    assert values["reason"] == ("S", b"rejected")
    assert values["queue"] == ("S", source.encode())
    assert values["exchange"] == ("S", b"")
    assert values["routing-keys"] == ("A", [("S", source.encode()), ("S", b"cc1")])
    assert values["original-expiration"] == ("S", b"60000")
    tag, seconds = values["time"]
    assert tag == "T"
    assert before - 1 <= seconds <= after, "time is a POSIX timestamp in whole seconds"


def test_x_death_two_hops_newest_first(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """q1 -expired-> q2 -rejected-> q3: x-death holds two entries, newest first. Each records the
    exchange and routing keys the message had when it reached that queue. An entry added to an
    existing x-death array has its keys sorted (count, exchange, queue, reason, routing-keys,
    time) while the older first entry keeps the first-death order. x-first-death-* name the first
    death and are not changed by later ones."""
    q3 = cleanup.queue(f"{name}-q3")
    q2 = cleanup.queue(f"{name}-q2")
    q1 = cleanup.queue(f"{name}-q1")
    hop = cleanup.exchange(f"{name}-hop")
    channel.exchange_declare(hop, "direct")
    channel.queue_declare(q3)
    channel.queue_declare(
        q2, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q3}
    )
    channel.queue_bind(q2, hop, "to-q2")
    channel.queue_declare(
        q1,
        arguments={
            "x-dead-letter-exchange": hop,
            "x-dead-letter-routing-key": "to-q2",
            "x-message-ttl": 50,
        },
    )
    channel.queue_bind(q1, "amq.direct", "k1")
    channel.confirm_delivery()
    channel.basic_publish("amq.direct", "k1", b"hops")
    wait_message_count(connection, q2, 1)
    _reject(channel, q2)
    wait_message_count(connection, q3, 1)
    message = raw_get(amqp_url, q3)

    newest, oldest = message.x_death
    assert tags(newest) == SORTED_ORDER
    assert tags(oldest) == FIRST_DEATH_ORDER
    assert {k: plain(v) for k, v in newest if k != "time"} == {
        "count": 1,
        "exchange": hop,
        "queue": q2,
        "reason": "rejected",
        "routing-keys": ["to-q2"],
    }
    assert {k: plain(v) for k, v in oldest if k != "time"} == {
        "count": 1,
        "reason": "expired",
        "queue": q1,
        "exchange": "amq.direct",
        "routing-keys": ["k1"],
    }
    assert plain(message.header("x-first-death-exchange")) == "amq.direct"
    assert plain(message.header("x-first-death-queue")) == q1
    assert plain(message.header("x-first-death-reason")) == "expired"
    assert (message.exchange, message.routing_key) == ("", q3)


def test_x_death_retry_cycle_counts_per_queue_and_reason(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """The classic retry loop: the work queue rejects into a retry queue whose TTL sends the
    message back. x-death keeps one entry per (queue, reason) - NOT per exchange - and each
    repeat increments its count and moves it to the front with its keys sorted. Everything else
    in an entry (exchange, routing-keys, time) stays as first recorded: the work entry keeps
    'amq.direct'/'job' although later rejections followed an arrival via the default exchange.
    A cycle containing a rejection is never dropped. x-first-death-* never change."""
    work = cleanup.queue(f"{name}-work")
    retry = cleanup.queue(f"{name}-retry")
    channel.queue_declare(
        work, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": retry}
    )
    channel.queue_bind(work, "amq.direct", "job")
    channel.queue_declare(
        retry,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work,
            "x-message-ttl": 50,
        },
    )
    channel.confirm_delivery()
    channel.basic_publish("amq.direct", "job", b"task")
    arrivals: list[RawMessage] = []
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        for round_ in range(4):
            wait_message_count(connection, work, 1)
            message = get_raw(client, work, no_ack=False)
            arrivals.append(message)
            if round_ < 3:
                reject = commands.Basic.Reject(delivery_tag=message.delivery_tag, requeue=False)
                client.send(reject, 1)

    assert "x-death" not in dict(arrivals[0].headers)
    for round_, message in enumerate(arrivals[1:], start=1):
        assert message.body == b"task"
        entries = [{k: plain(v) for k, v in entry} for entry in message.x_death]
        assert [(e["queue"], e["reason"], e["count"]) for e in entries] == [
            (retry, "expired", round_),
            (work, "rejected", round_),
        ]
        assert entries[0]["exchange"] == ""
        assert entries[0]["routing-keys"] == [retry]
        assert entries[1]["exchange"] == "amq.direct"
        assert entries[1]["routing-keys"] == ["job"]
        assert plain(message.header("x-first-death-queue")) == work
        assert plain(message.header("x-first-death-reason")) == "rejected"
        assert plain(message.header("x-first-death-exchange")) == "amq.direct"
        assert tags(message.x_death[0]) == SORTED_ORDER
        assert tags(message.x_death[1]) == (FIRST_DEATH_ORDER if round_ == 1 else SORTED_ORDER)
        times = [dict(entry)["time"] for entry in message.x_death]
        assert all(tag == "T" for tag, _ in times)
        assert dict(message.x_death[0])["count"][0] == "l"


def test_client_supplied_x_death_is_updated_in_place(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """A message published with its own x-death (e.g. a consumer republishing a dead letter):
    the matching (queue, reason) entry gets count+1 (now 'l', whatever type it had), its other
    fields are kept and its keys sorted; other entries are left untouched; and x-first-death-*
    are NOT added, because RabbitMQ only adds them when the message had no x-death at all."""
    source, dead = _dead_letter_pair(channel, cleanup, name)
    x_death = [
        {
            "count": 5,
            "reason": "rejected",
            "queue": source,
            "exchange": "zz",
            "routing-keys": ["old"],
        },
        {"queue": "elsewhere", "reason": "expired", "count": 1},
    ]
    props = pika.BasicProperties(headers={"x-death": x_death})
    publish_confirmed(connection, source, [b"again"], props)
    _reject(channel, source)
    wait_message_count(connection, dead, 1)
    message = raw_get(amqp_url, dead)
    assert [key for key, _ in message.headers] == ["x-death"]
    updated, other = message.x_death
    assert updated == [
        ("count", ("l", 6)),
        ("exchange", ("S", b"zz")),
        ("queue", ("S", source.encode())),
        ("reason", ("S", b"rejected")),
        ("routing-keys", ("A", [("S", b"old")])),
    ]
    assert other == [
        ("queue", ("S", b"elsewhere")),
        ("reason", ("S", b"expired")),
        ("count", ("I", 1)),
    ]


# --- cycles ---------------------------------------------------------------------------------------


def test_expiry_cycle_to_itself_is_dropped(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A queue that dead-letters expired messages back to itself: RabbitMQ checks the *new*
    x-death (which already names this queue) and, with no 'rejected' in it, drops the copy for
    that queue - so the message never comes back, not even once. Other queues the DLX routes to
    still get it. (The source has no queue TTL: a copy that came back would stay forever, as
    the dead-lettered copy loses its expiration.)"""
    fanout = cleanup.exchange(f"{name}-dlx")
    channel.exchange_declare(fanout, "fanout")
    source = cleanup.queue(f"{name}-src")
    observer = cleanup.queue(f"{name}-obs")
    channel.queue_declare(source, arguments={"x-dead-letter-exchange": fanout})
    channel.queue_declare(observer)
    channel.queue_bind(source, fanout)
    channel.queue_bind(observer, fanout)
    publish_confirmed(connection, source, [b"loop"], pika.BasicProperties(expiration="50"))
    wait_message_count(connection, observer, 1)
    pump(connection, 0.2)
    assert message_count(channel, source) == 0
    [delivery] = get_all(channel, observer)
    [death] = _deaths(delivery.properties)
    assert (death["queue"], death["reason"], death["count"]) == (source, "expired", 1)


def test_expiry_cycle_via_default_exchange_is_dropped(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """x-message-ttl + DLX '' + DLRK = its own name: the message expires once and is gone."""
    source = cleanup.queue(f"{name}-self")
    channel.queue_declare(
        source,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": source,
            "x-message-ttl": 50,
        },
    )
    publish_confirmed(connection, source, [b"loop"])
    wait_message_count(connection, source, 0)
    pump(connection, 0.3)
    assert message_count(channel, source) == 0


def test_two_queue_expiry_cycle_is_dropped_on_return(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """a -expired-> b -expired-> a: the message reaches b, but the copy for a is dropped since a
    is already in its x-death and the cycle has no rejection."""
    fanout = cleanup.exchange(f"{name}-dlx")
    channel.exchange_declare(fanout, "fanout")
    a = cleanup.queue(f"{name}-a")
    b = cleanup.queue(f"{name}-b")
    observer = cleanup.queue(f"{name}-obs")
    channel.queue_declare(
        a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b}
    )
    channel.queue_declare(b, arguments={"x-dead-letter-exchange": fanout, "x-message-ttl": 50})
    channel.queue_declare(observer)
    channel.queue_bind(a, fanout)
    channel.queue_bind(observer, fanout)
    publish_confirmed(connection, a, [b"loop"], pika.BasicProperties(expiration="50"))
    wait_message_count(connection, observer, 1)
    pump(connection, 0.2)
    assert message_count(channel, a) == 0
    assert message_count(channel, b) == 0
    [delivery] = get_all(channel, observer)
    deaths = _deaths(delivery.properties)
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        (b, "expired", 1),
        (a, "expired", 1),
    ]


def test_reject_cycle_to_itself_is_allowed(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """Rejections are never treated as a cycle: a queue dead-lettering to itself gets the message
    back after every reject, with one x-death entry whose count goes 1, 2, 3."""
    source = cleanup.queue(f"{name}-self")
    channel.queue_declare(
        source, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": source}
    )
    publish_confirmed(connection, source, [b"boomerang"])
    for count in (1, 2, 3):
        _reject(channel, source)
        wait_message_count(connection, source, 1)
        method, properties, body = channel.basic_get(source)
        assert body == b"boomerang"
        assert [(d["queue"], d["reason"], d["count"]) for d in _deaths(properties)] == [
            (source, "rejected", count)
        ]
        channel.basic_nack(method.delivery_tag, requeue=True)
        wait_message_count(connection, source, 1)


# --- publishers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("routable", [True, False], ids=["routed", "unroutable"])
def test_dead_lettering_sends_nothing_to_the_original_publisher(
    amqp_url: str,
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    routable: bool,
) -> None:
    """The publisher (confirm mode, mandatory) gets its Basic.Ack when the message is enqueued;
    dead-lettering later sends it nothing more - no Ack/Nack and no Basic.Return even when the
    dead-lettered copy is unroutable."""
    dlx = cleanup.exchange(f"{name}-dlx")
    channel.exchange_declare(dlx, "fanout")
    dead = cleanup.queue(f"{name}-dead")
    channel.queue_declare(dead)
    if routable:
        channel.queue_bind(dead, dlx)
    source = cleanup.queue(f"{name}-src")
    channel.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    with raw_connection(amqp_url) as publisher:
        publisher.open_channel(1)
        publisher.send(commands.Confirm.Select(), 1)
        publisher.expect(commands.Confirm.SelectOk, channel=1)
        raw_publish(publisher, source, b"once", mandatory=True)
        ack = publisher.expect(commands.Basic.Ack, channel=1)
        assert ack.delivery_tag == 1
        _reject(channel, source)
        if routable:
            wait_message_count(connection, dead, 1)
        pump(connection, 0.2)
        with pytest.raises(RawTimeout):
            publisher.read_frame(timeout=0.3)
    assert message_count(channel, source) == 0


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "mention"),
    [
        (
            {"x-dead-letter-routing-key": "k"},
            "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': "
            "routing_key_but_no_dlx_defined",
        ),
        (
            {"x-dead-letter-exchange": 5},
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'",
        ),
    ],
    ids=["routing-key-without-exchange", "exchange-not-a-string"],
)
def test_invalid_dead_letter_arguments_are_406(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    arguments: dict[str, Any],
    mention: str,
) -> None:
    """A DLRK without a DLX, or a non-string DLX: 406 PRECONDITION_FAILED, no queue."""
    with expect_channel_close(channel, 406, mention.format(q=name)):
        channel.queue_declare(name, arguments=arguments)
    assert not queue_exists(connection, name)


def test_x_death_of_three_hops_is_regrouped_as_rabbitmq_does(
    connection: BlockingConnection, channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """q0 -expired-> q1 -expired-> q2 -expired-> q3. From two tables on, RabbitMQ regroups
    the history by (queue, reason) before adding the new death, and its fold reverses the
    older ones: the third death reads [q2, q0, q1], not [q2, q1, q0]. Clients that walk
    x-death see this order, so Warren writes it too."""
    queues = [cleanup.queue(f"{name}-{n}") for n in range(4)]
    channel.queue_declare(queues[3])
    for n in range(3):
        channel.queue_declare(
            queues[n],
            arguments={
                "x-message-ttl": 30,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queues[n + 1],
            },
        )
    publish_confirmed(connection, queues[0], [b"m"])
    wait_message_count(connection, queues[3], 1)
    _, properties, _ = channel.basic_get(queues[3], auto_ack=True)
    deaths = [(d["queue"], d["reason"]) for d in properties.headers["x-death"]]
    assert deaths == [
        (queues[2], "expired"),
        (queues[0], "expired"),
        (queues[1], "expired"),
    ]
