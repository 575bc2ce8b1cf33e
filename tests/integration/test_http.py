"""The tiny HTTP/1.1 server behind /metrics and the admin API: keep-alive, HEAD, refusals."""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import AsyncIterator

import pytest

from broker.http import MAX_HEAD, HttpServer, Request, Response


def handler(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("a bug in a handler")
    return Response(200, f"{request.path} {request.query}".encode())


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    running = HttpServer(handler, "127.0.0.1", 0, "test")
    await running.start()
    yield running
    await running.stop()


def requests_on_one_connection(port: int) -> list[tuple[int, bytes]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    results = []
    calls = (("GET", "/a?x=1&x=2"), ("HEAD", "/b"), ("GET", "/c%20d"), ("GET", "/boom"))
    for method, path in calls:
        connection.request(method, path)
        response = connection.getresponse()
        results.append((response.status, response.read()))
    connection.close()
    return results


async def test_keep_alive_head_and_handler_errors(server: HttpServer) -> None:
    results = await asyncio.to_thread(requests_on_one_connection, server.port)
    assert results == [
        (200, b"/a {'x': '1'}"),
        (200, b""),
        (200, b"/c d {}"),
        (500, b"internal error\n"),
    ]


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
        (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405 Method Not Allowed"),
        (b"nonsense\r\n\r\n", b"400 Bad Request"),
        (b"GET /x SPDY/3\r\n\r\n", b"400 Bad Request"),
        (b"GET /x HTTP/1.1\r\nX: " + b"y" * MAX_HEAD + b"\r\n\r\n", b"431 "),
        (b"GET /x HTTP/1.0\r\n\r\n", b"200 OK"),  # HTTP/1.0: answered, then closed
    ],
)
async def test_refusals_close_the_connection(
    server: HttpServer, data: bytes, status: bytes
) -> None:
    answer = await asyncio.to_thread(raw_exchange, server.port, data)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert b"\r\nConnection: close\r\n" in answer


async def test_stop_drops_idle_keep_alive_clients(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /x HTTP/1.1\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    await asyncio.wait_for(server.stop(), 5)
    await reader.read()  # the server hung up
    writer.close()
