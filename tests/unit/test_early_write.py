"""AMQPConnection's early writes: deliveries framed in one loop iteration go out every
EARLY_WRITE_BYTES, and the iteration's batch (what stops output at DELIVERY_BATCH_BYTES) still
ends with the iteration when nothing was left for its end."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from broker.amqp.channel import EARLY_WRITE_BYTES
from broker.amqp.connection import AMQPConnection
from broker.config import load_config


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


@pytest.mark.pure_python  # a stand-in broker and transport, which compiled classes refuse
async def test_an_iteration_written_early_ends_its_batch_all_the_same() -> None:
    connection = AMQPConnection(SimpleNamespace(config=load_config(None)))  # type: ignore[arg-type]
    transport = RecordingTransport()
    connection.transport = transport  # type: ignore[assignment]
    piece = b"d" * 1000
    for _ in range(3):  # three iterations, each framing past the early-write size
        framed = 0
        while framed <= EARLY_WRITE_BYTES:
            connection.send_parts([piece])
            connection.batch_bytes += len(piece)
            framed += len(piece)
        connection.write_early()  # as Channel.deliver does past EARLY_WRITE_BYTES
        assert connection.early_mark == connection.batch_bytes > EARLY_WRITE_BYTES
        await asyncio.sleep(0)  # the iteration's end: its flush, with nothing left to write
        assert (connection.batch_bytes, connection.early_mark) == (0, 0)
    assert [len(write) for write in transport.writes] == [framed] * 3
