"""A lean AMQP 0-9-1 load generator for the benchmarks.

pika spends far more CPU per message than a broker does, so it cannot measure one. This client
speaks just enough AMQP (handshake, declare, qos, publish, consume, ack, confirms) with
precompiled frames, on uvloop, so the same load reaches Warren and RabbitMQ and the broker, not the
client, is what runs out of CPU. Used by scripts/bench.py; not part of the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any

from pamqp import commands, frame as pamqp_frame
from pamqp.header import ProtocolHeader

FRAME_END = b"\xce"
PREFIX = struct.Struct(">BHI")
DELIVER = (60 << 16) | 60
BASIC_ACK = (60 << 16) | 80
BASIC_NACK = (60 << 16) | 120
GET_OK = (60 << 16) | 71


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return PREFIX.pack(kind, channel, len(payload)) + payload + FRAME_END


def _short(text: str) -> bytes:
    data = text.encode()
    return bytes((len(data),)) + data


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    persistent: bool,
    priority: int | None = None,
    headers: bytes | None = None,
) -> bytes:
    """Publish + header + body frames for one message, built once and sent many times;
    `headers` is an encoded field table (the headers property), sent with delivery-mode 2."""
    method = b"\x00\x3c\x00\x28\x00\x00" + _short(exchange) + _short(routing_key) + b"\x00"
    if headers is not None:  # headers and delivery-mode 2
        header = struct.pack(">HHQH", 60, 0, len(body), 0x3000) + headers + b"\x02"
    elif persistent:  # delivery-mode property only
        header = struct.pack(">HHQH", 60, 0, len(body), 0x1000) + b"\x02"
    elif priority is not None:  # priority property only
        header = struct.pack(">HHQH", 60, 0, len(body), 0x0800) + bytes((priority,))
    else:
        header = struct.pack(">HHQH", 60, 0, len(body), 0)
    return _frame(1, channel, method) + _frame(2, channel, header) + _frame(3, channel, body)


class LoadClient(asyncio.Protocol):
    """One connection; methods other than deliver/ack are awaited one at a time."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.on_deliver: Callable[[int, int], None] | None = None
        self.on_confirm: Callable[[int, bool, bool], None] | None = None
        self.frame_max = 131072
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.closed = asyncio.Event()
        self.elapsed = 0.0  # set by benchmark helpers that time this client's work

    # ------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(ProtocolHeader().marshal())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        position = 0
        size_total = len(buffer)
        acks: list[tuple[int, int]] = []
        while size_total - position >= 7:
            kind, channel, size = PREFIX.unpack_from(buffer, position)
            end = position + 7 + size
            if end >= size_total:
                break
            if kind == 1:
                index = int.from_bytes(buffer[position + 7 : position + 11], "big")
                if index == DELIVER:
                    tag_at = position + 12 + buffer[position + 11]
                    acks.append((channel, int.from_bytes(buffer[tag_at : tag_at + 8], "big")))
                elif index in (BASIC_ACK, BASIC_NACK) and self.on_confirm:
                    tag, flags = struct.unpack_from(">QB", buffer, position + 11)
                    self.on_confirm(tag, bool(flags & 1), index == BASIC_ACK)
                else:
                    raw = bytes(buffer[position : end + 1])
                    _, _, method = pamqp_frame.unmarshal(raw)
                    self.replies.put_nowait(method)
            elif kind == 8:
                self.transport.write(b"\x08\x00\x00\x00\x00\x00\x00\xce")  # type: ignore[union-attr]
            position = end + 1
        del buffer[:position]
        if acks and self.on_deliver:
            for channel, tag in acks:
                self.on_deliver(channel, tag)

    # ------------------------------------------------------------- helpers
    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        await self._can_write.wait()

    async def expect(self, kind: type) -> Any:
        method = await asyncio.wait_for(self.replies.get(), 30)
        if isinstance(method, commands.Connection.Close | commands.Channel.Close):
            raise RuntimeError(f"broker closed: {method.reply_code} {method.reply_text}")
        if not isinstance(method, kind):
            raise RuntimeError(f"expected {kind.__name__}, got {method}")
        return method

    async def call(self, channel: int, method: Any, reply: type) -> Any:
        self.send(pamqp_frame.marshal(method, channel))
        return await self.expect(reply)

    async def handshake(self, user: str, password: str, vhost: str) -> None:
        await self.expect(commands.Connection.Start)
        self.send(
            pamqp_frame.marshal(
                commands.Connection.StartOk(
                    client_properties={"product": "warren-loadgen"},
                    mechanism="PLAIN",
                    response=f"\0{user}\0{password}",
                ),
                0,
            )
        )
        tune = await self.expect(commands.Connection.Tune)
        self.frame_max = tune.frame_max
        self.send(
            pamqp_frame.marshal(
                commands.Connection.TuneOk(channel_max=16, frame_max=tune.frame_max, heartbeat=0),
                0,
            )
        )
        await self.call(0, commands.Connection.Open(virtual_host=vhost), commands.Connection.OpenOk)

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        goodbye = commands.Connection.Close(
            reply_code=200, reply_text="bye", class_id=0, method_id=0
        )
        with contextlib.suppress(RuntimeError, TimeoutError):
            await self.call(0, goodbye, commands.Connection.CloseOk)
        self.transport.close()


class MessageClient(LoadClient):
    """A LoadClient that also assembles each delivered message: `on_message(channel, tag,
    redelivered, body)` runs for every Basic.Deliver and Basic.Get-Ok once its body is complete.
    Slower than LoadClient's deliver fast path; for scenarios that check which messages arrived
    (the soak), not for throughput."""

    def __init__(self) -> None:
        super().__init__()
        self.on_message: Callable[[int, int, bool, bytes], None] | None = None
        # channel -> [delivery tag, redelivered, body size, body parts received so far]
        self._incoming: dict[int, list[Any]] = {}

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        position = 0
        while len(buffer) - position >= 7:
            kind, channel, size = PREFIX.unpack_from(buffer, position)
            end = position + 7 + size
            if end >= len(buffer):
                break
            payload = bytes(buffer[position + 7 : end])
            position = end + 1
            if kind == 1:
                self._method(channel, payload)
            elif kind == 2:
                incoming = self._incoming[channel]
                incoming[2] = struct.unpack_from(">Q", payload, 4)[0]
                if incoming[2] == 0:
                    self._complete(channel)
            elif kind == 3:
                incoming = self._incoming[channel]
                incoming[3].append(payload)
                if sum(map(len, incoming[3])) >= incoming[2]:
                    self._complete(channel)
            elif kind == 8:
                self.transport.write(b"\x08\x00\x00\x00\x00\x00\x00\xce")  # type: ignore[union-attr]
        del buffer[:position]

    def _method(self, channel: int, payload: bytes) -> None:
        index = int.from_bytes(payload[:4], "big")
        if index == DELIVER:
            tag, flags = struct.unpack_from(">QB", payload, 5 + payload[4])
            self._incoming[channel] = [tag, bool(flags & 1), -1, []]
        elif index == GET_OK:
            tag, flags = struct.unpack_from(">QB", payload, 4)
            self._incoming[channel] = [tag, bool(flags & 1), -1, []]
        elif index in (BASIC_ACK, BASIC_NACK) and self.on_confirm:
            tag, flags = struct.unpack_from(">QB", payload, 4)
            self.on_confirm(tag, bool(flags & 1), index == BASIC_ACK)
        else:
            _, _, method = pamqp_frame.unmarshal(_frame(1, channel, payload))
            self.replies.put_nowait(method)

    def _complete(self, channel: int) -> None:
        tag, redelivered, _, parts = self._incoming.pop(channel)
        if self.on_message:
            self.on_message(channel, tag, redelivered, b"".join(parts))


async def connect(
    host: str,
    port: int,
    user: str = "guest",
    password: str = "guest",
    factory: type[LoadClient] = LoadClient,
) -> Any:
    """A client of class `factory` (LoadClient or MessageClient), past the handshake."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(factory, host, port)
    await client.handshake(user, password, "/")
    return client


def ack_frame(channel: int, tag: int, multiple: bool = False) -> bytes:
    return _frame(1, channel, b"\x00\x3c\x00\x50" + struct.pack(">QB", tag, multiple))


def nack_frame(channel: int, tag: int, multiple: bool = False, requeue: bool = True) -> bytes:
    return _frame(
        1, channel, b"\x00\x3c\x00\x78" + struct.pack(">QB", tag, multiple | requeue << 1)
    )


def reject_frame(channel: int, tag: int, requeue: bool = True) -> bytes:
    return _frame(1, channel, b"\x00\x3c\x00\x5a" + struct.pack(">QB", tag, requeue))


def get_frame(channel: int, queue: str, no_ack: bool = False) -> bytes:
    return _frame(1, channel, b"\x00\x3c\x00\x46\x00\x00" + _short(queue) + bytes((no_ack,)))
