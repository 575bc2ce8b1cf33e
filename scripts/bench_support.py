"""Helpers shared by scripts/bench.py and its stress scenarios (bench_crash.py, bench_soak.py):
running a coroutine, one-call queue queries, the broker's resident memory, a stress config.

Imported as `scripts.bench_support`, with the repository root on sys.path (scripts/bench.py puts
it there), like `scripts.amqp_loadgen` and `tests.support`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pamqp import commands

from scripts.amqp_loadgen import LoadClient, ack_frame, connect
from tests.support import shipped_config, write_config

CONFIRM_WINDOW = 1000  # unconfirmed publishes a confirming publisher keeps in flight at most
BODY = b"x" * 256
PREFETCH = 1000
PUBLISH_BATCH = 200


def run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def one_call(host: str, port: int, method: Any, reply: type) -> Any:
    """Connect, open a channel, send one synchronous method and return its reply."""
    client = await connect(host, port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        return await client.call(1, method, reply)
    finally:
        await client.close()


async def queue_depth(host: str, port: int, queue: str) -> int:
    passive = commands.Queue.Declare(queue=queue, passive=True)
    return (await one_call(host, port, passive, commands.Queue.DeclareOk)).message_count


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def stress_config(data_dir: Path, segment_size: int) -> Path:
    """Create `data_dir` and write the shipped config there with store.segment_size set."""
    config = shipped_config()
    config["store"]["segment_size"] = segment_size
    data_dir.mkdir(parents=True)
    return write_config(data_dir, config)


async def acking_consumer(
    consumer: LoadClient,
    queue: str,
    messages: int,
    durable: bool,
    arguments: dict[str, Any] | None = None,
) -> asyncio.Future[float]:
    """Declare `queue`, consume with prefetch and a manual ack per message; the future holds
    the time the last of `messages` arrived."""
    await consumer.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
    declare = commands.Queue.Declare(
        queue=queue, durable=durable, auto_delete=not durable, arguments=arguments
    )
    await consumer.call(1, declare, commands.Queue.DeclareOk)
    await consumer.call(1, commands.Basic.Qos(prefetch_count=PREFETCH), commands.Basic.QosOk)
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    received = 0

    def on_deliver(channel: int, tag: int) -> None:
        nonlocal received
        received += 1
        consumer.send(ack_frame(channel, tag))
        if received == messages and not done.done():
            done.set_result(time.perf_counter())

    consumer.on_deliver = on_deliver
    await consumer.call(
        1, commands.Basic.Consume(queue=queue, consumer_tag="bench"), commands.Basic.ConsumeOk
    )
    return done
