"""The delivery acknowledgement timeout (RabbitMQ's consumer_timeout).

A channel whose oldest unacknowledged delivery is older than the timeout is closed with 406 and
RabbitMQ's text, and what it held is requeued (a return, for queues that count deliveries): a
consumer that hangs holding a payment order must not hold it forever. The timeout is the queue's
x-consumer-timeout, else `limits.consumer_timeout`.

Checked every `limits.consumer_timeout_check` seconds, as RabbitMQ checks on its channel tick.
Instead of stamping every delivery with the time (a cost on the hot path), the check notes when
it first saw a channel's oldest unacked delivery tag; the deadline counts from then, so a close
comes at most one check interval late and never early.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from broker.core.errors import PRECONDITION_FAILED, ChannelException
from broker.logs import fields
from broker.periodic import Periodic

if TYPE_CHECKING:
    from broker.amqp.channel import Channel
    from broker.amqp.unacked import Unacked
    from broker.server import Broker

log = logging.getLogger("warren.consumer")


def timed_out(channel_number: int, timeout_ms: int) -> ChannelException:
    return ChannelException(
        PRECONDITION_FAILED,
        f"delivery acknowledgement on channel {channel_number} timed out. Timeout value used:"
        f" {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to"
        " learn more",
    )


class AckTimeouts:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        limits = broker.config.limits
        self.default_ms = limits.consumer_timeout
        self._periodic = Periodic(
            limits.consumer_timeout_check, self.check, "consumer.timeout_check_failed"
        )
        # channel -> (its oldest unacked delivery tag, the loop time it was first seen)
        self._oldest: dict[Channel, tuple[int, float]] = {}
        self.timeouts = 0  # channels closed, for metrics

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    def check(self) -> None:
        now = asyncio.get_running_loop().time()
        seen: dict[Channel, tuple[int, float]] = {}
        for connection in list(self._broker.connections):
            for channel in list(connection.channels.values()):
                oldest = channel.oldest_unacked()
                if oldest is not None:
                    self._check_channel(channel, oldest, now, seen)
        self._oldest = seen  # channels closed or without unacked deliveries are forgotten

    def _check_channel(
        self,
        channel: Channel,
        oldest: tuple[int, Unacked],
        now: float,
        seen: dict[Channel, tuple[int, float]],
    ) -> None:
        tag, (queue, _, consumer) = oldest
        known = self._oldest.get(channel)
        since = known[1] if known is not None and known[0] == tag else now
        seen[channel] = (tag, since)
        timeout_ms = queue.settings.consumer_timeout or self.default_ms
        if not timeout_ms or (now - since) * 1000 < timeout_ms:
            return
        self.timeouts += 1
        queue.consumer_timeouts += 1
        del seen[channel]
        log.warning(
            "consumer.timeout",
            extra=fields(
                peer=channel.connection.peer,
                vhost=queue.vhost_name,
                queue=queue.name,
                consumer=consumer.tag if consumer is not None else "basic.get",
                channel=channel.number,
                timeout_ms=timeout_ms,
                unacked=channel.unacked_count(),
            ),
        )
        channel.close_with_error(timed_out(channel.number, timeout_ms))
