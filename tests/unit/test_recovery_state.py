"""RecoveredState.apply fed hand-made records, as WriteAheadLog.replay would feed them: how
metadata records build the definitions to restore, and how MESSAGE / SETTLE / DELIVERED records
decide which messages come back, to which queues, and with which redelivered flag."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from broker.amqp.frames import short_string
from broker.store import records
from broker.store.recovery import RecoveredState
from tests.unit.helpers import content_header


class Feeder:
    """Applies records to a state at increasing offsets of one segment, like replay does."""

    def __init__(self, state: RecoveredState, segment: int = 1) -> None:
        self.state = state
        self.segment = segment
        self.offset = 0

    def record(self, record_type: int, payload: bytes) -> tuple[int, int]:
        """Apply one record; return its (segment, offset)."""
        location = (self.segment, self.offset)
        self.state.apply(self.segment, self.offset, record_type, memoryview(payload))
        self.offset += 13 + len(payload)
        return location

    def table(self, record_type: int, **values: Any) -> None:
        self.record(record_type, records.encode_table(values))

    def exchange(self, name: str, vhost: str = "/", kind: str = "direct") -> None:
        self.table(
            records.EXCHANGE_DECLARE,
            vhost=vhost,
            name=name,
            type=kind,
            auto_delete=False,
            internal=False,
            arguments={},
        )

    def queue(self, name: str, queue_id: int, vhost: str = "/", **arguments: Any) -> None:
        self.table(records.QUEUE_DECLARE, vhost=vhost, name=name, id=queue_id, arguments=arguments)

    def bind(
        self,
        source: str,
        destination: str,
        routing_key: str = "",
        to_exchange: bool = False,
        vhost: str = "/",
        record_type: int = records.BIND,
        **arguments: Any,
    ) -> None:
        self.table(
            record_type,
            vhost=vhost,
            source=source,
            destination=destination,
            to_exchange=to_exchange,
            routing_key=routing_key,
            arguments=arguments,
        )

    def message(self, msg_id: int, *queue_ids: int, key: str = "k") -> tuple[int, int]:
        route = short_string("x") + short_string(key)
        payload = records.encode_message(
            msg_id, list(queue_ids), route, content_header(4, delivery_mode=2), b"body"
        )
        return self.record(records.MESSAGE, payload)

    def settle(self, queue_id: int, *msg_ids: int) -> None:
        self.record(records.SETTLE, records.encode_ids(queue_id, list(msg_ids)))

    def delivered(self, queue_id: int, *msg_ids: int) -> None:
        self.record(records.DELIVERED, records.encode_ids(queue_id, list(msg_ids)))


@pytest.fixture
def feed() -> Feeder:
    return Feeder(RecoveredState())


def _bindings(state: RecoveredState) -> set[tuple[str, str, str, bool, str]]:
    """(vhost, source, destination, to_exchange, routing key) of every binding to restore."""
    return {
        (b["vhost"], b["source"], b["destination"], b["to_exchange"], b["routing_key"])
        for b in state.bindings.values()
    }


def _held(state: RecoveredState) -> dict[int, tuple[int, ...]]:
    """Message id -> ids of the queues that still hold it: objects, and the messages one
    FIFO queue holds, indexed without one (taken out of the index)."""
    held = {msg_id: queue_ids for msg_id, (_, queue_ids) in state.messages.items()}
    for queue_id, run in state.index.drain_runs():
        held.update(dict.fromkeys(run.msg_ids, (queue_id,)))
    return held


# ------------------------------------------------------------------------------ definitions


def test_declares_and_deletes_of_exchanges_and_queues(feed: Feeder) -> None:
    """Declares add definitions keyed by (vhost, name) / store id; deletes remove exactly those."""
    feed.exchange("a")
    feed.exchange("a", vhost="/other")
    feed.exchange("b", kind="topic")
    feed.queue("q1", 1, **{"x-message-ttl": 5000})
    feed.queue("q2", 2)
    feed.table(records.EXCHANGE_DELETE, vhost="/", name="a")
    feed.table(records.QUEUE_DELETE, vhost="/", id=1)
    state = feed.state
    assert set(state.exchanges) == {("/other", "a"), ("/", "b")}
    assert state.exchanges[("/", "b")]["type"] == "topic"
    assert set(state.queues) == {2}
    assert state.queues[2]["name"] == "q2"


def test_queue_declared_again_with_same_name_is_a_new_queue(feed: Feeder) -> None:
    """A queue is identified by its store id: a delete then a redeclare leaves only the new id."""
    feed.queue("q", 1)
    feed.table(records.QUEUE_DELETE, vhost="/", id=1)
    feed.queue("q", 2)
    assert list(feed.state.queues) == [2]


def test_delete_of_unknown_resources_is_harmless(feed: Feeder) -> None:
    """Deleting what is not there (already compacted away) changes nothing and does not raise."""
    feed.queue("q", 1)
    feed.table(records.QUEUE_DELETE, vhost="/", id=99)
    feed.table(records.EXCHANGE_DELETE, vhost="/", name="missing")
    feed.bind("x", "q", "k", record_type=records.UNBIND)
    assert list(feed.state.queues) == [1]
    assert feed.state.bindings == {}


def test_bind_and_unbind(feed: Feeder) -> None:
    """A binding is identified by vhost, ends, kind, routing key and arguments: unbind removes
    only the exact one, and binding twice keeps one."""
    feed.bind("x", "q", "a")
    feed.bind("x", "q", "a")
    feed.bind("x", "q", "b")
    feed.bind("x", "q", "a", **{"x-match": "any"})
    feed.bind("x", "q", "a", vhost="/other")
    feed.bind("x", "q", "a", to_exchange=True)
    assert len(feed.state.bindings) == 5
    feed.bind("x", "q", "a", record_type=records.UNBIND)
    assert _bindings(feed.state) == {
        ("/", "x", "q", False, "b"),
        ("/", "x", "q", False, "a"),  # the one with x-match arguments
        ("/other", "x", "q", False, "a"),
        ("/", "x", "q", True, "a"),
    }
    feed.bind("x", "q", "a", record_type=records.UNBIND, **{"x-match": "any"})
    assert ("/", "x", "q", False, "a") not in _bindings(feed.state)


def test_queue_delete_drops_that_queues_bindings_only(feed: Feeder) -> None:
    """QUEUE_DELETE removes bindings to that queue in its vhost, not to an exchange with the
    same name, not to a same-named queue of another vhost, and not to other queues."""
    feed.queue("q", 1)
    feed.queue("q", 2, vhost="/other")
    feed.queue("r", 3)
    feed.bind("x", "q", "k1")
    feed.bind("y", "q", "k2")
    feed.bind("x", "q", "k3", to_exchange=True)
    feed.bind("x", "q", "k4", vhost="/other")
    feed.bind("x", "r", "k5")
    feed.table(records.QUEUE_DELETE, vhost="/", id=1)
    assert _bindings(feed.state) == {
        ("/", "x", "q", True, "k3"),
        ("/other", "x", "q", False, "k4"),
        ("/", "x", "r", False, "k5"),
    }


def test_exchange_delete_drops_bindings_from_it_and_exchange_bindings_to_it(feed: Feeder) -> None:
    """EXCHANGE_DELETE removes the exchange's own bindings and exchange-to-exchange bindings
    that lead to it; bindings to a queue named like it survive."""
    feed.exchange("x")
    feed.exchange("y")
    feed.bind("x", "q", "from-x")
    feed.bind("x", "y", "x-to-y", to_exchange=True)
    feed.bind("y", "x", "y-to-x", to_exchange=True)
    feed.bind("y", "x", "y-to-queue-x")
    feed.bind("y", "q", "from-y")
    feed.bind("x", "q", "other-vhost", vhost="/other")
    feed.table(records.EXCHANGE_DELETE, vhost="/", name="x")
    assert _bindings(feed.state) == {
        ("/", "y", "x", False, "y-to-queue-x"),
        ("/", "y", "q", False, "from-y"),
        ("/other", "x", "q", False, "other-vhost"),
    }


def test_snapshot_replaces_all_metadata(feed: Feeder) -> None:
    """A snapshot is the whole truth at its point: definitions before it are forgotten, and
    records after it apply on top."""
    feed.exchange("old")
    feed.queue("old-q", 1)
    feed.bind("old", "old-q", "k")
    feed.table(
        records.SNAPSHOT,
        exchanges=[
            {
                "vhost": "/",
                "name": "new",
                "type": "fanout",
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        queues=[{"vhost": "/", "name": "new-q", "id": 4, "arguments": {}}],
        bindings=[
            {
                "vhost": "/",
                "source": "new",
                "destination": "new-q",
                "to_exchange": False,
                "routing_key": "",
                "arguments": {},
            }
        ],
        next_queue_id=5,
        next_msg_id=100,
    )
    state = feed.state
    assert set(state.exchanges) == {("/", "new")}
    assert set(state.queues) == {4}
    assert _bindings(state) == {("/", "new", "new-q", False, "")}
    assert (state.next_queue_id, state.next_msg_id) == (5, 100)
    feed.queue("after", 5)
    assert set(state.queues) == {4, 5}


def test_empty_snapshot_clears_everything(feed: Feeder) -> None:
    """A snapshot taken when nothing durable existed removes earlier definitions."""
    feed.exchange("x")
    feed.queue("q", 1)
    feed.bind("x", "q")
    feed.table(records.SNAPSHOT, exchanges=[], queues=[], bindings=[])
    assert (feed.state.exchanges, feed.state.queues, feed.state.bindings) == ({}, {}, {})


def test_snapshot_does_not_forget_messages(feed: Feeder) -> None:
    """Messages logged before a snapshot (in a segment not yet collected) are still recovered."""
    feed.queue("q", 1)
    feed.message(1, 1)
    feed.table(
        records.SNAPSHOT,
        exchanges=[],
        queues=[{"vhost": "/", "name": "q", "id": 1, "arguments": {}}],
        bindings=[],
        next_queue_id=2,
        next_msg_id=2,
    )
    assert _held(feed.state) == {1: (1,)}


# ------------------------------------------------------------------------------ next ids


def test_next_ids_follow_the_highest_seen_and_never_go_back(feed: Feeder) -> None:
    """next_msg_id / next_queue_id are one past the highest id in any record; a snapshot with
    lower counters (older) does not lower them."""
    state = feed.state
    assert (state.next_queue_id, state.next_msg_id) == (1, 1)
    feed.queue("q", 7)
    feed.message(41, 7)
    feed.message(3, 7)
    assert (state.next_queue_id, state.next_msg_id) == (8, 42)
    feed.table(
        records.SNAPSHOT, exchanges=[], queues=[], bindings=[], next_queue_id=2, next_msg_id=2
    )
    assert (state.next_queue_id, state.next_msg_id) == (8, 42)
    feed.table(
        records.SNAPSHOT, exchanges=[], queues=[], bindings=[], next_queue_id=20, next_msg_id=500
    )
    assert (state.next_queue_id, state.next_msg_id) == (20, 500)


def test_next_msg_id_survives_settling_every_message(feed: Feeder) -> None:
    """Settled messages still advance the id counter, so ids are never reused after restart."""
    feed.message(10, 1)
    feed.settle(1, 10)
    assert feed.state.messages == {}
    assert feed.state.next_msg_id == 11


# ------------------------------------------------------------------------------ messages


def test_message_record_becomes_a_bodiless_message(feed: Feeder) -> None:
    """A MESSAGE record gives a Message with route, header, id and location, and no body."""
    location = feed.message(5, 1, 2, key="eu.new")
    message, queue_ids = feed.state.messages[5]
    assert queue_ids == (1, 2)
    assert (message.exchange, message.routing_key) == ("x", "eu.new")
    assert message.route_bytes == short_string("x") + short_string("eu.new")
    assert message.header == content_header(4, delivery_mode=2)
    assert message.persistent
    assert message.body is None
    assert (message.msg_id, message.location) == (5, location)


def test_messages_of_one_route_share_route_and_header_bytes(feed: Feeder) -> None:
    """Recovering a long queue keeps one copy of identical route and header bytes."""
    feed.message(1, 1)
    feed.message(2, 1)
    first, second = feed.state.messages[1][0], feed.state.messages[2][0]
    assert first.route_bytes is second.route_bytes
    assert first.header is second.header


def test_settle_of_one_of_two_queues_keeps_the_message_for_the_other(feed: Feeder) -> None:
    """SETTLE removes one queue from a message; the message goes only when no queue holds it."""
    feed.message(1, 1, 2)
    feed.message(2, 1, 2)
    feed.settle(1, 1, 2)
    assert _held(feed.state) == {1: (2,), 2: (2,)}
    feed.settle(2, 2)
    assert _held(feed.state) == {1: (2,)}
    feed.settle(2, 1)
    assert feed.state.messages == {}


def test_settle_is_idempotent_and_ignores_unknown_ids(feed: Feeder) -> None:
    """Settling twice, settling for a queue that never held it, or settling a message whose
    record was collected with its segment changes nothing else."""
    feed.message(1, 1, 2)
    feed.settle(1, 1)
    feed.settle(1, 1)
    feed.settle(3, 1)
    feed.settle(1, 999)
    feed.settle(1)  # an empty SETTLE record
    assert _held(feed.state) == {1: (2,)}


def test_delivered_marks_message_and_queue_pair(feed: Feeder) -> None:
    """DELIVERED flags (message, queue) pairs: the message is redelivered in that queue only."""
    feed.message(1, 1, 2)
    feed.message(2, 1)
    feed.delivered(1, 1, 2)
    assert set(feed.state.delivered) == {(1, 1), (2, 1)}
    assert (1, 2) not in feed.state.delivered
    feed.delivered(2)  # empty record
    assert set(feed.state.delivered) == {(1, 1), (2, 1)}


def test_delivered_then_settled_is_gone_and_flag_stays_for_the_unsettled(feed: Feeder) -> None:
    """A delivered-then-acked message does not come back; a delivered, unacked one is still
    held and flagged."""
    feed.message(1, 1)
    feed.delivered(1, 1)
    feed.settle(1, 1)
    feed.message(2, 1)
    feed.delivered(1, 2)
    assert _held(feed.state) == {2: (1,)}
    assert (2, 1) in feed.state.delivered


def test_messages_keep_publish_order_by_id(feed: Feeder) -> None:
    """Recovered messages are indexed by id; ids grow with publishing, so sorting ids gives
    publish order whatever the segment layout."""
    for msg_id in (1, 2, 3, 4):
        feed.message(msg_id, 1)
    feed.settle(1, 2)
    assert sorted(feed.state.messages) == [1, 3, 4]
    offsets = [feed.state.messages[i][0].location[1] for i in sorted(feed.state.messages)]
    assert offsets == sorted(offsets)


def test_unknown_record_type_is_reported_and_skipped(
    feed: Feeder, caplog: pytest.LogCaptureFixture
) -> None:
    """A record type this version does not know is logged with its position, not fatal."""
    caplog.set_level(logging.WARNING, logger="warren.recovery")
    feed.queue("q", 1)
    feed.record(200, b"future")
    feed.message(1, 1)
    (warning,) = [r for r in caplog.records if r.getMessage() == "recovery.unknown_record"]
    assert warning.fields["record_type"] == 200  # type: ignore[attr-defined]
    assert list(feed.state.queues) == [1] and _held(feed.state) == {1: (1,)}


def test_deleting_many_bound_queues_replays_in_linear_time() -> None:
    """Found in review: each QUEUE_DELETE or EXCHANGE_DELETE record rebuilt the whole bindings
    table, so 10,000 durable queues declared, bound and deleted took many seconds to replay
    (quadratic). Bindings are indexed by their ends."""
    state = RecoveredState()
    feed = Feeder(state)
    feed.exchange("hub")
    for number in range(10_000):
        feed.queue(f"q{number}", number + 1)
        feed.bind("hub", f"q{number}", f"k{number}")
        feed.bind("amq.direct", f"q{number}", f"k{number}")
    payloads = [records.encode_table({"vhost": "/", "id": number + 1}) for number in range(10_000)]
    started = time.perf_counter()
    for payload in payloads:
        feed.record(records.QUEUE_DELETE, payload)
    assert time.perf_counter() - started < 1.0
    assert state.bindings == {} and state.queues == {}
    feed.bind("hub", "hub2", "x", to_exchange=True)
    feed.bind("hub2", "q", "y")
    feed.table(records.EXCHANGE_DELETE, vhost="/", name="hub2")
    assert state.bindings == {}
