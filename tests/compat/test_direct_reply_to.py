"""Direct reply-to (amq.rabbitmq.reply-to): RPC replies without a reply queue."""

from __future__ import annotations

import time

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import expect_channel_close

PSEUDO = "amq.rabbitmq.reply-to"


def test_rpc_round_trip_through_direct_reply_to(
    connection: BlockingConnection, channel: BlockingChannel, params: pika.URLParameters, name: str
) -> None:
    """The requester consumes the pseudo-queue with no-ack and publishes with reply_to set to
    it; the server sees a rewritten amq.rabbitmq.reply-to.<token> address, and a reply sent to
    it through the default exchange reaches the requester."""
    server_connection = pika.BlockingConnection(params)
    try:
        server = server_connection.channel()
        server.queue_declare(name, exclusive=True)
        replies: list[bytes] = []
        channel.basic_consume(PSEUDO, lambda ch, m, p, body: replies.append(body), auto_ack=True)
        channel.basic_publish(
            "", name, b"what is 6 x 7", pika.BasicProperties(reply_to=PSEUDO, correlation_id="1")
        )
        deadline = time.monotonic() + 5
        request = None
        while request is None and time.monotonic() < deadline:
            method, properties, body = server.basic_get(name, auto_ack=True)
            if method is not None:
                request = (properties, body)
        assert request is not None, "the request never reached the server queue"
        properties, body = request
        assert body == b"what is 6 x 7"
        assert properties.reply_to.startswith(PSEUDO + ".")
        server.basic_publish(
            "", properties.reply_to, b"42", pika.BasicProperties(correlation_id="1")
        )
        deadline = time.monotonic() + 5
        while not replies and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
        assert replies == [b"42"]
    finally:
        server_connection.close()


def test_passive_declare_of_the_pseudo_queue(channel: BlockingChannel) -> None:
    """Clients may check that the pseudo-queue exists."""
    ok = channel.queue_declare(PSEUDO, passive=True)
    assert ok.method.queue == PSEUDO


def test_publishing_with_reply_to_without_a_reply_consumer_is_406(
    channel: BlockingChannel, name: str
) -> None:
    """reply_to=amq.rabbitmq.reply-to needs a reply consumer on the same channel first."""
    channel.queue_declare(name, exclusive=True)
    channel.confirm_delivery()
    with expect_channel_close(channel, 406, "fast reply consumer does not exist"):
        channel.basic_publish("", name, b"request", pika.BasicProperties(reply_to=PSEUDO))


def test_reply_consumer_must_not_ack(channel: BlockingChannel) -> None:
    """Consuming the pseudo-queue with manual acks is refused with 406."""
    with expect_channel_close(channel, 406, "reply consumer cannot acknowledge"):
        channel.basic_consume(PSEUDO, lambda *args: None, auto_ack=False)
        channel.connection.process_data_events(time_limit=0.5)


def test_reply_to_an_unknown_address_is_dropped_or_returned(channel: BlockingChannel) -> None:
    """A reply to an address nobody holds goes nowhere: with mandatory it is returned."""
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish("", PSEUDO + ".nobody-holds-this", b"lost", mandatory=True)
