"""Queue features in the model, with a clock the tests move: message TTL (at the head and away
from it, TTL 0, requeue keeps the deadline), queue expiry, length limits and their overflow
modes, dead-lettering with x-death, cycles, priorities."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core.dead_letter import DRAIN_BUDGET
from broker.core.errors import ChannelException
from broker.core.message import Message
from broker.core.properties import decode_properties
from broker.core.queue import TIMER_SLACK, Queue
from broker.core.vhost import VirtualHost
from tests.unit.helpers import FakeSink, ManualClock, add_consumer, make_message


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def vhost(clock: ManualClock) -> VirtualHost:
    return VirtualHost("/", clock=clock)


def _publish(vhost: VirtualHost, queue: str, body: bytes, **properties: Any) -> Any:
    return vhost.publish(vhost.exchanges[""], make_message(queue, body, **properties))


def _bodies(queue: Queue) -> list[bytes]:
    return [entry.message.body for entry in queue.ready_entries()]  # type: ignore[misc]


def _get_all(queue: Queue) -> list[Any]:
    out = []
    while (entry := queue.get(ack_required=False)) is not None:
        out.append(entry.message)
    return out


def _died(vhost: VirtualHost, reason: str) -> int:
    """Messages that died for `reason` in this vhost, dropped or dead-lettered."""
    return sum(n for (_, why, _), n in vhost.dead_letters.counts.items() if why == reason)


def _dlx_pair(vhost: VirtualHost, **arguments: Any) -> tuple[Queue, Queue]:
    dead = vhost.declare_queue("dead", None)
    source = vhost.declare_queue(
        "work",
        None,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead", **arguments},
    )
    return source, dead


# ------------------------------------------------------------------------------ message TTL


def test_queue_ttl_expires_at_the_deadline_with_one_timer(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-message-ttl": 1000})
    for index in range(100):
        _publish(vhost, "q", b"m%d" % index)
        clock.advance(0.001)
    assert len(clock.pending) == 1  # one timer per queue, never one per message
    clock.advance(0.95)
    # Deadlines 1 ms apart come due in batches: at most TIMER_SLACK late, never early.
    assert 50 <= queue.message_count <= 50 + TIMER_SLACK / 0.001
    clock.advance(0.1)
    assert queue.message_count == 0
    assert _died(vhost, "expired") == 100
    assert clock.pending == []


def test_per_message_expiration_away_from_the_head_is_expired_by_the_timer(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    """RabbitMQ leaves it until it reaches the head; Warren expires it where it is."""
    queue = vhost.declare_queue("q", None)
    _publish(vhost, "q", b"long", expiration="60000")
    _publish(vhost, "q", b"short", expiration="100")
    _publish(vhost, "q", b"none")
    clock.advance(0.2)
    assert _bodies(queue) == [b"long", b"none"]
    assert queue.message_count == 2


def test_effective_ttl_is_the_lower_of_queue_and_message(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-message-ttl": 500})
    _publish(vhost, "q", b"message-wins", expiration="100")
    _publish(vhost, "q", b"queue-wins", expiration="5000")
    clock.advance(0.2)
    assert _bodies(queue) == [b"queue-wins"]
    clock.advance(0.4)
    assert _bodies(queue) == []


def test_an_expired_head_is_never_handed_out_even_before_its_timer_runs(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    queue = vhost.declare_queue("q", None)
    _publish(vhost, "q", b"old", expiration="10")
    _publish(vhost, "q", b"fresh")
    clock.time += 1  # time passes, the timer has not fired yet
    assert [m.body for m in _get_all(queue)] == [b"fresh"]
    assert _died(vhost, "expired") == 1


def test_a_requeued_message_keeps_its_original_deadline(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-message-ttl": 1000})
    _publish(vhost, "q", b"m")
    clock.advance(0.6)
    entry = queue.get(ack_required=True)
    assert entry is not None
    clock.advance(0.3)
    queue.requeue([entry])
    assert _bodies(queue) == [b"m"]
    clock.advance(0.15)  # 1.05 s after the publish, 0.15 s after the requeue
    assert queue.message_count == 0


def test_ttl_zero_delivers_only_to_a_consumer_with_room_now(vhost: VirtualHost) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-message-ttl": 0})
    _publish(vhost, "q", b"nobody")
    assert queue.message_count == 0 and _died(vhost, "expired") == 1
    sink = FakeSink()
    add_consumer(queue, sink, "c", credit=1)
    _publish(vhost, "q", b"taken")
    _publish(vhost, "q", b"no-room")
    assert [body for _, body, _ in sink.delivered] == [b"taken"]
    assert queue.message_count == 0 and _died(vhost, "expired") == 2


def test_an_invalid_expiration_is_refused_at_publish() -> None:
    for text in ("abc", "-1", "1.5", "315360000001"):
        with pytest.raises(ChannelException) as info:
            make_message("q", b"", expiration=text)
        assert info.value.code == 406
        assert f"invalid expiration '{text}'" in info.value.reply_text


# ------------------------------------------------------------------------------ queue expiry


def test_an_unused_queue_expires_and_use_restarts_its_clock(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-expires": 1000})
    clock.advance(0.8)
    queue.get(ack_required=False)  # a Basic.Get is use
    clock.advance(0.8)
    vhost.declare_queue("q", None, arguments={"x-expires": 1000})  # so is a redeclare
    clock.advance(0.8)
    sink = FakeSink()
    consumer = add_consumer(queue, sink, "c")
    clock.advance(5)  # a consumer keeps it alive however long
    assert "q" in vhost.queues
    queue.remove_consumer(consumer)
    clock.advance(0.9)
    assert "q" in vhost.queues
    clock.advance(0.2)
    assert "q" not in vhost.queues and queue.deleted


def test_an_expired_queue_does_not_dead_letter_its_messages(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    _, dead = _dlx_pair(vhost, **{"x-expires": 100})
    _publish(vhost, "work", b"m")
    clock.advance(0.2)
    assert "work" not in vhost.queues
    assert dead.message_count == 0


# ------------------------------------------------------------------------------ length limits


def test_drop_head_drops_the_oldest_and_dead_letters_them_as_maxlen(vhost: VirtualHost) -> None:
    source, dead = _dlx_pair(vhost, **{"x-max-length": 2})
    for body in (b"a", b"b", b"c", b"d"):
        _publish(vhost, "work", body)
    assert _bodies(source) == [b"c", b"d"]
    assert _bodies(dead) == [b"a", b"b"]
    assert vhost.dead_letters.counts == {("classic", "maxlen", "at_least_once"): 2}
    assert vhost.dead_letters.confirmed == {"classic": 2}


def test_max_length_bytes_counts_bodies_and_a_huge_body_empties_the_queue(
    vhost: VirtualHost,
) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-max-length-bytes": 10})
    for body in (b"12345", b"123", b"12"):
        _publish(vhost, "q", body)
    assert _bodies(queue) == [b"12345", b"123", b"12"]
    _publish(vhost, "q", b"x")
    assert _bodies(queue) == [b"123", b"12", b"x"]
    _publish(vhost, "q", b"y" * 11)
    assert _bodies(queue) == []


def test_reject_publish_refuses_while_other_queues_keep_the_message(vhost: VirtualHost) -> None:
    vhost.declare_exchange("fan", "fanout")
    full = vhost.declare_queue(
        "full", None, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    other = vhost.declare_queue("other", None)
    vhost.bind("fan", "full", "", None)
    vhost.bind("fan", "other", "", None)
    first = vhost.publish(vhost.exchanges["fan"], make_message("", b"1"))
    second = vhost.publish(vhost.exchanges["fan"], make_message("", b"2"))
    assert (first[2], second[2]) == (False, True)  # refused
    assert second[0]  # routed
    assert (_bodies(full), _bodies(other)) == ([b"1"], [b"1", b"2"])


def test_reject_publish_dlx_dead_letters_the_refused_message(vhost: VirtualHost) -> None:
    source, dead = _dlx_pair(vhost, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    _publish(vhost, "work", b"kept")
    routed, _, refused = _publish(vhost, "work", b"refused")
    assert routed and refused
    assert (_bodies(source), _bodies(dead)) == ([b"kept"], [b"refused"])
    (death,) = dead.ready_entries()
    headers = decode_properties(death.message.header)["headers"]
    assert headers["x-death"][0]["reason"] == "maxlen"


def test_limits_count_ready_messages_and_a_requeue_over_the_limit_drops_the_head(
    vhost: VirtualHost,
) -> None:
    source, dead = _dlx_pair(vhost, **{"x-max-length": 2})
    for body in (b"a", b"b"):
        _publish(vhost, "work", body)
    taken = [source.get(ack_required=True), source.get(ack_required=True)]
    for body in (b"c", b"d"):
        _publish(vhost, "work", body)
    assert (_bodies(source), source.unacked_count) == ([b"c", b"d"], 2)
    source.requeue(taken)  # type: ignore[arg-type]
    assert _bodies(source) == [b"c", b"d"]
    assert _bodies(dead) == [b"a", b"b"]


# ------------------------------------------------------------------------------ dead letters


def test_x_death_records_each_queue_and_reason_newest_first_and_counts_repeats(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    """The retry loop: work rejects into retry, whose TTL sends it back to work."""
    vhost.declare_queue(
        "work", None, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "retry"}
    )
    vhost.declare_queue(
        "retry",
        None,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "work",
            "x-message-ttl": 100,
        },
    )
    work = vhost.queues["work"]
    _publish(vhost, "work", b"order", expiration="60000")
    for _ in range(3):
        entry = work.get(ack_required=True)
        assert entry is not None
        work.reject([entry])
        clock.advance(0.15)
    (entry,) = work.ready_entries()
    properties = decode_properties(entry.message.header)
    assert "expiration" not in properties
    headers = properties["headers"]
    deaths = [(d["queue"], d["reason"], d["count"]) for d in headers["x-death"]]
    assert deaths == [("retry", "expired", 3), ("work", "rejected", 3)]
    assert headers["x-death"][1]["original-expiration"] == "60000"
    assert (headers["x-first-death-queue"], headers["x-first-death-reason"]) == (
        "work",
        "rejected",
    )
    assert entry.redelivered is False


def test_an_expiry_cycle_without_a_rejection_is_dropped(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    queue = vhost.declare_queue(
        "loop",
        None,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "loop",
            "x-message-ttl": 10,
        },
    )
    _publish(vhost, "loop", b"m")
    clock.advance(1)
    assert queue.message_count == 0
    assert clock.pending == []


def test_a_missing_dead_letter_exchange_drops_the_message(vhost: VirtualHost) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-dead-letter-exchange": "nowhere"})
    _publish(vhost, "q", b"m")
    entry = queue.get(ack_required=True)
    queue.reject([entry])  # type: ignore[list-item]
    assert (queue.message_count, queue.unacked_count) == (0, 0)


def test_cc_routes_and_bcc_is_removed_but_routes_the_dead_letter_too(vhost: VirtualHost) -> None:
    for name in ("main", "cc", "bcc", "dead-main", "dead-cc", "dead-bcc"):
        vhost.declare_queue(name, None)
    vhost.declare_exchange("dlx", "direct")
    for key in ("main", "cc", "bcc"):
        vhost.bind("dlx", f"dead-{key}", key, None)
    vhost.declare_queue("src", None, arguments={"x-dead-letter-exchange": "dlx"})
    vhost.bind("amq.direct", "src", "main", None)
    vhost.bind("amq.direct", "cc", "cc", None)
    vhost.bind("amq.direct", "bcc", "bcc", None)
    message = make_message(
        "main", b"m", exchange="amq.direct", headers={"CC": ["cc"], "BCC": ["bcc"]}
    )
    vhost.publish(vhost.exchanges["amq.direct"], message)
    assert [q.message_count for q in (vhost.queues["cc"], vhost.queues["bcc"])] == [1, 1]
    (stored,) = vhost.queues["src"].ready_entries()
    assert decode_properties(stored.message.header)["headers"] == {"CC": ["cc"]}
    entry = vhost.queues["src"].get(ack_required=True)
    vhost.queues["src"].reject([entry])  # type: ignore[list-item]
    counts = [vhost.queues[f"dead-{key}"].message_count for key in ("main", "cc", "bcc")]
    assert counts == [1, 1, 1]


# ------------------------------------------------------------------------------ priorities


def test_priority_queue_order_and_requeue_within_the_level(vhost: VirtualHost) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-max-priority": 5})
    for body, priority in ((b"low", None), (b"top-1", 9), (b"mid", 3), (b"top-2", 5)):
        props = {} if priority is None else {"priority": priority}
        _publish(vhost, "q", body, **props)
    first = queue.get(ack_required=True)
    assert first is not None and first.message.body == b"top-1"
    queue.requeue([first])
    assert [m.body for m in _get_all(queue)] == [b"top-1", b"top-2", b"mid", b"low"]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"x-message-ttl": -1}, "{value_negative,-1}"),
        ({"x-message-ttl": 315360000001}, "{value_too_large,315360000001}"),
        ({"x-expires": 0}, "{value_zero,0}"),
        ({"x-max-priority": 256}, "{max_value_exceeded,256}"),
        ({"x-overflow": "bogus"}, "invalid_overflow"),
        ({"x-dead-letter-routing-key": "k"}, "routing_key_but_no_dlx_defined"),
    ],
)
def test_bad_arguments_get_rabbitmq_reasons(
    vhost: VirtualHost, arguments: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ChannelException) as info:
        vhost.declare_queue("q", None, arguments=arguments)
    key = next(iter(arguments))
    assert info.value.reply_text.endswith(
        f"invalid arg '{key}' for queue 'q' in vhost '/': {reason}"
    )
    assert "q" not in vhost.queues


@pytest.mark.pure_python
def test_cc_keys_route_a_key_blind_exchange_once_and_repeated_keys_once(
    vhost: VirtualHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of CC keys on a headers (or fanout) exchange: routing ignores the key there, so
    the exchange routes once, not once per key (each call decodes the whole header: quadratic);
    a direct exchange looks each distinct key up once."""
    calls = {"headers": 0, "direct": 0}
    for kind in calls:
        cls = type(vhost.exchanges[f"amq.{kind}"])
        original = cls.route

        def counting(self: Any, message: Any, key: str, kind: str = kind, original=original) -> Any:
            calls[kind] += 1
            return original(self, message, key)

        monkeypatch.setattr(cls, "route", counting)
    vhost.declare_queue("q", None)
    vhost.bind("amq.headers", "q", "", {"x-match": "any", "a": 1})
    vhost.bind("amq.direct", "q", "k7", None)
    keys = [f"k{n % 1000}" for n in range(4000)]
    for kind in calls:
        message = make_message("k0", b"", exchange=f"amq.{kind}", headers={"a": 1, "CC": keys})
        vhost.publish(vhost.exchanges[f"amq.{kind}"], message)
    assert calls == {"headers": 1, "direct": 1000}
    assert vhost.queues["q"].message_count == 2


def test_a_long_chain_of_ttl_zero_queues_neither_recurses_nor_loses_the_message(
    vhost: VirtualHost,
) -> None:
    """400 queues that each expire at once into the next: dead letters are queued, not
    recursed into (RecursionError lost the message and closed the publisher's connection)."""
    hops = 400
    for n in range(hops):
        arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"q{n + 1}"}
        vhost.declare_queue(f"q{n}", None, arguments={"x-message-ttl": 0, **arguments})
    last = vhost.declare_queue(f"q{hops}", None)
    _publish(vhost, "q0", b"m")
    (entry,) = last.ready_entries()
    deaths = decode_properties(entry.message.header)["headers"]["x-death"]
    assert len(deaths) == hops and deaths[0]["queue"] == f"q{hops - 1}"


def test_dead_letter_fan_out_is_worked_through_a_budget_per_turn(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    """Layers of TTL-0 queues fanning out double the copies per layer (RabbitMQ does the
    same): at most DRAIN_BUDGET are handled per turn of the loop, the rest on later turns."""
    layers = 11
    for layer in range(layers):
        vhost.declare_exchange(f"fan{layer}", "fanout")
        for side in "ab":
            name = f"l{layer}{side}"
            vhost.declare_queue(
                name,
                None,
                arguments={"x-message-ttl": 0, "x-dead-letter-exchange": f"fan{layer + 1}"},
            )
            if layer:
                vhost.bind(f"fan{layer}", name, "", None)
    vhost.declare_exchange(f"fan{layers}", "fanout")
    sink = vhost.declare_queue("sink", None)
    vhost.bind(f"fan{layers}", "sink", "", None)
    _publish(vhost, "l0a", b"m")
    assert sink.message_count < 2**layers
    assert sink.message_count <= DRAIN_BUDGET
    clock.advance(0)
    assert sink.message_count == 2 ** (layers - 1)


def test_a_header_with_flag_continuation_words_is_dead_lettered(vhost: VirtualHost) -> None:
    """Property flags with the continuation bit set (allowed, as RabbitMQ parses them): the
    copy's header is rebuilt with one flag word, its properties intact."""
    source, dead = _dlx_pair(vhost)
    plain = make_message("work", b"m", content_type="text/plain").header
    continued = plain[:13] + bytes((plain[13] | 1,)) + b"\x00\x00" + plain[14:]
    message = Message("", "work", b"\x00\x04work", continued, b"m")
    vhost.publish(vhost.exchanges[""], message)
    entry = source.get(ack_required=True)
    source.reject([entry])  # type: ignore[list-item]
    (copy,) = dead.ready_entries()
    properties = decode_properties(copy.message.header)
    assert properties["content_type"] == "text/plain"
    assert properties["headers"]["x-death"][0]["reason"] == "rejected"


def test_a_ttl_zero_message_delivered_then_requeued_expires(
    vhost: VirtualHost, clock: ManualClock
) -> None:
    queue = vhost.declare_queue("q", None, arguments={"x-message-ttl": 0})
    sink = FakeSink()
    consumer = add_consumer(queue, sink, "c", credit=1)
    _publish(vhost, "q", b"m")
    (entry,) = sink.entries
    queue.remove_consumer(consumer)
    queue.requeue([entry])
    clock.advance(0.01)
    assert queue.message_count == 0 and _died(vhost, "expired") == 1


# ------------------------------------------------------------------------------ delivery limit


def test_delivery_limit_counts_returns_and_dead_letters_past_it(vhost: VirtualHost) -> None:
    """x-delivery-limit 2 on a classic queue (Warren gives every queue type one): each return
    counts, the delivery carries x-delivery-count from the first return on, and the third
    return dead-letters the message with reason delivery_limit."""
    source, dead = _dlx_pair(vhost, **{"x-delivery-limit": 2})
    _publish(vhost, "work", b"poison", headers={"app": "x"})
    counts = []
    for _ in range(3):
        entry = source.get(ack_required=True)
        assert entry is not None
        headers = decode_properties(source.delivery_header(entry)).get("headers", {})
        counts.append(headers.get("x-delivery-count"))
        source.requeue([entry])
    assert counts == [None, 1, 2]
    assert (source.message_count, source.unacked_count) == (0, 0)
    (copy,) = dead.ready_entries()
    headers = decode_properties(copy.message.header)["headers"]
    assert headers["x-death"][0]["reason"] == "delivery_limit"
    assert headers["app"] == "x"


def test_queues_without_a_limit_or_quorum_type_do_not_count(vhost: VirtualHost) -> None:
    queue = vhost.declare_queue("plain", None)
    _publish(vhost, "plain", b"m")
    entry = queue.get(ack_required=True)
    queue.requeue([entry])  # type: ignore[list-item]
    again = queue.get(ack_required=True)
    assert again is not None and again.returns == 0
    assert queue.delivery_header(again) == again.message.header
