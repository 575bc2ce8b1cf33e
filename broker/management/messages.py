"""Publish and get through the API, as rabbitmqadmin's `publish` and `get` and the console do.

A publish is a Basic.Publish on the caller's behalf: the same permission check, routing and log
record, and, for a persistent message in a durable queue, the reply waits for the log's fsync
(RabbitMQ's plugin publishes with confirms), so `{"routed": true}` means it is safe. A get is a
Basic.Get with the asked-for settlement applied at once: requeue, ack or reject.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
from typing import Any

from aiohttp import web

from broker.amqp.frames import short_string
from broker.core.errors import AMQPError
from broker.core.header_edit import join_properties
from broker.core.message import Message
from broker.core.persistence import LogUnavailable
from broker.core.properties import PropertyError, decode_properties
from broker.core.tables import TableError
from broker.management.context import Context, caller, json_body, respond, vhost_of
from broker.management.errors import ApiError, bad_request, from_model

ACK_MODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false")
MAX_GET = 10_000  # messages one get may take
BASIC_CLASS = 60

# property -> (flag bit, wire kind), in the order of the Basic class's property list
PROPERTIES = {
    "content_type": (0x8000, "shortstr"),
    "content_encoding": (0x4000, "shortstr"),
    "headers": (0x2000, "table"),
    "delivery_mode": (0x1000, "octet"),
    "priority": (0x0800, "octet"),
    "correlation_id": (0x0400, "shortstr"),
    "reply_to": (0x0200, "shortstr"),
    "expiration": (0x0100, "shortstr"),
    "message_id": (0x0080, "shortstr"),
    "timestamp": (0x0040, "timestamp"),
    "type": (0x0020, "shortstr"),
    "user_id": (0x0010, "shortstr"),
    "app_id": (0x0008, "shortstr"),
}


class Messages:
    def __init__(self, context: Context) -> None:
        self.context = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/exchanges/{vhost}/{name}/publish", self.publish),
            web.post("/api/queues/{vhost}/{name}/get", self.get),
        ]

    async def publish(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        exchange_name = "" if name == "amq.default" else name
        body = await json_body(request)
        who = caller(request)
        try:
            who.vhost_access(vhost.name).check("write", "exchange", exchange_name)
            exchange = vhost.get_exchange(exchange_name)
        except AMQPError as error:
            raise from_model(error) from None
        if exchange.internal:
            raise bad_request(f"cannot publish to internal exchange '{name}'")
        routing_key = body.get("routing_key")
        if not isinstance(routing_key, str):
            raise bad_request("routing_key is missing or not a string")
        payload = _payload(body)
        header = content_header(body.get("properties", {}), len(payload))
        route = short_string(exchange_name) + short_string(routing_key)
        try:
            message = Message(exchange_name, routing_key, route, header, payload)
            if "user_id" in message.properties and message.properties["user_id"] != who.name:
                raise bad_request(
                    f"user_id property set to '{message.properties['user_id']}' but"
                    f" authenticated user was '{who.name}'"
                )
            counters = self.context.broker.counters
            counters.published += 1
            routed, logged, refused = vhost.publish(exchange, message)
        except LogUnavailable as error:
            raise ApiError(500, "internal_error", error.text) from None
        except AMQPError as error:
            raise from_model(error) from None
        if routed:
            counters.routed += 1
        else:
            counters.unroutable_dropped += 1
        if logged:
            await _synced(vhost.store)
        return respond({"routed": bool(routed) and not refused})

    async def get(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        body = await json_body(request)
        mode = body.get("ackmode")
        if mode not in ACK_MODES:
            raise bad_request(f"ackmode must be one of {', '.join(ACK_MODES)}, got {mode!r}")
        count = _integer(body.get("count", 1), "count", 1, MAX_GET)
        encoding = body.get("encoding", "auto")
        if encoding not in ("auto", "base64"):
            raise bad_request(f"encoding must be auto or base64, got {encoding!r}")
        truncate = body.get("truncate")
        if truncate is not None:
            truncate = _integer(truncate, "truncate", 0, 2**31)
        try:
            caller(request).vhost_access(vhost.name).check("read", "queue", name)
            queue = vhost.get_queue(name, None)
        except AMQPError as error:
            raise from_model(error) from None
        taken = []
        found = []
        while len(taken) < count and (entry := queue.get(ack_required=True)) is not None:
            taken.append(entry)
            found.append(_message_row(entry, queue.message_count, encoding, truncate))
            if entry.message.lazy:
                entry.message.body = None
        if mode == "ack_requeue_false":
            queue.settle(taken)
        elif mode == "reject_requeue_false":
            queue.reject(taken)
        else:
            queue.requeue(taken)
        counters = self.context.broker.counters
        counters.get += len(taken)
        if not taken:
            counters.get_empty += 1
        return respond(found)


def _message_row(entry: Any, remaining: int, encoding: str, truncate: int | None) -> dict:
    message = entry.message
    payload = message.body or b""
    size = len(payload)
    if truncate is not None:
        payload = payload[:truncate]
    text: str | None = None
    if encoding == "auto":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    try:
        properties = decode_properties(message.header)
    except PropertyError:
        properties = {}
    return {
        "payload_bytes": size,
        "redelivered": entry.redelivered,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_count": remaining,
        "properties": properties or [],  # RabbitMQ's empty property list is an empty array
        "payload": text if text is not None else base64.b64encode(payload).decode(),
        "payload_encoding": "string" if text is not None else "base64",
    }


async def _synced(store: Any) -> None:
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    store.sync(lambda error: done.done() or done.set_result(error))
    error = await done
    if error is not None:
        raise ApiError(500, "internal_error", f"the log failed to store the message: {error}")


def _integer(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def _payload(body: dict[str, Any]) -> bytes:
    payload = body.get("payload", "")
    if payload is None:
        payload = ""
    if not isinstance(payload, str):
        raise bad_request("payload must be a string")
    encoding = body.get("payload_encoding", "string")
    if encoding == "string":
        return payload.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise bad_request("payload is not valid base64") from None
    raise bad_request(f"payload_encoding must be string or base64, got {encoding!r}")


def content_header(properties: Any, body_size: int) -> bytes:
    """A Basic content header from the API's JSON properties; JSON numbers in headers become
    64-bit integers or doubles, as RabbitMQ's plugin writes them."""
    if properties in ([], None, ""):
        properties = {}
    if not isinstance(properties, dict):
        raise bad_request("properties must be a JSON object")
    fields: dict[int, bytes] = {}
    for name, value in properties.items():
        known = PROPERTIES.get(name)
        if known is None:
            raise bad_request(f"unknown message property '{name}'")
        mask, kind = known
        fields[mask] = _encode_property(name, kind, value)
    prefix = struct.pack(">HHQ", BASIC_CLASS, 0, body_size)
    return join_properties(prefix, fields)


def _encode_property(name: str, kind: str, value: Any) -> bytes:
    try:
        if kind == "shortstr":
            text = value if isinstance(value, str) else json.dumps(value)
            return short_string(text)
        if kind == "octet":
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
                raise bad_request(f"{name} must be an integer from 0 to 255")
            return bytes([value])
        if kind == "timestamp":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad_request(f"{name} must be a non-negative integer (seconds)")
            return struct.pack(">Q", value)
        if not isinstance(value, dict):
            raise bad_request("headers must be a JSON object")
        return json_table(value)
    except (ValueError, TableError, struct.error) as error:
        raise bad_request(f"property {name}: {error}") from None


def json_table(values: dict[str, Any], depth: int = 1) -> bytes:
    body = b"".join(
        short_string(str(key)) + _json_value(item, depth) for key, item in values.items()
    )
    return len(body).to_bytes(4, "big") + body


def _json_value(value: Any, depth: int) -> bytes:
    if depth > 64:
        raise TableError("headers nested deeper than 64 levels")
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + bytes([value])
    if isinstance(value, int):
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"S" + len(raw).to_bytes(4, "big") + raw
    if isinstance(value, dict):
        return b"F" + json_table(value, depth + 1)
    items = b"".join(_json_value(item, depth + 1) for item in value)
    return b"A" + len(items).to_bytes(4, "big") + items
