"""Errors as RabbitMQ's management API gives them: a status and `{"error": ..., "reason": ...}`.

Clients (rabbitmqadmin prints `reason` on a 400) and scripts parse that body, so every refusal,
whether from the HTTP layer (unknown path, bad JSON) or from the model (an inequivalent
redeclare, a missing queue), leaves the API in that shape.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from broker.core.errors import ACCESS_REFUSED, NOT_FOUND, AMQPError


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, reason: Any, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(str(reason))
        self.status = status
        self.error = error
        self.reason = reason
        self.headers = headers or {}

    def response(self) -> web.Response:
        if self.error == "":  # RabbitMQ's bare refusals (no credentials, wrong method)
            return web.Response(status=self.status, headers=self.headers)
        body = json.dumps({"error": self.error, "reason": self.reason}).encode()
        return web.Response(
            status=self.status, body=body, content_type="application/json", headers=self.headers
        )


def not_found(reason: str = "Not Found") -> ApiError:
    return ApiError(404, "Object Not Found", reason)


def vhost_not_found() -> ApiError:
    """A write into a vhost that does not exist."""
    return ApiError(404, "not_found", "vhost_not_found")


def bad_request(reason: Any) -> ApiError:
    """400; RabbitMQ's reason is text, or for a bad field a JSON list such as
    ["not_boolean", "yes"]."""
    return ApiError(400, "bad_request", reason)


def key_missing(*keys: str) -> ApiError:
    return bad_request("[" + ",".join(f"{{key_missing,{key}}}" for key in keys) + "]")


def refused(reason: str) -> ApiError:
    return ApiError(401, "not_authorised", reason)


ACCESS_REFUSED_REASON = "Access refused."


def from_model(error: AMQPError) -> ApiError:
    """A model refusal (the AMQP reply a client would get) as the API's answer."""
    if error.code == NOT_FOUND:
        return ApiError(404, "not_found", error.text)
    if error.code == ACCESS_REFUSED:
        return refused(ACCESS_REFUSED_REASON)
    return bad_request(error.text)
