"""Queue model: ready order, requeue in place, round robin under credit limits, purge and the
auto-delete condition."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from broker.core.consumer import Consumer
from broker.core.message import QueuedMessage
from broker.core.queue import Queue
from tests.unit.helpers import FakeSink, add_consumer, bodies, make_message


def _queue(**kwargs: object) -> Queue:
    return Queue("q", "/", **kwargs)  # type: ignore[arg-type]


def _publish(queue: Queue, *names: str) -> None:
    for name in names:
        queue.publish(make_message("q", name.encode()))


def _take(queue: Queue, count: int) -> list[QueuedMessage]:
    taken = []
    for _ in range(count):
        entry = queue.get(ack_required=True)
        assert entry is not None
        taken.append(entry)
    return taken


# ------------------------------------------------------------------------------------ order


def test_publish_then_get_is_fifo() -> None:
    """Basic.Get returns messages in publish order, then None when empty."""
    queue = _queue()
    _publish(queue, "m1", "m2", "m3")
    assert queue.message_count == 3
    assert [queue.get(ack_required=True).message.body for _ in range(3)] == [b"m1", b"m2", b"m3"]  # type: ignore[union-attr]
    assert queue.get(ack_required=True) is None
    assert queue.message_count == 0


def test_new_messages_are_not_redelivered() -> None:
    """A message that was never delivered carries redelivered=False."""
    queue = _queue()
    _publish(queue, "m1")
    entry = queue.get(ack_required=True)
    assert entry is not None
    assert entry.redelivered is False


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_requeue_restores_original_positions_any_order(order: tuple[int, ...]) -> None:
    """Requeueing taken messages one by one, in any order, rebuilds publish order; every
    requeued message is flagged redelivered and the untaken ones are not."""
    queue = _queue()
    _publish(queue, "m0", "m1", "m2", "m3", "m4", "m5")
    taken = _take(queue, 4)
    for index in order:
        queue.requeue([taken[index]])
    ready = list(queue.ready_entries())
    assert bodies(ready) == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert [entry.redelivered for entry in ready] == [True] * 4 + [False] * 2


def test_requeue_batch_is_sorted() -> None:
    """One requeue call with entries out of order still restores publish order."""
    queue = _queue()
    _publish(queue, "m1", "m2", "m3")
    taken = _take(queue, 3)
    queue.requeue([taken[2], taken[0], taken[1]])
    assert bodies(queue.ready_entries()) == [b"m1", b"m2", b"m3"]


def test_requeue_into_middle_of_ready() -> None:
    """A requeued message goes between the ready messages around its original position."""
    queue = _queue()
    _publish(queue, "m1", "m2", "m3", "m4")
    m1, m2 = _take(queue, 2)
    queue.requeue([m1])  # ahead of m3: fast path at the head
    assert bodies(queue.ready_entries()) == [b"m1", b"m3", b"m4"]
    taken = _take(queue, 2)  # m1, m3
    assert bodies(taken) == [b"m1", b"m3"]
    queue.requeue([m2])
    assert bodies(queue.ready_entries()) == [b"m2", b"m4"]
    queue.requeue([taken[1]])  # m3 lands between m2 and m4
    assert bodies(queue.ready_entries()) == [b"m2", b"m3", b"m4"]
    queue.requeue([taken[0]])
    assert bodies(queue.ready_entries()) == [b"m1", b"m2", b"m3", b"m4"]


def test_requeue_interleaved_with_new_publishes() -> None:
    """Messages published after a delivery stay behind the requeued one."""
    queue = _queue()
    _publish(queue, "m1", "m2")
    m1, m2 = _take(queue, 2)
    _publish(queue, "m3")
    queue.requeue([m2])
    _publish(queue, "m4")
    assert bodies(queue.ready_entries()) == [b"m2", b"m3", b"m4"]
    queue.requeue([m1])
    _publish(queue, "m5")
    ready = list(queue.ready_entries())
    assert bodies(ready) == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert [entry.redelivered for entry in ready] == [True, True, False, False, False]


def test_requeue_empty_is_noop() -> None:
    """Requeueing nothing leaves the queue as it was."""
    queue = _queue()
    _publish(queue, "m1")
    queue.requeue([])
    assert bodies(queue.ready_entries()) == [b"m1"]
    assert next(queue.ready_entries()).redelivered is False


def test_requeue_random_interleavings_keep_publish_order() -> None:
    """Under random get/requeue/publish sequences the ready list is always in publish order."""
    rng = random.Random(20240601)
    for _ in range(50):
        queue = _queue()
        held: list[QueuedMessage] = []
        published = 0
        for _ in range(60):
            action = rng.random()
            if action < 0.35:
                published += 1
                _publish(queue, f"m{published}")
            elif action < 0.7:
                entry = queue.get(ack_required=True)
                if entry is not None:
                    held.append(entry)
            elif held:
                rng.shuffle(held)
                count = rng.randint(1, len(held))
                queue.requeue(held[:count])
                del held[:count]
            seqs = [entry.seq for entry in queue.ready_entries()]
            assert seqs == sorted(seqs)
        # every message is either ready or held, exactly once
        everything = sorted(entry.seq for entry in [*queue.ready_entries(), *held])
        assert everything == list(range(1, published + 1))


# ------------------------------------------------------------------------------------ consumers


def test_round_robin_over_consumers() -> None:
    """With room everywhere, consumers take turns in subscription order."""
    queue = _queue()
    sink = FakeSink()
    for tag in ("c1", "c2", "c3"):
        add_consumer(queue, sink, tag, credit=10)
    _publish(queue, *(f"m{i}" for i in range(7)))
    assert [tag for tag, _, _ in sink.delivered] == ["c1", "c2", "c3", "c1", "c2", "c3", "c1"]
    assert [body for _, body, _ in sink.delivered] == [f"m{i}".encode() for i in range(7)]
    assert queue.message_count == 0


def test_round_robin_skips_consumers_without_room() -> None:
    """A consumer out of credit is skipped; the rest share the messages."""
    queue = _queue()
    sink = FakeSink()
    add_consumer(queue, sink, "c1", credit=1)
    add_consumer(queue, sink, "c2", credit=3)
    add_consumer(queue, sink, "c3", credit=0)
    _publish(queue, "m1", "m2", "m3", "m4", "m5")
    assert [(tag, body) for tag, body, _ in sink.delivered] == [
        ("c1", b"m1"),
        ("c2", b"m2"),
        ("c2", b"m3"),
        ("c2", b"m4"),
    ]
    assert bodies(queue.ready_entries()) == [b"m5"]


def test_dispatch_stops_without_room_and_resumes_on_dispatch() -> None:
    """Messages wait while no consumer has room; dispatch() after credit returns delivers them
    in order, round robin."""
    queue = _queue()
    sink = FakeSink()
    add_consumer(queue, sink, "c1", credit=0)
    add_consumer(queue, sink, "c2", credit=0)
    _publish(queue, "m1", "m2", "m3")
    assert sink.delivered == []
    assert queue.message_count == 3
    queue.dispatch()  # still no room: nothing happens
    assert sink.delivered == []
    sink.credit["c2"] = 1
    queue.dispatch()
    assert [(tag, body) for tag, body, _ in sink.delivered] == [("c2", b"m1")]
    sink.credit["c1"] = 5
    sink.credit["c2"] = 5
    queue.dispatch()
    assert [body for _, body, _ in sink.delivered] == [b"m1", b"m2", b"m3"]
    assert {tag for tag, _, _ in sink.delivered[1:]} == {"c1", "c2"}
    assert queue.message_count == 0


def test_add_consumer_delivers_backlog() -> None:
    """Subscribing to a queue with ready messages delivers them at once, up to the credit."""
    queue = _queue()
    _publish(queue, "m1", "m2", "m3")
    sink = FakeSink()
    add_consumer(queue, sink, "c1", credit=2)
    assert [body for _, body, _ in sink.delivered] == [b"m1", b"m2"]
    assert bodies(queue.ready_entries()) == [b"m3"]
    assert queue.had_consumer is True


def test_requeue_redelivers_to_consumer_flagged() -> None:
    """Requeued messages go back to consumers first, flagged redelivered."""
    queue = _queue()
    sink = FakeSink()
    add_consumer(queue, sink, "c1", credit=2)
    _publish(queue, "m1", "m2", "m3")
    assert bodies(sink.entries) == [b"m1", b"m2"]
    first_two = list(sink.entries)
    sink.credit["c1"] = 3
    queue.requeue(first_two)
    assert sink.delivered[2:] == [("c1", b"m1", True), ("c1", b"m2", True), ("c1", b"m3", False)]


def test_requeue_from_inside_deliver_is_not_lost() -> None:
    """A sink that requeues during deliver (a reject) does not recurse and loses nothing."""

    class RejectOnce(FakeSink):
        def deliver(self, consumer: Consumer, queue: Queue, entry: QueuedMessage) -> None:
            super().deliver(consumer, queue, entry)
            if not entry.redelivered:
                queue.requeue([entry])

    queue = _queue()
    sink = RejectOnce()
    add_consumer(queue, sink, "c1", credit=10)
    _publish(queue, "m1", "m2")
    assert sink.delivered == [
        ("c1", b"m1", False),
        ("c1", b"m1", True),
        ("c1", b"m2", False),
        ("c1", b"m2", True),
    ]
    assert queue.message_count == 0


def test_remove_consumer() -> None:
    """A removed consumer gets nothing more; removing an unknown consumer is harmless."""
    queue = _queue()
    sink = FakeSink()
    c1 = add_consumer(queue, sink, "c1", credit=10)
    add_consumer(queue, sink, "c2", credit=10)
    queue.remove_consumer(c1)
    queue.remove_consumer(c1)
    _publish(queue, "m1", "m2")
    assert [tag for tag, _, _ in sink.delivered] == ["c2", "c2"]


def test_exclusive_consumer_property() -> None:
    """exclusive_consumer finds the consumer subscribed with exclusive=True."""
    queue = _queue()
    sink = FakeSink()
    add_consumer(queue, sink, "c1")
    assert queue.exclusive_consumer is None
    exclusive = Consumer("c2", queue, sink, no_ack=False, exclusive=True, prefetch=0)
    queue.add_consumer(exclusive)
    assert queue.exclusive_consumer is exclusive


# ------------------------------------------------------------------------------------ purge etc.


def test_purge_returns_count_and_empties() -> None:
    """purge drops every ready message and says how many; unacked (taken) ones are untouched."""
    queue = _queue()
    _publish(queue, "m1", "m2", "m3", "m4")
    taken = queue.get(ack_required=True)
    assert queue.purge() == 3
    assert queue.message_count == 0
    assert queue.purge() == 0
    assert taken is not None
    queue.requeue([taken])
    assert bodies(queue.ready_entries()) == [b"m1"]


def test_unused_auto_delete_needs_a_consumer_first() -> None:
    """An auto-delete queue is unused only after it had a consumer and the last one left."""
    queue = _queue(auto_delete=True)
    sink = FakeSink()
    assert queue.unused_auto_delete is False
    c1 = add_consumer(queue, sink, "c1")
    c2 = add_consumer(queue, sink, "c2")
    assert queue.unused_auto_delete is False
    queue.remove_consumer(c1)
    assert queue.unused_auto_delete is False
    queue.remove_consumer(c2)
    assert queue.unused_auto_delete is True
    queue.deleted = True
    assert queue.unused_auto_delete is False


def test_unused_auto_delete_false_for_plain_queue() -> None:
    """A queue without auto_delete is never unused-auto-delete."""
    queue = _queue()
    sink = FakeSink()
    consumer = add_consumer(queue, sink, "c1")
    queue.remove_consumer(consumer)
    assert queue.unused_auto_delete is False


def test_queue_type_and_exclusive_flags() -> None:
    """queue_type defaults to classic; exclusive follows the owner."""
    owner = object()
    queue = _queue(exclusive_owner=owner, arguments={"x-queue-type": "quorum"})
    assert queue.exclusive is True
    assert queue.queue_type == "quorum"
    assert _queue().queue_type == "classic"
    assert _queue().exclusive is False


def test_requeue_deep_in_a_long_queue_costs_a_binary_search() -> None:
    """Found in review: each returned message was walked to its place by a Python loop from
    the head, so rejects landing deep in a 100k queue stalled the loop for seconds (1000 of
    them: 42 s). The place is now found by binary search on sequence numbers."""
    queue = Queue("q", "/")
    for _ in range(20_000):
        queue.publish(make_message("q", b"x"))
    taken = [queue.get(ack_required=True) for _ in range(20_000)]
    started = time.perf_counter()
    for entry in taken:  # each one lands at the tail of what was returned so far
        queue.requeue([entry])
    assert time.perf_counter() - started < 2.0
    assert [entry.seq for entry in queue.ready_entries()] == sorted(entry.seq for entry in taken)
    assert all(entry.redelivered for entry in queue.ready_entries())
