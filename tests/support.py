"""Helpers shared by the test suites: free ports, a Warren broker process, unique names."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Key of the terminal-summary sections a pytest-xdist worker hands its controller
# ({title: lines}); tests/conftest.py prints them.
SUMMARIES = "warren_summaries"


def shipped_config() -> dict[str, Any]:
    """config/broker.yaml as a mapping, for tests to change and write back."""
    return yaml.safe_load((PROJECT_ROOT / "config" / "broker.yaml").read_text())


def write_config(directory: Path, config: dict[str, Any], name: str = "broker.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config))
    return path


def small_segment_config(directory: Path, segment_size: int) -> Path:
    """The shipped config with small log segments, so a test rolls (and collects) segments."""
    config = shipped_config()
    config["store"]["segment_size"] = segment_size
    return write_config(directory, config)


def nested_table_bytes(depth: int) -> bytes:
    """An AMQP field table nested `depth` levels deep ({"a": {"a": ...}}), built by hand so no
    encoder's depth limit applies."""
    raw = b"\x00\x00\x00\x00"
    for _ in range(depth - 1):
        body = b"\x01aF" + raw
        raw = len(body).to_bytes(4, "big") + body
    return raw


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port, failing early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


AMQP_LISTENING = re.compile(rb"event=listener\.started protocol=amqp .*\bport=(\d+)")


def wait_for_amqp_listener(
    log_path: Path, offset: int, timeout: float, proc: subprocess.Popen
) -> int:
    """The AMQP port a broker started on port 0 logged past `offset`, once it logged it (the
    AMQP listener opens last, so every other one is open by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log_path.open("rb") as log:
            log.seek(offset)
            found = AMQP_LISTENING.search(log.read())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening")
        time.sleep(0.05)
    raise TimeoutError(f"no AMQP listener.started in {log_path} after {timeout}s")


class BrokerProcess:
    """A Warren broker started as a real subprocess on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        config: Path | None = None,
        *extra: str,
        port: int | None = None,
        start_timeout: float = 15.0,
        management_port: int = 0,
    ) -> None:
        self.management_port = management_port  # the management API's; 0 when it is disabled
        self.data_dir = data_dir
        # No port given: the broker binds one itself and logs it. A port picked here beforehand
        # could be taken in between by another test worker's client or broker.
        args = [sys.executable, "-m", "broker", "--port", str(port or 0)]
        args += ["--data-dir", str(data_dir), "--metrics-port", "0"]
        args += ["--management-port", str(management_port)]
        if config is not None:
            args += ["--config", str(config)]
        args += list(extra)
        self.log_path = data_dir / "broker.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        logged_before = self._log.tell()  # a restart on this data dir appends to the same log
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            args, cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        if port:
            wait_for_port(port, start_timeout, proc=self.proc)  # the last listener to open
            self.port = port
        else:
            self.port = wait_for_amqp_listener(
                self.log_path, logged_before, start_timeout, self.proc
            )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def management_url(self) -> str:
        assert self.management_port, "this broker was started without its management API"
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the crash the write-ahead log must survive."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 10.0) -> int:
        """Terminate gracefully (SIGTERM); kill if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running_broker(data_dir: Path, *extra: str) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(data_dir, None, *extra)
    try:
        yield broker
    finally:
        broker.stop()


def publish_persistent(url: str, queue: str, bodies: list[bytes]) -> None:
    """Declare a durable queue and publish persistent messages to it, each one confirmed."""
    import pika  # the test clients' dependency, kept out of the module's import for the bench

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        channel.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        for body in bodies:
            channel.basic_publish("", queue, body, persistent)
    finally:
        connection.close()


def drain(url: str, queue: str) -> list[bytes]:
    """Every body in the queue, in order, taken with auto-ack."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


def resident_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def unique(prefix: str = "t") -> str:
    """A name no other test (or earlier run against a shared RabbitMQ) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
