"""The read-ahead budget every paging queue of a store shares (broker/core/read_ahead.py):
many queues reading ahead at once stay within it and lose nothing; a queue whose consumers
found nothing still reads (a queue holding its window idle starves no one); purge and delete
give back what a queue held, a read in flight included; the memory alarm sees reads in flight.
Driven on real files through the durable store's test node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.core.message import ENTRY_OVERHEAD
from broker.core.paging import WINDOW_ENTRIES
from broker.core.persistence import pack_location
from broker.core.queue import Queue
from broker.core.read_ahead import FLOOR, ReadAheadBudget
from broker.store.wal import RecordReader
from tests.unit.helpers import FakeSink, add_consumer, make_message
from tests.unit.test_durable_store import Node, start_node, stop_node, synced
from tests.unit.test_paging import BODY, body_of, fill
from tests.unit.test_wal import watch_preads

LIMIT = 1 << 20
RECORD_COST = BODY + ENTRY_OVERHEAD  # what a message read back costs the budget


async def budgeted_node(directory: Path, limit: int = LIMIT) -> tuple[Node, ReadAheadBudget]:
    node = await start_node(directory)
    budget = node.store.read_ahead = ReadAheadBudget(limit)  # before any queue takes it
    return node, budget


def declare(node: Node, count: int, messages: int) -> list[Queue]:
    """`count` durable queues of `messages` each, published round robin, as a backlog that
    many producers built while no consumer ran."""
    queues = [node.vhost.declare_queue(f"q{index}", None, durable=True) for index in range(count)]
    for start in range(0, messages, 100):
        for queue in queues:
            fill(node.vhost, queue.name, 100, start)
    return queues


async def until(condition, what: str, seconds: float = 20) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.005)


async def consume_all(queues: list[Queue], total: int) -> FakeSink:
    """A consumer without a prefetch limit on each queue (tagged with its name), once the
    `total` messages have reached them."""
    sink = FakeSink()
    for queue in queues:
        add_consumer(queue, sink, queue.name, credit=10**9)
    await until(lambda: len(sink.delivered) == total, "every message delivered")
    return sink


def delivered_to(sink: FakeSink, tag: str) -> list[bytes]:
    return [body for consumer, body, _ in sink.delivered if consumer == tag]


async def test_many_queues_reading_ahead_at_once_stay_within_the_budget(tmp_path: Path) -> None:
    """Consumers start on 24 long queues at once: each queue asks to read thousands of
    records ahead, together far past the budget. What they hold read back never passes the
    budget by more than each queue's floor; queues wait their turn, are resumed as others
    drain, and every message reaches its consumer in order. At the end nothing is charged."""
    node, budget = await budgeted_node(tmp_path)
    queues = declare(node, 24, 2_500)
    assert await synced(node.store) is None
    sink = await consume_all(queues, 24 * 2_500)
    for queue in queues:
        assert delivered_to(sink, queue.name) == [body_of(index) for index in range(2_500)]
    assert budget.waits > 0  # the budget did make queues wait
    assert budget.peak <= LIMIT + 24 * (FLOOR + RECORD_COST)
    assert (budget.held, budget.in_flight, budget.waiting) == (0, 0, 0)
    await stop_node(node)


async def test_an_idle_full_window_does_not_starve_another_queue(tmp_path: Path) -> None:
    """One queue's consumer stops after a few messages, so its window keeps what it read
    ahead: most of the budget. Another queue's consumer still gets every message, a floor at a
    time, and the first queue's charge stays what its window holds until it is purged."""
    node, budget = await budgeted_node(tmp_path)
    idle, busy = declare(node, 2, 3_000)
    assert await synced(node.store) is None
    sink = FakeSink()
    add_consumer(idle, sink, "idle", credit=WINDOW_ENTRIES + 10)
    await until(lambda: budget.in_flight == 0 and budget.held > 0, "the idle queue read ahead")
    held_by_idle = budget.held
    assert held_by_idle > LIMIT // 2
    add_consumer(busy, sink, "busy", credit=10**9)
    await until(lambda: len(delivered_to(sink, "busy")) == 3_000, "the busy queue drained")
    assert delivered_to(sink, "busy") == [body_of(index) for index in range(3_000)]
    assert budget.held == held_by_idle  # the busy queue gave back all it read
    idle.purge()
    assert (budget.held, budget.in_flight) == (0, 0)
    await stop_node(node)


@pytest.mark.pure_python
async def test_purge_and_delete_give_back_what_a_queue_held_a_read_in_flight_too(
    tmp_path: Path,
) -> None:
    """A read under way when its queue is purged stays charged (and counted by the memory
    alarm) until it is back, then is given back with nothing to deliver; deleting a queue
    gives back its window's charge."""
    node, budget = await budgeted_node(tmp_path, limit=64 << 20)
    store = node.store
    first, second = declare(node, 2, 1_000)
    assert await synced(store) is None
    held: list[tuple[object, object, object]] = []
    load_ahead = store.load_ahead
    store.load_ahead = lambda ids, places, done: held.append((ids, places, done))  # type: ignore[method-assign]
    sink = FakeSink()
    add_consumer(first, sink, "first", credit=10**9)
    ids, places, done = held.pop()
    charged = (1_000 - WINDOW_ENTRIES) * RECORD_COST
    assert (budget.held, budget.in_flight) == (charged, charged)
    assert store.reading_bytes() == charged
    first.purge()
    assert (budget.held, budget.in_flight) == (charged, charged)
    done(store.load(ids, places))  # type: ignore[operator, arg-type]
    assert (budget.held, budget.in_flight, store.reading_bytes()) == (0, 0, 0)

    store.load_ahead = load_ahead  # type: ignore[method-assign]
    add_consumer(second, sink, "second", credit=WINDOW_ENTRIES + 1)
    await until(lambda: budget.in_flight == 0 and budget.held > 0, "the second queue read ahead")
    node.vhost.delete_queue(second.name, None)
    assert (budget.held, budget.in_flight, budget.waiting) == (0, 0, 0)
    await stop_node(node)


@pytest.mark.pure_python
async def test_a_read_ahead_that_fails_gives_back_its_charge(tmp_path: Path) -> None:
    """Every read of a read-ahead fails (its executor shut down, say): the records are read
    again on the loop, delivered in order, and the charge of the failed read is given back as
    they leave the window; nothing stays charged or waiting."""
    node, budget = await budgeted_node(tmp_path)
    queues = declare(node, 2, 1_500)
    assert await synced(node.store) is None
    held: list[tuple[object, object, object]] = []
    node.store.load_ahead = lambda ids, places, done: held.append((ids, places, done))  # type: ignore[method-assign]
    sink = FakeSink()
    for queue in queues:
        add_consumer(queue, sink, queue.name, credit=10**9)
    assert budget.in_flight > 0 and budget.waiting == 0
    while held:  # the reads fail; each failure may start the next read-ahead
        ids, _, done = held.pop(0)
        done([RuntimeError("cannot schedule new futures after shutdown")] * len(ids))  # type: ignore[operator, arg-type]
    for queue in queues:
        assert delivered_to(sink, queue.name) == [body_of(index) for index in range(1_500)]
    assert (budget.held, budget.in_flight, budget.waiting) == (0, 0, 0)
    await stop_node(node)


@pytest.mark.pure_python
async def test_a_cached_read_that_raises_half_way_fails_the_read_ahead_not_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy of cached records raises something unforeseen in the middle of a batch (no
    memory, say): the read-ahead fails as a failed read does, on a later loop turn; the
    records are read again on the loop, every message arrives in order, and the budget ends
    empty (a queue left loading for ever would never deliver again)."""
    node, budget = await budgeted_node(tmp_path)
    queues = declare(node, 2, 1_500)
    assert await synced(node.store) is None
    calls = 0
    read_cached = RecordReader.read_cached

    def failing(reader: RecordReader) -> bool:
        nonlocal calls
        calls += 1
        if calls <= 2:
            read_cached(reader)  # some records copied already, then
            raise MemoryError("no memory for the next buffer")
        return read_cached(reader)

    monkeypatch.setattr(RecordReader, "read_cached", failing)
    sink = await consume_all(queues, 3_000)
    assert calls > 2
    for queue in queues:
        assert delivered_to(sink, queue.name) == [body_of(index) for index in range(1_500)]
    assert (budget.held, budget.in_flight, budget.waiting) == (0, 0, 0)
    await stop_node(node)


async def test_messages_larger_than_the_budget_still_flow_one_at_a_time(tmp_path: Path) -> None:
    """A client publishes 2 MiB bodies to three queues while the budget is 1 MiB: a read-ahead
    takes at least one record whatever its size, so every queue drains whole and in order, and
    the budget ends empty (it may be passed by one record per queue, never more)."""
    node, budget = await budgeted_node(tmp_path)
    queues = [node.vhost.declare_queue(f"big{i}", None, durable=True) for i in range(3)]
    big = [bytes([index]) * (2 << 20) for index in range(8)]
    for queue in queues:
        for body in big:
            node.vhost.publish(
                node.vhost.get_exchange(""), make_message(queue.name, body, delivery_mode=2)
            )
    assert all(queue.paged_count for queue in queues)  # past the 1 MiB window
    assert await synced(node.store) is None
    sink = await consume_all(queues, 3 * 8)
    for queue in queues:
        assert delivered_to(sink, queue.name) == big
    assert budget.peak <= LIMIT + 3 * ((2 << 20) + ENTRY_OVERHEAD)
    assert (budget.held, budget.in_flight, budget.waiting) == (0, 0, 0)
    await stop_node(node)


async def test_lone_records_in_the_page_cache_are_read_on_the_loop_a_turn_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue's records far apart in the log (another queue's between them), just written:
    the read-ahead copies them whole on the loop (16 KiB bodies: longer than a read-ahead) with
    reads that never wait for the disk, sends no work to the reading thread, makes no pread,
    and still hands them over on a later turn of the loop, never inside the call that asked
    (the queue is in the middle of a pop then)."""
    node = await start_node(tmp_path)
    try:
        queues = [node.vhost.declare_queue(f"q{index}", None, durable=True) for index in (0, 1)]
        bodies = [bytes([65 + index]) * 16384 for index in range(6)]
        messages = []
        for index, body in enumerate(bodies):
            message = make_message(queues[index % 2].name, body, delivery_mode=2)
            node.vhost.publish(node.vhost.get_exchange(""), message)
            messages.append(message)
        assert await synced(node.store) is None  # in the files, and so in the page cache
        ids = [message.msg_id for message in messages[::2]]
        places = [pack_location(*message.location) for message in messages[::2]]
        loop = asyncio.get_running_loop()
        sent_to_thread: list[object] = []
        run_in_executor = loop.run_in_executor

        def watched(executor, work, *args):  # type: ignore[no-untyped-def]
            if executor is None:
                sent_to_thread.append(work)
            return run_in_executor(executor, work, *args)

        monkeypatch.setattr(loop, "run_in_executor", watched)
        preads = watch_preads(monkeypatch, passing=False)
        results: list[object] = []
        node.store.load_ahead(ids, places, results.extend)
        assert results == []
        await until(lambda: results, "the read-ahead handed over")
        assert sent_to_thread == []
        assert preads == []  # each record, longer than a read-ahead, was copied whole
        assert [getattr(result, "body", result) for result in results] == bodies[::2]
    finally:
        await stop_node(node)
