"""One client connection: handshake, tuning, heartbeats, frame dispatch and close codes.

`data_received` cuts frames out of a single bytearray and hands them to channels; outgoing frames
are collected during one loop iteration and written with one syscall. Errors raised anywhere below
carry their AMQP reply code: channel exceptions close that channel, connection exceptions close
the connection, and nothing a client sends can take the broker down.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from pamqp import commands

from broker import __version__
from broker.amqp import frames
from broker.amqp.channel import DELIVERY_BATCH_BYTES, Channel
from broker.amqp.flow import ALARM, BROKEN, TURN, WRITES, ReadFlow
from broker.core.errors import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
    AMQPError,
    ConnectionException,
)
from broker.core.footprint import CHANNEL_BYTES
from broker.core.queue import Queue
from broker.logs import fields

if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger("warren.connection")

# Handshake states, in order.
AWAIT_HEADER: Final = 0
AWAIT_START_OK: Final = 1
AWAIT_TUNE_OK: Final = 2
AWAIT_OPEN: Final = 3
OPEN: Final = 4
CLOSING: Final = 5
CLOSED: Final = 6

# The spec's minimum frame size, and the largest frame accepted until Tune-Ok has set the
# connection's own (as RabbitMQ): a client that has not authenticated cannot make the broker
# buffer and decode 128 KiB frames.
MIN_FRAME_MAX: Final = 4096
CLOSE_OK_TIMEOUT: Final = 3.0
# One connection handles frames for at most this long before the others get the loop: a client
# whose frames are expensive (its own huge consumer lists or binding sets) slows itself, not
# everyone. The clock is read every TURN_CHECK_FRAMES frames, off the per-frame cost.
TURN_SECONDS: Final = 0.005
TURN_CHECK_FRAMES: Final = 8
SHUTDOWN_CLOSE_OK_TIMEOUT: Final = 1.0
# Tx.Commit is synchronous: RabbitMQ refuses anything sent on the channel before its Commit-Ok
# (a pipelining client would otherwise pair later replies with the commit).
CHANNEL_CLOSE: Final = commands.Channel.Close.index.to_bytes(4, "big")
COMMIT_IN_PROGRESS: Final = ConnectionException(
    CHANNEL_ERROR, "unexpected command while processing 'tx.commit'"
)

# Client-initiated handshake methods: once the connection runs, RabbitMQ answers them with 504.
HANDSHAKE_METHODS = (
    commands.Connection.StartOk,
    commands.Connection.SecureOk,
    commands.Connection.TuneOk,
    commands.Connection.Open,
    commands.Connection.CloseOk,
)

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


class AMQPConnection(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.local = "?"
        self.name = "?"
        self.connected_at = 0
        self.tls = False
        self.state = AWAIT_HEADER
        self.buffer = bytearray()
        self.channels: dict[int, Channel] = {}
        self.closing_channels: set[int] = set()
        limits = self.config.limits
        self.frame_max = limits.frame_max
        self.channel_max = limits.channel_max
        self.heartbeat = 0
        self.user = ""
        self.vhost: Any = None
        self.access: Any = None  # the user's VhostAccess once the connection is open
        self.client_properties: dict[str, Any] = {}
        self.capabilities: frozenset[str] = frozenset()  # announced true in StartOk
        self.flow = ReadFlow()
        self.exclusive_queues: dict[str, Queue] = {}
        self.write_paused = False
        self._transport_paused = False
        self.batch_bytes = 0
        self.early_mark = 0  # batch_bytes when output was last written (write_early)
        # Memory alarm: a publisher is blocked (socket not read) while the alarm lasts; a
        # connection that has not published yet is only marked and blocked at its first publish.
        self.publisher = False
        self.blocking = False  # sampled in connection_made: a TLS handshake takes a while
        self.blocked = False
        self._out: list[frames.Chunk] = []
        self._flush_scheduled = False
        self._confirm_channels: set[Channel] = set()
        self._received = False
        self._sent = False
        self._missed_heartbeats = 0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.flow.attach(self.transport)  # type: ignore[arg-type]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        local = transport.get_extra_info("sockname")
        self.local = f"{local[0]}:{local[1]}" if local else "?"
        self.name = f"{self.peer} -> {self.local}"  # RabbitMQ's connection name
        self.connected_at = int(time.time() * 1000)  # ms since the epoch, as RabbitMQ
        self.tls = transport.get_extra_info("sslcontext") is not None
        self.blocking = self.broker.memory_alarm
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.broker.connections.add(self)
        self._timer = self.loop.call_later(
            self.config.limits.handshake_timeout, self._handshake_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.vhost is not None:  # it was opened, so it counts as closed now
            self.broker.counters.connections_closed += 1
            log.info("connection.closed", extra=fields(peer=self.peer, user=self.user))
        self.state = CLOSED
        self._release_everything()
        self.broker.connections.discard(self)

    # ------------------------------------------------------------------ memory alarm
    def memory_alarm_set(self) -> None:
        if self.publisher and self.state == OPEN:
            self._block()
        else:
            self.blocking = True

    def memory_alarm_cleared(self) -> None:
        self.blocking = False
        if not self.blocked:
            return
        self.blocked = False
        if self.supports("connection.blocked"):
            self._send_method(0, commands.Connection.Unblocked())
        if self.flow.resume(ALARM):
            self._parse()  # what arrived before the block and was left unread

    def published(self) -> None:
        """Called by a channel when a publish arrives while this connection is not yet known
        as a publisher, or while the alarm is pending for it."""
        self.publisher = True
        if self.blocking:
            self._block()

    def _block(self) -> None:
        self.blocking = False
        if self.blocked or self.transport is None:
            return
        self.blocked = True
        log.warning(
            "connection.blocked",
            extra=fields(peer=self.peer, user=self.user, reason="low on memory"),
        )
        if self.supports("connection.blocked"):
            self._send_method(0, commands.Connection.Blocked(reason="low on memory"))
        self.flow.pause(ALARM)

    def supports(self, capability: str) -> bool:
        """Whether the client announced this capability in Connection.StartOk."""
        return capability in self.capabilities

    # ------------------------------------------------------------------ write back-pressure
    # Output stops (`write_paused`) when the transport's buffer is full (pause_writing) or when
    # one loop iteration has framed DELIVERY_BATCH_BYTES for this connection (deliveries, Get-Ok,
    # returns): otherwise a consumer without prefetch would have a whole queue framed into memory
    # in one go. While output is stopped the socket is not read either and frames already read
    # wait in the buffer, so a client that pipelines Basic.Get without reading its replies
    # cannot make the broker buffer them without bound.
    def pause_writing(self) -> None:
        self._transport_paused = True
        self.write_paused = True
        self.flow.pause(WRITES)

    def resume_writing(self) -> None:
        self._transport_paused = False
        self._output_drained()

    def _output_drained(self) -> None:
        """The client's output went out: read its requests and deliver to it again."""
        if self._transport_paused or self.state == CLOSED:
            return
        self.write_paused = False
        if self.flow.resume(WRITES):
            self._parse()  # acks and requests that were left in the buffer come first
        if self.state != OPEN or self.write_paused:
            return
        for channel in list(self.channels.values()):
            channel.resume_delivery()

    def held_bytes(self) -> int:
        """Memory this connection holds outside queues, for the memory alarm: unparsed input,
        output the transport has not sent yet, and its channels with what they hold."""
        held = len(self.buffer) + CHANNEL_BYTES * len(self.channels)
        if self.transport is not None:
            held += self.transport.get_write_buffer_size()
        return held + sum(channel.held_bytes() for channel in self.channels.values())

    def count_output(self, size: int) -> None:
        """Bytes framed for this client this iteration besides deliveries (Get-Ok, returns,
        replies): they count towards the batch that stops output and reading."""
        self.batch_bytes += size
        if self.batch_bytes > DELIVERY_BATCH_BYTES:
            self.hold_output()

    def hold_output(self) -> None:
        """A full batch was framed this iteration: no more deliveries, and no more requests
        read, until it is written (the frame loop only looks at the read flow)."""
        self.write_paused = True
        self.flow.pause(WRITES)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self.state == CLOSED or self.flow.holds(BROKEN):
            return
        self.buffer += data
        self._parse()

    def _parse(self) -> None:
        """Handle the complete frames in the buffer, until there are none or reading pauses."""
        if self.state == AWAIT_HEADER and not self._read_protocol_header():
            return
        try:
            self._read_frames()
        except ConnectionException as error:
            self._connection_error(error)
        except Exception:  # a bug must cost one connection, never the broker
            log.exception("connection.internal_error", extra=fields(peer=self.peer))
            self._connection_error(ConnectionException(INTERNAL_ERROR, "internal error"))

    def _next_turn(self) -> None:
        if self.flow.resume(TURN):
            self._parse()

    def _connection_error(self, error: ConnectionException) -> None:
        """Close with the error's code. When the stream can no longer be parsed (a broken frame,
        or garbage while closing), drop what was read and stop reading: the peer cannot send a
        Close-Ok we could find, and the close-ok timeout hangs up."""
        broken = isinstance(error, StreamBroken) or self.state in (CLOSING, CLOSED)
        self.close_with_error(error)
        if broken:
            self.buffer.clear()
            self.flow.pause(BROKEN)

    # ------------------------------------------------------------------ reading
    def _read_protocol_header(self) -> bool:
        buffer = self.buffer
        if len(buffer) < 8:
            if not frames.PROTOCOL_HEADER.startswith(bytes(buffer[:4])[: len(buffer)]):
                self._refuse_protocol()
            return False
        if bytes(buffer[:8]) != frames.PROTOCOL_HEADER:
            self._refuse_protocol()
            return False
        del buffer[:8]
        self.state = AWAIT_START_OK
        self._send_method(0, self._start_method())
        return True

    def _refuse_protocol(self) -> None:
        """Answer an unsupported protocol header with ours, then hang up (spec 4.2.2)."""
        assert self.transport is not None
        self.state = CLOSED
        self.transport.write(frames.PROTOCOL_HEADER)
        self.transport.close()

    def _read_frames(self) -> None:
        buffer = self.buffer
        view = memoryview(buffer)
        unpack = frames.FRAME_PREFIX.unpack_from
        position = 0
        available = len(buffer)
        # RabbitMQ tolerates a payload of up to frame_max (the 8 framing octets are slack).
        limit = self.frame_max if self.state >= AWAIT_OPEN else MIN_FRAME_MAX
        flow = self.flow
        clock = self.loop.time
        turn_ends = clock() + TURN_SECONDS
        until_check = TURN_CHECK_FRAMES
        try:
            while available - position >= 7 and self.state != CLOSED:
                if flow.paused:  # backed-up replies, the alarm: the rest waits in the buffer
                    break
                until_check -= 1
                if not until_check:
                    until_check = TURN_CHECK_FRAMES
                    if clock() > turn_ends:
                        flow.pause(TURN)  # the rest waits in the buffer for the next turn
                        self.loop.call_soon(self._next_turn)
                        break
                frame_type, channel, size = unpack(view, position)
                if size > limit:
                    raise StreamBroken(
                        FRAME_ERROR,
                        f"type {frame_type}, all octets = <<>>:"
                        f" {{frame_too_large,{size},{limit - frames.FRAME_OVERHEAD}}}",
                    )
                end = position + 7 + size
                if end >= available:
                    break
                payload = bytes(view[position + 7 : end])
                if buffer[end] != frames.FRAME_END:
                    raise StreamBroken(
                        FRAME_ERROR,
                        f"type {frame_type}, all octets = {frames.erlang_binary(payload)}:"
                        f" {{invalid_frame_end_marker,{buffer[end]}}}",
                    )
                position = end + 1
                self._dispatch(frame_type, channel, payload)
        finally:
            view.release()
            if position:
                del buffer[:position]

    def _dispatch(self, frame_type: int, number: int, payload: bytes) -> None:
        if self.state == CLOSING:
            self._dispatch_while_closing(frame_type, number, payload)
            return
        if frame_type == frames.FRAME_METHOD:
            if len(payload) < 4:
                raise _frame_error(frame_type, payload, "unknown_frame")
            if number == 0:
                self._connection_method(payload)
                return
            channel = self.channels.get(number)
            if channel is None:
                self._method_on_closed_channel(number, payload)
            elif channel.committing and payload[:4] != CHANNEL_CLOSE:
                raise COMMIT_IN_PROGRESS  # a close is still welcome, as in RabbitMQ
            else:
                channel.handle_method(payload)
        elif frame_type == frames.FRAME_HEADER or frame_type == frames.FRAME_BODY:
            if number == 0:
                raise _unexpected_frame(frame_type, payload)
            channel = self.channels.get(number)
            if channel is None:
                if number in self.closing_channels:
                    return
                raise ConnectionException(
                    UNEXPECTED_FRAME, "expected method frame, got non method frame instead"
                )
            if channel.committing:
                raise COMMIT_IN_PROGRESS
            if frame_type == frames.FRAME_HEADER:
                channel.handle_header(payload)
            else:
                channel.handle_body(payload)
        elif frame_type == frames.FRAME_HEARTBEAT:
            if payload:
                raise _frame_error(frame_type, payload, "unknown_frame")
            if number != 0:
                raise _unexpected_frame(frame_type, payload)
        else:
            raise _frame_error(frame_type, payload, "unknown_frame")

    def _dispatch_while_closing(self, frame_type: int, number: int, payload: bytes) -> None:
        """After we sent Connection.Close only Close and Close-Ok matter (spec 2.2.4)."""
        if frame_type != frames.FRAME_METHOD or number != 0 or len(payload) < 4:
            return
        index = int.from_bytes(payload[:4], "big")
        if index == commands.Connection.CloseOk.index:
            self._hang_up()
        elif index == commands.Connection.Close.index:
            self._send_method(0, commands.Connection.CloseOk())
            self._hang_up()

    def _method_on_closed_channel(self, number: int, payload: bytes) -> None:
        index = int.from_bytes(payload[:4], "big")
        try:
            if number in self.closing_channels:
                self._method_on_closing_channel(number, index)
            elif index != commands.Channel.Open.index:
                raise ConnectionException(CHANNEL_ERROR, "expected 'channel.open'")
            else:
                self._open_channel(number)
        except AMQPError as error:
            error.blame(index)
            raise

    def _method_on_closing_channel(self, number: int, index: int) -> None:
        """We closed this channel: drop everything until the client's close-ok."""
        if index == commands.Channel.CloseOk.index:
            self.closing_channels.discard(number)
        elif index == commands.Channel.Close.index:
            self._send_method(number, commands.Channel.CloseOk())  # crossing closes
        elif index == commands.Channel.Open.index:
            raise ConnectionException(CHANNEL_ERROR, "second 'channel.open' seen")

    def _open_channel(self, number: int) -> None:
        if self.state != OPEN:
            raise ConnectionException(
                COMMAND_INVALID, "channel.open before the connection was opened"
            )
        # RabbitMQ enforces channel_max as a count of open channels, not as a channel number.
        opened = len(self.channels) + len(self.closing_channels)
        if opened >= self.channel_max:
            raise ConnectionException(
                NOT_ALLOWED,
                f"number of channels opened ({opened}) has reached"
                f" the negotiated channel_max ({self.channel_max})",
                blame_method=False,
            )
        self.channels[number] = Channel(self, number)
        self.broker.counters.channels_opened += 1
        self.send(frames.frame(frames.FRAME_METHOD, number, frames.CHANNEL_OPEN_OK))

    # ------------------------------------------------------------------ connection class
    def _connection_method(self, payload: bytes) -> None:
        index = int.from_bytes(payload[:4], "big")
        try:
            method = frames.decode_method(payload)
        except KeyError:
            raise ConnectionException(
                NOT_IMPLEMENTED, f"unknown method {index >> 16}.{index & 0xFFFF} on channel 0"
            ) from None
        except frames.MalformedFrame as malformed:  # not `error`: see Channel.handle_method
            exception = ConnectionException(FRAME_ERROR, str(malformed))
            exception.blame(index)
            raise exception from None
        try:
            handler = _CONNECTION_HANDLERS.get(type(method))
            if handler is None or (self.state == OPEN and type(method) in HANDSHAKE_METHODS):
                raise ConnectionException(
                    CHANNEL_ERROR, f"unexpected method in connection state {self._state_name}"
                )
            handler(self, method)
        except AMQPError as error:
            error.blame(index)
            raise

    @property
    def _state_name(self) -> str:
        return {OPEN: "running", CLOSING: "closing"}.get(self.state, "handshake")

    def _expect_state(self, state: int, method: Any) -> None:
        if self.state != state:
            raise ConnectionException(
                COMMAND_INVALID, f"{method.name} is not expected in the connection handshake now"
            )

    def _start_method(self) -> commands.Connection.Start:
        properties: dict[str, Any] = {
            "product": "Warren",
            "version": __version__,
            "platform": "Python",
            "copyright": "Warren contributors",
            "information": "AMQP 0-9-1 broker compatible with RabbitMQ clients",
            "capabilities": dict(CAPABILITIES),
            "cluster_name": self.config.cluster_name,
        }
        return commands.Connection.Start(
            version_major=0,
            version_minor=9,
            server_properties=properties,
            mechanisms="PLAIN AMQPLAIN",
            locales="en_US",
        )

    def _on_start_ok(self, method: commands.Connection.StartOk) -> None:
        self._expect_state(AWAIT_START_OK, method)
        self._take_client_properties(method.client_properties)
        mechanism = method.mechanism or ""
        try:
            credentials = self.broker.auth.parse_response(mechanism, method.response)
        except ValueError:
            response = method.response
            raw = response.encode() if isinstance(response, str) else bytes(response or b"")
            raise ConnectionException(
                SYNTAX_ERROR, f"response {frames.erlang_binary(raw)} invalid"
            ) from None
        if credentials is None:
            raise ConnectionException(
                COMMAND_INVALID, f"unknown authentication mechanism '{mechanism}'"
            )
        username, password = credentials
        refusal = self.broker.auth.authenticate(username, password, self._peer_host(), mechanism)
        if refusal:
            log.warning(
                "connection.auth_failed",
                extra=fields(peer=self.peer, user=username, mechanism=mechanism, reason=refusal),
            )
            raise ConnectionException(ACCESS_REFUSED, refusal, blame_method=False)
        self.user = username
        self.state = AWAIT_TUNE_OK
        limits = self.config.limits
        self._send_method(
            0,
            commands.Connection.Tune(
                channel_max=limits.channel_max,
                frame_max=limits.frame_max,
                heartbeat=limits.heartbeat,
            ),
        )

    def _take_client_properties(self, properties: Any) -> None:
        """Keep what the client says about itself, trusting no shape: as RabbitMQ, a
        `capabilities` value that is not a table announces nothing, and only a boolean true
        announces a capability (anything else would fail later, in another client's request or
        in the memory monitor)."""
        self.client_properties = dict(properties) if isinstance(properties, dict) else {}
        capabilities = self.client_properties.get("capabilities")
        if isinstance(capabilities, dict):
            self.capabilities = frozenset(
                name for name, value in capabilities.items() if value is True
            )

    def _peer_host(self) -> str:
        return self.peer.rsplit(":", 1)[0]

    def _on_tune_ok(self, method: commands.Connection.TuneOk) -> None:
        self._expect_state(AWAIT_TUNE_OK, method)
        limits = self.config.limits
        frame_max, channel_max = method.frame_max, method.channel_max
        # 0 means "no limit", which is above any limit the broker has.
        for name, value, highest in (
            ("channel_max", channel_max, limits.channel_max),
            ("frame_max", frame_max, limits.frame_max),
        ):
            if value == 0 or value > highest:
                shown = f"{value} (no limit)" if value == 0 else str(value)
                raise ConnectionException(
                    NOT_ALLOWED,
                    f"negotiated {name} = {shown} is higher than the maximum allowed value"
                    f" ({highest})",
                )
        if frame_max < MIN_FRAME_MAX:
            raise ConnectionException(
                NOT_ALLOWED,
                f"negotiated frame_max = {frame_max} is lower than the minimum allowed value"
                f" ({MIN_FRAME_MAX})",
            )
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = method.heartbeat
        self.state = AWAIT_OPEN

    def _on_open(self, method: commands.Connection.Open) -> None:
        self._expect_state(AWAIT_OPEN, method)
        vhost_name = method.virtual_host or "/"
        vhost = self.broker.vhosts.get(vhost_name)
        if vhost is None:
            raise ConnectionException(NOT_ALLOWED, f"vhost {vhost_name} not found")
        access = self.broker.auth.vhost_access(self.user, vhost_name)
        if access is None:
            raise ConnectionException(
                NOT_ALLOWED, f"access to vhost '{vhost_name}' refused for user '{self.user}'"
            )
        most = self.config.limits.max_connections
        if most and self.broker.open_connections() >= most:
            # As RabbitMQ: only opened connections count, and the refusal is a 530 at open.
            log.warning(
                "connection.refused",
                extra=fields(peer=self.peer, user=self.user, reason="connection limit reached"),
            )
            raise ConnectionException(
                NOT_ALLOWED, f"connection refused: node connection limit ({most}) is reached"
            )
        self.access = access
        self.vhost = vhost
        self.state = OPEN
        self.broker.counters.connections_opened += 1
        self._send_method(0, commands.Connection.OpenOk())
        self._cancel_timer()
        if self.heartbeat:
            self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)
        log.info(
            "connection.opened",
            extra=fields(
                peer=self.peer,
                user=self.user,
                vhost=vhost_name,
                tls=self.tls,
            ),
        )

    def _on_close(self, method: commands.Connection.Close) -> None:
        self._release_everything()  # first, so earned confirms precede the close-ok
        self._send_method(0, commands.Connection.CloseOk())
        self._hang_up()

    def _on_close_ok(self, method: commands.Connection.CloseOk) -> None:
        self._hang_up()

    def _on_update_secret(self, method: commands.Connection.UpdateSecret) -> None:
        self._expect_state(OPEN, method)
        # Warren's users authenticate with passwords, which a new secret cannot refresh.
        self._send_method(0, commands.Connection.UpdateSecretOk())

    # ------------------------------------------------------------------ writing
    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_parts(self, parts: Iterable[frames.Chunk]) -> None:
        self._out += parts
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _send_method(self, channel: int, method: Any) -> None:
        self.send(frames.method_frame(channel, method))

    def want_confirm_flush(self, channel: Channel) -> None:
        """Publisher confirms are coalesced into one Basic.Ack(multiple) per loop iteration."""
        self._confirm_channels.add(channel)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def write_early(self) -> None:
        """Write what is framed now, before the iteration ends (see EARLY_WRITE_BYTES)."""
        if self.transport is None or self.transport.is_closing():
            return
        out = self._out
        self._out = []
        self.early_mark = self.batch_bytes
        self.transport.write(b"".join(out))  # may call pause_writing
        self._sent = True

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.early_mark = 0
        if self._confirm_channels:
            pending = self._confirm_channels
            self._confirm_channels = set()
            for channel in pending:
                channel.flush_confirms()
        if not self._out or self.transport is None or self.transport.is_closing():
            # Everything framed may have gone out early already: the iteration's batch ends
            # here all the same (a full batch always leaves its last part to this write).
            self._out.clear()
            self.batch_bytes = 0
            return
        out = self._out
        self._out = []
        self.transport.write(b"".join(out))  # may call pause_writing
        self._sent = True
        if self.batch_bytes > DELIVERY_BATCH_BYTES and not self._transport_paused:
            self.loop.call_soon(self._output_drained)  # the next batch, after other work
        self.batch_bytes = 0

    # ------------------------------------------------------------------ closing
    def close_with_error(
        self, error: AMQPError, close_ok_timeout: float = CLOSE_OK_TIMEOUT
    ) -> None:
        """Close the connection with a reply code; wait briefly for the client's close-ok."""
        if self.state in (CLOSING, CLOSED):
            return
        if self.state < OPEN and error.code != ACCESS_REFUSED:
            log.warning(
                "connection.handshake_failed",
                extra=fields(peer=self.peer, code=error.code, text=error.reply_text),
            )
        else:
            log.warning(
                "connection.error",
                extra=fields(
                    peer=self.peer, user=self.user, code=error.code, text=error.reply_text
                ),
            )
        self._release_everything()
        self.state = CLOSING
        self._send_method(
            0,
            commands.Connection.Close(
                reply_code=error.code,
                reply_text=error.reply_text,
                class_id=error.class_id,
                method_id=error.method_id,
            ),
        )
        self._cancel_timer()
        self._timer = self.loop.call_later(close_ok_timeout, self._hang_up)

    def force_close(self, code: int, text: str) -> None:
        """Broker-initiated close (shutdown: 320 CONNECTION_FORCED); a shutdown does not wait
        long for clients that are not reading."""
        self.close_with_error(ConnectionException(code, text), SHUTDOWN_CLOSE_OK_TIMEOUT)

    def _hang_up(self) -> None:
        self._cancel_timer()
        self._flush()
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def _release_everything(self) -> None:
        """Requeue unacked messages, drop consumers and exclusive queues (idempotent)."""
        channels = list(self.channels.values())
        self.channels.clear()
        # Consumers of every channel go first, so requeued messages are not handed to a
        # sibling channel that is closing too.
        for channel in channels:
            channel.drop_consumers()
        for channel in channels:
            channel.return_unacked()
        queues = list(self.exclusive_queues.values())
        self.exclusive_queues.clear()
        for queue in queues:
            if self.vhost is not None:
                self.vhost.remove_queue(queue)
        self._cancel_timer()

    def channel_closed_by_broker(self, channel: Channel, error: AMQPError) -> None:
        self.channels.pop(channel.number, None)
        self.closing_channels.add(channel.number)
        log.warning(
            "channel.error",
            extra=fields(
                peer=self.peer,
                user=self.user,
                channel=channel.number,
                code=error.code,
                text=error.reply_text,
            ),
        )
        self._send_method(
            channel.number,
            commands.Channel.Close(
                reply_code=error.code,
                reply_text=error.reply_text,
                class_id=error.class_id,
                method_id=error.method_id,
            ),
        )

    def channel_closed_by_client(self, channel: Channel) -> None:
        self.channels.pop(channel.number, None)
        self._send_method(channel.number, commands.Channel.CloseOk())

    # ------------------------------------------------------------------ timers
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.state < OPEN and self.transport is not None:
            log.warning("connection.handshake_timeout", extra=fields(peer=self.peer))
            self.state = CLOSED
            self.transport.abort()

    def _heartbeat_tick(self) -> None:
        """Every half interval: send a heartbeat if we were silent, drop a peer silent for two
        whole intervals (RabbitMQ's timing)."""
        if self.state != OPEN or self.transport is None:
            return
        if self._received or self.blocked:  # a blocked peer's heartbeats are simply unread
            self._received = False
            self._missed_heartbeats = 0
        else:
            self._missed_heartbeats += 1
            if self._missed_heartbeats >= 4:
                log.warning(
                    "connection.heartbeat_timeout",
                    extra=fields(peer=self.peer, user=self.user, heartbeat=self.heartbeat),
                )
                self.state = CLOSED
                self.transport.abort()
                return
        if not self._sent:
            self.transport.write(frames.HEARTBEAT_FRAME)
        self._sent = False
        self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)


class StreamBroken(ConnectionException):
    """A frame that cannot be delimited (too large, no frame-end): the bytes after it are not
    frames, so nothing more is read from this connection."""


def _frame_error(frame_type: int, payload: bytes, reason: str) -> ConnectionException:
    return ConnectionException(
        FRAME_ERROR, f"type {frame_type}, all octets = {frames.erlang_binary(payload)}: {reason}"
    )


def _unexpected_frame(frame_type: int, payload: bytes) -> ConnectionException:
    return ConnectionException(
        UNEXPECTED_FRAME, f"type {frame_type}, all octets = {frames.erlang_binary(payload)}"
    )


# Built after the class: a compiled class's methods are not names in its body.
_CONNECTION_HANDLERS: dict[type, Any] = {
    commands.Connection.StartOk: AMQPConnection._on_start_ok,
    commands.Connection.TuneOk: AMQPConnection._on_tune_ok,
    commands.Connection.Open: AMQPConnection._on_open,
    commands.Connection.Close: AMQPConnection._on_close,
    commands.Connection.CloseOk: AMQPConnection._on_close_ok,
    commands.Connection.UpdateSecret: AMQPConnection._on_update_secret,
}
