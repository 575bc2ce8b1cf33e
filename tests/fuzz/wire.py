"""Bytes for the fuzz tests, built by hand so that anything can be sent: method payloads for every
class and method pamqp knows (with any field values, odd UTF-8 included), field tables of every
type letter (and unknown ones, and absurd nesting), content headers, frames, and mutations of
them. And the other way round: a fuzz connection that sends such bytes after a normal handshake,
reads whatever the broker answers without trusting it (no pamqp on this side, so a reply pamqp
would refuse is still seen), and says what went wrong.

Nothing here needs hypothesis: `python -m tests.fuzz.replay` uses it to replay a finding.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

from pamqp import commands, header

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8
ACCESS_REQUEST = (30, 10)  # deprecated, not in pamqp, still answered by RabbitMQ

# The channel of the liveness probe a fuzzed exchange ends with; fuzz frames never use it.
PROBE_CHANNEL = 999
# How long the broker gets to hang up after our Connection.Close-Ok before we drop the socket.
CLOSE_OK_WAIT = 0.02
# The frame size the broker proposes (config/broker.yaml limits.frame_max).
FRAME_MAX = 131072

INTERNAL_ERROR = 541

CONNECTION_CLOSE = commands.Connection.Close.index
CONNECTION_CLOSE_OK = commands.Connection.CloseOk.index
CHANNEL_OPEN_OK = commands.Channel.OpenOk.index
CHANNEL_CLOSE = commands.Channel.Close.index
CHANNEL_CLOSE_OK = commands.Channel.CloseOk.index

# Every method pamqp knows, by (class id, method id), with its fields' names and wire types.
METHODS: dict[tuple[int, int], tuple[str, list[tuple[str, str]]]] = {
    (index >> 16, index & 0xFFFF): (
        cls.name,
        [(name, cls.amqp_type(name)) for name in cls.__slots__],
    )
    for index, cls in commands.INDEX_MAPPING.items()
}
METHODS[ACCESS_REQUEST] = (
    "Access.Request",
    [
        ("realm", "shortstr"),
        ("exclusive", "bit"),
        ("passive", "bit"),
        ("active", "bit"),
        ("write", "bit"),
        ("read", "bit"),
    ],
)
METHOD_IDS: dict[str, tuple[int, int]] = {name: key for key, (name, _) in METHODS.items()}

# Content header properties of class Basic, in flag order (bit 15 first).
PROPERTIES: list[tuple[str, str]] = [
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
]


# ------------------------------------------------------------------------------ encoders
def shortstr(data: bytes) -> bytes:
    return bytes((len(data),)) + data[:255]


def longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A field table from (key, encoded value) pairs: keys may repeat or be odd on purpose."""
    body = b"".join(shortstr(key) + value for key, value in entries)
    return struct.pack(">I", len(body)) + body


def array(values: list[bytes]) -> bytes:
    body = b"".join(values)
    return struct.pack(">I", len(body)) + body


def encode_field(kind: str, value: object) -> bytes:
    """One method or property field of wire type `kind`; strings are bytes, tables are already
    encoded (including their length)."""
    if kind == "octet":
        return struct.pack(">B", value)
    if kind == "short":
        return struct.pack(">H", value)
    if kind == "long":
        return struct.pack(">I", value)
    if kind in ("longlong", "timestamp"):
        return struct.pack(">Q", value)
    if kind == "shortstr":
        assert isinstance(value, bytes)
        return shortstr(value)
    if kind == "longstr":
        assert isinstance(value, bytes)
        return longstr(value)
    if kind == "table":
        assert isinstance(value, bytes)
        return value
    raise ValueError(f"no encoder for {kind}")


def method_payload(key: tuple[int, int], values: dict[str, object]) -> bytes:
    """Class id, method id and the fields in order; consecutive bits share octets (LSB first)."""
    _, fields = METHODS[key]
    out = [struct.pack(">HH", *key)]
    bits: list[bool] = []

    def flush_bits() -> None:
        for start in range(0, len(bits), 8):
            octet = 0
            for offset, bit in enumerate(bits[start : start + 8]):
                octet |= int(bit) << offset
            out.append(bytes((octet,)))
        bits.clear()

    for name, kind in fields:
        if kind == "bit":
            bits.append(bool(values.get(name, False)))
            continue
        flush_bits()
        out.append(encode_field(kind, values[name]))
    flush_bits()
    return b"".join(out)


def content_header(
    body_size: int,
    properties: dict[str, object],
    class_id: int = 60,
    weight: int = 0,
    flags: int | None = None,
) -> bytes:
    """A content header payload; `flags` overrides the property flags the values imply."""
    implied = 0
    values = []
    for bit, (name, kind) in zip(range(15, 1, -1), PROPERTIES, strict=True):
        if name in properties:
            implied |= 1 << bit
            values.append(encode_field(kind, properties[name]))
    head = struct.pack(">HHQH", class_id, weight, body_size, implied if flags is None else flags)
    return head + b"".join(values)


def frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes((end,))


def method_frame(channel: int, name: str, **values: object) -> bytes:
    return frame(METHOD, channel, method_payload(METHOD_IDS[name], values))


def open_channel(channel: int) -> bytes:
    return method_frame(channel, "Channel.Open", out_of_band=b"")


def plain_start_ok(user: bytes = b"guest", password: bytes = b"guest") -> bytes:
    return method_frame(
        0,
        "Connection.StartOk",
        client_properties=table(
            [(b"product", b"S" + longstr(b"warren-fuzz")), (b"capabilities", b"F" + table([]))]
        ),
        mechanism=b"PLAIN",
        response=b"\x00" + user + b"\x00" + password,
        locale=b"en_US",
    )


def tune_ok(channel_max: int = 2047, frame_max: int = FRAME_MAX, heartbeat: int = 0) -> bytes:
    return method_frame(
        0, "Connection.TuneOk", channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
    )


def connection_open(vhost: bytes = b"/") -> bytes:
    return method_frame(0, "Connection.Open", virtual_host=vhost, capabilities=b"", insist=False)


def connection_close() -> bytes:
    return method_frame(
        0, "Connection.Close", reply_code=200, reply_text=b"bye", class_id=0, method_id=0
    )


# ------------------------------------------------------------------------------ framing walk
def pending_after(data: bytes, start: int = 0, limit: int = FRAME_MAX) -> int:
    """How many more bytes the broker needs to finish the frame `data` leaves open (0: none).

    Mirrors the broker's framing: a frame header announcing more than `limit` closes the
    connection at once, so nothing is pending after it. With an incomplete frame header, the
    count is what completes the header (the size is not known before).
    """
    position = start
    while len(data) - position >= 7:
        size = struct.unpack_from(">I", data, position + 3)[0]
        if size > limit:
            return 0
        end = position + 7 + size + 1
        if end > len(data):
            return end - len(data)
        position = end
    return 0 if position >= len(data) else 7 - (len(data) - position)


def pad_open_frame(data: bytes, start: int = 0, limit: int = FRAME_MAX) -> bytes:
    """Zeros that finish whatever frame `data` leaves open, plus one more all-zero frame: the
    broker then sees a bad frame-end octet (or frame type 0) and must close with 501, instead
    of rightly waiting for bytes that never come. Empty when `data` ends on a frame boundary."""
    padding = b""
    for _ in range(8):
        missing = pending_after(data + padding, start, limit)
        if not missing:
            break
        padding += bytes(missing)
    return padding + bytes(8) if padding else b""


# ------------------------------------------------------------------------------ the exchange
@dataclass
class Close:
    level: str  # "connection" or "channel"
    channel: int
    code: int
    text: str
    class_id: int
    method_id: int

    def __str__(self) -> str:
        return (
            f"{self.level}.close {self.code} {self.text!r} (blames {self.class_id}.{self.method_id}"
            f" on channel {self.channel})"
        )


@dataclass
class Outcome:
    """What the broker did with one fuzzed exchange."""

    closes: list[Close] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)  # method names / frame kinds, in order
    problems: list[str] = field(default_factory=list)
    probe_answered: bool = False
    eof: bool = False  # the broker hung up
    slow_hang_up: bool = False  # still open CLOSE_OK_WAIT after our Close-Ok
    refused_header: bytes | None = None
    elapsed: float = 0.0

    def summary(self) -> str:
        parts = [f"replies={self.replies[:30]}"]
        parts += [str(close) for close in self.closes]
        if self.refused_header is not None:
            parts.append(f"protocol header refused with {self.refused_header!r}")
        parts.append("broker hung up" if self.eof else "connection still open")
        if self.probe_answered:
            parts.append("probe answered")
        return "; ".join(parts)


def parse_close(payload: bytes) -> tuple[int, str, int, int]:
    code = struct.unpack_from(">H", payload, 4)[0]
    length = payload[6]
    text = payload[7 : 7 + length]
    if len(text) != length:
        raise ValueError("truncated reply text")
    class_id, method_id = struct.unpack_from(">HH", payload, 7 + length)
    return code, text.decode("utf-8", "replace"), class_id, method_id


ACCESS_REQUEST_OK = 0x001E000B  # (30, 11): ticket
CONTENT_METHODS = {
    commands.Basic.Deliver.index,
    commands.Basic.GetOk.index,
    commands.Basic.Return.index,
}


def undecodable(decode: object, payload: bytes) -> str | None:
    """Why stock pamqp (what clients use) cannot decode this, or None. Text that is not UTF-8
    does not count: RabbitMQ passes such bytes through too."""
    try:
        decode(payload)  # type: ignore[operator]
    except UnicodeDecodeError:
        return None
    except RecursionError:
        return None  # the client's own limit, on absurd nesting
    except (OverflowError, OSError):
        return None  # a timestamp pamqp cannot make a datetime of; pika reads it as an int
    except Exception as error:
        if "out of range" in str(error):
            return None  # the same, as a ValueError
        return f"{type(error).__name__}: {error}"
    return None


class ContentCheck:
    """What the broker sends must be well-formed for any client: every method decodes, a
    content header follows Deliver/GetOk/Return, decodes, and exactly its body size follows."""

    def __init__(self, frame_max: int = FRAME_MAX) -> None:
        self.expect: dict[int, int | None] = {}  # channel -> body bytes still due (None: header)
        self.frame_max = frame_max

    def frame(self, frame_type: int, channel: int, payload: bytes) -> str | None:
        due = self.expect.get(channel, -1)
        if len(payload) + 8 > self.frame_max:
            return f"broker sent a {len(payload) + 8}-byte frame; frame_max is {self.frame_max}"
        if frame_type == METHOD:
            index = int.from_bytes(payload[:4], "big")
            if due != -1:
                return f"method {index:#x} on channel {channel} in the middle of a content"
            if index == ACCESS_REQUEST_OK and len(payload) == 6:
                return None
            cls = commands.INDEX_MAPPING.get(index)
            if cls is None:
                return f"broker sent unknown method {index:#x}"
            why = undecodable(lambda data: cls().unmarshal(data), payload[4:])
            if why:
                return f"broker sent a {cls.name} that clients cannot decode ({why}): {payload!r}"
            if index in CONTENT_METHODS:
                self.expect[channel] = None
            return None
        if frame_type == HEADER:
            if due is not None:
                return f"content header on channel {channel} without a content method"
            why = undecodable(lambda data: header.ContentHeader().unmarshal(data), payload)
            size = struct.unpack_from(">Q", payload, 4)[0] if len(payload) >= 12 else 0
            if size:
                self.expect[channel] = size
            else:
                del self.expect[channel]
            if why:
                return (
                    f"broker relayed a content header that clients cannot decode ({why}):"
                    f" {payload[:200]!r}"
                )
            return None
        if due is None or due == -1:
            return f"content body on channel {channel} without a content header"
        left = due - len(payload)
        if left < 0:
            return f"content body on channel {channel} longer than its header says"
        if left:
            self.expect[channel] = left
        else:
            del self.expect[channel]
        return None


class FuzzConnection:
    """One TCP connection to the broker that sends fuzzed bytes and judges the answer."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.timeout = timeout
        self._started = time.monotonic()
        self.frame_max = FRAME_MAX

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> FuzzConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level ----------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Send; False when the broker has already closed the socket."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _fill(self, deadline: float) -> bool:
        """Read more; False on EOF (or reset). Raises TimeoutError at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError):
            return False
        except TimeoutError:
            raise
        except OSError:
            return False
        if not data:
            return False
        self.buffer += data
        return True

    def next_frame(self, deadline: float) -> tuple[int, int, bytes, int] | None:
        """(type, channel, payload, end octet), or None on EOF."""
        while True:
            if len(self.buffer) >= 7:
                frame_type, channel, size = struct.unpack_from(">BHI", self.buffer)
                total = 7 + size + 1
                if len(self.buffer) >= total:
                    payload = self.buffer[7 : 7 + size]
                    end = self.buffer[7 + size]
                    self.buffer = self.buffer[total:]
                    return frame_type, channel, payload, end
            if not self._fill(deadline):
                return None

    def handshake(
        self, user: bytes = b"guest", password: bytes = b"guest", frame_max: int = FRAME_MAX
    ) -> None:
        """A plain PLAIN handshake with heartbeats off, up to Connection.OpenOk."""
        self.frame_max = frame_max
        self.send(PROTOCOL_HEADER)
        deadline = time.monotonic() + self.timeout
        expected = [
            commands.Connection.Start.index,
            commands.Connection.Tune.index,
            commands.Connection.OpenOk.index,
        ]
        answers = [plain_start_ok(user, password), tune_ok(frame_max=frame_max) + connection_open()]
        for index in expected:
            got = self.next_frame(deadline)
            if got is None:
                raise ConnectionError("broker hung up during the handshake")
            frame_type, _, payload, _ = got
            if frame_type != METHOD or int.from_bytes(payload[:4], "big") != index:
                raise ConnectionError(f"unexpected handshake reply {got!r}")
            if answers:
                self.send(answers.pop(0))

    # -- the fuzzed exchange ------------------------------------------------------------------
    def exchange(
        self,
        data: bytes,
        *,
        in_header: bool = False,
        frame_limit: int = 0,
        wait: float = 3.0,
        reply_channel_close: bool = True,
    ) -> Outcome:
        """Send `data` (after the handshake, or from the protocol header on if `in_header`),
        then a probe (Channel.Open on PROBE_CHANNEL, padded to finish any frame `data` leaves
        open) and read until the probe is answered or the broker closes the connection.

        Every Connection.Close is answered with Close-Ok and the broker must then hang up;
        Channel.Close is answered with Close-Ok like a client would. The problems list says
        what broke the rules (no answer within `wait`, malformed replies, no hang-up).
        """
        self.begin(data, in_header=in_header, frame_limit=frame_limit or self.frame_max)
        return self.collect(in_header=in_header, wait=wait, reply_channel_close=reply_channel_close)

    def begin(self, data: bytes, *, in_header: bool = False, frame_limit: int = 0) -> None:
        """The sending half of `exchange`: data, probe and padding."""
        frame_limit = frame_limit or max(self.frame_max, 4096)
        self._started = time.monotonic()
        self.frame_max = FRAME_MAX
        start: int | None = 0
        if in_header:
            start = 8 if data[:8] == PROTOCOL_HEADER else None
        probe = open_channel(PROBE_CHANNEL)
        if start is not None and pending_after(data, start, frame_limit):
            # The probe goes into the frame `data` leaves open; if its own frame-end octet
            # happens to close that frame, one all-zero frame still forces the 501.
            probe += pad_open_frame(data + probe, start, frame_limit) or bytes(8)
        self.send(data + probe)

    def collect(
        self, *, in_header: bool = False, wait: float = 3.0, reply_channel_close: bool = True
    ) -> Outcome:
        """The reading half of `exchange`."""
        outcome = Outcome()
        started = self._started
        deadline = started + wait
        header_checked = not in_header
        content = ContentCheck(self.frame_max)
        closing_deadline: float | None = None
        while True:
            try:
                if not header_checked:
                    if not self._fill_to(1, deadline):
                        outcome.eof = True
                        break
                    if self.buffer.startswith(b"AMQP") or not self.buffer.startswith(b"\x01"):
                        # Protocol header refused: the broker answers its own and hangs up.
                        self._fill_to(8, deadline)
                        outcome.refused_header = self.buffer[:8]
                        if outcome.refused_header != PROTOCOL_HEADER:
                            outcome.problems.append(
                                f"answered a protocol header with {self.buffer[:16]!r}"
                            )
                        self.buffer = self.buffer[8:]
                        outcome.replies.append("protocol-header")
                        header_checked = True
                        continue
                    header_checked = True
                got = self.next_frame(closing_deadline or deadline)
            except TimeoutError:
                if closing_deadline is not None:
                    # Not a failure: the broker may rightly wait for a Close-Ok it cannot find
                    # after a framing error (it hangs up after its close-ok timeout).
                    outcome.slow_hang_up = True
                elif not outcome.closes or outcome.closes[-1].level != "connection":
                    outcome.problems.append(
                        f"no answer to the probe and no Connection.Close within {wait}s (hang)"
                    )
                break
            if got is None:
                outcome.eof = True
                break
            frame_type, channel, payload, end = got
            if end != FRAME_END:
                outcome.problems.append(
                    f"broker sent a frame with end octet {end:#x}: type {frame_type} channel"
                    f" {channel} payload {payload[:64]!r}"
                )
                break
            if frame_type == HEARTBEAT:
                outcome.replies.append("heartbeat")
                continue
            if frame_type in (HEADER, BODY):
                outcome.replies.append("header" if frame_type == HEADER else "body")
                problem = content.frame(frame_type, channel, payload)
                if problem:
                    outcome.problems.append(problem)
                continue
            if frame_type != METHOD or len(payload) < 4:
                outcome.problems.append(f"broker sent frame type {frame_type}: {payload[:64]!r}")
                break
            problem = content.frame(frame_type, channel, payload)
            if problem:
                outcome.problems.append(problem)
            key = (int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:4], "big"))
            name = METHODS.get(key, (f"{key[0]}.{key[1]}", []))[0]
            outcome.replies.append(name if channel == 0 else f"{name}@{channel}")
            index = (key[0] << 16) | key[1]
            if index in (CONNECTION_CLOSE, CHANNEL_CLOSE):
                level = "connection" if index == CONNECTION_CLOSE else "channel"
                try:
                    close = Close(level, channel, *parse_close(payload))
                except (ValueError, struct.error, IndexError):
                    outcome.problems.append(f"malformed {level}.close {payload!r}")
                    break
                outcome.closes.append(close)
                if level == "connection" and channel != 0:
                    outcome.problems.append(f"Connection.Close on channel {channel}")
                if level == "connection":
                    self.send(frame(METHOD, 0, struct.pack(">I", CONNECTION_CLOSE_OK)))
                    if closing_deadline is None:
                        closing_deadline = time.monotonic() + CLOSE_OK_WAIT
                    continue
                if channel == PROBE_CHANNEL:
                    outcome.probe_answered = True
                    break
                if reply_channel_close:
                    self.send(frame(METHOD, channel, struct.pack(">I", CHANNEL_CLOSE_OK)))
                continue
            if closing_deadline is None and channel == PROBE_CHANNEL and index == CHANNEL_OPEN_OK:
                outcome.probe_answered = True
                break
        outcome.elapsed = time.monotonic() - started
        return outcome

    def _fill_to(self, count: int, deadline: float) -> bool:
        while len(self.buffer) < count:
            if not self._fill(deadline):
                return False
        return True

    def finish(self, clean: bool) -> str | None:
        """End the connection: Connection.Close and wait for Close-Ok (clean), or just drop the
        socket. Returns a problem if a clean close was not answered."""
        if not clean:
            self.close()
            return None
        if not self.send(connection_close()):
            self.close()
            return None
        deadline = time.monotonic() + 2.0
        try:
            while True:
                got = self.next_frame(deadline)
                if got is None:
                    return None  # it was closing already
                frame_type, _, payload, _ = got
                index = int.from_bytes(payload[:4], "big") if frame_type == METHOD else -1
                if index == CONNECTION_CLOSE_OK:
                    return None
                if index == CONNECTION_CLOSE:
                    self.send(frame(METHOD, 0, struct.pack(">I", CONNECTION_CLOSE_OK)))
                    return None
        except TimeoutError:
            return "no Connection.Close-Ok within 2s of a client Connection.Close"
        finally:
            self.close()
