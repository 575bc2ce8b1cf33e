"""The acknowledgement timeout as an operator sees it: the channel holding a delivery too long is
closed with RabbitMQ's 406, its message is requeued, a log line names the consumer and the
queue, and /metrics counts it per queue. (tests/compat/test_consumer_timeout.py checks the
protocol side against RabbitMQ too.)"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pika
import pika.exceptions

from tests.support import BrokerProcess, free_port, shipped_config, write_config


def test_a_consumer_that_never_acks_is_closed_logged_and_counted(tmp_path: Path) -> None:
    config = shipped_config()
    config["limits"]["consumer_timeout"] = 500
    config["limits"]["consumer_timeout_check"] = 0.1
    metrics_port = free_port()
    broker = BrokerProcess(
        tmp_path, write_config(tmp_path, config), "--metrics-port", str(metrics_port)
    )
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("orders")
        channel.basic_publish("", "orders", b"charge me")
        worker = connection.channel()
        got: list[bytes] = []
        worker.basic_consume("orders", lambda ch, m, p, body: got.append(body), consumer_tag="w1")
        deadline = time.monotonic() + 10
        while worker.is_open and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
        assert got == [b"charge me"] and worker.is_closed
        reason = worker._closing_reason
        assert isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        assert reason.reply_code == 406
        assert "timed out. Timeout value used: 500 ms" in reason.reply_text
        assert channel.queue_declare("orders", passive=True).method.message_count == 1
        connection.close()
        log = broker.log_text()
        assert "event=consumer.timeout" in log
        line = next(line for line in log.splitlines() if "event=consumer.timeout" in line)
        assert "queue=orders" in line and "consumer=w1" in line and "timeout_ms=500" in line
        url = f"http://127.0.0.1:{metrics_port}/metrics/per-object"
        with urllib.request.urlopen(url) as response:
            text = response.read().decode()
        assert 'warren_queue_consumer_timeouts_total{queue="orders",vhost="/"} 1.0' in text
    finally:
        broker.stop()
