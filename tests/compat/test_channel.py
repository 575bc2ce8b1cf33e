"""Channel lifecycle and channel-level refusals as RabbitMQ 3.10 shows them."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pika.exceptions
import pytest
from pamqp import commands, header
from pamqp.base import Frame
from pamqp.body import ContentBody

from tests.compat.rawamqp import (
    RawTimeout,
    assert_broker_alive,
    assert_reply,
    raw_connection,
)


@pytest.fixture(autouse=True)
def _broker_survives(amqp_url: str) -> Iterator[None]:
    """After every test a fresh pika connection must still work (the broker did not crash)."""
    yield
    assert_broker_alive(amqp_url)


def test_open_and_client_close(amqp_url: str) -> None:
    """Channel.Open -> OpenOk; client Channel.Close -> CloseOk; the number can be reused."""
    with raw_connection(amqp_url) as client:
        ok = client.open_channel(1)
        assert ok.channel_id == ""
        client.send(commands.Channel.Close(200, "bye", 0, 0), 1)
        client.expect(commands.Channel.CloseOk, 1)
        client.open_channel(1)
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        client.expect(commands.Basic.QosOk, 1)


def test_pika_channel_close(connection: pika.BlockingConnection) -> None:
    """pika opens and closes channels; the connection stays open."""
    ch = connection.channel()
    assert ch.is_open
    ch.close()
    assert ch.is_closed and connection.is_open
    connection.channel().basic_qos(prefetch_count=1)


def test_channel_error_closes_only_that_channel(
    connection: pika.BlockingConnection, name: str
) -> None:
    """A channel exception (404 on passive declare) closes that channel only; the connection
    and its other channels keep working."""
    bad, good = connection.channel(), connection.channel()
    good.queue_declare(name, exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        bad.queue_declare(f"{name}-missing", passive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{name}-missing' in vhost '/'"
    assert bad.is_closed and connection.is_open
    good.basic_publish("", name, b"ok")
    method, _, body = good.basic_get(name, auto_ack=True)
    assert method is not None and body == b"ok"
    connection.channel().queue_declare(name, passive=True)


def test_channel_close_by_broker_raw(amqp_url: str, name: str) -> None:
    """Broker Channel.Close names the failing method; frames sent on that channel before our
    CloseOk are ignored; after CloseOk the number can be reopened; channel 2 is unaffected."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.open_channel(2)
        client.send(commands.Queue.Declare(queue=name, passive=True), 1)
        _, close = client.read_frame()
        assert isinstance(close, commands.Channel.Close)
        assert_reply(close, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'", (50, 10))
        client.send(commands.Basic.Qos(prefetch_count=1), 1)  # ignored until CloseOk
        client.send(commands.Channel.CloseOk(), 1)
        client.send(commands.Basic.Qos(prefetch_count=1), 2)
        client.expect(commands.Basic.QosOk, 2)
        client.open_channel(1)


def test_reopen_before_close_ok(amqp_url: str, name: str) -> None:
    """Channel.Open on a channel the broker closed but we have not CloseOk'd yet is 504."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Queue.Declare(queue=name, passive=True), 1)
        client.expect(commands.Channel.Close, 1)
        client.send(commands.Channel.Open(), 1)
        close = client.expect_connection_close()
        assert_reply(close, 504, "CHANNEL_ERROR - second 'channel.open' seen", (20, 10))


def test_close_crossing(amqp_url: str, name: str) -> None:
    """If our Channel.Close crosses the broker's, the broker answers ours with CloseOk, but the
    channel stays closing until we CloseOk the broker's Close too."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Queue.Declare(queue=name, passive=True), 1)
        client.expect(commands.Channel.Close, 1)
        client.send(commands.Channel.Close(200, "bye", 0, 0), 1)
        client.expect(commands.Channel.CloseOk, 1)
        client.send(commands.Channel.CloseOk(), 1)
        client.open_channel(1)


@pytest.mark.parametrize(
    ("channel_max", "opened", "extra"),
    [(1, [1], 2), (2, [1, 2], 3)],
    ids=["max-1", "max-2"],
)
def test_channel_max_exceeded(
    amqp_url: str, channel_max: int, opened: list[int], extra: int
) -> None:
    """Opening more channels than the negotiated channel_max: Close 530 NOT_ALLOWED."""
    with raw_connection(amqp_url, channel_max=channel_max) as client:
        for number in opened:
            client.open_channel(number)
        client.send(commands.Channel.Open(), extra)
        close = client.expect_connection_close()
        text = (
            f"NOT_ALLOWED - number of channels opened ({channel_max}) has reached "
            f"the negotiated channel_max ({channel_max})"
        )
        assert_reply(close, 530, text, (0, 0))


def test_channel_number_above_channel_max_is_counted_not_checked(amqp_url: str) -> None:
    """RabbitMQ 3.10 limits how many channels are open, not their numbers: with channel_max 2
    channel 11 and even 65535 open fine while fewer than 2 are open."""
    with raw_connection(amqp_url, channel_max=2) as client:
        client.open_channel(11)
        client.open_channel(65535)


def test_open_already_open_channel(amqp_url: str) -> None:
    """Channel.Open on an open channel: Close 504 "second 'channel.open' seen"."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Channel.Open(), 1)
        close = client.expect_connection_close()
        assert_reply(close, 504, "CHANNEL_ERROR - second 'channel.open' seen", (20, 10))


@pytest.mark.parametrize(
    "method",
    [
        commands.Queue.Declare(queue="", exclusive=True),
        commands.Basic.Qos(prefetch_count=1),
        commands.Channel.Close(200, "bye", 0, 0),
    ],
    ids=["queue.declare", "basic.qos", "channel.close"],
)
def test_method_on_unopened_channel(amqp_url: str, method: Frame) -> None:
    """Any method but Channel.Open on a never-opened channel: 504 "expected 'channel.open'"."""
    with raw_connection(amqp_url) as client:
        client.send(method, 5)
        close = client.expect_connection_close()
        text = "CHANNEL_ERROR - expected 'channel.open'"
        assert_reply(close, 504, text, divmod(method.index, 0x10000))


@pytest.mark.parametrize(
    "method",
    [commands.Channel.Open(), commands.Queue.Declare(queue="", exclusive=True)],
    ids=["channel.open", "queue.declare"],
)
def test_channel_method_on_channel_zero(amqp_url: str, method: Frame) -> None:
    """Channel-class methods on channel 0: 504 'unexpected method in connection state running'."""
    with raw_connection(amqp_url) as client:
        client.send(method, 0)
        close = client.expect_connection_close()
        text = "CHANNEL_ERROR - unexpected method in connection state running"
        assert_reply(close, 504, text, divmod(method.index, 0x10000))


def test_connection_method_on_channel(amqp_url: str) -> None:
    """A Connection-class method on channel 1: 503 'COMMAND_INVALID - unimplemented method'."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Connection.Close(200, "bye", 0, 0), 1)
        close = client.expect_connection_close()
        assert_reply(close, 503, "COMMAND_INVALID - unimplemented method", (10, 50))


def test_flow_active_true(amqp_url: str) -> None:
    """Channel.Flow(active=True) from the client is answered FlowOk(active=True)."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Channel.Flow(active=True), 1)
        assert client.expect(commands.Channel.FlowOk, 1).active is True


def test_flow_active_false_not_implemented(amqp_url: str) -> None:
    """Channel.Flow(active=False) from the client: Close 540 'NOT_IMPLEMENTED - active=false'."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Channel.Flow(active=False), 1)
        close = client.expect_connection_close()
        assert_reply(close, 540, "NOT_IMPLEMENTED - active=false", (20, 20))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_recover_async_requeue(amqp_url: str) -> None:
    """Basic.RecoverAsync(requeue=True) is accepted silently (no reply, channel still open)."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.RecoverAsync(requeue=True), 1)
        client.send(commands.Basic.Qos(prefetch_count=1), 1)
        client.expect(commands.Basic.QosOk, 1)
        with pytest.raises(RawTimeout):
            client.read_frame(0.3)


def test_recover_requeue(amqp_url: str) -> None:
    """Basic.Recover(requeue=True) gets RecoverOk."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.Recover(requeue=True), 1)
        client.expect(commands.Basic.RecoverOk, 1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", [commands.Basic.RecoverAsync, commands.Basic.Recover])
def test_recover_without_requeue_not_implemented(
    amqp_url: str, kind: type[commands.Basic.Recover]
) -> None:
    """Basic.Recover/RecoverAsync with requeue=False: Close 540
    'NOT_IMPLEMENTED - requeue=false'."""
    method = kind(requeue=False)
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(method, 1)
        close = client.expect_connection_close()
        assert_reply(close, 540, "NOT_IMPLEMENTED - requeue=false", divmod(method.index, 0x10000))


def test_publish_immediate_not_implemented(amqp_url: str, name: str) -> None:
    """Basic.Publish immediate=True: Close 540 'NOT_IMPLEMENTED - immediate=true' once the
    content is complete."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.Publish(routing_key=name, immediate=True), 1)
        client.send(header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
        client.send(ContentBody(b"x"), 1)
        close = client.expect_connection_close()
        assert_reply(close, 540, "NOT_IMPLEMENTED - immediate=true", (60, 40))


def test_qos_prefetch_size_not_implemented(amqp_url: str) -> None:
    """Basic.Qos prefetch_size != 0: Close 540 'NOT_IMPLEMENTED - prefetch_size!=0 (N)'."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        client.send(commands.Basic.Qos(prefetch_size=10, prefetch_count=1), 1)
        close = client.expect_connection_close()
        assert_reply(close, 540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)", (60, 10))


def test_qos_prefetch_size_pika(connection: pika.BlockingConnection) -> None:
    """pika sees prefetch_size != 0 as ConnectionClosedByBroker 540."""
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.basic_qos(prefetch_size=4096)
    assert info.value.reply_code == 540
    assert info.value.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (4096)"
