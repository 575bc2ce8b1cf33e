"""Declare and delete queues, exchanges and bindings, purge a queue, close a connection.

Each operation goes through the same model calls (and the same AMQP permission checks) as the
AMQP method it stands for, so a queue declared here is validated, logged and equivalent-checked
exactly as one declared by a client; a model refusal (an AMQPError) comes back as RabbitMQ's API
error through the server's error middleware.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from aiohttp import web

from broker.core.fields import Long
from broker.core.vhost import ALL_EXCHANGE_TYPES
from broker.management import rows
from broker.management.context import (
    Context,
    boolean,
    caller,
    json_body,
    listing,
    name_of,
    no_content,
    respond,
    vhost_of,
)
from broker.management.errors import (
    ACCESS_REFUSED_REASON,
    ApiError,
    bad_request,
    not_found,
    refused,
)

CONNECTION_CLOSED_BY_API = "Closed via management plugin"


class Objects:
    def __init__(self, context: Context) -> None:
        self.context = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/api/queues/{vhost}/{name}", self.declare_queue),
            web.delete("/api/queues/{vhost}/{name}", self.delete_queue),
            web.delete("/api/queues/{vhost}/{name}/contents", self.purge_queue),
            web.put("/api/exchanges/{vhost}/{name}", self.declare_exchange),
            web.delete("/api/exchanges/{vhost}/{name}", self.delete_exchange),
            web.post("/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}", self.bind),
            web.get("/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}", self.between),
            web.get(
                "/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}/{props}", self.binding
            ),
            web.delete(
                "/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}/{props}", self.unbind
            ),
            web.delete("/api/connections/{name}", self.close_connection),
        ]

    # ---------------------------------------------------------------------------- queues
    async def declare_queue(self, request: web.Request) -> web.Response:
        body = await json_body(request)  # first: the vhost is looked up after the await
        vhost = vhost_of(request, self.context, writing=True)
        name = name_of(request, "queue")
        arguments = _arguments(body)
        durable = boolean(body, "durable", False)
        auto_delete = boolean(body, "auto_delete", False)
        access = caller(request).vhost_access(vhost.name)
        access.check("configure", "queue", name)
        access.check_forwarding("queue", name, arguments.get("x-dead-letter-exchange"))
        existed = name in vhost.queues
        vhost.declare_queue(
            name, None, durable=durable, auto_delete=auto_delete, arguments=arguments
        )
        return no_content(204 if existed else 201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context, writing=True)
        name = request.match_info["name"]
        if name not in vhost.queues:
            raise not_found()
        caller(request).vhost_access(vhost.name).check("configure", "queue", name)
        query = request.query
        vhost.delete_queue(  # another connection's exclusive queue: 405 -> 400, as RabbitMQ
            name,
            None,
            if_unused=query.get("if-unused", "false") == "true",
            if_empty=query.get("if-empty", "false") == "true",
        )
        return no_content()

    async def purge_queue(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        queue = vhost.queues.get(name)
        if queue is None:
            raise not_found()
        caller(request).vhost_access(vhost.name).check("read", "queue", name)
        vhost.purge_queue(name, None)  # refuses another connection's exclusive queue
        return no_content()

    # ---------------------------------------------------------------------------- exchanges
    async def declare_exchange(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        vhost = vhost_of(request, self.context, writing=True)
        name = name_of(request, "exchange")
        kind = body.get("type", "direct")  # RabbitMQ's default
        if not isinstance(kind, str) or kind not in ALL_EXCHANGE_TYPES:
            raise bad_request(f"unknown exchange type '{kind}'")
        durable = boolean(body, "durable", True)
        auto_delete = boolean(body, "auto_delete", False)
        internal = boolean(body, "internal", False)
        arguments = _arguments(body)
        who = caller(request)
        access = who.vhost_access(vhost.name)
        access.check("configure", "exchange", name)
        access.check_forwarding("exchange", name, arguments.get("alternate-exchange"))
        existed = name in vhost.exchanges
        vhost.declare_exchange(
            name,
            kind,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
            declared_by=who.name,
        )
        return no_content(204 if existed else 201)

    async def delete_exchange(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context, writing=True)
        name = request.match_info["name"]
        if name in ("", "amq.default") or name.startswith("amq."):
            raise refused(ACCESS_REFUSED_REASON)
        if name not in vhost.exchanges:
            raise not_found()
        caller(request).vhost_access(vhost.name).check("configure", "exchange", name)
        vhost.delete_exchange(name, if_unused=request.query.get("if-unused") == "true")
        return no_content()

    # ---------------------------------------------------------------------------- bindings
    def _ends(self, request: web.Request, writing: bool = False) -> tuple[Any, str, str, bool]:
        vhost = vhost_of(request, self.context, writing)
        source = request.match_info["source"]
        destination = request.match_info["destination"]
        to_exchange = request.match_info["kind"] == "e"
        if source in ("", "amq.default") or (to_exchange and destination == "amq.default"):
            raise refused(ACCESS_REFUSED_REASON)
        where = f"in vhost '{vhost.name}'"
        if destination not in (vhost.exchanges if to_exchange else vhost.queues):
            kind = "exchange" if to_exchange else "queue"
            raise ApiError(404, "not_found", f"no {kind} '{destination}' {where}")
        if source not in vhost.exchanges:
            raise ApiError(404, "not_found", f"no exchange '{source}' {where}")
        return vhost, source, destination, to_exchange

    async def bind(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        vhost, source, destination, to_exchange = self._ends(request, writing=True)
        key = body.get("routing_key", "")
        if not isinstance(key, str):
            raise bad_request("routing_key must be a string")
        arguments = _arguments(body)
        caller(request).vhost_access(vhost.name).check_binding(
            "exchange" if to_exchange else "queue", destination, source
        )
        vhost.bind(source, destination, key, arguments, to_exchange)
        # Relative, the properties key percent-encoded once more, as RabbitMQ answers.
        props = urllib.parse.quote(rows.properties_key(key, arguments), safe="~")
        location = f"{urllib.parse.quote(destination, safe='')}/{props}"
        return web.Response(status=201, headers={"Location": location})

    def _matching(self, request: web.Request) -> list[rows.Row]:
        vhost, source, destination, to_exchange = self._ends(request)
        kind = "exchange" if to_exchange else "queue"
        exchange = vhost.exchanges[source]
        return [
            row
            for binding in exchange.bindings.values()
            if (row := rows.explicit_binding_row(vhost.name, binding))["destination"] == destination
            and row["destination_type"] == kind
        ]

    async def between(self, request: web.Request) -> web.Response:
        return listing(request, self._matching(request))

    def _by_key(self, request: web.Request) -> rows.Row:
        """The binding a path's properties key names; clients send the key as listed, or
        percent-encoded once more (rabbitmqadmin does), and both are accepted."""
        props = request.match_info["props"]
        keys = {props, urllib.parse.unquote(props)}
        for row in self._matching(request):
            if row["properties_key"] in keys:
                return row
        raise not_found()

    async def binding(self, request: web.Request) -> web.Response:
        return respond(self._by_key(request))

    async def unbind(self, request: web.Request) -> web.Response:
        vhost, source, destination, to_exchange = self._ends(request)
        found = [self._by_key(request)]
        row = found[0]
        caller(request).vhost_access(vhost.name).check_binding(
            "exchange" if to_exchange else "queue", destination, source
        )
        vhost.unbind(source, destination, row["routing_key"], row["arguments"], to_exchange)
        return no_content()

    # ---------------------------------------------------------------------------- clients
    async def close_connection(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        who = caller(request)
        for connection in list(self.context.broker.connections):
            if connection.name == name and connection.vhost is not None:
                if not (who.is_admin or connection.user == who.name):
                    raise not_found()
                reason = request.headers.get("X-Reason", CONNECTION_CLOSED_BY_API)
                # a header's bytes that are not UTF-8 must not fail the close
                reason = reason.encode("utf-8", "replace").decode("utf-8")
                connection.force_close(320, reason)
                return no_content()
        raise not_found()


def _arguments(body: dict[str, Any]) -> dict[str, Any]:
    """JSON arguments as a client's table: integers are RabbitMQ's longs (their type shows in
    equivalence errors)."""
    arguments = body.get("arguments", {})
    if arguments in ("", None):
        return {}
    if not isinstance(arguments, dict):
        raise bad_request(["not_table", arguments])
    return {
        key: Long(value) if isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in arguments.items()
    }
