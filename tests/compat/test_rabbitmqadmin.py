"""The stock rabbitmqadmin (v1, as Debian ships it with rabbitmq-server 3.10) against the broker.

Operators drive RabbitMQ's management HTTP API through rabbitmqadmin: `list`, `show overview`,
`declare`/`delete`, `publish`/`get`, `purge`, `close connection`, `export`/`import`. The tool is
strict about what it gets back: it prints table/tsv/raw_json views of the JSON it receives
(flattening nested objects into `a.b` columns, promoting name-like columns), turns HTTP 400 into
`*** <reason>`, 401 into `*** Access refused: <path>` and 404 into `*** Not found: <path>` (exit
1), and crashes with a traceback on any other status >= 400. So every command is run here and its
printed output parsed, against what RabbitMQ 3.10 prints.

Listing statistics (message counts, connections, channels, consumers) lag behind the broker, so
they are polled with a deadline. Everything is named from the test's unique `name` and removed
afterwards: the same broker serves the whole compat session.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    expect_channel_close,
    message_count,
    publish_confirmed,
    wait_message_count,
)
from tests.compat.management import Management, vhost_path

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

POLL_TIMEOUT = 15.0
POLL_INTERVAL = 0.2
VERSION = re.compile(r"^\d+\.\d+\.\d+")
GET_COLUMNS = [
    "routing_key",
    "exchange",
    "message_count",
    "payload",
    "payload_bytes",
    "payload_encoding",
    "redelivered",
]


# --- running rabbitmqadmin and reading what it prints ---------------------------------------------


def admin(mgmt: Management, *args: str) -> str:
    """stdout of a rabbitmqadmin command that must succeed (exit 0, nothing on stderr)."""
    result = mgmt.rabbitmqadmin(*args)
    assert result.stderr == "", result.stderr
    return result.stdout


def admin_fails(mgmt: Management, *args: str) -> str:
    """stderr of a rabbitmqadmin command that must fail the way it reports HTTP errors: exit 1,
    nothing on stdout, one `*** ...` message (no traceback: that means an unexpected status)."""
    result = mgmt.rabbitmqadmin(*args, check=False)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("*** "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def raw_json(mgmt: Management, *args: str) -> Any:
    """`rabbitmqadmin -f raw_json ...`: the API's JSON body, printed as received."""
    return json.loads(admin(mgmt, "-f", "raw_json", *args))


def parse_table(text: str) -> list[dict[str, str]]:
    """The default (`-f table`) output: an ASCII table, header row first; [] for "No items"."""
    if text.strip() == "No items":
        return []
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines, f"no table in {text!r}"
    cells = [[cell.strip() for cell in line[1:-1].split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[1:]]


def table_header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("|"))
    return [cell.strip() for cell in line[1:-1].split("|")]


def parse_tsv(text: str) -> list[dict[str, str]]:
    """`-f tsv` output: a header line of column names, then one tab-separated line per row."""
    if text.strip() == "No items":
        return []
    header, *rows = text.rstrip("\n").split("\n")
    columns = header.split("\t")
    return [dict(zip(columns, row.split("\t"), strict=True)) for row in rows]


def row(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    """The one row whose columns equal `match`."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} rows match {match} in {rows}"
    return found[0]


def item(items: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The one JSON object whose keys equal `match`."""
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} items match {match} in {items}"
    return found[0]


def poll(fetch: Callable[[], T], ok: Callable[[T], bool], what: str) -> T:
    """fetch() until ok(value), every POLL_INTERVAL; fail after POLL_TIMEOUT with the last value.
    RabbitMQ's listings lag the broker, here by up to ~5 s even with collect_statistics_interval =
    500: message counts, new connections, channels, consumers and a queue's effective policy."""
    deadline = time.monotonic() + POLL_TIMEOUT
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {POLL_TIMEOUT}s waiting for {what}: {value!r}")
        time.sleep(POLL_INTERVAL)


def poll_table(mgmt: Management, args: tuple[str, ...], what: str, **match: str) -> dict[str, str]:
    """Run `rabbitmqadmin list ...` (table output) until a row matching `match` shows."""
    rows = poll(
        lambda: parse_table(admin(mgmt, *args)),
        lambda rows: sum(all(r.get(k) == v for k, v in match.items()) for r in rows) == 1,
        what,
    )
    return row(rows, **match)


def rabbit_password_hash(password: str) -> str:
    """A password hash as RabbitMQ's rabbit_password_hashing_sha256 stores (and exports) it:
    base64(salt ++ sha256(salt ++ password)), with a 4-byte salt."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


# --- fixtures -------------------------------------------------------------------------------------


class Created:
    """What a test made through the management API, deleted afterwards (404s ignored)."""

    def __init__(self, mgmt: Management) -> None:
        self.mgmt = mgmt
        self.paths: list[str] = []

    def queue(self, name: str, vhost: str = "/") -> str:
        self.paths.append(f"/api/queues/{vhost_path(vhost)}/{vhost_path(name)}")
        return name

    def exchange(self, name: str, vhost: str = "/") -> str:
        self.paths.append(f"/api/exchanges/{vhost_path(vhost)}/{vhost_path(name)}")
        return name

    def policy(self, name: str, vhost: str = "/") -> str:
        self.paths.append(f"/api/policies/{vhost_path(vhost)}/{vhost_path(name)}")
        return name

    def user(self, name: str) -> str:
        self.paths.append(f"/api/users/{vhost_path(name)}")
        return name

    def vhost(self, name: str) -> str:
        self.paths.append(f"/api/vhosts/{vhost_path(name)}")
        return name

    def run(self) -> None:
        for path in reversed(self.paths):
            reply = self.mgmt.delete(path)
            assert reply.status in (204, 404), (path, reply)


@pytest.fixture
def mgmt(management_url: str) -> Management:
    return Management(management_url)


@pytest.fixture
def created(mgmt: Management) -> Iterator[Created]:
    created = Created(mgmt)
    yield created
    created.run()


@pytest.fixture
def amqp_address(amqp_url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(amqp_url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def open_named_connection(amqp_url: str, connection_name: str) -> BlockingConnection:
    """A pika connection that announces `connection_name` in its client properties."""
    params = pika.URLParameters(amqp_url)
    params.client_properties = {"connection_name": connection_name}
    return pika.BlockingConnection(params)


def find_connection(mgmt: Management, connection_name: str) -> list[dict[str, Any]]:
    """Connections listed (raw_json, a column selection) with this client-provided name."""
    listed = raw_json(
        mgmt,
        "list",
        "connections",
        "name",
        "user",
        "vhost",
        "channels",
        "state",
        "protocol",
        "peer_host",
        "peer_port",
        "host",
        "port",
        "user_provided_name",
        "client_properties",
    )
    return [
        c
        for c in listed
        if c.get("client_properties", {}).get("connection_name") == connection_name
    ]


# --- tests ----------------------------------------------------------------------------------------


def test_seed_workflow_as_an_operator_types_it(
    mgmt: Management, created: Created, connection: BlockingConnection, name: str
) -> None:
    """The issue's workflow: declare a durable queue with rabbitmqadmin, publish 3 persistent
    messages with pika, see `messages 3` in `list queues name messages`, and the first payload in
    `get queue=...` (which requeues, so the 3 stay)."""
    queue = created.queue(f"{name}-orders")
    assert admin(mgmt, "declare", "queue", f"name={queue}", "durable=true") == "queue declared\n"
    publish_confirmed(
        connection,
        queue,
        [b"order-1", b"order-2", b"order-3"],
        pika.BasicProperties(delivery_mode=2),
    )
    listed = poll_table(
        mgmt, ("list", "queues", "name", "messages"), "messages 3", name=queue, messages="3"
    )
    assert listed == {"name": queue, "messages": "3"}
    counts = raw_json(mgmt, "list", "queues", "name", "messages", "messages_ready", "durable")
    assert item(counts, name=queue) == {
        "name": queue,
        "messages": 3,
        "messages_ready": 3,
        "durable": True,
    }
    output = admin(mgmt, "get", f"queue={queue}")
    assert table_header(output) == GET_COLUMNS
    [message] = parse_table(output)
    assert message == {
        "routing_key": queue,
        "exchange": "",
        "message_count": "2",
        "payload": "order-1",
        "payload_bytes": "7",
        "payload_encoding": "string",
        "redelivered": "False",
    }
    wait_message_count(connection, queue, 3)


def test_show_overview(
    mgmt: Management, created: Created, amqp_address: tuple[str, int], name: str
) -> None:
    """`show overview` prints rabbitmq_version, cluster_name, queue_totals.messages and
    object_totals.queues from GET /api/overview; raw_json is the whole overview, with the object
    totals as integers and the AMQP listener's port."""
    queue = created.queue(name)
    admin(mgmt, "declare", "queue", f"name={queue}")
    output = admin(mgmt, "show", "overview")
    assert table_header(output) == [
        "rabbitmq_version",
        "cluster_name",
        "queue_totals.messages",
        "object_totals.queues",
    ]
    [overview] = parse_table(output)
    assert VERSION.match(overview["rabbitmq_version"]), overview
    assert overview["cluster_name"]
    assert int(overview["object_totals.queues"]) >= 1
    [full] = raw_json(mgmt, "show", "overview")
    for key in (
        "management_version",
        "rabbitmq_version",
        "cluster_name",
        "node",
        "object_totals",
        "queue_totals",
        "listeners",
        "exchange_types",
    ):
        assert key in full, key
    for key in ("connections", "channels", "exchanges", "queues", "consumers"):
        assert isinstance(full["object_totals"][key], int), (key, full["object_totals"])
    assert full["object_totals"]["queues"] >= 1
    assert full["object_totals"]["exchanges"] >= 7  # the default exchange and the amq.* ones
    assert {t["name"] for t in full["exchange_types"]} >= {"direct", "fanout", "topic", "headers"}
    assert any(
        listener["protocol"] == "amqp" and listener["port"] == amqp_address[1]
        for listener in full["listeners"]
    ), full["listeners"]
    [selected] = parse_table(admin(mgmt, "show", "overview", "rabbitmq_version", "node"))
    assert selected == {"rabbitmq_version": overview["rabbitmq_version"], "node": full["node"]}


def test_declare_list_and_delete_queues(
    mgmt: Management, created: Created, connection: BlockingConnection, name: str
) -> None:
    """`declare queue` (durable/auto_delete sent as the strings "true"/"false", arguments as
    JSON) creates what `list queues` shows in every format; a column selection returns only
    those columns (raw_json); `delete queue` removes it, a second delete is "Not found"."""
    durable = created.queue(f"{name}-durable")
    transient = created.queue(f"{name}-transient")
    arguments = {"x-max-length": 10, "x-message-ttl": 60000}
    assert (
        admin(
            mgmt,
            "declare",
            "queue",
            f"name={durable}",
            "durable=true",
            f"arguments={json.dumps(arguments)}",
        )
        == "queue declared\n"
    )
    admin(mgmt, "declare", "queue", f"name={transient}", "durable=false", "auto_delete=false")
    # The queues are real AMQP queues with those properties: a passive declare finds them, and
    # redeclaring with the same arguments is accepted.
    channel = connection.channel()
    channel.queue_declare(durable, durable=True, arguments=arguments)
    channel.queue_declare(transient, passive=True)

    output = admin(mgmt, "list", "queues")
    assert table_header(output) == ["name", "messages"]
    assert {r["name"] for r in parse_table(output)} >= {durable, transient}

    listed = parse_tsv(
        admin(mgmt, "-f", "tsv", "list", "queues", "name", "durable", "auto_delete", "vhost")
    )
    assert row(listed, name=durable) == {
        "name": durable,
        "durable": "True",
        "auto_delete": "False",
        "vhost": "/",
    }
    assert row(listed, name=transient)["durable"] == "False"

    # A dotted column reaches into the arguments object.
    selected = parse_table(admin(mgmt, "list", "queues", "name", "arguments.x-max-length"))
    assert row(selected, name=durable)["arguments.x-max-length"] == "10"
    assert row(selected, name=transient)["arguments.x-max-length"] == ""

    as_json = raw_json(mgmt, "list", "queues", "name", "durable", "auto_delete", "arguments")
    assert item(as_json, name=durable) == {
        "name": durable,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }
    assert item(as_json, name=transient) == {
        "name": transient,
        "durable": False,
        "auto_delete": False,
        "arguments": {},
    }
    # -V names the vhost: GET /api/queues/%2F.
    assert {q["name"] for q in raw_json(mgmt, "-V", "/", "list", "queues", "name")} >= {durable}

    assert admin(mgmt, "delete", "queue", f"name={durable}") == "queue deleted\n"
    admin(mgmt, "delete", "queue", f"name={transient}")
    names = {q["name"] for q in raw_json(mgmt, "list", "queues", "name")}
    assert not names & {durable, transient}
    assert admin_fails(mgmt, "delete", "queue", f"name={durable}") == (
        f"*** Not found: /api/queues/%2F/{durable}\n\n"
    )


def test_declare_list_and_delete_exchanges_and_bindings(
    mgmt: Management, created: Created, name: str
) -> None:
    """`declare exchange` (type=topic; durable defaults to true) and `declare binding` to a queue
    (the default destination_type) and to an exchange; `list exchanges`/`list bindings` show them
    with RabbitMQ's properties_key; `publish` routes through them; `delete binding` with the
    listed properties_key and `delete exchange` remove them."""
    topic = created.exchange(f"{name}-topic")
    fanout = created.exchange(f"{name}-fanout")
    internal = created.exchange(f"{name}-internal")
    queue = created.queue(f"{name}-q")
    queue2 = created.queue(f"{name}-q2")
    assert admin(mgmt, "declare", "exchange", f"name={topic}", "type=topic") == (
        "exchange declared\n"
    )
    admin(mgmt, "declare", "exchange", f"name={fanout}", "type=fanout", "durable=false")
    admin(mgmt, "declare", "exchange", f"name={internal}", "type=direct", "internal=true")
    admin(mgmt, "declare", "queue", f"name={queue}")
    admin(mgmt, "declare", "queue", f"name={queue2}")
    output = admin(
        mgmt,
        "declare",
        "binding",
        f"source={topic}",
        f"destination={queue}",
        "destination_type=queue",
        "routing_key=a.*",
    )
    assert output == "binding declared\n"
    admin(
        mgmt,
        "declare",
        "binding",
        f"source={topic}",
        f"destination={fanout}",
        "destination_type=exchange",
        "routing_key=b.#",
    )
    admin(mgmt, "declare", "binding", f"source={fanout}", f"destination={queue2}")

    output = admin(mgmt, "list", "exchanges")
    assert table_header(output) == ["name", "type"]
    exchanges = parse_table(output)
    assert row(exchanges, name=topic) == {"name": topic, "type": "topic"}
    assert row(exchanges, name=fanout) == {"name": fanout, "type": "fanout"}
    assert row(exchanges, name="amq.topic")["type"] == "topic"
    assert row(exchanges, name="")["type"] == "direct"  # the default exchange, nameless

    flags = parse_tsv(
        admin(
            mgmt,
            "-f",
            "tsv",
            "list",
            "exchanges",
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
        )
    )
    assert row(flags, name=topic) == {
        "name": topic,
        "type": "topic",
        "durable": "True",
        "auto_delete": "False",
        "internal": "False",
    }
    assert row(flags, name=fanout)["durable"] == "False"
    assert row(flags, name=internal)["internal"] == "True"

    output = admin(mgmt, "list", "bindings")
    assert table_header(output) == ["source", "destination", "routing_key"]
    bindings = parse_table(output)
    assert row(bindings, source=topic, destination=queue)["routing_key"] == "a.*"
    assert row(bindings, source=topic, destination=fanout)["routing_key"] == "b.#"
    # Every queue is bound to the default exchange with its own name.
    assert row(bindings, source="", destination=queue)["routing_key"] == queue

    listed = raw_json(
        mgmt,
        "list",
        "bindings",
        "source",
        "destination",
        "destination_type",
        "routing_key",
        "properties_key",
        "arguments",
    )
    mine = [b for b in listed if b["source"] in (topic, fanout)]
    assert sorted(mine, key=lambda b: b["destination"]) == [
        {
            "source": topic,
            "destination": fanout,
            "destination_type": "exchange",
            "routing_key": "b.#",
            "properties_key": "b.%23",
            "arguments": {},
        },
        {
            "source": topic,
            "destination": queue,
            "destination_type": "queue",
            "routing_key": "a.*",
            "properties_key": "a.%2A",
            "arguments": {},
        },
        {
            "source": fanout,
            "destination": queue2,
            "destination_type": "queue",
            "routing_key": "",
            "properties_key": "~",
            "arguments": {},
        },
    ]

    def publish(routing_key: str) -> str:
        return admin(
            mgmt, "publish", f"exchange={topic}", f"routing_key={routing_key}", "payload=x"
        )

    assert publish("a.one") == "Message published\n"
    assert publish("b.two.three") == "Message published\n"  # topic -> fanout -> queue2
    assert publish("c") == "Message published but NOT routed\n"

    # Deleting takes the properties_key as listed (rabbitmqadmin percent-encodes it once more).
    assert admin(
        mgmt,
        "delete",
        "binding",
        f"source={topic}",
        "destination_type=queue",
        f"destination={queue}",
        "properties_key=a.%2A",
    ) == ("binding deleted\n")
    admin(
        mgmt,
        "delete",
        "binding",
        f"source={topic}",
        "destination_type=exchange",
        f"destination={fanout}",
        "properties_key=b.%23",
    )
    assert publish("a.one") == "Message published but NOT routed\n"
    assert publish("b.two") == "Message published but NOT routed\n"
    remaining = raw_json(mgmt, "list", "bindings", "source", "destination")
    assert [b for b in remaining if b["source"] == topic] == []
    # properties_key defaults to "~": the binding with an empty routing key and no arguments.
    admin(
        mgmt,
        "delete",
        "binding",
        f"source={fanout}",
        "destination_type=queue",
        f"destination={queue2}",
    )
    remaining = raw_json(mgmt, "list", "bindings", "source", "destination")
    assert [b for b in remaining if b["source"] == fanout] == []

    for exchange in (topic, fanout, internal):
        assert admin(mgmt, "delete", "exchange", f"name={exchange}") == "exchange deleted\n"
    names = {e["name"] for e in raw_json(mgmt, "list", "exchanges", "name")}
    assert not names & {topic, fanout, internal}


def test_list_connections_channels_and_consumers(
    mgmt: Management,
    created: Created,
    amqp_url: str,
    amqp_address: tuple[str, int],
    name: str,
) -> None:
    """A pika connection with one channel consuming shows up in `list connections` (named
    "peer_host:peer_port -> host:port", its user and channel count), `list channels` (the
    connection's name plus " (1)") and `list consumers` (its queue and consumer tag), each with
    the default columns, a column selection and raw_json."""
    queue = created.queue(name)
    admin(mgmt, "declare", "queue", f"name={queue}", "durable=false")
    conn = open_named_connection(amqp_url, f"{name}-conn")
    try:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=7)
        channel.basic_consume(queue, lambda *_: None, consumer_tag=f"{name}-ctag")

        [listed] = poll(
            lambda: find_connection(mgmt, f"{name}-conn"),
            lambda found: len(found) == 1 and found[0].get("channels") == 1,
            "the connection with 1 channel",
        )
        conn_name = listed["name"]
        assert conn_name == (
            f"{listed['peer_host']}:{listed['peer_port']} -> {listed['host']}:{listed['port']}"
        )
        assert listed["port"] == amqp_address[1]
        assert (listed["user"], listed["vhost"], listed["state"]) == ("guest", "/", "running")
        assert listed["protocol"] == "AMQP 0-9-1"
        assert listed["user_provided_name"] == f"{name}-conn"
        assert listed["client_properties"]["product"] == "Pika Python Client Library"
        assert listed["client_properties"]["capabilities"]["publisher_confirms"] is True

        output = admin(mgmt, "list", "connections")
        assert table_header(output) == ["name", "user", "channels"]
        assert row(parse_table(output), name=conn_name) == {
            "name": conn_name,
            "user": "guest",
            "channels": "1",
        }

        channel_name = f"{conn_name} (1)"
        output = poll(
            lambda: admin(mgmt, "list", "channels"),
            lambda out: sum(r["name"] == channel_name for r in parse_table(out)) == 1,
            "the channel",
        )
        assert table_header(output) == ["name", "user"]
        assert row(parse_table(output), name=channel_name) == {
            "name": channel_name,
            "user": "guest",
        }
        fields = ("name", "user", "number", "consumer_count", "prefetch_count")
        chosen = poll(
            lambda: parse_tsv(
                admin(mgmt, "-f", "tsv", "list", "channels", *fields, "connection_details.name")
            ),
            lambda rows: any(
                r["name"] == channel_name and r["consumer_count"] == "1" for r in rows
            ),
            "consumer_count 1",
        )
        assert row(chosen, name=channel_name) == {
            "name": channel_name,
            "user": "guest",
            "number": "1",
            "consumer_count": "1",
            "prefetch_count": "7",
            "connection_details.name": conn_name,
        }
        as_json = raw_json(mgmt, "list", "channels", "name", "number", "connection_details.name")
        assert item(as_json, name=channel_name) == {
            "name": channel_name,
            "number": 1,
            "connection_details": {"name": conn_name},
        }

        # RabbitMQ lists a consumer's channel_details as [] until the channel's statistics
        # arrive (and other tests' consumers may keep it so), and rabbitmqadmin prints a list
        # as a column: wait for this consumer's object, and leave that column out.
        poll(
            lambda: raw_json(mgmt, "list", "consumers"),
            lambda rows: any(
                r["consumer_tag"] == f"{name}-ctag" and isinstance(r["channel_details"], dict)
                for r in rows
            ),
            "the consumer's channel details",
        )
        output = poll(
            lambda: admin(mgmt, "list", "consumers"),
            lambda out: sum(r["consumer_tag"] == f"{name}-ctag" for r in parse_table(out)) == 1,
            "the consumer",
        )
        # No default columns for consumers: every top-level scalar field, sorted. RabbitMQ 3.10's;
        # newer releases (and Warren, for rabbitmqadmin v2, which requires it) add
        # consumer_timeout.
        extra = ("consumer_timeout", "channel_details")
        header = table_header(output)
        assert [column for column in header if column not in extra] == [
            "ack_required",
            "active",
            "activity_status",
            "consumer_tag",
            "exclusive",
            "prefetch_count",
        ]
        listed = row(parse_table(output), consumer_tag=f"{name}-ctag")
        listed.pop("channel_details", None)
        listed.pop("consumer_timeout", None)
        assert listed == {
            "ack_required": "True",
            "active": "True",
            "activity_status": "up",
            "consumer_tag": f"{name}-ctag",
            "exclusive": "False",
            "prefetch_count": "7",
        }
        selected = parse_table(
            admin(
                mgmt,
                "list",
                "consumers",
                "queue.name",
                "consumer_tag",
                "channel_details.name",
            )
        )
        assert row(selected, consumer_tag=f"{name}-ctag") == {
            "queue.name": queue,
            "consumer_tag": f"{name}-ctag",
            "channel_details.name": channel_name,
        }
        consumers = raw_json(mgmt, "-V", "/", "list", "consumers")
        consumer = item(consumers, consumer_tag=f"{name}-ctag")
        assert consumer["queue"] == {"name": queue, "vhost": "/"}
        assert consumer["channel_details"]["name"] == channel_name
        assert consumer["channel_details"]["connection_name"] == conn_name
        assert consumer["arguments"] == {}
        assert (consumer["ack_required"], consumer["exclusive"]) == (True, False)
        assert consumer["prefetch_count"] == 7
    finally:
        if conn.is_open:
            conn.close()


def test_close_connection(mgmt: Management, amqp_url: str, name: str) -> None:
    """`close connection name=<listed name>` (DELETE /api/connections/<name, percent-encoded>)
    closes the client's connection with 320 CONNECTION_FORCED; it then leaves the listing, and
    closing it again is "Not found"."""
    conn = open_named_connection(amqp_url, f"{name}-victim")
    try:
        [listed] = poll(
            lambda: find_connection(mgmt, f"{name}-victim"),
            lambda found: len(found) == 1,
            "the connection",
        )
        conn_name = listed["name"]
        assert admin(mgmt, "close", "connection", f"name={conn_name}") == "connection closed\n"
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            deadline = time.monotonic() + POLL_TIMEOUT
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
        assert closed.value.reply_code == 320
        assert closed.value.reply_text == "CONNECTION_FORCED - Closed via management plugin"
        assert conn.is_closed
    finally:
        if conn.is_open:
            conn.close()
    poll(
        lambda: find_connection(mgmt, f"{name}-victim"),
        lambda found: found == [],
        "the closed connection to leave the listing",
    )
    quoted = urllib.parse.quote(conn_name, safe="")
    assert admin_fails(mgmt, "close", "connection", f"name={conn_name}") == (
        f"*** Not found: /api/connections/{quoted}\n\n"
    )


def test_publish(
    mgmt: Management, created: Created, connection: BlockingConnection, name: str
) -> None:
    """`publish` (POST /api/exchanges/<vhost>/<exchange>/publish; exchange defaults to
    amq.default, the default exchange): the message arrives with the body, routing key and
    properties given, including headers and delivery_mode 2; payload_encoding=base64 carries
    binary bodies."""
    queue = created.queue(name)
    admin(mgmt, "declare", "queue", f"name={queue}")
    properties = {
        "delivery_mode": 2,
        "headers": {"a": 1, "s": "text"},
        "content_type": "text/plain",
        "correlation_id": "corr-1",
        "message_id": "msg-1",
        "priority": 3,
    }
    output = admin(
        mgmt,
        "publish",
        f"routing_key={queue}",
        "payload=hello from rabbitmqadmin",
        f"properties={json.dumps(properties)}",
    )
    assert output == "Message published\n"
    binary = bytes(range(256))
    output = admin(
        mgmt,
        "publish",
        "exchange=amq.direct",
        f"routing_key={queue}",
        f"payload={base64.b64encode(binary).decode()}",
        "payload_encoding=base64",
    )
    assert output == "Message published but NOT routed\n"  # amq.direct has no binding yet
    admin(mgmt, "declare", "binding", "source=amq.direct", f"destination={queue}", "routing_key=k")
    output = admin(
        mgmt,
        "publish",
        "exchange=amq.direct",
        "routing_key=k",
        f"payload={base64.b64encode(binary).decode()}",
        "payload_encoding=base64",
    )
    assert output == "Message published\n"

    channel: BlockingChannel = connection.channel()
    method, props, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None, "the published message did not arrive"
    assert (method.exchange, method.routing_key, body) == ("", queue, b"hello from rabbitmqadmin")
    assert props.delivery_mode == 2
    assert props.headers == {"a": 1, "s": "text"}
    assert (props.content_type, props.correlation_id, props.message_id, props.priority) == (
        "text/plain",
        "corr-1",
        "msg-1",
        3,
    )
    method, props, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None, "the base64 message did not arrive"
    assert (method.exchange, method.routing_key, body) == ("amq.direct", "k", binary)
    assert props.delivery_mode is None and props.headers is None
    assert message_count(channel, queue) == 0


def test_get_requeue_ack_and_count(
    mgmt: Management, created: Created, connection: BlockingConnection, name: str
) -> None:
    """`get` (POST /api/queues/<vhost>/<queue>/get, count sent as a string): ack_requeue_true
    (the default) shows messages and puts them back, marked redelivered, in order;
    ack_requeue_false removes them; count= takes up to that many; message_count is what is left
    behind each one; an empty queue prints "No items"."""
    queue = created.queue(name)
    admin(mgmt, "declare", "queue", f"name={queue}")
    publish_confirmed(
        connection,
        queue,
        [b"first", b"second", b"third"],
        pika.BasicProperties(delivery_mode=2, headers={"h": "v"}),
    )

    output = admin(mgmt, "get", f"queue={queue}", "ackmode=ack_requeue_true")
    assert table_header(output) == GET_COLUMNS  # properties (an object) is too deep for depth 1
    [shown] = parse_table(output)
    assert (shown["payload"], shown["message_count"], shown["redelivered"]) == (
        "first",
        "2",
        "False",
    )
    wait_message_count(connection, queue, 3)

    peeked = raw_json(mgmt, "get", f"queue={queue}", "count=2", "ackmode=ack_requeue_true")
    assert [(m["payload"], m["message_count"], m["redelivered"]) for m in peeked] == [
        ("first", 2, True),
        ("second", 1, False),
    ]
    assert peeked[0] == {
        "payload_bytes": 5,
        "redelivered": True,
        "exchange": "",
        "routing_key": queue,
        "message_count": 2,
        "properties": {"delivery_mode": 2, "headers": {"h": "v"}},
        "payload": "first",
        "payload_encoding": "string",
    }
    wait_message_count(connection, queue, 3)

    taken = raw_json(mgmt, "get", f"queue={queue}", "count=2", "ackmode=ack_requeue_false")
    assert [(m["payload"], m["message_count"]) for m in taken] == [("first", 2), ("second", 1)]
    wait_message_count(connection, queue, 1)

    output = admin(
        mgmt, "-f", "tsv", "get", f"queue={queue}", "count=5", "ackmode=ack_requeue_false"
    )
    assert [(m["payload"], m["message_count"]) for m in parse_tsv(output)] == [("third", "0")]
    wait_message_count(connection, queue, 0)
    assert admin(mgmt, "get", f"queue={queue}") == "No items\n"
    assert raw_json(mgmt, "get", f"queue={queue}", "count=3") == []


def test_get_encodings(
    mgmt: Management, created: Created, connection: BlockingConnection, name: str
) -> None:
    """encoding=auto returns a UTF-8 body as a string and anything else base64; encoding=base64
    always base64. payload_bytes counts bytes. A message without properties has `"properties":
    []` (RabbitMQ's empty proplist), which the table shows as an empty properties column."""
    queue = created.queue(name)
    admin(mgmt, "declare", "queue", f"name={queue}")
    binary = bytes(range(256))
    text = "héllo ✓"
    publish_confirmed(connection, queue, [binary, text.encode()])

    auto = raw_json(mgmt, "get", f"queue={queue}", "count=2", "encoding=auto")
    assert auto == [
        {
            "payload_bytes": 256,
            "redelivered": False,
            "exchange": "",
            "routing_key": queue,
            "message_count": 1,
            "properties": [],
            "payload": base64.b64encode(binary).decode(),
            "payload_encoding": "base64",
        },
        {
            "payload_bytes": len(text.encode()),
            "redelivered": False,
            "exchange": "",
            "routing_key": queue,
            "message_count": 0,
            "properties": [],
            "payload": text,
            "payload_encoding": "string",
        },
    ]
    forced = raw_json(mgmt, "get", f"queue={queue}", "count=2", "encoding=base64")
    assert [(m["payload"], m["payload_encoding"]) for m in forced] == [
        (base64.b64encode(binary).decode(), "base64"),
        (base64.b64encode(text.encode()).decode(), "base64"),
    ]
    output = admin(mgmt, "get", f"queue={queue}", "count=2", "ackmode=ack_requeue_false")
    assert table_header(output) == [*GET_COLUMNS[:-1], "properties", "redelivered"]
    shown = parse_table(output)
    assert [(r["payload"], r["payload_encoding"], r["properties"]) for r in shown] == [
        (base64.b64encode(binary).decode(), "base64", ""),
        (text, "string", ""),
    ]
    wait_message_count(connection, queue, 0)
    assert "Unsupported encoding" in admin_fails(mgmt, "get", f"queue={queue}", "encoding=hex")


def test_purge_queue(
    mgmt: Management, created: Created, connection: BlockingConnection, name: str
) -> None:
    """`purge queue` (DELETE /api/queues/<vhost>/<queue>/contents) empties the queue but keeps
    it; purging a queue that does not exist is "Not found"."""
    queue = created.queue(name)
    admin(mgmt, "declare", "queue", f"name={queue}")
    publish_confirmed(connection, queue, [b"1", b"2", b"3"])
    channel = connection.channel()
    assert message_count(channel, queue) == 3
    assert admin(mgmt, "purge", "queue", f"name={queue}") == "queue purged\n"
    assert message_count(channel, queue) == 0
    assert admin(mgmt, "get", f"queue={queue}") == "No items\n"
    assert {q["name"] for q in raw_json(mgmt, "list", "queues", "name")} >= {queue}
    assert admin_fails(mgmt, "purge", "queue", f"name={name}-missing") == (
        f"*** Not found: /api/queues/%2F/{name}-missing/contents\n\n"
    )


def test_users(mgmt: Management, created: Created, name: str) -> None:
    """`declare user` (tags as a comma-separated string) creates a user that `list users` shows
    with its tags (a JSON list, space-joined in tables) and that can use the API if tagged;
    `delete user` removes it."""
    user = created.user(f"{name}-user")
    plain = created.user(f"{name}-plain")
    output = admin(
        mgmt, "declare", "user", f"name={user}", "password=s3cret", "tags=monitoring,policymaker"
    )
    assert output == "user declared\n"
    admin(mgmt, "declare", "user", f"name={plain}", "password=s3cret", "tags=")

    output = admin(mgmt, "list", "users")
    assert table_header(output) == ["name", "hashing_algorithm", "password_hash", "tags"]
    listed = row(parse_table(output), name=user)
    assert listed["tags"] == "monitoring policymaker"
    assert listed["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert len(base64.b64decode(listed["password_hash"])) == 36  # 4-byte salt + SHA-256
    assert row(parse_table(admin(mgmt, "list", "users", "name", "tags")), name=plain) == {
        "name": plain,
        "tags": "",
    }
    as_json = raw_json(mgmt, "list", "users", "name", "tags")
    assert item(as_json, name=user) == {"name": user, "tags": ["monitoring", "policymaker"]}
    assert item(as_json, name=plain) == {"name": plain, "tags": []}
    full = item(raw_json(mgmt, "list", "users"), name=user)
    assert set(full) >= {"name", "password_hash", "hashing_algorithm", "tags"}

    # The monitoring user may use the API; one without tags may not (401, "Access refused").
    [overview] = parse_table(admin(mgmt.as_user(user, "s3cret"), "show", "overview"))
    assert VERSION.match(overview["rabbitmq_version"])
    assert admin_fails(mgmt.as_user(plain, "s3cret"), "list", "vhosts") == (
        "*** Access refused: /api/vhosts?columns=name,messages\n\n"
    )

    assert admin(mgmt, "delete", "user", f"name={user}") == "user deleted\n"
    admin(mgmt, "delete", "user", f"name={plain}")
    names = {u["name"] for u in raw_json(mgmt, "list", "users", "name")}
    assert not names & {user, plain}
    assert "Access refused" in admin_fails(mgmt.as_user(user, "s3cret"), "show", "overview")
    assert admin_fails(mgmt, "delete", "user", f"name={user}") == (
        f"*** Not found: /api/users/{user}\n\n"
    )


def test_vhosts_and_permissions(
    mgmt: Management,
    created: Created,
    amqp_address: tuple[str, int],
    name: str,
) -> None:
    """`declare vhost` creates a vhost (and grants its creator, guest, full permissions there);
    `declare permission` gives a user regexes that `list permissions` shows and AMQP enforces;
    -V runs commands in the vhost; `delete vhost` removes it with its queues."""
    vhost = created.vhost(f"{name}-vhost")
    user = created.user(f"{name}-user")
    assert admin(mgmt, "declare", "vhost", f"name={vhost}") == "vhost declared\n"
    admin(mgmt, "declare", "user", f"name={user}", "password=pw", "tags=management")
    output = admin(
        mgmt,
        "declare",
        "permission",
        f"vhost={vhost}",
        f"user={user}",
        f"configure=^{name}-ok",
        "write=.*",
        "read=.*",
    )
    assert output == "permission declared\n"

    output = admin(mgmt, "list", "vhosts")
    assert table_header(output) == ["name", "messages"]
    assert row(parse_table(output), name=vhost)["name"] == vhost
    vhosts = parse_tsv(admin(mgmt, "-f", "tsv", "list", "vhosts", "name", "tracing"))
    assert row(vhosts, name=vhost) == {"name": vhost, "tracing": "False"}
    assert item(raw_json(mgmt, "list", "vhosts", "name", "tracing"), name=vhost) == {
        "name": vhost,
        "tracing": False,
    }

    output = admin(mgmt, "list", "permissions")
    assert table_header(output) == ["vhost", "configure", "read", "user", "write"]
    permissions = parse_table(output)
    assert row(permissions, vhost=vhost, user=user) == {
        "vhost": vhost,
        "configure": f"^{name}-ok",
        "read": ".*",
        "user": user,
        "write": ".*",
    }
    assert row(permissions, vhost=vhost, user="guest") == {
        "vhost": vhost,
        "configure": ".*",
        "read": ".*",
        "user": "guest",
        "write": ".*",
    }
    assert item(raw_json(mgmt, "list", "permissions"), vhost=vhost, user=user) == {
        "user": user,
        "vhost": vhost,
        "configure": f"^{name}-ok",
        "write": ".*",
        "read": ".*",
    }

    # -V: a queue declared in the vhost, listed there (also by the user, who may see it).
    admin(mgmt, "-V", vhost, "declare", "queue", f"name={name}-ok-q")
    assert parse_table(admin(mgmt, "-V", vhost, "list", "queues", "vhost", "name")) == [
        {"vhost": vhost, "name": f"{name}-ok-q"}
    ]
    as_user = mgmt.as_user(user, "pw")
    assert [q["name"] for q in raw_json(as_user, "-V", vhost, "list", "queues", "name")] == [
        f"{name}-ok-q"
    ]
    assert [v["name"] for v in raw_json(as_user, "list", "vhosts", "name")] == [vhost]

    # The permissions hold over AMQP: configure only matches names starting `<name>-ok`.
    host, port = amqp_address
    credentials = pika.PlainCredentials(user, "pw")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, vhost, credentials))
    try:
        channel = conn.channel()
        channel.queue_declare(f"{name}-ok-q2", exclusive=True)
        with expect_channel_close(channel, 403, f"{name}-denied"):
            channel.queue_declare(f"{name}-denied", exclusive=True)
    finally:
        if conn.is_open:
            conn.close()

    assert admin(mgmt, "delete", "vhost", f"name={vhost}") == "vhost deleted\n"
    assert vhost not in {v["name"] for v in raw_json(mgmt, "list", "vhosts", "name")}
    assert all(p["vhost"] != vhost for p in raw_json(mgmt, "list", "permissions"))
    assert admin_fails(mgmt, "delete", "vhost", f"name={vhost}") == (
        f"*** Not found: /api/vhosts/{vhost}\n\n"
    )
    assert admin_fails(mgmt, "-V", vhost, "list", "queues") == (
        f"*** Not found: /api/queues/{vhost}?columns=name,messages\n\n"
    )


def test_policies(
    mgmt: Management, created: Created, connection: BlockingConnection, name: str
) -> None:
    """`declare policy` (definition JSON, priority, apply-to) is listed by `list policies` (the
    definition as JSON text in tables) and applies to the queues its pattern matches (max-length
    caps the queue); `delete policy` removes it. The pattern matches only this test's names."""
    policy = created.policy(f"{name}-policy")
    queue = created.queue(f"{name}-q")
    output = admin(
        mgmt,
        "declare",
        "policy",
        f"name={policy}",
        f"pattern=^{name}",
        'definition={"max-length":2}',
        "priority=5",
        "apply-to=queues",
    )
    assert output == "policy declared\n"

    output = admin(mgmt, "list", "policies")
    assert table_header(output) == [
        "vhost",
        "name",
        "apply-to",
        "definition",
        "pattern",
        "priority",
    ]
    assert row(parse_table(output), name=policy) == {
        "vhost": "/",
        "name": policy,
        "apply-to": "queues",
        "definition": '{"max-length": 2}',
        "pattern": f"^{name}",
        "priority": "5",
    }
    chosen = parse_tsv(admin(mgmt, "-f", "tsv", "list", "policies", "name", "pattern", "priority"))
    assert row(chosen, name=policy) == {"name": policy, "pattern": f"^{name}", "priority": "5"}
    assert item(raw_json(mgmt, "list", "policies"), name=policy) == {
        "vhost": "/",
        "name": policy,
        "pattern": f"^{name}",
        "apply-to": "queues",
        "definition": {"max-length": 2},
        "priority": 5,
    }

    admin(mgmt, "declare", "queue", f"name={queue}")
    publish_confirmed(connection, queue, [b"1", b"2", b"3"])
    assert message_count(connection.channel(), queue) == 2
    poll(
        lambda: raw_json(mgmt, "list", "queues", "name", "policy"),
        lambda queues: item(queues, name=queue).get("policy") == policy,
        "the queue's policy",
    )

    assert admin(mgmt, "delete", "policy", f"name={policy}") == "policy deleted\n"
    assert all(p["name"] != policy for p in raw_json(mgmt, "list", "policies"))
    publish_confirmed(connection, queue, [b"4"])
    assert message_count(connection.channel(), queue) == 3  # no longer capped
    assert admin_fails(mgmt, "delete", "policy", f"name={policy}") == (
        f"*** Not found: /api/policies/%2F/{policy}\n\n"
    )


DEFINITION_KEYS = {
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
}


def test_export_and_import_definitions(
    mgmt: Management, created: Created, tmp_path: Path, name: str
) -> None:
    """`export FILE` writes GET /api/definitions (RabbitMQ's format: the version keys, then
    users, vhosts, permissions, ..., bindings; no default or amq.* exchanges, no default-exchange
    bindings). A file holding this test's objects from it, plus a user whose password_hash was
    made the way RabbitMQ makes them, goes back through `import FILE` after the objects are
    deleted: all of them return, and both users can log in with their passwords."""
    vhost = created.vhost(f"{name}-vhost")
    user = created.user(f"{name}-user")
    migrated = created.user(f"{name}-migrated")
    policy = created.policy(f"{name}-policy")
    queue = created.queue(f"{name}-q")
    exchange = created.exchange(f"{name}-x")
    admin(mgmt, "declare", "vhost", f"name={vhost}")
    admin(mgmt, "declare", "user", f"name={user}", "password=pw1", "tags=management")
    admin(
        mgmt,
        "declare",
        "permission",
        f"vhost={vhost}",
        f"user={user}",
        "configure=^cfg",
        "write=^w",
        "read=.*",
    )
    admin(
        mgmt,
        "declare",
        "policy",
        f"name={policy}",
        f"pattern=^{name}",
        'definition={"message-ttl":60000}',
        "priority=1",
        "apply-to=queues",
    )
    admin(mgmt, "declare", "queue", f"name={queue}", "durable=true", 'arguments={"x-max-length":7}')
    admin(mgmt, "declare", "exchange", f"name={exchange}", "type=topic")
    admin(
        mgmt, "declare", "binding", f"source={exchange}", f"destination={queue}", "routing_key=k.#"
    )

    exported = tmp_path / "definitions.json"
    output = admin(mgmt, "export", str(exported))
    assert output == f'Exported definitions for {mgmt.host} to "{exported}"\n'
    definitions = json.loads(exported.read_text())
    assert set(definitions) >= DEFINITION_KEYS, sorted(definitions)
    assert VERSION.match(definitions["rabbit_version"])
    for key in DEFINITION_KEYS - {"rabbit_version", "rabbitmq_version"}:
        if key not in ("product_name", "product_version"):
            assert isinstance(definitions[key], list), key
    mine = {
        "users": [item(definitions["users"], name=user)],
        "vhosts": [item(definitions["vhosts"], name=vhost)],
        "permissions": [item(definitions["permissions"], user=user, vhost=vhost)],
        "policies": [item(definitions["policies"], name=policy, vhost="/")],
        "queues": [item(definitions["queues"], name=queue, vhost="/")],
        "exchanges": [item(definitions["exchanges"], name=exchange, vhost="/")],
        "bindings": [item(definitions["bindings"], source=exchange, vhost="/")],
    }
    exported_user = mine["users"][0]
    assert exported_user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert exported_user["tags"] == ["management"]
    assert isinstance(exported_user["password_hash"], str) and exported_user["password_hash"]
    assert mine["permissions"][0] == {
        "user": user,
        "vhost": vhost,
        "configure": "^cfg",
        "write": "^w",
        "read": ".*",
    }
    assert mine["policies"][0] == {
        "vhost": "/",
        "name": policy,
        "pattern": f"^{name}",
        "apply-to": "queues",
        "definition": {"message-ttl": 60000},
        "priority": 1,
    }
    assert mine["queues"][0] == {
        "name": queue,
        "vhost": "/",
        "durable": True,
        "auto_delete": False,
        "arguments": {"x-max-length": 7},
    }
    assert mine["exchanges"][0] == {
        "name": exchange,
        "vhost": "/",
        "type": "topic",
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }
    assert mine["bindings"][0] == {
        "source": exchange,
        "vhost": "/",
        "destination": queue,
        "destination_type": "queue",
        "routing_key": "k.#",
        "arguments": {},
    }
    assert not [e for e in definitions["exchanges"] if e["name"] == ""]
    assert not [e for e in definitions["exchanges"] if e["name"].startswith("amq.")]
    assert not [b for b in definitions["bindings"] if b["source"] == ""]

    # Only this test's objects go back in (the broker is shared), plus a user "migrated" from
    # another RabbitMQ: its hash made the way rabbit_password_hashing_sha256 makes them.
    subset = {key: definitions[key] for key in DEFINITION_KEYS}
    subset.update({key: [] for key in ("topic_permissions", "parameters", "global_parameters")})
    subset.update(mine)
    subset["users"] = [
        exported_user,
        {
            "name": migrated,
            "password_hash": rabbit_password_hash("pw2"),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": ["monitoring"],
            "limits": {},
        },
    ]
    to_import = tmp_path / "subset.json"
    to_import.write_text(json.dumps(subset))

    admin(mgmt, "delete", "queue", f"name={queue}")
    admin(mgmt, "delete", "exchange", f"name={exchange}")
    admin(mgmt, "delete", "policy", f"name={policy}")
    admin(mgmt, "delete", "user", f"name={user}")
    admin(mgmt, "delete", "vhost", f"name={vhost}")
    assert queue not in {q["name"] for q in raw_json(mgmt, "list", "queues", "name")}
    assert vhost not in {v["name"] for v in raw_json(mgmt, "list", "vhosts", "name")}

    output = admin(mgmt, "import", str(to_import))
    assert output.startswith("Uploaded definitions from "), output

    restored = raw_json(mgmt, "list", "queues", "name", "vhost", "durable", "arguments")
    assert item(restored, name=queue) == {
        "name": queue,
        "vhost": "/",
        "durable": True,
        "arguments": {"x-max-length": 7},
    }
    assert item(raw_json(mgmt, "list", "exchanges", "name", "type"), name=exchange) == {
        "name": exchange,
        "type": "topic",
    }
    bindings = raw_json(mgmt, "list", "bindings", "source", "destination", "routing_key")
    assert item(bindings, source=exchange) == {
        "source": exchange,
        "destination": queue,
        "routing_key": "k.#",
    }
    assert item(raw_json(mgmt, "list", "policies"), name=policy) == mine["policies"][0]
    assert item(raw_json(mgmt, "list", "permissions"), user=user) == mine["permissions"][0]
    users = raw_json(mgmt, "list", "users", "name", "tags")
    assert item(users, name=user) == {"name": user, "tags": ["management"]}
    assert item(users, name=migrated) == {"name": migrated, "tags": ["monitoring"]}
    assert [v["name"] for v in raw_json(mgmt.as_user(user, "pw1"), "list", "vhosts", "name")] == [
        vhost
    ]
    [overview] = parse_table(admin(mgmt.as_user(migrated, "pw2"), "show", "overview"))
    assert VERSION.match(overview["rabbitmq_version"])
    assert "Access refused" in admin_fails(mgmt.as_user(migrated, "wrong"), "show", "overview")

    # -V: one vhost's definitions, without users, vhosts or permissions, nor vhost fields.
    admin(mgmt, "-V", vhost, "declare", "queue", "name=inner", "durable=true")
    per_vhost = tmp_path / "vhost.json"
    admin(mgmt, "-V", vhost, "export", str(per_vhost))
    vhost_definitions = json.loads(per_vhost.read_text())
    assert set(vhost_definitions) >= {
        "rabbit_version",
        "parameters",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    }
    assert not set(vhost_definitions) & {"users", "vhosts", "permissions"}
    assert vhost_definitions["queues"] == [
        {"name": "inner", "durable": True, "auto_delete": False, "arguments": {}}
    ]
    admin(mgmt, "-V", vhost, "delete", "queue", "name=inner")
    assert admin(mgmt, "-V", vhost, "list", "queues") == "No items\n"
    assert admin(mgmt, "-V", vhost, "import", str(per_vhost)).startswith("Uploaded definitions")
    assert parse_table(admin(mgmt, "-V", vhost, "list", "queues", "name", "durable")) == [
        {"name": "inner", "durable": "True"}
    ]


def test_errors_as_rabbitmqadmin_prints_them(mgmt: Management, created: Created, name: str) -> None:
    """What rabbitmqadmin prints for the API's errors (exit 1): 404 -> `*** Not found: <path>`
    (get from an unknown queue); 401 -> `*** Access refused: <path>` (wrong password, unknown
    user); 400 -> `*** <reason>` (redeclaring with different durability or type: the
    "inequivalent arg" text, which leaves the original in place)."""
    missing = f"{name}-missing"
    assert admin_fails(mgmt, "get", f"queue={missing}") == (
        f"*** Not found: /api/queues/%2F/{missing}/get\n\n"
    )
    for user, password in (("guest", "wrong-password"), (f"{name}-nobody", "guest")):
        stderr = admin_fails(mgmt.as_user(user, password), "list", "queues")
        assert stderr == "*** Access refused: /api/queues?columns=name,messages\n\n"
        stderr = admin_fails(mgmt.as_user(user, password), "show", "overview")
        assert stderr.startswith("*** Access refused: /api/overview")

    queue = created.queue(name)
    admin(mgmt, "declare", "queue", f"name={queue}", "durable=true")
    stderr = admin_fails(mgmt, "declare", "queue", f"name={queue}", "durable=false")
    assert stderr == (
        f"*** inequivalent arg 'durable' for queue '{queue}' in vhost '/': "
        "received 'false' but current is 'true'\n\n"
    )
    still = parse_table(admin(mgmt, "list", "queues", "name", "durable"))
    assert row(still, name=queue) == {"name": queue, "durable": "True"}

    exchange = created.exchange(f"{name}-x")
    admin(mgmt, "declare", "exchange", f"name={exchange}", "type=topic")
    stderr = admin_fails(mgmt, "declare", "exchange", f"name={exchange}", "type=direct")
    assert stderr == (
        f"*** inequivalent arg 'type' for exchange '{exchange}' in vhost '/': "
        "received 'direct' but current is 'topic'\n\n"
    )
    assert admin_fails(mgmt, "declare", "binding", f"source={missing}", f"destination={queue}") == (
        f"*** Not found: /api/bindings/%2F/e/{missing}/q/{queue}\n\n"
    )
