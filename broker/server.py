"""The broker's lifecycle: vhosts, users and listeners; start, serve, stop.

`Broker` is also the in-process API: `async with Broker(config) as broker:` runs a real broker on
a free port inside a test suite or an application, and `broker.url` is what clients connect to.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import TracebackType

from broker.amqp.connection import AMQPConnection
from broker.auth import Authenticator, User
from broker.config import BrokerConfig
from broker.core.persistence import MessageStore
from broker.core.queue import MEMORY_STORE
from broker.core.stats import Counters
from broker.core.vhost import VirtualHost
from broker.store.durable import DurableStore, durable_definitions
from broker.store.recovery import recover, restore
from broker.store.wal import WriteAheadLog

log = logging.getLogger("warren.server")

SHUTDOWN_GRACE = 5.0


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
            self.store = DurableStore(self.wal, lambda: durable_definitions(self.vhosts.values()))
        self.vhosts = {name: VirtualHost(name, self.store) for name in config.vhosts}
        self.auth = Authenticator(
            [User(u.name, u.password_hash, u.permissions, u.loopback_only) for u in config.users]
        )
        self.connections: set[AMQPConnection] = set()
        self.counters = Counters()
        self._server: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        """The port actually bound (useful when the config asked for port 0)."""
        assert self._server is not None, "broker not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.config.listener.host
        return f"amqp://guest:guest@{host}:{self.port}/%2F"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.wal is not None:
            await self._recover()
        listener = self.config.listener
        self._server = await loop.create_server(
            lambda: AMQPConnection(self),
            host=listener.host,
            port=listener.port,
            reuse_address=True,
            backlog=1024,
        )
        log.info("listening host=%s port=%d", listener.host, self.port)

    async def _recover(self) -> None:
        """Replay the log (off the loop: it is long, blocking work), then rebuild the model."""
        assert self.wal is not None and isinstance(self.store, DurableStore)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        state = await asyncio.get_running_loop().run_in_executor(None, recover, self.wal)
        queues, messages = restore(state, self.vhosts, self.store)
        log.info("recovered %d durable queues holding %d messages", queues, messages)
        await self.wal.start()
        self.store.recovered()

    async def stop(self) -> None:
        """Stop accepting, close clients with 320 CONNECTION_FORCED, flush the log."""
        if self._server is None:
            return
        self._server.close()
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
        if self.wal is not None:
            await self.wal.close()
        self._stopped.set()
        log.info("stopped")

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        await stop_requested.wait()
        log.info("shutdown requested")
        await self.stop()

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
