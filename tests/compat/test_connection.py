"""Connection-level behaviour as RabbitMQ 3.10 shows it: protocol header, Start/Tune/Open,
authentication, heartbeats, handshake timeout, Close and UpdateSecret."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest
from pamqp import commands, heartbeat

from tests.compat.rawamqp import (
    PROTOCOL_HEADER,
    RawAMQP,
    RawTimeout,
    assert_broker_alive,
    assert_reply,
    parse_frames,
    raw_connection,
)

# Capabilities RabbitMQ 3.10 advertises in Connection.Start, all set to true.
CAPABILITIES = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
]
# Warren advertises only what it implements.
NOT_YET_IN_WARREN: set[str] = set()


@pytest.fixture(autouse=True)
def _broker_survives(amqp_url: str) -> Iterator[None]:
    """After every test a fresh pika connection must still work (the broker did not crash)."""
    yield
    assert_broker_alive(amqp_url)


# -- protocol header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"AMQP\x00\x00\x09\x02",
        b"AMQP\x00\x00\x08\x00",
        b"AMQP\x03\x01\x00\x00",
        b"HTTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00\x01",
    ],
    ids=["0-9-2", "0-0-8-0", "amqp1.0-tls", "http", "tls-hello"],
)
def test_wrong_protocol_header_gets_supported_header_and_close(
    amqp_url: str, header: bytes
) -> None:
    """RabbitMQ answers any unsupported 8-byte header with exactly AMQP 0-0-9-1 and closes."""
    with RawAMQP(amqp_url) as client:
        client.send_header(header)
        assert client.expect_closed_socket(5) == PROTOCOL_HEADER


def test_connection_start_fields(amqp_url: str) -> None:
    """Start on channel 0: version 0-9, mechanisms include PLAIN and AMQPLAIN, locale en_US."""
    with RawAMQP(amqp_url) as client:
        start = client.read_start()
        assert (start.version_major, start.version_minor) == (0, 9)
        assert {"PLAIN", "AMQPLAIN"} <= set(start.mechanisms.split())
        assert start.locales.split() == ["en_US"]


def test_connection_start_server_properties(amqp_url: str, target_is_warren: bool) -> None:
    """server_properties carry product/version/platform strings and the capability flags."""
    with RawAMQP(amqp_url) as client:
        props = client.read_start().server_properties
        for key in ("product", "version", "platform"):
            assert isinstance(props[key], str) and props[key], key
        caps = props["capabilities"]
        for cap in CAPABILITIES:
            if cap in NOT_YET_IN_WARREN and target_is_warren:
                assert not caps.get(cap), f"{cap} advertised but not implemented"
            else:
                assert caps.get(cap) is True, cap


def test_tune_defaults(amqp_url: str) -> None:
    """RabbitMQ proposes channel_max 2047, frame_max 131072, heartbeat 60."""
    with RawAMQP(amqp_url) as client:
        client.read_start()
        client.login()
        tune = client.read_tune()
        assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


@pytest.mark.parametrize(
    "tune_ok",
    [
        {"channel_max": 1},
        {"frame_max": 4096},
        {"heartbeat": 0},
        {"heartbeat": 5000},
    ],
    ids=["channel_max-1", "frame_max-4096", "heartbeat-0", "heartbeat-above-proposal"],
)
def test_tune_ok_accepted_values(amqp_url: str, tune_ok: dict[str, int]) -> None:
    """Lower channel_max/frame_max are accepted; heartbeat may be anything (0 disables it)."""
    with RawAMQP(amqp_url) as client:
        client.handshake(**{"heartbeat": 0, **tune_ok})
        client.open_channel(1)


def test_pika_negotiation(params: pika.URLParameters) -> None:
    """pika takes RabbitMQ's proposals by default, and lower client values win."""
    conn = pika.BlockingConnection(params)
    try:
        assert (conn._impl.params.channel_max, conn._impl.params.frame_max) == (2047, 131072)
        assert conn._impl.params.heartbeat == 60
    finally:
        conn.close()
    params.channel_max, params.frame_max, params.heartbeat = 10, 8192, 0
    conn = pika.BlockingConnection(params)
    try:
        assert conn._impl.params.channel_max == 10
        assert conn._impl.params.frame_max == 8192
        assert conn._impl.params.heartbeat == 0
        conn.channel().basic_qos(prefetch_count=1)
    finally:
        conn.close()


# -- handshakes RabbitMQ ends by dropping the socket (after a 3 s delay) -------------------------


def _login(**kw: object) -> Callable[[RawAMQP], None]:
    def run(client: RawAMQP) -> None:
        client.read_start()
        client.login(**kw)  # type: ignore[arg-type]

    return run


def _tune(**kw: int) -> Callable[[RawAMQP], None]:
    def run(client: RawAMQP) -> None:
        client.read_start()
        client.login()
        client.read_tune()
        client.tune_ok(**{"heartbeat": 0, **kw})

    return run


# name -> (what the client does, the only Connection.Close code allowed before the drop)
SILENT_DROPS: dict[str, tuple[Callable[[RawAMQP], None], int]] = {
    "bad-password-without-capability": (_login(password="wrong", properties={}), 403),
    "unknown-mechanism": (_login(mechanism="FOO"), 503),
    "malformed-plain-response": (_login(response=b"garbage"), 502),
    "channel_max-0": (_tune(channel_max=0), 530),
    "channel_max-above-2047": (_tune(channel_max=2048), 530),
    "frame_max-0": (_tune(frame_max=0), 530),
    "frame_max-below-4096": (_tune(frame_max=4095), 530),
    "frame_max-above-131072": (_tune(frame_max=131073), 530),
}


@pytest.fixture(scope="module")
def silent_drops(amqp_url: str) -> dict[str, bytes]:
    """Run every SILENT_DROPS scenario at once (RabbitMQ waits 3 s before each drop) and
    collect what each socket received before it closed."""
    clients = {}
    try:
        for key, (action, _) in SILENT_DROPS.items():
            clients[key] = client = RawAMQP(amqp_url)
            action(client)
        return {key: client.expect_closed_socket(10) for key, client in clients.items()}
    finally:
        for client in clients.values():
            client.close()


@pytest.mark.parametrize("scenario", list(SILENT_DROPS))
def test_handshake_failure_drops_connection(silent_drops: dict[str, bytes], scenario: str) -> None:
    """Handshake errors (refused login without authentication_failure_close, unknown mechanism,
    bad SASL response, TuneOk out of range) end the connection before Tune/OpenOk; RabbitMQ
    sends no Close at all, only a drop. A Close, if sent, must carry the matching code."""
    frames = parse_frames(silent_drops[scenario])
    for _, value in frames:
        assert isinstance(value, commands.Connection.Close), value.name
        assert_reply(value, SILENT_DROPS[scenario][1])


# -- authentication and vhost ------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_login_mechanisms(amqp_url: str, mechanism: str) -> None:
    """Both PLAIN and AMQPLAIN log in guest/guest; the connection is then usable."""
    with raw_connection(amqp_url, mechanism=mechanism) as client:
        client.open_channel(1)
        client.send(commands.Queue.Declare(queue="", exclusive=True), 1)
        assert client.expect(commands.Queue.DeclareOk, 1).queue.startswith("amq.gen-")


@pytest.mark.parametrize(
    ("mechanism", "user", "password"),
    [("PLAIN", None, "wrong"), ("AMQPLAIN", "no-such-user", "guest")],
    ids=["plain-wrong-password", "amqplain-unknown-user"],
)
def test_refused_login_with_authentication_failure_close(
    amqp_url: str, mechanism: str, user: str | None, password: str
) -> None:
    """A client advertising authentication_failure_close gets Connection.Close 403 at once."""
    with RawAMQP(amqp_url) as client:
        client.read_start()
        client.login(mechanism, user=user, password=password)
        close = client.expect_connection_close()
        text = (
            f"ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. "
            "For details see the broker logfile."
        )
        assert_reply(close, 403, text, (0, 0))
        client.expect_closed_socket(5)


def test_refused_login_pika(params: pika.URLParameters, name: str) -> None:
    """pika sees the 403 Close as ProbableAuthenticationError."""
    params.credentials = pika.PlainCredentials("guest", f"wrong-{name}")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    assert "(403) 'ACCESS_REFUSED - Login was refused" in str(info.value)


def test_unknown_vhost(amqp_url: str, name: str) -> None:
    """Connection.Open of a missing vhost: Close 530 'NOT_ALLOWED - vhost X not found'."""
    with RawAMQP(amqp_url) as client:
        client.read_start()
        client.login()
        client.read_tune()
        client.tune_ok(heartbeat=0)
        client.open(name)
        close = client.expect_connection_close()
        assert_reply(close, 530, f"NOT_ALLOWED - vhost {name} not found", (10, 40))
        client.expect_closed_socket(5)


def test_unknown_vhost_pika(params: pika.URLParameters, name: str) -> None:
    """pika sees the 530 Close on Open as ProbableAccessDeniedError."""
    params.virtual_host = name
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        pika.BlockingConnection(params)
    assert f"(530) 'NOT_ALLOWED - vhost {name} not found'" in str(info.value)


@pytest.mark.parametrize(
    "method",
    [
        commands.Connection.Open(virtual_host="/"),
        commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0),
        commands.Connection.CloseOk(),
    ],
    ids=["open-again", "tune_ok-again", "unsolicited-close_ok"],
)
def test_handshake_method_after_open(amqp_url: str, method: commands.Connection.Open) -> None:
    """Handshake methods on an open connection: 504 'unexpected method in connection state
    running', blaming that method."""
    with raw_connection(amqp_url) as client:
        client.send(method)
        close = client.expect_connection_close()
        text = "CHANNEL_ERROR - unexpected method in connection state running"
        assert_reply(close, 504, text, (10, method.frame_id))


# -- close ---------------------------------------------------------------------------------


def test_client_close(amqp_url: str) -> None:
    """Client Connection.Close (channels still open) gets CloseOk; the broker then drops the
    socket by itself within its close timeout (RabbitMQ: the heartbeat, here 1 s)."""
    with raw_connection(amqp_url, heartbeat=1) as client:
        client.open_channel(1)
        client.open_channel(2)
        client.close_connection()
        rest = parse_frames(client.expect_closed_socket(5))
        assert all(isinstance(value, heartbeat.Heartbeat) for _, value in rest)


def test_pika_close(connection: pika.BlockingConnection) -> None:
    """pika's close handshake completes cleanly."""
    connection.channel()
    connection.close()
    assert connection.is_closed


# -- heartbeats --------------------------------------------------------------------------------


def test_server_sends_heartbeats(amqp_url: str) -> None:
    """With heartbeat 1 negotiated, heartbeat frames arrive on channel 0 (RabbitMQ: every 0.5 s)."""
    with raw_connection(amqp_url, heartbeat=1) as client:
        seen = 0
        deadline = time.monotonic() + 2.5
        while seen < 2:
            channel, value = client.read_frame(max(0.0, deadline - time.monotonic()))
            assert isinstance(value, heartbeat.Heartbeat), value.name
            assert channel == 0
            seen += 1


def test_silent_client_is_disconnected(amqp_url: str) -> None:
    """A client that negotiates heartbeat 1 and then says nothing is dropped (RabbitMQ: ~3 s,
    no Connection.Close, only heartbeats before the drop; a Close, if sent, is well-formed)."""
    with raw_connection(amqp_url, heartbeat=1) as client:
        started = time.monotonic()
        rest = parse_frames(client.expect_closed_socket(5))
        assert time.monotonic() - started >= 1.0
        for _, value in rest:
            assert isinstance(value, heartbeat.Heartbeat | commands.Connection.Close)
            if isinstance(value, commands.Connection.Close):
                assert_reply(value, value.reply_code)


def test_client_heartbeats_keep_connection_alive(amqp_url: str) -> None:
    """Heartbeats from the client keep a heartbeat-1 connection open past the drop time."""
    with raw_connection(amqp_url, heartbeat=1) as client:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            client.send(heartbeat.Heartbeat())
            with contextlib.suppress(RawTimeout):
                client.read_frame(0.4)
        client.open_channel(1)


def test_heartbeat_zero_disables_heartbeats(amqp_url: str) -> None:
    """With heartbeat 0 the broker sends no heartbeats and never drops an idle client."""
    with raw_connection(amqp_url, heartbeat=0) as client:
        with pytest.raises(RawTimeout):
            client.read_frame(2.0)
        client.open_channel(1)


@pytest.mark.timeout(40)
def test_handshake_timeout(amqp_url: str) -> None:
    """A client that sends only the protocol header is dropped (RabbitMQ handshake_timeout 10 s)."""
    with RawAMQP(amqp_url) as client:
        client.read_start()
        started = time.monotonic()
        assert client.expect_closed_socket(15) == b""
        assert time.monotonic() - started >= 1.0


# -- update-secret and isolation ---------------------------------------------------------------


def test_update_secret(amqp_url: str) -> None:
    """Connection.UpdateSecret gets UpdateSecretOk (internal backend) and the connection
    keeps working."""
    with raw_connection(amqp_url) as client:
        client.send(commands.Connection.UpdateSecret(new_secret="guest", reason="rotation"))
        client.expect(commands.Connection.UpdateSecretOk, 0)
        client.open_channel(1)
        client.send(commands.Basic.Qos(prefetch_count=5), 1)
        client.expect(commands.Basic.QosOk, 1)


def test_connection_error_does_not_disturb_other_connection(
    amqp_url: str, channel: pika.adapters.blocking_connection.BlockingChannel, name: str
) -> None:
    """A connection closed with a hard error leaves another open connection untouched."""
    channel.queue_declare(name, exclusive=True)
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Channel.Open(), 1)
        assert_reply(client.expect_connection_close(), 504)
    channel.basic_publish("", name, b"still here")
    method, _, body = channel.basic_get(name, auto_ack=True)
    assert method is not None and body == b"still here"
