"""The management HTTP API as RabbitMQ 3.10 serves it, tested as raw HTTP: reply shapes (field
names and JSON types), status codes, error bodies, authentication and user tags.

rabbitmqadmin, monitoring scripts and the web UI depend on these exact shapes, so what is asserted
here is what RabbitMQ 3.10.8 returns. In short: listings are JSON arrays of objects; a write
answers 201 when it created something and 204 when it changed or re-declared it, with an empty
body; errors are `{"error": ..., "reason": ...}` JSON; *every* refusal for lack of a tag or a
permission is 401 (never 403), with a reason naming what was missing; a vhost is one path segment,
percent-encoded ("/" is `%2F`). Counts and several queue/connection fields come from statistics
that lag (RabbitMQ emits them every `collect_statistics_interval`): a test that needs them polls.

Set `WARREN_MANAGEMENT_LOG=/some/file.jsonl` to have every request and reply appended there, one
JSON object per line: that is how the reference bodies for the implementer were collected.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingConnection

from tests.compat.helpers import message_count, pump, wait_until
from tests.compat.management import Management, Reply, vhost_path

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")

# --- what the objects look like -------------------------------------------------------------------
# A shape maps a field to its JSON type: a Python type, a tuple of them, or a nested shape (a dict
# that must itself hold those fields). `int` never accepts a bool. NUMBER is a JSON number (rates
# are floats on RabbitMQ, but 0 may come as an integer). Only required fields are listed: a broker
# may return more.

Shape = Mapping[str, Any]
NUMBER = (int, float)
OPT_STR = (str, type(None))
RATE: Shape = {"rate": NUMBER}

OVERVIEW: Shape = {
    "management_version": str,
    "rabbitmq_version": str,
    "product_name": str,
    "product_version": str,
    "erlang_version": str,
    "cluster_name": str,
    "node": str,
    "rates_mode": str,
    "disable_stats": bool,
    "enable_queue_totals": bool,
    "statistics_db_event_queue": int,
    "sample_retention_policies": dict,
    "exchange_types": list,
    "churn_rates": dict,
    "listeners": list,
    "contexts": list,
    "object_totals": {
        "connections": int,
        "channels": int,
        "exchanges": int,
        "queues": int,
        "consumers": int,
    },
    "queue_totals": {
        "messages": int,
        "messages_ready": int,
        "messages_unacknowledged": int,
        "messages_details": RATE,
        "messages_ready_details": RATE,
        "messages_unacknowledged_details": RATE,
    },
    "message_stats": {"publish": int, "publish_details": RATE},
}
LISTENER: Shape = {"node": str, "protocol": str, "ip_address": str, "port": int}
EXCHANGE_TYPE: Shape = {"name": str, "description": str, "enabled": bool}

# A queue as listed once its statistics have arrived (before that, RabbitMQ lists only name,
# vhost, durable, auto_delete, exclusive, arguments, node and type).
QUEUE: Shape = {
    "name": str,
    "vhost": str,
    "durable": bool,
    "auto_delete": bool,
    "exclusive": bool,
    "arguments": dict,
    "node": str,
    "type": str,
    "state": str,
    "messages": int,
    "messages_ready": int,
    "messages_unacknowledged": int,
    "messages_details": RATE,
    "messages_ready_details": RATE,
    "messages_unacknowledged_details": RATE,
    "consumers": int,
    "consumer_capacity": NUMBER,
    "consumer_utilisation": NUMBER,
    "policy": OPT_STR,
    "operator_policy": OPT_STR,
    "effective_policy_definition": dict,
    "exclusive_consumer_tag": OPT_STR,
    "single_active_consumer_tag": OPT_STR,
    "head_message_timestamp": (int, type(None)),
    "memory": int,
    "message_bytes": int,
    "message_bytes_ready": int,
    "message_bytes_unacknowledged": int,
    "message_bytes_persistent": int,
    "messages_persistent": int,
}
QUEUE_DETAIL: Shape = {**QUEUE, "consumer_details": list, "deliveries": list, "incoming": list}

EXCHANGE: Shape = {
    "name": str,
    "vhost": str,
    "type": str,
    "durable": bool,
    "auto_delete": bool,
    "internal": bool,
    "arguments": dict,
    "user_who_performed_action": str,
}
EXCHANGE_DETAIL: Shape = {**EXCHANGE, "incoming": list, "outgoing": list}

BINDING: Shape = {
    "source": str,
    "vhost": str,
    "destination": str,
    "destination_type": str,
    "routing_key": str,
    "arguments": dict,
    "properties_key": str,
}

CONNECTION: Shape = {
    "name": str,
    "node": str,
    "protocol": str,
    "type": str,
    "state": str,
    "connected_at": int,
    "host": str,
    "port": int,
    "peer_host": str,
    "peer_port": int,
    "user": str,
    "user_who_performed_action": str,
    "vhost": str,
    "auth_mechanism": str,
    "channels": int,
    "channel_max": int,
    "frame_max": int,
    "timeout": int,
    "client_properties": dict,
    "ssl": bool,
    "ssl_protocol": OPT_STR,
    "ssl_key_exchange": OPT_STR,
    "ssl_cipher": OPT_STR,
    "ssl_hash": OPT_STR,
    "peer_cert_subject": OPT_STR,
    "peer_cert_issuer": OPT_STR,
    "peer_cert_validity": OPT_STR,
    "recv_oct": int,
    "recv_cnt": int,
    "send_oct": int,
    "send_cnt": int,
    "send_pend": int,
    "recv_oct_details": RATE,
    "send_oct_details": RATE,
}
CONNECTION_DETAILS: Shape = {"name": str, "peer_host": str, "peer_port": int}

CHANNEL: Shape = {
    "name": str,
    "node": str,
    "number": int,
    "user": str,
    "user_who_performed_action": str,
    "vhost": str,
    "state": str,
    "connection_details": CONNECTION_DETAILS,
    "consumer_count": int,
    "prefetch_count": int,
    "global_prefetch_count": int,
    "confirm": bool,
    "transactional": bool,
    "messages_unacknowledged": int,
    "messages_unconfirmed": int,
    "messages_uncommitted": int,
    "acks_uncommitted": int,
}
CHANNEL_DETAIL: Shape = {**CHANNEL, "consumer_details": list, "deliveries": list, "publishes": list}

CONSUMER: Shape = {
    "consumer_tag": str,
    "queue": {"name": str, "vhost": str},
    "channel_details": {
        "name": str,
        "number": int,
        "connection_name": str,
        "peer_host": str,
        "peer_port": int,
        "user": str,
        "node": str,
    },
    "ack_required": bool,
    "prefetch_count": int,
    "exclusive": bool,
    "arguments": dict,
    "active": bool,
    "activity_status": str,
}

VHOST: Shape = {
    "name": str,
    "description": str,
    "tags": list,
    "metadata": {"description": str, "tags": list},
    "tracing": bool,
    "cluster_state": dict,
    "default_queue_type": str,
}
VHOST_STATS: Shape = {
    "messages": int,
    "messages_ready": int,
    "messages_unacknowledged": int,
    "messages_details": RATE,
}
USER: Shape = {
    "name": str,
    "tags": list,
    "password_hash": str,
    "hashing_algorithm": str,
    "limits": dict,
}
WHOAMI: Shape = {"name": str, "tags": list}
PERMISSION: Shape = {"user": str, "vhost": str, "configure": str, "write": str, "read": str}
POLICY: Shape = {
    "vhost": str,
    "name": str,
    "pattern": str,
    "apply-to": str,
    "definition": dict,
    "priority": int,
}
NODE: Shape = {
    "name": str,
    "type": str,
    "running": bool,
    "uptime": int,
    "mem_used": int,
    "mem_limit": int,
    "mem_alarm": bool,
    "disk_free": int,
    "disk_free_limit": int,
    "disk_free_alarm": bool,
    "fd_used": int,
    "fd_total": int,
    "sockets_used": int,
    "sockets_total": int,
    "proc_used": int,
    "proc_total": int,
    "partitions": list,
}

DEFINITIONS: Shape = {
    "rabbit_version": str,
    "rabbitmq_version": str,
    "product_name": str,
    "product_version": str,
    "users": list,
    "vhosts": list,
    "permissions": list,
    "topic_permissions": list,
    "parameters": list,
    "global_parameters": list,
    "policies": list,
    "queues": list,
    "exchanges": list,
    "bindings": list,
}
VHOST_DEFINITIONS: Shape = {
    "rabbit_version": str,
    "parameters": list,
    "policies": list,
    "queues": list,
    "exchanges": list,
    "bindings": list,
}

# --- the error bodies -----------------------------------------------------------------------------

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}
LOGIN_FAILED = {"error": "not_authorized", "reason": "Login failed"}  # "z", unlike the others
REALM = 'Basic realm="RabbitMQ Management"'


def refused(reason: str) -> dict[str, str]:
    return {"error": "not_authorised", "reason": reason}


def bad_request(reason: Any) -> dict[str, Any]:
    return {"error": "bad_request", "reason": reason}


NOT_MANAGEMENT = refused("Not management user")
NOT_MONITOR = refused("Not monitor user")
NOT_ADMINISTRATOR = refused("Not administrator user")
NO_VHOST_ACCESS = refused("User not authorised to access virtual host")
NO_OBJECT_ACCESS = refused("User not authorised to access object")
ACCESS_REFUSED = refused("Access refused.")  # an amq.* name or the default exchange

# --- helpers --------------------------------------------------------------------------------------


def _kind_ok(value: Any, kind: Any) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def assert_shape(obj: Any, shape: Shape, what: str) -> None:
    """`obj` is a JSON object holding every field of `shape`, each of the listed JSON type."""
    assert isinstance(obj, dict), f"{what} is {type(obj).__name__}, not an object: {obj!r:.500}"
    missing = sorted(set(shape) - set(obj))
    assert not missing, f"{what} lacks {missing}; it has {sorted(obj)}"
    for key, kind in shape.items():
        if isinstance(kind, Mapping):
            assert_shape(obj[key], kind, f"{what}.{key}")
        else:
            assert _kind_ok(obj[key], kind), (
                f"{what}.{key} is {type(obj[key]).__name__} {obj[key]!r:.200}, expected {kind}"
            )


def find(items: Any, **match: Any) -> dict[str, Any]:
    """The one object of a listing whose fields have the given values."""
    assert isinstance(items, list), f"expected a JSON array, got {items!r:.500}"
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} objects match {match} in {items!r:.1500}"
    return found[0]


def poll(fetch: Callable[[], T], ready: Callable[[T], bool], what: str, timeout: float = 10.0) -> T:
    """Fetch until `ready` holds (listing statistics lag); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {value!r:.1500}")
        time.sleep(0.2)


def header(reply: Reply, name: str) -> str | None:
    """A reply header, whatever the case of its name."""
    for key, value in reply.headers.items():
        if key.lower() == name.lower():
            return value
    return None


def is_json(reply: Reply) -> bool:
    return (header(reply, "content-type") or "").startswith("application/json")


def ok(reply: Reply) -> Any:
    """The body of a 200 JSON reply."""
    assert reply.status == 200, f"{reply.status} {reply.body!r:.500}"
    assert is_json(reply), reply.headers
    return reply.body


def expect(reply: Reply, status: int, body: Any) -> None:
    """Exactly this status and body (JSON-typed when there is one)."""
    assert (reply.status, reply.body) == (status, body)
    if body is not None:
        assert is_json(reply), reply.headers


def q(*names: str) -> str:
    """Path segments, each percent-encoded the way rabbitmqadmin does it."""
    return "/".join(vhost_path(n) for n in names)


def messages_in(connection: BlockingConnection, queue: str) -> int:
    channel = connection.channel()
    try:
        return message_count(channel, queue)
    finally:
        channel.close()


# --- fixtures -------------------------------------------------------------------------------------


class RecordingManagement(Management):
    """`Management` that appends every exchange to $WARREN_MANAGEMENT_LOG when that is set."""

    def as_user(self, user: str, password: str) -> RecordingManagement:
        return RecordingManagement(self.base, user, password)

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        reply = super().request(method, path, body, **kwargs)
        log = os.environ.get("WARREN_MANAGEMENT_LOG")
        if log:
            raw = kwargs.get("raw")
            entry = {
                "test": os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0],
                "user": self.user if kwargs.get("auth", True) else None,
                "method": method,
                "path": path,
                "sent": raw.decode("utf-8", "replace") if raw is not None else body,
                "sent_headers": kwargs.get("headers"),
                "status": reply.status,
                "headers": reply.headers,
                "body": reply.body,
            }
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        return reply


@pytest.fixture(scope="module")
def api(management_url: str) -> RecordingManagement:
    """The management API as its administrator (the user of WARREN_TEST_MANAGEMENT)."""
    return RecordingManagement(management_url)


class Trash:
    """Paths of what a test created through the API, DELETEd (newest first) afterwards."""

    def __init__(self, api: Management) -> None:
        self.api = api
        self.paths: list[str] = []

    def add(self, path: str) -> str:
        self.paths.append(path)
        return path

    def run(self) -> None:
        for path in reversed(self.paths):
            self.api.delete(path)


@pytest.fixture
def trash(api: Management) -> Iterator[Trash]:
    cleanup = Trash(api)
    yield cleanup
    cleanup.run()


@dataclass
class Users:
    """Makes users with tags (and full permissions on one vhost), removed by `trash`."""

    api: RecordingManagement
    trash: Trash
    prefix: str
    made: int = 0

    def make(self, tags: str, vhost: str | None = None) -> RecordingManagement:
        self.made += 1
        user, password = f"{self.prefix}-u{self.made}", f"pw-{self.prefix}-{self.made}"
        reply = self.api.put(
            self.trash.add(f"/api/users/{q(user)}"), {"password": password, "tags": tags}
        )
        assert reply.status == 201, reply
        if vhost is not None:
            grant = {"configure": ".*", "write": ".*", "read": ".*"}
            reply = self.api.put(f"/api/permissions/{q(vhost, user)}", grant)
            assert reply.status == 201, reply
        return self.api.as_user(user, password)


@pytest.fixture
def users(api: RecordingManagement, trash: Trash, name: str) -> Users:
    return Users(api, trash, name)


def make_vhost(api: Management, trash: Trash, vhost: str) -> str:
    """Create `vhost` (removed afterwards); returns its path segment."""
    path = vhost_path(vhost)
    reply = api.put(trash.add(f"/api/vhosts/{path}"), {})
    assert (reply.status, reply.body) == (201, None)
    return path


@dataclass
class World:
    """Objects made over AMQP whose statistics have reached the listings.

    `queue` (non-durable, x-max-length 100) holds 2 ready messages and is bound to the topic
    `exchange` with "a.#" + arguments {"k": "v"}, "b c~d" and ""; `exchange` is bound to the fanout
    `exchange2` with "e2e". `consumed` is an exclusive queue with one consumer (`tag`, prefetch 7,
    manual ack, x-priority 3) holding 1 unacknowledged message. The connection, named
    `connection_name` by the client, has 2 channels: 1 declares and publishes (confirm
    mode), 2 consumes.
    """

    queue: str
    exchange: str
    exchange2: str
    consumed: str
    tag: str
    connection_name: str
    user: str
    amqp_port: int
    connection: BlockingConnection


def objects_at(api: Management, path: str) -> list[dict[str, Any]]:
    """A listing's objects ([] while the endpoint answers anything but a JSON array)."""
    body = api.get(path).body
    return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []


def _named_connections(api: Management, client_name: str) -> list[dict[str, Any]]:
    return [
        c
        for c in objects_at(api, "/api/connections")
        if isinstance(c.get("client_properties"), dict)
        and c["client_properties"].get("connection_name") == client_name
    ]


def _world_pending(api: Management, world: World) -> list[str]:
    """What the listings do not show yet of the world (empty when they show it all)."""
    pending = []
    queue = api.get(f"/api/queues/%2F/{q(world.queue)}").body
    queue = queue if isinstance(queue, dict) else {}
    if queue.get("messages") != 2 or "message_stats" not in queue:
        pending.append("queue: messages 2 and message_stats")
    consumed = api.get(f"/api/queues/%2F/{q(world.consumed)}").body
    consumed = consumed if isinstance(consumed, dict) else {}
    if (consumed.get("consumers"), consumed.get("messages_unacknowledged")) != (1, 1):
        pending.append("consumed queue: consumers 1, messages_unacknowledged 1")
    connections = _named_connections(api, world.connection_name)
    if len(connections) != 1 or connections[0].get("channels") != 2:
        pending.append("connection with channels 2")
    else:
        channels = objects_at(api, f"/api/connections/{q(connections[0]['name'])}/channels")
        counts = sorted((c.get("prefetch_count"), c.get("consumer_count")) for c in channels)
        if counts != [(0, 0), (7, 1)]:
            pending.append("channels: (prefetch_count, consumer_count) (0, 0) and (7, 1)")
    if not [c for c in objects_at(api, "/api/consumers") if c.get("consumer_tag") == world.tag]:
        pending.append("consumer")
    overview = api.get("/api/overview").body
    overview = overview if isinstance(overview, dict) else {}
    if "messages" not in (overview.get("queue_totals") or {}):
        pending.append("overview queue_totals.messages")
    if "publish" not in (overview.get("message_stats") or {}):
        pending.append("overview message_stats.publish")
    return pending


@pytest.fixture(scope="module")
def world(api: RecordingManagement, amqp_url: str) -> Iterator[World]:
    base = f"mgmt-{os.urandom(6).hex()}"
    params = pika.URLParameters(amqp_url)
    params.client_properties = {"connection_name": f"{base}-conn"}
    connection = pika.BlockingConnection(params)
    world = World(
        queue=f"{base}-q",
        exchange=f"{base}-x",
        exchange2=f"{base}-x2",
        consumed=f"{base}-c",
        tag=f"{base}-tag",
        connection_name=f"{base}-conn",
        user=params.credentials.username,
        amqp_port=params.port,
        connection=connection,
    )
    try:
        channel = connection.channel()
        channel.queue_declare(world.queue, arguments={"x-max-length": 100})
        channel.exchange_declare(world.exchange, "topic")
        channel.exchange_declare(world.exchange2, "fanout")
        channel.queue_bind(world.queue, world.exchange, "a.#", arguments={"k": "v"})
        channel.queue_bind(world.queue, world.exchange, "b c~d")
        channel.queue_bind(world.queue, world.exchange, "")
        channel.exchange_bind(world.exchange2, world.exchange, "e2e")
        channel.queue_declare(world.consumed, exclusive=True)
        channel.confirm_delivery()
        channel.basic_publish(world.exchange, "a.1", b"one", mandatory=True)
        channel.basic_publish("", world.queue, b"two", mandatory=True)
        channel.basic_publish("", world.consumed, b"unacked", mandatory=True)
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=7)
        consumer.basic_consume(
            world.consumed, lambda *_: None, consumer_tag=world.tag, arguments={"x-priority": 3}
        )
        poll(lambda: _world_pending(api, world), lambda p: not p, "the world's statistics")
        yield world
    finally:
        for path in (
            f"/api/queues/%2F/{q(world.queue)}",
            f"/api/exchanges/%2F/{q(world.exchange)}",
            f"/api/exchanges/%2F/{q(world.exchange2)}",
        ):
            api.delete(path)
        if connection.is_open:
            connection.close()


def _connection(api: Management, client_name: str) -> dict[str, Any]:
    """The listed connection that its client named `client_name` (waiting for it to show)."""
    found = poll(
        lambda: _named_connections(api, client_name),
        lambda found: len(found) == 1,
        f"connection {client_name}",
    )
    return found[0]


# --- shapes: overview, queues, exchanges, bindings ------------------------------------------------


def test_overview_shape(api: Management, world: World, management_url: str) -> None:
    """/api/overview: what `rabbitmqadmin show overview` and dashboards read (versions, cluster
    and node names, object and queue totals, message stats, listeners, exchange types)."""
    reply = api.get("/api/overview")
    body = ok(reply)
    assert_shape(body, OVERVIEW, "overview")
    assert re.fullmatch(r"\d+\.\d+\.\d+", body["rabbitmq_version"]), body["rabbitmq_version"]
    assert body["management_version"] == body["rabbitmq_version"]
    totals = body["object_totals"]
    assert totals["connections"] >= 1 and totals["channels"] >= 2, totals
    assert totals["queues"] >= 2 and totals["consumers"] >= 1 and totals["exchanges"] >= 8, totals
    for listener in body["listeners"]:
        assert_shape(listener, LISTENER, "listener")
    ports = {(item["protocol"], item["port"]) for item in body["listeners"]}
    assert ("amqp", world.amqp_port) in ports, ports
    assert ("http", urllib.parse.urlsplit(management_url).port) in ports, ports
    for kind in body["exchange_types"]:
        assert_shape(kind, EXCHANGE_TYPE, "exchange type")
    assert {"direct", "fanout", "topic", "headers"} <= {k["name"] for k in body["exchange_types"]}
    node_names = {n["name"] for n in ok(api.get("/api/nodes"))}
    assert body["node"] in node_names


def test_queue_shapes(api: Management, world: World) -> None:
    """/api/queues, /api/queues/{vhost} and /api/queues/{vhost}/{name}: the declared properties,
    counts (ready/unacked/consumers) and policy fields; the single view adds consumer_details,
    deliveries and incoming."""
    listed = find(ok(api.get("/api/queues")), name=world.queue, vhost="/")
    assert_shape(listed, QUEUE, "queue")
    expected = {
        "name": world.queue,
        "vhost": "/",
        "durable": False,
        "auto_delete": False,
        "exclusive": False,
        "arguments": {"x-max-length": 100},
        "type": "classic",
        "state": "running",
        "messages": 2,
        "messages_ready": 2,
        "messages_unacknowledged": 0,
        "consumers": 0,
        "policy": None,
        "operator_policy": None,
        "effective_policy_definition": {},
        "exclusive_consumer_tag": None,
        "single_active_consumer_tag": None,
    }
    assert {k: listed[k] for k in expected} == expected
    assert listed["node"] == ok(api.get("/api/overview"))["node"]
    assert listed["message_stats"]["publish"] == 2
    assert_shape(listed["message_stats"], {"publish": int, "publish_details": RATE}, "stats")

    in_vhost = find(ok(api.get("/api/queues/%2F")), name=world.queue)
    assert {k: in_vhost[k] for k in expected} == expected

    single = ok(api.get(f"/api/queues/%2F/{q(world.queue)}"))
    assert_shape(single, QUEUE_DETAIL, "queue detail")
    assert {k: single[k] for k in expected} == expected
    assert single["consumer_details"] == []

    consumed = ok(api.get(f"/api/queues/%2F/{q(world.consumed)}"))
    assert_shape(consumed, QUEUE_DETAIL, "consumed queue detail")
    assert (consumed["exclusive"], consumed["consumers"]) == (True, 1)
    assert (consumed["messages"], consumed["messages_ready"]) == (1, 0)
    assert consumed["messages_unacknowledged"] == 1
    (detail,) = consumed["consumer_details"]
    assert_shape(detail, CONSUMER, "consumer_details[0]")
    assert (detail["consumer_tag"], detail["queue"]) == (
        world.tag,
        {"name": world.consumed, "vhost": "/"},
    )
    owner = consumed["owner_pid_details"]  # exclusive queues name their owning connection
    assert_shape(owner, CONNECTION_DETAILS, "owner_pid_details")
    assert owner["name"] == detail["channel_details"]["connection_name"]


def test_queue_policy_fields(api: Management, trash: Trash, name: str) -> None:
    """A policy that matches a queue shows in its `policy` and `effective_policy_definition`, and in
    /api/policies, /api/policies/{vhost} and /api/policies/{vhost}/{name}; an unset apply-to is
    "all", an unset priority 0."""
    queue, policy = f"{name}-q", f"{name}-pol"
    assert api.put(trash.add(f"/api/queues/%2F/{q(queue)}"), {}).status == 201
    body = {"pattern": f"^{re.escape(queue)}$", "definition": {"max-length": 3}}
    expect(api.put(trash.add(f"/api/policies/%2F/{q(policy)}"), body), 201, None)
    expect(api.put(f"/api/policies/%2F/{q(policy)}", body), 204, None)
    listed = poll(
        lambda: api.get(f"/api/queues/%2F/{q(queue)}").body,
        lambda b: isinstance(b, dict) and b.get("policy") == policy,
        "the policy to show on the queue",
    )
    assert listed["effective_policy_definition"] == {"max-length": 3}
    expected = {
        "vhost": "/",
        "name": policy,
        "pattern": f"^{re.escape(queue)}$",
        "apply-to": "all",
        "definition": {"max-length": 3},
        "priority": 0,
    }
    assert_shape(find(ok(api.get("/api/policies")), name=policy), POLICY, "policy")
    assert find(ok(api.get("/api/policies")), name=policy) == expected
    assert find(ok(api.get("/api/policies/%2F")), name=policy) == expected
    assert ok(api.get(f"/api/policies/%2F/{q(policy)}")) == expected
    expect(api.delete(f"/api/policies/%2F/{q(policy)}"), 204, None)
    expect(api.delete(f"/api/policies/%2F/{q(policy)}"), 404, NOT_FOUND)
    expect(api.get(f"/api/policies/%2F/{q(policy)}"), 404, NOT_FOUND)


def test_policy_validation_errors(api: Management, trash: Trash, name: str) -> None:
    """A policy needs a definition; apply-to must be queues, exchanges or all."""
    path = trash.add(f"/api/policies/%2F/{q(name)}")
    pattern = f"^{re.escape(name)}$"
    expect(api.put(path, {"pattern": pattern}), 400, bad_request("[{key_missing,definition}]"))
    reply = api.put(path, {"pattern": pattern, "definition": {"max-length": 1}, "apply-to": "x"})
    expected = (
        "Validation failed\n\napply-to 'x' unrecognised; should be 'queues', 'exchanges' or 'all'\n"
    )
    expect(reply, 400, bad_request(expected))
    reply = api.put(path, {"pattern": pattern, "definition": {"max-length": "x"}})
    assert reply.status == 400 and reply.body["error"] == "bad_request", reply
    assert reply.body["reason"].startswith("Validation failed\n\n"), reply.body
    expect(api.get(path), 404, NOT_FOUND)


def test_exchange_shapes(api: Management, world: World) -> None:
    """/api/exchanges lists the default exchange (name "") and the amq.* ones of every vhost;
    the single view (the default exchange is `amq.default` in a path) adds incoming/outgoing."""
    listing = ok(api.get("/api/exchanges"))
    for item in listing:
        assert_shape(item, EXCHANGE, f"exchange {item.get('name')!r}")
    root = {x["name"]: x for x in listing if x["vhost"] == "/"}
    standard = {
        "": "direct",
        "amq.direct": "direct",
        "amq.fanout": "fanout",
        "amq.topic": "topic",
        "amq.headers": "headers",
        "amq.match": "headers",
    }
    for exchange, kind in standard.items():
        fields = ("type", "durable", "auto_delete", "internal", "arguments")
        assert {k: root[exchange][k] for k in fields} == {
            "type": kind,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }, exchange
    mine = root[world.exchange]
    assert {k: mine[k] for k in EXCHANGE} == {
        "name": world.exchange,
        "vhost": "/",
        "type": "topic",
        "durable": False,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
        "user_who_performed_action": world.user,
    }
    assert find(ok(api.get("/api/exchanges/%2F")), name=world.exchange) == mine
    single = ok(api.get(f"/api/exchanges/%2F/{q(world.exchange)}"))
    assert_shape(single, EXCHANGE_DETAIL, "exchange detail")
    assert {k: single[k] for k in EXCHANGE} == {k: mine[k] for k in EXCHANGE}
    default = ok(api.get("/api/exchanges/%2F/amq.default"))
    assert_shape(default, EXCHANGE_DETAIL, "default exchange")
    assert (default["name"], default["type"]) == ("", "direct")


def test_binding_shapes_and_properties_key(api: Management, world: World) -> None:
    """/api/bindings lists the implicit default-exchange binding of every queue (routing key = the
    queue name) with the declared ones. properties_key is the routing key URL-quoted the
    quote_plus way (space -> "+", "#" -> "%23", "~" -> "%7E"), "~" for an empty key, and
    key + "~" + a short base64url hash when the binding has arguments."""
    q_name, x = world.queue, world.exchange
    mine = [b for b in ok(api.get("/api/bindings")) if b["destination"] == q_name]
    for binding in mine:
        assert_shape(binding, BINDING, "binding")
    by_key = {b["routing_key"]: b for b in mine if b["source"] == x}
    assert sorted(by_key) == ["", "a.#", "b c~d"]
    default = find(mine, source="")
    assert default == {
        "source": "",
        "vhost": "/",
        "destination": q_name,
        "destination_type": "queue",
        "routing_key": q_name,
        "arguments": {},
        "properties_key": q_name,
    }
    assert by_key["b c~d"] == {
        "source": x,
        "vhost": "/",
        "destination": q_name,
        "destination_type": "queue",
        "routing_key": "b c~d",
        "arguments": {},
        "properties_key": "b+c%7Ed",
    }
    assert by_key[""]["properties_key"] == "~"
    assert by_key["a.#"]["arguments"] == {"k": "v"}
    assert re.fullmatch(r"a\.%23~[A-Za-z0-9_-]{6}", by_key["a.#"]["properties_key"]), by_key
    assert sorted(mine, key=json.dumps) == sorted(
        [b for b in ok(api.get("/api/bindings/%2F")) if b["destination"] == q_name],
        key=json.dumps,
    )


def test_binding_listings_per_object(api: Management, world: World) -> None:
    """A queue's bindings include the default-exchange one; an exchange's `bindings/source` and
    `bindings/destination` list what it routes to and what routes to it (destination_type
    "exchange" for exchange-to-exchange); /api/bindings/{vhost}/e/{x}/q/{q} and .../{props} list
    and fetch bindings between two objects."""
    q_name, x, x2 = world.queue, world.exchange, world.exchange2
    of_queue = ok(api.get(f"/api/queues/%2F/{q(q_name)}/bindings"))
    assert sorted((b["source"], b["routing_key"]) for b in of_queue) == [
        ("", q_name),
        (x, ""),
        (x, "a.#"),
        (x, "b c~d"),
    ]
    source = ok(api.get(f"/api/exchanges/%2F/{q(x)}/bindings/source"))
    for binding in source:
        assert_shape(binding, BINDING, "binding")
    assert sorted((b["destination_type"], b["destination"], b["routing_key"]) for b in source) == [
        ("exchange", x2, "e2e"),
        ("queue", q_name, ""),
        ("queue", q_name, "a.#"),
        ("queue", q_name, "b c~d"),
    ]
    assert ok(api.get(f"/api/exchanges/%2F/{q(x)}/bindings/destination")) == []
    to_x2 = ok(api.get(f"/api/exchanges/%2F/{q(x2)}/bindings/destination"))
    assert to_x2 == [
        {
            "source": x,
            "vhost": "/",
            "destination": x2,
            "destination_type": "exchange",
            "routing_key": "e2e",
            "arguments": {},
            "properties_key": "e2e",
        }
    ]
    assert ok(api.get(f"/api/bindings/%2F/e/{q(x)}/e/{q(x2)}")) == to_x2
    between = ok(api.get(f"/api/bindings/%2F/e/{q(x)}/q/{q(q_name)}"))
    assert sorted(b["routing_key"] for b in between) == ["", "a.#", "b c~d"]
    for binding in between:
        one = ok(
            api.get(f"/api/bindings/%2F/e/{q(x)}/q/{q(q_name)}/{q(binding['properties_key'])}")
        )
        assert one == binding
    missing = f"/api/bindings/%2F/e/{q(x)}/q/{q(q_name)}/no-such-key"
    expect(api.get(missing), 404, NOT_FOUND)


# --- shapes: connections, channels, consumers -----------------------------------------------------


def test_connection_shapes(api: Management, world: World) -> None:
    """/api/connections, /api/connections/{name} and /api/vhosts/{vhost}/connections: a connection
    is named "PEER_HOST:PEER_PORT -> HOST:PORT", speaks "AMQP 0-9-1", carries the client's
    properties (and its connection_name as user_provided_name) and counts its channels."""
    conn = _connection(api, world.connection_name)
    assert_shape(conn, CONNECTION, "connection")
    assert (
        conn["name"] == f"{conn['peer_host']}:{conn['peer_port']} -> {conn['host']}:{conn['port']}"
    )
    expected = {
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "state": "running",
        "user": world.user,
        "vhost": "/",
        "auth_mechanism": "PLAIN",
        "channels": 2,
        "port": world.amqp_port,
        "ssl": False,
        "user_provided_name": world.connection_name,
    }
    assert {k: conn.get(k) for k in expected} == expected
    assert abs(conn["connected_at"] / 1000 - time.time()) < 600, "connected_at is in milliseconds"
    properties = conn["client_properties"]
    assert properties["product"] == "Pika Python Client Library"
    assert properties["capabilities"]["publisher_confirms"] is True
    single = ok(api.get(f"/api/connections/{q(conn['name'])}"))
    assert_shape(single, CONNECTION, "connection detail")
    assert {k: single[k] for k in ("name", "peer_port", "client_properties", "protocol")} == {
        k: conn[k] for k in ("name", "peer_port", "client_properties", "protocol")
    }
    assert find(ok(api.get("/api/vhosts/%2F/connections")), name=conn["name"])["user"] == world.user
    expect(api.get(f"/api/connections/{q(conn['name'] + 'x')}"), 404, NOT_FOUND)


def test_channel_shapes(api: Management, world: World) -> None:
    """/api/channels, /api/connections/{name}/channels and /api/channels/{name}: a channel is
    named "CONNECTION (NUMBER)" and shows its prefetch, consumers and unacked messages."""
    conn = _connection(api, world.connection_name)
    listed = [
        c for c in ok(api.get("/api/channels")) if c["connection_details"]["name"] == conn["name"]
    ]
    assert sorted(c["number"] for c in listed) == [1, 2]
    for channel in listed:
        assert_shape(channel, CHANNEL, "channel")
        assert channel["name"] == f"{conn['name']} ({channel['number']})"
        assert channel["connection_details"] == {
            "name": conn["name"],
            "peer_host": conn["peer_host"],
            "peer_port": conn["peer_port"],
        }
        assert (channel["user"], channel["vhost"], channel["state"]) == (world.user, "/", "running")
    consuming = find(listed, number=2)
    assert (consuming["prefetch_count"], consuming["consumer_count"]) == (7, 1)
    assert consuming["messages_unacknowledged"] == 1
    assert (consuming["confirm"], consuming["transactional"]) == (False, False)
    publishing = find(listed, number=1)
    assert (publishing["confirm"], publishing["consumer_count"]) == (True, 0)
    of_connection = ok(api.get(f"/api/connections/{q(conn['name'])}/channels"))
    assert sorted(c["name"] for c in of_connection) == sorted(c["name"] for c in listed)
    single = ok(api.get(f"/api/channels/{q(consuming['name'])}"))
    assert_shape(single, CHANNEL_DETAIL, "channel detail")
    (detail,) = single["consumer_details"]
    assert detail["consumer_tag"] == world.tag
    expect(api.get(f"/api/channels/{q(conn['name'] + ' (99)')}"), 404, NOT_FOUND)


def test_consumer_shapes(api: Management, world: World) -> None:
    """/api/consumers and /api/consumers/{vhost}: tag, queue {name, vhost}, the channel's details,
    ack_required (manual ack), prefetch_count, exclusive, arguments, active."""
    consumer = find(ok(api.get("/api/consumers")), consumer_tag=world.tag)
    assert_shape(consumer, CONSUMER, "consumer")
    conn = _connection(api, world.connection_name)
    assert consumer["channel_details"] == {
        "name": f"{conn['name']} (2)",
        "number": 2,
        "connection_name": conn["name"],
        "peer_host": conn["peer_host"],
        "peer_port": conn["peer_port"],
        "user": world.user,
        "node": conn["node"],
    }
    expected = {
        "consumer_tag": world.tag,
        "queue": {"name": world.consumed, "vhost": "/"},
        "ack_required": True,
        "prefetch_count": 7,
        "exclusive": False,
        "arguments": {"x-priority": 3},
        "active": True,
        "activity_status": "up",
    }
    assert {k: consumer[k] for k in expected} == expected
    assert find(ok(api.get("/api/consumers/%2F")), consumer_tag=world.tag) == consumer


# --- shapes: vhosts, users, permissions, nodes, health --------------------------------------------


def test_vhost_user_and_permission_shapes(api: Management, world: World) -> None:
    """/api/vhosts, /api/users (tags is a JSON list in 3.10, not a comma string), /api/whoami,
    /api/permissions and their per-object forms."""
    root = find(ok(api.get("/api/vhosts")), name="/")
    assert_shape(root, {**VHOST, **VHOST_STATS}, "vhost /")
    assert root["metadata"] == {"description": root["description"], "tags": root["tags"]}
    single = ok(api.get("/api/vhosts/%2F"))
    assert_shape(single, VHOST, "vhost / detail")

    admin = api.user
    user = find(ok(api.get("/api/users")), name=admin)
    assert_shape(user, USER, "user")
    assert "administrator" in user["tags"]
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert ok(api.get(f"/api/users/{q(admin)}")) == user
    whoami = ok(api.get("/api/whoami"))
    assert_shape(whoami, WHOAMI, "whoami")
    assert whoami == {"name": admin, "tags": user["tags"]}

    permission = find(ok(api.get("/api/permissions")), user=admin, vhost="/")
    assert_shape(permission, PERMISSION, "permission")
    assert ok(api.get(f"/api/permissions/%2F/{q(admin)}")) == permission
    assert find(ok(api.get(f"/api/users/{q(admin)}/permissions")), vhost="/") == permission
    assert find(ok(api.get("/api/vhosts/%2F/permissions")), user=admin) == permission


def test_nodes_and_health_checks(api: Management, world: World) -> None:
    """/api/nodes (rabbitmqadmin lists name, type, mem_used), /api/nodes/{name}, the aliveness
    test and the health checks all answer {"status": "ok"}."""
    nodes = ok(api.get("/api/nodes"))
    assert nodes
    for node in nodes:
        assert_shape(node, NODE, "node")
    name = ok(api.get("/api/overview"))["node"]
    assert_shape(ok(api.get(f"/api/nodes/{q(name)}")), NODE, "node detail")
    expect(api.get("/api/aliveness-test/%2F"), 200, {"status": "ok"})
    expect(api.get("/api/healthchecks/node"), 200, {"status": "ok"})
    expect(api.get("/api/health/checks/alarms"), 200, {"status": "ok"})
    expect(api.get("/api/health/checks/local-alarms"), 200, {"status": "ok"})
    expect(api.get("/api/health/checks/virtual-hosts"), 200, {"status": "ok"})
    expect(
        api.get(f"/api/health/checks/port-listener/{world.amqp_port}"),
        200,
        {"status": "ok", "port": world.amqp_port},
    )
    expect(
        api.get("/api/health/checks/protocol-listener/amqp"),
        200,
        {"status": "ok", "protocol": "amqp"},
    )


def test_columns_sort_and_pagination(api: Management, trash: Trash, name: str) -> None:
    """rabbitmqadmin asks for `columns=` and `sort=`; the web UI pages with `page`/`page_size`
    (then the reply is an object wrapping `items`); `name=` filters a paged listing."""
    vhost = f"{name}-pages"
    path = make_vhost(api, trash, vhost)
    queues = [f"{name}-a", f"{name}-b", f"{name}-c"]
    for queue in queues:
        assert api.put(f"/api/queues/{path}/{q(queue)}", {"durable": True}).status == 201
    listing = ok(api.get(f"/api/queues/{path}?columns=name,durable&sort=name"))
    assert listing == [{"name": n, "durable": True} for n in queues]
    listing = ok(api.get(f"/api/queues/{path}?columns=name&sort=name&sort_reverse=true"))
    assert listing == [{"name": n} for n in reversed(queues)]
    page = ok(api.get(f"/api/queues/{path}?page=1&page_size=2&sort=name&columns=name"))
    assert page == {
        "filtered_count": 3,
        "item_count": 2,
        "items": [{"name": queues[0]}, {"name": queues[1]}],
        "page": 1,
        "page_count": 2,
        "page_size": 2,
        "total_count": 3,
    }
    page = ok(api.get(f"/api/queues/{path}?page=2&page_size=2&sort=name&columns=name"))
    assert (page["items"], page["item_count"], page["page"]) == ([{"name": queues[2]}], 1, 2)
    page = ok(api.get(f"/api/queues/{path}?page=1&name={name}-b&columns=name"))
    assert (page["items"], page["filtered_count"], page["total_count"]) == (
        [{"name": queues[1]}],
        1,
        3,
    )
    expect(
        api.get(f"/api/queues/{path}?page=x"),
        400,
        bad_request("Pagination parameters are invalid"),
    )


# --- writes: queues, exchanges, bindings ----------------------------------------------------------


def test_put_queue_created_redeclared_and_inequivalent(
    api: Management, trash: Trash, name: str
) -> None:
    """PUT a queue: 201 when created, 204 when an equivalent one exists, 400 with AMQP's
    inequivalent-arg text when durable, auto_delete or an argument differs."""
    path = trash.add(f"/api/queues/%2F/{q(name)}")
    body = {"durable": True, "auto_delete": False, "arguments": {"x-max-length": 10}}
    expect(api.put(path, body), 201, None)
    expect(api.put(path, body), 204, None)
    prefix = f"inequivalent arg '{{}}' for queue '{name}' in vhost '/': "
    cases = [
        ({**body, "durable": False}, "durable", "received 'false' but current is 'true'"),
        ({}, "durable", "received 'false' but current is 'true'"),  # durable defaults to false
        ({**body, "auto_delete": True}, "auto_delete", "received 'true' but current is 'false'"),
        (
            {**body, "arguments": {"x-max-length": 20}},
            "x-max-length",
            "received '20' but current is '10'",
        ),
        (
            {**body, "arguments": {}},
            "x-max-length",
            "received none but current is the value '10' of type 'long'",
        ),
        (
            {**body, "arguments": {"x-max-length": 10, "x-max-priority": 5}},
            "x-max-priority",
            "received the value '5' of type 'long' but current is none",
        ),
    ]
    for sent, arg, detail in cases:
        expect(api.put(path, sent), 400, bad_request(prefix.format(arg) + detail))
    queue = ok(api.get(path))
    assert {k: queue[k] for k in ("durable", "auto_delete", "exclusive", "arguments")} == {
        "durable": True,
        "auto_delete": False,
        "exclusive": False,
        "arguments": {"x-max-length": 10},
    }


def test_put_queue_defaults(api: Management, trash: Trash, name: str) -> None:
    """An empty JSON object, or no body at all, declares a non-durable, non-auto-delete queue
    without arguments; an amq.* name is refused (401 "Access refused.")."""
    for suffix, raw in (("empty", b"{}"), ("nobody", b"")):
        path = trash.add(f"/api/queues/%2F/{q(name + '-' + suffix)}")
        expect(api.request("PUT", path, raw=raw), 201, None)
        queue = ok(api.get(path))
        assert {k: queue[k] for k in ("durable", "auto_delete", "exclusive", "arguments")} == {
            "durable": False,
            "auto_delete": False,
            "exclusive": False,
            "arguments": {},
        }
    reserved = trash.add(f"/api/queues/%2F/{q('amq.' + name)}")
    expect(api.put(reserved, {}), 401, ACCESS_REFUSED)


def test_delete_queue(
    api: Management, trash: Trash, name: str, connection: BlockingConnection
) -> None:
    """DELETE a queue: 204, then 404 Not Found; ?if-empty=true refuses a queue holding messages
    and ?if-unused=true one with consumers (400, naming the queue); DELETE .../contents purges."""
    path = trash.add(f"/api/queues/%2F/{q(name)}")
    expect(api.put(path, {}), 201, None)
    publish = {"properties": {}, "routing_key": name, "payload": "x", "payload_encoding": "string"}
    for _ in range(3):
        expect(api.post("/api/exchanges/%2F/amq.default/publish", publish), 200, {"routed": True})
    expect(
        api.delete(f"{path}?if-empty=true"),
        400,
        bad_request(f"queue '{name}' in vhost '/' not empty"),
    )
    channel = connection.channel()
    channel.basic_consume(name, lambda *_: None)
    expect(
        api.delete(f"{path}?if-unused=true"),
        400,
        bad_request(f"queue '{name}' in vhost '/' in use"),
    )
    channel.close()
    expect(api.delete(f"{path}/contents"), 204, None)
    wait_until(connection, lambda: messages_in(connection, name) == 0, what="the purge")
    expect(api.delete(f"{path}?if-empty=true&if-unused=true"), 204, None)
    expect(api.delete(path), 404, NOT_FOUND)
    expect(api.get(path), 404, NOT_FOUND)
    expect(api.delete(f"{path}/contents"), 404, NOT_FOUND)


def test_put_and_delete_exchange(api: Management, trash: Trash, name: str) -> None:
    """PUT an exchange: 201, 204 when equivalent, 400 on a different type or durability or an
    unknown type; no type means direct; amq.* names and the default exchange are refused (401
    "Access refused."); DELETE ?if-unused=true refuses an exchange with bindings."""
    path = trash.add(f"/api/exchanges/%2F/{q(name)}")
    body = {"type": "topic", "durable": False, "auto_delete": False, "internal": False}
    expect(api.put(path, {**body, "arguments": {"alternate-exchange": "ae"}}), 201, None)
    expect(api.put(path, {**body, "arguments": {"alternate-exchange": "ae"}}), 204, None)
    exchange = ok(api.get(path))
    assert {k: exchange[k] for k in EXCHANGE} == {
        "name": name,
        "vhost": "/",
        "type": "topic",
        "durable": False,
        "auto_delete": False,
        "internal": False,
        "arguments": {"alternate-exchange": "ae"},
        "user_who_performed_action": api.user,
    }
    prefix = f"inequivalent arg '{{}}' for exchange '{name}' in vhost '/': "
    expect(
        api.put(path, {**body, "type": "direct"}),
        400,
        bad_request(prefix.format("type") + "received 'direct' but current is 'topic'"),
    )
    expect(
        api.put(path, {**body, "durable": True}),
        400,
        bad_request(prefix.format("durable") + "received 'true' but current is 'false'"),
    )
    untyped = trash.add(f"/api/exchanges/%2F/{q(name + '-untyped')}")
    expect(api.put(untyped, {}), 201, None)
    assert ok(api.get(untyped))["type"] == "direct"
    bogus = trash.add(f"/api/exchanges/%2F/{q(name + '-bogus')}")
    kind = f"{name}-type"  # never a type name RabbitMQ has seen (an Erlang atom), or the text
    # is "invalid exchange type"
    expect(api.put(bogus, {"type": kind}), 400, bad_request(f"unknown exchange type '{kind}'"))
    expect(api.get(bogus), 404, NOT_FOUND)
    expect(api.put(f"/api/exchanges/%2F/{q('amq.' + name)}", body), 401, ACCESS_REFUSED)
    expect(api.put("/api/exchanges/%2F/amq.default", body), 401, ACCESS_REFUSED)
    expect(api.delete("/api/exchanges/%2F/amq.direct"), 401, ACCESS_REFUSED)
    expect(api.post(f"/api/bindings/%2F/e/{q(name)}/e/{q(name + '-untyped')}", {}), 201, None)
    in_use = bad_request(f"exchange '{name}' in vhost '/' in use")
    expect(api.delete(f"{path}?if-unused=true"), 400, in_use)
    expect(api.delete(path), 204, None)
    expect(api.delete(path), 404, NOT_FOUND)
    expect(api.get(path), 404, NOT_FOUND)


def test_post_and_delete_bindings(api: Management, trash: Trash, name: str) -> None:
    """POST /api/bindings/{vhost}/e/{x}/q/{q} (or /e/{x2}): 201, empty body, and a Location header
    *relative* to the request path: "DESTINATION/" + the properties_key percent-encoded again.
    Binding twice is not an error. DELETE .../{properties_key}: 204, then 404."""
    queue, x, x2 = f"{name}-q", f"{name}-x", f"{name}-x2"
    assert api.put(trash.add(f"/api/queues/%2F/{q(queue)}"), {}).status == 201
    assert api.put(trash.add(f"/api/exchanges/%2F/{q(x)}"), {"type": "topic"}).status == 201
    assert api.put(trash.add(f"/api/exchanges/%2F/{q(x2)}"), {"type": "fanout"}).status == 201
    to_queue = f"/api/bindings/%2F/e/{q(x)}/q/{q(queue)}"
    reply = api.post(to_queue, {"routing_key": "a b.#~", "arguments": {}})
    expect(reply, 201, None)
    assert header(reply, "location") == f"{queue}/a%2Bb.%2523%257E"
    reply = api.post(to_queue, {})
    expect(reply, 201, None)
    assert header(reply, "location") == f"{queue}/~"
    reply = api.post(to_queue, {"routing_key": "k", "arguments": {"z": 1}})
    expect(reply, 201, None)
    location = header(reply, "location") or ""
    assert re.fullmatch(rf"{re.escape(queue)}/k~[A-Za-z0-9_-]{{6}}", location), location
    again = api.post(to_queue, {"routing_key": "k", "arguments": {"z": 1}})
    expect(again, 201, None)
    assert header(again, "location") == location
    reply = api.post(f"/api/bindings/%2F/e/{q(x)}/e/{q(x2)}", {"routing_key": "r"})
    expect(reply, 201, None)
    assert header(reply, "location") == f"{x2}/r"

    listed = ok(api.get(to_queue))
    assert sorted((b["routing_key"], b["properties_key"]) for b in listed) == [
        ("", "~"),
        ("a b.#~", "a+b.%23%7E"),
        ("k", location.split("/", 1)[1]),
    ]
    missing = f"{name}-missing"
    expect(
        api.post(f"/api/bindings/%2F/e/{q(x)}/q/{q(missing)}", {}),
        404,
        {"error": "not_found", "reason": f"no queue '{missing}' in vhost '/'"},
    )
    expect(
        api.post(f"/api/bindings/%2F/e/{q(missing)}/q/{q(queue)}", {}),
        404,
        {"error": "not_found", "reason": f"no exchange '{missing}' in vhost '/'"},
    )
    expect(api.post(f"/api/bindings/%2F/e/amq.default/q/{q(queue)}", {}), 401, ACCESS_REFUSED)

    for binding in listed:
        one = f"{to_queue}/{q(binding['properties_key'])}"
        expect(api.delete(one), 204, None)
        expect(api.delete(one), 404, NOT_FOUND)
    expect(api.delete(f"/api/bindings/%2F/e/{q(x)}/e/{q(x2)}/r"), 204, None)
    assert ok(api.get(to_queue)) == []
    assert ok(api.get(f"/api/exchanges/%2F/{q(x)}/bindings/source")) == []


# --- writes: publish, get, close ------------------------------------------------------------------


def test_publish_reports_routed(api: Management, trash: Trash, name: str) -> None:
    """POST /api/exchanges/{vhost}/{x}/publish answers 200 {"routed": bool}; missing fields, a bad
    payload encoding or property, and an unknown exchange are 400 (the last with AMQP's text)."""
    x = f"{name}-x"
    assert api.put(trash.add(f"/api/queues/%2F/{q(name)}"), {}).status == 201
    assert api.put(trash.add(f"/api/exchanges/%2F/{q(x)}"), {"type": "direct"}).status == 201
    message = {"properties": {}, "routing_key": name, "payload": "hi", "payload_encoding": "string"}
    publish = "/api/exchanges/%2F/amq.default/publish"
    expect(api.post(publish, message), 200, {"routed": True})
    expect(api.post(f"/api/exchanges/%2F/{q(x)}/publish", message), 200, {"routed": False})
    no_encoding = {k: v for k, v in message.items() if k != "payload_encoding"}
    expect(api.post(publish, no_encoding), 400, bad_request("[{key_missing,payload_encoding}]"))
    expect(
        api.post(publish, {**message, "payload": "!!!", "payload_encoding": "base64"}),
        400,
        bad_request(["not_base64", "!!!"]),
    )
    expect(
        api.post(publish, {**message, "payload_encoding": "hex"}),
        400,
        bad_request(["unsupported_encoding", "hex"]),
    )
    expect(
        api.post(publish, {**message, "properties": {"delivery_mode": "x"}}),
        400,
        bad_request(["not_int", "delivery_mode"]),
    )
    missing = f"{name}-missing"
    expect(
        api.post(f"/api/exchanges/%2F/{q(missing)}/publish", message),
        400,
        bad_request(f"404 NOT_FOUND - no exchange '{missing}' in vhost '/'"),
    )


FULL_PROPERTIES = {
    "content_type": "text/plain",
    "content_encoding": "utf-8",
    "headers": {"s": "v", "n": 5, "f": 1.5, "b": True, "l": [1, "a"], "t": {"x": 1}},
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "c",
    "reply_to": "r",
    "expiration": "60000",
    "message_id": "m1",
    "timestamp": 1700000000,
    "type": "ty",
    "app_id": "ap",
}


def _fill(api: Management, connection: BlockingConnection, queue: str) -> None:
    """Three messages: text with every property (via HTTP), 4 binary bytes (base64 via HTTP),
    UTF-8 text "héllo" (6 bytes) published over AMQP with no properties."""
    publish = "/api/exchanges/%2F/amq.default/publish"
    properties = {**FULL_PROPERTIES, "user_id": api.user}
    message = {"routing_key": queue, "payload": "hello world", "payload_encoding": "string"}
    expect(api.post(publish, {**message, "properties": properties}), 200, {"routed": True})
    binary = base64.b64encode(b"\x00\x01\x02\xff").decode()
    message = {"routing_key": queue, "payload": binary, "payload_encoding": "base64"}
    expect(api.post(publish, {**message, "properties": {}}), 200, {"routed": True})
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("", queue, "héllo".encode(), mandatory=True)
    channel.close()


def test_get_messages_fields_and_ack_modes(
    api: Management, trash: Trash, name: str, connection: BlockingConnection
) -> None:
    """POST /api/queues/{vhost}/{q}/get returns a list of messages: payload, payload_bytes,
    payload_encoding, redelivered, exchange, routing_key, message_count (messages left after this
    one) and properties (an object, but an empty JSON *list* when the message has none).
    ack_requeue_true and reject_requeue_true put messages back (redelivered afterwards);
    ack_requeue_false and reject_requeue_false remove them."""
    path = trash.add(f"/api/queues/%2F/{q(name)}")
    assert api.put(path, {}).status == 201
    _fill(api, connection, name)
    get = f"{path}/get"
    first = ok(api.post(get, {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}))
    assert first == [
        {
            "payload": "hello world",
            "payload_bytes": 11,
            "payload_encoding": "string",
            "redelivered": False,
            "exchange": "",
            "routing_key": name,
            "message_count": 2,
            "properties": {**FULL_PROPERTIES, "user_id": api.user},
        }
    ]
    every = ok(api.post(get, {"count": 10, "ackmode": "ack_requeue_true", "encoding": "auto"}))
    assert [(m["payload"], m["payload_encoding"], m["payload_bytes"]) for m in every] == [
        ("hello world", "string", 11),
        ("AAEC/w==", "base64", 4),  # not valid UTF-8: "auto" falls back to base64
        ("héllo", "string", 6),
    ]
    assert [(m["redelivered"], m["message_count"]) for m in every] == [
        (True, 2),
        (False, 1),
        (False, 0),
    ]
    assert every[1]["properties"] == [] and every[2]["properties"] == []
    rejected = ok(
        api.post(get, {"count": 10, "ackmode": "reject_requeue_true", "encoding": "auto"})
    )
    assert [m["payload"] for m in rejected] == ["hello world", "AAEC/w==", "héllo"]
    assert all(m["redelivered"] for m in rejected)
    assert messages_in(connection, name) == 3
    taken = ok(api.post(get, {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}))
    assert [m["payload"] for m in taken] == ["hello world"]
    taken = ok(api.post(get, {"count": 1, "ackmode": "reject_requeue_false", "encoding": "auto"}))
    assert [(m["payload"], m["message_count"]) for m in taken] == [("AAEC/w==", 1)]
    assert messages_in(connection, name) == 1
    expect(api.post(get, {"count": 0, "ackmode": "ack_requeue_true", "encoding": "auto"}), 200, [])
    expect(api.delete(f"{path}/contents"), 204, None)
    wait_until(connection, lambda: messages_in(connection, name) == 0, what="the purge")
    expect(api.post(get, {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"}), 200, [])


def test_get_messages_encoding_and_truncate(
    api: Management, trash: Trash, name: str, connection: BlockingConnection
) -> None:
    """encoding base64 encodes every payload; truncate cuts the payload to that many *bytes* before
    "auto" decides (so a cut inside a UTF-8 sequence comes back base64) while payload_bytes stays
    the full size."""
    path = trash.add(f"/api/queues/%2F/{q(name)}")
    assert api.put(path, {}).status == 201
    _fill(api, connection, name)
    get = f"{path}/get"
    encoded = ok(api.post(get, {"count": 10, "ackmode": "ack_requeue_true", "encoding": "base64"}))
    assert [(m["payload"], m["payload_encoding"]) for m in encoded] == [
        (base64.b64encode(b"hello world").decode(), "base64"),
        ("AAEC/w==", "base64"),
        (base64.b64encode("héllo".encode()).decode(), "base64"),
    ]
    body = {"count": 10, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 2}
    cut = ok(api.post(get, body))
    assert [(m["payload"], m["payload_encoding"], m["payload_bytes"]) for m in cut] == [
        ("he", "string", 11),
        ("\x00\x01", "string", 4),  # the first two bytes are valid UTF-8
        (base64.b64encode(b"h\xc3").decode(), "base64", 6),  # half of "é"
    ]
    assert messages_in(connection, name) == 3


def test_get_messages_errors(api: Management, trash: Trash, name: str) -> None:
    """count, ackmode and encoding are required; encoding must be auto or base64; an unknown queue
    is 404 with AMQP's text."""
    path = trash.add(f"/api/queues/%2F/{q(name)}")
    assert api.put(path, {}).status == 201
    get = f"{path}/get"
    expect(
        api.post(get, {"count": 1, "encoding": "auto"}),
        400,
        bad_request("[{key_missing,ackmode}]"),
    )
    expect(
        api.post(get, {"ackmode": "ack_requeue_true", "encoding": "auto"}),
        400,
        bad_request("[{key_missing,count}]"),
    )
    expect(
        api.post(get, {"count": 1, "ackmode": "ack_requeue_true"}),
        400,
        bad_request("[{key_missing,encoding}]"),
    )
    expect(
        api.post(get, {"count": 1, "ackmode": "ack_requeue_true", "encoding": "hex"}),
        400,
        bad_request("Unsupported encoding. Please use auto or base64."),
    )
    missing = f"{name}-missing"
    expect(
        api.post(
            f"/api/queues/%2F/{q(missing)}/get",
            {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"},
        ),
        404,
        {"error": "not_found", "reason": f"NOT_FOUND - no queue '{missing}' in vhost '/'"},
    )


def test_close_connection_with_reason(api: Management, params: pika.URLParameters) -> None:
    """DELETE /api/connections/{name}: 204, and the client sees Connection.Close 320
    "CONNECTION_FORCED - <the X-Reason header>" ("... - Closed via management plugin" without
    one); the connection then leaves the listing."""
    base = f"mgmt-close-{os.urandom(6).hex()}"
    cases = {f"{base}-reason": "closed by the test", f"{base}-plain": None}
    connections: dict[str, BlockingConnection] = {}
    try:
        for client_name in cases:
            params.client_properties = {"connection_name": client_name}
            connections[client_name] = pika.BlockingConnection(params)
        for client_name, reason in cases.items():
            connection = connections[client_name]
            path = f"/api/connections/{q(_connection(api, client_name)['name'])}"
            headers = {"X-Reason": reason} if reason else None
            expect(api.delete(path, headers=headers), 204, None)
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
                pump(connection, 5.0)
            expected = f"CONNECTION_FORCED - {reason or 'Closed via management plugin'}"
            assert (closed.value.reply_code, closed.value.reply_text) == (320, expected)
            poll(lambda p=path: api.get(p).status, lambda s: s == 404, "the connection to go")
            expect(api.get(path), 404, NOT_FOUND)
            expect(api.delete(path), 404, NOT_FOUND)
    finally:
        for connection in connections.values():
            if connection.is_open:
                connection.close()


# --- vhosts that need percent-encoding ------------------------------------------------------------


def test_vhost_needing_percent_encoding(
    api: Management, trash: Trash, name: str, params: pika.URLParameters
) -> None:
    """A vhost "NAME-x/y z" is one path segment "NAME-x%2Fy%20z": PUT /api/vhosts/{vhost} (201,
    then 204) stores description and tags (a comma string in, a list out), grants its creator
    full permissions; queues, exchanges, bindings, publish and get work inside it; deleting it
    closes its AMQP connections (320 "CONNECTION_FORCED - vhost 'NAME' is deleted" or "... is
    down")."""
    vhost = f"{name}-x/y z"
    path = vhost_path(vhost)
    assert path == f"{name}-x%2Fy%20z"
    settings = {"description": "a test vhost", "tags": "a,b"}
    expect(api.put(trash.add(f"/api/vhosts/{path}"), settings), 201, None)
    expect(api.put(f"/api/vhosts/{path}", settings), 204, None)
    single = ok(api.get(f"/api/vhosts/{path}"))
    assert_shape(single, VHOST, "vhost")
    assert {k: single[k] for k in ("name", "description", "tags", "metadata", "tracing")} == {
        "name": vhost,
        "description": "a test vhost",
        "tags": ["a", "b"],
        "metadata": {"description": "a test vhost", "tags": ["a", "b"]},
        "tracing": False,
    }
    assert find(ok(api.get("/api/vhosts")), name=vhost)["tags"] == ["a", "b"]
    admin = api.user
    assert ok(api.get(f"/api/permissions/{path}/{q(admin)}")) == {
        "user": admin,
        "vhost": vhost,
        "configure": ".*",
        "write": ".*",
        "read": ".*",
    }

    queue = f"{name}-q"
    expect(api.put(f"/api/queues/{path}/{q(queue)}", {"durable": True}), 201, None)
    assert ok(api.get(f"/api/queues/{path}/{q(queue)}"))["vhost"] == vhost
    assert find(ok(api.get(f"/api/queues/{path}")), name=queue)["vhost"] == vhost
    exchanges = {x["name"] for x in ok(api.get(f"/api/exchanges/{path}"))}
    assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"} <= exchanges
    expect(
        api.post(f"/api/bindings/{path}/e/amq.direct/q/{q(queue)}", {"routing_key": "k"}), 201, None
    )
    bindings = ok(api.get(f"/api/bindings/{path}"))
    assert sorted((b["source"], b["routing_key"], b["vhost"]) for b in bindings) == [
        ("", queue, vhost),
        ("amq.direct", "k", vhost),
    ]
    message = {"properties": {}, "routing_key": "k", "payload": "v", "payload_encoding": "string"}
    expect(api.post(f"/api/exchanges/{path}/amq.direct/publish", message), 200, {"routed": True})
    got = ok(
        api.post(
            f"/api/queues/{path}/{q(queue)}/get",
            {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"},
        )
    )
    assert [(m["payload"], m["exchange"], m["routing_key"]) for m in got] == [
        ("v", "amq.direct", "k")
    ]
    expect(api.get(f"/api/aliveness-test/{path}"), 200, {"status": "ok"})

    params.virtual_host = vhost
    connection = pika.BlockingConnection(params)
    try:
        assert messages_in(connection, queue) == 1
        expect(api.delete(f"/api/vhosts/{path}"), 204, None)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            pump(connection, 5.0)
        # The text races the vhost's supervisor going down: "is deleted" or "is down".
        assert closed.value.reply_code == 320
        assert closed.value.reply_text in (
            f"CONNECTION_FORCED - vhost '{vhost}' is deleted",
            f"CONNECTION_FORCED - vhost '{vhost}' is down",
        )
    finally:
        if connection.is_open:
            connection.close()
    expect(api.get(f"/api/vhosts/{path}"), 404, NOT_FOUND)
    expect(api.get(f"/api/queues/{path}/{q(queue)}"), 404, NOT_FOUND)
    expect(api.delete(f"/api/vhosts/{path}"), 404, NOT_FOUND)


# --- authentication and user tags -----------------------------------------------------------------


def test_requests_without_valid_credentials_are_401(api: Management, name: str) -> None:
    """No credentials: 401 with an empty body; a wrong password or an unknown user: 401
    {"error": "not_authorized", "reason": "Login failed"}; both with a Basic challenge."""
    for path in ("/api/overview", "/api/queues", "/api/whoami"):
        reply = api.get(path, auth=False)
        assert (reply.status, reply.body) == (401, None)
        assert header(reply, "www-authenticate") == REALM
    for user, password in ((api.user, "wrong"), (f"{name}-nobody", "x")):
        reply = api.as_user(user, password).get("/api/overview")
        expect(reply, 401, LOGIN_FAILED)
        assert header(reply, "www-authenticate") == REALM


def test_user_without_tags_is_not_a_management_user(users: Users) -> None:
    """A user with no tags may use AMQP but not the API: 401 "Not management user"."""
    plain = users.make("", "/")
    expect(plain.get("/api/overview"), 401, NOT_MANAGEMENT)
    expect(plain.get("/api/whoami"), 401, NOT_MANAGEMENT)
    expect(plain.get("/api/queues"), 401, NOT_MANAGEMENT)


def test_monitoring_user(api: Management, world: World, users: Users, name: str) -> None:
    """`monitoring` sees every vhost, every connection and the nodes, but queues only of vhosts it
    has permissions on; it may not declare where it has no permission (401 "User not authorised
    to access virtual host") nor read users or definitions (401 "Not administrator user")."""
    monitor = users.make("monitoring")
    whoami = ok(monitor.get("/api/whoami"))
    assert whoami == {"name": monitor.user, "tags": ["monitoring"]}
    assert world.queue not in {x["name"] for x in ok(monitor.get("/api/queues"))}
    assert "/" in {v["name"] for v in ok(monitor.get("/api/vhosts"))}
    conn = _connection(api, world.connection_name)
    assert find(ok(monitor.get("/api/connections")), name=conn["name"])["user"] == world.user
    assert ok(monitor.get("/api/nodes"))
    assert ok(monitor.get("/api/overview"))["object_totals"]["queues"] >= 2
    target = f"/api/queues/%2F/{q(name + '-monitor')}"
    expect(monitor.put(target, {}), 401, NO_VHOST_ACCESS)
    expect(api.get(target), 404, NOT_FOUND)
    expect(monitor.get("/api/users"), 401, NOT_ADMINISTRATOR)
    expect(monitor.get("/api/definitions"), 401, NOT_ADMINISTRATOR)
    policy = {"pattern": f"^{re.escape(name)}$", "definition": {"max-length": 1}}
    expect(monitor.put(f"/api/policies/%2F/{q(name)}", policy), 401, NO_OBJECT_ACCESS)


def test_management_user_sees_only_permitted_vhosts(
    api: Management, world: World, users: Users, trash: Trash, name: str
) -> None:
    """`management` sees and acts only in vhosts it has permissions on, and only its own
    connections; other vhosts are 401 "User not authorised to access virtual host"; nodes are 401
    "Not monitor user"; vhosts, users, permissions 401 "Not administrator user"; policies 401
    "User not authorised to access object"."""
    vhost = f"{name}-mine"
    path = make_vhost(api, trash, vhost)
    assert api.put(f"/api/queues/{path}/{q(name + '-seen')}", {}).status == 201
    manager = users.make("management", vhost)
    assert [v["name"] for v in ok(manager.get("/api/vhosts"))] == [vhost]
    visible = ok(manager.get("/api/queues"))
    assert [(x["name"], x["vhost"]) for x in visible] == [(f"{name}-seen", vhost)]
    assert {x["vhost"] for x in ok(manager.get("/api/exchanges"))} == {vhost}
    expect(manager.get("/api/queues/%2F"), 401, NO_VHOST_ACCESS)
    expect(manager.get(f"/api/queues/%2F/{q(world.queue)}"), 401, NO_VHOST_ACCESS)
    expect(manager.put(f"/api/queues/%2F/{q(name + '-no')}", {}), 401, NO_VHOST_ACCESS)
    expect(manager.delete(f"/api/queues/%2F/{q(world.queue)}"), 401, NO_VHOST_ACCESS)
    expect(manager.put(f"/api/queues/{path}/{q(name + '-made')}", {}), 201, None)
    conn = _connection(api, world.connection_name)
    assert conn["name"] not in {c["name"] for c in ok(manager.get("/api/connections"))}
    assert ok(manager.get("/api/overview"))["management_version"]
    expect(manager.get("/api/nodes"), 401, NOT_MONITOR)
    expect(manager.get("/api/users"), 401, NOT_ADMINISTRATOR)
    expect(manager.get("/api/permissions"), 401, NOT_ADMINISTRATOR)
    expect(manager.put(f"/api/vhosts/{q(name + '-other')}", {}), 401, NOT_ADMINISTRATOR)
    expect(
        manager.put(f"/api/users/{q(name + '-other')}", {"password": "p", "tags": ""}),
        401,
        NOT_ADMINISTRATOR,
    )
    policy = {"pattern": f"^{re.escape(name)}-made$", "definition": {"max-length": 1}}
    expect(manager.put(f"/api/policies/{path}/{q(name)}", policy), 401, NO_OBJECT_ACCESS)


def test_policymaker_may_manage_policies(
    api: Management, users: Users, trash: Trash, name: str
) -> None:
    """`policymaker` may PUT and DELETE policies in vhosts it has permissions on (and nowhere
    else: 401 "User not authorised to access object"); it is no administrator."""
    vhost = f"{name}-policies"
    path = make_vhost(api, trash, vhost)
    maker = users.make("policymaker", vhost)
    policy = f"/api/policies/{path}/{q(name)}"
    body = {
        "pattern": f"^{re.escape(name)}-q$",
        "definition": {"max-length": 3},
        "apply-to": "queues",
        "priority": 1,
    }
    expect(maker.put(policy, body), 201, None)
    expect(maker.put(policy, body), 204, None)
    assert ok(maker.get(policy)) == {"vhost": vhost, "name": name, **body}
    expect(maker.put(f"/api/policies/%2F/{q(name)}", body), 401, NO_OBJECT_ACCESS)
    expect(maker.get("/api/users"), 401, NOT_ADMINISTRATOR)
    expect(maker.delete(policy), 204, None)
    expect(api.get(policy), 404, NOT_FOUND)


def test_administrator_manages_users_and_permissions(
    api: Management, users: Users, trash: Trash, name: str
) -> None:
    """An administrator creates users (tags as a comma string or a list; returned as a list;
    tags are required, the password is not), grants and revokes permissions, deletes users."""
    admin = users.make("administrator")
    user = f"{name}-made"
    path = trash.add(f"/api/users/{q(user)}")
    expect(admin.put(path, {"password": "secret", "tags": "monitoring,management"}), 201, None)
    expect(admin.put(path, {"password": "secret", "tags": "monitoring,management"}), 204, None)
    made = ok(admin.get(path))
    assert_shape(made, USER, "user")
    assert (made["name"], made["tags"], made["limits"]) == (user, ["monitoring", "management"], {})
    expect(admin.put(path, {"password": "secret", "tags": ["policymaker"]}), 204, None)
    assert ok(admin.get(path))["tags"] == ["policymaker"]
    assert ok(api.as_user(user, "secret").get("/api/whoami")) == {
        "name": user,
        "tags": ["policymaker"],
    }
    untagged = trash.add(f"/api/users/{q(name + '-untagged')}")
    expect(admin.put(untagged, {"password": "x"}), 400, bad_request("tags_not_present"))
    expect(admin.get(untagged), 404, NOT_FOUND)

    grant = f"/api/permissions/%2F/{q(user)}"
    rights = {"configure": "^$", "write": ".*", "read": ".*"}
    expect(admin.put(grant, rights), 201, None)
    expect(admin.put(grant, rights), 204, None)
    assert ok(admin.get(grant)) == {"user": user, "vhost": "/", **rights}
    assert ok(admin.get(f"/api/users/{q(user)}/permissions")) == [
        {"user": user, "vhost": "/", **rights}
    ]
    expect(
        admin.put(grant, {}),
        400,
        bad_request("[{key_missing,configure},{key_missing,write},{key_missing,read}]"),
    )
    missing = bad_request("vhost_or_user_not_found")
    expect(admin.put(f"/api/permissions/{q(name + '-novhost')}/{q(user)}", rights), 400, missing)
    expect(admin.put(f"/api/permissions/%2F/{q(name + '-nouser')}", rights), 400, missing)
    expect(admin.delete(grant), 204, None)
    expect(admin.delete(grant), 404, NOT_FOUND)
    expect(admin.get(grant), 404, NOT_FOUND)
    expect(admin.delete(path), 204, None)
    expect(admin.delete(path), 404, NOT_FOUND)
    expect(admin.get(path), 404, NOT_FOUND)
    expect(api.as_user(user, "secret").get("/api/whoami"), 401, LOGIN_FAILED)


# --- definitions ----------------------------------------------------------------------------------


def test_definitions_export_shape(api: Management, world: World) -> None:
    """GET /api/definitions: top-level keys and entries as `rabbitmqctl import_definitions` takes
    them; exclusive queues and default-exchange bindings are left out. GET
    /api/definitions/{vhost} drops the per-entry vhost (and users, vhosts, permissions)."""
    everything = ok(api.get("/api/definitions"))
    assert_shape(everything, DEFINITIONS, "definitions")
    assert find(everything["queues"], name=world.queue, vhost="/") == {
        "name": world.queue,
        "vhost": "/",
        "durable": False,
        "auto_delete": False,
        "arguments": {"x-max-length": 100},
    }
    assert world.consumed not in {x["name"] for x in everything["queues"]}
    assert find(everything["exchanges"], name=world.exchange, vhost="/") == {
        "name": world.exchange,
        "vhost": "/",
        "type": "topic",
        "durable": False,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }
    assert not [
        x for x in everything["exchanges"] if x["name"] == "" or x["name"].startswith("amq.")
    ]
    bindings = [b for b in everything["bindings"] if b["destination"] == world.queue]
    assert sorted(bindings, key=lambda b: b["routing_key"]) == [
        {
            "source": world.exchange,
            "vhost": "/",
            "destination": world.queue,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": arguments,
        }
        for key, arguments in (("", {}), ("a.#", {"k": "v"}), ("b c~d", {}))
    ]
    admin = api.user
    user = find(everything["users"], name=admin)
    assert_shape(
        user,
        {k: USER[k] for k in ("name", "password_hash", "hashing_algorithm", "tags", "limits")},
        "user",
    )
    assert "/" in {v["name"] for v in everything["vhosts"]}
    assert find(everything["permissions"], user=admin, vhost="/") == {
        "user": admin,
        "vhost": "/",
        "configure": ".*",
        "write": ".*",
        "read": ".*",
    }

    root = ok(api.get("/api/definitions/%2F"))
    assert_shape(root, VHOST_DEFINITIONS, "vhost definitions")
    assert find(root["queues"], name=world.queue) == {
        "name": world.queue,
        "durable": False,
        "auto_delete": False,
        "arguments": {"x-max-length": 100},
    }
    assert find(root["exchanges"], name=world.exchange)["type"] == "topic"
    assert not {"users", "vhosts", "permissions"} & set(root)
    missing = vhost_path(f"{world.queue}-novhost")
    expect(api.get(f"/api/definitions/{missing}"), 400, bad_request("vhost_not_found"))


def test_definitions_import(api: Management, trash: Trash, name: str) -> None:
    """POST /api/definitions (204) creates a vhost, user, permission, queue, exchange, binding and
    policy from one document; POST /api/definitions/{vhost} imports entries without a vhost."""
    vhost, user = f"{name}-defs", f"{name}-defs-user"
    trash.add(f"/api/users/{q(user)}")
    path = trash.add(f"/api/vhosts/{vhost_path(vhost)}")
    queue, exchange, policy = f"{name}-q", f"{name}-x", f"{name}-pol"
    document = {
        "vhosts": [{"name": vhost}],
        "users": [{"name": user, "password": "pw", "tags": "management"}],
        "permissions": [
            {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "queues": [
            {
                "name": queue,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-max-length": 9},
            }
        ],
        "exchanges": [
            {
                "name": exchange,
                "vhost": vhost,
                "type": "fanout",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "bindings": [
            {
                "source": exchange,
                "vhost": vhost,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": "rk",
                "arguments": {},
            }
        ],
        "policies": [
            {
                "vhost": vhost,
                "name": policy,
                "pattern": f"^{re.escape(queue)}$",
                "apply-to": "queues",
                "definition": {"max-length": 4},
                "priority": 0,
            }
        ],
    }
    expect(api.post("/api/definitions", document), 204, None)
    assert ok(api.get(path))["name"] == vhost
    assert ok(api.get(f"/api/users/{q(user)}"))["tags"] == ["management"]
    assert ok(api.as_user(user, "pw").get("/api/whoami"))["name"] == user
    assert ok(api.get(f"/api/permissions/{vhost_path(vhost)}/{q(user)}"))["read"] == ".*"
    exported = ok(api.get(f"/api/definitions/{vhost_path(vhost)}"))
    strip = [{k: v for k, v in e.items() if k != "vhost"} for e in document["queues"]]
    assert exported["queues"] == strip
    assert exported["exchanges"] == [
        {k: v for k, v in e.items() if k != "vhost"} for e in document["exchanges"]
    ]
    assert exported["bindings"] == [
        {k: v for k, v in e.items() if k != "vhost"} for e in document["bindings"]
    ]
    assert exported["policies"] == document["policies"]

    more = {
        "queues": [{"name": f"{queue}2", "durable": True, "auto_delete": False, "arguments": {}}]
    }
    expect(api.post(f"/api/definitions/{vhost_path(vhost)}", more), 204, None)
    assert ok(api.get(f"/api/queues/{vhost_path(vhost)}/{q(queue + '2')}"))["durable"] is True
    expect(api.post("/api/definitions", {}), 204, None)


def test_definitions_malformed(api: Management, name: str) -> None:
    """A body that is not a JSON object is 400 "failed_to_parse_json"; an entry naming a vhost
    that does not exist (or none) is 400 ["no_such_vhost", NAME-or-"undefined"]."""
    expect(
        api.request("POST", "/api/definitions", raw=b"{nope"),
        400,
        bad_request("failed_to_parse_json"),
    )
    expect(api.post("/api/definitions", [1]), 400, bad_request("failed_to_parse_json"))
    queue = {"name": f"{name}-q", "durable": True, "auto_delete": False, "arguments": {}}
    expect(
        api.post("/api/definitions", {"queues": [queue]}),
        400,
        bad_request(["no_such_vhost", "undefined"]),
    )
    missing = f"{name}-novhost"
    expect(
        api.post("/api/definitions", {"queues": [{**queue, "vhost": missing}]}),
        400,
        bad_request(["no_such_vhost", missing]),
    )
    expect(api.get(f"/api/queues/%2F/{q(queue['name'])}"), 404, NOT_FOUND)


# --- malformed requests ---------------------------------------------------------------------------


def test_malformed_bodies_are_400(api: Management, trash: Trash, name: str) -> None:
    """A body that is not a JSON object is 400 "not_json" (nothing is created); a wrongly typed
    field names the problem; an invalid queue argument gets AMQP's precondition text."""
    path = trash.add(f"/api/queues/%2F/{q(name)}")
    for raw in (b"not json{", b"[1, 2]"):
        expect(api.request("PUT", path, raw=raw), 400, bad_request("not_json"))
    expect(api.get(path), 404, NOT_FOUND)
    expect(api.put(path, {"durable": "yes"}), 400, bad_request(["not_boolean", "yes"]))
    expect(
        api.put(path, {"arguments": {"x-message-ttl": "abc"}}),
        400,
        bad_request(
            f"invalid arg 'x-message-ttl' for queue '{name}' in vhost '/': "
            '"expected integer, got longstr"'
        ),
    )
    expect(api.get(path), 404, NOT_FOUND)
    user = trash.add(f"/api/users/{q(name)}")
    expect(api.request("PUT", user, raw=b"{"), 400, bad_request("not_json"))
    vhost = trash.add(f"/api/vhosts/{q(name)}")
    expect(api.request("PUT", vhost, raw=b"{"), 400, bad_request("not_json"))
    expect(api.get(vhost), 404, NOT_FOUND)


def test_unknown_vhosts_and_paths_are_404(api: Management, name: str) -> None:
    """GET under an unknown vhost, of an unknown object or of a path the API does not have: 404
    {"error": "Object Not Found", "reason": "Not Found"}; declaring into an unknown vhost: 404
    {"error": "not_found", "reason": "vhost_not_found"}."""
    vhost = q(f"{name}-novhost")
    for path in (
        f"/api/queues/{vhost}",
        f"/api/queues/{vhost}/q",
        f"/api/exchanges/{vhost}",
        f"/api/exchanges/{vhost}/x",
        f"/api/bindings/{vhost}",
        f"/api/consumers/{vhost}",
        f"/api/vhosts/{vhost}",
        f"/api/policies/{vhost}",
        f"/api/aliveness-test/{vhost}",
        f"/api/queues/%2F/{q(name)}",
        f"/api/exchanges/%2F/{q(name)}",
        f"/api/users/{q(name)}",
        "/api/no-such-endpoint",
        "/api/overview/extra",
    ):
        expect(api.get(path), 404, NOT_FOUND)
    vhost_not_found = {"error": "not_found", "reason": "vhost_not_found"}
    expect(api.put(f"/api/queues/{vhost}/q", {}), 404, vhost_not_found)
    expect(api.put(f"/api/exchanges/{vhost}/x", {"type": "direct"}), 404, vhost_not_found)


def test_wrong_method_is_405(api: Management, name: str) -> None:
    """A method the resource does not have: 405, empty body, and an Allow header listing those
    it has."""
    cases = {
        ("POST", "/api/overview"): {"HEAD", "GET", "OPTIONS"},
        ("DELETE", "/api/overview"): {"HEAD", "GET", "OPTIONS"},
        ("PUT", "/api/queues"): {"HEAD", "GET", "OPTIONS"},
        ("POST", f"/api/queues/%2F/{q(name)}"): {"HEAD", "GET", "PUT", "DELETE", "OPTIONS"},
        ("PUT", f"/api/connections/{q(name)}"): {"HEAD", "GET", "DELETE", "OPTIONS"},
    }
    for (method, path), allowed in cases.items():
        reply = api.request(method, path, {} if method in ("POST", "PUT") else None)
        assert (reply.status, reply.body) == (405, None), (method, path, reply)
        allow = {m.strip() for m in (header(reply, "allow") or "").split(",")}
        assert allow == allowed, (method, path, allow)
    expect(api.get(f"/api/queues/%2F/{q(name)}"), 404, NOT_FOUND)
