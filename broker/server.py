"""The broker's lifecycle: vhosts, users and listeners; start, serve, stop.

`Broker` is also the in-process API: `async with Broker(config) as broker:` runs a real broker on
a free port inside a test suite or an application, and `broker.url` is what clients connect to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from broker import PURE_REASON, native, runtime
from broker.alarms import MemoryMonitor, watermark_bytes
from broker.amqp.ack_timeout import AckTimeouts
from broker.amqp.channel import Channel
from broker.amqp.connection import AMQPConnection
from broker.auth import Authenticator, User
from broker.config import BrokerConfig
from broker.core.exchange import Exchange
from broker.core.footprint import definitions_bytes
from broker.core.persistence import MessageStore
from broker.core.queue import MEMORY_STORE, Queue
from broker.core.stats import Counters
from broker.core.vhost import VirtualHost
from broker.definitions import DefinitionsError, import_definitions
from broker.logs import fields
from broker.management.server import ManagementServer
from broker.metrics import MetricsServer, default_node_name
from broker.policies import Policies
from broker.store.durable import DurableStore
from broker.store.recovery import recover, restore
from broker.store.spill import SpillFiles
from broker.store.wal import WriteAheadLog

log = logging.getLogger("warren.server")

SHUTDOWN_GRACE = 5.0


def tls_context(
    certfile: Path, keyfile: Path, cafile: Path | None, verify_peer: bool
) -> ssl.SSLContext:
    """A server context (amqps, https): our certificate, and client certificates if asked."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED if verify_peer else ssl.CERT_OPTIONAL
    return context


class DefinitionsFileError(RuntimeError):
    """`load_definitions` names a file that cannot be imported; the broker does not start."""


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.wal: WriteAheadLog | None = None
        self.spill: SpillFiles | None = None
        self.store: MessageStore = MEMORY_STORE
        if config.data_dir is not None:
            settings = config.store
            self.wal = WriteAheadLog(
                config.data_dir / "wal",
                segment_size=settings.segment_size,
                sync_policy=settings.sync,
                sync_interval=settings.sync_interval,
            )
            self.spill = SpillFiles(config.data_dir / "spill", settings.segment_size)
            self.store = DurableStore(
                self.wal,
                lambda: self.vhosts.values(),
                lambda: runtime.document(self),
                self.spill,
                config.limits.read_ahead_bytes,
            )
        self.policies = Policies(lambda: self.vhosts, self._runtime_changed)
        self.vhosts: dict[str, VirtualHost] = {}
        self.vhost_metadata: dict[str, dict] = {}  # name -> description and tags
        for name in config.vhosts:
            self._create_vhost(name)
        self.auth = Authenticator(
            [
                User(u.name, u.password_hash, u.permissions, u.loopback_only, u.tags)
                for u in config.users
            ],
            self._runtime_changed,
        )
        self.connections: set[AMQPConnection] = set()
        self.reply_channels: dict[str, Channel] = {}  # direct reply-to address -> channel
        self.counters = Counters()
        self._server: asyncio.base_events.Server | None = None
        self._tls_server: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()
        self._restoring = False
        self._recovering = False
        self._batching = 0
        self._batch_changed = False
        self.node = default_node_name()
        # HTTP endpoints served on the broker's loop: Prometheus /metrics and the management
        # API with its console.
        self.http_servers: list[MetricsServer | ManagementServer] = []
        if config.metrics_port:
            host = config.listener.host
            self.http_servers.append(MetricsServer(self, host, config.metrics_port, self.node))
        listener = config.management.listener
        if listener.port:
            https = (
                tls_context(listener.certfile, listener.keyfile, listener.cafile,
                            listener.verify_peer)
                if listener.certfile is not None and listener.keyfile is not None
                else None
            )  # fmt: skip
            self.management = ManagementServer(self, listener.host, listener.port, self.node, https)
            self.http_servers.append(self.management)
        self.memory = MemoryMonitor(
            watermark_bytes(config.limits.memory_high_watermark),
            self._memory_alarm_changed,
            self.accounted_bytes,
            config.limits.memory_paging_ratio,
            self._paging_changed if self.spill is not None else None,
        )
        self.ack_timeouts = AckTimeouts(self)

    # ---------------------------------------------------------------------------- vhosts
    def _create_vhost(
        self, name: str, description: str = "", tags: tuple[str, ...] = ()
    ) -> VirtualHost:
        vhost = VirtualHost(name, self.store)
        vhost.on_queue_added = lambda queue: self._apply_policies(vhost, queue)
        vhost.on_exchange_added = lambda exchange: self._apply_policies(vhost, exchange)
        self.vhosts[name] = vhost
        self.vhost_metadata[name] = {"description": description, "tags": tags}
        return vhost

    def _apply_policies(self, vhost: VirtualHost, target: Queue | Exchange) -> None:
        """A new queue or exchange gets its policy at once; during recovery not until its
        messages are back (see `_recover`), so that restoring them does not give them a TTL
        they were not enqueued with."""
        if self._recovering:
            return
        if isinstance(target, Queue):
            self.policies.apply_to_queue(vhost, target)
        else:
            self.policies.apply_to_exchange(vhost, target)

    def add_vhost(self, name: str, description: str = "", tags: tuple[str, ...] = ()) -> bool:
        """Create a vhost (True), or update an existing one's description and tags (False)."""
        created = name not in self.vhosts
        previous = self.vhost_metadata.get(name)
        if created:
            self._create_vhost(name, description, tags)
        else:
            self.vhost_metadata[name] = {"description": description, "tags": tags}
        try:
            self._runtime_changed()
        except BaseException:  # the log refused it: the vhost must not look saved
            if created:
                del self.vhosts[name]
                del self.vhost_metadata[name]
            else:
                self.vhost_metadata[name] = previous or {}
            raise
        return created

    def delete_vhost(self, name: str) -> bool:
        """Delete a vhost with everything in it: its clients are disconnected (320), its
        queues, messages, exchanges, permissions and policies removed, in the log too."""
        vhost = self.vhosts.get(name)
        if vhost is None:
            return False
        for connection in list(self.connections):
            if connection.vhost is vhost:
                connection.force_close(320, f"vhost '{name}' is deleted")
        for queue in list(vhost.all_queues()):
            vhost.remove_queue(queue)
        for exchange_name in list(vhost.exchanges):
            if exchange_name and not exchange_name.startswith("amq."):
                vhost.delete_exchange(exchange_name)
        vhost.stop_timers()
        del self.vhosts[name]
        self.vhost_metadata.pop(name, None)
        self.auth.forget_vhost(name)
        self.policies.forget_vhost(name)
        self._runtime_changed()
        return True

    def _runtime_changed(self) -> None:
        """Users, vhosts, permissions or policies changed: the log keeps them whole (once at
        the end of a batch)."""
        if self._batching:
            self._batch_changed = True
        elif isinstance(self.store, DurableStore) and not self._restoring:
            self.store.runtime_changed(runtime.document(self))

    @contextlib.contextmanager
    def runtime_batch(self) -> Iterator[None]:
        """Many changes (a definitions import), one RUNTIME record at the end instead of one
        per change, each holding everything. If the import stops half way, what it applied
        is still logged; if the log refuses that record, the log has failed and the changes
        live in memory only until the restart (as every other change the broker can no
        longer log)."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching and self._batch_changed:
                self._batch_changed = False
                self._runtime_changed()

    def _adopt_runtime(self, document: dict) -> None:
        """The log's users, vhosts and policies replace the config's seed (see broker.runtime)."""
        self._restoring = True
        try:
            stored_users = runtime.users_of(document)
            stored_vhosts = runtime.vhosts_of(document)
            self._warn_config_not_read(stored_users, [v[0] for v in stored_vhosts])
            self.vhosts.clear()
            self.vhost_metadata.clear()
            for name, description, tags in stored_vhosts:
                self._create_vhost(name, description, tags)
            self.auth.users = {user.name: user for user in stored_users}
            self.policies.replace_all(runtime.policies_of(document))
        finally:
            self._restoring = False

    def _warn_config_not_read(self, stored: list[User], vhosts: list[str]) -> None:
        """The config's users and vhosts seed a new data directory only; say so, naming what
        differs (a changed password or a removed user in the config does nothing), and how
        to apply it: the management API, or load_definitions."""
        configured = {
            u.name: (u.password_hash, u.permissions, u.loopback_only, u.tags)
            for u in self.config.users
        }
        kept = {u.name: (u.password_hash, u.permissions, u.loopback_only, u.tags) for u in stored}
        users = sorted(name for name in configured.keys() | kept.keys()
                       if configured.get(name) != kept.get(name))  # fmt: skip
        differing_vhosts = sorted(set(self.config.vhosts) ^ set(vhosts))
        if users or differing_vhosts:
            log.warning(
                "config.accounts_seeded_earlier",
                extra=fields(
                    users=",".join(users),
                    vhosts=",".join(differing_vhosts),
                    reason="users and vhosts come from the data directory; the config's lists"
                    " seed a new one only. Change them with the management API (or"
                    " load_definitions)",
                ),
            )

    def _load_definitions(self) -> None:
        path = self.config.load_definitions
        if path is None:
            return
        import json

        try:
            document = json.loads(path.read_text())
            applied = import_definitions(self, document)
        except (OSError, ValueError, RecursionError, DefinitionsError) as error:
            raise DefinitionsFileError(f"load_definitions: {path}: {error}") from error
        log.info("definitions.loaded", extra=fields(path=str(path), **applied))

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

    def listening_ports(self) -> set[int]:
        """Every port bound now, as bound (a listener configured with port 0 gets one of the
        kernel's choosing): what the port-listener health check answers for."""
        ports = {self.port, *(server.port for server in self.http_servers)}
        if self._tls_server is not None:
            ports.add(self.tls_port)
        return ports

    def queued_bytes(self) -> int:
        """Estimated memory of every queued message."""
        queues = (queue for vhost in self.vhosts.values() for queue in vhost.all_queues())
        return sum(queue.resident_bytes for queue in queues)

    def accounted_bytes(self) -> int:
        """The memory alarm's moving part: queued messages, definitions, and everything clients
        can make the broker hold outside queues (channels, consumers, uncommitted tx publishes,
        bodies being assembled, input not parsed yet, output not sent yet) and the log's records
        not yet written."""
        held = self.queued_bytes() + definitions_bytes(self.vhosts.values())
        held += sum(connection.held_bytes() for connection in list(self.connections))
        if self.wal is not None:
            held += self.wal.pending_bytes()
        if self.spill is not None:
            held += self.spill.log.pending_bytes()
        held += self.store.reading_bytes()
        return held

    def open_connections(self) -> int:
        """Connections past Connection.Open (the ones limits.max_connections counts)."""
        return sum(1 for connection in self.connections if connection.vhost is not None)

    @property
    def memory_alarm(self) -> bool:
        return self.memory.active

    def _paging_changed(self, paging: bool) -> None:
        assert self.spill is not None
        self.spill.active = paging

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
        """Recover, then open every listener, the plain AMQP one last.

        Clients, health checks and orchestrators take the AMQP port accepting to mean the broker
        is up, so it starts accepting only once amqps, metrics and management do. It is bound
        first all the same, so a port in use fails the start before anything else opens, and
        `stop` has a server to close whatever did open.
        """
        loop = asyncio.get_running_loop()
        _log_code()
        if self.wal is not None:
            await self._recover()
        else:
            log.warning("store.disabled", extra=fields(reason="data_dir is null: nothing is kept"))
        self._load_definitions()
        listener = self.config.listener
        self._server = await loop.create_server(
            lambda: AMQPConnection(self),
            host=listener.host,
            port=listener.port,
            reuse_address=True,
            backlog=1024,
            start_serving=False,
        )
        tls = self.config.tls_listener
        if tls is not None:
            self._tls_server = await loop.create_server(
                lambda: AMQPConnection(self),
                host=tls.host,
                port=tls.port,
                ssl=tls_context(tls.certfile, tls.keyfile, tls.cafile, tls.verify_peer),
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
        await self._server.start_serving()
        log.info(
            "listener.started", extra=fields(protocol="amqp", host=listener.host, port=self.port)
        )

    async def _recover(self) -> None:
        """Replay the log (off the loop: it is long, blocking work), then rebuild the model."""
        assert self.wal is not None and isinstance(self.store, DurableStore)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        state = await asyncio.get_running_loop().run_in_executor(None, recover, self.wal)
        if state.runtime is not None:
            self._adopt_runtime(state.runtime)
        self._recovering = True
        try:
            queues, messages = restore(state, self.vhosts, self.store)
        finally:
            self._recovering = False
        # Policies apply once the messages are back: a message keeps the expiry it was restored
        # with (its own expiration, its queue's x-message-ttl); a policy's TTL is not recorded
        # with a message, so what was enqueued under one comes back without it (kept longer,
        # never expired early). Limits trim now, logging what they drop.
        for name in self.vhosts:
            self.policies.apply(name)
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
        if self.spill is not None:
            await self.spill.start()
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
        if self.spill is not None:
            await self.spill.close()
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


def _log_code() -> None:
    """Whether the hot path runs compiled: the broker is much slower without it, so
    an operator must be able to see which one runs, and why."""
    if PURE_REASON is None:
        log.info("broker.code", extra=fields(mode="compiled", modules=len(native.COMPILED)))
    else:
        level = logging.INFO if PURE_REASON == native.REQUESTED else logging.WARNING
        log.log(level, "broker.code", extra=fields(mode="python", reason=PURE_REASON))
