"""The admin API behind `warren ctl`: read-only JSON listings, loopback only, with credentials.

GET /api/queues, /api/exchanges, /api/bindings, /api/connections, /api/channels, each optionally
?vhost=NAME. Field names are those of RabbitMQ's management API and rabbitmqctl info items
(messages_unacknowledged, consumer_count, ...), so operators read what they already know.

Access: the server refuses to bind anything but a loopback address and answers 403 to a peer
that is not loopback, so it can never be reached from the network; HTTP Basic credentials are
checked against the broker's users (401 otherwise), and a user sees only the vhosts it may open.

Default port 15672, RabbitMQ's management port: where a RabbitMQ operator looks for the broker's
HTTP API, and free on a Warren host, which runs no management plugin. Being loopback-only, it
clashes with nothing outside the machine.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from broker.auth import is_loopback
from broker.core.queue import Queue
from broker.core.vhost import VirtualHost
from broker.http import HttpServer, HttpService, Request, Response
from broker.logs import fields

if TYPE_CHECKING:
    from broker.amqp.connection import AMQPConnection
    from broker.server import Broker

log = logging.getLogger("warren.admin")

DEFAULT_ADMIN_PORT = 15672
JSON = "application/json"
Row = dict[str, Any]


def check_loopback_host(host: str) -> None:
    if host != "localhost" and not is_loopback(host):
        raise ValueError(
            f"the admin API serves loopback clients only and cannot listen on {host!r};"
            " use 127.0.0.1, ::1 or localhost"
        )


class AdminServer(HttpService):
    """The admin API of one broker on a loopback host:port (port 0 picks a free one)."""

    def __init__(
        self, broker: Broker, host: str = "127.0.0.1", port: int = DEFAULT_ADMIN_PORT
    ) -> None:
        check_loopback_host(host)
        self.broker = broker
        self._http = HttpServer(self.handle, host, port, "admin")
        self._listings: dict[str, Callable[[Iterable[VirtualHost]], list[Row]]] = {
            "/api/queues": self._queues,
            "/api/exchanges": self._exchanges,
            "/api/bindings": self._bindings,
            "/api/connections": self._connections,
            "/api/channels": self._channels,
        }

    def handle(self, request: Request) -> Response:
        if not is_loopback(request.peer_host):
            return _error(403, "access_refused", "the admin API answers loopback clients only")
        if not _loopback_host_header(request.headers.get("host", "")):
            # A web page in a local browser could otherwise reach this API through DNS rebinding.
            return _error(403, "access_refused", "the Host header must name a loopback address")
        user = self._authenticate(request)
        if user is None:
            reason = (
                "login failed"
                if "authorization" in request.headers
                else "HTTP Basic credentials of a broker user are required"
            )
            return _error(
                401, "not_authorized", reason, {"WWW-Authenticate": 'Basic realm="Warren admin"'}
            )
        listing = self._listings.get(request.path.rstrip("/"))
        if listing is None:
            known = ", ".join(self._listings)
            return _error(404, "not_found", f"no such listing; try one of {known}")
        vhosts = [
            vhost
            for name, vhost in sorted(self.broker.vhosts.items())
            if self.broker.auth.vhost_access(user, name) is not None
        ]
        wanted = request.query.get("vhost")
        if wanted is not None:
            if wanted not in self.broker.vhosts:
                return _error(404, "not_found", f"no vhost '{wanted}'")
            vhosts = [vhost for vhost in vhosts if vhost.name == wanted]
        body = json.dumps(_json_ready(listing(vhosts)), allow_nan=False, separators=(",", ":"))
        return Response(200, body.encode(), JSON)

    def _authenticate(self, request: Request) -> str | None:
        """The user named by valid Basic credentials, else None."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        refusal = self.broker.auth.authenticate(user, password, request.peer_host, "PLAIN")
        if refusal is not None:
            log.warning("admin.login_refused", extra=fields(peer=request.peer_host, user=user))
            return None
        return user

    # ---------------------------------------------------------------------------- listings
    @staticmethod
    def _queues(vhosts: Iterable[VirtualHost]) -> list[Row]:
        return [
            {
                "name": queue.name,
                "vhost": vhost.name,
                "type": queue.queue_type,
                "durable": queue.durable,
                "auto_delete": queue.auto_delete,
                "exclusive": queue.exclusive,
                "arguments": queue.arguments,
                "messages": queue.message_count + queue.unacked_count,
                "messages_ready": queue.message_count,
                "messages_unacknowledged": queue.unacked_count,
                "consumers": len(queue.consumers),
            }
            for vhost in vhosts
            for queue in sorted(vhost.queues.values(), key=lambda q: q.name)
        ]

    @staticmethod
    def _exchanges(vhosts: Iterable[VirtualHost]) -> list[Row]:
        return [
            {
                "name": exchange.name,
                "vhost": vhost.name,
                "type": exchange.type_name,
                "durable": exchange.durable,
                "auto_delete": exchange.auto_delete,
                "internal": exchange.internal,
                "arguments": exchange.arguments,
            }
            for vhost in vhosts
            for exchange in sorted(vhost.exchanges.values(), key=lambda e: e.name)
        ]

    @staticmethod
    def _bindings(vhosts: Iterable[VirtualHost]) -> list[Row]:
        """Each queue's implicit binding to the default exchange first, as RabbitMQ lists them."""
        rows = []
        for vhost in vhosts:
            queues = sorted(vhost.queues)
            rows += [_binding(vhost.name, "", name, "queue", name, {}) for name in queues]
            explicit = [
                _binding(
                    vhost.name,
                    exchange.name,
                    binding.destination.name,
                    "queue" if isinstance(binding.destination, Queue) else "exchange",
                    binding.routing_key,
                    binding.arguments,
                )
                for exchange in vhost.exchanges.values()
                for binding in exchange.bindings.values()
            ]
            rows += sorted(
                explicit, key=lambda r: (r["source"], r["destination"], r["routing_key"])
            )
        return rows

    def _open_connections(self, vhosts: Iterable[VirtualHost]) -> list[AMQPConnection]:
        """Opened connections (past the handshake) to the given vhosts, by peer address."""
        names = {vhost.name for vhost in vhosts}
        opened = [
            c for c in self.broker.connections if c.vhost is not None and c.vhost.name in names
        ]
        return sorted(opened, key=lambda c: c.peer)

    def _connections(self, vhosts: Iterable[VirtualHost]) -> list[Row]:
        rows = []
        for connection in self._open_connections(vhosts):
            host, _, port = connection.peer.rpartition(":")
            rows.append(
                {
                    "name": connection.peer,
                    "peer_host": host,
                    "peer_port": int(port) if port.isdigit() else port,
                    "user": connection.user,
                    "vhost": connection.vhost.name,
                    "channels": len(connection.channels),
                    "client_properties": connection.client_properties,
                }
            )
        return rows

    def _channels(self, vhosts: Iterable[VirtualHost]) -> list[Row]:
        return [
            {
                "connection": connection.peer,
                "number": channel.number,
                "user": connection.user,
                "vhost": connection.vhost.name,
                "consumer_count": len(channel.consumers),
                "messages_unacknowledged": len(channel.unacked),
                "messages_unconfirmed": channel.unconfirmed,
                "prefetch_count": channel.prefetch_count,
                "global_prefetch_count": channel.global_prefetch,
                "confirm": channel.confirm_mode,
                "transactional": channel.tx is not None,
            }
            for connection in self._open_connections(vhosts)
            for channel in sorted(connection.channels.values(), key=lambda ch: ch.number)
        ]


def _binding(
    vhost: str, source: str, destination: str, kind: str, key: str, arguments: dict[str, Any]
) -> Row:
    return {
        "vhost": vhost,
        "source": source,
        "destination": destination,
        "destination_type": kind,
        "routing_key": key,
        "arguments": arguments,
    }


# Client properties and arguments are field tables a client sent; the wire decoder bounds their
# nesting (about 100 levels), so a legal table renders whole under this limit, and anything deeper
# (whatever the decoder lets through) is cut off with TOO_DEEP instead of overflowing the stack.
MAX_JSON_DEPTH = 256
TOO_DEEP = f"(nested deeper than {MAX_JSON_DEPTH} levels)"


def _json_ready(document: Any) -> Any:
    """The document as plain JSON data, built without recursion: tables and arrays at any depth,
    bytes as text, floats JSON cannot hold (nan, inf) and every other value (Decimal, datetime)
    as their string form."""
    root: list[Any] = [None]
    pending: list[tuple[Any, Any, Any, int]] = [(document, root, 0, 1)]
    while pending:
        value, parent, key, depth = pending.pop()
        if isinstance(value, dict | list | tuple) and depth > MAX_JSON_DEPTH:
            parent[key] = TOO_DEEP
        elif isinstance(value, dict):
            parent[key] = table = dict.fromkeys(str(k) for k in value)
            pending += ((item, table, str(k), depth + 1) for k, item in value.items())
        elif isinstance(value, list | tuple):
            parent[key] = array = [None] * len(value)
            pending += ((item, array, i, depth + 1) for i, item in enumerate(value))
        else:
            parent[key] = _json_scalar(value)
    return root[0]


def _json_scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _error(status: int, error: str, reason: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "reason": reason}).encode()
    return Response(status, body, JSON, headers or {})


def _loopback_host_header(value: str) -> bool:
    """Host: localhost, 127.0.0.1, [::1] (with or without a port)."""
    host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    host = host.split("]")[0].lstrip("[") if host.startswith("[") else host
    return host == "localhost" or is_loopback(host)
