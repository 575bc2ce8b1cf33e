"""Queue-feature scenarios of scripts/bench.py: TTL expiry into a dead-letter queue, and a
priority queue's backlog. Each round returns messages per second for one broker, so bench.py
runs them next to RabbitMQ like the plain throughput scenarios.
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


async def _publish_all(publisher: LoadClient, frames: bytes, messages: int, per_block: int) -> None:
    """Send `messages` messages as repeats of `frames`, a block of `per_block` messages."""
    sent = 0
    while sent < messages:
        count = min(PUBLISH_BATCH // per_block, (messages - sent) // per_block) or 1
        publisher.send(frames * count)
        sent += count * per_block
        await publisher.drain()
        await asyncio.sleep(0)


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
