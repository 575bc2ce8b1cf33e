"""Deliveries a Tx.Rollback gave back out of tag order: taken singly, up to a tag, or all, always
in tag order, with the heap of tags bounded however often one delivery comes back."""

from __future__ import annotations

import functools

from broker.amqp.unacked import STALE_SLACK, RolledBack, Unacked
from broker.core.message import QueuedMessage
from broker.core.queue import Queue
from tests.unit.helpers import make_message

QUEUE = Queue("q", "/")


@functools.cache
def entry(tag: int) -> Unacked:
    """The delivery with this tag (one object per tag, so taken ones compare equal)."""
    return (QUEUE, QueuedMessage(make_message("q", b"body %d" % tag), 0), None)


def rolled_back(*tags: int) -> RolledBack:
    held = RolledBack()
    for tag in tags:
        held.add(tag, entry(tag))
    return held


def test_take_through_takes_the_tags_up_to_it_in_order_and_leaves_the_rest() -> None:
    held = rolled_back(9, 2, 7, 4)
    assert held.take_through(7) == [(tag, entry(tag)) for tag in (2, 4, 7)]
    assert len(held) == 1 and held.oldest() == 9
    assert held.take_through(8) == []
    assert held.take_through(100) == [(9, entry(9))]
    assert len(held) == 0 and held.oldest() is None


def test_a_single_pop_is_skipped_when_its_tag_surfaces() -> None:
    held = rolled_back(3, 5, 8)
    assert held.pop(5) == entry(5)
    assert held.pop(5) is None  # settled already: the caller reports an unknown tag
    assert held.take_through(8) == [(3, entry(3)), (8, entry(8))]
    held = rolled_back(3, 5)
    held.pop(3)
    assert held.oldest() == 5


def test_take_all_empties_in_tag_order() -> None:
    held = rolled_back(6, 1, 4)
    held.pop(4)
    assert held.take_all() == [(1, entry(1)), (6, entry(6))]
    assert len(held) == 0 and held.oldest() is None and held.take_through(10) == []


def test_one_delivery_acked_and_rolled_back_over_and_over_keeps_the_heap_bounded() -> None:
    """The attack the structure exists for: ack tag 1, roll back, again, thousands of times.
    Each round leaves a settled tag in the heap; it is rebuilt before they pile up."""
    held = rolled_back(1, 50)
    for _ in range(10_000):
        assert held.pop(1) == entry(1)
        held.add(1, entry(1))
        assert len(held._tags) <= 2 * len(held) + STALE_SLACK + 1
    assert held.take_through(50) == [(1, entry(1)), (50, entry(50))]


def test_a_tag_back_twice_is_taken_once() -> None:
    """Acked and rolled back again before its old tag surfaced: the heap holds it twice, the
    delivery is taken once."""
    held = rolled_back(2)
    held.pop(2)
    held.add(2, entry(2))
    assert held.take_through(2) == [(2, entry(2))]
    assert held.oldest() is None
