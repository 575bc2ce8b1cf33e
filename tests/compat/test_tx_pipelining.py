"""Transactions keep their replies in order even when a client pipelines methods."""

from __future__ import annotations

import uuid

import pika
from pamqp import commands

from tests.compat.rawamqp import RawAMQP, assert_broker_alive, assert_reply, raw_connection

UNEXPECTED_DURING_COMMIT = "CHANNEL_ERROR - unexpected command while processing 'tx.commit'"


def publish_in_tx(client: RawAMQP, queue: str) -> None:
    """Channel 1 in tx mode with one persistent message to a durable queue, not committed yet."""
    client.open_channel(1)
    client.send(commands.Queue.Declare(queue=queue, durable=True), 1)
    client.expect(commands.Queue.DeclareOk, 1)
    client.send(commands.Tx.Select(), 1)
    client.expect(commands.Tx.SelectOk, 1)
    properties = commands.Basic.Properties(delivery_mode=2)
    client.publish(1, b"order", routing_key=queue, properties=properties)


def test_pipelined_commits_are_answered_in_order(amqp_url: str) -> None:
    """Tx.Commit is synchronous. A client that sends more methods before its Commit-Ok either
    gets every reply in order or, as RabbitMQ answers while a commit is in progress, 504
    'unexpected command while processing 'tx.commit''; never a later reply first."""
    queue = f"tx-pipe-{uuid.uuid4().hex[:8]}"
    with raw_connection(amqp_url) as client:
        publish_in_tx(client, queue)
        client.send(commands.Tx.Commit(), 1)
        client.send(commands.Tx.Commit(), 1)
        client.send(commands.Queue.Declare(queue=queue, durable=True), 1)
        replies = []
        while len(replies) < 3:
            reply = client.read_frame()[1]
            replies.append(reply)
            if isinstance(reply, commands.Connection.Close):
                assert_reply(reply, 504, UNEXPECTED_DURING_COMMIT)
                client.send(commands.Connection.CloseOk())
                break
        expected = [commands.Tx.CommitOk, commands.Tx.CommitOk, commands.Queue.DeclareOk]
        kinds = [type(reply) for reply in replies]
        assert kinds == expected or kinds[-1] is commands.Connection.Close
        assert kinds[:-1] == expected[: len(kinds) - 1]
    assert_broker_alive(amqp_url)
    cleanup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    cleanup.channel().queue_delete(queue)
    cleanup.close()


def test_channel_close_right_after_commit_closes_only_the_channel(amqp_url: str) -> None:
    """Channel.Close is the one method RabbitMQ takes while a commit is in progress: the
    channel closes normally (Commit-Ok may come first) and the connection stays open."""
    queue = f"tx-close-{uuid.uuid4().hex[:8]}"
    with raw_connection(amqp_url) as client:
        publish_in_tx(client, queue)
        client.send(commands.Tx.Commit(), 1)
        client.send(
            commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 1
        )
        reply = client.read_frame()[1]
        if isinstance(reply, commands.Tx.CommitOk):
            reply = client.read_frame()[1]
        assert isinstance(reply, commands.Channel.CloseOk), reply
        client.open_channel(2)  # the connection is still usable
        client.send(commands.Queue.Delete(queue=queue), 2)
        client.expect(commands.Queue.DeleteOk, 2)
