"""A pytest plugin: a real Warren broker for your test suite, instead of a RabbitMQ container.

Installed with the package (the `pytest11` entry point `warren`), it gives tests two fixtures:

- `amqp_broker`: Warren running in the test process (on its own thread and event loop) on a
  free loopback port, keeping nothing on disk. Its `url` is what clients connect to
  (`amqp://guest:guest@127.0.0.1:PORT/%2F`).
- `amqp_url`: that URL.

Both are session-scoped: one broker for the run, started in a fraction of a second. Set
`warren_scope = function` in the pytest ini options for a fresh broker per test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from broker.config import (
    BrokerConfig,
    HttpListener,
    Listener,
    ManagementConfig,
    Permission,
    UserConfig,
)
from broker.server import Broker

# guest/guest (RabbitMQ's salted SHA-256 hash format), allowed from loopback only, as the
# shipped config has it.
GUEST_HASH = "PntmYUeBkMCKdDlYu1pvuwCFmFaY3LKFBZ6L80urQTXqX9Fl"
START_TIMEOUT = 30.0


def embedded_config() -> BrokerConfig:
    """Loopback, any free port, nothing on disk, no HTTP ports, the guest user."""
    guest = UserConfig(
        name="guest",
        password_hash=GUEST_HASH,
        permissions={"/": Permission()},
        loopback_only=True,
        tags=("administrator",),
    )
    return BrokerConfig(
        listener=Listener(host="127.0.0.1", port=0),
        users=(guest,),
        data_dir=None,
        metrics_port=0,
        management=ManagementConfig(HttpListener(port=0)),
        log_level="warning",
    )


class EmbeddedBroker:
    """A Warren broker on a thread of its own, so synchronous tests (pika) can use it."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.broker = Broker(config or embedded_config())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="warren-broker", daemon=True)
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return self.broker.url

    def start(self) -> EmbeddedBroker:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise RuntimeError(f"the embedded Warren broker did not start in {START_TIMEOUT}s")
        if self._failure is not None:
            raise RuntimeError(f"the embedded Warren broker failed to start: {self._failure}")
        return self

    def stop(self) -> None:
        if self._stop is not None and self._failure is None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(START_TIMEOUT)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.broker.start()
        except BaseException as error:  # reported to the test that wanted the broker
            self._failure = error
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.broker.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "warren_scope",
        "scope of the amqp_broker fixture: session (default) or function",
        default="session",
    )


def _scope(fixture_name: str, config: pytest.Config) -> str:
    scope = str(config.getini("warren_scope"))
    return scope if scope in ("session", "package", "module", "class", "function") else "session"


@pytest.fixture(scope=_scope)  # type: ignore[arg-type]
def amqp_broker() -> Iterator[EmbeddedBroker]:
    """A Warren broker in this process, on a free loopback port, in memory."""
    broker = EmbeddedBroker().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope=_scope)  # type: ignore[arg-type]
def amqp_url(amqp_broker: EmbeddedBroker) -> str:
    """The AMQP URL of `amqp_broker` (guest/guest, vhost /)."""
    return amqp_broker.url
