"""Hypothesis strategies for the fuzz tests: field values, field tables (every type letter,
unknown ones, nesting up to absurd depths, malformed lengths), method frames of every class and
method with random field values, content headers and bodies with right and wrong sizes,
mutations of any frame, and whole exchanges (handshake, frames, tables, method sequences).

Names come mostly from small pools, so that random methods meet each other: a queue declared in
one frame is bound, published to, consumed from and deleted by the next ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.compat.rawamqp import REPLY_NAMES
from tests.fuzz import wire

# ------------------------------------------------------------------------------ pools
QUEUES = [b"", b"fz.q1", b"fz.q2", b"fz.dq1", b"amq.rabbitmq.reply-to", b"amq.gen-x", b"fz.ex1"]
EXCHANGES = [
    b"",
    b"amq.direct",
    b"amq.fanout",
    b"amq.topic",
    b"amq.headers",
    b"amq.match",
    b"fz.x1",
    b"fz.x2",
    b"fz.dx1",
    b"amq.fz",
]
EXCHANGE_TYPES = [b"direct", b"fanout", b"topic", b"headers", b"x-consistent-hash", b"", b"Direct"]
WORDS = [b"a", b"b", b"*", b"#", b"", b"fz", b"q1", b"x"]
ROUTING_KEYS = [b"", b"fz.q1", b"fz.q2", b"#", b"*.#", b"a.b.c", b"amq.rabbitmq.reply-to"]
CONSUMER_TAGS = [b"", b"c1", b"c2", b"amq.ctag-x"]
ARGUMENT_KEYS = [
    b"x-message-ttl",
    b"x-expires",
    b"x-max-length",
    b"x-max-length-bytes",
    b"x-overflow",
    b"x-dead-letter-exchange",
    b"x-dead-letter-routing-key",
    b"x-max-priority",
    b"x-queue-type",
    b"x-queue-mode",
    b"x-single-active-consumer",
    b"x-priority",
    b"x-match",
    b"alternate-exchange",
    b"x-delayed-type",
    b"x-consumer-timeout",
    b"capabilities",
    b"x-cancel-on-ha-failover",
]
ARGUMENT_STRINGS = [
    b"all",
    b"any",
    b"all-with-x",
    b"any-with-x",
    b"drop-head",
    b"reject-publish",
    b"reject-publish-dlx",
    b"classic",
    b"quorum",
    b"stream",
    b"lazy",
    b"default",
    b"fz.x1",
    b"amq.direct",
    b"",
]
STRING_TYPES = "sSx"

# ------------------------------------------------------------------------------ scalars
octets = st.integers(0, 0xFF)
shorts = st.one_of(st.integers(0, 5), st.integers(0, 0xFFFF))
longs = st.one_of(
    st.integers(0, 5), st.sampled_from([4096, 131072, 131073]), st.integers(0, 2**32 - 1)
)
longlongs = st.one_of(st.integers(0, 6), st.integers(0, 2**64 - 1))


def text_bytes(max_size: int = 40) -> st.SearchStrategy[bytes]:
    """Mostly UTF-8, sometimes invalid UTF-8 or control characters."""
    return st.one_of(
        st.text(max_size=max_size).map(lambda t: t.encode("utf-8")[:255]),
        st.binary(max_size=max_size),
        st.just(b"\xff\xfe"),
        st.just(b"x" * 255),
        st.just("é".encode() * 127),  # 127 characters, 254 bytes
    )


def pooled(pool: list[bytes], weight: int = 4) -> st.SearchStrategy[bytes]:
    return st.one_of(*([st.sampled_from(pool)] * weight), text_bytes())


topic_keys = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(b".".join)
routing_keys = st.one_of(
    st.sampled_from(ROUTING_KEYS), st.sampled_from(ROUTING_KEYS), topic_keys, text_bytes()
)


# ------------------------------------------------------------------------------ field tables
def _value(tag: str, payload: bytes) -> bytes:
    return tag.encode() + payload


scalar_values = st.one_of(
    st.booleans().map(lambda b: _value("t", bytes((b,)))),
    st.integers(0, 255).map(lambda n: _value("t", bytes((n,)))),  # a bool that is not 0/1
    st.integers(-128, 127).map(lambda n: _value("b", struct.pack(">b", n))),
    st.integers(0, 255).map(lambda n: _value("B", struct.pack(">B", n))),
    st.integers(-(2**15), 2**15 - 1).map(lambda n: _value("s", struct.pack(">h", n))),
    st.integers(0, 2**16 - 1).map(lambda n: _value("u", struct.pack(">H", n))),
    st.integers(-(2**31), 2**31 - 1).map(lambda n: _value("I", struct.pack(">i", n))),
    st.integers(0, 2**32 - 1).map(lambda n: _value("i", struct.pack(">I", n))),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: _value("l", struct.pack(">q", n))),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: _value("L", struct.pack(">q", n))),
    st.floats(width=32).map(lambda f: _value("f", struct.pack(">f", f))),
    st.floats().map(lambda f: _value("d", struct.pack(">d", f))),
    st.tuples(octets, st.integers(-(2**31), 2**31 - 1)).map(
        lambda p: _value("D", struct.pack(">Bi", *p))
    ),
    st.integers(0, 2**64 - 1).map(lambda n: _value("T", struct.pack(">Q", n))),
    st.just(b"V"),
    st.sampled_from(ARGUMENT_STRINGS).map(lambda s: _value("S", wire.longstr(s))),
    text_bytes().map(lambda s: _value("S", wire.longstr(s))),
    st.binary(max_size=20).map(lambda s: _value("x", wire.longstr(s))),
    # an unknown type letter with some bytes after it
    st.tuples(st.sampled_from(b"acegjkmnopqrvwyzCEGHJKMNOPQRUWXYZ"), st.binary(max_size=8)).map(
        lambda p: bytes((p[0],)) + p[1]
    ),
)
table_keys = st.one_of(
    st.sampled_from(ARGUMENT_KEYS), st.sampled_from(ARGUMENT_KEYS), text_bytes(20)
)


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(st.tuples(table_keys, children), max_size=5).map(lambda e: b"F" + wire.table(e)),
        st.lists(children, max_size=5).map(lambda v: b"A" + wire.array(v)),
    )


field_values = st.recursive(scalar_values, _containers, max_leaves=12)


@st.composite
def deep_values(draw: st.DrawFn) -> bytes:
    """A value nested 1-400 levels deep in tables and arrays (around the decoders' limits)."""
    depth = draw(
        st.one_of(st.integers(1, 120), st.sampled_from([96, 97, 98, 99, 100, 101, 150, 300, 400]))
    )
    value = draw(scalar_values)
    kinds = draw(st.sampled_from(["F", "A", "mixed"]))
    for level in range(depth):
        kind = kinds if kinds != "mixed" else "FA"[level % 2]
        value = b"F" + wire.table([(b"k", value)]) if kind == "F" else b"A" + wire.array([value])
    return value


def _long(value: int) -> bytes:
    return b"l" + struct.pack(">q", value)


def _string(value: bytes) -> bytes:
    return b"S" + wire.longstr(value)


# Arguments with values RabbitMQ accepts, so that TTL, expiry, limits, dead-lettering, priority
# and single-active-consumer queues really get made and their timers fire during the fuzz.
PLAUSIBLE_ARGUMENTS: dict[bytes, st.SearchStrategy[bytes]] = {
    b"x-message-ttl": st.integers(0, 50).map(_long),
    b"x-expires": st.integers(1, 200).map(_long),
    b"x-max-length": st.integers(0, 3).map(_long),
    b"x-max-length-bytes": st.integers(0, 100).map(_long),
    b"x-overflow": st.sampled_from([b"drop-head", b"reject-publish", b"reject-publish-dlx"]).map(
        _string
    ),
    b"x-dead-letter-exchange": st.sampled_from([b"", b"amq.fanout", b"fz.x1"]).map(_string),
    b"x-dead-letter-routing-key": st.sampled_from([b"fz.q1", b"fz.q2"]).map(_string),
    b"x-max-priority": st.integers(0, 10).map(_long),
    b"x-single-active-consumer": st.booleans().map(lambda b: b"t" + bytes((b,))),
    b"x-queue-type": st.just(_string(b"classic")),
    b"x-priority": st.integers(-3, 3).map(_long),
    b"alternate-exchange": st.sampled_from([b"fz.x1", b"amq.fanout"]).map(_string),
    b"x-match": st.sampled_from([b"all", b"any", b"all-with-x", b"any-with-x"]).map(_string),
}


@st.composite
def plausible_tables(draw: st.DrawFn) -> bytes:
    keys = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE_ARGUMENTS)), max_size=4, unique=True))
    return wire.table([(key, draw(PLAUSIBLE_ARGUMENTS[key])) for key in keys])


@st.composite
def mutated_table(draw: st.DrawFn, good: bytes) -> bytes:
    """A table whose bytes lie: wrong length, truncated, a byte flipped, trailing garbage."""
    how = draw(st.sampled_from(["length", "truncate", "flip", "garbage"]))
    if how == "length":
        length = draw(st.one_of(st.integers(0, len(good) + 8), st.integers(0, 2**32 - 1)))
        return struct.pack(">I", length) + good[4:]
    if how == "truncate":
        cut = draw(st.integers(0, max(0, len(good) - 1)))
        return struct.pack(">I", len(good) - 4) + good[4:cut]
    if how == "flip" and len(good) > 4:
        position = draw(st.integers(4, len(good) - 1))
        byte = draw(st.integers(1, 255))
        return good[:position] + bytes((good[position] ^ byte,)) + good[position + 1 :]
    extra = draw(st.binary(min_size=1, max_size=8))
    return struct.pack(">I", len(good) - 4 + len(extra)) + good[4:] + extra


@st.composite
def field_tables(draw: st.DrawFn, *, allow_malformed: bool = True) -> bytes:
    """An encoded field table (with its length): argument-like entries with values of any type,
    nested tables and arrays, sometimes absurdly deep, sometimes malformed."""
    entries = draw(
        st.lists(
            st.tuples(
                table_keys, st.one_of(field_values, field_values, field_values, deep_values())
            ),
            max_size=6,
        )
    )
    good = wire.table(entries)
    if allow_malformed and draw(st.integers(0, 9)) == 0:
        return draw(mutated_table(good))
    return good


@st.composite
def malformed_tables(draw: st.DrawFn) -> bytes:
    """A table no client can decode: an unknown type letter, a key or value running past the
    end, a length that lies."""
    good = draw(field_tables(allow_malformed=False))
    how = draw(st.sampled_from(["unknown", "key", "value", "lie"]))
    if how == "unknown":
        return wire.table([(b"k", draw(st.sampled_from([b"U", b"N\x00", b"\xff"])))])
    if how == "key":
        return struct.pack(">I", 2) + b"\x05k"
    if how == "value":
        return struct.pack(">I", 7) + b"\x01kS\x00\x00\x00\x09"
    return draw(mutated_table(good))


# ------------------------------------------------------------------------------ methods
NAME_POOLS: dict[str, list[bytes]] = {
    "queue": QUEUES,
    "exchange": EXCHANGES,
    "source": EXCHANGES,
    "destination": EXCHANGES,
    "exchange_type": EXCHANGE_TYPES,
    "consumer_tag": CONSUMER_TAGS,
    "virtual_host": [b"/", b"", b"fz-vhost"],
    "mechanism": [b"PLAIN", b"AMQPLAIN", b"EXTERNAL", b""],
    "locale": [b"en_US", b""],
    "reply_text": [b"", b"bye"],
    "out_of_band": [b""],
    "capabilities": [b""],
}
REPLY_CODES = [*REPLY_NAMES, 0, 999]


def field_value(name: str, kind: str) -> st.SearchStrategy[object]:
    if kind == "bit":
        return st.booleans()
    if kind == "octet":
        return octets
    if kind == "short":
        if name == "reply_code":
            return st.one_of(st.sampled_from(REPLY_CODES), shorts)
        return shorts
    if kind == "long":
        return longs
    if kind == "longlong":
        return longlongs
    if kind == "shortstr":
        if name == "routing_key":
            return routing_keys
        return pooled(NAME_POOLS.get(name, [b""]))
    if kind == "longstr":
        if name == "response":
            return st.one_of(
                st.just(b"\x00guest\x00guest"),
                st.just(b"\x00guest\x00wrong"),
                st.binary(max_size=40),
            )
        return st.binary(max_size=40)
    if kind == "table":
        return field_tables()
    raise ValueError(kind)


@st.composite
def method_payloads(draw: st.DrawFn, key: tuple[int, int] | None = None) -> bytes:
    """A method of any known class and method (or an unknown one) with random field values."""
    if key is None:
        unknown = draw(st.integers(0, 19)) == 0
        if unknown:
            key = draw(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))
            return struct.pack(">HH", *key) + draw(st.binary(max_size=20))
        key = draw(st.sampled_from(sorted(wire.METHODS)))
    _, fields = wire.METHODS[key]
    values = {name: draw(field_value(name, kind)) for name, kind in fields}
    return wire.method_payload(key, values)


properties_values: dict[str, st.SearchStrategy[object]] = {
    "content_type": st.sampled_from([b"text/plain", b"application/json", b""]),
    "content_encoding": st.sampled_from([b"utf-8", b"gzip"]),
    "headers": st.one_of(field_tables(), plausible_tables(), malformed_tables()),
    "delivery_mode": st.one_of(st.sampled_from([1, 2]), octets),
    "priority": octets,
    "correlation_id": text_bytes(),
    "reply_to": st.one_of(st.sampled_from([b"amq.rabbitmq.reply-to", b"fz.q1"]), text_bytes()),
    "expiration": st.one_of(
        st.sampled_from([b"0", b"1", b"60000", b"-1", b"abc", b"", b"99999999999999999999"]),
        text_bytes(),
    ),
    "message_id": text_bytes(),
    "timestamp": longlongs,
    "type": text_bytes(),
    "user_id": st.one_of(st.just(b"guest"), text_bytes()),
    "app_id": text_bytes(),
    "cluster_id": text_bytes(),
}


@st.composite
def content_headers(draw: st.DrawFn, body_size: int) -> bytes:
    names = draw(st.sets(st.sampled_from([name for name, _ in wire.PROPERTIES]), max_size=6))
    props = {name: draw(properties_values[name]) for name in names}
    size = body_size
    if draw(st.integers(0, 9)) == 0:  # a size that does not match what follows
        size = draw(st.one_of(st.integers(0, body_size + 5), longlongs))
    class_id = 60 if draw(st.integers(0, 19)) else draw(shorts)
    weight = 0 if draw(st.integers(0, 19)) else draw(shorts)
    flags = None if draw(st.integers(0, 9)) else draw(shorts)
    return wire.content_header(size, props, class_id, weight, flags)


@st.composite
def publish_parts(
    draw: st.DrawFn,
    channel: int,
    exchanges: list[bytes] | None = None,
    frame_max: int = wire.FRAME_MAX,
) -> list[bytes]:
    """Basic.Publish, a content header and body frames (sometimes too many or too few), as a
    list of frames."""
    exchange = draw(pooled(exchanges or EXCHANGES))
    method = wire.method_payload(
        wire.METHOD_IDS["Basic.Publish"],
        {
            "ticket": 0,
            "exchange": exchange,
            "routing_key": draw(routing_keys),
            "mandatory": draw(st.booleans()),
            "immediate": draw(st.integers(0, 9)) == 0,
        },
    )
    body = draw(st.binary(max_size=64))
    if draw(st.integers(0, 49)) == 0:  # a body spread over frames of the largest size
        body = bytes(draw(st.integers(frame_max - 8, 2 * frame_max)))
    out = [wire.frame(wire.METHOD, channel, method)]
    if draw(st.integers(0, 19)):  # sometimes the header never comes
        out.append(wire.frame(wire.HEADER, channel, draw(content_headers(len(body)))))
    if len(body) > 64:
        step = frame_max - 8
        cuts = list(range(step, len(body), step))
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    if draw(st.integers(0, 9)) == 0:  # an extra body frame (too many bytes) or one missing
        if draw(st.booleans()):
            pieces.append(draw(st.binary(min_size=1, max_size=10)))
        elif pieces:
            pieces.pop()
    for piece in pieces:
        if piece or draw(st.integers(0, 4)) == 0:  # an empty body frame now and then
            out.append(wire.frame(wire.BODY, channel, piece))
    return out


@st.composite
def publish_frames(
    draw: st.DrawFn,
    channel: int,
    exchanges: list[bytes] | None = None,
    frame_max: int = wire.FRAME_MAX,
) -> bytes:
    return b"".join(draw(publish_parts(channel, exchanges, frame_max)))


@st.composite
def interleaved_publishes(draw: st.DrawFn, frame_max: int = wire.FRAME_MAX) -> bytes:
    """Two publishes on two channels with their frames interleaved (legal across channels)."""
    one, two = draw(st.permutations(CHANNELS))[:2]
    first = draw(publish_parts(one, frame_max=frame_max))
    second = draw(publish_parts(two, frame_max=frame_max))
    out = []
    while first or second:
        source = first if first and (not second or draw(st.booleans())) else second
        out.append(source.pop(0))
    return b"".join(out)


# ------------------------------------------------------------------------------ mutations
MUTATIONS = [
    "truncate",
    "flip",
    "size",
    "type",
    "channel",
    "end",
    "insert",
    "short-payload",
    "long-payload",
    "duplicate",
]


@st.composite
def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """One mutation of one frame's bytes (data starts with a frame header)."""
    how = draw(st.sampled_from(MUTATIONS))
    if len(data) < 8:
        return data
    payload = data[7:-1]
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            position = draw(st.integers(0, len(out) - 1))
            out[position] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "size":
        size = draw(
            st.one_of(
                st.integers(max(0, len(payload) - 3), len(payload) + 3),
                st.integers(0, 2**32 - 1),
                st.sampled_from([wire.FRAME_MAX - 8, wire.FRAME_MAX, wire.FRAME_MAX + 1, 4096]),
            )
        )
        return data[:3] + struct.pack(">I", size) + data[7:]
    if how == "type":
        kind = draw(st.one_of(st.sampled_from([1, 2, 3, 4, 8, 0, 0xCE]), octets))
        return bytes((kind,)) + data[1:]
    if how == "channel":
        channel = draw(st.one_of(st.integers(0, 6), st.integers(0, 0xFFFF)))
        if channel == wire.PROBE_CHANNEL:
            channel = 0
        return data[:1] + struct.pack(">H", channel) + data[3:]
    if how == "end":
        return data[:-1] + bytes((draw(st.integers(0, 0xCD)),))
    if how == "insert":
        position = draw(st.integers(0, len(data)))
        return data[:position] + draw(st.binary(min_size=1, max_size=8)) + data[position:]
    if how == "short-payload":  # a well-framed frame whose payload stops early
        cut = draw(st.integers(0, max(0, len(payload) - 1)))
        return wire.frame(data[0], int.from_bytes(data[1:3], "big"), payload[:cut])
    if how == "long-payload":  # a well-framed frame with trailing bytes in its payload
        extra = draw(st.binary(min_size=1, max_size=16))
        return wire.frame(data[0], int.from_bytes(data[1:3], "big"), payload + extra)
    return data + data


# ------------------------------------------------------------------------------ exchanges
@dataclass
class Case:
    """One fuzzed exchange: the bytes to send (after a normal handshake unless `in_header`)
    and how the client ends the connection afterwards."""

    kind: str
    data: bytes
    in_header: bool = False
    clean_close: bool = False
    second: bytes = b""  # sent at the same time on a second connection (after its handshake)
    frame_max: int = wire.FRAME_MAX  # what both connections negotiate (unless in_header)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        data = f"bytes.fromhex({self.data.hex()!r})"
        second = f", second=bytes.fromhex({self.second.hex()!r})" if self.second else ""
        frame_max = f", frame_max={self.frame_max}" if self.frame_max != wire.FRAME_MAX else ""
        return f"Case({self.kind!r}, in_header={self.in_header}, data={data}{second}{frame_max})"


CHANNELS = [1, 2, 3]
channels = st.one_of(
    *([st.sampled_from(CHANNELS)] * 8), st.integers(0, 6), st.integers(0, 0xFFFF)
).filter(lambda n: n != wire.PROBE_CHANNEL)


def opened(numbers: list[int]) -> bytes:
    return b"".join(wire.open_channel(number) for number in numbers)


@st.composite
def any_frame(draw: st.DrawFn) -> bytes:
    """One unit of traffic on some channel: a method of any kind, a whole publish, a stray
    header or body, a heartbeat, or a frame of a random type."""
    channel = draw(channels)
    kind = draw(
        st.sampled_from(["method"] * 6 + ["publish"] * 2 + ["header", "body", "heartbeat", "raw"])
    )
    if kind == "method":
        return wire.frame(wire.METHOD, channel, draw(method_payloads()))
    if kind == "publish":
        return draw(publish_frames(channel))
    if kind == "header":
        return wire.frame(wire.HEADER, channel, draw(content_headers(draw(st.integers(0, 10)))))
    if kind == "body":
        return wire.frame(wire.BODY, channel, draw(st.binary(max_size=20)))
    if kind == "heartbeat":
        return wire.frame(wire.HEARTBEAT, draw(st.sampled_from([0, 0, 0, channel])), b"")
    return wire.frame(draw(octets), channel, draw(st.binary(max_size=30)))


@st.composite
def frame_cases(draw: st.DrawFn) -> Case:
    """After the handshake: open channels 1-3, then 1-6 units of traffic, each possibly
    mutated at the byte level."""
    units = []
    for unit in draw(st.lists(any_frame(), min_size=1, max_size=6)):
        if draw(st.integers(0, 2)) == 0:
            unit = draw(mutate(unit))
        units.append(unit)
    return Case("frames", opened(CHANNELS) + b"".join(units), clean_close=draw(st.booleans()))


@st.composite
def table_cases(draw: st.DrawFn) -> Case:
    """Every method that carries a field table, each on its own channel so that one refusal
    does not hide the others: declare (queue and exchange), bind and unbind (queue and
    exchange), consume, and a publish whose headers meet a headers-exchange binding."""
    tag = draw(st.integers(0, 2**32 - 1))
    queue = draw(st.sampled_from([f"fz.t.{tag}".encode(), b"fz.dq1", b"fz.q1"]))
    exchange = draw(st.sampled_from([b"amq.headers", b"amq.match", b"amq.topic", b"fz.dx1"]))
    exclusive = queue.startswith(b"fz.t.")
    steps = [
        (
            "Queue.Declare",
            dict(
                queue=queue,
                durable=not exclusive,
                exclusive=exclusive,
                arguments=draw(field_tables()),
            ),
        ),
        (
            "Exchange.Declare",
            dict(
                exchange=draw(st.sampled_from([b"fz.dx1", b"fz.x2", f"fz.tx.{tag}".encode()])),
                exchange_type=draw(st.sampled_from(EXCHANGE_TYPES)),
                durable=draw(st.booleans()),
                auto_delete=False,
                arguments=draw(field_tables()),
            ),
        ),
        (
            "Queue.Bind",
            dict(
                queue=queue,
                exchange=exchange,
                routing_key=draw(routing_keys),
                arguments=draw(field_tables()),
            ),
        ),
        (
            "Exchange.Bind",
            dict(
                destination=b"fz.x2",
                source=exchange,
                routing_key=draw(routing_keys),
                arguments=draw(field_tables()),
            ),
        ),
        (
            "Basic.Consume",
            dict(
                queue=queue,
                consumer_tag=b"",
                no_ack=draw(st.booleans()),
                arguments=draw(field_tables()),
            ),
        ),
    ]
    if draw(st.booleans()):
        steps.append(
            (
                "Queue.Unbind",
                dict(
                    queue=queue,
                    exchange=exchange,
                    routing_key=draw(routing_keys),
                    arguments=draw(field_tables()),
                ),
            )
        )
    defaults = {"ticket": 0, "passive": False, "nowait": False}
    out = []
    number = 0
    for number, (name, values) in enumerate(steps, start=1):
        key = wire.METHOD_IDS[name]
        fields = {f: values.get(f, defaults.get(f, False)) for f, _ in wire.METHODS[key][1]}
        out.append(
            wire.open_channel(number)
            + wire.frame(wire.METHOD, number, wire.method_payload(key, fields))
        )
    number += 1
    out.append(wire.open_channel(number) + draw(publish_frames(number, [exchange, b""])))
    number += 1
    get = wire.method_payload(
        wire.METHOD_IDS["Basic.Get"], {"ticket": 0, "queue": queue, "no_ack": True}
    )
    out.append(wire.open_channel(number) + wire.frame(wire.METHOD, number, get))
    order = draw(st.permutations(range(len(out))))
    return Case("tables", b"".join(out[i] for i in order), clean_close=draw(st.booleans()))


# Methods a client sends on a channel, weighted toward the ones that change state.
SEQUENCE_METHODS = [
    "Queue.Declare",
    "Queue.Declare",
    "Queue.Bind",
    "Queue.Unbind",
    "Queue.Purge",
    "Queue.Delete",
    "Exchange.Declare",
    "Exchange.Delete",
    "Exchange.Bind",
    "Exchange.Unbind",
    "Basic.Qos",
    "Basic.Consume",
    "Basic.Consume",
    "Basic.Cancel",
    "Basic.Get",
    "Basic.Get",
    "Basic.Ack",
    "Basic.Ack",
    "Basic.Nack",
    "Basic.Reject",
    "Basic.Recover",
    "Basic.RecoverAsync",
    "Confirm.Select",
    "Tx.Select",
    "Tx.Commit",
    "Tx.Rollback",
    "Channel.Flow",
    "Channel.Open",
    "Channel.Close",
    "Channel.CloseOk",
]


@st.composite
def sequence_step(draw: st.DrawFn, frame_max: int = wire.FRAME_MAX) -> bytes:
    channel = draw(st.sampled_from(CHANNELS))
    which = draw(st.integers(0, 15))
    if which < 4:
        return draw(publish_frames(channel, frame_max=frame_max))
    if which == 4:
        return draw(interleaved_publishes(frame_max))
    name = draw(st.sampled_from(SEQUENCE_METHODS))
    key = wire.METHOD_IDS[name]
    values: dict[str, object] = {}
    for field_name, kind in wire.METHODS[key][1]:
        if field_name == "arguments":
            values[field_name] = draw(
                st.one_of(
                    st.just(wire.table([])),
                    plausible_tables(),
                    plausible_tables(),
                    field_tables(allow_malformed=False),
                )
            )
        elif field_name in ("ticket", "prefetch_size"):
            values[field_name] = 0 if draw(st.integers(0, 9)) else draw(shorts)
        elif field_name == "delivery_tag":
            values[field_name] = draw(st.one_of(st.integers(0, 8), longlongs))
        elif field_name == "reply_code":
            values[field_name] = 200
        elif kind == "shortstr" and field_name in NAME_POOLS:
            values[field_name] = draw(st.sampled_from(NAME_POOLS[field_name]))
        else:
            values[field_name] = draw(field_value(field_name, kind))
    return wire.frame(wire.METHOD, channel, wire.method_payload(key, values))


@st.composite
def sequence_cases(draw: st.DrawFn) -> Case:
    """Open channels 1-3, then 1-25 well-framed methods and publishes across them."""
    frame_max = draw(st.sampled_from([wire.FRAME_MAX] * 3 + [4096]))
    steps = draw(st.lists(sequence_step(frame_max), min_size=1, max_size=25))
    second = b""
    if draw(st.booleans()):  # another client on the same queues at the same time
        second = opened(CHANNELS) + b"".join(draw(st.lists(sequence_step(frame_max), max_size=10)))
    return Case(
        "sequences",
        opened(CHANNELS) + b"".join(steps),
        clean_close=draw(st.booleans()),
        second=second,
        frame_max=frame_max,
    )


# ------------------------------------------------------------------------------ handshake
HEADERS = [
    wire.PROTOCOL_HEADER,
    b"AMQP\x01\x01\x00\x09",
    b"AMQP\x00\x00\x09\x00",
    b"AMQP\x00\x00\x08\x00",
    b"AMQP\x00\x01\x00\x00",
    b"GET / HT",
    b"\x00" * 8,
]


@st.composite
def client_properties(draw: st.DrawFn) -> bytes:
    """Client properties as clients send them, or with odd capabilities, or random."""
    capabilities = draw(
        st.one_of(
            st.lists(
                st.tuples(
                    st.sampled_from(
                        [
                            b"consumer_cancel_notify",
                            b"connection.blocked",
                            b"authentication_failure_close",
                            b"basic.nack",
                        ]
                    ),
                    scalar_values,
                ),
                max_size=4,
            ).map(lambda e: b"F" + wire.table(e)),
            field_values,
        )
    )
    entries = [(b"product", b"S" + wire.longstr(b"fuzz")), (b"capabilities", capabilities)]
    entries += draw(st.lists(st.tuples(table_keys, field_values), max_size=4))
    good = wire.table(draw(st.permutations(entries)))
    return draw(mutated_table(good)) if draw(st.integers(0, 9)) == 0 else good


@st.composite
def handshake_cases(draw: st.DrawFn) -> Case:
    """The protocol header and the handshake (StartOk, TuneOk, Open) with random values, random
    frames slipped in between, and any frame possibly mutated."""
    header = wire.PROTOCOL_HEADER if draw(st.integers(0, 9)) else draw(st.sampled_from(HEADERS[1:]))
    mechanism = draw(st.sampled_from([b"PLAIN"] * 6 + [b"AMQPLAIN", b"EXTERNAL", b"", b"plain"]))
    if mechanism == b"AMQPLAIN":
        response = wire.table(
            [
                (b"LOGIN", b"S" + wire.longstr(b"guest")),
                (b"PASSWORD", b"S" + wire.longstr(b"guest")),
            ]
        )[4:]
    else:
        response = draw(
            st.sampled_from(
                [b"\x00guest\x00guest"] * 6 + [b"\x00guest\x00nope", b"guest", b"", b"\x00\x00"]
            )
        )
    start_ok = wire.method_frame(
        0,
        "Connection.StartOk",
        client_properties=draw(client_properties()),
        mechanism=mechanism,
        response=response,
        locale=draw(st.sampled_from([b"en_US", b"", b"xx"])),
    )
    limits = st.one_of(st.just(None), st.integers(0, 2**16 - 1))
    channel_max, heartbeat = draw(limits), draw(st.one_of(st.just(0), st.integers(0, 5)))
    frame_max = draw(
        st.one_of(st.just(None), st.sampled_from([0, 1, 4095, 4096, 131072, 131073]), longs)
    )
    tune = wire.tune_ok(
        2047 if channel_max is None else channel_max,
        wire.FRAME_MAX if frame_max is None else frame_max,
        heartbeat,
    )
    vhost = draw(st.sampled_from([b"/"] * 6 + [b"", b"nope", b"\xff"]))
    frames = [start_ok, tune, wire.connection_open(vhost)]
    frames = frames[: draw(st.sampled_from([3, 3, 3, 2, 1, 0]))]
    for _ in range(draw(st.integers(0, 2))):
        frames.insert(draw(st.integers(0, len(frames))), draw(any_frame()))
    frames = [draw(mutate(f)) if draw(st.integers(0, 4)) == 0 else f for f in frames]
    # Then some use of the connection, where the odd client properties and tuning matter, and
    # sometimes another client working on the same queues.
    frames.append(opened(CHANNELS))
    frames += draw(st.lists(sequence_step(), max_size=8))
    second = b""
    if draw(st.integers(0, 2)) == 0:
        second = opened(CHANNELS) + b"".join(draw(st.lists(sequence_step(), max_size=8)))
    return Case(
        "handshake",
        header + b"".join(frames),
        in_header=True,
        clean_close=draw(st.booleans()),
        second=second,
    )


# ------------------------------------------------------------------------------ found before
def _declare(channel: int, queue: bytes, durable: bool, arguments: bytes, passive: bool = False):
    return wire.method_frame(
        channel,
        "Queue.Declare",
        ticket=0,
        queue=queue,
        passive=passive,
        durable=durable,
        exclusive=not durable,
        auto_delete=False,
        nowait=False,
        arguments=arguments,
    )


def _nested(depth: int) -> bytes:
    value = b"I\x00\x00\x00\x01"
    for _ in range(depth):
        value = b"F" + wire.table([(b"k", value)])
    return value


def _poisoned_publish(headers_flags: int, properties: bytes) -> bytes:
    """Declare fz.poison, publish a message whose property list no client can decode, get it."""
    header = struct.pack(">HHQH", 60, 0, 1, headers_flags) + properties
    return (
        opened([1])
        + _declare(1, b"fz.poison", False, wire.table([]))
        + wire.method_frame(
            1,
            "Basic.Publish",
            ticket=0,
            exchange=b"",
            routing_key=b"fz.poison",
            mandatory=False,
            immediate=False,
        )
        + wire.frame(wire.HEADER, 1, header)
        + wire.frame(wire.BODY, 1, b"x")
        + wire.method_frame(1, "Basic.Get", ticket=0, queue=b"fz.poison", no_ack=True)
    )


# What earlier runs found, replayed first (hypothesis's explicit phase) in every run.
FOUND: dict[str, list[Case]] = {
    "frames": [
        # a 404 whose reply text names a 225-byte Cyrillic queue: 541 when the text was cut to
        # 255 characters instead of 255 bytes
        Case("frames", opened([1]) + _declare(1, "платежи-".encode() * 15, False, b"\0" * 4, True))
    ],
    "tables": [
        # arguments nested 97-99 levels: accepted by the decoder, refused by the log (541), or
        # breaking the snapshot at the next segment roll (and every restart after it)
        Case(
            "tables",
            opened([1])
            + _declare(1, f"fz.deep{depth}".encode(), True, wire.table([(b"k", _nested(depth))])),
        )
        for depth in (97, 98, 99)
    ],
    "sequences": [
        # a headers table with an unknown type letter, a key running past its table, and a
        # continuation flag with no flags after it: relayed to consumers, who cannot decode them
        Case("sequences", _poisoned_publish(0x2000, wire.table([(b"k", b"U")]))),
        Case("sequences", _poisoned_publish(0x2000, struct.pack(">I", 2) + b"\x05k")),
        Case("sequences", _poisoned_publish(0x0001, b"")),
    ],
}
