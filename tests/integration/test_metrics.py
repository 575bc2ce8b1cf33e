"""Prometheus /metrics scraped during a pika workload: exact queue depths, gauges and counters
under RabbitMQ's metric names, and the write-ahead log's fsync histogram."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import metrics
from broker.config import load_config
from broker.metrics import MetricsServer
from broker.server import Broker
from tests.support import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

DURABLE, TRANSIENT, IDLE = "metrics-durable", "metrics-transient", "metrics-idle"


@pytest.fixture
async def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Broker]:
    # These tests scrape several times a second and need each scrape fresh.
    monkeypatch.setattr(metrics, "RENDER_REUSE_SECONDS", 0.0)
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=free_port(), management_port=0
    )
    async with Broker(config) as running:
        yield running


def scrape(port: int, path: str = "/metrics/per-object") -> Samples:
    """Per-object by default: most tests read a queue's own series."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def queue_value(samples: Samples, name: str, queue: str) -> float:
    return value(samples, name, vhost="/", queue=queue)


def workload_and_scrapes(url: str, port: int) -> tuple[Samples, Samples]:
    """Publish, consume and get; scrape with the clients connected, then after they leave."""
    publisher = pika.BlockingConnection(pika.URLParameters(url))
    consumer = pika.BlockingConnection(pika.URLParameters(url))
    try:
        publishing = publisher.channel()
        publishing.confirm_delivery()
        publishing.queue_declare(DURABLE, durable=True)
        publishing.queue_declare(TRANSIENT)
        publishing.queue_declare(IDLE)
        persistent = pika.BasicProperties(delivery_mode=2)
        for n in range(10):
            publishing.basic_publish("", DURABLE, f"d{n}".encode(), persistent)
        for n in range(6):
            publishing.basic_publish("", TRANSIENT, f"t{n}".encode())
        with pytest.raises(pika.exceptions.UnroutableError):
            publishing.basic_publish("", "nowhere", b"returned", mandatory=True)
        publishing.basic_publish("", "nowhere", b"dropped")

        # A consumer with prefetch 4 acks its first two deliveries: 6 delivered, 4 unacked.
        consuming = consumer.channel()
        consuming.basic_qos(prefetch_count=4)
        deliveries = []
        consuming.basic_consume(DURABLE, lambda _ch, method, _p, _b: deliveries.append(method))
        while len(deliveries) < 4:
            consumer.process_data_events(time_limit=1)
        consuming.basic_ack(deliveries[0].delivery_tag)
        consuming.basic_ack(deliveries[1].delivery_tag)
        while len(deliveries) < 6:
            consumer.process_data_events(time_limit=1)

        # basic.get: one rejected and fetched again (redelivered, kept unacked), one auto-acked,
        # one on an empty queue.
        getting = consumer.channel()
        first, _, _ = getting.basic_get(TRANSIENT)
        getting.basic_reject(first.delivery_tag, requeue=True)
        again, _, _ = getting.basic_get(TRANSIENT)
        assert again.redelivered
        assert getting.basic_get(TRANSIENT, auto_ack=True)[0] is not None
        assert getting.basic_get(IDLE)[0] is None
        during = scrape(port)
    finally:
        consumer.close()
        publisher.close()
    return during, scrape(port)


def read_ahead_scrapes(url: str, port: int) -> tuple[Samples, Samples]:
    """A paged backlog whose one consumer (prefetch 1) made it read ahead and then stalled:
    scraped once the read is back, then after a purge emptied the window."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare("metrics-read-ahead", durable=True)
    persistent = pika.BasicProperties(delivery_mode=2)
    for _ in range(3000):
        channel.basic_publish("", "metrics-read-ahead", b"x" * 1024, persistent)
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume("metrics-read-ahead", lambda *delivery: None)
    for _ in range(200):  # bounded: 10 s
        connection.process_data_events(time_limit=0.05)
        during = scrape(port, "/metrics")
        if value(during, "warren_read_ahead_bytes") and not value(
            during, "warren_read_ahead_in_flight_bytes"
        ):
            break
    channel.queue_purge("metrics-read-ahead")
    after = scrape(port, "/metrics")
    connection.close()
    return during, after


async def test_the_read_ahead_budget_is_on_metrics(broker: Broker) -> None:
    """What queues hold read back shows while it is held and goes when the window empties."""
    port = broker.config.metrics_port
    during, after = await asyncio.to_thread(read_ahead_scrapes, broker.url, port)
    assert value(during, "warren_read_ahead_limit_bytes") == broker.config.limits.read_ahead_bytes
    assert value(during, "warren_read_ahead_bytes") > 2000 * 1024  # most of the backlog
    assert value(during, "warren_read_ahead_in_flight_bytes") == 0
    assert value(during, "warren_read_ahead_waiting_queues") == 0
    assert value(after, "warren_read_ahead_bytes") == 0
    # The peak stays when the window empties; one queue far under the limit never waits.
    peak = value(after, "warren_read_ahead_peak_bytes")
    assert peak >= value(during, "warren_read_ahead_bytes") > 0
    assert value(after, "warren_read_ahead_waits_total") == 0


async def test_metrics_follow_a_pika_workload(broker: Broker) -> None:
    port = broker.config.metrics_port
    during, after = await asyncio.to_thread(workload_and_scrapes, broker.url, port)

    [identity] = [dict(labels) for name, labels in during if name == "rabbitmq_identity_info"]
    assert identity["rabbitmq_cluster"] == "warren"
    assert identity["rabbitmq_node"].startswith("warren@")
    assert value(during, "rabbitmq_connections") == 2
    assert value(during, "rabbitmq_channels") == 3
    assert value(during, "rabbitmq_consumers") == 1
    assert value(during, "rabbitmq_queues") == 3
    expected_depths = {DURABLE: (4, 4, 1, 10), TRANSIENT: (4, 1, 0, 6), IDLE: (0, 0, 0, 0)}
    for queue, (ready, unacked, consumers, published) in expected_depths.items():
        assert queue_value(during, "rabbitmq_queue_messages_ready", queue) == ready
        assert queue_value(during, "rabbitmq_queue_messages_unacked", queue) == unacked
        assert queue_value(during, "rabbitmq_queue_messages", queue) == ready + unacked
        assert queue_value(during, "rabbitmq_queue_consumers", queue) == consumers
        assert queue_value(during, "rabbitmq_queue_messages_published_total", queue) == published

    counters = {
        "rabbitmq_channel_messages_published_total": 18,
        "rabbitmq_channel_messages_confirmed_total": 18,
        "rabbitmq_channel_messages_unroutable_returned_total": 1,
        "rabbitmq_channel_messages_unroutable_dropped_total": 1,
        "rabbitmq_channel_messages_delivered_ack_total": 6,
        "rabbitmq_channel_messages_delivered_total": 0,
        "rabbitmq_channel_messages_acked_total": 2,
        "rabbitmq_channel_messages_redelivered_total": 1,
        "rabbitmq_channel_get_ack_total": 2,
        "rabbitmq_channel_get_total": 1,
        "rabbitmq_channel_get_empty_total": 1,
        "rabbitmq_connections_opened_total": 2,
        "rabbitmq_channels_opened_total": 3,
        "rabbitmq_connections_closed_total": 0,
        "rabbitmq_channels_closed_total": 0,
        "rabbitmq_channel_messages_unacked": 5,
        "rabbitmq_channel_consumers": 1,
        "rabbitmq_consumer_prefetch": 4,
        "rabbitmq_channel_messages_unconfirmed": 0,
    }
    assert {name: value(during, name) for name in counters} == counters
    amqp = {"protocol": "amqp091"}
    classic = {**amqp, "queue_type": "rabbit_classic_queue"}
    assert value(during, "rabbitmq_global_messages_received_total", **amqp) == 18
    assert value(during, "rabbitmq_global_messages_received_confirm_total", **amqp) == 18
    assert value(during, "rabbitmq_global_messages_routed_total", **amqp) == 16
    assert value(during, "rabbitmq_global_messages_delivered_total", **classic) == 9
    assert value(during, "rabbitmq_global_messages_acknowledged_total", **classic) == 2

    # The durable queue's persistent messages went through the log and its fsyncs.
    fsyncs = value(during, "warren_wal_fsyncs_total")
    assert fsyncs >= 1
    assert value(during, "warren_wal_fsync_seconds_count") >= 1
    assert value(during, "warren_wal_fsync_seconds_bucket", le="+Inf") == value(
        during, "warren_wal_fsync_seconds_count"
    )
    assert value(during, "warren_wal_bytes_written_total") > 10 * len(b"d0")
    assert value(during, "warren_wal_disk_bytes") > 0

    # Clients gone: unacked messages are back in their queues, churn counters moved on.
    assert value(after, "rabbitmq_connections") == 0
    assert value(after, "rabbitmq_channels") == 0
    assert value(after, "rabbitmq_connections_closed_total") == 2
    assert value(after, "rabbitmq_channels_closed_total") == 3
    assert queue_value(after, "rabbitmq_queue_messages_ready", DURABLE) == 8
    assert queue_value(after, "rabbitmq_queue_messages_unacked", DURABLE) == 0
    assert queue_value(after, "rabbitmq_queue_messages_ready", TRANSIENT) == 5
    assert value(after, "rabbitmq_channel_messages_published_total") == 18


async def test_two_brokers_in_one_process_keep_their_own_metrics(tmp_path: Path) -> None:
    """Each MetricsServer has its own registry: no duplicate-metric clash, no shared values."""
    ports = free_port(), free_port()
    configs = [
        load_config().with_overrides(
            port=0, data_dir=str(tmp_path / str(port)), metrics_port=port, management_port=0
        )
        for port in ports
    ]
    async with Broker(configs[0]) as first, Broker(configs[1]):
        await asyncio.to_thread(publish_one, first.url)
        samples = [await asyncio.to_thread(scrape, port) for port in ports]
    assert [value(s, "rabbitmq_channel_messages_published_total") for s in samples] == [1, 0]


def publish_one(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    connection.channel().basic_publish("", "nowhere", b"x")
    connection.close()


async def test_unknown_path_is_404_and_stop_closes_the_port(tmp_path: Path) -> None:
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=0, management_port=0
    )
    server = MetricsServer(Broker(config), "127.0.0.1", 0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    with pytest.raises(urllib.error.HTTPError) as error:
        await asyncio.to_thread(urllib.request.urlopen, f"{url}/other", None, 5)
    assert error.value.code == 404
    await server.stop()
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(urllib.request.urlopen, f"{url}/metrics", None, 5)


async def test_scrapes_within_a_second_share_one_rendering(tmp_path: Path) -> None:
    """Rendering is reused for a second, so eager scrapers cannot keep the loop busy."""
    config = load_config().with_overrides(
        port=0, data_dir=str(tmp_path / "d"), metrics_port=free_port(), management_port=0
    )
    async with Broker(config) as running:
        port = running.config.metrics_port
        first = await asyncio.to_thread(scrape, port)
        running.counters.published += 5
        assert await asyncio.to_thread(scrape, port) == first
        assert first[("rabbitmq_resident_memory_limit_bytes", ())] == running.memory.limit
        assert first[("rabbitmq_alarms_memory_used_watermark", ())] == 0


def dead_letter_workload(url: str, port: int) -> Samples:
    """Three messages expire into a dead-letter queue, two fall off a length limit without one,
    one is rejected without one."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("dl-target")
        to_target = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dl-target"}
        channel.queue_declare("dl-ttl", arguments={"x-message-ttl": 0, **to_target})
        channel.queue_declare("dl-capped", arguments={"x-max-length": 1})
        channel.queue_declare("dl-plain")
        for body in (b"a", b"b", b"c"):
            channel.basic_publish("", "dl-ttl", body)
            channel.basic_publish("", "dl-capped", body)
        channel.basic_publish("", "dl-plain", b"refused")
        method, _, _ = channel.basic_get("dl-plain")
        channel.basic_reject(method.delivery_tag, requeue=False)
        assert channel.queue_declare("dl-target", passive=True).method.message_count == 3
    finally:
        connection.close()
    return scrape(port)


async def test_dead_lettered_counters_have_rabbitmq_names_reasons_and_strategies(
    broker: Broker,
) -> None:
    samples = await asyncio.to_thread(dead_letter_workload, broker.url, broker.config.metrics_port)
    classic = {"queue_type": "rabbit_classic_queue"}
    moved, dropped = (
        {**classic, "dead_letter_strategy": "at_least_once"},
        {
            **classic,
            "dead_letter_strategy": "disabled",
        },
    )
    prefix = "rabbitmq_global_messages_dead_lettered_"
    assert value(samples, prefix + "expired_total", **moved) == 3
    assert value(samples, prefix + "expired_total", **dropped) == 0
    assert value(samples, prefix + "maxlen_total", **dropped) == 2
    assert value(samples, prefix + "rejected_total", **dropped) == 1
    assert value(samples, prefix + "delivery_limit_total", **moved) == 0
    assert value(samples, prefix + "confirmed_total", **moved) == 3


async def test_metrics_aggregates_queues_and_per_object_lists_each(broker: Broker) -> None:
    """rabbitmq_prometheus's split: /metrics has one sample per queue metric whatever the
    number of queues (a scrape stays cheap with ten thousand), the node's sum;
    /metrics/per-object has one per queue with vhost and queue labels."""
    port = broker.config.metrics_port

    def scenario() -> tuple[Samples, Samples]:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        for n, count in enumerate((3, 4, 0)):
            channel.queue_declare(f"agg-{n}")
            for _ in range(count):
                channel.basic_publish("", f"agg-{n}", b"x")
        channel.queue_declare("agg-0", passive=True)  # a round trip: the publishes are in
        connection.close()
        return scrape(port, "/metrics"), scrape(port, "/metrics/per-object")

    aggregated, per_object = await asyncio.to_thread(scenario)
    assert value(aggregated, "rabbitmq_queue_messages_ready") == 7
    assert value(aggregated, "rabbitmq_queue_messages_published_total") == 7
    assert not [key for key in aggregated if key[0].startswith("rabbitmq_queue_") and key[1]]
    assert [queue_value(per_object, "rabbitmq_queue_messages_ready", f"agg-{n}")
            for n in range(3)] == [3, 4, 0]  # fmt: skip
    assert value(aggregated, "rabbitmq_queues") == value(per_object, "rabbitmq_queues") == 3
