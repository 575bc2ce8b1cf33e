"""HTTP endpoints (Prometheus /metrics, the management API and console) on the broker's loop.

aiohttp does the HTTP: routing, bodies, percent-decoding, keep-alive, TLS. It runs on the loop
that owns the broker's state, so a handler reads queues and connections between two loop
callbacks, never while they change, and costs the hot path nothing between requests.

What aiohttp leaves open is a peer that holds sockets without finishing requests (slowloris), so
every connection passes through a guard protocol in front of aiohttp's:
- a request head must arrive whole within `head_timeout` of the connection (or, on a kept-alive
  connection, of its first byte); an idle kept-alive connection is closed after `idle_timeout`;
- a request, from its head to the end of its response (body upload, handling, a client that
  reads the response slowly), must finish within `request_timeout`;
- one peer address holds at most `max_clients_per_peer` connections, the server `max_clients`;
  at a cap, a newcomer takes the place of the connection that has waited longest for a request
  head (a real client's head arrives within milliseconds; a socket that has sent nothing for a
  while is the one to go). Connections busy with a request are never displaced.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from broker.logs import fields

log = logging.getLogger("warren.http")
# aiohttp logs a client's malformed request with a traceback at ERROR: bad input is the
# client's problem, answered with a 400, not the broker's. Handler errors are logged by
# `_track` instead.
_client_errors = logging.getLogger("warren.http.client_errors")
_client_errors.setLevel(logging.CRITICAL)

HEAD_TIMEOUT = 5.0  # seconds to send a whole request head, from connect or from its first byte
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
REQUEST_TIMEOUT = 30.0  # seconds from a request's head to the end of its response
MAX_CLIENTS = 32  # concurrent HTTP connections
MAX_CLIENTS_PER_PEER = 8  # concurrent HTTP connections from one peer address
MAX_BODY = 16 * 1024 * 1024  # request bodies (a definitions import is the largest)
SWEEP_INTERVAL = 0.25  # seconds between checks of the timeouts

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped to know when it waits and for what."""

    def __init__(self, endpoint: HttpEndpoint, inner: asyncio.Protocol, now: float) -> None:
        self.endpoint = endpoint
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.peer_host = ""
        self.busy_since: float | None = None  # a request is being answered since then
        self.waiting_since = now  # for a request head (or, kept alive, for its first byte)
        self.head_started = True  # a new connection owes its head at once
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's, which can abort (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_host = str(peer[0]) if peer else ""
        if not self.endpoint.admit(self):
            self.transport.abort()  # every slot is busy answering a request
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.busy_since is None and not self.head_started:
            self.head_started = True  # a kept-alive connection starts its next head now
            self.waiting_since = self.endpoint.now()
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.forget(self)
        if self.admitted:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def request_started(self, now: float) -> None:
        self.busy_since = now

    def request_finished(self, now: float) -> None:
        self.busy_since = None
        self.head_started = False
        self.waiting_since = now

    def overdue(self, now: float, endpoint: HttpEndpoint) -> str | None:
        """Why this connection should be closed now, or None."""
        if self.busy_since is not None:
            if now - self.busy_since > endpoint.request_timeout:
                return "request_timeout"
            return None
        if self.head_started:
            return "head_timeout" if now - self.waiting_since > endpoint.head_timeout else None
        return "idle_timeout" if now - self.waiting_since > endpoint.idle_timeout else None


class HttpEndpoint:
    """An aiohttp application served on host:port (port 0 picks a free one, see `port`).

    The limits are the module's constants; a test may lower them on one instance."""

    head_timeout = HEAD_TIMEOUT
    idle_timeout = IDLE_TIMEOUT
    request_timeout = REQUEST_TIMEOUT
    max_clients = MAX_CLIENTS
    max_clients_per_peer = MAX_CLIENTS_PER_PEER

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        name: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.name = name
        self.ssl_context = ssl_context
        app.middlewares.insert(0, self._track)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            logger=_client_errors,
            handle_signals=False,
            keepalive_timeout=IDLE_TIMEOUT * 2,  # our sweep closes idle connections first
            max_line_size=8190,
            max_field_size=8190,
        )
        self._server: asyncio.base_events.Server | None = None
        self._clients: dict[asyncio.Transport, _GuardedConnection] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, f"{self.name} server not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        await self._runner.setup()
        factory = self._runner.server
        assert factory is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _GuardedConnection(self, factory(), loop.time()),
            self.host,
            self.requested_port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.head_timeout if self.ssl_context else None,
            reuse_address=True,
        )
        self._sweeper = asyncio.create_task(self._sweep())
        log.info(
            "listener.started",
            extra=fields(protocol=self.scheme, service=self.name, host=self.host, port=self.port),
        )

    async def stop(self) -> None:
        """Stop listening and drop open client connections (a client that does not read must
        not hold up the broker's stop)."""
        if self._server is None:
            return
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for transport in list(self._clients):
            transport.abort()
        await self._server.wait_closed()
        await self._runner.cleanup()
        self._server = None

    # ---------------------------------------------------------------------------- guards
    def admit(self, client: _GuardedConnection) -> bool:
        """Whether a new connection may be served: under both caps, or at one of them once the
        longest-waiting idle connection (the peer's own, at the peer's cap) has been dropped."""
        same_peer = [c for c in self._clients.values() if c.peer_host == client.peer_host]
        if len(same_peer) >= self.max_clients_per_peer:
            candidates = same_peer
        elif len(self._clients) >= self.max_clients:
            candidates = list(self._clients.values())
        else:
            candidates = []
        if candidates:
            idle = [c for c in candidates if c.busy_since is None]
            if not idle:
                return False
            victim = min(idle, key=lambda c: c.waiting_since)
            self._drop(victim, "displaced")
        assert client.transport is not None
        self._clients[client.transport] = client
        return True

    def forget(self, client: _GuardedConnection) -> None:
        if client.transport is not None:
            self._clients.pop(client.transport, None)

    def _drop(self, client: _GuardedConnection, reason: str) -> None:
        assert client.transport is not None
        self._clients.pop(client.transport, None)
        log.debug("http.connection_dropped", extra=fields(service=self.name, reason=reason))
        client.transport.abort()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.now()
            for client in list(self._clients.values()):
                reason = client.overdue(now, self)
                if reason is not None:
                    self._drop(client, reason)

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy from the request's head until its response is written (so
        the request timeout covers a client that reads slowly); a bug costs one request (500),
        never the broker."""
        client = self._clients.get(request.transport) if request.transport else None
        if client is not None:
            client.request_started(self.now())
        try:
            try:
                response = await handler(request)
            except web.HTTPException as error:  # the router's 404 and 405, a handler's refusal
                response = web.Response(status=error.status, text=error.text, headers=error.headers)
            except Exception:
                log.exception(
                    "http.internal_error", extra=fields(service=self.name, path=request.path)
                )
                response = web.json_response(
                    {"error": "internal_error", "reason": "the broker failed; see its log"},
                    status=500,
                )
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            if client is not None:
                client.request_finished(self.now())


def plain_text(status: int, text: str, **kwargs: Any) -> web.Response:
    return web.Response(status=status, text=f"{text}\n", **kwargs)
