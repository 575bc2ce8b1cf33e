"""Running Warren as a service: TLS, permissions, connection limits, the memory alarm and a
graceful SIGTERM, each driven by real pika clients."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pika
import pytest

from broker.auth import hash_password
from broker.config import BrokerConfig, load_config
from broker.server import Broker
from tests.compat.management import Management
from tests.support import (
    PROJECT_ROOT,
    BrokerProcess,
    free_port,
    shipped_config,
    write_config,
)

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


# ------------------------------------------------------------------------------------ TLS
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with the openssl command."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_listener_serves_pika_with_ssl_options(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """amqps on its own port: pika connects with SSLOptions, verifies the certificate and
    publishes/gets through it; the plain listener keeps working beside it."""
    cert, key = certificate
    tls_port = free_port()
    settings = shipped_config()
    settings["listeners"]["amqps"] = {"port": tls_port, "certfile": str(cert), "keyfile": str(key)}
    config = write_config(tmp_path, settings)
    broker = BrokerProcess(tmp_path / "data", config)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        params = pika.ConnectionParameters(
            "127.0.0.1", tls_port, ssl_options=pika.SSLOptions(context, "127.0.0.1")
        )
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        channel.queue_declare("over-tls", exclusive=True)
        channel.confirm_delivery()
        channel.basic_publish("", "over-tls", b"encrypted order")
        assert channel.basic_get("over-tls", auto_ack=True)[2] == b"encrypted order"
        connection.close()
        plain = pika.BlockingConnection(pika.URLParameters(broker.url))
        assert plain.is_open
        plain.close()
    finally:
        broker.stop()


def accepts(port: int) -> bool:
    """One connection attempt, no retry: is something listening on 127.0.0.1:port right now?"""
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def tls_config(tmp_path: Path, certificate: tuple[Path, Path], **overrides: Any) -> BrokerConfig:
    """The shipped config with an amqps listener on a free port, loaded in this process."""
    cert, key = certificate
    settings = shipped_config()
    settings["listeners"]["amqps"] = {
        "port": free_port(),
        "certfile": str(cert),
        "keyfile": str(key),
    }
    path = write_config(tmp_path, settings)
    return load_config(path).with_overrides(data_dir=str(tmp_path / "data"), **overrides)


def watch_amqp_while_http_starts(broker: Broker, seen: list[tuple[bool, bool]]) -> None:
    """As each HTTP listener starts, note whether the AMQP and amqps ports accept already."""
    for server in broker.http_servers:
        original = server.start

        async def start(original: Any = original) -> None:
            amqps = broker.config.tls_listener
            assert amqps is not None
            seen.append((accepts(broker.config.listener.port), accepts(amqps.port)))
            await original()

        server.start = start  # type: ignore[method-assign]


async def test_the_amqp_port_accepts_only_once_every_other_listener_does(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """Clients and health checks take the AMQP port to mean "up", so it is the last to accept:
    while metrics and management start, AMQP refuses and amqps already accepts."""
    config = tls_config(
        tmp_path,
        certificate,
        port=free_port(),
        metrics_port=free_port(),
        management_port=free_port(),
    )
    broker = Broker(config)
    seen: list[tuple[bool, bool]] = []
    watch_amqp_while_http_starts(broker, seen)
    await broker.start()
    try:
        assert seen == [(False, True), (False, True)]  # (amqp, amqps) as metrics, management start
        assert accepts(broker.port)
        assert accepts(broker.tls_port)
    finally:
        await broker.stop()


async def test_a_management_port_in_use_fails_the_start_with_amqp_never_accepting(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """The start fails on a taken port before AMQP ever accepted, and `stop` still closes what
    did open (amqps), so an embedding test or a retry finds the ports free again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tls_config(
            tmp_path,
            certificate,
            port=free_port(),
            metrics_port=0,
            management_port=taken.getsockname()[1],
        )
        broker = Broker(config)
        seen: list[tuple[bool, bool]] = []
        watch_amqp_while_http_starts(broker, seen)
        with pytest.raises(OSError, match="address already in use"):
            await broker.start()
        await broker.stop()
    assert seen == [(False, True)]
    assert config.tls_listener is not None
    assert not accepts(config.listener.port) and not accepts(config.tls_listener.port)


async def test_port_listener_health_check_knows_the_ports_as_bound(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """Listeners configured with port 0 get the kernel's choice: the port-listener health check
    answers 200 for each port actually bound (AMQP, amqps, metrics, management) and 503 for
    one nothing listens on, not for the 0 in the config."""
    management_port = free_port()
    config = tls_config(
        tmp_path, certificate, port=0, metrics_port=free_port(), management_port=management_port
    )
    async with Broker(config) as broker:
        api = Management(f"http://guest:guest@127.0.0.1:{management_port}")
        bound = sorted(broker.listening_ports())
        assert len(bound) == 4 and broker.port in bound and broker.tls_port in bound
        for port in bound:
            reply = await asyncio.to_thread(api.get, f"/api/health/checks/port-listener/{port}")
            assert (reply.status, reply.body) == (200, {"status": "ok", "port": port})
        for port in (0, free_port()):
            reply = await asyncio.to_thread(api.get, f"/api/health/checks/port-listener/{port}")
            assert reply.status == 503 and reply.body["missing"] == str(port)


def test_a_listener_port_in_use_exits_non_zero_naming_the_cause(tmp_path: Path) -> None:
    """Run from the command line, a taken port is a one-line error and a failed exit status."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = ["--port", "0", "--data-dir", str(tmp_path / "data")]
        args += ["--metrics-port", "0", "--management-port", str(taken.getsockname()[1])]
        result = subprocess.run(
            [sys.executable, "-m", "broker", *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "warren: cannot start:" in result.stderr
    assert "address already in use" in result.stderr.lower()


# ------------------------------------------------------------------------------------ permissions
RESTRICTED = {"configure": "^app\\.", "write": "^(app\\.|amq\\.default$)", "read": "^app\\."}


@pytest.fixture
def restricted_broker(tmp_path: Path) -> Any:
    """A broker where user 'app' may configure/read app.* and write app.* and the default
    exchange, and has no access to vhost 'ops'."""
    config = shipped_config()
    config["vhosts"] = ["/", "ops"]
    config["users"].append(
        {
            "name": "app",
            "password_hash": hash_password("app-secret"),
            "permissions": {"/": RESTRICTED},
        }
    )
    broker = BrokerProcess(tmp_path / "data", write_config(tmp_path, config))
    yield broker
    broker.stop()


def app_channel(broker: BrokerProcess) -> pika.adapters.blocking_connection.BlockingChannel:
    params = pika.URLParameters(f"amqp://app:app-secret@127.0.0.1:{broker.port}/%2F")
    return pika.BlockingConnection(params).channel()


def refused(action: Any) -> str:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        action()
    assert closed.value.reply_code == 403
    return closed.value.reply_text


@pytest.mark.parametrize(
    ("operation", "text"),
    [
        (lambda ch: ch.queue_declare("other.q"), "access to queue 'other.q'"),
        (lambda ch: ch.exchange_declare("other.x", "direct"), "access to exchange 'other.x'"),
        (lambda ch: ch.queue_delete("other.q"), "access to queue 'other.q'"),
        (lambda ch: ch.exchange_delete("other.x"), "access to exchange 'other.x'"),
        (lambda ch: ch.queue_bind("app.q", "amq.direct", "k"), "access to exchange 'amq.direct'"),
        (lambda ch: ch.basic_get("other.q"), "access to queue 'other.q'"),
        (lambda ch: ch.basic_consume("other.q", lambda *a: None), "access to queue 'other.q'"),
        (lambda ch: ch.queue_purge("other.q"), "access to queue 'other.q'"),
        (
            lambda ch: (ch.confirm_delivery(), ch.basic_publish("amq.topic", "k", b"x")),
            "access to exchange 'amq.topic'",
        ),
        (
            lambda ch: ch.exchange_declare(
                "app.ae", "direct", arguments={"alternate-exchange": "amq.topic"}
            ),
            "access to exchange 'amq.topic'",
        ),
        (
            lambda ch: ch.queue_declare(
                "app.dlq", arguments={"x-dead-letter-exchange": "amq.fanout"}
            ),
            "access to exchange 'amq.fanout'",
        ),
        (lambda ch: ch.exchange_bind("amq.direct", "app.q"), "access to exchange 'amq.direct'"),
        (lambda ch: ch.queue_bind("other.q", "app.x"), "access to queue 'other.q'"),
    ],
    ids=["declare-q", "declare-x", "delete-q", "delete-x", "bind", "get", "consume", "purge",
         "publish", "alternate-exchange", "dead-letter-exchange", "e2e-bind-destination",
         "bind-destination"],
)  # fmt: skip
def test_permissions_refuse_with_403(restricted_broker: BrokerProcess, operation, text) -> None:
    """Each operation checks RabbitMQ's permission kind against the resource name."""
    channel = app_channel(restricted_broker)
    channel.queue_declare("app.q")  # allowed: gives the bind cases a queue and an exchange
    channel.exchange_declare("app.x", "fanout")
    message = refused(lambda: operation(channel))
    assert message.startswith("ACCESS_REFUSED - ")
    assert f"{text} in vhost '/' refused for user 'app'" in message


def test_permissions_allow_what_matches(restricted_broker: BrokerProcess) -> None:
    """Matching names go through: declare, bind app.* to app.*, publish to the default
    exchange and app.x, get and consume app.q, purge and delete."""
    channel = app_channel(restricted_broker)
    channel.exchange_declare("app.x", "fanout")
    channel.queue_declare("app.q")
    channel.queue_bind("app.q", "app.x")
    channel.confirm_delivery()
    channel.basic_publish("app.x", "", b"via exchange")
    channel.basic_publish("", "app.q", b"via default")
    assert channel.basic_get("app.q", auto_ack=True)[2] == b"via exchange"
    assert channel.queue_purge("app.q").method.message_count == 1
    channel.queue_delete("app.q")
    channel.exchange_delete("app.x")


def test_vhost_without_permissions_is_refused(restricted_broker: BrokerProcess) -> None:
    """No permissions in a vhost: Connection.Open fails with 530 NOT_ALLOWED."""
    params = pika.URLParameters(f"amqp://app:app-secret@127.0.0.1:{restricted_broker.port}/ops")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as denied:
        pika.BlockingConnection(params)
    assert "access to vhost 'ops' refused for user 'app'" in str(denied.value)


# ------------------------------------------------------------------------------------ limits
def test_connection_limit_refuses_extra_connections(tmp_path: Path) -> None:
    """limits.max_connections counts opened connections: the next one gets 530 NOT_ALLOWED at
    Connection.Open (as RabbitMQ answers); sockets still in the handshake do not count;
    closing a connection makes room."""
    config = shipped_config()
    config["limits"]["max_connections"] = 2
    broker = BrokerProcess(tmp_path / "data", write_config(tmp_path, config))
    try:
        params = pika.URLParameters(broker.url)
        idle = socket.create_connection(("127.0.0.1", broker.port))  # never authenticates
        first, second = pika.BlockingConnection(params), pika.BlockingConnection(params)
        with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
            pika.BlockingConnection(params)
        assert "NOT_ALLOWED - connection refused: node connection limit (2) is reached" in str(
            refused.value
        )
        idle.close()
        first.close()
        time.sleep(0.1)
        third = pika.BlockingConnection(params)
        assert third.is_open
        third.close()
        second.close()
        assert "event=connection.refused" in broker.log_text()
    finally:
        broker.stop()


async def test_memory_alarm_blocks_publishers_until_queues_drain(tmp_path: Path) -> None:
    """Real memory: filling a queue past the watermark gives publishers connection.blocked and
    leaves their publishes unread; draining the queue (consumers are never blocked) clears the
    alarm, publishers get connection.unblocked and their publishes go through."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    async with Broker(config) as broker:
        broker.memory.limit = broker.memory.baseline + 2_000_000  # ~2 MB of queued messages
        connection = await asyncio.to_thread(
            pika.BlockingConnection, pika.URLParameters(broker.url)
        )
        events: list[str] = []
        connection.add_on_connection_blocked_callback(lambda *_: events.append("blocked"))
        connection.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
        channel = await asyncio.to_thread(connection.channel)
        await asyncio.to_thread(channel.queue_declare, "alarm-q", auto_delete=False)
        body = b"x" * 10_000
        for _ in range(300):  # 3 MB: past the watermark
            await asyncio.to_thread(channel.basic_publish, "", "alarm-q", body)
        queue = broker.vhosts["/"].queues["alarm-q"]
        await asyncio.sleep(0.2)
        assert queue.message_count == 300
        broker.memory.check()
        await asyncio.to_thread(connection.process_data_events, 0.3)
        assert broker.memory_alarm and events == ["blocked"]
        await asyncio.to_thread(channel.basic_publish, "", "alarm-q", b"while blocked")
        await asyncio.sleep(0.3)
        assert queue.message_count == 300  # the publisher's socket is not read

        consumer_connection = await asyncio.to_thread(
            pika.BlockingConnection, pika.URLParameters(broker.url)
        )
        consumer = await asyncio.to_thread(consumer_connection.channel)
        for _ in range(300):  # consumers keep working during the alarm
            method, _, _ = await asyncio.to_thread(consumer.basic_get, "alarm-q", True)
            assert method is not None
        broker.memory.check()
        await asyncio.to_thread(connection.process_data_events, 0.3)
        await asyncio.sleep(0.1)
        assert not broker.memory_alarm
        assert events == ["blocked", "unblocked"]
        assert queue.message_count == 1  # the held publish arrived
        await asyncio.to_thread(consumer_connection.close)
        await asyncio.to_thread(connection.close)


# ------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_closes_clients_with_320_and_keeps_confirmed_messages(tmp_path: Path) -> None:
    """SIGTERM: clients see 320 CONNECTION_FORCED, the process exits 0 within seconds, and
    every confirmed persistent message is there after the restart."""
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.queue_declare("shutdown-orders", durable=True)
    channel.confirm_delivery()
    for number in range(50):
        channel.basic_publish("", "shutdown-orders", str(number).encode(), PERSISTENT)
    started = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.process_data_events(time_limit=10)
        connection.process_data_events(time_limit=10)
    assert closed.value.reply_code == 320
    assert closed.value.reply_text.startswith("CONNECTION_FORCED - ")
    assert broker.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    broker.stop()

    broker = BrokerProcess(data_dir)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        bodies = []
        while (got := channel.basic_get("shutdown-orders", auto_ack=True))[0] is not None:
            bodies.append(int(got[2]))
        assert bodies == list(range(50))
        connection.close()
    finally:
        broker.stop()
