"""Helpers shared by scripts/bench.py and its stress scenarios (bench_crash.py, bench_soak.py):
running a coroutine, one-call queue queries, the broker's resident memory, a stress config.

Imported as `scripts.bench_support`, with the repository root on sys.path (scripts/bench.py puts
it there), like `scripts.amqp_loadgen` and `tests.support`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pamqp import commands

from scripts.amqp_loadgen import LoadClient, ack_frame, connect, publish_frames
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


async def publish_confirmed(
    publisher: LoadClient,
    queue: str,
    messages: int,
    frames: Callable[[int, int], bytes] | None = None,
) -> None:
    """Publish `messages` persistent messages, keeping the confirm window full; `frames(first,
    count)` builds messages first..first+count-1 (default: the same one to `queue`)."""
    await publisher.call(1, commands.Confirm.Select(), commands.Confirm.SelectOk)
    unconfirmed: set[int] = set()
    low = 1
    room = asyncio.Event()
    done = asyncio.get_running_loop().create_future()

    def on_confirm(tag: int, multiple: bool, ack: bool) -> None:
        nonlocal low
        if not ack:
            raise RuntimeError(f"broker nacked message {tag}")
        if multiple:
            for settled in range(low, tag + 1):
                unconfirmed.discard(settled)
            low = max(low, tag + 1)
        else:
            unconfirmed.discard(tag)
        if len(unconfirmed) < CONFIRM_WINDOW:
            room.set()
        if not unconfirmed and sent == messages and not done.done():
            done.set_result(None)

    publisher.on_confirm = on_confirm
    one = publish_frames(1, "", queue, BODY, persistent=True)
    build = frames or (lambda first, count: one * count)
    sent = 0
    started = time.perf_counter()
    while sent < messages:
        if len(unconfirmed) >= CONFIRM_WINDOW:
            room.clear()
            await room.wait()
        count = min(PUBLISH_BATCH, messages - sent, CONFIRM_WINDOW - len(unconfirmed))
        publisher.send(build(sent, count))
        unconfirmed.update(range(sent + 1, sent + count + 1))
        sent += count
        await publisher.drain()
    if unconfirmed:
        await asyncio.wait_for(done, timeout=max(60, messages / 500))
    publisher.elapsed = time.perf_counter() - started
