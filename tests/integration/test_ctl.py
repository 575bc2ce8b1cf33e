"""`warren ctl list_*` against a running broker's management API, and the API's guards."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pika
import pytest

from broker.config import load_config
from broker.server import Broker
from tests.support import PROJECT_ROOT, free_port


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=free_port()
    )
    async with Broker(config) as running:
        yield running


@pytest.fixture
async def clients(broker: Broker) -> AsyncIterator[pika.BlockingConnection]:
    """A connection with a topic exchange, a bound queue holding one unacked message and its
    consumer (channel 2, prefetch 5), and a confirm-mode channel 1."""

    def setup() -> pika.BlockingConnection:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare("ctl-events", "topic", durable=True)
        channel.queue_declare("ctl-orders", durable=True)
        channel.queue_declare("ctl-idle")
        channel.queue_bind("ctl-orders", "ctl-events", "order.#")
        channel.basic_publish("ctl-events", "order.new", b"1")
        channel.basic_publish("ctl-events", "order.new", b"2")
        consuming = connection.channel()
        consuming.basic_qos(prefetch_count=5)
        received: list[bytes] = []
        consuming.basic_consume("ctl-orders", lambda _ch, _m, _p, body: received.append(body))
        while len(received) < 2:
            connection.process_data_events(time_limit=1)
        return connection

    connection = await asyncio.to_thread(setup)
    yield connection
    await asyncio.to_thread(connection.close)


async def warren_ctl(broker: Broker, *args: str) -> tuple[int, str, str]:
    port = str(broker.config.management.listener.port)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "ctl",
        *args,
        "--management-port",
        port,
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def table(output: str) -> list[dict[str, str]]:
    header, *rows = output.splitlines()
    columns = header.split("\t")
    return [dict(zip(columns, row.split("\t"), strict=True)) for row in rows]


async def test_list_queues(broker: Broker, clients: pika.BlockingConnection) -> None:
    code, out, err = await warren_ctl(broker, "list_queues")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == (
        "name\tvhost\tdurable\tmessages_ready\tmessages_unacknowledged\tconsumers"
    )
    assert table(out) == [
        {
            "name": "ctl-idle",
            "vhost": "/",
            "durable": "false",
            "messages_ready": "0",
            "messages_unacknowledged": "0",
            "consumers": "0",
        },
        {
            "name": "ctl-orders",
            "vhost": "/",
            "durable": "true",
            "messages_ready": "0",
            "messages_unacknowledged": "2",
            "consumers": "1",
        },
    ]


async def test_list_exchanges_and_bindings(
    broker: Broker, clients: pika.BlockingConnection
) -> None:
    code, out, _ = await warren_ctl(broker, "list_exchanges", "--vhost", "/")
    assert code == 0
    exchanges = {row["name"]: row for row in table(out)}
    assert exchanges["ctl-events"] == {
        "name": "ctl-events",
        "vhost": "/",
        "type": "topic",
        "durable": "true",
        "auto_delete": "false",
        "internal": "false",
    }
    assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers"} <= set(exchanges)

    code, out, _ = await warren_ctl(broker, "list_bindings")
    assert code == 0
    rows = [
        (r["source"], r["destination"], r["destination_type"], r["routing_key"]) for r in table(out)
    ]
    assert rows == [
        ("", "ctl-idle", "queue", "ctl-idle"),
        ("", "ctl-orders", "queue", "ctl-orders"),
        ("ctl-events", "ctl-orders", "queue", "order.#"),
    ]


async def test_list_connections_and_channels(
    broker: Broker, clients: pika.BlockingConnection
) -> None:
    code, out, _ = await warren_ctl(broker, "list_connections")
    assert code == 0
    [connection] = table(out)
    assert connection["peer_host"] == "127.0.0.1"
    assert (connection["user"], connection["vhost"], connection["channels"]) == ("guest", "/", "2")

    code, out, _ = await warren_ctl(broker, "list_channels")
    assert code == 0
    channels = table(out)
    peer = f"127.0.0.1:{connection['peer_port']} -> 127.0.0.1:{broker.port}"
    assert [
        (c["name"], c["number"], c["consumer_count"], c["messages_unacknowledged"])
        for c in channels
    ] == [(f"{peer} (1)", "1", "0", "0"), (f"{peer} (2)", "2", "1", "2")]
    settings = [(c["confirm"], c["prefetch_count"]) for c in channels]
    assert settings == [("true", "0"), ("false", "5")]


async def test_wrong_password_is_refused_with_a_clear_error(broker: Broker) -> None:
    code, out, err = await warren_ctl(broker, "list_queues", "--password", "wrong")
    assert code == 77
    assert out == ""
    assert "access refused for user 'guest': wrong user name or password" in err


async def test_unreachable_broker_exits_69() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "ctl",
        "list_queues",
        "--management-port",
        str(free_port()),
        cwd=PROJECT_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 69
    assert b"cannot reach the broker's admin API" in stderr


async def test_api_refuses_a_foreign_host_header(broker: Broker) -> None:
    """Even with good credentials, a request naming another Host (DNS rebinding from a web
    page in a local browser) is refused."""
    url = f"http://127.0.0.1:{broker.config.management.listener.port}/api/queues"
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(
        url, headers={"Authorization": f"Basic {token}", "Host": "evil.example:15672"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, None, 5)
    assert refused.value.code == 403


async def test_api_requires_credentials(broker: Broker) -> None:
    url = f"http://127.0.0.1:{broker.config.management.listener.port}/api/queues"
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, url, None, 5)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Basic ")

    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with await asyncio.to_thread(urllib.request.urlopen, request, None, 5) as response:
        assert response.headers["Content-Type"] == "application/json"
        assert json.loads(response.read()) == []


def test_guest_is_refused_from_a_remote_peer(tmp_path: Path) -> None:
    """guest is loopback-only, as in RabbitMQ: once an operator exposes the management
    listener, a remote peer cannot use the well-known credentials."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from broker.management.access import authenticate
    from broker.management.errors import ApiError

    config = load_config().with_overrides(port=0, data_dir=None, metrics_port=0)
    auth = Broker(config).auth
    token = base64.b64encode(b"guest:guest").decode()
    for peer, accepted in (("198.51.100.7", False), ("127.0.0.1", True)):
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda key, peer=peer: (
            (peer, 40000) if key == "peername" else None
        )
        request = make_mocked_request(
            "GET", "/api/queues", headers={"Authorization": f"Basic {token}"},
            transport=transport,
        )  # fmt: skip
        if accepted:
            assert authenticate(request, auth).name == "guest"
        else:
            with pytest.raises(ApiError) as refused:
                authenticate(request, auth)
            assert refused.value.status == 401
