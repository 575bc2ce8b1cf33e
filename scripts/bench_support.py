"""Helpers shared by scripts/bench.py and its stress scenarios (bench_crash.py, bench_soak.py):
running a coroutine, one-call queue queries, the broker's resident memory, a stress config.

Imported as `scripts.bench_support`, with the repository root on sys.path (scripts/bench.py puts
it there), like `scripts.amqp_loadgen` and `tests.support`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pamqp import commands

from scripts.amqp_loadgen import connect
from tests.support import shipped_config, write_config

CONFIRM_WINDOW = 1000  # unconfirmed publishes a confirming publisher keeps in flight at most


def run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def one_call(host: str, port: int, method: Any, reply: type) -> Any:
    """Connect, open a channel, send one synchronous method and return its reply."""
    client = await connect(host, port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        return await client.call(1, method, reply)
    finally:
        await client.close()


async def queue_depth(host: str, port: int, queue: str) -> int:
    passive = commands.Queue.Declare(queue=queue, passive=True)
    return (await one_call(host, port, passive, commands.Queue.DeclareOk)).message_count


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def stress_config(data_dir: Path, segment_size: int) -> Path:
    """Create `data_dir` and write the shipped config there with store.segment_size set."""
    config = shipped_config()
    config["store"]["segment_size"] = segment_size
    data_dir.mkdir(parents=True)
    return write_config(data_dir, config)
