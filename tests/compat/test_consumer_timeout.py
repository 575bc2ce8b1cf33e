"""The delivery acknowledgement timeout (`consumer_timeout`) as RabbitMQ 3.10 does it.

RabbitMQ 3.10 has one broker-wide setting, `consumer_timeout` (milliseconds, default 1800000 =
30 minutes); a channel takes the value in force when it is opened. The `x-consumer-timeout`
queue argument and Basic.Consume argument (RabbitMQ 3.12+) are accepted but ignored.

When the OLDEST unacknowledged delivery of a channel is older than the timeout - a consumer's
delivery or a Basic.Get with manual ack, also after its consumer was cancelled - the broker closes
that channel (the connection and its other channels stay open) with

    406 "PRECONDITION_FAILED - delivery acknowledgement on channel N timed out. Timeout value
    used: T ms. This timeout value can be configured, see consumers doc guide to learn more"

(class 0, method 0). Every consumer of the channel goes with it and all its unacked messages
are requeued as on any channel close: redelivered, and counted as a return by a quorum queue
(x-delivery-count 1). Acking the oldest delivery moves the deadline to the next oldest.

RabbitMQ only checks on its channel tick (`channel_tick_interval`, default 60 s), so a channel is
closed between T and T + 60 s after the delivery.

These tests assume the broker under test has consumer_timeout = 2000 ms. For RabbitMQ the
module fixture `consumer_timeout` sets it (and channel_tick_interval = 200 ms, so the close comes
2.0-2.2 s after the delivery) with `rabbitmqctl eval 'application:set_env(...)'`, and restores the
previous values afterwards (set_env of the old value; unset_env only for a key that was unset:
consumer_timeout's 1800000 default lives in the rabbit application's environment, so unsetting
it would disable the timeout). That needs rabbitmqctl for the local node (root, or passwordless
sudo); otherwise the module is skipped. While this module runs, every channel opened on that
RabbitMQ node gets the 2000 ms timeout, other test runs included. For Warren the module starts a
broker of its own with consumer_timeout = 2000 ms (checked every 200 ms). The tests allow the broker
up to CHECK_SLACK seconds after the deadline to notice.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    Collector,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    publish_confirmed,
    pump,
    wait_message_count,
)
from tests.conftest import TARGET
from tests.support import BrokerProcess, shipped_config, write_config

pytestmark = pytest.mark.timeout(60)

TIMEOUT_MS = 2000
TICK_MS = 200  # RabbitMQ's channel_tick_interval while this module runs
TIMEOUT = TIMEOUT_MS / 1000
CHECK_SLACK = 3.0  # how long after the deadline the broker may take to close the channel
EARLY = 0.1  # the client sees the delivery a little after the broker stamped it


def _rabbitmqctl_eval(expression: str) -> str:
    """`rabbitmqctl eval EXPRESSION` on the local node; its printed result."""
    command = ["rabbitmqctl", "eval", expression]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


KEYS = {"consumer_timeout": TIMEOUT_MS, "channel_tick_interval": TICK_MS}


@pytest.fixture(scope="module")
def amqp_url(target_is_warren: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """For Warren, a broker of this module's own with consumer_timeout = 2000 ms checked every
    200 ms (the session's broker keeps the 30-minute default); another target as given."""
    if not target_is_warren:
        yield TARGET
        return
    directory = tmp_path_factory.mktemp("ack-timeout")
    config = shipped_config()
    config["limits"]["consumer_timeout"] = TIMEOUT_MS
    config["limits"]["consumer_timeout_check"] = TICK_MS / 1000
    broker = BrokerProcess(directory, write_config(directory, config))
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def consumer_timeout(target_is_warren: bool, amqp_url: str) -> Iterator[float]:
    """The broker's consumer_timeout in seconds (2.0); set on RabbitMQ for the module's duration
    (see the module docstring), left to Warren's configuration otherwise."""
    if target_is_warren:
        yield TIMEOUT
        return
    if urlparse(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("consumer_timeout is set with rabbitmqctl on the local node only")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl to set RabbitMQ's consumer_timeout")
    getters = ", ".join(f"application:get_env(rabbit, {key})" for key in KEYS)
    setters = ", ".join(f"application:set_env(rabbit, {key}, {ms})" for key, ms in KEYS.items())
    try:
        # one eval (each starts an Erlang VM): remember the old values, then set ours
        saved = _rabbitmqctl_eval(f"Old = {{{getters}}}, {setters}, Old.")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot set RabbitMQ's consumer_timeout with rabbitmqctl: {exc}")
    # e.g. {{ok,1800000},{ok,60000}}; 'undefined' for a key that was not set
    old = re.findall(r"\{ok,(\d+)\}|(undefined)", saved)
    assert len(old) == len(KEYS), f"unexpected rabbitmqctl output {saved!r}"
    try:
        yield TIMEOUT
    finally:
        restore = [
            f"application:set_env(rabbit, {key}, {value})"
            if value
            else f"application:unset_env(rabbit, {key})"
            for key, (value, _) in zip(KEYS, old, strict=True)
        ]
        _rabbitmqctl_eval(", ".join(restore) + ".")


def timeout_text(channel: BlockingChannel) -> str:
    return (
        f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel.channel_number} "
        f"timed out. Timeout value used: {TIMEOUT_MS} ms. This timeout value can be configured, "
        "see consumers doc guide to learn more"
    )


def _fresh(params: pika.URLParameters) -> BlockingConnection:
    """A connection opened now, so its channels take the timeout the fixture set."""
    return pika.BlockingConnection(params)


@pytest.mark.parametrize("how", ["consumer", "cancelled-consumer", "basic-get"])
def test_unacked_delivery_closes_the_channel(
    consumer_timeout: float,
    params: pika.URLParameters,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    how: str,
) -> None:
    """A delivery left unacked past consumer_timeout - to a consumer, to a consumer cancelled
    since, or by Basic.Get without no_ack - gets its channel closed with 406 and the exact text
    above, not before the timeout; the connection stays open and the message is requeued as
    redelivered."""
    channel.queue_declare(cleanup.queue(name))
    connection = _fresh(params)
    try:
        worker = connection.channel()
        publish_confirmed(connection, name, [b"slow"])
        if how == "basic-get":
            method, _, _ = worker.basic_get(name)
            assert method is not None
        else:
            collector = Collector()
            tag = worker.basic_consume(name, collector)
            collector.wait_for(connection, 1)
            if how == "cancelled-consumer":
                worker.basic_cancel(tag)
        delivered = time.monotonic()
        method, _, body = closed_then_requeued(
            connection, worker, name, consumer_timeout, delivered
        )
        assert connection.is_open
        assert (body, method.redelivered) == (b"slow", True)
    finally:
        if connection.is_open:
            connection.close()


def closed_then_requeued(
    connection: BlockingConnection,
    worker: BlockingChannel,
    name: str,
    consumer_timeout: float,
    since: float | None = None,
) -> tuple[Any, Any, bytes]:
    """Wait for the broker to close `worker` with the timeout's 406 (not before consumer_timeout
    has passed since `since`, when given), then take the requeued delivery from `name`."""
    with expect_channel_close(
        worker, 406, timeout_text(worker), timeout=consumer_timeout + CHECK_SLACK
    ):
        pass
    if since is not None:
        assert time.monotonic() - since >= consumer_timeout - EARLY
    wait_message_count(connection, name, 1)
    return connection.channel().basic_get(name, auto_ack=True)


def test_deadline_follows_the_oldest_unacked_delivery(
    consumer_timeout: float,
    params: pika.URLParameters,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """Acking the oldest delivery in time saves the channel until the next oldest one is too
    old: the close comes consumer_timeout after the SECOND delivery."""
    channel.queue_declare(cleanup.queue(name))
    connection = _fresh(params)
    try:
        worker = connection.channel()
        collector = Collector()
        worker.basic_consume(name, collector)
        publish_confirmed(connection, name, [b"first"])
        collector.wait_for(connection, 1)
        pump(connection, consumer_timeout / 2)
        publish_confirmed(connection, name, [b"second"])
        collector.wait_for(connection, 2)
        second = time.monotonic()
        pump(connection, consumer_timeout / 4)
        worker.basic_ack(collector.deliveries[0].method.delivery_tag)
        method, _, body = closed_then_requeued(connection, worker, name, consumer_timeout, second)
        assert (body, method.redelivered) == (b"second", True)
    finally:
        if connection.is_open:
            connection.close()


def test_a_delivery_given_back_by_tx_rollback_still_times_out(
    consumer_timeout: float,
    params: pika.URLParameters,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """The oldest delivery is acked in a transaction that rolls back, and the newer one is acked
    for good: the rolled-back one is unacked again, with its first delivery time, so the
    channel still closes when it grows too old, and it is requeued."""
    channel.queue_declare(cleanup.queue(name))
    connection = _fresh(params)
    try:
        worker = connection.channel()
        publish_confirmed(connection, name, [b"first", b"second"])
        tags = [worker.basic_get(name)[0].delivery_tag for _ in range(2)]
        delivered = time.monotonic()
        worker.tx_select()
        worker.basic_ack(tags[0])
        worker.tx_rollback()
        worker.basic_ack(tags[1])
        worker.tx_commit()
        method, _, body = closed_then_requeued(
            connection, worker, name, consumer_timeout, delivered
        )
        assert (body, method.redelivered) == (b"first", True)
    finally:
        if connection.is_open:
            connection.close()


def test_the_whole_channel_goes_other_channels_stay(
    consumer_timeout: float,
    params: pika.URLParameters,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """One late consumer closes its channel with every consumer on it (their unacked messages
    requeued too); the connection's other channels - one consuming with auto-ack, one acking at
    once - keep going."""
    slow, quick, auto = (cleanup.queue(f"{name}-{q}") for q in ("slow", "quick", "auto"))
    for queue in (slow, quick, auto):
        channel.queue_declare(queue)
    connection = _fresh(params)
    try:
        worker = connection.channel()
        holder, partner = Collector(), Collector()
        worker.basic_consume(slow, holder)
        worker.basic_consume(quick, partner)
        publish_confirmed(connection, slow, [b"held"])
        publish_confirmed(connection, quick, [b"partner"])
        holder.wait_for(connection, 1)
        partner.wait_for(connection, 1)
        acking, auto_acked = Collector(auto_ack_after=True), Collector()
        connection.channel().basic_consume(quick, acking)
        connection.channel().basic_consume(auto, auto_acked, auto_ack=True)
        publish_confirmed(connection, auto, [b"a1"])
        with expect_channel_close(
            worker, 406, timeout_text(worker), timeout=consumer_timeout + CHECK_SLACK
        ):
            pass
        # the partner's unacked message comes back and goes to the other consumer of `quick`
        acking.wait_for(connection, 1)
        assert acking.deliveries[0].method.redelivered
        wait_message_count(connection, slow, 1)
        publish_confirmed(connection, auto, [b"a2"])
        auto_acked.wait_for(connection, 2)
        assert channel.queue_declare(slow, passive=True).method.consumer_count == 0
        assert channel.queue_declare(quick, passive=True).method.consumer_count == 1
        assert channel.queue_declare(auto, passive=True).method.consumer_count == 1
    finally:
        if connection.is_open:
            connection.close()


def test_quorum_queue_counts_the_timeout_as_a_return(
    consumer_timeout: float,
    params: pika.URLParameters,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """The requeue after a timeout is an ordinary return for a quorum queue: the next delivery
    is redelivered with x-delivery-count 1 (and it counts towards x-delivery-limit)."""
    arguments = {"x-queue-type": "quorum"}
    channel.queue_declare(cleanup.queue(name), durable=True, arguments=arguments)
    connection = _fresh(params)
    try:
        worker = connection.channel()
        collector = Collector()
        worker.basic_consume(name, collector)
        publish_confirmed(connection, name, [b"slow"])
        collector.wait_for(connection, 1)
        assert collector.deliveries[0].properties.headers is None
        method, properties, _ = closed_then_requeued(connection, worker, name, consumer_timeout)
        assert method.redelivered
        assert properties.headers == {"x-delivery-count": 1}
    finally:
        if connection.is_open:
            connection.close()


def test_x_consumer_timeout_on_basic_consume_is_ignored(
    consumer_timeout: float,
    params: pika.URLParameters,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
) -> None:
    """Neither RabbitMQ 3.10 nor Warren has a per-consumer timeout: an x-consumer-timeout of
    60 s on Basic.Consume is accepted and changes nothing."""
    channel.queue_declare(cleanup.queue(name))
    connection = _fresh(params)
    try:
        worker = connection.channel()
        collector = Collector()
        worker.basic_consume(name, collector, arguments={"x-consumer-timeout": 60000})
        publish_confirmed(connection, name, [b"slow"])
        collector.wait_for(connection, 1)
        with expect_channel_close(
            worker, 406, timeout_text(worker), timeout=consumer_timeout + CHECK_SLACK
        ):
            pass
        wait_message_count(connection, name, 1)
    finally:
        if connection.is_open:
            connection.close()


def test_x_consumer_timeout_queue_argument(
    consumer_timeout: float,
    params: pika.URLParameters,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    target_is_warren: bool,
) -> None:
    """RabbitMQ 3.10 accepts x-consumer-timeout on a queue and ignores it (it arrived in 3.12);
    Warren acts on it as 3.12+ does: a queue's own timeout (here 600 ms) replaces the broker's
    for deliveries from that queue, and the close names it."""
    channel.queue_declare(cleanup.queue(name), arguments={"x-consumer-timeout": 600})
    connection = _fresh(params)
    try:
        worker = connection.channel()
        collector = Collector()
        worker.basic_consume(name, collector)
        publish_confirmed(connection, name, [b"slow"])
        collector.wait_for(connection, 1)
        seen = time.monotonic()
        used = 600 if target_is_warren else TIMEOUT_MS
        text = timeout_text(worker).replace(f"used: {TIMEOUT_MS} ms", f"used: {used} ms")
        with expect_channel_close(worker, 406, text, timeout=consumer_timeout + CHECK_SLACK):
            pass
        waited = time.monotonic() - seen
        if target_is_warren:
            assert 0.6 - EARLY <= waited < consumer_timeout - EARLY
        else:
            assert waited >= consumer_timeout - EARLY
        wait_message_count(connection, name, 1)
    finally:
        if connection.is_open:
            connection.close()
