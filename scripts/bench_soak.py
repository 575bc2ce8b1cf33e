"""The `soak` stress scenario of scripts/bench (Warren only): everything at once, for a while.

Exists to catch what short tests miss: leaks, lost or doubled messages and clients cut off
under mixed, long-running load. Publishers (with and without confirms), acking consumers,
connection churn and misbehaving clients run against one broker for --soak-seconds; it checks,
per queue by message id, that confirmed = acked + still queued (nothing lost, nothing twice),
that no long-lived client is cut off and that the broker survives and stops cleanly, and prints
the broker's RSS and what it did to each misbehaving client.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pamqp import commands, frame as pamqp_frame
from pamqp.header import ProtocolHeader

from scripts.amqp_loadgen import (
    LoadClient,
    MessageClient,
    _frame as loadgen_frame,
    ack_frame,
    connect,
    get_frame,
    nack_frame,
    publish_frames,
    reject_frame,
)
from scripts.bench_support import CONFIRM_WINDOW, queue_depth, resident_bytes, run, stress_config
from tests.support import BrokerProcess

SOAK_DURABLE = ("soak-durable-1", "soak-durable-2")
SOAK_TRANSIENT = "soak-transient"
SOAK_CHURN = "soak-churn"
SOAK_GETTER = "soak-getter"
GETTER_BODY = 32 * 1024
GETTER_MAX_PAIRS = 4000  # Get/Reject pairs one unread pipeline sends: 128 MiB of replies at most
STALLERS = 3  # half-finished handshakes held open at any time


@dataclass
class Account:
    """What the soak's clients know about one queue's messages, by the id each body starts with."""

    queue: str
    confirmed: set[int] = field(default_factory=set)  # confirmed, or sent before a Close-Ok
    unconfirmed: set[int] = field(default_factory=set)  # sent, then dropped or nacked: maybe
    acked: list[int] = field(default_factory=list)  # acks the broker surely processed
    acked_unsure: set[int] = field(default_factory=set)  # acks the broker may have lost


async def next_reply(client: LoadClient, timeout: float) -> Any:
    """The next method the broker sent (other than deliveries and confirms); RuntimeError if
    the connection closes first, TimeoutError after `timeout` seconds."""
    if not client.replies.empty():
        return client.replies.get_nowait()
    reply = asyncio.ensure_future(client.replies.get())
    closed = asyncio.ensure_future(client.closed.wait())
    done, _ = await asyncio.wait({reply, closed}, timeout=timeout, return_when="FIRST_COMPLETED")
    closed.cancel()
    if reply in done:
        return reply.result()
    reply.cancel()
    if closed in done:
        raise RuntimeError("the connection closed")
    raise TimeoutError(f"no reply in {timeout} s")


async def close_cleanly(client: LoadClient) -> None:
    """Connection.Close, then wait for Close-Ok (the broker has processed everything sent
    before it), letting Connection.Blocked / Unblocked pass."""
    goodbye = commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    client.send(pamqp_frame.marshal(goodbye, 0))
    while True:
        method = await next_reply(client, 30)
        if isinstance(method, commands.Connection.CloseOk):
            break
        if not isinstance(method, commands.Connection.Blocked | commands.Connection.Unblocked):
            raise RuntimeError(f"expected Connection.CloseOk, got {method}")
    assert client.transport is not None
    client.transport.close()


@contextlib.asynccontextmanager
async def session(
    host: str, port: int, factory: type[LoadClient] = LoadClient
) -> AsyncIterator[Any]:
    """A connected client whose socket is dropped on the way out unless already closed."""
    client = await connect(host, port, factory=factory)
    try:
        yield client
    finally:
        if client.transport is not None and not client.transport.is_closing():
            client.transport.abort()


def drop(transport: Any, reset: bool) -> None:
    """Close a socket without Connection.Close; with `reset`, as a TCP RST (SO_LINGER 0)."""
    if reset:
        with contextlib.suppress(OSError, AttributeError):
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Publishing:
    """One channel's publishes by id, in confirm mode or not; every id sent ends up in the
    account as confirmed or unconfirmed."""

    def __init__(self, client: LoadClient, account: Account, confirms: bool) -> None:
        self.client = client
        self.account = account
        self.confirms = confirms
        self.pending: collections.deque[tuple[int, int]] = collections.deque()  # (tag, id)
        self.next_tag = 1
        self.nacked = 0
        self.settled = asyncio.Event()
        if confirms:
            client.on_confirm = self.on_confirm

    def on_confirm(self, tag: int, multiple: bool, ack: bool) -> None:
        pending = self.pending
        done = []
        if multiple:
            while pending and pending[0][0] <= tag:
                done.append(pending.popleft()[1])
        elif pending and pending[0][0] == tag:
            done.append(pending.popleft()[1])
        else:
            for entry in list(pending):
                if entry[0] == tag:
                    pending.remove(entry)
                    done.append(entry[1])
        if ack:
            self.account.confirmed.update(done)
        else:
            self.nacked += len(done)
            self.account.unconfirmed.update(done)
        if not pending:
            self.settled.set()

    def send(self, message_id: int, body: bytes, persistent: bool) -> None:
        self.client.send(publish_frames(1, "", self.account.queue, body, persistent))
        self.pending.append((self.next_tag, message_id))
        self.next_tag += 1
        self.settled.clear()

    async def wait_confirms(self, timeout: float) -> None:
        if self.pending:
            await asyncio.wait_for(self.settled.wait(), timeout)

    def closed_cleanly(self) -> None:
        """Close-Ok came: without confirms, everything sent was processed."""
        if not self.confirms:
            self.account.confirmed.update(message_id for _, message_id in self.pending)
            self.pending.clear()

    def abandon(self) -> None:
        """The connection went without a Close-Ok: what was not confirmed may or may not be
        queued."""
        self.account.unconfirmed.update(message_id for _, message_id in self.pending)
        self.pending.clear()


class Soak:
    """Publishers, consumers, connection churn and misbehaving clients against one broker until
    a deadline; then every message is accounted for."""

    def __init__(self, broker: BrokerProcess, args: argparse.Namespace, rng: random.Random):
        self.broker = broker
        self.host, self.port = "127.0.0.1", broker.port
        self.args = args
        self.rng = rng
        queues = (*SOAK_DURABLE, SOAK_TRANSIENT, SOAK_CHURN, SOAK_GETTER)
        self.accounts = {queue: Account(queue) for queue in queues}
        self.last_id = 0
        self.stopping = asyncio.Event()
        self.failures: list[str] = []
        self.errors: collections.Counter[str] = collections.Counter()  # churn clients' troubles
        self.stats: collections.Counter[str] = collections.Counter()
        self.outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.notes: list[str] = []
        self.getter_growth: list[int] = []  # broker RSS growth during each unread pipeline
        self.peak_rss = 0

    def new_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def child_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def rss(self) -> int:
        with contextlib.suppress(OSError):
            return resident_bytes(self.broker.proc.pid)
        return 0

    async def idle(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True once the soak is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    # ------------------------------------------------------------ setup and run
    async def setup(self) -> None:
        client = await connect(self.host, self.port)
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        for queue in (*SOAK_DURABLE, SOAK_CHURN):
            declare = commands.Queue.Declare(queue=queue, durable=True)
            await client.call(1, declare, commands.Queue.DeclareOk)
        for queue in (SOAK_TRANSIENT, SOAK_GETTER):
            await client.call(1, commands.Queue.Declare(queue=queue), commands.Queue.DeclareOk)
        await client.call(1, commands.Confirm.Select(), commands.Confirm.SelectOk)
        publishing = Publishing(client, self.accounts[SOAK_GETTER], confirms=True)
        message_id = self.new_id()
        publishing.send(message_id, str(message_id).encode().ljust(GETTER_BODY), False)
        await publishing.wait_confirms(30)
        await close_cleanly(client)

    async def run(self) -> int:
        await self.setup()
        started = time.monotonic()
        rss = self.rss()
        self.peak_rss = rss
        print(f"broker RSS at start: {rss / 2**20:.1f} MiB", flush=True)
        rate = self.args.soak_rate
        # name, queue, persistent, confirms, smallest and largest body
        publishers = [
            ("publisher-durable-1", SOAK_DURABLE[0], True, True, 16, 1024),
            ("publisher-durable-2", SOAK_DURABLE[1], True, True, 1024, 8192),
            ("publisher-transient", SOAK_TRANSIENT, False, True, 64, 4096),
            ("publisher-no-confirms", SOAK_TRANSIENT, False, False, 256, 256),
        ]
        clients = {
            name: self.publisher(name, *rest[:3], rate, *rest[3:]) for name, *rest in publishers
        }
        clients |= {
            "consumer-durable-1": self.consumer("c1", SOAK_DURABLE[0], prefetch=100),
            "nacker-durable-1": self.consumer("n1", SOAK_DURABLE[0], prefetch=20, nack_share=0.1),
            "consumer-durable-2": self.consumer("c2", SOAK_DURABLE[1], prefetch=10, ack_every=5),
            "consumer-transient": self.consumer("t", SOAK_TRANSIENT, prefetch=0),
            "churn-1": self.churn(),
            "churn-2": self.churn(),
            "misbehaving clients": self.misbehave(),
        }
        clients |= {f"staller-{number}": self.staller() for number in range(1, STALLERS + 1)}
        tasks = [asyncio.create_task(self.guard(*client)) for client in clients.items()]
        await self.monitor(started)
        await asyncio.wait_for(asyncio.gather(*tasks), 180)
        if self.broker.proc.poll() is not None:
            self.failures.append(f"the broker died (exit code {self.broker.proc.returncode})")
            return 1
        await asyncio.sleep(1)  # requeues of connections dropped at the very end
        ok = await self.accounting()
        rss = self.rss()
        print(
            f"broker RSS at the end (load stopped, queues drained): {rss / 2**20:.1f} MiB;"
            f" peak {self.peak_rss / 2**20:.1f} MiB",
            flush=True,
        )
        return 0 if ok and not self.failures else 1

    async def guard(self, name: str, coroutine: Any) -> None:
        """Run one of the soak's clients; its exception is a failure of the soak."""
        try:
            await coroutine
        except Exception as error:
            self.failures.append(f"{name}: {type(error).__name__}: {error}")

    async def monitor(self, started: float) -> None:
        """Samples the broker's RSS every second, prints it every minute, watches for the
        broker's death, and stops the soak at its deadline."""
        deadline = started + self.args.soak_seconds
        next_report = started + 60
        while True:
            await asyncio.sleep(1)
            if self.broker.proc.poll() is not None:
                print(f"the broker died with exit code {self.broker.proc.returncode}", flush=True)
                break
            now = time.monotonic()
            rss = self.rss()
            self.peak_rss = max(self.peak_rss, rss)
            if now >= next_report:
                next_report += 60
                confirmed = sum(len(a.confirmed) for a in self.accounts.values())
                acked = sum(len(a.acked) for a in self.accounts.values())
                print(
                    f"{now - started:5.0f} s: broker RSS {rss / 2**20:.1f} MiB (peak"
                    f" {self.peak_rss / 2**20:.1f}); {confirmed} confirmed, {acked} acked,"
                    f" {self.stats['churn connections']} churn connections,"
                    f" {sum(sum(c.values()) for c in self.outcomes.values())} misbehaviours",
                    flush=True,
                )
            if now >= deadline:
                break
        self.stopping.set()

    # ------------------------------------------------------------ long-lived clients
    async def publisher(
        self,
        name: str,
        queue: str,
        persistent: bool,
        confirms: bool,
        rate: int,
        smallest: int,
        largest: int,
    ) -> None:
        """`rate` messages a second in ten batches, at most CONFIRM_WINDOW unconfirmed."""
        rng = self.child_rng()
        client = await connect(self.host, self.port)
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        if confirms:
            await client.call(1, commands.Confirm.Select(), commands.Confirm.SelectOk)
        publishing = Publishing(client, self.accounts[queue], confirms)
        try:
            while not await self.idle(0.1):
                if client.closed.is_set():
                    raise RuntimeError("the broker closed the connection")
                if len(publishing.pending) >= CONFIRM_WINDOW and confirms:
                    continue
                for _ in range(max(1, rate // 10)):
                    message_id = self.new_id()
                    body = str(message_id).encode().ljust(rng.randint(smallest, largest))
                    publishing.send(message_id, body, persistent)
                await asyncio.wait_for(client.drain(), 30)
            if confirms:
                await publishing.wait_confirms(60)
            await close_cleanly(client)
            publishing.closed_cleanly()
        finally:
            publishing.abandon()
            if publishing.nacked:
                self.notes.append(f"{name}: {publishing.nacked} publishes nacked")
            if client.transport and not client.transport.is_closing():
                client.transport.abort()

    async def consumer(
        self,
        name: str,
        queue: str,
        prefetch: int,
        nack_share: float = 0.0,
        ack_every: int = 0,
    ) -> None:
        """Manual acks, one per message or (`ack_every`) one multiple ack per batch; a share
        `nack_share` is nacked back to the queue instead."""
        rng = self.child_rng()
        account = self.accounts[queue]
        client = await connect(self.host, self.port, factory=MessageClient)
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        if prefetch:
            await client.call(1, commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk)
        batch: list[int] = []
        acking = True

        def on_message(channel: int, tag: int, redelivered: bool, body: bytes) -> None:
            if not acking:
                return  # requeued when the connection closes
            message_id = int(body)
            if nack_share and rng.random() < nack_share:
                client.send(nack_frame(channel, tag, requeue=True))
                self.stats["nacked and requeued"] += 1
            elif ack_every:
                batch.append(message_id)
                if len(batch) >= ack_every:
                    client.send(ack_frame(channel, tag, multiple=True))
                    account.acked.extend(batch)
                    batch.clear()
            else:
                client.send(ack_frame(channel, tag))
                account.acked.append(message_id)

        client.on_message = on_message
        consume = commands.Basic.Consume(queue=queue, consumer_tag=name)
        await client.call(1, consume, commands.Basic.ConsumeOk)
        try:
            while not await self.idle(1):
                if client.closed.is_set():
                    raise RuntimeError("the broker closed the connection")
        finally:
            acking = False
        await close_cleanly(client)

    # ------------------------------------------------------------ connection churn
    async def churn(self) -> None:
        """Short-lived clients, one after another: publishers and consumers that close
        cleanly or drop the socket, bare connects, channel churn."""
        rng = self.child_rng()
        actions = {
            "publish, close": lambda: self.churn_publish(rng, abrupt=False),
            "publish, drop": lambda: self.churn_publish(rng, abrupt=True),
            "consume, close": lambda: self.churn_consume(rng, abrupt=False),
            "consume, drop": lambda: self.churn_consume(rng, abrupt=True),
            "connect, drop": lambda: self.churn_connect(rng),
            "channel churn": lambda: self.churn_channels(rng),
        }
        names = list(actions)
        while not await self.idle(rng.uniform(0, 0.1)):
            name = rng.choice(names)
            self.stats["churn connections"] += 1
            try:
                await asyncio.wait_for(actions[name](), 60)
            except (OSError, RuntimeError, TimeoutError, KeyError) as error:
                self.errors[f"{name}: {type(error).__name__}: {error}"] += 1

    async def churn_publish(self, rng: random.Random, abrupt: bool) -> None:
        client = await connect(self.host, self.port)
        publishing = Publishing(client, self.accounts[SOAK_CHURN], confirms=True)
        try:
            await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
            await client.call(1, commands.Confirm.Select(), commands.Confirm.SelectOk)
            for _ in range(rng.randint(1, 50)):
                message_id = self.new_id()
                body = str(message_id).encode().ljust(rng.randint(8, 2048))
                publishing.send(message_id, body, persistent=True)
            await publishing.wait_confirms(30)
            if abrupt:
                for _ in range(rng.randint(0, 20)):  # these may or may not arrive
                    message_id = self.new_id()
                    publishing.send(message_id, str(message_id).encode(), persistent=True)
                drop(client.transport, reset=rng.random() < 0.5)
            else:
                await close_cleanly(client)
        finally:
            publishing.abandon()
            if client.transport and not client.transport.is_closing():
                client.transport.abort()

    async def churn_consume(self, rng: random.Random, abrupt: bool) -> None:
        account = self.accounts[SOAK_CHURN]
        client = await connect(self.host, self.port, factory=MessageClient)
        acked: list[int] = []
        acking = True

        def on_message(channel: int, tag: int, redelivered: bool, body: bytes) -> None:
            if acking and rng.random() < 0.8:  # the rest stays unacked until the end
                client.send(ack_frame(channel, tag))
                acked.append(int(body))

        client.on_message = on_message
        prefetch = rng.randint(1, 50)
        try:
            await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
            await client.call(1, commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk)
            consume = commands.Basic.Consume(queue=SOAK_CHURN)
            await client.call(1, consume, commands.Basic.ConsumeOk)
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            acking = False
            if abrupt:
                # A reply after the acks proves the broker processed them; then drop the
                # socket with deliveries unacked, which go back to the queue.
                qos = commands.Basic.Qos(prefetch_count=prefetch)
                await client.call(1, qos, commands.Basic.QosOk)
                account.acked.extend(acked)
                acked.clear()
                drop(client.transport, reset=rng.random() < 0.5)
            else:
                await close_cleanly(client)
                account.acked.extend(acked)
                acked.clear()
        finally:
            acking = False
            account.acked_unsure.update(acked)
            if client.transport and not client.transport.is_closing():
                client.transport.abort()

    async def churn_connect(self, rng: random.Random) -> None:
        """Drop the socket at some point of the handshake or just after it."""
        stage = rng.choice(["tcp", "header", "start-ok", "open", "open, channel"])
        if stage in ("tcp", "header", "start-ok"):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                if stage != "tcp":
                    writer.write(ProtocolHeader().marshal())
                    await asyncio.wait_for(reader.read(4096), 10)  # Connection.Start
                if stage == "start-ok":
                    writer.write(start_ok())
                    await writer.drain()
            finally:
                drop(writer.transport, reset=rng.random() < 0.5)
            return
        async with session(self.host, self.port) as client:
            if stage == "open, channel":
                await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
            drop(client.transport, reset=rng.random() < 0.5)

    async def churn_channels(self, rng: random.Random) -> None:
        """Open and close channels, some with an exclusive queue, then close the connection."""
        client = await connect(self.host, self.port)
        try:
            for _ in range(rng.randint(1, 30)):
                channel = rng.randint(1, 16)
                await client.call(channel, commands.Channel.Open(), commands.Channel.OpenOk)
                if rng.random() < 0.3:
                    declare = commands.Queue.Declare(exclusive=True)
                    await client.call(channel, declare, commands.Queue.DeclareOk)
                close = commands.Channel.Close(reply_code=200, class_id=0, method_id=0)
                await client.call(channel, close, commands.Channel.CloseOk)
            await close_cleanly(client)
        finally:
            if client.transport and not client.transport.is_closing():
                client.transport.abort()

    # ------------------------------------------------------------ misbehaving clients
    async def misbehave(self) -> None:
        """One misbehaving client after another; what the broker did is counted per kind."""
        rng = self.child_rng()
        kinds = [
            ("garbage instead of the protocol header", self.garbage_preamble, 3),
            ("oversized frame before authentication", self.oversized_pre_auth, 3),
            ("bad frame after the handshake", self.bad_frame, 10),
            ("channel errors", self.channel_errors, 4),
            ("body dribbled, then dropped", self.dribbled_body, 1),
            ("Basic.Get pipelined, socket unread", self.get_pipeline_unread, 1),
        ]
        while not await self.idle(rng.uniform(0, 0.5)):
            name, action, _ = rng.choices(kinds, weights=[weight for *_, weight in kinds])[0]
            try:
                outcome = await asyncio.wait_for(action(rng), 60)
            except (OSError, RuntimeError, TimeoutError, KeyError) as error:
                outcome = f"{type(error).__name__}: {error}"
            self.outcomes[name][outcome] += 1

    async def wait_for_close(self, client: LoadClient, timeout: float = 5.0) -> str:
        """What the broker does next: a Connection.Close (answered), a Channel.Close (answered,
        then the connection closed cleanly), a bare socket close, or nothing."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                method = await next_reply(client, max(0.0, deadline - time.monotonic()))
            except RuntimeError:
                return "socket closed without Connection.Close"
            except TimeoutError:
                drop(client.transport, reset=True)
                return f"no reaction in {timeout:.0f} s (dropped)"
            if isinstance(method, commands.Connection.Close):
                client.send(pamqp_frame.marshal(commands.Connection.CloseOk(), 0))
                await asyncio.wait_for(client.closed.wait(), 5)
                return f"connection.close {method.reply_code}"
            if isinstance(method, commands.Channel.Close):
                client.send(pamqp_frame.marshal(commands.Channel.CloseOk(), 1))
                await close_cleanly(client)
                return f"channel.close {method.reply_code}"

    async def garbage_preamble(self, rng: random.Random) -> str:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(b"X" + rng.randbytes(rng.randint(7, 4096)))
            answer = await asyncio.wait_for(reader.read(), 15)
            return f"answered {answer[:8]!r}, closed"
        finally:
            writer.transport.abort()

    async def oversized_pre_auth(self, rng: random.Random) -> str:
        """A frame header claiming up to 2 GiB before Tune-Ok, then junk for a second."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(ProtocolHeader().marshal())
            await asyncio.wait_for(reader.read(4096), 10)  # Connection.Start
            size = rng.choice([4097, 1 << 20, 0x7FFFFFF0])
            writer.write(struct.pack(">BHI", 1, 0, size))
            until = time.monotonic() + 1
            answer = b""
            with contextlib.suppress(ConnectionError):
                while time.monotonic() < until:
                    writer.write(b"\x00" * 65536)
                    with contextlib.suppress(TimeoutError):
                        answer += await asyncio.wait_for(reader.read(4096), 0.05)
                    if reader.at_eof():
                        break
                answer += await asyncio.wait_for(reader.read(), 5)
            return "closed" + (" after a Connection.Close" if answer[:1] == b"\x01" else "")
        finally:
            writer.transport.abort()

    async def bad_frame(self, rng: random.Random) -> str:
        async with session(self.host, self.port) as client:
            await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
            kind = rng.choice(
                [
                    "unknown frame type",
                    "bad frame end",
                    "oversized frame",
                    "unknown method",
                    "truncated method",
                    "header without a method",
                    "body on channel 0",
                    "random bytes",
                ]
            )
            header = struct.pack(">HHQH", 60, 0, 10, 0)
            data = {
                "unknown frame type": loadgen_frame(9, 1, b"junk"),
                "bad frame end": loadgen_frame(1, 0, b"\x00\x0a\x00\x33")[:-1] + b"\x00",
                "oversized frame": struct.pack(">BHI", 1, 1, 0x7FFFFFF0) + b"\x00" * 65536,
                "unknown method": loadgen_frame(1, 1, b"\x00\x3c\x00\x63"),
                "truncated method": loadgen_frame(1, 1, b"\x00\x32\x00\x0a\x00"),
                "header without a method": loadgen_frame(2, 1, header),
                "body on channel 0": loadgen_frame(3, 0, b"body"),
                "random bytes": rng.randbytes(rng.randint(1, 4096)),
            }[kind]
            client.send(data)
            return f"{kind}: {await self.wait_for_close(client)}"

    async def channel_errors(self, rng: random.Random) -> str:
        async with session(self.host, self.port) as client:
            await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
            kind = rng.choice(
                [
                    "publish to a missing exchange",
                    "ack an unknown tag",
                    "consume a missing queue",
                    "declare with other flags",
                    "reopen an open channel",
                ]
            )
            if kind == "publish to a missing exchange":
                client.send(publish_frames(1, "soak-missing", "x", b"x", persistent=False))
            elif kind == "ack an unknown tag":
                client.send(ack_frame(1, 999_999))
            elif kind == "consume a missing queue":
                client.send(pamqp_frame.marshal(commands.Basic.Consume(queue="soak-missing"), 1))
            elif kind == "declare with other flags":
                declare = commands.Queue.Declare(queue=SOAK_TRANSIENT, durable=True)
                client.send(pamqp_frame.marshal(declare, 1))
            else:
                client.send(pamqp_frame.marshal(commands.Channel.Open(), 1))
            return f"{kind}: {await self.wait_for_close(client)}"

    async def dribbled_body(self, rng: random.Random) -> str:
        """A 1 MiB message announced, a few bytes of body a tenth of a second for 3 s, then
        the socket dropped: the partial message must vanish."""
        async with session(self.host, self.port) as client:
            await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
            message_id = self.new_id()
            self.accounts[SOAK_CHURN].unconfirmed.add(message_id)  # must never arrive, in fact
            body = str(message_id).encode().ljust(1 << 20)
            frames = publish_frames(1, "", SOAK_CHURN, b"", persistent=True)
            method = frames[: 8 + struct.unpack_from(">I", frames, 3)[0]]
            header = struct.pack(">HHQH", 60, 0, len(body), 0x1000) + b"\x02"
            client.send(method + loadgen_frame(2, 1, header))
            sent = 0
            for _ in range(30):
                client.send(loadgen_frame(3, 1, body[sent : sent + 100]))
                sent += 100
                await asyncio.sleep(0.1)
            outcome = (
                "still open after 3 s" if not client.closed.is_set() else "closed by the broker"
            )
            drop(client.transport, reset=rng.random() < 0.5)
            return outcome

    async def get_pipeline_unread(self, rng: random.Random) -> str:
        """Basic.Get / Basic.Reject(requeue) pairs on a 32 KiB message, pipelined for 10 s
        while never reading the socket; the broker must stop reading or bound its buffers."""
        async with session(self.host, self.port) as client:
            await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
            assert client.transport is not None
            client.transport.pause_reading()
            before = self.rss()
            peak = before
            sent = 0
            stalled = False
            until = time.monotonic() + 10
            while time.monotonic() < until and sent < GETTER_MAX_PAIRS:
                client.send(
                    b"".join(
                        get_frame(1, SOAK_GETTER) + reject_frame(1, tag)
                        for tag in range(sent + 1, sent + 51)
                    )
                )
                sent += 50
                try:
                    await asyncio.wait_for(client.drain(), 2)
                except TimeoutError:
                    stalled = True
                    break
                peak = max(peak, self.rss())
            while time.monotonic() < until:
                await asyncio.sleep(0.25)
                peak = max(peak, self.rss())
            drop(client.transport, reset=True)
            self.getter_growth.append(peak - before)
            if stalled:
                return f"sending blocked after {sent} pairs: the broker stopped reading"
            return f"all {sent} pairs sent (the broker kept reading or socket buffers took them)"

    async def staller(self) -> None:
        """Half a handshake, then silence, over and over; the handshake timeout must end it."""
        rng = self.child_rng()
        while not self.stopping.is_set():
            stage = rng.choice(["nothing", "part of the header", "header", "start-ok"])
            outcome = await self.stall(stage, limit=30.0)
            if outcome:
                self.outcomes[f"half a handshake ({stage}), then silence"][outcome] += 1

    async def stall(self, stage: str, limit: float) -> str | None:
        """What the broker did to one silent half-handshake; None if the soak ended first."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        started = time.monotonic()
        try:
            if stage == "part of the header":
                writer.write(b"AMQP\x00")
            elif stage in ("header", "start-ok"):
                writer.write(ProtocolHeader().marshal())
            if stage == "start-ok":
                await asyncio.wait_for(reader.read(4096), 10)  # Connection.Start
                writer.write(start_ok())
            while True:
                try:
                    if not await asyncio.wait_for(reader.read(65536), 1):
                        how = "closed"
                        break
                except TimeoutError:
                    if time.monotonic() - started > limit:
                        return f"still open after {limit:.0f} s"
                    if self.stopping.is_set():
                        return None
                except ConnectionError:
                    how = "reset"
                    break
        finally:
            writer.transport.abort()
        return f"{how} by the broker after {int(time.monotonic() - started)} s"

    # ------------------------------------------------------------ the end
    async def drain(self, queue: str, expected: int) -> list[int]:
        """Consume everything left in `queue` (no-ack) and return the ids."""
        client = await connect(self.host, self.port, factory=MessageClient)
        found: list[int] = []
        client.on_message = lambda channel, tag, redelivered, body: found.append(int(body))
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        consume = commands.Basic.Consume(queue=queue, no_ack=True)
        await client.call(1, consume, commands.Basic.ConsumeOk)
        seen = -1
        while len(found) != seen:  # until nothing arrived for a second
            seen = len(found)
            await asyncio.sleep(0.2 if len(found) < expected else 1)
        await close_cleanly(client)
        return found

    async def accounting(self) -> bool:
        """Per queue: published-and-confirmed = acked + still queued, by count and by id."""
        print("\nmessage accounting per queue (ids carried in the bodies):")
        ok = True
        for queue, account in self.accounts.items():
            depth = await queue_depth(self.host, self.port, queue)
            drained = await self.drain(queue, depth)
            acked = collections.Counter(account.acked)
            found = collections.Counter(drained)
            arrived = set(acked) | set(found)
            maybe = account.unconfirmed - account.confirmed
            lost = account.confirmed - arrived - account.acked_unsure
            problems = {
                "confirmed but lost": sorted(lost),
                "acked twice": sorted(i for i, n in acked.items() if n > 1),
                "queued twice": sorted(i for i, n in found.items() if n > 1),
                "acked and still queued": sorted(set(acked) & set(found)),
                "never published": sorted(arrived - account.confirmed - maybe),
            }
            if len(drained) != depth:
                problems[f"passive declare said {depth}, drained {len(drained)}"] = [0]
            arrived_maybe = len(arrived & maybe)
            balance = len(account.confirmed) + arrived_maybe - len(set(acked)) - len(set(found))
            verdict = "ok" if not any(problems.values()) and balance == 0 else "FAIL"
            ok = ok and verdict == "ok"
            print(
                f"  {queue:15s} confirmed {len(account.confirmed)} (+{arrived_maybe} of"
                f" {len(maybe)} unconfirmed that arrived) = acked {len(account.acked)}"
                f" + queued {depth}; lost {len(lost)}"
                + (f", {len(account.acked_unsure)} acks unsure" if account.acked_unsure else "")
                + f": {verdict}",
                flush=True,
            )
            for name, ids in problems.items():
                if ids:
                    print(f"    {name}: {len(ids)} {ids[:10]}")
        return ok

    def report(self) -> None:
        print("\nclient counters:", dict(self.stats))
        for error, count in self.errors.most_common(10):
            print(f"  churn client error x{count}: {error}")
        print("misbehaving clients, what the broker did:")
        for kind, outcomes in sorted(self.outcomes.items()):
            print(f"  {kind}:")
            for outcome, count in outcomes.most_common():
                print(f"    {count:5d}  {outcome}")
        if self.getter_growth:
            growth = sorted(self.getter_growth)
            print(
                f"  broker RSS growth during the {len(growth)} unread Basic.Get pipelines:"
                f" median {growth[len(growth) // 2] / 2**20:.0f} MiB,"
                f" largest {growth[-1] / 2**20:.0f} MiB"
            )
        for note in self.notes:
            print(f"  {note}")
        for failure in self.failures:
            print(f"FAIL {failure}")


def start_ok() -> bytes:
    return pamqp_frame.marshal(
        commands.Connection.StartOk(
            client_properties={"product": "warren-soak"},
            mechanism="PLAIN",
            response="\0guest\0guest",
        ),
        0,
    )


def log_summary(broker: BrokerProcess) -> None:
    """Warnings and errors the broker logged, by event."""
    events: collections.Counter[str] = collections.Counter()
    for line in broker.log_text().splitlines():
        if "level=error" in line or "level=critical" in line or "Traceback" in line:
            level = "error"
        elif "level=warning" in line:
            level = "warning"
        else:
            continue
        event = next((p[6:] for p in line.split() if p.startswith("event=")), line[:80])
        events[f"{level} {event}"] += 1
    print("broker log, warnings and errors by event:")
    for event, count in events.most_common(20):
        print(f"  {count:6d}  {event}")


def soak(data_dir: Path, args: argparse.Namespace, rng: random.Random) -> int:
    """Warren only (a bounded stress run, not a comparison: RabbitMQ is not started)."""
    config_path = stress_config(data_dir, args.soak_segment_size)
    print(
        f"scenario soak: {args.soak_seconds} s; 4 publishers x {args.soak_rate} msg/s (2"
        " persistent with confirms to durable queues, 1 transient with confirms, 1 transient"
        " without), 4 consumers with manual acks (prefetch 100; 20 nacking 10% back; 10 with"
        " multiple acks; unlimited), 2 connection churners, misbehaving clients,"
        f" {STALLERS} half-handshakes held open; store.segment_size {args.soak_segment_size} B",
        flush=True,
    )
    broker = BrokerProcess(data_dir, config_path)
    soaker = Soak(broker, args, rng)
    try:
        code = run(soaker.run())
    finally:
        soaker.report()
        log_summary(broker)
        exit_code = broker.stop()
    print(f"broker exit code after SIGTERM: {exit_code}")
    if exit_code != 0:
        code = 1
    print(f"\nscenario soak: {'ok' if code == 0 else 'FAILED'} (seed {args.seed})")
    return code
