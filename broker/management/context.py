"""What the management API's handlers share: the broker (through a narrow view), the node name,
the rate sampler, and the request helpers every handler needs (the caller, a vhost from the
path, a JSON body, a listing shaped by the query string)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from broker.management.access import NO_VHOST_ACCESS, Caller
from broker.management.errors import (
    ApiError,
    bad_request,
    key_missing,
    not_found,
    refused,
    vhost_not_found,
)
from broker.management.rates import RateSampler
from broker.management.rows import Row, json_ready
from broker.patterns import BoundedPattern, PatternError, PatternTooSlow

if TYPE_CHECKING:
    from broker.amqp.connection import AMQPConnection
    from broker.auth import Authenticator
    from broker.config import BrokerConfig
    from broker.core.persistence import MessageStore
    from broker.core.stats import Counters
    from broker.core.vhost import VirtualHost
    from broker.policies import Policies

MAX_JSON_BODY = 1024 * 1024  # a declare, publish or policy; definitions take MAX_BODY
FILTER_BUDGET = 0.25  # seconds one listing's regex name filter may take in all
MAX_NAME_BYTES = 255  # an AMQP short string: longer names could not be used by clients


class ManagedBroker(Protocol):
    """The part of the broker the management API uses."""

    config: BrokerConfig
    vhosts: dict[str, VirtualHost]
    vhost_metadata: dict[str, dict[str, Any]]  # name -> description and tags
    auth: Authenticator
    connections: set[AMQPConnection]
    counters: Counters
    policies: Policies
    store: MessageStore

    def add_vhost(self, name: str, description: str = "", tags: tuple[str, ...] = ()) -> bool: ...

    def runtime_batch(self) -> AbstractContextManager[None]: ...

    def delete_vhost(self, name: str) -> bool: ...

    def accounted_bytes(self) -> int: ...

    def listening_ports(self) -> set[int]: ...

    @property
    def port(self) -> int: ...

    @property
    def tls_port(self) -> int: ...

    @property
    def memory_alarm(self) -> bool: ...


@dataclass
class Context:
    broker: ManagedBroker
    node: str
    rates: RateSampler


CALLER = web.RequestKey("caller", Caller)  # set by the server's authentication middleware


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def vhost_of(request: web.Request, context: Context, writing: bool = False) -> VirtualHost:
    """The vhost named in the path. A missing one is 404 (RabbitMQ's `vhost_not_found` for a
    write); one the caller has no permissions in is 401."""
    name = request.match_info["vhost"]
    vhost = context.broker.vhosts.get(name)
    if vhost is None:
        raise vhost_not_found() if writing else not_found()
    if not caller(request).may_see_vhost(name):
        raise refused(NO_VHOST_ACCESS)
    return vhost


def name_of(request: web.Request, kind: str, key: str = "name") -> str:
    """An object's name from the path, at most 255 bytes (RabbitMQ's wording)."""
    name = request.match_info[key]
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise bad_request(f"{kind} should be less than 255 bytes, actually was {size}\n")
    return name


async def json_body(request: web.Request, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    """The request's JSON object; 400 with RabbitMQ's wording when it is not one, 413 when it
    is larger than a request of its kind needs (parsing is work on the broker's loop)."""
    raw = await request.read()  # at most the app's client_max_size
    if len(raw) > limit:
        raise ApiError(413, "bad_request", f"request body larger than {limit} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past Python's stack
        raise bad_request("not_json") from None
    if not isinstance(body, dict):
        raise bad_request("not_json")
    return body


def require(body: dict[str, Any], *keys: str) -> None:
    """RabbitMQ names every missing key: [{key_missing,a},{key_missing,b}]."""
    missing = [key for key in keys if key not in body]
    if missing:
        raise key_missing(*missing)


def boolean(body: dict[str, Any], key: str, default: bool) -> bool:
    """A flag from a JSON body; rabbitmqadmin sends them as "true"/"false" strings."""
    value = body.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise bad_request(["not_boolean", value])
    return value


def respond(document: Any, status: int = 200) -> web.Response:
    body = to_json(document)
    # "replace": a lone surrogate a client sent in a JSON string must not fail the answer.
    return web.Response(
        status=status, body=body.encode("utf-8", "replace"), content_type="application/json"
    )


def to_json(document: Any) -> str:
    """Strict JSON, UTF-8 as is (RabbitMQ does the same; escapes would make text up to six
    times larger). The fast path is json's own encoder, with client values it cannot write
    (bytes, decimals, timestamps) as text; a document it refuses (NaN or infinity, a table
    nested past its stack, keys that are not strings) goes through `json_ready` first, whose
    walk of every value cost 0.5 s of the loop for a listing of 10,000 queues."""
    try:
        return json.dumps(
            document,
            allow_nan=False,
            separators=(",", ":"),
            ensure_ascii=False,
            default=_as_text,
        )
    except (ValueError, TypeError, RecursionError):
        return json.dumps(
            json_ready(document), allow_nan=False, separators=(",", ":"), ensure_ascii=False
        )


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def no_content(status: int = 204) -> web.Response:
    return web.Response(status=status)


def listing(request: web.Request, rows: Iterable[Row]) -> web.Response:
    """A listing shaped by RabbitMQ's query parameters: `name` (with `use_regex`), `sort`,
    `sort_reverse`, `page`/`page_size` (which wrap the rows in a page object) and `columns`
    (dotted paths into nested objects, as rabbitmqadmin asks for `queue_totals.messages`)."""
    query = request.query
    items = list(rows)
    total = len(items)
    wanted = query.get("name")
    if wanted:
        if query.get("use_regex", "false").lower() == "true":
            items = _regex_filter(items, wanted)
        else:
            items = [row for row in items if wanted in str(row.get("name", ""))]
    sort = query.get("sort")
    if sort:
        items.sort(key=lambda row: _sort_key(_dig(row, sort)))
    if query.get("sort_reverse", "false").lower() == "true":
        items.reverse()
    columns = [column for column in query.get("columns", "").split(",") if column]
    if columns:
        items = [_columns(row, columns) for row in items]
    if "page" not in query:
        return respond(items)
    page, size = _page_numbers(query)
    page_count = max(1, -(-len(items) // size))
    if page > page_count:
        raise bad_request("Pagination parameters are invalid")
    return respond(
        {
            "filtered_count": len(items),
            "item_count": len(items[(page - 1) * size : page * size]),
            "items": items[(page - 1) * size : page * size],
            "page": page,
            "page_count": page_count,
            "page_size": size,
            "total_count": total,
        }
    )


def _regex_filter(items: list[Row], wanted: str) -> list[Row]:
    """Rows whose name the pattern finds; each match and the whole filter have a time budget,
    so no pattern and no number of names can hold the loop."""
    try:
        pattern = BoundedPattern(wanted)
    except PatternError as error:
        raise bad_request(f"invalid regular expression in name: {error}") from None
    deadline = time.monotonic() + FILTER_BUDGET
    kept = []
    try:
        for row in items:
            if pattern.search(str(row.get("name", ""))):
                kept.append(row)
            if time.monotonic() > deadline:
                raise PatternTooSlow(wanted)
    except PatternTooSlow:
        raise bad_request("the name filter took too long to match; simplify it") from None
    return kept


def one(request: web.Request, row: Row) -> web.Response:
    """One object, with only the `columns` asked for when the query names some."""
    columns = [column for column in request.query.get("columns", "").split(",") if column]
    return respond(_columns(row, columns) if columns else row)


def _page_numbers(query: Any) -> tuple[int, int]:
    try:
        page, size = int(query.get("page", "1")), int(query.get("page_size", "100"))
    except ValueError:
        raise bad_request("Pagination parameters are invalid") from None
    if page < 1 or not 1 <= size <= 500:
        raise bad_request("Pagination parameters are invalid")
    return page, size


def _dig(row: Row, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool | int | float):
        return (0, value)
    return (1, "" if value is None else str(value))


def _columns(row: Row, columns: list[str]) -> Row:
    picked: Row = {}
    for column in columns:
        parts = column.split(".")
        value = _dig(row, column)
        if value is None and not _has(row, parts):
            continue
        target = picked
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return picked


def _has(row: Row, parts: list[str]) -> bool:
    value: Any = row
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True
