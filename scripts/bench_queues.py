"""Queue-feature scenarios of scripts/bench.py: TTL expiry into a dead-letter queue, a
priority queue's backlog, and a fanout exchange feeding several queues. Each round returns
messages per second for one broker, so bench.py runs them next to RabbitMQ like the plain
throughput scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from pamqp import commands

from scripts.amqp_loadgen import LoadClient, connect, publish_frames
from scripts.bench_support import BODY, PUBLISH_BATCH, acking_consumer

TTL_MS = 50
PRIORITIES = 10
FANOUT_QUEUES = 4


async def _publish_all(publisher: LoadClient, frames: bytes, messages: int, per_block: int) -> None:
    """Send `messages` messages as repeats of `frames`, a block of `per_block` messages."""
    sent = 0
    while sent < messages:
        count = min(PUBLISH_BATCH // per_block, (messages - sent) // per_block) or 1
        publisher.send(frames * count)
        sent += count * per_block
        await publisher.drain()
        await asyncio.sleep(0)


async def fanout_round(host: str, port: int, messages: int) -> float:
    """One publisher to a fanout exchange bound to FANOUT_QUEUES queues, a consumer (its own
    connection, manual acks) on each: deliveries per second, from the first publish to the
    last delivery on every queue."""
    exchange = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    consumers = [await connect(host, port) for _ in range(FANOUT_QUEUES)]
    publisher = await connect(host, port)
    try:
        await publisher.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        declare = commands.Exchange.Declare(exchange=exchange, exchange_type="fanout")
        await publisher.call(1, declare, commands.Exchange.DeclareOk)
        done = []
        for number, consumer in enumerate(consumers):
            queue = f"{exchange}-{number}"
            done.append(await acking_consumer(consumer, queue, messages, durable=False))
            bind = commands.Queue.Bind(queue=queue, exchange=exchange)
            await publisher.call(1, bind, commands.Queue.BindOk)
        started = time.perf_counter()
        await _publish_all(publisher, publish_frames(1, exchange, "", BODY, False), messages, 1)
        timeout = max(60, FANOUT_QUEUES * messages / 2000)
        finished = await asyncio.wait_for(asyncio.gather(*done), timeout=timeout)
        return FANOUT_QUEUES * messages / (max(finished) - started)
    finally:
        with contextlib.suppress(RuntimeError, TimeoutError):
            delete = commands.Exchange.Delete(exchange=exchange)
            await publisher.call(1, delete, commands.Exchange.DeleteOk)
        await publisher.close()
        for consumer in consumers:
            await consumer.close()  # its auto-delete queue goes with it


async def ttl_round(host: str, port: int, messages: int) -> float:
    """Every message expires (x-message-ttl) into a dead-letter queue, consumed there."""
    name = f"bench-ttl-{uuid.uuid4().hex[:8]}"
    dead = name + "-dead"
    consumer = await connect(host, port)
    publisher = await connect(host, port)
    try:
        done = await acking_consumer(consumer, dead, messages, durable=False)
        await publisher.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        arguments = {
            "x-message-ttl": TTL_MS,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        }
        declare = commands.Queue.Declare(queue=name, arguments=arguments)
        await publisher.call(1, declare, commands.Queue.DeclareOk)
        started = time.perf_counter()
        await _publish_all(publisher, publish_frames(1, "", name, BODY, False), messages, 1)
        finished = await asyncio.wait_for(done, timeout=max(60, messages / 2000))
        return messages / (finished - started)
    finally:
        with contextlib.suppress(RuntimeError, TimeoutError):
            await publisher.call(1, commands.Queue.Delete(queue=name), commands.Queue.DeleteOk)
        await publisher.close()
        await consumer.close()


def _prioritised(queue: str) -> bytes:
    """One message per priority 0-9."""
    return b"".join(
        publish_frames(1, "", queue, BODY, False, priority) for priority in range(PRIORITIES)
    )


async def priority_round(host: str, port: int, messages: int) -> float:
    """A backlog of messages with priorities 0-9 in an x-max-priority queue, then drained."""
    name = f"bench-priority-{uuid.uuid4().hex[:8]}"
    arguments = {"x-max-priority": PRIORITIES}
    publisher = await connect(host, port)
    consumer = await connect(host, port)
    try:
        await publisher.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        # auto-delete as the consumer declares it: gone once the consumer is
        declare = commands.Queue.Declare(queue=name, auto_delete=True, arguments=arguments)
        await publisher.call(1, declare, commands.Queue.DeclareOk)
        started = time.perf_counter()
        messages -= messages % PRIORITIES
        await _publish_all(publisher, _prioritised(name), messages, PRIORITIES)
        done = await acking_consumer(consumer, name, messages, False, arguments)
        finished = await asyncio.wait_for(done, timeout=max(60, messages / 2000))
        return messages / (finished - started)
    finally:
        with contextlib.suppress(RuntimeError, TimeoutError):
            await publisher.call(1, commands.Queue.Delete(queue=name), commands.Queue.DeleteOk)
        await publisher.close()
        await consumer.close()
