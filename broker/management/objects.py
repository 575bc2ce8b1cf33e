"""Declare and delete queues, exchanges and bindings, purge a queue, close a connection.

Each operation goes through the same model calls (and the same AMQP permission checks) as the
AMQP method it stands for, so a queue declared here is validated, logged and equivalent-checked
exactly as one declared by a client; a model refusal comes back as RabbitMQ's API error.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from aiohttp import web

from broker.core.errors import AMQPError
from broker.management import rows
from broker.management.context import (
    Context,
    boolean,
    caller,
    json_body,
    listing,
    no_content,
    respond,
    vhost_of,
)
from broker.management.errors import bad_request, from_model, not_found

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
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        body = await json_body(request)
        arguments = _arguments(body)
        caller(request).vhost_access(vhost.name).check("configure", "queue", name)
        existed = name in vhost.queues
        try:
            vhost.declare_queue(
                name,
                None,
                durable=boolean(body, "durable", True),
                auto_delete=boolean(body, "auto_delete", False),
                arguments=arguments,
            )
        except AMQPError as error:
            raise from_model(error) from None
        return no_content(204 if existed else 201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        if name not in vhost.queues:
            raise not_found()
        caller(request).vhost_access(vhost.name).check("configure", "queue", name)
        query = request.query
        try:
            vhost.delete_queue(
                name,
                vhost.queues[name].exclusive_owner,
                if_unused=query.get("if-unused", "false") == "true",
                if_empty=query.get("if-empty", "false") == "true",
            )
        except AMQPError as error:
            raise from_model(error) from None
        return no_content()

    async def purge_queue(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        queue = vhost.queues.get(name)
        if queue is None:
            raise not_found()
        caller(request).vhost_access(vhost.name).check("read", "queue", name)
        try:
            queue.purge()
        except AMQPError as error:
            raise from_model(error) from None
        return no_content()

    # ---------------------------------------------------------------------------- exchanges
    async def declare_exchange(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        body = await json_body(request)
        kind = body.get("type")
        if not isinstance(kind, str) or not kind:
            raise bad_request("exchange type is missing; say type=direct, fanout, topic...")
        caller(request).vhost_access(vhost.name).check("configure", "exchange", name)
        existed = name in vhost.exchanges
        try:
            vhost.declare_exchange(
                name,
                kind,
                durable=boolean(body, "durable", True),
                auto_delete=boolean(body, "auto_delete", False),
                internal=boolean(body, "internal", False),
                arguments=_arguments(body),
            )
        except AMQPError as error:
            raise from_model(error) from None
        return no_content(204 if existed else 201)

    async def delete_exchange(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        if name not in vhost.exchanges:
            raise not_found()
        caller(request).vhost_access(vhost.name).check("configure", "exchange", name)
        try:
            vhost.delete_exchange(name, if_unused=request.query.get("if-unused") == "true")
        except AMQPError as error:
            raise from_model(error) from None
        return no_content()

    # ---------------------------------------------------------------------------- bindings
    def _ends(self, request: web.Request) -> tuple[Any, str, str, bool]:
        vhost = vhost_of(request, self.context)
        source = request.match_info["source"]
        destination = request.match_info["destination"]
        to_exchange = request.match_info["kind"] == "e"
        if source not in vhost.exchanges or destination not in (
            vhost.exchanges if to_exchange else vhost.queues
        ):
            raise not_found()
        return vhost, source, destination, to_exchange

    async def bind(self, request: web.Request) -> web.Response:
        vhost, source, destination, to_exchange = self._ends(request)
        body = await json_body(request)
        key = body.get("routing_key", "")
        if not isinstance(key, str):
            raise bad_request("routing_key must be a string")
        arguments = _arguments(body)
        access = caller(request).vhost_access(vhost.name)
        access.check("write", "exchange" if to_exchange else "queue", destination)
        access.check("read", "exchange", source)
        try:
            vhost.bind(source, destination, key, arguments, to_exchange)
        except AMQPError as error:
            raise from_model(error) from None
        location = urllib.parse.quote(rows.properties_key(key, arguments), safe="~")
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

    async def binding(self, request: web.Request) -> web.Response:
        props = request.match_info["props"]
        for row in self._matching(request):
            if row["properties_key"] == props:
                return respond(row)
        raise not_found()

    async def unbind(self, request: web.Request) -> web.Response:
        vhost, source, destination, to_exchange = self._ends(request)
        props = request.match_info["props"]
        found = [row for row in self._matching(request) if row["properties_key"] == props]
        if not found:
            raise not_found()
        row = found[0]
        access = caller(request).vhost_access(vhost.name)
        access.check("write", "exchange" if to_exchange else "queue", destination)
        access.check("read", "exchange", source)
        try:
            vhost.unbind(source, destination, row["routing_key"], row["arguments"], to_exchange)
        except AMQPError as error:
            raise from_model(error) from None
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
                connection.force_close(320, reason)
                return no_content()
        raise not_found()


def _arguments(body: dict[str, Any]) -> dict[str, Any]:
    arguments = body.get("arguments", {})
    if arguments in ("", None):
        return {}
    if not isinstance(arguments, dict):
        raise bad_request("arguments must be a JSON object")
    return arguments
