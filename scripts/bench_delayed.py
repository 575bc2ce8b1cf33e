"""scripts/bench --scenario delayed: durable delayed messages at scale, Warren alone (the
RabbitMQ here has no delayed-message plugin to compare with).

N persistent messages (--delayed-messages, 1M by default) are published with confirms to a
durable x-delayed-message exchange, each with a random x-delay within --delayed-window seconds
(60). Printed: the publish rate; the broker's resident memory per pending message; the broker
is then killed (kill -9) and restarted with them pending, and the recovery time is printed; a
consumer then takes every message as it comes due, and the lateness (arrival minus the time it
was due, from the publisher's clock) is printed as p50 / p99 / max for those due after the
restart. Exits 1 if a message is lost or arrives twice.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import struct
import time
from pathlib import Path

from pamqp import commands

from scripts.amqp_loadgen import LoadClient, MessageClient, ack_frame, connect, publish_frames
from scripts.bench_support import publish_confirmed, resident_bytes, run
from tests.support import BrokerProcess

EXCHANGE, QUEUE = "bench.later", "bench.due"
_BODY = struct.Struct(">QdI")  # message number, wall time it is due, padding length
PAD = 256 - _BODY.size


def _frames(first: int, count: int, due: list[float], delays: list[int]) -> bytes:
    """Messages first..first+count-1; each is due `delay` after now (the publisher's clock,
    read as the batch is sent: a little before the broker routes it, never after)."""
    parts = []
    now = time.time()
    for number in range(first, first + count):
        delay = delays[number]
        due[number] = now + delay / 1000
        table = b"\x07x-delayI" + struct.pack(">i", delay)
        headers = len(table).to_bytes(4, "big") + table
        body = _BODY.pack(number, due[number], PAD) + b"x" * PAD
        parts.append(publish_frames(1, EXCHANGE, "k", body, True, headers=headers))
    return b"".join(parts)


async def _declare(client: LoadClient) -> None:
    await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
    declare = commands.Exchange.Declare(
        exchange=EXCHANGE,
        exchange_type="x-delayed-message",
        durable=True,
        arguments={"x-delayed-type": "direct"},
    )
    await client.call(1, declare, commands.Exchange.DeclareOk)
    await client.call(
        1, commands.Queue.Declare(queue=QUEUE, durable=True), commands.Queue.DeclareOk
    )
    await client.call(
        1,
        commands.Queue.Bind(queue=QUEUE, exchange=EXCHANGE, routing_key="k"),
        commands.Queue.BindOk,
    )


async def _publish(
    port: int, messages: int, window: float, rng: random.Random, offset: float = 0.0
) -> tuple[float, list[float]]:
    """Publish with confirms, delays within `window` seconds after `offset`; (rate, dues)."""
    client = await connect("127.0.0.1", port)
    try:
        await _declare(client)
        low = int(offset * 1000) + 1
        delays = [rng.randrange(low, low + int(window * 1000)) for _ in range(messages)]
        due = [0.0] * messages
        await publish_confirmed(
            client, QUEUE, messages, lambda first, count: _frames(first, count, due, delays)
        )
        return messages / client.elapsed, due
    finally:
        await client.close()


async def _consume(
    port: int, messages: int, since: float, timeout: float
) -> tuple[list[float], int]:
    """Take every message; lateness of those due after `since`; how many arrived twice."""
    client = await connect("127.0.0.1", port, factory=MessageClient)
    seen: set[int] = set()
    twice = 0
    lateness: list[tuple[float, float]] = []  # (due, how late)
    done = asyncio.get_running_loop().create_future()

    def on_message(channel: int, tag: int, redelivered: bool, body: bytes) -> None:
        nonlocal twice
        arrived = time.time()
        number, due, _ = _BODY.unpack_from(body, 0)
        if number in seen:
            twice += 1
        seen.add(number)
        if due >= since:
            lateness.append((due, arrived - due))
        client.send(ack_frame(channel, tag))
        if len(seen) == messages and not done.done():
            done.set_result(None)

    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        await client.call(1, commands.Basic.Qos(prefetch_count=1000), commands.Basic.QosOk)
        client.on_message = on_message
        await client.call(
            1, commands.Basic.Consume(queue=QUEUE, consumer_tag="due"), commands.Basic.ConsumeOk
        )
        await asyncio.wait_for(done, timeout)
    finally:
        await client.close()
    return lateness, twice + (messages - len(seen))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _lateness(title: str, values: list[float]) -> None:
    if values:
        print(
            f"lateness of {len(values)} messages {title}:"
            f" p50 {_percentile(values, 0.5) * 1000:.1f} ms,"
            f" p99 {_percentile(values, 0.99) * 1000:.1f} ms,"
            f" max {max(values) * 1000:.1f} ms"
        )


def delayed_scale(data_dir: Path, args: argparse.Namespace, rng: random.Random) -> int:
    """Two phases. Steady: N messages published while a consumer takes them as they come due
    (publish rate, memory per pending message, lateness). Recovery: N more, all due after the
    restart, then kill -9 right after the last confirm; the restart time, then each delivered
    once."""
    messages, window = args.delayed_messages, args.delayed_window
    broker = BrokerProcess(data_dir)
    failures = 0
    try:
        baseline = resident_bytes(broker.proc.pid)
        consuming_lateness, wrong = run(_steady_run(broker, messages, window, rng, baseline))
        failures += wrong
        _lateness("as they came due (consumer attached)", consuming_lateness)
        # recovery: everything still pending at the kill, in a fresh broker process (Python
        # keeps memory it freed, so the first phase would hide what pending messages cost)
        broker.stop()
        broker = BrokerProcess(data_dir)
        before = resident_bytes(broker.proc.pid)
        rate, _ = run(_publish(broker.port, messages, window, rng, offset=window + 60))
        after = resident_bytes(broker.proc.pid)
        print(f"published {messages} more, due {window + 60:.0f}-{2 * window + 60:.0f} s later"
              f" (no consumer): {rate:.0f} msg/s; broker RSS {before >> 20} -> {after >> 20} MiB:"
              f" {(after - before) / messages:.0f} B per pending message")  # fmt: skip
        broker.kill()
        started = time.monotonic()
        broker = BrokerProcess(data_dir, start_timeout=900)  # listens once recovery is done
        print(f"kill -9 with {messages} pending, restart: serving again after"
              f" {time.monotonic() - started:.2f} s")  # fmt: skip
        since = time.time()
        lateness, wrong = run(_consume(broker.port, messages, since, 2 * window + 180))
        failures += wrong
        _lateness("due after the restart", [late for _, late in lateness])
    finally:
        broker.stop()
    if failures:
        print(f"FAILED: {failures} messages lost or delivered twice")
        return 1
    print("every message delivered once")
    return 0


async def _steady_run(
    broker: BrokerProcess, messages: int, window: float, rng: random.Random, baseline: int
) -> tuple[list[float], int]:
    client = await connect("127.0.0.1", broker.port)
    await _declare(client)
    await client.close()
    consuming = asyncio.create_task(
        _consume(broker.port, messages, 0.0, 2 * window + messages / 1000)
    )
    rate, due = await _publish(broker.port, messages, window, rng)
    now = time.time()
    pending = sum(1 for at in due if at > now)
    rss = resident_bytes(broker.proc.pid)
    print(f"published {messages} durable delayed messages (delays within {window:.0f} s):"
          f" {rate:.0f} msg/s confirmed")  # fmt: skip
    if pending:
        print(f"broker RSS {baseline >> 20} MiB -> {rss >> 20} MiB with {pending} pending:"
              f" {(rss - baseline) / pending:.0f} B per pending message")  # fmt: skip
    lateness, wrong = await consuming
    return [late for _, late in lateness], wrong
