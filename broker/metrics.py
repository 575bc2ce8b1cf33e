"""Prometheus metrics: a collector that reads the broker at scrape time, served on GET /metrics
(aggregated) and GET /metrics/per-object.

The hot path only bumps plain integers (`Counters`, per-queue totals, the log's `WalStats`);
everything here runs when Prometheus scrapes, on the broker's loop, so a message pays nothing for
being measured. Names, types and labels follow RabbitMQ 3.10's rabbitmq_prometheus plugin, so the
RabbitMQ-Overview Grafana dashboard and existing alert rules work unchanged:

- totals and the channel counters are aggregated over the whole node (no labels), as the plugin's
  default endpoint does; they never go down when a channel closes;
- per-queue metrics are one sample each on /metrics, summed over the node's queues, so a scrape
  costs the same with ten thousand queues; /metrics/per-object has a sample per queue with
  `vhost` and `queue` labels, as the plugin's per-object endpoint does;
- `rabbitmq_global_*` are the 3.10 global counters (`protocol`, `queue_type` labels); Warren's
  queues all behave as classic queues, so their queue_type is rabbit_classic_queue;
- `warren_wal_*` describe the write-ahead log, which RabbitMQ does not have.

Each MetricsServer has its own CollectorRegistry, so several brokers in one process do not clash.
"""

from __future__ import annotations

import platform
import shutil
import socket
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UntypedMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from broker import __version__
from broker.core.dead_letter import DROPPED, MOVED
from broker.core.queue import Queue
from broker.core.stats import LatencyHistogram
from broker.http import HttpEndpoint

if TYPE_CHECKING:
    from broker.amqp.channel import Channel
    from broker.amqp.connection import AMQPConnection
    from broker.server import Broker

# The RabbitMQ release whose behaviour (and so whose metrics) Warren reproduces.
RABBITMQ_COMPATIBLE_VERSION = "3.10"
# rabbitmq_prometheus's endpoints: /metrics aggregates per-queue metrics over the node (one sample
# each, whatever the number of queues, so a scrape stays cheap); /metrics/per-object has a
# sample per queue, labelled with vhost and queue.
AGGREGATED_PATH = "/metrics"
PER_OBJECT_PATH = "/metrics/per-object"
# The classic text format, as RabbitMQ serves it and every Prometheus version reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOCOL = "amqp091"
QUEUE_TYPE = "rabbit_classic_queue"

# (family, name, help) of the per-queue metrics, in the order `_queue_values` gives them.
QUEUE_METRICS = (
    (GaugeMetricFamily, "rabbitmq_queue_messages_ready",
     "Messages ready to be delivered to consumers"),
    (GaugeMetricFamily, "rabbitmq_queue_messages_unacked",
     "Messages delivered to consumers but not yet acknowledged"),
    (GaugeMetricFamily, "rabbitmq_queue_messages",
     "Sum of ready and unacknowledged messages - total queue depth"),
    (GaugeMetricFamily, "rabbitmq_queue_consumers", "Consumers on a queue"),
    (CounterMetricFamily, "rabbitmq_queue_messages_published_total",
     "Total number of messages published to queues"),
    (CounterMetricFamily, "warren_queue_consumer_timeouts_total",
     "Channels closed because a delivery from this queue was not acknowledged in time"
     " (consumer_timeout / x-consumer-timeout)"),
)  # fmt: skip


def _queue_values(queue: Queue) -> tuple[int, ...]:
    ready, unacked = queue.message_count, queue.unacked_count
    return (
        ready,
        unacked,
        ready + unacked,
        len(queue.consumers),
        queue.published_total,
        queue.consumer_timeouts,
    )


# (metric name without rabbitmq_, Counters attribute, help) for the node-wide channel counters.
CHANNEL_COUNTERS = (
    ("channel_messages_published_total", "published", "messages published into an exchange"),
    ("channel_messages_confirmed_total", "confirmed", "messages confirmed to publishers"),
    (
        "channel_messages_unroutable_returned_total",
        "unroutable_returned",
        "messages published as mandatory and returned to the publisher as unroutable",
    ),
    (
        "channel_messages_unroutable_dropped_total",
        "unroutable_dropped",
        "messages published as non-mandatory and dropped as unroutable",
    ),
    (
        "channel_messages_delivered_ack_total",
        "delivered",
        "messages delivered to consumers in manual acknowledgement mode",
    ),
    (
        "channel_messages_delivered_total",
        "delivered_no_ack",
        "messages delivered to consumers in automatic acknowledgement mode",
    ),
    ("channel_messages_redelivered_total", "redelivered", "messages redelivered to consumers"),
    ("channel_messages_acked_total", "acked", "messages acknowledged by consumers"),
    (
        "channel_get_ack_total",
        "get",
        "messages fetched with basic.get in manual acknowledgement mode",
    ),
    (
        "channel_get_total",
        "get_no_ack",
        "messages fetched with basic.get in automatic acknowledgement mode",
    ),
    ("channel_get_empty_total", "get_empty", "times basic.get fetched no message"),
    ("connections_opened_total", "connections_opened", "connections opened"),
    ("connections_closed_total", "connections_closed", "connections closed or terminated"),
    ("channels_opened_total", "channels_opened", "channels opened"),
    ("channels_closed_total", "channels_closed", "channels closed"),
)

# rabbitmq_global_messages_*{protocol}: (name, Counters attribute, help).
GLOBAL_PROTOCOL_COUNTERS = (
    ("received_total", "published", "messages received from publishers"),
    (
        "received_confirm_total",
        "received_confirm",
        "messages received from publishers expecting confirmations",
    ),
    ("routed_total", "routed", "messages routed to queues"),
    (
        "unroutable_dropped_total",
        "unroutable_dropped",
        "messages published as non-mandatory and dropped as unroutable",
    ),
    (
        "unroutable_returned_total",
        "unroutable_returned",
        "messages published as mandatory and returned to the publisher as unroutable",
    ),
    ("confirmed_total", "confirmed", "messages confirmed to publishers"),
)

# rabbitmq_global_messages_*{protocol, queue_type}: (name, Counters attributes summed, help).
GLOBAL_QUEUE_TYPE_COUNTERS = (
    (
        "delivered_total",
        ("delivered", "delivered_no_ack", "get", "get_no_ack"),
        "messages delivered to consumers",
    ),
    (
        "delivered_consume_manual_ack_total",
        ("delivered",),
        "messages delivered with basic.consume and manual acknowledgement",
    ),
    (
        "delivered_consume_auto_ack_total",
        ("delivered_no_ack",),
        "messages delivered with basic.consume and automatic acknowledgement",
    ),
    (
        "delivered_get_manual_ack_total",
        ("get",),
        "messages delivered with basic.get and manual acknowledgement",
    ),
    (
        "delivered_get_auto_ack_total",
        ("get_no_ack",),
        "messages delivered with basic.get and automatic acknowledgement",
    ),
    ("get_empty_total", ("get_empty",), "times basic.get fetched no message"),
    ("redelivered_total", ("redelivered",), "messages redelivered to consumers"),
    ("acknowledged_total", ("acked",), "messages acknowledged by consumers"),
)


# rabbitmq_global_messages_dead_lettered_<reason>_total: (reason, what it counts).
DEAD_LETTER_REASONS = (
    ("expired", "message TTL exceeded"),
    ("rejected", "basic.reject or basic.nack"),
    ("maxlen", "overflow drop-head or reject-publish-dlx"),
    ("delivery_limit", "delivery-limit exceeded"),
)


def default_node_name() -> str:
    """RabbitMQ names nodes rabbit@<host>; dashboards group and label by this name."""
    return f"warren@{socket.gethostname()}"


class BrokerCollector(Collector):
    """Reads counters, queues, connections and the log of one broker at scrape time."""

    def __init__(self, broker: Broker, node: str, per_object: bool = True) -> None:
        self.broker = broker
        self.node = node
        self.per_object = per_object
        self.build_labels = {
            "rabbitmq_version": RABBITMQ_COMPATIBLE_VERSION,
            "product_name": "Warren",
            "product_version": __version__,
            "prometheus_client_version": version("prometheus-client"),
            "python_version": platform.python_version(),
        }

    def collect(self) -> Iterator[Metric]:
        yield from self._identity()
        yield from self._totals()
        yield from self._counters()
        yield from self._channel_gauges()
        yield from self._queues()
        yield from self._global()
        yield from self._storage()
        yield from self._memory()

    def _memory(self) -> Iterator[Metric]:
        """The memory alarm, under the names the dashboard's "memory available before
        publishers blocked" panel and alerts use."""
        memory = self.broker.memory
        yield GaugeMetricFamily(
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark: above it publishers are blocked",
            value=memory.limit,
        )
        yield GaugeMetricFamily(
            "rabbitmq_alarms_memory_used_watermark",
            "1 while the memory alarm blocks publishers",
            value=int(memory.active),
        )
        yield GaugeMetricFamily(
            "warren_memory_estimated_bytes",
            "The memory the alarm compares with the watermark: the process at start plus queues,"
            " client buffers and unwritten log records",
            value=memory.baseline + self.broker.accounted_bytes(),
        )

    def _identity(self) -> Iterator[Metric]:
        identity = UntypedMetricFamily(
            "rabbitmq_identity_info",
            "RabbitMQ node & cluster identity info",
            labels=("rabbitmq_node", "rabbitmq_cluster"),
        )
        identity.add_metric((self.node, self.broker.config.cluster_name), 1)
        yield identity
        labels = self.build_labels
        build = UntypedMetricFamily(
            "rabbitmq_build_info",
            "Version info: Warren, the RabbitMQ release it follows, Python",
            labels=tuple(labels),
        )
        build.add_metric(tuple(labels.values()), 1)
        yield build

    def _open_connections(self) -> list[AMQPConnection]:
        # Connections still in the handshake are not counted, so the gauge always equals
        # connections_opened_total - connections_closed_total.
        return [c for c in self.broker.connections if c.vhost is not None]

    def _channels(self) -> list[Channel]:
        return [ch for c in self._open_connections() for ch in c.channels.values()]

    def _all_queues(self) -> list[Queue]:
        return [q for vhost in self.broker.vhosts.values() for q in vhost.queues.values()]

    def _totals(self) -> Iterator[Metric]:
        queues = self._all_queues()
        for name, value, text in (
            ("connections", len(self._open_connections()), "Connections currently open"),
            ("channels", len(self._channels()), "Channels currently open"),
            ("consumers", sum(len(q.consumers) for q in queues), "Consumers currently connected"),
            ("queues", len(queues), "Queues available"),
        ):
            yield GaugeMetricFamily(f"rabbitmq_{name}", text, value=value)

    def _counters(self) -> Iterator[Metric]:
        counters = self.broker.counters
        for name, attribute, text in CHANNEL_COUNTERS:
            yield CounterMetricFamily(
                f"rabbitmq_{name}", f"Total number of {text}", value=getattr(counters, attribute)
            )

    def _channel_gauges(self) -> Iterator[Metric]:
        channels = self._channels()
        for name, value, text in (
            ("channel_consumers", sum(len(ch.consumers) for ch in channels), "Consumers"),
            (
                "channel_messages_unacked",
                sum(ch.unacked_count() for ch in channels),
                "Delivered but not yet acknowledged messages",
            ),
            (
                "channel_messages_unconfirmed",
                sum(ch.unconfirmed for ch in channels),
                "Published but not yet confirmed messages",
            ),
            (
                "channel_messages_uncommitted",
                sum(len(ch.tx.publishes) for ch in channels if ch.tx is not None),
                "Messages received in a transaction but not yet committed",
            ),
            (
                "channel_acks_uncommitted",
                sum(len(ch.tx.settlements) for ch in channels if ch.tx is not None),
                "Message acknowledgements in a transaction not yet committed",
            ),
            (
                "consumer_prefetch",
                sum(ch.prefetch_count for ch in channels),
                "Limit of unacknowledged messages for each consumer",
            ),
            (
                "channel_prefetch",
                sum(ch.global_prefetch for ch in channels),
                "Total limit of unacknowledged messages for all consumers on a channel",
            ),
        ):
            yield GaugeMetricFamily(f"rabbitmq_{name}", f"{text}, summed over channels", value)

    def _queues(self) -> Iterator[Metric]:
        """One sample per queue (vhost and queue labels) per-object; else one sample each,
        summed over the node's queues, as rabbitmq_prometheus aggregates them."""
        labels = ("vhost", "queue") if self.per_object else ()
        families = [family(name, text, labels=labels) for family, name, text in QUEUE_METRICS]
        queues = self._all_queues()
        if not self.per_object:
            totals = [0] * len(families)
            for queue in queues:
                for index, value in enumerate(_queue_values(queue)):
                    totals[index] += value
            for family, total in zip(families, totals, strict=True):
                family.add_metric((), total)
            yield from families
            return
        for queue in queues:
            key = (queue.vhost_name, queue.name)
            for family, value in zip(families, _queue_values(queue), strict=True):
                family.add_metric(key, value)
        yield from families

    def _global(self) -> Iterator[Metric]:
        counters = self.broker.counters
        prefix = "rabbitmq_global_messages_"
        for name, attribute, text in GLOBAL_PROTOCOL_COUNTERS:
            family = CounterMetricFamily(
                prefix + name, f"Total number of {text}", labels=("protocol",)
            )
            family.add_metric((PROTOCOL,), getattr(counters, attribute))
            yield family
        for name, attributes, text in GLOBAL_QUEUE_TYPE_COUNTERS:
            family = CounterMetricFamily(
                prefix + name, f"Total number of {text}", labels=("protocol", "queue_type")
            )
            family.add_metric((PROTOCOL, QUEUE_TYPE), sum(getattr(counters, a) for a in attributes))
            yield family
        yield from self._dead_lettered()
        consumers = GaugeMetricFamily(
            "rabbitmq_global_consumers", "Current number of consumers", labels=("protocol",)
        )
        consumers.add_metric((PROTOCOL,), sum(len(q.consumers) for q in self._all_queues()))
        yield consumers

    def _dead_lettered(self) -> Iterator[Metric]:
        """rabbitmq_global_messages_dead_lettered_*_total as RabbitMQ 3.10+ names them: every
        message that died, by reason, with dead_letter_strategy "disabled" where it was dropped
        (no dead-letter exchange) and "at_least_once" where it moved; "confirmed" counts the
        copies that reached a queue. Zero series are present, as RabbitMQ lists them."""
        counts: dict[tuple[str, str, str], int] = {}
        confirmed: dict[str, int] = {}
        for vhost in self.broker.vhosts.values():
            for key, value in vhost.dead_letters.counts.items():
                counts[key] = counts.get(key, 0) + value
            for queue_type, value in vhost.dead_letters.confirmed.items():
                confirmed[queue_type] = confirmed.get(queue_type, 0) + value
        queue_types = sorted({"classic", *(key[0] for key in counts), *confirmed})
        labels = ("queue_type", "dead_letter_strategy")
        for reason, text in DEAD_LETTER_REASONS:
            family = CounterMetricFamily(
                f"rabbitmq_global_messages_dead_lettered_{reason}_total",
                f"Total number of messages dead-lettered due to {text}",
                labels=labels,
            )
            for queue_type in queue_types:
                for strategy in (DROPPED, MOVED):
                    family.add_metric(
                        (f"rabbit_{queue_type}_queue", strategy),
                        counts.get((queue_type, reason, strategy), 0),
                    )
            yield family
        family = CounterMetricFamily(
            "rabbitmq_global_messages_dead_lettered_confirmed_total",
            "Total number of messages dead-lettered and confirmed by target queues",
            labels=labels,
        )
        for queue_type in queue_types:
            family.add_metric((f"rabbit_{queue_type}_queue", MOVED), confirmed.get(queue_type, 0))
        yield family

    def _storage(self) -> Iterator[Metric]:
        wal = self.broker.wal
        if wal is None:  # no data directory: nothing is written
            return
        stats = wal.stats
        for name, value, text in (
            ("fsyncs", stats.fsyncs, "fsync calls on log segments and their directory"),
            ("writes", stats.writes, "Batches of records written (one per group commit)"),
            ("bytes_written", stats.bytes_written, "Bytes written to the write-ahead log"),
        ):
            yield CounterMetricFamily(f"warren_wal_{name}_total", text, value=value)
        yield _histogram(
            "warren_wal_fsync_seconds",
            "Time to make one group commit durable (fsync of the segment, and of the directory"
            " after a new segment)",
            stats.fsync_latency,
        )
        yield GaugeMetricFamily(
            "warren_wal_disk_bytes",
            "Bytes in the log's segments, counting records not yet written",
            value=wal.disk_usage(),
        )
        yield GaugeMetricFamily(
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes (the data directory's file system)",
            value=shutil.disk_usage(wal.directory).free,
        )
        yield from self._read_ahead()

    def _read_ahead(self) -> Iterator[Metric]:
        """The budget queues share to read messages back ahead of their consumers: queues
        waiting for it while consumers wait too say limits.read_ahead_bytes is short."""
        budget = self.broker.store.read_ahead
        for name, value, text in (
            ("limit_bytes", budget.limit, "limits.read_ahead_bytes"),
            ("bytes", budget.held, "Bytes queues hold read back ahead of their consumers"),
            ("in_flight_bytes", budget.in_flight, "Of those, reads not back from disk yet"),
            ("waiting_queues", budget.waiting, "Queues waiting for room in the budget"),
            ("peak_bytes", budget.peak, "The most bytes held read back ahead at once"),
        ):
            yield GaugeMetricFamily(f"warren_read_ahead_{name}", text, value=value)
        yield CounterMetricFamily(
            "warren_read_ahead_waits",
            "Times a queue was told to wait for room in the budget",
            value=budget.waits,
        )


def _histogram(name: str, text: str, histogram: LatencyHistogram) -> HistogramMetricFamily:
    counts = list(histogram.counts)  # one snapshot: the worker thread may be observing
    buckets = []
    total = 0
    for bound, count in zip((*histogram.bounds, float("inf")), counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return HistogramMetricFamily(name, text, buckets=buckets, sum_value=histogram.sum_ns / 1e9)


RENDER_REUSE_SECONDS = 1.0


class MetricsServer(HttpEndpoint):
    """GET /metrics (aggregated) and /metrics/per-object on host:port, answered on the running
    loop from registries of our own."""

    def __init__(self, broker: Broker, host: str, port: int, node: str | None = None) -> None:
        node = node or default_node_name()
        self.registries = {
            AGGREGATED_PATH: _registry(BrokerCollector(broker, node, per_object=False)),
            PER_OBJECT_PATH: _registry(BrokerCollector(broker, node, per_object=True)),
        }
        self._rendered: dict[str, tuple[float, bytes]] = {}
        app = web.Application(client_max_size=1024)
        for path in self.registries:
            app.router.add_get(path, self._scrape)
        super().__init__(app, host, port, "metrics")

    async def _scrape(self, request: web.Request) -> web.Response:
        # Rendering runs on the broker's loop and grows with the number of queues (per-object):
        # several scrapers (or an eager one) within a second share one rendering.
        path = request.path
        now = time.monotonic()
        rendered_at, body = self._rendered.get(path, (-RENDER_REUSE_SECONDS, b""))
        if now - rendered_at >= RENDER_REUSE_SECONDS:
            body = generate_latest(self.registries[path])
            self._rendered[path] = (now, body)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _registry(collector: BrokerCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    # rabbitmq_process_{resident_memory_bytes,open_fds,max_fds}: the dashboard's names.
    ProcessCollector(namespace="rabbitmq", registry=registry)
    return registry
