"""A small raw-socket AMQP 0-9-1 client for protocol-level compat tests.

Built on pamqp's marshal/unmarshal so tests can send exactly the bytes they want (bad frames,
truncated payloads, odd handshakes) and read exactly what the broker answers. Every read is
bounded by a timeout and raises `RawTimeout` instead of hanging on a broken broker.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import pika
from pamqp import commands, constants, encode, frame, header, heartbeat
from pamqp.base import Frame
from pamqp.body import ContentBody

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
DEFAULT_TIMEOUT = 5.0

AnyFrame = frame.FrameTypes
F = TypeVar("F", bound=Frame)


# The spec's reply-code names, as RabbitMQ prefixes its reply texts with them.
REPLY_NAMES: dict[int, str] = {
    200: "REPLY_SUCCESS",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}


class RawTimeout(AssertionError):
    """The broker sent nothing (or not enough) before the deadline."""


class RawEOF(AssertionError):
    """The broker closed the socket while the test expected more data."""


@dataclass(frozen=True)
class Target:
    """Where and as whom to connect, parsed from an amqp:// URL."""

    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlparse(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5672,
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=unquote(path) if path else "/",
        )


def plain_response(user: str, password: str) -> bytes:
    """SASL PLAIN: authzid NUL authcid NUL password."""
    return b"\x00" + user.encode() + b"\x00" + password.encode()


def amqplain_response(user: str, password: str) -> bytes:
    """AMQPLAIN: a field table holding LOGIN and PASSWORD, without the 4-byte table length."""
    return encode.field_table({"LOGIN": user, "PASSWORD": password})[4:]


def assert_reply(
    close: commands.Connection.Close | commands.Channel.Close,
    code: int,
    text: str | None = None,
    class_method: tuple[int, int] | None = None,
) -> None:
    """Check a Close's reply code, that its text starts with the code's name, and optionally
    the exact text and the (class_id, method_id) it blames."""
    got = f"{close.reply_code} {close.reply_text!r}"
    assert close.reply_code == code, got
    assert close.reply_text.startswith(f"{REPLY_NAMES[code]} - "), got
    if text is not None:
        assert close.reply_text == text, got
    if class_method is not None:
        assert (close.class_id, close.method_id) == class_method, got


def parse_frames(data: bytes) -> list[tuple[int, AnyFrame]]:
    """Split raw bytes (e.g. what arrived before the socket closed) into (channel, frame)."""
    frames = []
    while len(data) >= constants.FRAME_HEADER_SIZE:
        used, channel, value = frame.unmarshal(data)
        frames.append((channel, value))
        data = data[used:]
    return frames


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    """One frame with an arbitrary type, channel, payload and frame-end octet."""
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def method_payload(method: Frame) -> bytes:
    """A method frame's payload: class id, method id, arguments."""
    return struct.pack(">I", method.index) + method.marshal()


def start_ok_payload(mechanism: str, response: bytes, properties: dict[str, Any]) -> bytes:
    """Connection.StartOk built by hand so the SASL response may hold any bytes."""
    return b"".join(
        [
            struct.pack(">I", commands.Connection.StartOk.index),
            encode.field_table(properties),
            encode.short_string(mechanism),
            struct.pack(">I", len(response)) + response,
            encode.short_string("en_US"),
        ]
    )


CLIENT_PROPERTIES: dict[str, Any] = {
    "product": "warren-compat-rawamqp",
    "capabilities": {"authentication_failure_close": True, "consumer_cancel_notify": True},
}


class RawAMQP:
    """One TCP connection speaking hand-made AMQP frames."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = Target.from_url(url)
        self.timeout = timeout
        self.sock = socket.create_connection((self.target.host, self.target.port), timeout)
        self._buf = b""
        self.start: commands.Connection.Start | None = None
        self.tune: commands.Connection.Tune | None = None
        self.frame_max = 131072

    # -- context management ---------------------------------------------------------------------

    def __enter__(self) -> RawAMQP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- sending --------------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_header(self, data: bytes = PROTOCOL_HEADER) -> None:
        self.send_bytes(data)

    def send(self, value: AnyFrame, channel: int = 0) -> None:
        """Marshal a pamqp frame (method, content header, body, heartbeat) and send it."""
        self.send_bytes(frame.marshal(value, channel))

    def send_raw(self, frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> None:
        self.send_bytes(raw_frame(frame_type, channel, payload, end))

    def publish(
        self,
        channel: int,
        body: bytes,
        exchange: str = "",
        routing_key: str = "",
        chunk: int | None = None,
        properties: commands.Basic.Properties | None = None,
    ) -> None:
        """Basic.Publish + content header + body frames of at most `chunk` bytes (none if empty)."""
        self.send(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), channel)
        props = properties or commands.Basic.Properties()
        self.send(header.ContentHeader(0, len(body), props), channel)
        step = chunk or max(1, self.frame_max - 8)
        for offset in range(0, len(body), step):
            self.send(ContentBody(body[offset : offset + step]), channel)

    # -- receiving ------------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RawTimeout("timed out waiting for data from the broker")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError as exc:
            raise RawTimeout("timed out waiting for data from the broker") from exc
        except ConnectionResetError as exc:
            raise RawEOF("connection reset by the broker") from exc
        if not data:
            raise RawEOF("broker closed the socket")
        self._buf += data

    def read_bytes(self, count: int, timeout: float | None = None) -> bytes:
        """Exactly `count` raw bytes (for the protocol-header reply)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < count:
            self._fill(deadline)
        data, self._buf = self._buf[:count], self._buf[count:]
        return data

    def read_frame(self, timeout: float | None = None) -> tuple[int, AnyFrame]:
        """The next frame as (channel, pamqp frame); heartbeats included."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self._buf) >= constants.FRAME_HEADER_SIZE:
                size = struct.unpack(">I", self._buf[3:7])[0]
                total = constants.FRAME_HEADER_SIZE + size + 1
                if len(self._buf) >= total:
                    used, channel, value = frame.unmarshal(self._buf[:total])
                    self._buf = self._buf[used:]
                    return channel, value
            self._fill(deadline)

    def expect(self, kind: type[F], channel: int | None = None, timeout: float | None = None) -> F:
        """Read frames (skipping heartbeats) until one arrives; it must be a `kind`."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ch, value = self.read_frame(max(0.0, deadline - time.monotonic()))
            if isinstance(value, heartbeat.Heartbeat):
                continue
            if not isinstance(value, kind):
                raise AssertionError(f"expected {kind.name}, got {value.name} {dict(value)!r}")
            if channel is not None and ch != channel:
                raise AssertionError(f"expected {kind.name} on channel {channel}, got {ch}")
            return value

    def expect_connection_close(
        self, code: int | None = None, timeout: float | None = None, reply: bool = True
    ) -> commands.Connection.Close:
        """Read until Connection.Close arrives (answering CloseOk); check its reply code.

        Other frames before it are skipped. A socket closed before Close is a failure.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen: list[str] = []
        while True:
            try:
                _, value = self.read_frame(max(0.0, deadline - time.monotonic()))
            except RawEOF as exc:
                raise RawEOF(f"socket closed without Connection.Close (saw {seen})") from exc
            if isinstance(value, commands.Connection.Close):
                break
            seen.append(value.name)
        if reply:
            with contextlib.suppress(OSError):
                self.send(commands.Connection.CloseOk())
        if code is not None:
            assert value.reply_code == code, f"{value.reply_code} {value.reply_text!r}"
        return value

    def expect_channel_close(
        self, channel: int, code: int | None = None, timeout: float | None = None
    ) -> commands.Channel.Close:
        """Read until Channel.Close for `channel` arrives (answering CloseOk)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ch, value = self.read_frame(max(0.0, deadline - time.monotonic()))
            if isinstance(value, commands.Connection.Close):
                raise AssertionError(
                    f"got Connection.Close {value.reply_code} {value.reply_text!r} "
                    f"instead of Channel.Close"
                )
            if isinstance(value, commands.Channel.Close) and ch == channel:
                break
        self.send(commands.Channel.CloseOk(), channel)
        if code is not None:
            assert value.reply_code == code, f"{value.reply_code} {value.reply_text!r}"
        return value

    def expect_closed_socket(self, timeout: float | None = None) -> bytes:
        """Wait until the broker closes the socket; return whatever it sent before that."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            try:
                self._fill(deadline)
            except RawEOF:
                data, self._buf = self._buf, b""
                return data
            except RawTimeout as exc:
                raise RawTimeout(f"broker left the socket open for {wait}s") from exc

    # -- handshake ------------------------------------------------------------------------------

    def read_start(self, data: bytes = PROTOCOL_HEADER) -> commands.Connection.Start:
        """Send the protocol header and read Connection.Start."""
        self.send_header(data)
        self.start = self.expect(commands.Connection.Start, channel=0)
        return self.start

    def login(
        self,
        mechanism: str = "PLAIN",
        user: str | None = None,
        password: str | None = None,
        response: bytes | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        """Send Connection.StartOk for PLAIN or AMQPLAIN (or an explicit response)."""
        user = self.target.user if user is None else user
        password = self.target.password if password is None else password
        if response is None:
            encoder = amqplain_response if mechanism == "AMQPLAIN" else plain_response
            response = encoder(user, password)
        props = CLIENT_PROPERTIES if properties is None else properties
        self.send_raw(constants.FRAME_METHOD, 0, start_ok_payload(mechanism, response, props))

    def read_tune(self) -> commands.Connection.Tune:
        self.tune = self.expect(commands.Connection.Tune, channel=0)
        return self.tune

    def tune_ok(
        self,
        channel_max: int | None = None,
        frame_max: int | None = None,
        heartbeat: int | None = None,
    ) -> None:
        """Answer Tune; None takes the broker's proposal."""
        assert self.tune is not None
        ok = commands.Connection.TuneOk(
            channel_max=self.tune.channel_max if channel_max is None else channel_max,
            frame_max=self.tune.frame_max if frame_max is None else frame_max,
            heartbeat=self.tune.heartbeat if heartbeat is None else heartbeat,
        )
        self.frame_max = ok.frame_max or 131072
        self.send(ok)

    def open(self, vhost: str | None = None) -> None:
        """Send Connection.Open (no wait)."""
        self.send(
            commands.Connection.Open(virtual_host=self.target.vhost if vhost is None else vhost)
        )

    def handshake(
        self,
        mechanism: str = "PLAIN",
        channel_max: int | None = None,
        frame_max: int | None = None,
        heartbeat: int | None = 0,
        vhost: str | None = None,
    ) -> commands.Connection.OpenOk:
        """Full handshake up to Connection.OpenOk (heartbeats off unless asked)."""
        self.read_start()
        self.login(mechanism)
        self.read_tune()
        self.tune_ok(channel_max, frame_max, heartbeat)
        self.open(vhost)
        return self.expect(commands.Connection.OpenOk, channel=0)

    def open_channel(self, channel: int = 1) -> commands.Channel.OpenOk:
        self.send(commands.Channel.Open(), channel)
        return self.expect(commands.Channel.OpenOk, channel=channel)

    def basic_get(
        self, channel: int, queue: str
    ) -> tuple[commands.Basic.GetOk, header.ContentHeader, bytes] | None:
        """Basic.Get with auto-ack: (GetOk, content header, body), or None on GetEmpty."""
        self.send(commands.Basic.Get(queue=queue, no_ack=True), channel)
        _, reply = self.read_frame()
        if isinstance(reply, commands.Basic.GetEmpty):
            return None
        assert isinstance(reply, commands.Basic.GetOk), reply.name
        _, content = self.read_frame()
        assert isinstance(content, header.ContentHeader), content.name
        body = b""
        while len(body) < content.body_size:
            _, part = self.read_frame()
            assert isinstance(part, ContentBody), part.name
            body += part.value
        return reply, content, body

    def close_connection(self) -> commands.Connection.CloseOk:
        """Client-initiated Connection.Close; returns the broker's CloseOk."""
        self.send(
            commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        )
        return self.expect(commands.Connection.CloseOk, channel=0)


@contextlib.contextmanager
def raw_connection(
    url: str, timeout: float = DEFAULT_TIMEOUT, **handshake: Any
) -> Iterator[RawAMQP]:
    """A RawAMQP that has completed the handshake; closed on exit."""
    client = RawAMQP(url, timeout)
    try:
        client.handshake(**handshake)
        yield client
    finally:
        client.close()


def assert_broker_alive(url: str) -> None:
    """A fresh pika connection can declare, publish to and get from a queue."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"alive")
        for _ in range(50):
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is not None:
                assert body == b"alive"
                return
            time.sleep(0.02)
        raise AssertionError("broker accepted a publish but basic_get found nothing")
    finally:
        if conn.is_open:
            conn.close()
