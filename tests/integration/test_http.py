"""The HTTP endpoint behind /metrics and the management API (aiohttp behind our guards):
keep-alive, HEAD, refusals, and the slowloris defences aiohttp does not have."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
from asyncio import StreamReader, StreamWriter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from broker.config import load_config
from broker.http import MAX_CLIENTS, MAX_CLIENTS_PER_PEER, HttpEndpoint
from broker.server import Broker
from tests.support import free_port


async def echo(request: web.Request) -> web.Response:
    return web.Response(text=f"{request.path} {dict(request.query)}")


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug in a handler")


@pytest.fixture
async def server() -> AsyncIterator[HttpEndpoint]:
    app = web.Application()
    app.router.add_get("/boom", boom)
    app.router.add_get("/{path:.*}", echo)
    running = HttpEndpoint(app, "127.0.0.1", 0, "test")
    await running.start()
    yield running
    await running.stop()


def requests_on_one_connection(port: int) -> list[tuple[int, bytes]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    results = []
    calls = (("GET", "/a?x=1"), ("HEAD", "/b"), ("GET", "/c%20d"), ("GET", "/boom"))
    for method, path in calls:
        connection.request(method, path)
        response = connection.getresponse()
        results.append((response.status, response.read()))
    connection.close()
    return results


async def test_keep_alive_head_and_handler_errors(server: HttpEndpoint) -> None:
    """Four requests on one connection: a handler's bug costs its request a 500, not the
    connection or the server."""
    results = await asyncio.to_thread(requests_on_one_connection, server.port)
    assert results[:3] == [(200, b"/a {'x': '1'}"), (200, b""), (200, b"/c d {}")]
    assert results[3][0] == 500
    assert b"see its log" in results[3][1]


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            b"405 ",
        ),
        (b"nonsense\r\n\r\n", b"400 "),
        (b"GET /x SPDY/3\r\n\r\n", b"400 "),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20_000 + b"\r\n\r\n", b"400 "),
        (b"GET /x HTTP/1.0\r\n\r\n", b"200 OK"),  # HTTP/1.0: answered, then closed
    ],
)
async def test_refusals_are_answered_and_the_connection_closed(
    server: HttpEndpoint, data: bytes, status: bytes
) -> None:
    answer = await asyncio.to_thread(raw_exchange, server.port, data)
    assert answer.split(b" ", 1)[1].startswith(status), answer[:200]


async def test_stop_drops_idle_keep_alive_clients(server: HttpEndpoint) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    await asyncio.wait_for(server.stop(), 5)
    await reader.read()  # the server hung up
    writer.close()


# ------------------------------------------------------------------- slowloris: idle sockets


async def connect(port: int, source: str = "127.0.0.1") -> tuple[StreamReader, StreamWriter]:
    """A connection from `source`: every 127.x address is this machine, yet another peer."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_server(reader: StreamReader, within: float) -> bool:
    """Whether the server ends the connection (FIN or RST) within `within` seconds."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def get(port: int, source: str = "127.0.0.1", path: str = "/x") -> bytes:
    reader, writer = await connect(port, source)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    try:
        return await reader.read()
    finally:
        writer.close()


async def trickle(writer: StreamWriter, data: bytes, interval: float) -> None:
    """Send `data` a byte at a time, never finishing the head: the slowloris."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval)
        await asyncio.sleep(3600)


async def test_heads_must_arrive_within_the_head_timeout(server: HttpEndpoint) -> None:
    """A socket that sends nothing, one that trickles a head that never ends, and a kept-alive
    connection that starts its next head and never finishes it are all closed once the head
    timeout passes (it used to be 60 s, and a trickle could hold a slot that long); a kept-alive
    connection that just waits quietly for its next request is left alone."""
    server.head_timeout = 0.5
    partial = b"GET /x HTTP/1.1\r\nX-Slow: " + b"y" * 200
    silent, _silent = await connect(server.port)
    trickled, trickle_writer = await connect(server.port)
    kept, kept_writer = await connect(server.port)
    kept_writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await kept.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    await kept.readexactly(len(b"/x {}"))
    idle, idle_writer = await connect(server.port)
    idle_writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await idle.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    await idle.readexactly(len(b"/x {}"))
    slow = [
        asyncio.create_task(trickle(trickle_writer, partial, 0.05)),
        asyncio.create_task(trickle(kept_writer, partial, 0.05)),
    ]
    try:
        started = asyncio.get_running_loop().time()
        closed = await asyncio.gather(
            closed_by_server(silent, 3), closed_by_server(trickled, 3), closed_by_server(kept, 3)
        )
        assert closed == [True, True, True]
        assert asyncio.get_running_loop().time() - started < 3
        # The quiet kept-alive connection outlived the head timeout and still serves.
        idle_writer.write(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(idle.readuntil(b"\r\n\r\n"), 2)
        assert answer.startswith(b"HTTP/1.1 200 OK")
    finally:
        for task in slow:
            task.cancel()
        for writer in (_silent, trickle_writer, kept_writer, idle_writer):
            writer.close()


async def test_idle_peers_cannot_take_every_slot(server: HttpEndpoint) -> None:
    """Four peers open ten silent sockets each (more than every slot, long before any head
    timeout): each keeps at most MAX_CLIENTS_PER_PEER, and a fifth peer is served at once, as
    is one of the hogging peers itself: a newcomer takes the place of the connection that has
    waited longest for a request head."""
    hogs = {
        f"127.0.0.{i}": [await connect(server.port, f"127.0.0.{i}") for _ in range(10)]
        for i in (1, 2, 3, 4)
    }
    try:
        for source in ("127.0.0.9", "127.0.0.1"):
            answer = await asyncio.wait_for(get(server.port, source), 2)
            assert answer.startswith(b"HTTP/1.1 200 OK"), source
        readers = {source: [reader for reader, _ in conns] for source, conns in hogs.items()}
        closed = await asyncio.gather(
            *(closed_by_server(reader, 0.5) for conns in readers.values() for reader in conns)
        )
        still_open = dict.fromkeys(readers, 0)
        for source, was_closed in zip(
            (s for s, conns in readers.items() for _ in conns), closed, strict=True
        ):
            still_open[source] += not was_closed
        assert max(still_open.values()) <= MAX_CLIENTS_PER_PEER, still_open
        assert sum(still_open.values()) < MAX_CLIENTS, still_open
        assert MAX_CLIENTS_PER_PEER * 4 <= MAX_CLIENTS  # so the fifth peer meant a full server
    finally:
        for connections in hogs.values():
            for _, writer in connections:
                writer.close()


async def test_metrics_scrape_is_served_while_idle_sockets_hog_the_port(tmp_path: Path) -> None:
    """The reported trigger against a real broker: 40 idle sockets and a few slow heads from
    the scraper's own address, then a Prometheus scrape of /metrics answers at once (before
    the head timeout, which would eventually free the slots anyway)."""
    config = load_config().with_overrides(
        port=0, metrics_port=free_port(), management_port=0, data_dir=str(tmp_path / "data")
    )
    async with Broker(config) as broker:
        port = config.metrics_port
        idle = [await connect(port) for _ in range(40)]
        slow = []
        for _ in range(8):
            _, writer = await connect(port)
            slow.append((writer, asyncio.create_task(trickle(writer, b"GET /metrics HT", 0.2))))
        try:
            started = asyncio.get_running_loop().time()
            status, body = await asyncio.wait_for(asyncio.to_thread(scrape, port), 3)
            assert status == 200
            assert b"rabbitmq_connections" in body
            assert asyncio.get_running_loop().time() - started < 2
            assert broker.port
        finally:
            for writer, task in slow:
                task.cancel()
                writer.close()
            for _, writer in idle:
                writer.close()


def scrape(port: int) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def test_a_client_that_does_not_read_its_answer_is_dropped() -> None:
    """A response the client never reads (its socket buffer full) keeps the request busy; the
    request timeout covers that write too, so the slot is given back."""
    app = web.Application()

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (32 * 1024 * 1024))

    app.router.add_get("/big", big)
    endpoint = HttpEndpoint(app, "127.0.0.1", 0, "test")
    endpoint.request_timeout = 0.5
    await endpoint.start()
    try:
        sock = socket.create_connection(("127.0.0.1", endpoint.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not any(c.busy_since is not None for c in endpoint._clients.values()):
            assert loop.time() - started < 5, "the request never started"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert endpoint._clients, "the answer was written whole: the client must be slower"
        while endpoint._clients and loop.time() - started < 5:
            await asyncio.sleep(0.1)
        assert not endpoint._clients  # dropped, not held for the client's pleasure
        assert loop.time() - started < 3
        sock.close()
    finally:
        await endpoint.stop()
