"""scripts/bench --scenario backlog: a deep durable backlog built while nobody consumes, then
drained; how fast each way, and what a queued message costs in broker memory, Warren next to
RabbitMQ.

--backlog-messages N (1M) persistent 256-byte messages are published with publisher confirms (at
most WINDOW unconfirmed) into --backlog-queues Q (1) durable queues, round-robin, with no
consumer; then one consumer drains them all: one channel, prefetch 1000 (Basic.Qos global=false,
so per consumer, as clients set it), a Basic.Consume per queue, a multiple ack every ACK_EVERY
deliveries. Printed per broker: the publish rate (first publish to last confirm), the drain rate
(first Basic.Consume to last delivery), the RSS once the queues are full (the highest of that
and samples every SAMPLE_EVERY s while publishing) and per queued message ((that peak - RSS with
the queues declared, before publishing) / messages confirmed), with ratios. Warren is a fresh
broker process with its data dir in a temp dir; RabbitMQ is the node on 5672, measured as its
beam.smp's RSS (a node that grew and freed memory earlier may queue into memory it kept, so its
per-message figure can read low). Both brokers' /api/nodes are polled for memory and disk
alarms, and RabbitMQ's queues for how many messages it paged out to disk. Publishing that makes
no progress for STALL seconds (a broker blocking publishers on an alarm) ends the run and skips
the drain. One run per broker, within a share of --timeout; the queues are deleted afterwards on
both brokers, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pamqp import commands

from scripts.amqp_loadgen import LoadClient, ack_frame, connect, publish_frames
from scripts.bench_support import (
    BODY,
    PREFETCH,
    PUBLISH_BATCH,
    RABBITMQ_MANAGEMENT,
    RABBITMQ_PORT,
    Row,
    broker_pid,
    management_json,
    method_frame,
    pipelined,
    resident_bytes,
    run,
    side_by_side,
)
from tests.support import BrokerProcess, free_port

WINDOW = 4000  # unconfirmed publishes in flight at most
ACK_EVERY = 250  # deliveries per multiple ack (a quarter of the prefetch)
STALL = 120.0  # seconds without a confirm, a writable socket or a delivery: the broker stopped
SAMPLE_EVERY = 0.5  # seconds between RSS samples
NODE_EVERY = 2.0  # seconds between /api/nodes polls
CLEANUP_TIMEOUT = 300.0  # seconds to delete the queues, on top of --timeout
MIB = 2**20


class Stalled(Exception):
    """Publishing or draining made no progress for STALL seconds."""


@dataclass
class Outcome:
    """One broker's figures, filled in as the run goes, so a timeout keeps what it measured."""

    publish_rate: float | None = None
    drain_rate: float | None = None
    before: int | None = None  # RSS with the queues declared, before publishing
    full: int | None = None  # RSS right after the last confirm
    peak: int | None = None  # the highest of `full` and the samples while publishing
    drain_peak: int | None = None
    confirmed: int = 0  # acked by the broker
    nacked: int = 0
    received: int = 0
    mem_limit: int = 0  # the broker's memory high watermark, from /api/nodes
    mem_used_peak: int = 0  # the broker's own memory accounting, from /api/nodes
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    @property
    def per_message(self) -> float | None:
        if self.peak is None or self.before is None or not self.confirmed:
            return None
        return (self.peak - self.before) / self.confirmed


class Watch(threading.Thread):
    """Samples the broker's RSS and polls its /api/nodes alarms from a thread: the peak falls
    between the readings the phases take, and an alarm is why publishing would stop."""

    def __init__(self, pid: int, management: str, outcome: Outcome) -> None:
        super().__init__(daemon=True)
        self.pid, self.management, self.outcome = pid, management, outcome
        self.phase = "declaring"
        self.highest = 0
        self.finished = threading.Event()
        self.t0 = time.monotonic()
        self.alarms: dict[str, bool] = {}
        self.lock = threading.Lock()  # poll() and take_peak() are called from the main thread too

    def take_peak(self) -> int:
        """The highest RSS sampled since the last call."""
        with self.lock:
            highest, self.highest = self.highest, 0
        return highest

    def run(self) -> None:
        next_poll = 0.0
        while not self.finished.wait(SAMPLE_EVERY):
            with contextlib.suppress(OSError), self.lock:
                self.highest = max(self.highest, resident_bytes(self.pid))
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + NODE_EVERY
                self.poll()

    def poll(self) -> None:
        """Read /api/nodes: the memory in use by the broker's own count, alarms raised."""
        try:
            node = management_json(self.management, "/api/nodes", timeout=5)[0]
        except (OSError, ValueError, KeyError, IndexError):
            return
        outcome = self.outcome
        with self.lock:
            outcome.mem_limit = int(node.get("mem_limit") or 0)
            outcome.mem_used_peak = max(outcome.mem_used_peak, int(node.get("mem_used") or 0))
            for alarm in ("mem_alarm", "disk_free_alarm"):
                active = bool(node.get(alarm))
                if active != self.alarms.get(alarm, False):
                    self.alarms[alarm] = active
                    outcome.notes.append(
                        f"{alarm} {'raised' if active else 'cleared'} at"
                        f" {time.monotonic() - self.t0:.0f} s ({self.phase}: {outcome.confirmed}"
                        f" confirmed, {outcome.received} drained)"
                    )


def _why(client: LoadClient) -> str:
    """What the broker said, if it closed the channel or the connection instead of confirming."""
    if not client.replies.empty():
        return f"; the broker sent {client.replies.get_nowait()}"
    return "; the connection is closed" if client.closed.is_set() else ""


async def _publish(client: LoadClient, queues: list[str], messages: int, outcome: Outcome) -> float:
    """Publish `messages` persistent messages round-robin over `queues`, at most WINDOW
    unconfirmed; seconds from the first publish to the last confirm."""
    await client.call(1, commands.Confirm.Select(), commands.Confirm.SelectOk)
    frames = [publish_frames(1, "", queue, BODY, persistent=True) for queue in queues]
    unconfirmed: set[int] = set()
    low = 1
    sent = 0
    confirmed = asyncio.Event()  # set by every confirm

    def on_confirm(tag: int, multiple: bool, ack: bool) -> None:
        nonlocal low
        before = len(unconfirmed)
        unconfirmed.difference_update(range(low, tag + 1) if multiple else (tag,))
        if multiple:
            low = max(low, tag + 1)
        if ack:
            outcome.confirmed += before - len(unconfirmed)
        else:
            outcome.nacked += before - len(unconfirmed)
        confirmed.set()

    async def next_confirm(waiting_for: str) -> None:
        confirmed.clear()
        try:
            await asyncio.wait_for(confirmed.wait(), STALL)
        except TimeoutError:
            raise Stalled(f"publishing stalled: no confirm for {STALL:.0f} s ({waiting_for},"
                          f" {outcome.confirmed} of {messages} confirmed){_why(client)}"
                          ) from None  # fmt: skip

    client.on_confirm = on_confirm
    started = time.perf_counter()
    while sent < messages:
        while len(unconfirmed) >= WINDOW:
            await next_confirm("window full")
        count = min(PUBLISH_BATCH, messages - sent, WINDOW - len(unconfirmed))
        if len(frames) == 1:
            client.send(frames[0] * count)
        else:
            client.send(b"".join([frames[(sent + i) % len(frames)] for i in range(count)]))
        unconfirmed.update(range(sent + 1, sent + count + 1))
        sent += count
        try:
            await asyncio.wait_for(client.drain(), STALL)
        except TimeoutError:
            raise Stalled(f"publishing stalled: the broker read nothing for {STALL:.0f} s"
                          f" ({outcome.confirmed} of {messages} confirmed){_why(client)}"
                          ) from None  # fmt: skip
    while unconfirmed:
        await next_confirm("the last confirms")
    return time.perf_counter() - started


async def _drain(port: int, queues: list[str], messages: int, outcome: Outcome) -> float:
    """One consumer takes all `messages` from `queues`; msg/s from the first Basic.Consume to
    the last delivery."""
    client = await connect("127.0.0.1", port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        await client.call(1, commands.Basic.Qos(prefetch_count=PREFETCH), commands.Basic.QosOk)
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def on_deliver(channel: int, tag: int) -> None:
            outcome.received += 1
            if outcome.received % ACK_EVERY == 0 or outcome.received == messages:
                client.send(ack_frame(channel, tag, multiple=True))
            if outcome.received >= messages and not done.done():
                done.set_result(time.perf_counter())

        client.on_deliver = on_deliver
        started = time.perf_counter()
        for number, queue in enumerate(queues):
            consume = commands.Basic.Consume(queue=queue, consumer_tag=f"drain-{number}")
            await client.call(1, consume, commands.Basic.ConsumeOk)
        seen = -1
        while not done.done():
            if outcome.received == seen:
                raise Stalled(f"draining stalled: no delivery for {STALL:.0f} s"
                              f" ({outcome.received} of {messages} drained)")  # fmt: skip
            seen = outcome.received
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), STALL)
        return messages / (done.result() - started)
    finally:
        await client.close()


def _paging(management: str, queues: list[str], depth: int, outcome: Outcome) -> None:
    """Note how many of the queued messages RabbitMQ holds in RAM and how many it paged out to
    disk (fields of its classic queues' rows, which appear a few seconds after they fill)."""
    wanted = set(queues)
    columns = "name,messages,messages_ram,messages_paged_out"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.0)
        with contextlib.suppress(OSError, ValueError):
            rows = management_json(management, f"/api/queues/%2F?columns={columns}", timeout=120)
            ours = [row for row in rows if row.get("name") in wanted]
            if len(ours) == len(wanted) and all("messages_paged_out" in row for row in ours):
                queued = sum(row.get("messages") or 0 for row in ours)
                if queued < depth:
                    continue  # statistics from before the last publishes
                ram = sum(row.get("messages_ram") or 0 for row in ours)
                paged = sum(row["messages_paged_out"] or 0 for row in ours)
                outcome.notes.append(
                    f"queues full: {queued} messages, {ram} in RAM, {paged} paged out to disk"
                )
                return
    outcome.notes.append("queues full: no statistics on paging from /api/queues within 30 s")


async def _backlog(
    port: int, management: str, queues: list[str], messages: int, watch: Watch, rabbitmq: bool
) -> None:
    outcome = watch.outcome
    client = await connect("127.0.0.1", port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        declares = [
            method_frame(commands.Queue.Declare(queue=queue, durable=True, nowait=True))
            for queue in queues
        ]
        await pipelined(client, declares, STALL)
        await asyncio.sleep(1.0)  # settle: the baseline without the declares' transient garbage
        outcome.before = resident_bytes(watch.pid)
        watch.take_peak()
        watch.phase = "publishing"
        elapsed = await _publish(client, queues, messages, outcome)
        outcome.publish_rate = messages / elapsed
        outcome.full = resident_bytes(watch.pid)
        outcome.peak = max(outcome.full, watch.take_peak())
        watch.phase = "full"
        watch.poll()  # the broker's own memory count with the queues full
        depth = 0
        for queue in queues:
            passive = commands.Queue.Declare(queue=queue, passive=True)
            depth += (await client.call(1, passive, commands.Queue.DeclareOk)).message_count
    finally:
        await client.close()
    if depth != outcome.confirmed:
        outcome.failed = True
        outcome.notes.append(f"queues hold {depth} messages after {outcome.confirmed} confirmed")
    if outcome.nacked:
        outcome.failed = True
        outcome.notes.append(f"{outcome.nacked} publishes nacked")
    if rabbitmq:
        _paging(management, queues, depth, outcome)
    watch.phase = "draining"
    if depth:
        outcome.drain_rate = await _drain(port, queues, depth, outcome)
    outcome.drain_peak = max(watch.take_peak(), resident_bytes(watch.pid))


async def _delete(port: int, queues: list[str]) -> None:
    client = await connect("127.0.0.1", port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        deletes = [
            method_frame(commands.Queue.Delete(queue=queue, nowait=True)) for queue in queues
        ]
        await pipelined(client, deletes, CLEANUP_TIMEOUT)
    finally:
        await client.close()


def _measure(
    port: int, management: str, queues: list[str], messages: int, budget: float, rabbitmq: bool
) -> Outcome:
    """One broker's run within `budget` seconds, then its queues deleted in any case."""
    outcome = Outcome()
    pid = broker_pid(management)
    watch = Watch(pid, management, outcome)
    watch.start()
    try:
        run(asyncio.wait_for(_backlog(port, management, queues, messages, watch, rabbitmq), budget))
    except TimeoutError:
        outcome.failed = True
        outcome.notes.append(f"gave up after {budget:.0f} s (its share of --timeout) while"
                             f" {watch.phase}")  # fmt: skip
    except Stalled as stalled:
        outcome.failed = True
        outcome.notes.append(str(stalled))
    except (OSError, RuntimeError, ValueError) as error:
        outcome.failed = True
        outcome.notes.append(f"failed while {watch.phase}: {error}")
    finally:
        watch.finished.set()
        watch.join()
        if outcome.peak is None and outcome.before is not None:
            with contextlib.suppress(OSError):  # stopped while publishing: the peak so far
                outcome.peak = max(watch.take_peak(), resident_bytes(pid))
        try:
            run(asyncio.wait_for(_delete(port, queues), CLEANUP_TIMEOUT))
        except (OSError, RuntimeError, TimeoutError) as error:
            outcome.failed = True
            outcome.notes.append(f"could NOT delete its {len(queues)} queues ({error});"
                                 f" they are named {queues[0]}...")  # fmt: skip
    return outcome


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MIB


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def backlog(data_dir: Path, args: argparse.Namespace, with_rabbitmq: bool) -> int:
    """Warren (a fresh broker), then RabbitMQ; each within its share of --timeout."""
    messages, count = args.backlog_messages, args.backlog_queues
    if messages < 1 or count < 1:
        print("--backlog-messages and --backlog-queues must be at least 1")
        return 2
    prefix = f"bench-backlog-{uuid.uuid4().hex[:8]}"
    queues = [prefix] if count == 1 else [f"{prefix}-{number}" for number in range(count)]
    deadline = time.monotonic() + args.timeout
    names = ["warren", "rabbitmq"] if with_rabbitmq else ["warren"]
    results: dict[str, Outcome] = {}
    for position, name in enumerate(names):
        budget = (deadline - time.monotonic()) / (len(names) - position)
        print(f"backlog {name}: {messages} messages into {count} durable queue(s), at most"
              f" {budget:.0f} s", flush=True)  # fmt: skip
        if name == "warren":
            broker = BrokerProcess(data_dir, management_port=free_port(), start_timeout=60)
            try:
                management = f"http://127.0.0.1:{broker.management_port}"
                outcome = _measure(broker.port, management, queues, messages, budget, False)
            finally:
                broker.stop(timeout=60)
        else:
            outcome = _measure(RABBITMQ_PORT, RABBITMQ_MANAGEMENT, queues, messages, budget, True)
        results[name] = outcome
        print(f"backlog {name}: publish {_figure(outcome.publish_rate)} msg/s, drain"
              f" {_figure(outcome.drain_rate)} msg/s, peak RSS {_figure(_mib(outcome.peak))} MiB"
              + (" (failed)" if outcome.failed else ""), flush=True)  # fmt: skip
    warren, rabbitmq = results["warren"], results.get("rabbitmq", Outcome())
    spread = "1 durable queue" if count == 1 else f"{count} durable queues, round-robin"
    side_by_side(
        f"scenario backlog: {messages} persistent 256 B messages into {spread},\n  published"
        f" with confirms (window {WINDOW}) and no consumer, then drained by one consumer\n"
        f"  (prefetch {PREFETCH} per consumer, a multiple ack every {ACK_EVERY})",
        [
            Row("publish (msg/s, confirmed)", warren.publish_rate, rabbitmq.publish_rate, True),
            Row("drain (msg/s)", warren.drain_rate, rabbitmq.drain_rate, True),
            Row(
                "RSS before publishing (MiB)", _mib(warren.before), _mib(rabbitmq.before), False, 1
            ),
            Row("peak RSS, queues full (MiB)", _mib(warren.peak), _mib(rabbitmq.peak), False, 1),
            Row("RSS per queued message (B)", warren.per_message, rabbitmq.per_message, False),
            Row(
                "peak RSS while draining (MiB)",
                _mib(warren.drain_peak),
                _mib(rabbitmq.drain_peak),
                False,
                1,
            ),
        ],
    )
    if messages < 100_000:
        print("  (at this size fixed costs, the allocators' growth and the buffers of the"
              " publish burst,\n  dominate the per-message figure)")  # fmt: skip
    for name, outcome in results.items():
        print(f"  {name}: memory high watermark {outcome.mem_limit / MIB:.0f} MiB; mem_used (the"
              f" broker's own count) up to {outcome.mem_used_peak / MIB:.0f} MiB")  # fmt: skip
        alarms = [note for note in outcome.notes if "alarm" in note]
        if not alarms:
            print(f"  {name}: no memory or disk alarm seen")
        for note in outcome.notes:
            print(f"  {name}: {note}")
    return 1 if any(outcome.failed for outcome in results.values()) else 0
