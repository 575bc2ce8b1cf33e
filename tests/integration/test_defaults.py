"""Safe defaults (issue 7, finding 11): no permissions means no access, direct reply-to addresses
stay in their vhost, and the admin API renders any client properties a client can send."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import decimal
import json
import struct
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pamqp import commands, constants, encode

from broker.auth import hash_password
from broker.config import load_config
from broker.management.rows import MAX_JSON_DEPTH, TOO_DEEP
from broker.server import Broker
from tests.compat.rawamqp import RawAMQP, plain_response
from tests.support import free_port, shipped_config, write_config

PSEUDO = "amq.rabbitmq.reply-to"
ALL = {"configure": ".*", "write": ".*", "read": ".*"}


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """Vhosts '/' and 'b'; guest may use both; bob (a management user) is listed without
    permissions; carol has neither permissions nor tags."""
    config = shipped_config()
    config["vhosts"] = ["/", "b"]
    config["users"][0]["permissions"] = {"/": ALL, "b": ALL}
    config["users"].append(
        {"name": "bob", "password_hash": hash_password("bob-secret"), "tags": ["management"]}
    )
    config["users"].append({"name": "carol", "password_hash": hash_password("carol-secret")})
    loaded = load_config(write_config(tmp_path, config), environ={}).with_overrides(
        port=0, metrics_port=0, management_port=free_port()
    )
    async with Broker(dataclasses.replace(loaded, data_dir=None)) as running:
        yield running


def url(broker: Broker, vhost: str, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{broker.port}/{vhost.replace('/', '%2F')}"


def admin_get(broker: Broker, path: str, user: str, password: str) -> tuple[int, bytes]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.config.management.listener.port}{path}",
        headers={"Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, None, 10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def strict_json(body: bytes) -> Any:
    """JSON as a strict parser (a browser, jq) reads it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(body, parse_constant=refuse)


# ------------------------------------------------------------------------ (a) no permissions
async def test_user_without_permissions_opens_no_vhost_and_sees_nothing(broker: Broker) -> None:
    """A user listed without permissions gets nothing, as in RabbitMQ: Connection.Open of any
    vhost is refused with 530 and RabbitMQ's text, and the management API lists nothing to it
    (with the management tag; without one, the API refuses it with 401)."""

    def scenario() -> None:
        for vhost in ("/", "b"):
            with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as denied:
                pika.BlockingConnection(pika.URLParameters(url(broker, vhost, "bob", "bob-secret")))
            assert (
                f"(530) \"NOT_ALLOWED - access to vhost '{vhost}' refused for user 'bob'\""
                in str(denied.value)
            )
        guest = pika.BlockingConnection(pika.URLParameters(url(broker, "/")))
        try:
            guest.channel().queue_declare("guest-only", exclusive=True)
            status, body = admin_get(broker, "/api/exchanges", "guest", "guest")
            assert status == 200 and strict_json(body)  # guest sees its vhosts
            for path in ("queues", "exchanges", "bindings", "connections", "channels"):
                status, body = admin_get(broker, f"/api/{path}", "bob", "bob-secret")
                assert (status, strict_json(body)) == (200, []), f"/api/{path}"
            for path in ("queues", "exchanges", "bindings"):
                for vhost in ("%2F", "b"):
                    status, _ = admin_get(broker, f"/api/{path}/{vhost}", "bob", "bob-secret")
                    assert status == 401, f"/api/{path}/{vhost}"  # RabbitMQ's "not authorised"
            status, body = admin_get(broker, "/api/queues", "carol", "carol-secret")
            assert status == 401
            assert strict_json(body)["reason"] == "Not management user"
        finally:
            guest.close()

    await asyncio.to_thread(scenario)


# ------------------------------------------------------------------ (c) direct reply-to
async def test_direct_reply_to_address_does_not_cross_vhosts(broker: Broker) -> None:
    """A reply-to address names a channel in one vhost. Published to from another vhost it is
    an unknown queue there: returned NO_ROUTE when mandatory, dropped otherwise, and the
    requester receives nothing; from its own vhost it is delivered."""

    def scenario() -> None:
        requester = pika.BlockingConnection(pika.URLParameters(url(broker, "/")))
        other = pika.BlockingConnection(pika.URLParameters(url(broker, "b")))
        same = pika.BlockingConnection(pika.URLParameters(url(broker, "/")))
        try:
            channel = requester.channel()
            replies: list[bytes] = []
            channel.basic_consume(PSEUDO, lambda _c, _m, _p, body: replies.append(body), True)
            requests = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish("", requests, b"rpc", pika.BasicProperties(reply_to=PSEUDO))
            method, properties, _ = channel.basic_get(requests, auto_ack=True)
            assert method is not None
            address = properties.reply_to
            assert address.startswith(PSEUDO + ".")

            foreign = other.channel()
            foreign.confirm_delivery()
            with pytest.raises(pika.exceptions.UnroutableError) as returned:
                foreign.basic_publish("", address, b"from vhost b, mandatory", mandatory=True)
            assert [m.method.reply_text for m in returned.value.messages] == ["NO_ROUTE"]
            foreign.basic_publish("", address, b"from vhost b")  # confirmed, goes nowhere

            home = same.channel()
            home.confirm_delivery()
            home.basic_publish("", address, b"from vhost /")
            deadline = time.monotonic() + 5
            while not replies and time.monotonic() < deadline:
                requester.process_data_events(time_limit=0.1)
            requester.process_data_events(time_limit=0.3)  # anything else would be here now
            assert replies == [b"from vhost /"]
        finally:
            for connection in (requester, other, same):
                connection.close()

    await asyncio.to_thread(scenario)


# --------------------------------------------------------------- (d) admin client properties
def nested(depth: int) -> dict[str, Any]:
    """`depth` tables, each inside the previous one; the innermost holds the leaf."""
    table: dict[str, Any] = {"leaf": "bottom"}
    for _ in range(depth - 1):
        table = {"n": table}
    return table


def start_ok_with(properties: dict[str, Any], raw_bytes: bytes) -> bytes:
    """A PLAIN StartOk whose client properties also hold an 'x' (byte array) entry, which
    pamqp cannot encode but decodes."""
    table = encode.field_table(properties)
    extra = b"\x03raw" + b"x" + struct.pack(">I", len(raw_bytes)) + raw_bytes
    table = struct.pack(">I", len(table) - 4 + len(extra)) + table[4:] + extra
    response = plain_response("guest", "guest")
    return b"".join(
        [
            struct.pack(">I", commands.Connection.StartOk.index),
            table,
            encode.short_string("PLAIN"),
            struct.pack(">I", len(response)) + response,
            encode.short_string("en_US"),
        ]
    )


def connect_with(broker: Broker, properties: dict[str, Any], raw_bytes: bytes) -> RawAMQP:
    client = RawAMQP(broker.url)
    client.read_start()
    client.send_raw(constants.FRAME_METHOD, 0, start_ok_with(properties, raw_bytes))
    client.read_tune()
    client.tune_ok(heartbeat=0)
    client.open("/")
    client.expect(commands.Connection.OpenOk, channel=0)
    return client


def depth_of(value: Any) -> int:
    """How many tables are nested through their 'n' keys."""
    levels = 0
    while isinstance(value, dict):
        value, levels = value.get("n"), levels + 1
    return levels


async def test_admin_renders_deep_and_odd_client_properties(broker: Broker) -> None:
    """Client properties nested 90 tables deep (legal under the decoder's limit), with arrays,
    decimals, timestamps, byte arrays, NaN and infinity, come back from /api/connections as
    strict JSON, whole: no 500 and nothing a JSON parser refuses."""
    properties = {
        "product": "deep-client",
        "deep": nested(90),
        "array": [{"x": [1, 2]}, "s"],
        "price": decimal.Decimal("12.50"),
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "nan": float("nan"),
        "inf": float("-inf"),
        "none": None,
    }

    def scenario() -> None:
        client = connect_with(broker, properties, b"\xff\x00raw")
        try:
            status, body = admin_get(broker, "/api/connections", "guest", "guest")
            assert status == 200, body
            (row,) = strict_json(body)
            shown = row["client_properties"]
            assert shown["product"] == "deep-client"
            assert depth_of(shown["deep"]) == 90
            assert shown["array"] == [{"x": [1, 2]}, "s"]
            assert shown["price"] == "12.50"
            assert shown["when"] == "2026-01-02 03:04:05+00:00"
            assert (shown["nan"], shown["inf"], shown["none"]) == ("nan", "-inf", None)
            assert shown["raw"] == "\ufffd\x00raw"
        finally:
            client.close()

    await asyncio.to_thread(scenario)


async def test_admin_survives_properties_deeper_than_any_stack(broker: Broker) -> None:
    """Rendering does not recurse: whatever nesting reaches a connection's properties (here
    far deeper than the wire decoder or Python's stack allows), the API answers 200 and cuts
    the table at MAX_JSON_DEPTH levels."""

    def scenario() -> None:
        client = connect_with(broker, {"product": "x"}, b"")
        try:
            (connection,) = broker.connections
            connection.client_properties = {"deep": nested(5000)}
            status, body = admin_get(broker, "/api/connections", "guest", "guest")
            assert status == 200, body
            (row,) = strict_json(body)
            # list (1) > row (2) > client_properties (3) > 'deep' tables from level 4 on
            deep = row["client_properties"]["deep"]
            assert depth_of(deep) == MAX_JSON_DEPTH - 3
            for _ in range(MAX_JSON_DEPTH - 3):
                deep = deep["n"]
            assert deep == TOO_DEEP
        finally:
            client.close()

    await asyncio.to_thread(scenario)
