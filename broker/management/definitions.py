"""/api/definitions: export and import RabbitMQ's definitions JSON (administrators)."""

from __future__ import annotations

import json

from aiohttp import web

from broker.definitions import DefinitionsError, export, import_definitions
from broker.management.context import Context, caller, no_content, respond, vhost_of
from broker.management.errors import bad_request


class Definitions:
    def __init__(self, context: Context) -> None:
        self.context = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/definitions", self.export),
            web.get("/api/definitions/{vhost}", self.export),
            web.post("/api/definitions", self.import_),
            web.post("/api/definitions/{vhost}", self.import_),
        ]

    async def export(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        vhost = vhost_of(request, self.context).name if "vhost" in request.match_info else None
        response = respond(export(self.context.broker, vhost))
        if request.query.get("download"):
            name = request.query["download"].replace('"', "")
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    async def import_(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        vhost = vhost_of(request, self.context).name if "vhost" in request.match_info else None
        raw = await request.read()
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("Malformed JSON: the definitions are not a JSON document") from None
        try:
            import_definitions(self.context.broker, document, vhost)
        except DefinitionsError as error:
            raise bad_request(str(error)) from None
        return no_content()
