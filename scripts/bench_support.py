"""Helpers shared by scripts/bench.py and its scenario modules (bench_crash.py, bench_soak.py,
bench_backlog.py, bench_objects.py): running a coroutine, one-call queue queries, pipelined
declares, the broker's resident memory, management API reads, a stress config, a side-by-side
table.

Imported as `scripts.bench_support`, with the repository root on sys.path (scripts/bench.py puts
it there), like `scripts.amqp_loadgen` and `tests.support`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from pamqp import commands, frame as pamqp_frame

from scripts.amqp_loadgen import LoadClient, ack_frame, connect, publish_frames
from tests.support import shipped_config, write_config

# The reference RabbitMQ that scripts/rabbitmq starts: AMQP and its management API.
RABBITMQ_PORT = 5672
RABBITMQ_MANAGEMENT = "http://127.0.0.1:15673"
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


async def await_reply(client: LoadClient, kind: type, timeout: float) -> Any:
    """client.expect(kind), waiting up to `timeout` seconds instead of expect's 30: a reply that
    comes after a long queue of work (deleting full queues, a batch of declares)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.expect(kind)
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise


def method_frame(method: Any, channel: int = 1) -> bytes:
    return pamqp_frame.marshal(method, channel)


async def pipelined(
    client: LoadClient, frames: Iterable[bytes], timeout: float, batch: int = 500
) -> None:
    """Send methods marshalled with nowait set (method_frame) on channel 1, `batch` at a time,
    each batch closed by a Basic.Qos whose Qos-Ok says the broker has done them all (a channel's
    methods are handled in order, and a failure closes the channel instead): a round trip per
    batch rather than per method, as no-wait is meant to be used, the same for every broker."""
    sync = method_frame(commands.Basic.Qos(prefetch_count=0))
    pending: list[bytes] = []

    async def flush() -> None:
        client.send(b"".join(pending) + sync)
        pending.clear()
        await client.drain()
        await await_reply(client, commands.Basic.QosOk, timeout)

    for frame in frames:
        pending.append(frame)
        if len(pending) >= batch:
            await flush()
    if pending:
        await flush()


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def management_get(base_url: str, path: str, timeout: float = 60.0) -> bytes:
    """GET a management API path (RabbitMQ's, or Warren's compatible one) as guest."""
    request = urllib.request.Request(base_url + path)
    token = base64.b64encode(b"guest:guest").decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def management_json(base_url: str, path: str, timeout: float = 60.0) -> Any:
    return json.loads(management_get(base_url, path, timeout))


def broker_pid(management_url: str) -> int:
    """The broker's OS process (RabbitMQ: its beam.smp) from /api/nodes, else from pgrep."""
    try:
        return int(management_json(management_url, "/api/nodes")[0]["os_pid"])
    except (OSError, ValueError, KeyError, IndexError):
        found = subprocess.run(["pgrep", "-x", "beam.smp"], capture_output=True, text=True)
        return int(found.stdout.split()[0])


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


class Row(NamedTuple):
    """One line of a side-by-side table: a figure for each broker (None: not measured)."""

    label: str
    warren: float | None
    rabbitmq: float | None
    higher_is_better: bool
    digits: int = 0


def side_by_side(title: str, rows: Iterable[Row]) -> None:
    """Print Warren and RabbitMQ next to each other with a ratio oriented so that >1 always
    means Warren did better: warren/rabbitmq for rates, rabbitmq/warren for costs."""
    print(f"\n{title}")
    print(f"  {'':36s} {'warren':>12s} {'rabbitmq':>12s} {'ratio':>8s}")
    for row in rows:
        cells = [
            "-" if value is None else f"{value:,.{row.digits}f}"
            for value in (row.warren, row.rabbitmq)
        ]
        ratio = "-"
        if (row.warren or 0) > 0 and (row.rabbitmq or 0) > 0:
            value = row.warren / row.rabbitmq  # type: ignore[operator]
            ratio = f"{value if row.higher_is_better else 1 / value:.2f}x"
        print(f"  {row.label:36s} {cells[0]:>12s} {cells[1]:>12s} {ratio:>8s}")
    print("  ratio >1: Warren better (warren/rabbitmq for rates, rabbitmq/warren for costs)")
