"""A tiny read-only HTTP/1.1 server on the broker's event loop, for /metrics and the admin API.

Both endpoints answer a few small GET requests a minute. Serving them on the loop that owns the
broker's state means a handler reads queues and connections between two loop callbacks, never
while they change, and costs the hot path nothing between requests; prometheus_client's threaded
server would read that state from another thread. Keep-alive is supported (Prometheus reuses
its connection); requests with a body and methods other than GET and HEAD are refused.

Nobody can hold the server with idle sockets (slowloris): a request head must arrive whole within
HEAD_TIMEOUT of the connection (or, on a kept-alive connection, of its first byte); one peer
address holds at most MAX_CLIENTS_PER_PEER connections; and when a peer, or the server, is at its
cap, a newcomer takes the place of the connection that has waited longest for a request head (a
scraper's head arrives within milliseconds; a socket that has sent nothing for a while is the one
to go). Connections busy with a request are never displaced; a response a client does not read is
dropped after WRITE_TIMEOUT. Bodies are never read, so there is no body timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from broker.logs import fields

log = logging.getLogger("warren.http")

MAX_HEAD = 16 * 1024  # request line and headers
HEAD_TIMEOUT = 5.0  # seconds to send a whole request head, from connect or from its first byte
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
WRITE_TIMEOUT = 10.0  # seconds a client has to take a response before it is dropped
MAX_CLIENTS = 32  # concurrent HTTP clients
MAX_CLIENTS_PER_PEER = 8  # concurrent HTTP clients from one peer address


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query string
    query: dict[str, str]  # the first value of each parameter
    headers: dict[str, str]  # names lower-cased
    peer_host: str


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


class _Client:
    """One open connection: its peer address and since when (loop time) it has been waiting for
    a request head; None while a request is being answered."""

    __slots__ = ("peer_host", "waiting_since", "writer")

    def __init__(self, writer: asyncio.StreamWriter, peer_host: str, now: float) -> None:
        self.writer = writer
        self.peer_host = peer_host
        self.waiting_since: float | None = now


class HttpServer:
    """Serves `handler` on host:port; port 0 picks a free port (see `port` once started).

    The limits are the module's constants; a test may lower them on one instance."""

    head_timeout = HEAD_TIMEOUT
    idle_timeout = IDLE_TIMEOUT
    write_timeout = WRITE_TIMEOUT
    max_clients = MAX_CLIENTS
    max_clients_per_peer = MAX_CLIENTS_PER_PEER

    def __init__(self, handler: Handler, host: str, port: int, name: str) -> None:
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.name = name
        self._server: asyncio.base_events.Server | None = None
        self._clients: dict[asyncio.StreamWriter, _Client] = {}

    @property
    def port(self) -> int:
        assert self._server is not None, f"{self.name} server not started"
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_client, self.host, self.requested_port, reuse_address=True, limit=MAX_HEAD
        )
        log.info(
            "listener.started",
            extra=fields(protocol="http", service=self.name, host=self.host, port=self.port),
        )

    async def stop(self) -> None:
        """Stop listening and drop open (idle) client connections."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._clients):
            writer.transport.abort()  # a client that does not read must not hold up the stop
        await self._server.wait_closed()
        self._server = None

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if peer else ""
        loop = asyncio.get_running_loop()
        client = _Client(writer, peer_host, loop.time())
        if not self._make_room(peer_host):
            writer.transport.abort()  # every slot is busy answering a request
            return
        self._clients[writer] = client
        try:
            keep_alive = True
            first = b""  # a new connection owes its whole head from the start
            while keep_alive:
                try:
                    head = first + await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), self.head_timeout
                    )
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await _write(writer, _plain(431, "request header too large"), False, False)
                    return
                client.waiting_since = None
                request, keep_alive = _parse(head, peer_host)
                if request is None:
                    await _write(writer, _plain(400, "malformed request"), False, False)
                    return
                response = self._respond(request)
                await asyncio.wait_for(
                    _write(writer, response, keep_alive, request.method == "HEAD"),
                    self.write_timeout,
                )
                if keep_alive:
                    # Idle until the next request starts; its head is then owed within the
                    # head timeout of that first byte.
                    client.waiting_since = loop.time()
                    try:
                        first = await asyncio.wait_for(reader.readexactly(1), self.idle_timeout)
                    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                        return
                    client.waiting_since = loop.time()  # its head is on its way: the newest
                    # waiter, so the last one to make room for a newcomer
        except (ConnectionError, TimeoutError):  # gone, or not reading what we send
            writer.transport.abort()
            return
        finally:
            self._clients.pop(writer, None)
            writer.close()

    def _make_room(self, peer_host: str) -> bool:
        """Whether a new connection from `peer_host` may be served: under both caps, or at one
        of them once the longest-waiting idle connection (the peer's own, at the peer's cap) has
        been dropped for it."""
        same_peer = [c for c in self._clients.values() if c.peer_host == peer_host]
        if len(same_peer) >= self.max_clients_per_peer:
            candidates = same_peer
        elif len(self._clients) >= self.max_clients:
            candidates = list(self._clients.values())
        else:
            return True
        idle = [c for c in candidates if c.waiting_since is not None]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.waiting_since or 0.0)
        del self._clients[victim.writer]
        victim.writer.transport.abort()
        return True

    def _respond(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD are served\n", headers={"Allow": "GET, HEAD"})
        try:
            return self.handler(request)
        except Exception:  # a bug must cost one request, never the broker
            log.exception("http.internal_error", extra=fields(service=self.name, path=request.path))
            return _plain(500, "internal error")


def _plain(status: int, text: str) -> Response:
    return Response(status, f"{text}\n".encode())


def _parse(head: bytes, peer_host: str) -> tuple[Request | None, bool]:
    """The request and whether the connection may stay open after the response."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            if line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
    except ValueError:
        return None, False
    if not version.startswith("HTTP/1."):
        return None, False
    try:
        url = urlsplit(target)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None, False
    query = {key: values[0] for key, values in parse_qs(url.query).items()}
    has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
    keep_alive = (
        version == "HTTP/1.1" and headers.get("connection", "").lower() != "close" and not has_body
    )
    return Request(method, unquote(url.path), query, headers, peer_host), keep_alive


async def _write(
    writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head_only: bool
) -> None:
    status = HTTPStatus(response.status)
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in response.headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(response.body)
    await writer.drain()


class HttpService:
    """A broker endpoint served by an `HttpServer` (`self._http`): lifecycle and port."""

    _http: HttpServer

    @property
    def port(self) -> int:
        return self._http.port

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()
