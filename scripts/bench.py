"""Warren next to RabbitMQ: same machine, same load generator, one run; prints ratios.

Scenarios (256-byte messages):
  transient   one queue, one publisher, one consumer with prefetch 1000 and a manual ack per
              message; msgs/s from the first publish to the last delivery.
  persistent  a durable queue, delivery-mode 2, publisher confirms with up to 1000 unconfirmed;
              confirmed msgs/s (RabbitMQ: a classic queue, its default).
  ttl         a queue with x-message-ttl 50 ms and a dead-letter exchange, no consumer on it:
              every message expires into a dead-letter queue whose consumer acks it; msgs/s
              from the first publish to the last dead letter consumed.
  priority    a queue with x-max-priority 10: messages with priorities 0-9 published as a
              backlog, then consumed with prefetch 1000 and manual acks; msgs/s overall.
  fanout      one publisher to a fanout exchange bound to 4 queues, a consumer on each (its
              own connection, prefetch 1000, manual acks), transient; deliveries/s overall.
  metrics     Warren only: transient throughput with /metrics scraped every 100 ms vs not.
  disk        Warren only: --disk-messages persistent messages through a durable queue
              (publisher with confirms, consumer acking), then the size of the log left behind.
  recovery    --recovery-messages persistent messages queued, then the broker restarts; seconds
              until the queue reports them all again (Warren: after kill -9; RabbitMQ: after
              rabbitmqctl stop_app / start_app, a clean restart, which is its fastest case).
Each round runs every broker once, alternating; figures are medians per broker and the ratio
Warren / RabbitMQ. Absolute numbers on a shared 2-core machine are noise; the ratio is the result.

Stress scenarios, Warren only (no comparison; RabbitMQ is not started), not part of `all`:
  delayed     --delayed-messages (1M) persistent messages to a durable x-delayed-message
              exchange with random delays within --delayed-window seconds (60): publish rate,
              resident memory per pending message, kill -9 and the restart time with them
              pending, then lateness p50/p99 as they come due; exits 1 if one is lost or twice.
  soak        --soak-seconds (600) of everything at once against one broker: publishers
              (persistent with confirms to durable queues; transient with and without
              confirms), consumers with manual acks (prefetch 100; one nacking 10% back to the
              queue; multiple acks; no prefetch limit), two connection churners (publishers and
              consumers that close cleanly or drop the socket, plain or as a TCP reset, handshakes
              cut short, channel churn) and misbehaving clients (garbage instead of the protocol
              header, oversized frame headers before and after authentication, bad frames,
              channel errors, a body dribbled then dropped, Basic.Get/Reject pipelined on a socket
              never read, half handshakes left silent). Prints the broker's RSS at the start,
              every minute and at the end, what the broker did to each misbehaving client, and
              per queue the accounting by message id: confirmed (+ unconfirmed that arrived) =
              acked + still queued, nothing lost, nothing twice. Exits 1 if the accounting fails,
              a long-lived client is cut off, or the broker dies or does not stop cleanly.
  crash       --crash-cycles (100) kill -9 cycles under load, killed 0.2-2 s after the load
              starts, with a small store.segment_size (256 KiB) so segment rolls, snapshots,
              garbage collection and compaction (a second queue nobody consumes for
              --crash-park-cycles cycles, a consumer holding deliveries unacked) happen inside
              the killed window. After each restart, the check the suite's crash test uses
              (tests/crash_support.py): every confirmed, unacked order is back, no acked one, no
              duplicates, and every order a consumer had received comes back redelivered=true.
              Prints figures per cycle and in total; exits 1 on any violation.
Both print the command line and the seed (--seed to replay the same random choices; thread and
kill timing still vary).

Scale scenarios, Warren (a fresh broker) then RabbitMQ, one run each, not part of `all` (long and
memory-hungry at their defaults); each gives up after --timeout seconds (1800) in all (Warren
at most half), then deletes what it declared on both brokers; exit 1 on a timeout, a stall or a
wrong count:
  backlog     --backlog-messages (1M) persistent 256 B messages published with confirms (4000
              in flight) into --backlog-queues (1) durable queues, round-robin, nobody consuming,
              then drained by one consumer (prefetch 1000, multiple acks): publish and drain
              msg/s, broker RSS at the peak (queues full) and per queued message, the memory and
              disk alarms seen and (RabbitMQ) messages paged out. 1,000 queues of 10k each:
              --backlog-queues 1000 --backlog-messages 10000000 (raise --timeout for that).
  many-queues --queues (10k) durable queues and --bindings (100k) bindings from a topic exchange
              (spread evenly, distinct keys), declared with no-wait on one channel in batches:
              queues/s, bindings/s, RSS per queue and per binding, then the median time and size
              of GET /metrics, /metrics/per-object (RabbitMQ: its Prometheus plugin, started at
              runtime and stopped afterwards, no config change) and the management /api/queues.

    scripts/bench [--scenario all|transient|persistent|ttl|priority|fanout|recovery|disk|metrics|
                              soak|crash|delayed|backlog|many-queues]
                  [--messages N] [--rounds 3] [--recovery-messages 200000]
                  [--disk-messages 1000000] [--no-rabbitmq] [--seed N]
                  [--soak-seconds 600] [--soak-rate 300] [--soak-segment-size 1048576]
                  [--crash-cycles 100] [--crash-segment-size 262144] [--crash-body-bytes 2048]
                  [--crash-publishers 3] [--crash-park-cycles 5]
                  [--delayed-messages 1000000] [--delayed-window 60]
                  [--backlog-messages 1000000] [--backlog-queues 1]
                  [--queues 10000] [--bindings 100000] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shlex
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

from scripts.amqp_loadgen import connect, publish_frames  # noqa: E402
from scripts.bench_backlog import backlog  # noqa: E402
from scripts.bench_crash import crash_cycles  # noqa: E402
from scripts.bench_delayed import delayed_scale  # noqa: E402
from scripts.bench_objects import many_queues  # noqa: E402
from scripts.bench_queues import (  # noqa: E402
    FANOUT_QUEUES,
    fanout_round,
    priority_round,
    ttl_round,
)
from scripts.bench_soak import soak  # noqa: E402
from scripts.bench_support import (  # noqa: E402
    BODY,
    CONFIRM_WINDOW,
    PREFETCH,
    PUBLISH_BATCH,
    acking_consumer,
    one_call,
    publish_confirmed,
    queue_depth,
    resident_bytes,
    run,
)
from tests.support import BrokerProcess, free_port  # noqa: E402

RABBITMQ = ("127.0.0.1", 5672)


async def transient_round(host: str, port: int, messages: int) -> float:
    """Publish `messages` and consume them with manual acks; returns messages per second."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    consumer = await connect(host, port)
    publisher = await connect(host, port)
    try:
        done = await acking_consumer(consumer, queue, messages, durable=False)
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


async def persistent_round(host: str, port: int, messages: int) -> float:
    """Publish persistent messages with confirms, at most CONFIRM_WINDOW unconfirmed; msgs/s."""
    queue = f"bench-durable-{uuid.uuid4().hex[:8]}"
    publisher = await connect(host, port)
    try:
        await publisher.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        await publisher.call(
            1, commands.Queue.Declare(queue=queue, durable=True), commands.Queue.DeclareOk
        )
        await publish_confirmed(publisher, queue, messages)
        return messages / publisher.elapsed
    finally:
        with contextlib.suppress(RuntimeError, TimeoutError):
            await publisher.call(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)
        await publisher.close()


async def fill_durable_queue(host: str, port: int, queue: str, messages: int) -> None:
    client = await connect(host, port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        await client.call(
            1, commands.Queue.Declare(queue=queue, durable=True), commands.Queue.DeclareOk
        )
        await publish_confirmed(client, queue, messages)
    finally:
        await client.close()


async def delete_queue(host: str, port: int, queue: str) -> None:
    await one_call(host, port, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)


def wait_for_depth(host: str, port: int, queue: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            if run(queue_depth(host, port, queue)) >= expected:
                return
        time.sleep(0.05)
    raise TimeoutError(f"queue {queue} did not come back with {expected} messages in {timeout}s")


def warren_recovery(data_dir: Path, messages: int) -> float:
    """Seconds from restarting Warren after kill -9 until the queue holds every message; also
    prints the memory each queued message costs before the crash and after recovery."""
    queue = f"bench-recovery-{uuid.uuid4().hex[:8]}"
    broker = BrokerProcess(data_dir)
    empty = resident_bytes(broker.proc.pid)
    run(fill_durable_queue("127.0.0.1", broker.port, queue, messages))
    filled = resident_bytes(broker.proc.pid)
    broker.kill()
    started = time.perf_counter()
    broker = BrokerProcess(data_dir, port=broker.port, start_timeout=600)  # recovery first
    try:
        wait_for_depth("127.0.0.1", broker.port, queue, messages, 600)
        elapsed = time.perf_counter() - started
        recovered = resident_bytes(broker.proc.pid)
        print(
            f"warren memory per queued message: {(filled - empty) / messages:.0f} B with its"
            f" body in memory, {(recovered - empty) / messages:.0f} B after recovery (body in"
            " the log)"
        )
        return elapsed
    finally:
        run(delete_queue("127.0.0.1", broker.port, queue))
        broker.stop()


def rabbitmq_recovery(messages: int) -> float:
    """Seconds from `rabbitmqctl start_app` until the queue holds every message again."""
    queue = f"bench-recovery-{uuid.uuid4().hex[:8]}"
    run(fill_durable_queue(*RABBITMQ, queue, messages))
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True)
    started = time.perf_counter()
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True)
    try:
        wait_for_depth(*RABBITMQ, queue, messages, 600)
        return time.perf_counter() - started
    finally:
        run(delete_queue(*RABBITMQ, queue))


async def through_durable_queue(host: str, port: int, queue: str, messages: int) -> None:
    """Publish with confirms while a consumer acks every message: steady durable traffic."""
    consumer = await connect(host, port)
    publisher = await connect(host, port)
    try:
        done = await acking_consumer(consumer, queue, messages, durable=True)
        await publisher.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        await publish_confirmed(publisher, queue, messages)
        await asyncio.wait_for(done, timeout=max(60, messages / 1000))
    finally:
        await publisher.close()
        await consumer.close()


def disk_use(data_dir: Path, messages: int) -> None:
    broker = BrokerProcess(data_dir)
    try:
        started = time.perf_counter()
        run(through_durable_queue("127.0.0.1", broker.port, "bench-disk", messages))
        elapsed = time.perf_counter() - started
        # One more confirmed publish: a sync after the last ack, so the log has settled.
        run(fill_durable_queue("127.0.0.1", broker.port, "bench-disk-marker", 1))
        time.sleep(0.5)  # let the last garbage collection finish
        log_bytes = sum(f.stat().st_size for f in (data_dir / "wal").glob("*.wal"))
    finally:
        broker.stop()
    payload = messages * len(BODY)
    print(f"\nscenario disk: {messages} persistent 256 B messages through a durable queue")
    print(f"  {messages / elapsed:.0f} msg/s published (confirmed) and consumed (acked)")
    print(
        f"  log left behind: {log_bytes / 2**20:.1f} MiB for {payload / 2**20:.0f} MiB of"
        f" message bodies ({100 * log_bytes / payload:.1f}%)"
    )


def rabbitmq_available() -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(RABBITMQ, 1):
        return True
    return False


def report(title: str, unit: str, results: dict[str, list[float]], higher_is_better: bool) -> None:
    print(f"\n{title}")
    medians = {name: statistics.median(values) for name, values in results.items() if values}
    for name, value in medians.items():
        runs = ", ".join(f"{v:.2f}" for v in results[name])
        print(f"  {name:9s} median {value:10.2f} {unit}  (runs: {runs})")
    if len(medians) == 2:
        ratio = medians["warren"] / medians["rabbitmq"]
        if not higher_is_better:
            ratio = 1 / ratio
        better = "higher" if higher_is_better else "lower"
        print(f"  ratio warren/rabbitmq = {ratio:.2f}x ({unit}, {better} is better, >1 is Warren)")


def throughput(
    name: str, rounds: int, messages: int, warren_port: int, with_rabbitmq: bool
) -> None:
    scenario = {
        "transient": transient_round,
        "persistent": persistent_round,
        "ttl": ttl_round,
        "priority": priority_round,
        "fanout": fanout_round,
    }[name]
    results: dict[str, list[float]] = {"warren": [], "rabbitmq": []}
    run(scenario("127.0.0.1", warren_port, min(messages, 20_000)))  # warm-up
    for round_number in range(1, rounds + 1):
        targets = [("warren", ("127.0.0.1", warren_port))]
        if with_rabbitmq:
            targets.append(("rabbitmq", RABBITMQ))
        for target, (host, port) in targets:
            rate = run(scenario(host, port, messages))
            results[target].append(rate)
            print(f"{name} round {round_number} {target:8s} {rate:10.0f} msg/s", flush=True)
    detail = {
        "transient": f"prefetch {PREFETCH}, manual acks, transient",
        "persistent": f"durable queue, delivery-mode 2, confirms (window {CONFIRM_WINDOW})",
        "ttl": "x-message-ttl 50 ms, all expire into a dead-letter queue, consumed there",
        "priority": "x-max-priority 10, priorities 0-9, published as a backlog, then consumed",
        "fanout": "fanout exchange, a consumer per queue, transient, deliveries/s",
    }[name]
    queues = f"{FANOUT_QUEUES} queues" if name == "fanout" else "1 queue"
    report(f"scenario {name}: {messages} x 256 B, {queues}, {detail}", "msg/s", results, True)


SCRAPER = """
import sys, time, urllib.request
url, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    urllib.request.urlopen(url).read()
    time.sleep(0.1)
"""


def metrics_cost(data_dir: Path, rounds: int, messages: int) -> None:
    """Warren only: transient throughput while Prometheus scrapes /metrics every 100 ms (from
    another process) against the same broker left alone, alternating rounds."""
    metrics_port = free_port()
    broker = BrokerProcess(data_dir, None, "--metrics-port", str(metrics_port))
    results: dict[str, list[float]] = {"scraped": [], "quiet": []}
    try:
        run(transient_round("127.0.0.1", broker.port, min(messages, 20_000)))  # warm-up
        for round_number in range(1, rounds + 1):
            for mode in ("quiet", "scraped"):
                scraper = None
                if mode == "scraped":
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, url, "600"])
                try:
                    rate = run(transient_round("127.0.0.1", broker.port, messages))
                finally:
                    if scraper is not None:
                        scraper.kill()
                        scraper.wait()
                results[mode].append(rate)
                print(f"metrics round {round_number} {mode:8s} {rate:10.0f} msg/s", flush=True)
    finally:
        broker.stop()
    print(f"\nscenario metrics: transient {messages} x 256 B, /metrics scraped every 100 ms")
    medians = {mode: statistics.median(values) for mode, values in results.items()}
    for mode, value in medians.items():
        print(f"  {mode:8s} median {value:10.0f} msg/s")
    print(f"  ratio scraped/quiet = {medians['scraped'] / medians['quiet']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--scenario",
        default="all",
        choices=[
            "all",
            "transient",
            "persistent",
            "ttl",
            "priority",
            "fanout",
            "delayed",
            "recovery",
            "disk",
            "metrics",
            "soak",
            "crash",
            "backlog",
            "many-queues",
        ],
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recovery-messages", type=int, default=200_000)
    parser.add_argument("--disk-messages", type=int, default=1_000_000)
    parser.add_argument("--no-rabbitmq", action="store_true", help="measure Warren only")
    parser.add_argument("--seed", type=int, default=None, help="soak, crash: random seed")
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--soak-rate", type=int, default=300, help="msg/s per soak publisher")
    parser.add_argument("--soak-segment-size", type=int, default=1 << 20)
    parser.add_argument("--crash-cycles", type=int, default=100)
    parser.add_argument("--crash-segment-size", type=int, default=256 * 1024)
    parser.add_argument("--crash-body-bytes", type=int, default=2048)
    parser.add_argument("--crash-publishers", type=int, default=3)
    parser.add_argument("--crash-park-cycles", type=int, default=5)
    parser.add_argument("--delayed-messages", type=int, default=1_000_000)
    parser.add_argument("--delayed-window", type=float, default=60.0, help="seconds")
    parser.add_argument("--backlog-messages", type=int, default=1_000_000)
    parser.add_argument("--backlog-queues", type=int, default=1, help="backlog: spread over")
    parser.add_argument("--queues", type=int, default=10_000, help="many-queues")
    parser.add_argument("--bindings", type=int, default=100_000, help="many-queues")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="backlog, many-queues: seconds in all"
    )
    args = parser.parse_args()
    if args.scenario in ("soak", "crash", "delayed"):
        if args.seed is None:
            args.seed = random.randrange(2**32)
        print(f"command: scripts/bench {shlex.join(sys.argv[1:])}")
        print(f"seed: {args.seed}", flush=True)
        stress = {"soak": soak, "crash": crash_cycles, "delayed": delayed_scale}[args.scenario]
        with tempfile.TemporaryDirectory(prefix="warren-bench-") as data_dir:
            return stress(Path(data_dir) / args.scenario, args, random.Random(args.seed))
    with_rabbitmq = not args.no_rabbitmq
    if with_rabbitmq:
        subprocess.run([str(ROOT / "scripts" / "rabbitmq"), "start"], check=True)
        if not rabbitmq_available():
            print("RabbitMQ is not answering on 127.0.0.1:5672", file=sys.stderr)
            return 1
    if args.scenario in ("backlog", "many-queues"):
        print(f"command: scripts/bench {shlex.join(sys.argv[1:])}", flush=True)
        scale = {"backlog": backlog, "many-queues": many_queues}[args.scenario]
        with tempfile.TemporaryDirectory(prefix="warren-bench-") as data_dir:
            return scale(Path(data_dir) / args.scenario, args, with_rabbitmq)
    everything = [
        "transient",
        "persistent",
        "ttl",
        "priority",
        "fanout",
        "recovery",
        "disk",
        "metrics",
    ]
    wanted = everything if args.scenario == "all" else [args.scenario]
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as data_dir:
        for name in wanted:
            if name == "disk":
                disk_use(Path(data_dir) / "disk", args.disk_messages)
                continue
            if name == "metrics":
                metrics_cost(Path(data_dir) / "metrics", args.rounds, args.messages)
                continue
            if name == "recovery":
                results: dict[str, list[float]] = {"warren": [], "rabbitmq": []}
                results["warren"].append(
                    warren_recovery(Path(data_dir) / "recovery", args.recovery_messages)
                )
                if with_rabbitmq:
                    results["rabbitmq"].append(rabbitmq_recovery(args.recovery_messages))
                report(
                    f"scenario recovery: {args.recovery_messages} queued persistent 256 B messages",
                    "s",
                    results,
                    False,
                )
                continue
            warren = BrokerProcess(Path(data_dir) / name)
            try:
                throughput(name, args.rounds, args.messages, warren.port, with_rabbitmq)
            finally:
                warren.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
