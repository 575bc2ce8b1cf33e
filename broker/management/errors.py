"""Errors as RabbitMQ's management API gives them: a status and `{"error": ..., "reason": ...}`.

Clients (rabbitmqadmin prints `reason` on a 400) and scripts parse that body, so every refusal,
whether from the HTTP layer (unknown path, bad JSON) or from the model (an inequivalent
redeclare, a missing queue), leaves the API in that shape.
"""

from __future__ import annotations

import json

from aiohttp import web

from broker.core.errors import ACCESS_REFUSED, NOT_FOUND, AMQPError


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = json.dumps({"error": self.error, "reason": self.reason}).encode()
        return web.Response(
            status=self.status, body=body, content_type="application/json", headers=self.headers
        )


def not_found(reason: str = "Not Found") -> ApiError:
    return ApiError(404, "Object Not Found", reason)


def bad_request(reason: str) -> ApiError:
    return ApiError(400, "bad_request", reason)


def from_model(error: AMQPError) -> ApiError:
    """A model refusal (the AMQP reply a client would get) as the API's answer."""
    if error.code == NOT_FOUND:
        return not_found()
    if error.code == ACCESS_REFUSED:
        return ApiError(401, "not_authorised", error.text)
    return bad_request(error.text)
