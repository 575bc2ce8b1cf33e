"""Throughput of Warren next to RabbitMQ, same machine, same load generator, one run.

Scenario `transient`: one queue, 256-byte transient messages, one publisher connection, one
consumer connection with prefetch 1000 and a manual ack per message. Each round runs every broker
once, alternating; the figure is the median msgs/s per broker and the ratio Warren / RabbitMQ.
Absolute numbers on a shared 2-core machine are noise; the ratio within one run is the result.

    scripts/bench [--messages 200000] [--rounds 3] [--no-rabbitmq]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pamqp import commands  # noqa: E402

from scripts.amqp_loadgen import ack_frame, connect, publish_frames  # noqa: E402
from tests.support import BrokerProcess  # noqa: E402

RABBITMQ = ("127.0.0.1", 5672)
BODY = b"x" * 256
PREFETCH = 1000
PUBLISH_BATCH = 200


async def transient_round(host: str, port: int, messages: int) -> float:
    """Publish `messages` and consume them with manual acks; returns messages per second."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    consumer = await connect(host, port)
    publisher = await connect(host, port)
    try:
        await consumer.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        await consumer.call(
            1, commands.Queue.Declare(queue=queue, auto_delete=True), commands.Queue.DeclareOk
        )
        await consumer.call(1, commands.Basic.Qos(prefetch_count=PREFETCH), commands.Basic.QosOk)
        done = asyncio.get_running_loop().create_future()
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
        await publisher.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        one = publish_frames(1, "", queue, BODY, persistent=False)
        started = time.perf_counter()
        sent = 0
        while sent < messages:
            count = min(PUBLISH_BATCH, messages - sent)
            publisher.send(one * count)
            sent += count
            await publisher.drain()
            await asyncio.sleep(0)
        finished = await asyncio.wait_for(done, timeout=max(60, messages / 2000))
        return messages / (finished - started)
    finally:
        await publisher.close()
        await consumer.close()


def run_round(host: str, port: int, messages: int) -> float:
    try:
        import uvloop

        return uvloop.run(transient_round(host, port, messages))
    except ImportError:
        return asyncio.run(transient_round(host, port, messages))


def rabbitmq_available() -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(RABBITMQ, 1):
        return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-rabbitmq", action="store_true", help="measure Warren only")
    args = parser.parse_args()

    if not args.no_rabbitmq:
        subprocess.run([str(ROOT / "scripts" / "rabbitmq"), "start"], check=True)
        if not rabbitmq_available():
            print("RabbitMQ is not answering on 127.0.0.1:5672", file=sys.stderr)
            return 1
    results: dict[str, list[float]] = {"warren": [], "rabbitmq": []}
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as data_dir:
        warren = BrokerProcess(Path(data_dir))
        try:
            run_round("127.0.0.1", warren.port, min(args.messages, 20_000))  # warm-up
            for round_number in range(1, args.rounds + 1):
                targets = [("warren", ("127.0.0.1", warren.port))]
                if not args.no_rabbitmq:
                    targets.append(("rabbitmq", RABBITMQ))
                for name, (host, port) in targets:
                    rate = run_round(host, port, args.messages)
                    results[name].append(rate)
                    print(f"round {round_number} {name:8s} {rate:10.0f} msg/s", flush=True)
        finally:
            warren.stop()
    print()
    print(f"scenario transient: {args.messages} x 256 B, 1 queue, prefetch {PREFETCH}, manual acks")
    warren_rate = statistics.median(results["warren"])
    print(f"  warren    median {warren_rate:10.0f} msg/s")
    if results["rabbitmq"]:
        rabbit_rate = statistics.median(results["rabbitmq"])
        print(f"  rabbitmq  median {rabbit_rate:10.0f} msg/s")
        print(f"  ratio warren/rabbitmq = {warren_rate / rabbit_rate:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
