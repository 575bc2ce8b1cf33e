"""Publish and get through the API, as rabbitmqadmin's `publish` and `get` and the console do.

A publish is a Basic.Publish on the caller's behalf: the same permission check, routing and log
record; the reply waits for the log's fsync (the server's `_durable` middleware, as RabbitMQ's
plugin publishes with confirms), so `{"routed": true}` means a persistent message is safe. A get
is a Basic.Get with the asked-for settlement applied at once: requeue, ack or reject.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from aiohttp import web

from broker.amqp.frames import short_string
from broker.core.errors import NOT_FOUND, REPLY_NAMES, AMQPError
from broker.core.header_edit import join_properties
from broker.core.message import Message, QueuedMessage
from broker.core.properties import PropertyError, decode_properties
from broker.core.tables import TableError
from broker.management.context import Context, caller, json_body, require, respond, vhost_of
from broker.management.errors import ApiError, bad_request

ACK_MODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false")
MAX_GET = 10_000  # messages one get may take
# Bodies and headers one get answers with, at most (past it the get stops early, having taken
# at least one): count=10000 of large messages must not build a gigabyte response in memory.
MAX_GET_BYTES = 64 * 1024 * 1024
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
            # rabbitmqadmin v2 names the default exchange with an empty path segment
            web.post("/api/exchanges/{vhost}//publish", self.publish),
            web.post("/api/queues/{vhost}/{name}/get", self.get),
        ]

    async def publish(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        vhost = vhost_of(request, self.context)
        name = request.match_info.get("name", "")
        exchange_name = "" if name == "amq.default" else name
        require(body, "routing_key", "properties", "payload", "payload_encoding")
        who = caller(request)
        who.vhost_access(vhost.name).check("write", "exchange", exchange_name)
        exchange = vhost.exchanges.get(exchange_name)
        if exchange is None:
            raise bad_request(f"404 NOT_FOUND - no exchange '{name}' in vhost '{vhost.name}'")
        if exchange.internal:
            raise bad_request(
                f"403 ACCESS_REFUSED - cannot publish to internal exchange '{name}'"
                f" in vhost '{vhost.name}'"
            )
        routing_key = body["routing_key"]
        if not isinstance(routing_key, str):
            raise bad_request(["not_string", "routing_key"])
        payload = _payload(body)
        header = content_header(body.get("properties", {}), len(payload))
        route = short_string(exchange_name) + short_string(routing_key)
        # A bad expiration, or a log that failed, raises an AMQPError: the server's error
        # middleware answers it (400, or 500 for the log).
        message = Message(exchange_name, routing_key, route, header, payload)
        if "user_id" in message.properties and message.properties["user_id"] != who.name:
            raise bad_request(
                f"user_id property set to '{message.properties['user_id']}' but"
                f" authenticated user was '{who.name}'"
            )
        counters = self.context.broker.counters
        counters.published += 1
        routed, _, refused = vhost.publish(exchange, message)
        if routed:
            counters.routed += 1
        else:
            counters.unroutable_dropped += 1
        return respond({"routed": bool(routed) and not refused})

    async def get(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        vhost = vhost_of(request, self.context)
        name = request.match_info["name"]
        require(body, "count", "ackmode", "encoding")
        mode = body["ackmode"]
        if mode not in ACK_MODES:
            raise bad_request(["unknown_ackmode", mode])  # RabbitMQ answers 500 here
        count = _integer(body["count"], "count", 0, MAX_GET)
        encoding = body["encoding"]
        if encoding not in ("auto", "base64"):
            raise bad_request("Unsupported encoding. Please use auto or base64.")
        truncate = body.get("truncate")
        if truncate is not None:
            truncate = _integer(truncate, "truncate", 0, 2**31)
        caller(request).vhost_access(vhost.name).check("read", "queue", name)
        try:
            queue = vhost.get_queue(name, None)
        except AMQPError as error:
            reason = f"{REPLY_NAMES.get(error.code, error.code)} - {error.text}"
            status = 404 if error.code == NOT_FOUND else 400
            raise ApiError(
                status, "not_found" if status == 404 else "bad_request", reason
            ) from None
        taken: list[QueuedMessage] = []
        found: list[dict[str, Any]] = []
        size = 0
        while (
            len(taken) < count
            and size < MAX_GET_BYTES
            and (entry := queue.get(ack_required=True)) is not None
        ):
            taken.append(entry)
            # What the answer holds: the body (cut to `truncate`) and the decoded properties,
            # whose bytes a header can make as large as a body.
            shown = min(entry.message.body_size, truncate if truncate is not None else 1 << 62)
            size += shown + 3 * len(entry.message.header)  # a bad byte prints as U+FFFD
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


def _integer(value: Any, key: str, low: int, high: int) -> int:
    """rabbitmqadmin sends numbers as strings."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(["not_int", key])
    return value


def _payload(body: dict[str, Any]) -> bytes:
    payload = body["payload"]
    if payload is None:
        payload = ""
    if not isinstance(payload, str):
        raise bad_request(["not_string", "payload"])
    encoding = body["payload_encoding"]
    if encoding == "string":
        return payload.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise bad_request(["not_base64", payload]) from None
    raise bad_request(["unsupported_encoding", encoding])


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
            continue  # RabbitMQ ignores what is not a property
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
                raise bad_request(["not_int", name])
            return bytes([value])
        if kind == "timestamp":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad_request(["not_int", name])
            return struct.pack(">Q", value)
        if not isinstance(value, dict):
            raise bad_request(["not_table", name])
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
