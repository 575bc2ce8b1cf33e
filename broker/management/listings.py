"""GET handlers: overview, nodes, and the listings of every kind of object, filtered to what the
caller may see (see `access`)."""

from __future__ import annotations

import os
import resource
import shutil
import threading
import time
from collections.abc import Iterator

from aiohttp import web

from broker import __version__
from broker.amqp.connection import AMQPConnection
from broker.core.vhost import ALL_EXCHANGE_TYPES, VirtualHost
from broker.management import rows
from broker.management.context import Context, caller, listing, one, respond, vhost_of
from broker.management.errors import not_found
from broker.management.rows import Row

RABBITMQ_VERSION = "3.10.8"  # the release whose management API Warren answers as
NODE_COUNTS = ("publish", "deliver_get", "ack", "confirm", "redeliver", "get_empty")
STARTED = time.time()
CHURN_RATES = (
    "connection_created",
    "connection_closed",
    "queue_declared",
    "queue_created",
    "queue_deleted",
    "channel_created",
    "channel_closed",
)


class Listings:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.broker = context.broker

    def routes(self) -> list[web.RouteDef]:
        get = web.get
        return [
            get("/api/overview", self.overview),
            get("/api/nodes", self.nodes),
            get("/api/nodes/{node}", self.node),
            get("/api/queues", self.queues),
            get("/api/queues/{vhost}", self.queues),
            get("/api/queues/{vhost}/{name}", self.queue),
            get("/api/queues/{vhost}/{name}/bindings", self.queue_bindings),
            get("/api/exchanges", self.exchanges),
            get("/api/exchanges/{vhost}", self.exchanges),
            get("/api/exchanges/{vhost}/{name}", self.exchange),
            get("/api/exchanges/{vhost}/{name}/bindings/source", self.source_bindings),
            get("/api/exchanges/{vhost}/{name}/bindings/destination", self.destination_bindings),
            get("/api/bindings", self.bindings),
            get("/api/bindings/{vhost}", self.bindings),
            get("/api/connections", self.connections),
            get("/api/connections/{name}", self.connection),
            get("/api/connections/{name}/channels", self.connection_channels),
            get("/api/vhosts/{vhost}/connections", self.connections),
            get("/api/channels", self.channels),
            get("/api/channels/{name}", self.channel),
            get("/api/vhosts/{vhost}/channels", self.channels),
            get("/api/consumers", self.consumers),
            get("/api/consumers/{vhost}", self.consumers),
            get("/api/extensions", self.extensions),
        ]

    # ---------------------------------------------------------------------------- helpers
    def visible_vhosts(self, request: web.Request) -> list[VirtualHost]:
        """The vhost in the path, or every vhost the caller may see."""
        if "vhost" in request.match_info:
            return [vhost_of(request, self.context)]
        who = caller(request)
        return [
            vhost for name, vhost in sorted(self.broker.vhosts.items()) if who.may_see_vhost(name)
        ]

    def queue_rows(self, vhosts: list[VirtualHost]) -> Iterator[Row]:
        policies = self.broker.policies
        for vhost in vhosts:
            for queue in sorted(vhost.queues.values(), key=lambda q: q.name):
                policy = policies.row_for_queue(queue)
                yield rows.queue_row(queue, self.context.node, self.context.rates, policy)

    def open_connections(self, request: web.Request) -> list:
        """Opened connections the caller may see: its own, or (monitoring) everyone's."""
        who = caller(request)
        if "vhost" in request.match_info:
            names = {vhost_of(request, self.context).name}
        else:
            names = {name for name in self.broker.vhosts if who.may_list_vhost(name)}
        opened = [
            connection
            for connection in self.broker.connections
            if connection.vhost is not None
            and connection.vhost.name in names
            and who.may_see_connection(connection.user)
        ]
        return sorted(opened, key=lambda c: c.connected_at)

    # ---------------------------------------------------------------------------- overview
    async def overview(self, request: web.Request) -> web.Response:
        who = caller(request)  # monitoring users' totals cover every vhost
        vhosts = [vhost for name, vhost in self.broker.vhosts.items() if who.may_list_vhost(name)]
        connections = self.open_connections(request)
        channels = [ch for c in connections for ch in c.channels.values()]
        queues = [queue for vhost in vhosts for queue in vhost.queues.values()]
        ready = sum(queue.message_count for queue in queues)
        unacked = sum(queue.unacked_count for queue in queues)
        counters = self.broker.counters
        counts = node_counts(counters)
        config = self.broker.config
        http_port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        listeners = [
            {"node": self.context.node, "protocol": "amqp", "ip_address": config.listener.host,
             "port": self.broker.port, "socket_opts": {}},
            {"node": self.context.node, "protocol": "https" if request.secure else "http",
             "ip_address": config.management.listener.host, "port": http_port,
             "socket_opts": {}},
        ]  # fmt: skip
        if config.tls_listener is not None:
            listeners.append(
                {"node": self.context.node, "protocol": "amqp/ssl",
                 "ip_address": config.tls_listener.host, "port": self.broker.tls_port,
                 "socket_opts": {}}
            )  # fmt: skip
        document = {
            "management_version": RABBITMQ_VERSION,
            "rates_mode": "basic",
            "sample_retention_policies": {
                "global": [600, 3600, 28800, 86400],
                "basic": [600, 3600],
                "detailed": [600],
            },
            "exchange_types": exchange_types(),
            "product_version": __version__,
            "product_name": "Warren",
            "rabbitmq_version": RABBITMQ_VERSION,
            "cluster_name": config.cluster_name,
            "erlang_version": "none (Python)",
            "erlang_full_version": "none (Python)",
            "disable_stats": False,
            "enable_queue_totals": True,
            "node": self.context.node,
            "message_stats": rows.message_stats(
                NODE_COUNTS, counts, self.context.rates.rates("node", len(NODE_COUNTS))
            ),
            # rabbitmqadmin v2 before 2.8 requires these (Warren does not sample churn)
            "churn_rates": dict.fromkeys(CHURN_RATES, 0),
            "queue_totals": rows.message_totals(ready, unacked),
            "object_totals": {
                "connections": len(connections),
                "channels": len(channels),
                "exchanges": sum(len(vhost.exchanges) for vhost in vhosts),
                "queues": len(queues),
                "consumers": sum(len(queue.consumers) for queue in queues),
            },
            "statistics_db_event_queue": 0,
            "listeners": listeners,
            "contexts": [
                {
                    "node": self.context.node,
                    "description": "Warren Management",
                    "path": "/",
                    "port": str(http_port),
                }
            ],
        }
        return one(request, document)

    async def nodes(self, request: web.Request) -> web.Response:
        caller(request).require_monitor()
        return listing(request, [self.node_row()])

    async def node(self, request: web.Request) -> web.Response:
        caller(request).require_monitor()
        if request.match_info["node"] != self.context.node:
            raise not_found()
        return one(request, self.node_row())

    def node_row(self) -> Row:
        limits = self.broker.config.limits
        from broker.alarms import watermark_bytes

        used = self.broker.accounted_bytes()
        try:
            fd_used = len(os.listdir("/proc/self/fd"))
        except OSError:
            fd_used = 0
        fd_total = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        data_dir = self.broker.config.data_dir
        try:
            disk_free = shutil.disk_usage(data_dir if data_dir and data_dir.exists() else ".").free
        except OSError:
            disk_free = 0
        return {
            "name": self.context.node,
            "type": "disc",
            "running": True,
            "os_pid": str(os.getpid()),
            "mem_used": used,
            "mem_limit": watermark_bytes(limits.memory_high_watermark),
            "mem_alarm": self.broker.memory_alarm,
            "disk_free": disk_free,
            "disk_free_limit": 0,
            "disk_free_alarm": False,
            "fd_used": fd_used,
            "fd_total": fd_total if fd_total != resource.RLIM_INFINITY else 1 << 20,
            "sockets_used": len(self.broker.connections),
            "sockets_total": fd_total if fd_total != resource.RLIM_INFINITY else 1 << 20,
            "proc_used": threading.active_count(),
            "proc_total": 1 << 20,
            "uptime": int((time.time() - STARTED) * 1000),
            "partitions": [],
            "applications": [],
        }

    # ---------------------------------------------------------------------------- queues
    async def queues(self, request: web.Request) -> web.Response:
        return listing(request, self.queue_rows(self.visible_vhosts(request)))

    async def queue(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        queue = vhost.queues.get(request.match_info["name"])
        if queue is None:
            raise not_found()
        policy = self.broker.policies.row_for_queue(queue)
        row = rows.queue_row(queue, self.context.node, self.context.rates, policy)
        row["consumer_details"] = [
            consumer
            for connection in self.open_connections(request)
            for channel in connection.channels.values()
            for consumer in rows.consumer_rows(channel, self.context.node)
            if consumer["queue"]["name"] == queue.name
            and consumer["queue"]["vhost"] == queue.vhost_name
        ]
        row["deliveries"] = []
        row["incoming"] = []
        owner = queue.exclusive_owner
        if isinstance(owner, AMQPConnection):  # the connection that declared it exclusive
            row["owner_pid_details"] = rows.connection_details(owner)
        return one(request, row)

    async def queue_bindings(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        queue = vhost.queues.get(request.match_info["name"])
        if queue is None:
            raise not_found()
        explicit = sorted(
            (rows.explicit_binding_row(vhost.name, b) for b in queue.incoming.values()),
            key=lambda r: (r["source"], r["routing_key"]),
        )
        return listing(request, [rows.default_binding_row(vhost.name, queue.name), *explicit])

    # ---------------------------------------------------------------------------- exchanges
    async def exchanges(self, request: web.Request) -> web.Response:
        policies = self.broker.policies
        return listing(
            request,
            [
                rows.exchange_row(vhost.name, exchange, policies.row_for_exchange(vhost, exchange))
                for vhost in self.visible_vhosts(request)
                for exchange in sorted(vhost.exchanges.values(), key=lambda e: e.name)
            ],
        )

    async def exchange(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        exchange = vhost.exchanges.get(_exchange_name(request.match_info["name"]))
        if exchange is None:
            raise not_found()
        policy = self.broker.policies.row_for_exchange(vhost, exchange)
        row = rows.exchange_row(vhost.name, exchange, policy)
        row["incoming"] = []
        row["outgoing"] = []
        return one(request, row)

    async def source_bindings(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        exchange = vhost.exchanges.get(_exchange_name(request.match_info["name"]))
        if exchange is None:
            raise not_found()
        if not exchange.name:  # every queue's implicit binding, as RabbitMQ lists them
            defaults = [rows.default_binding_row(vhost.name, name) for name in sorted(vhost.queues)]
            return listing(request, defaults)
        found = [rows.explicit_binding_row(vhost.name, b) for b in exchange.bindings.values()]
        return listing(request, sorted(found, key=_binding_order))

    async def destination_bindings(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        exchange = vhost.exchanges.get(_exchange_name(request.match_info["name"]))
        if exchange is None:
            raise not_found()
        found = [rows.explicit_binding_row(vhost.name, b) for b in exchange.incoming.values()]
        return listing(request, sorted(found, key=_binding_order))

    async def bindings(self, request: web.Request) -> web.Response:
        """Each queue's implicit binding to the default exchange first, as RabbitMQ lists."""
        found: list[Row] = []
        for vhost in self.visible_vhosts(request):
            found += [rows.default_binding_row(vhost.name, name) for name in sorted(vhost.queues)]
            explicit = [
                rows.explicit_binding_row(vhost.name, binding)
                for exchange in vhost.exchanges.values()
                for binding in exchange.bindings.values()
            ]
            found += sorted(explicit, key=_binding_order)
        return listing(request, found)

    # ---------------------------------------------------------------------------- clients
    async def connections(self, request: web.Request) -> web.Response:
        node = self.context.node
        return listing(
            request, [rows.connection_row(c, node) for c in self.open_connections(request)]
        )

    def find_connection(self, request: web.Request):
        name = request.match_info["name"]
        who = caller(request)
        for connection in self.broker.connections:
            if (
                connection.name == name
                and connection.vhost is not None
                and who.may_see_connection(connection.user)
            ):
                return connection
        raise not_found()

    async def connection(self, request: web.Request) -> web.Response:
        row = rows.connection_row(self.find_connection(request), self.context.node)
        return one(request, row)

    async def connection_channels(self, request: web.Request) -> web.Response:
        connection = self.find_connection(request)
        node = self.context.node
        return listing(
            request,
            [
                rows.channel_row(channel, node)
                for channel in sorted(connection.channels.values(), key=lambda ch: ch.number)
            ],
        )

    async def channels(self, request: web.Request) -> web.Response:
        node = self.context.node
        return listing(
            request,
            [
                rows.channel_row(channel, node)
                for connection in self.open_connections(request)
                for channel in sorted(connection.channels.values(), key=lambda ch: ch.number)
            ],
        )

    async def channel(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        node = self.context.node
        for connection in self.open_connections(request):
            for channel in connection.channels.values():
                if rows.channel_name(channel) == name:
                    row = rows.channel_row(channel, node)
                    row["consumer_details"] = rows.consumer_rows(channel, node)
                    row["deliveries"] = []
                    row["publishes"] = []
                    return one(request, row)
        raise not_found()

    async def consumers(self, request: web.Request) -> web.Response:
        node = self.context.node
        return listing(
            request,
            [
                row
                for connection in self.open_connections(request)
                for channel in sorted(connection.channels.values(), key=lambda ch: ch.number)
                for row in rows.consumer_rows(channel, node)
            ],
        )

    async def extensions(self, request: web.Request) -> web.Response:
        return respond([])


def _exchange_name(name: str) -> str:
    """Paths name the default exchange amq.default."""
    return "" if name == "amq.default" else name


def _binding_order(row: Row) -> tuple[str, str, str]:
    return (row["source"], row["destination"], row["routing_key"])


def exchange_types() -> list[Row]:
    return [
        {"name": name, "description": f"AMQP {name} exchange", "enabled": True}
        for name in ALL_EXCHANGE_TYPES
    ]


def node_counts(counters) -> tuple[int, ...]:
    return (
        counters.published,
        counters.delivered + counters.delivered_no_ack + counters.get + counters.get_no_ack,
        counters.acked,
        counters.confirmed,
        counters.redelivered,
        counters.get_empty,
    )
