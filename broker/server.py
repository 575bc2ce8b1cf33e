"""The broker's lifecycle: vhosts, users and listeners; start, serve, stop.

`Broker` is also the in-process API: `async with Broker(config) as broker:` runs a real broker on
a free port inside a test suite or an application, and `broker.url` is what clients connect to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from types import TracebackType

from broker.admin import AdminServer
from broker.alarms import MemoryMonitor, watermark_bytes
from broker.amqp.ack_timeout import AckTimeouts
from broker.amqp.channel import Channel
from broker.amqp.connection import AMQPConnection
from broker.auth import Authenticator, User
from broker.config import BrokerConfig, TlsListener
from broker.core.footprint import definitions_bytes
from broker.core.persistence import MessageStore
from broker.core.queue import MEMORY_STORE
from broker.core.stats import Counters
from broker.core.vhost import VirtualHost
from broker.logs import fields
from broker.metrics import MetricsServer
from broker.store.durable import DurableStore
from broker.store.recovery import recover, restore
from broker.store.wal import WriteAheadLog

log = logging.getLogger("warren.server")

SHUTDOWN_GRACE = 5.0


def tls_context(listener: TlsListener) -> ssl.SSLContext:
    """The amqps server context: our certificate, and client certificates if asked for."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(listener.certfile, listener.keyfile)
    if listener.cafile is not None:
        context.load_verify_locations(listener.cafile)
        context.verify_mode = ssl.CERT_REQUIRED if listener.verify_peer else ssl.CERT_OPTIONAL
    return context


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.wal: WriteAheadLog | None = None
        self.store: MessageStore = MEMORY_STORE
        if config.data_dir is not None:
            settings = config.store
            self.wal = WriteAheadLog(
                config.data_dir / "wal",
                segment_size=settings.segment_size,
                sync_policy=settings.sync,
                sync_interval=settings.sync_interval,
            )
            self.store = DurableStore(self.wal, lambda: self.vhosts.values())
        self.vhosts = {name: VirtualHost(name, self.store) for name in config.vhosts}
        self.auth = Authenticator(
            [User(u.name, u.password_hash, u.permissions, u.loopback_only) for u in config.users]
        )
        self.connections: set[AMQPConnection] = set()
        self.reply_channels: dict[str, Channel] = {}  # direct reply-to address -> channel
        self.counters = Counters()
        self._server: asyncio.base_events.Server | None = None
        self._tls_server: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()
        # HTTP endpoints served on the broker's loop: Prometheus /metrics and `warren ctl`'s API.
        self.http_servers: list[MetricsServer | AdminServer] = []
        if config.metrics_port:
            host = config.listener.host
            self.http_servers.append(MetricsServer(self, host, config.metrics_port))
        if config.admin_port:
            self.http_servers.append(AdminServer(self, port=config.admin_port))
        self.memory = MemoryMonitor(
            watermark_bytes(config.limits.memory_high_watermark),
            self._memory_alarm_changed,
            self.accounted_bytes,
        )
        self.ack_timeouts = AckTimeouts(self)

    @property
    def port(self) -> int:
        """The port actually bound (useful when the config asked for port 0)."""
        assert self._server is not None, "broker not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def tls_port(self) -> int:
        """The amqps port actually bound."""
        assert self._tls_server is not None, "no TLS listener configured"
        return self._tls_server.sockets[0].getsockname()[1]

    def queued_bytes(self) -> int:
        """Estimated memory of every queued message."""
        return sum(q.memory_bytes for vhost in self.vhosts.values() for q in vhost.all_queues())

    def accounted_bytes(self) -> int:
        """The memory alarm's moving part: queued messages, definitions, and everything clients
        can make the broker hold outside queues (channels, consumers, uncommitted tx publishes,
        bodies being assembled, input not parsed yet, output not sent yet) and the log's records
        not yet written."""
        held = self.queued_bytes() + definitions_bytes(self.vhosts.values())
        held += sum(connection.held_bytes() for connection in list(self.connections))
        if self.wal is not None:
            held += self.wal.pending_bytes()
        return held

    def open_connections(self) -> int:
        """Connections past Connection.Open (the ones limits.max_connections counts)."""
        return sum(1 for connection in self.connections if connection.vhost is not None)

    @property
    def memory_alarm(self) -> bool:
        return self.memory.active

    def _memory_alarm_changed(self, active: bool) -> None:
        for connection in list(self.connections):
            try:
                if active:
                    connection.memory_alarm_set()
                else:
                    connection.memory_alarm_cleared()
            except Exception:  # one connection's failure must not leave the others unblocked
                log.exception("alarm.memory.connection_failed", extra=fields(peer=connection.peer))

    @property
    def url(self) -> str:
        host = self.config.listener.host
        return f"amqp://guest:guest@{host}:{self.port}/%2F"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.wal is not None:
            await self._recover()
        else:
            log.warning("store.disabled", extra=fields(reason="data_dir is null: nothing is kept"))
        listener = self.config.listener
        self._server = await loop.create_server(
            lambda: AMQPConnection(self),
            host=listener.host,
            port=listener.port,
            reuse_address=True,
            backlog=1024,
        )
        log.info(
            "listener.started", extra=fields(protocol="amqp", host=listener.host, port=self.port)
        )
        tls = self.config.tls_listener
        if tls is not None:
            self._tls_server = await loop.create_server(
                lambda: AMQPConnection(self),
                host=tls.host,
                port=tls.port,
                ssl=tls_context(tls),
                ssl_handshake_timeout=self.config.limits.handshake_timeout,
                reuse_address=True,
                backlog=1024,
            )
            log.info(
                "listener.started",
                extra=fields(protocol="amqps", host=tls.host, port=self.tls_port),
            )
        self.memory.start()
        self.ack_timeouts.start()
        for server in self.http_servers:
            await server.start()

    async def _recover(self) -> None:
        """Replay the log (off the loop: it is long, blocking work), then rebuild the model."""
        assert self.wal is not None and isinstance(self.store, DurableStore)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        state = await asyncio.get_running_loop().run_in_executor(None, recover, self.wal)
        queues, messages = restore(state, self.vhosts, self.store)
        report = state.report
        log.info(
            "recovery.finished",
            extra=fields(
                queues=queues,
                messages=messages,
                segments=report.segments if report else 0,
                records=report.records if report else 0,
                truncated_bytes=report.truncated_bytes if report else 0,
                seconds=round(report.seconds, 3) if report else 0,
            ),
        )
        await self.wal.start()
        self.store.recovered()
        # Until this run's first snapshot is on disk the log still ends with the last clean
        # shutdown's record: a power loss before it would make the next start trust marks
        # that this run's deliveries have not written. Listen only once it is durable.
        synced: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.wal.sync(synced.set_result, durable=True)
        error = await synced
        if error is not None:
            raise error

    async def stop(self) -> None:
        """Stop accepting, close clients with 320 CONNECTION_FORCED, flush the log."""
        if self._server is None:
            return
        for server in self.http_servers:
            await server.stop()
        await self.memory.stop()
        await self.ack_timeouts.stop()
        self._server.close()
        if self._tls_server is not None:
            self._tls_server.close()
        for connection in list(self.connections):
            connection.force_close(320, "broker shutdown")
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        await self._server.wait_closed()
        self._server = None
        if self._tls_server is not None:
            await self._tls_server.wait_closed()
            self._tls_server = None
        for vhost in self.vhosts.values():
            vhost.stop_timers()  # no expiry may reach the log once it is closing
        if isinstance(self.store, DurableStore):
            self.store.shutdown()
        if self.wal is not None:
            await self.wal.close()
        self._stopped.set()
        log.info("broker.stopped")

    async def serve_forever(self) -> bool:
        """Run until SIGTERM or SIGINT, then stop gracefully; a second signal stops at once.

        Returns False when the log failed, so the exit status can say the data is not safe.
        """
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal() -> None:
            if stop_requested.is_set():
                log.warning("broker.forced_exit", extra=fields(reason="second signal"))
                os._exit(130)  # the operator insists; the log keeps what was fsynced
            stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):  # before recovery, which can be long
            loop.add_signal_handler(signum, on_signal)
        await self.start()
        await stop_requested.wait()
        log.info("broker.shutdown_requested")
        await self.stop()
        return self.wal is None or self.wal.failed is None

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
