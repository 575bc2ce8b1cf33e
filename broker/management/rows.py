"""The broker's objects as RabbitMQ's management API shapes them.

Field names, types and nesting are RabbitMQ 3.10's (`rabbitmqadmin`, monitoring scripts and
dashboards read them; several break on a missing `node`, `protocol`, `connected_at` or
`properties_key`). Figures RabbitMQ computes from Erlang internals (reductions, garbage
collection) are left out; the rest are either Warren's real values or RabbitMQ's constant for a
single node (`state: running`, `type: classic`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from broker.core.exchange import Binding, Exchange
from broker.core.queue import Queue
from broker.definitions import exchange_definition

if TYPE_CHECKING:
    from broker.amqp.channel import Channel
    from broker.amqp.connection import AMQPConnection
    from broker.auth import User
    from broker.config import Permission
    from broker.management.rates import RateSampler

Row = dict[str, Any]
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
QUEUE_COUNTS = ("publish", "deliver_get", "ack")


def details(rate: float) -> dict[str, float]:
    return {"rate": rate}


def message_totals(ready: int, unacked: int) -> Row:
    """Counts with their (sampled) rates, as queue totals and vhosts show them."""
    return {
        "messages": ready + unacked,
        "messages_details": details(0.0),
        "messages_ready": ready,
        "messages_ready_details": details(0.0),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": details(0.0),
    }


def message_stats(names: Iterable[str], counts: Iterable[int], rates: Iterable[float]) -> Row:
    stats: Row = {}
    for name, count, rate in zip(names, counts, rates, strict=True):
        stats[name] = count
        stats[f"{name}_details"] = details(rate)
    return stats


def queue_counts(queue: Queue) -> tuple[int, ...]:
    return (queue.published_total, queue.delivered_total, queue.acked_total)


def _persistent_figures(queue: Queue) -> tuple[int, int, int]:
    """(unacked body bytes, persistent messages, their body bytes). Persistent means logged:
    delivery mode 2 in a queue that survives restarts, as RabbitMQ counts it. This walks the
    queue's message objects (a long queue keeps most of its messages as compact records, all
    persistent, counted without a walk)."""
    unacked_bytes = sum(entry.message.body_size for entry in queue.unacked_entries())
    if not queue.store_id:
        return unacked_bytes, 0, 0
    count, size = queue.paged_count, queue.paged_bytes
    for entry in (*queue.ready_unordered(), *queue.unacked_entries()):
        if entry.message.msg_id:
            count += 1
            size += entry.message.body_size
    return unacked_bytes, count, size


def queue_row(queue: Queue, node: str, rates: RateSampler, policy: Row | None) -> Row:
    ready = queue.message_count
    unacked = queue.unacked_count
    active = queue.active_consumer if queue.settings.single_active_consumer else None
    exclusive = queue.exclusive_consumer
    unacked_bytes, persistent, persistent_bytes = _persistent_figures(queue)
    row: Row = {
        "name": queue.name,
        "vhost": queue.vhost_name,
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "exclusive": queue.exclusive,
        "arguments": queue.arguments,
        "node": node,
        "state": "running",
        "type": queue.queue_type,
        **message_totals(ready, unacked),
        "message_bytes": queue.ready_bytes + unacked_bytes,
        "message_bytes_ready": queue.ready_bytes,
        "message_bytes_unacknowledged": unacked_bytes,
        "message_bytes_persistent": persistent_bytes,
        "messages_persistent": persistent,
        "consumers": len(queue.consumers),
        "consumer_capacity": 1.0 if queue.consumers else 0.0,
        "consumer_utilisation": 1.0 if queue.consumers else 0.0,
        "exclusive_consumer_tag": exclusive.tag if exclusive is not None else None,
        "single_active_consumer_tag": active.tag if active is not None else None,
        "memory": queue.resident_bytes,
        "policy": policy["name"] if policy else None,
        "operator_policy": None,
        "effective_policy_definition": policy["definition"] if policy else {},
        "head_message_timestamp": None,
        "recoverable_slaves": None,
        "message_stats": message_stats(
            QUEUE_COUNTS, queue_counts(queue), rates.rates(queue, len(QUEUE_COUNTS))
        ),
    }
    return row


def exchange_row(vhost: str, exchange: Exchange, policy: Row | None) -> Row:
    row = exchange_definition(vhost, exchange)
    row["user_who_performed_action"] = exchange.declared_by
    if policy:  # RabbitMQ lists the key only while a policy applies
        row["policy"] = policy["name"]
    return row


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """The binding's id in API paths: the routing key quoted the quote_plus way ('~' when it
    is empty) when there are no arguments, else the key, '~' and a short hash of the
    arguments. RabbitMQ hashes its own term encoding; the value is opaque to clients, who
    copy it from listings."""
    key = urllib.parse.quote_plus(routing_key, safe="").replace("~", "%7E")
    if not arguments:
        return key or "~"
    digest = hashlib.md5(
        json.dumps(json_ready(arguments), sort_keys=True).encode(), usedforsecurity=False
    ).digest()
    return f"{key}~{base64.urlsafe_b64encode(digest).decode()[:6]}"


def binding_row(
    vhost: str, source: str, destination: str, kind: str, key: str, arguments: dict[str, Any]
) -> Row:
    return {
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": key,
        "arguments": arguments,
        "properties_key": properties_key(key, arguments),
    }


def explicit_binding_row(vhost: str, binding: Binding) -> Row:
    destination = binding.destination
    kind = "queue" if isinstance(destination, Queue) else "exchange"
    return binding_row(
        vhost, binding.source.name, destination.name, kind, binding.routing_key, binding.arguments
    )


def default_binding_row(vhost: str, queue: str) -> Row:
    """Every queue is bound to the default exchange by its name; RabbitMQ lists that binding."""
    return binding_row(vhost, "", queue, "queue", queue, {})


def _host_port(address: str) -> tuple[str, int | str]:
    host, _, port = address.rpartition(":")
    return host, int(port) if port.isdigit() else port


def connection_row(connection: AMQPConnection, node: str) -> Row:
    peer_host, peer_port = _host_port(connection.peer)
    host, port = _host_port(connection.local)
    return {
        "name": connection.name,
        "node": node,
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "state": "blocked" if connection.blocked else "running",
        "connected_at": connection.connected_at,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": host,
        "port": port,
        "ssl": connection.tls,
        "ssl_protocol": None,
        "ssl_key_exchange": None,
        "ssl_cipher": None,
        "ssl_hash": None,
        "peer_cert_subject": None,
        "peer_cert_issuer": None,
        "peer_cert_validity": None,
        "auth_mechanism": "PLAIN",
        "user": connection.user,
        "user_provided_name": connection.client_properties.get("connection_name"),
        "user_who_performed_action": connection.user,
        "vhost": connection.vhost.name if connection.vhost is not None else None,
        "channels": len(connection.channels),
        "channel_max": connection.channel_max,
        "frame_max": connection.frame_max,
        "timeout": connection.heartbeat,
        "client_properties": connection.client_properties,
        "recv_oct": 0,
        "recv_cnt": 0,
        "send_oct": 0,
        "send_cnt": 0,
        "send_pend": 0,
        "recv_oct_details": details(0.0),
        "send_oct_details": details(0.0),
    }


def connection_details(connection: AMQPConnection) -> Row:
    peer_host, peer_port = _host_port(connection.peer)
    return {"name": connection.name, "peer_host": peer_host, "peer_port": peer_port}


def channel_name(channel: Channel) -> str:
    return f"{channel.connection.name} ({channel.number})"


def channel_row(channel: Channel, node: str) -> Row:
    connection = channel.connection
    return {
        "name": channel_name(channel),
        "node": node,
        "number": channel.number,
        "user": connection.user,
        "user_who_performed_action": connection.user,
        "vhost": connection.vhost.name,
        "connection_details": connection_details(connection),
        "state": "running",
        "consumer_count": len(channel.consumers),
        "messages_unacknowledged": channel.unacked_count(),
        "messages_unconfirmed": channel.unconfirmed,
        "messages_uncommitted": len(channel.tx.publishes) if channel.tx is not None else 0,
        "acks_uncommitted": len(channel.tx.settlements) if channel.tx is not None else 0,
        "prefetch_count": channel.prefetch_count,
        "global_prefetch_count": channel.global_prefetch,
        "confirm": channel.confirm_mode,
        "transactional": channel.tx is not None,
    }


def consumer_rows(channel: Channel, node: str) -> list[Row]:
    connection = channel.connection
    peer_host, peer_port = _host_port(connection.peer)
    channel_details = {
        "name": channel_name(channel),
        "number": channel.number,
        "node": node,
        "connection_name": connection.name,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "user": connection.user,
    }
    rows = []
    default_timeout = connection.config.limits.consumer_timeout
    for consumer in channel.consumers.values():
        queue = consumer.queue
        timeout = queue.settings.consumer_timeout
        if timeout is None:
            timeout = default_timeout
        active = (
            queue.active_consumer is consumer if queue.settings.single_active_consumer else True
        )
        rows.append(
            {
                "consumer_tag": consumer.tag,
                "queue": {"name": queue.name, "vhost": queue.vhost_name},
                "channel_details": channel_details,
                "ack_required": not consumer.no_ack,
                "exclusive": consumer.exclusive,
                "prefetch_count": consumer.prefetch,
                "arguments": consumer.arguments,
                "active": active,
                "activity_status": "up" if active else "waiting",
                # ms (0: none), as RabbitMQ 3.12+ lists it; rabbitmqadmin v2 requires it
                "consumer_timeout": timeout,
            }
        )
    return rows


def user_row(user: User) -> Row:
    return {
        "name": user.name,
        "password_hash": user.password_hash,
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": list(user.tags),
        "limits": {},
    }


def permission_row(user: str, vhost: str, permission: Permission) -> Row:
    return {
        "user": user,
        "vhost": vhost,
        "configure": permission.configure,
        "write": permission.write,
        "read": permission.read,
    }


# Client properties and arguments are field tables a client sent; the wire decoder bounds their
# nesting (about 100 levels), so a legal table renders whole under this limit, and anything deeper
# (whatever the decoder lets through) is cut off with TOO_DEEP instead of overflowing the stack.
MAX_JSON_DEPTH = 256
TOO_DEEP = f"(nested deeper than {MAX_JSON_DEPTH} levels)"


def json_ready(document: Any) -> Any:
    """The document as plain JSON data, built without recursion: tables and arrays at any depth,
    bytes as text, floats JSON cannot hold (nan, inf) and every other value (Decimal, datetime)
    as their string form."""
    root: list[Any] = [None]
    pending: list[tuple[Any, Any, Any, int]] = [(document, root, 0, 1)]
    while pending:
        value, parent, key, depth = pending.pop()
        if isinstance(value, dict | list | tuple) and depth > MAX_JSON_DEPTH:
            parent[key] = TOO_DEEP
        elif isinstance(value, dict):
            parent[key] = table = dict.fromkeys(str(k) for k in value)
            pending += ((item, table, str(k), depth + 1) for k, item in value.items())
        elif isinstance(value, list | tuple):
            parent[key] = array = [None] * len(value)
            pending += ((item, array, i, depth + 1) for i, item in enumerate(value))
        else:
            parent[key] = _json_scalar(value)
    return root[0]


def _json_scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
