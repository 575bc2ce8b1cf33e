"""Ready-message stores: FIFO and priority order, requeue in place, removal away from the head
(tombstones), the deadline index, and one model check against a sorted list."""

from __future__ import annotations

import random

import pytest

from broker.core.message import GONE, OUT, READY, QueuedMessage
from broker.core.ready import (
    COMPACT_MIN_DEADLINES,
    COMPACT_MIN_TOMBSTONES,
    FifoStore,
    PriorityStore,
    ReadyStore,
)
from tests.unit.helpers import make_message


def _entry(seq: int, priority: int | None = None, expires_at: float = 0.0) -> QueuedMessage:
    props = {} if priority is None else {"priority": priority}
    message = make_message("q", f"m{seq}".encode(), **props)
    return QueuedMessage(message, seq, expires_at)


def _seqs(store: ReadyStore) -> list[int]:
    return [entry.seq for entry in store]


def _drain(store: ReadyStore) -> list[int]:
    out = []
    while (entry := store.pop()) is not None:
        out.append(entry.seq)
    return out


def test_fifo_pops_in_push_order_and_counts_bodies() -> None:
    store = FifoStore()
    for seq in (1, 2, 3):
        store.push(_entry(seq))
    assert (len(store), store.body_bytes) == (3, 6)
    assert store.peek().seq == 1  # type: ignore[union-attr]
    first = store.pop()
    assert first is not None and first.state == OUT
    assert (len(store), store.body_bytes) == (2, 4)
    assert _drain(store) == [2, 3]
    assert store.pop() is None and not store


def test_priority_store_serves_highest_level_first_fifo_within_and_caps_at_max() -> None:
    """Missing priority is 0; above the maximum counts as the maximum (RabbitMQ)."""
    store = PriorityStore(5)
    for seq, priority in ((1, None), (2, 9), (3, 5), (4, 1), (5, 5), (6, 0)):
        store.push(_entry(seq, priority))
    assert _seqs(store) == [2, 3, 5, 4, 1, 6]
    assert _drain(store) == [2, 3, 5, 4, 1, 6]


@pytest.mark.parametrize("make", [FifoStore, lambda: PriorityStore(3)])
def test_requeue_puts_entries_back_in_their_places(make) -> None:  # type: ignore[no-untyped-def]
    store: ReadyStore = make()
    entries = [_entry(seq, seq % 4) for seq in range(1, 13)]
    for entry in entries:
        store.push(entry)
    expected = _seqs(store)
    taken = [store.pop() for _ in range(7)]
    random.Random(3).shuffle(taken)
    for entry in taken:
        store.requeue([entry])  # type: ignore[list-item]
    assert _seqs(store) == expected
    assert all(entry.state == READY for entry in entries)


def test_remove_away_from_head_leaves_a_tombstone_the_head_skips() -> None:
    store = FifoStore()
    entries = [_entry(seq) for seq in range(1, 6)]
    for entry in entries:
        store.push(entry)
    store.remove(entries[0])
    store.remove(entries[2])
    assert entries[0].state == GONE
    assert (len(store), _seqs(store)) == (3, [2, 4, 5])
    assert store.peek() is entries[1]
    assert _drain(store) == [2, 4, 5]


def test_tombstones_are_compacted_once_they_are_the_majority() -> None:
    store = FifoStore()
    entries = [_entry(seq) for seq in range(3 * COMPACT_MIN_TOMBSTONES)]
    for entry in entries:
        store.push(entry)
    for entry in entries[1::3] + entries[2::3]:  # two thirds, never the head
        store.remove(entry)
    assert len(store._fifo.entries) < len(entries)  # compacted, not only counted
    assert _seqs(store) == [entry.seq for entry in entries[0::3]]


def test_deadlines_give_the_earliest_and_take_what_is_due_anywhere() -> None:
    store = FifoStore()
    late, early, never = _entry(1, expires_at=50.0), _entry(2, expires_at=10.0), _entry(3)
    for entry in (late, early, never):
        store.push(entry)
    assert store.next_due() == 10.0
    assert store.due(9.0) == []
    assert store.due(10.0) == [early]  # not at the head
    assert early.state == GONE and _seqs(store) == [1, 3]
    assert store.next_due() == 50.0
    popped = store.pop()
    assert popped is late and store.next_due() == float("inf")  # out: no longer due here
    store.requeue([late])  # back with its original deadline
    assert store.next_due() == 50.0
    assert store.due(60.0) == [late] and _seqs(store) == [3]


def test_purge_takes_everything_ready() -> None:
    store = PriorityStore(2)
    for seq in range(5):
        store.push(_entry(seq, seq % 3, expires_at=5.0))
    taken = store.purge()
    assert sorted(entry.seq for entry in taken) == list(range(5))
    assert (len(store), store.body_bytes, store.next_due()) == (0, 0, float("inf"))


def test_drop_while_takes_from_the_head_only_while_the_predicate_holds() -> None:
    store = FifoStore()
    for seq in range(1, 6):
        store.push(_entry(seq))
    dropped = store.drop_while(lambda _: len(store) > 2)
    assert [entry.seq for entry in dropped] == [1, 2, 3]
    assert _seqs(store) == [4, 5]


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_match_a_sorted_model(seed: int) -> None:
    """push / pop / requeue / remove / due in random order: the store always serves what a
    plain sorted list of (level desc, seq) would."""
    rng = random.Random(seed)
    store = PriorityStore(3)
    model: dict[int, QueuedMessage] = {}
    out: list[QueuedMessage] = []
    seq = 0
    for step in range(2000):
        action = rng.random()
        if action < 0.4:
            seq += 1
            entry = _entry(seq, rng.randrange(5), expires_at=rng.choice([0.0, rng.uniform(0, 100)]))
            store.push(entry)
            model[seq] = entry
        elif action < 0.6 and model:
            entry = store.pop()  # type: ignore[assignment]
            want = min(model.values(), key=lambda e: (-min(e.message.priority, 3), e.seq))
            assert entry is want
            del model[entry.seq]
            out.append(entry)
        elif action < 0.75 and out:
            entry = out.pop(rng.randrange(len(out)))
            store.requeue([entry])
            model[entry.seq] = entry
        elif action < 0.85 and model:
            entry = rng.choice(list(model.values()))
            store.remove(entry)
            del model[entry.seq]
        else:
            now = step / 20
            for entry in store.due(now):
                assert entry.expires_at <= now
                del model[entry.seq]
            assert all(not e.expires_at or e.expires_at > now for e in model.values())
        assert len(store) == len(model)
        assert store.body_bytes == sum(e.message.body_size for e in model.values())


def test_deadlines_of_delivered_entries_do_not_pile_up() -> None:
    """A long TTL with consumers that keep up: the heap items of delivered entries are dropped
    once they are the majority, so the heap (and the messages it references) stays the size of
    what is ready, not of everything delivered within the TTL."""
    store = FifoStore()
    for seq in range(20_000):
        store.push(_entry(seq, expires_at=1e9 + seq))
        assert store.pop() is not None  # delivered at once
    assert len(store._deadlines) < 2 * COMPACT_MIN_DEADLINES
    store.push(_entry(20_000, expires_at=5.0))
    assert store.next_due() == 5.0


def test_priority_pops_start_at_the_highest_level_in_use() -> None:
    store = PriorityStore(255)
    store.push(_entry(1, 3))
    store.push(_entry(2, 200))
    assert [store.pop().seq, store.pop().seq] == [2, 1]  # type: ignore[union-attr]
    assert store.pop() is None and store._top == 0
    store.push(_entry(3, 7))
    assert store.peek().seq == 3  # type: ignore[union-attr]
