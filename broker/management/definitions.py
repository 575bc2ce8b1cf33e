"""/api/definitions: export and import RabbitMQ's definitions JSON (administrators)."""

from __future__ import annotations

import json

from aiohttp import web

from broker.definitions import DefinitionsError, export, import_definitions
from broker.management.context import Context, caller, no_content, respond
from broker.management.errors import ApiError, bad_request


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

    def _vhost(self, request: web.Request) -> str | None:
        """The vhost in the path (None for all); RabbitMQ answers 400 for an unknown one."""
        name = request.match_info.get("vhost")
        if name is not None and name not in self.context.broker.vhosts:
            raise bad_request("vhost_not_found")
        return name

    async def export(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        vhost = self._vhost(request)
        response = respond(export(self.context.broker, vhost))
        if request.query.get("download"):
            name = request.query["download"].replace('"', "")
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    async def import_(self, request: web.Request) -> web.Response:
        who = caller(request)
        who.require_admin()
        vhost = self._vhost(request)
        if request.content_type != "application/json":  # RabbitMQ's 415; no form can post it
            raise ApiError(
                415, "unsupported_media_type", "definitions must be sent as application/json"
            )
        raw = await request.read()
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad_request("failed_to_parse_json") from None
        if not isinstance(document, dict):
            raise bad_request("failed_to_parse_json")
        try:
            import_definitions(self.context.broker, document, vhost, who.name)
        except DefinitionsError as error:
            raise bad_request(error.reason) from None
        return no_content()
