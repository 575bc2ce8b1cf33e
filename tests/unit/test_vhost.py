"""VirtualHost rules with RabbitMQ's reply codes and texts: reserved names, the default exchange,
passive declares, equivalence, exclusive ownership, queue types, deletes, auto-delete cascades,
exchange-to-exchange routing and alternate exchanges."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

import pytest

from broker.core.errors import ChannelException
from broker.core.queue import Queue
from broker.core.vhost import VirtualHost
from tests.unit.helpers import FakeSink, add_consumer, make_message

OWNER = object()
OTHER = object()


@pytest.fixture
def vhost() -> VirtualHost:
    return VirtualHost("/")


def _fails(code: int, call: Callable[[], Any]) -> str:
    """Run call, expect a ChannelException with code; return its reply text."""
    with pytest.raises(ChannelException) as info:
        call()
    assert info.value.code == code, info.value.reply_text
    assert info.value.closes_connection is False
    return info.value.reply_text


def _routed(vhost: VirtualHost, exchange: str, key: str = "", **kwargs: Any) -> list[str]:
    queues: Collection[Queue] = vhost.route(
        vhost.get_exchange(exchange), make_message(key, **kwargs)
    )
    return sorted(queue.name for queue in queues)


# ------------------------------------------------------------------------------------ names


def test_builtin_exchanges_exist(vhost: VirtualHost) -> None:
    """Every vhost starts with the default exchange and the amq.* set, all durable; the
    tracer's amq.rabbitmq.trace is internal, as in RabbitMQ."""
    kinds = {name: x.type_name for name, x in vhost.exchanges.items()}
    assert kinds == {
        "": "direct",
        "amq.direct": "direct",
        "amq.fanout": "fanout",
        "amq.topic": "topic",
        "amq.headers": "headers",
        "amq.match": "headers",
        "amq.rabbitmq.trace": "topic",
    }
    assert all(x.durable for x in vhost.exchanges.values())
    assert [name for name, x in vhost.exchanges.items() if x.internal] == ["amq.rabbitmq.trace"]


def test_reserved_prefix_exchange(vhost: VirtualHost) -> None:
    """Declaring a new amq.* exchange is refused with 403."""
    text = _fails(403, lambda: vhost.declare_exchange("amq.custom", "direct"))
    assert text == "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'"
    assert "amq.custom" not in vhost.exchanges


def test_reserved_prefix_queue(vhost: VirtualHost) -> None:
    """Declaring an amq.* queue by name is refused with 403."""
    text = _fails(403, lambda: vhost.declare_queue("amq.q", OWNER))
    assert text == "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'"
    assert vhost.queues == {}


def test_redeclare_builtin_exchange(vhost: VirtualHost) -> None:
    """Redeclaring amq.direct with its own properties is allowed and returns the same one."""
    builtin = vhost.exchanges["amq.direct"]
    assert vhost.declare_exchange("amq.direct", "direct", durable=True) is builtin
    assert vhost.declare_exchange("amq.direct", "direct", passive=True) is builtin


def test_redeclare_builtin_exchange_inequivalent(vhost: VirtualHost) -> None:
    """Redeclaring amq.direct with different properties is a 406, not a 403."""
    text = _fails(406, lambda: vhost.declare_exchange("amq.direct", "direct", durable=False))
    assert text == (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' in vhost"
        " '/': received 'false' but current is 'true'"
    )


@pytest.mark.parametrize("name", ["amq.direct", "amq.fanout", "amq.topic", "amq.match"])
def test_delete_builtin_exchange_refused(vhost: VirtualHost, name: str) -> None:
    """The amq.* exchanges cannot be deleted: 403, and they stay."""
    text = _fails(403, lambda: vhost.delete_exchange(name))
    assert text == f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed"
    assert name in vhost.exchanges


def test_delete_missing_amq_exchange_refused(vhost: VirtualHost) -> None:
    """Deleting a non-existent amq.* exchange is a 403 in RabbitMQ too."""
    _fails(403, lambda: vhost.delete_exchange("amq.nonexistent"))


@pytest.mark.parametrize(
    "operation",
    [
        lambda v: v.declare_exchange("", "direct"),
        lambda v: v.declare_exchange("", "direct", passive=True),
        lambda v: v.delete_exchange(""),
        lambda v: v.bind("", "q", "q", None),
        lambda v: v.unbind("", "q", "q", None),
        lambda v: v.bind("amq.direct", "", "k", None, to_exchange=True),
        lambda v: v.bind("", "amq.direct", "k", None, to_exchange=True),
        lambda v: v.unbind("amq.direct", "", "k", None, to_exchange=True),
    ],
    ids=[
        "declare",
        "declare-passive",
        "delete",
        "bind-queue",
        "unbind-queue",
        "bind-to-default",
        "bind-from-default",
        "unbind-to-default",
    ],
)
def test_default_exchange_operations_refused(
    vhost: VirtualHost, operation: Callable[[VirtualHost], Any]
) -> None:
    """Every declare/delete/bind/unbind touching the default exchange is a 403."""
    vhost.declare_queue("q", None)
    text = _fails(403, lambda: operation(vhost))
    assert text == "ACCESS_REFUSED - operation not permitted on the default exchange"
    assert "" in vhost.exchanges


def test_default_exchange_routes_by_queue_name(vhost: VirtualHost) -> None:
    """The default exchange delivers to the queue named by the routing key, if any."""
    vhost.declare_queue("q", None)
    assert _routed(vhost, "", "q") == ["q"]
    assert _routed(vhost, "", "missing") == []


# ------------------------------------------------------------------------------------ passive


def test_passive_declares_missing_are_404(vhost: VirtualHost) -> None:
    """Passive declares of missing exchanges and queues answer 404 with RabbitMQ's text."""
    text = _fails(404, lambda: vhost.declare_exchange("nope", "direct", passive=True))
    assert text == "NOT_FOUND - no exchange 'nope' in vhost '/'"
    text = _fails(404, lambda: vhost.declare_queue("nope", OWNER, passive=True))
    assert text == "NOT_FOUND - no queue 'nope' in vhost '/'"
    _fails(404, lambda: vhost.declare_queue("", OWNER, passive=True))
    assert "nope" not in vhost.exchanges
    assert vhost.queues == {}


def test_passive_declares_ignore_properties(vhost: VirtualHost) -> None:
    """A passive declare of an existing entity returns it whatever the other flags say."""
    exchange = vhost.declare_exchange("x", "topic", durable=True)
    queue = vhost.declare_queue("q", OWNER, durable=True)
    assert vhost.declare_exchange("x", "fanout", passive=True) is exchange
    assert vhost.declare_queue("q", OWNER, passive=True, durable=False) is queue


# ------------------------------------------------------------------------------------ equivalence


def test_queue_equivalence_exact_text(vhost: VirtualHost) -> None:
    """Redeclaring with another durable flag is 406 with RabbitMQ's exact wording."""
    vhost.declare_queue("q", None, durable=False)
    text = _fails(406, lambda: vhost.declare_queue("q", None, durable=True))
    assert text == (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/':"
        " received 'true' but current is 'false'"
    )


def test_queue_equivalence_auto_delete(vhost: VirtualHost) -> None:
    """auto_delete is compared on redeclare."""
    vhost.declare_queue("q", None, auto_delete=True)
    text = _fails(406, lambda: vhost.declare_queue("q", None, auto_delete=False))
    assert text.endswith(
        "inequivalent arg 'auto_delete' for queue 'q' in vhost '/':"
        " received 'false' but current is 'true'"
    )


def test_queue_equivalence_argument_values(vhost: VirtualHost) -> None:
    """Two set values that differ are printed untyped."""
    vhost.declare_queue("q", None, arguments={"x-message-ttl": 1000})
    text = _fails(406, lambda: vhost.declare_queue("q", None, arguments={"x-message-ttl": 2000}))
    assert text == (
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/':"
        " received '2000' but current is '1000'"
    )


def test_queue_equivalence_typed_when_current_missing(vhost: VirtualHost) -> None:
    """When the existing queue lacks the argument, the received value is shown with its type."""
    vhost.declare_queue("q", None)
    text = _fails(406, lambda: vhost.declare_queue("q", None, arguments={"x-max-length": 10}))
    assert text == (
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/':"
        " received the value '10' of type 'signedint' but current is none"
    )


def test_queue_equivalence_typed_when_received_missing(vhost: VirtualHost) -> None:
    """When the redeclare lacks the argument, the current value is shown with its type."""
    vhost.declare_queue("q", None, arguments={"x-dead-letter-exchange": "dlx"})
    text = _fails(406, lambda: vhost.declare_queue("q", None))
    assert text == (
        "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'q' in vhost"
        " '/': received none but current is the value 'dlx' of type 'longstr'"
    )


def test_queue_equivalence_ignores_other_arguments(vhost: VirtualHost) -> None:
    """Arguments RabbitMQ does not compare (e.g. x-custom) do not block a redeclare."""
    queue = vhost.declare_queue("q", None, arguments={"x-custom": 1, "x-max-length": 5})
    again = vhost.declare_queue("q", None, arguments={"x-custom": 2, "x-max-length": 5})
    assert again is queue


def test_exchange_equivalence(vhost: VirtualHost) -> None:
    """Type, durable, auto_delete, internal and alternate-exchange are compared."""
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    assert vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    text = _fails(406, lambda: vhost.declare_exchange("x", "fanout"))
    assert text.endswith(
        "inequivalent arg 'type' for exchange 'x' in vhost '/':"
        " received 'fanout' but current is 'direct'"
    )
    text = _fails(406, lambda: vhost.declare_exchange("x", "direct", internal=True))
    assert "inequivalent arg 'internal'" in text
    text = _fails(406, lambda: vhost.declare_exchange("x", "direct", auto_delete=True))
    assert "inequivalent arg 'auto_delete'" in text
    text = _fails(406, lambda: vhost.declare_exchange("x", "direct"))
    assert text.endswith(
        "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/':"
        " received none but current is the value 'ae' of type 'longstr'"
    )


def test_exchange_invalid_type_and_alternate(vhost: VirtualHost) -> None:
    """An unknown exchange type or a non-string alternate-exchange is refused with 406."""
    text = _fails(406, lambda: vhost.declare_exchange("x", "nonsense"))
    assert "invalid exchange type 'nonsense'" in text
    _fails(406, lambda: vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": 5}))
    assert "x" not in vhost.exchanges


# ------------------------------------------------------------------------------------ exclusive


def test_exclusive_queue_locked_to_owner(vhost: VirtualHost) -> None:
    """Another connection gets 405 for every use of an exclusive queue; the owner does not."""
    queue = vhost.declare_queue("q", OWNER, exclusive=True)
    assert queue.exclusive_owner is OWNER
    assert vhost.declare_queue("q", OWNER, exclusive=True) is queue
    assert vhost.get_queue("q", OWNER) is queue
    text = _fails(405, lambda: vhost.declare_queue("q", OTHER, exclusive=True))
    assert text.startswith(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q' in vhost '/'."
    )
    for operation in (
        lambda: vhost.declare_queue("q", OTHER, passive=True),
        lambda: vhost.get_queue("q", OTHER),
        lambda: vhost.purge_queue("q", OTHER),
        lambda: vhost.delete_queue("q", OTHER),
        lambda: vhost.bind("amq.direct", "q", "k", None, owner=OTHER),
    ):
        _fails(405, operation)
    assert vhost.queues["q"] is queue
    assert vhost.exchanges["amq.direct"].bindings == {}


def test_exclusive_flag_mismatch_is_405(vhost: VirtualHost) -> None:
    """Redeclaring with the other exclusive flag is 405, even by the owner."""
    vhost.declare_queue("ex", OWNER, exclusive=True)
    _fails(405, lambda: vhost.declare_queue("ex", OWNER, exclusive=False))
    vhost.declare_queue("shared", OWNER, exclusive=False)
    _fails(405, lambda: vhost.declare_queue("shared", OWNER, exclusive=True))
    assert vhost.queues["shared"].exclusive is False


def test_exclusive_unbind_by_other_refused(vhost: VirtualHost) -> None:
    """Another connection cannot unbind an exclusive queue's binding."""
    vhost.declare_queue("q", OWNER, exclusive=True)
    vhost.bind("amq.direct", "q", "k", None, owner=OWNER)
    _fails(405, lambda: vhost.unbind("amq.direct", "q", "k", None, owner=OTHER))
    assert _routed(vhost, "amq.direct", "k") == ["q"]


# ------------------------------------------------------------------------------------ queue types


@pytest.mark.parametrize(
    ("flags", "prop"),
    [
        ({"durable": False}, "non-durable"),
        ({"durable": True, "exclusive": True}, "exclusive-owner"),
        ({"durable": True, "auto_delete": True}, "auto-delete"),
        ({"durable": False, "exclusive": True, "auto_delete": True}, "auto-delete"),
        ({"durable": False, "exclusive": True}, "exclusive-owner"),
    ],
)
def test_quorum_property_checks(vhost: VirtualHost, flags: dict[str, bool], prop: str) -> None:
    """Quorum queues must be durable, non-exclusive, non-auto-delete; first failure reported."""
    text = _fails(
        406,
        lambda: vhost.declare_queue("q", OWNER, arguments={"x-queue-type": "quorum"}, **flags),
    )
    assert text == f"PRECONDITION_FAILED - invalid property '{prop}' for queue 'q' in vhost '/'"
    assert vhost.queues == {}


def test_quorum_durable_accepted(vhost: VirtualHost) -> None:
    """A durable quorum queue is created with its type recorded."""
    queue = vhost.declare_queue("q", None, durable=True, arguments={"x-queue-type": "quorum"})
    assert queue.queue_type == "quorum"
    text = _fails(406, lambda: vhost.declare_queue("q", None, durable=True))
    assert "inequivalent arg 'x-queue-type'" in text


def test_stream_queue_refused(vhost: VirtualHost) -> None:
    """Stream queues are refused with 406 and a hint."""
    text = _fails(
        406,
        lambda: vhost.declare_queue("s", None, durable=True, arguments={"x-queue-type": "stream"}),
    )
    assert text.startswith("PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 's'")
    assert "stream" in text
    assert vhost.queues == {}


def test_unknown_queue_type_refused(vhost: VirtualHost) -> None:
    """An unknown or non-string x-queue-type is refused with 406."""
    text = _fails(406, lambda: vhost.declare_queue("q", None, arguments={"x-queue-type": "lazy"}))
    assert text.endswith("\"unsupported queue type 'lazy'\"")
    text = _fails(406, lambda: vhost.declare_queue("q", None, arguments={"x-queue-type": 5}))
    assert text.endswith("{unacceptable_type,signedint}")
    assert vhost.queues == {}


# ------------------------------------------------------------------------------------ names


def test_server_generated_queue_names(vhost: VirtualHost) -> None:
    """An empty name gets 'amq.gen-' + 22 url-safe characters, distinct each time."""
    first = vhost.declare_queue("", OWNER, exclusive=True)
    second = vhost.declare_queue("", OWNER, exclusive=True)
    for queue in (first, second):
        assert re.fullmatch(r"amq\.gen-[A-Za-z0-9_-]{22}", queue.name)
        assert vhost.queues[queue.name] is queue
    assert first.name != second.name


# ------------------------------------------------------------------------------------ deletes


def test_delete_queue_if_unused_and_if_empty(vhost: VirtualHost) -> None:
    """if_unused refuses with consumers, if_empty with ready messages; both 406."""
    queue = vhost.declare_queue("q", None)
    sink = FakeSink()
    consumer = add_consumer(queue, sink, "c1")
    text = _fails(406, lambda: vhost.delete_queue("q", None, if_unused=True))
    assert text == "PRECONDITION_FAILED - queue 'q' in vhost '/' in use"
    queue.remove_consumer(consumer)
    queue.publish(make_message("q", b"m1"))
    queue.publish(make_message("q", b"m2"))
    text = _fails(406, lambda: vhost.delete_queue("q", None, if_empty=True))
    assert text == "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty"
    assert "q" in vhost.queues
    assert vhost.delete_queue("q", None, if_unused=True) == 2
    assert "q" not in vhost.queues
    assert queue.deleted is True


def test_delete_missing_queue_and_exchange_ok(vhost: VirtualHost) -> None:
    """Deleting what does not exist is not an error (RabbitMQ answers delete-ok)."""
    assert vhost.delete_queue("nope", None) == 0
    vhost.delete_exchange("nope")
    vhost.unbind("amq.direct", "nope", "k", None)
    vhost.unbind("nope", "nope", "k", None)


def test_delete_exchange_if_unused(vhost: VirtualHost) -> None:
    """if_unused refuses an exchange with bindings; a plain delete removes them."""
    vhost.declare_exchange("x", "direct")
    queue = vhost.declare_queue("q", None)
    vhost.bind("x", "q", "k", None)
    text = _fails(406, lambda: vhost.delete_exchange("x", if_unused=True))
    assert text == "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use"
    vhost.delete_exchange("x")
    assert "x" not in vhost.exchanges
    assert queue.incoming == {}


def test_remove_queue_drops_bindings_and_cancels_consumers(vhost: VirtualHost) -> None:
    """Removing a queue unbinds it everywhere, marks it deleted, and cancels its consumers."""
    queue = vhost.declare_queue("q", None)
    vhost.declare_queue("keep", None)
    vhost.bind("amq.direct", "q", "k", None)
    vhost.bind("amq.topic", "q", "#", None)
    vhost.bind("amq.direct", "keep", "k", None)
    sink = FakeSink()
    add_consumer(queue, sink, "c1")
    add_consumer(queue, sink, "c2")
    queue.publish(make_message("q", b"m"))  # no credit: stays ready
    assert vhost.remove_queue(queue) == 1
    assert queue.deleted and "q" not in vhost.queues
    assert sink.cancelled == ["c1", "c2"]
    assert queue.consumers == []
    assert queue.incoming == {}
    assert vhost.exchanges["amq.topic"].bindings == {}
    assert _routed(vhost, "amq.direct", "k") == ["keep"]
    assert _routed(vhost, "amq.topic", "a") == []
    assert _routed(vhost, "", "q") == []
    assert vhost.remove_queue(queue) == 0
    assert sink.cancelled == ["c1", "c2"]


def test_maybe_auto_delete(vhost: VirtualHost) -> None:
    """An auto-delete queue is removed once its last consumer is gone, not before."""
    queue = vhost.declare_queue("q", None, auto_delete=True)
    vhost.maybe_auto_delete(queue)
    assert "q" in vhost.queues
    sink = FakeSink()
    consumer = add_consumer(queue, sink, "c1")
    vhost.maybe_auto_delete(queue)
    assert "q" in vhost.queues
    queue.remove_consumer(consumer)
    vhost.maybe_auto_delete(queue)
    assert "q" not in vhost.queues


# ------------------------------------------------------------------------------------ bindings


def test_bind_unbind_idempotent(vhost: VirtualHost) -> None:
    """Binding twice is one binding; one unbind removes it; unbinding again is fine."""
    vhost.declare_exchange("x", "direct")
    queue = vhost.declare_queue("q", None)
    vhost.bind("x", "q", "k", {"a": 1, "b": 2})
    vhost.bind("x", "q", "k", {"b": 2, "a": 1})
    assert len(vhost.exchanges["x"].bindings) == 1
    assert len(queue.incoming) == 1
    vhost.unbind("x", "q", "k", {"b": 2, "a": 1})
    assert _routed(vhost, "x", "k") == []
    assert queue.incoming == {}
    vhost.unbind("x", "q", "k", {"a": 1, "b": 2})


def test_bind_missing_ends_404(vhost: VirtualHost) -> None:
    """Binding to or from something missing is 404."""
    vhost.declare_queue("q", None)
    assert "no queue 'nope'" in _fails(404, lambda: vhost.bind("amq.direct", "nope", "k", None))
    assert "no exchange 'nope'" in _fails(404, lambda: vhost.bind("nope", "q", "k", None))
    _fails(404, lambda: vhost.bind("amq.direct", "nope", "k", None, to_exchange=True))


def test_headers_bind_bad_x_match(vhost: VirtualHost) -> None:
    """A headers binding with an unknown x-match is refused with 406 and not added."""
    vhost.declare_queue("q", None)
    text = _fails(406, lambda: vhost.bind("amq.headers", "q", "", {"x-match": "some"}))
    assert text.startswith("PRECONDITION_FAILED - Invalid x-match field value")
    assert "some" in text
    assert vhost.exchanges["amq.headers"].bindings == {}
    vhost.bind("amq.headers", "q", "", {"x-match": "any-with-x", "x-a": 1})
    assert _routed(vhost, "amq.headers", headers={"x-a": 1}) == ["q"]


# ------------------------------------------------------------------------------------ auto-delete


def test_auto_delete_exchange_goes_with_last_binding(vhost: VirtualHost) -> None:
    """An auto-delete exchange survives until its last outgoing binding is removed."""
    vhost.declare_exchange("ad", "direct", auto_delete=True)
    vhost.declare_queue("q1", None)
    vhost.declare_queue("q2", None)
    assert "ad" in vhost.exchanges  # never bound: stays
    vhost.bind("ad", "q1", "k", None)
    vhost.bind("ad", "q2", "k", None)
    vhost.unbind("ad", "q1", "k", None)
    assert "ad" in vhost.exchanges
    vhost.unbind("ad", "q2", "k", None)
    assert "ad" not in vhost.exchanges


def test_auto_delete_exchange_goes_when_queue_deleted(vhost: VirtualHost) -> None:
    """Deleting the only bound queue removes the auto-delete exchange too."""
    vhost.declare_exchange("ad", "fanout", auto_delete=True)
    vhost.declare_queue("q", None)
    vhost.bind("ad", "q", "", None)
    vhost.delete_queue("q", None)
    assert "ad" not in vhost.exchanges


def test_auto_delete_cascades_through_exchange_bindings(vhost: VirtualHost) -> None:
    """src(auto-delete) -> mid(auto-delete) -> q: deleting q removes mid, then src."""
    vhost.declare_exchange("src", "fanout", auto_delete=True)
    vhost.declare_exchange("mid", "fanout", auto_delete=True)
    vhost.declare_queue("q", None)
    vhost.bind("src", "mid", "", None, to_exchange=True)
    vhost.bind("mid", "q", "", None)
    assert _routed(vhost, "src") == ["q"]
    vhost.delete_queue("q", None)
    assert "mid" not in vhost.exchanges
    assert "src" not in vhost.exchanges


def test_deleting_destination_exchange_unbinds_source(vhost: VirtualHost) -> None:
    """Deleting an exchange removes bindings that lead to it."""
    vhost.declare_exchange("src", "fanout")
    vhost.declare_exchange("dst", "fanout")
    vhost.declare_queue("q", None)
    vhost.bind("src", "dst", "", None, to_exchange=True)
    vhost.bind("dst", "q", "", None)
    vhost.delete_exchange("dst")
    source = vhost.exchanges["src"]
    assert source.bindings == {}
    assert source.exchange_destinations == 0
    assert _routed(vhost, "src") == []


# ------------------------------------------------------------------------------------ routing


def test_exchange_to_exchange_cycle_delivers_each_queue_once(vhost: VirtualHost) -> None:
    """x1 -> x2 -> x3 -> x1 with queues on several of them: every queue gets one copy."""
    for name in ("x1", "x2", "x3"):
        vhost.declare_exchange(name, "topic")
    for name in ("qa", "qb", "qc"):
        vhost.declare_queue(name, None)
    vhost.bind("x1", "x2", "#", None, to_exchange=True)
    vhost.bind("x2", "x3", "a.*", None, to_exchange=True)
    vhost.bind("x3", "x1", "#", None, to_exchange=True)
    vhost.bind("x1", "qa", "a.b", None)
    vhost.bind("x2", "qb", "#", None)
    vhost.bind("x3", "qb", "#", None)
    vhost.bind("x3", "qc", "*.b", None)
    vhost.bind("x3", "qa", "#", None)
    for start in ("x1", "x2", "x3"):
        queues = vhost.route(vhost.exchanges[start], make_message("a.b"))
        names = [queue.name for queue in queues]
        assert sorted(names) == ["qa", "qb", "qc"], start
    assert _routed(vhost, "x1", "z") == ["qb"]  # x2 -> x3 needs a.*


def test_exchange_to_exchange_self_loop(vhost: VirtualHost) -> None:
    """An exchange bound to itself does not loop."""
    vhost.declare_exchange("x", "fanout")
    vhost.declare_queue("q", None)
    vhost.bind("x", "x", "", None, to_exchange=True)
    vhost.bind("x", "q", "", None)
    assert _routed(vhost, "x") == ["q"]


def test_alternate_exchange_used_when_nothing_routes(vhost: VirtualHost) -> None:
    """Unroutable messages go to the alternate exchange; routable ones do not."""
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    vhost.declare_queue("main", None)
    vhost.declare_queue("unrouted", None)
    vhost.bind("x", "main", "k", None)
    vhost.bind("ae", "unrouted", "", None)
    assert _routed(vhost, "x", "k") == ["main"]
    assert _routed(vhost, "x", "other") == ["unrouted"]


def test_alternate_exchange_chain_and_cycle(vhost: VirtualHost) -> None:
    """Alternate exchanges chain; a cycle of alternates ends with no queues, not a hang."""
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae1"})
    vhost.declare_exchange("ae1", "direct", arguments={"alternate-exchange": "ae2"})
    vhost.declare_exchange("ae2", "fanout")
    vhost.declare_queue("last", None)
    vhost.bind("ae2", "last", "", None)
    assert _routed(vhost, "x", "k") == ["last"]
    vhost.declare_exchange("c1", "direct", arguments={"alternate-exchange": "c2"})
    vhost.declare_exchange("c2", "direct", arguments={"alternate-exchange": "c1"})
    assert _routed(vhost, "c1", "k") == []


def test_missing_alternate_exchange_routes_nowhere(vhost: VirtualHost) -> None:
    """An alternate-exchange that does not exist is ignored."""
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "missing"})
    assert _routed(vhost, "x", "k") == []


def test_alternate_exchange_of_bound_exchange(vhost: VirtualHost) -> None:
    """Within an exchange-to-exchange graph, an exchange that routes nowhere uses its AE."""
    vhost.declare_exchange("src", "fanout")
    vhost.declare_exchange("dst", "direct", arguments={"alternate-exchange": "ae"})
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_queue("direct", None)
    vhost.declare_queue("fallback", None)
    vhost.bind("src", "dst", "", None, to_exchange=True)
    vhost.bind("dst", "direct", "k", None)
    vhost.bind("ae", "fallback", "", None)
    assert _routed(vhost, "src", "k") == ["direct"]
    assert _routed(vhost, "src", "other") == ["fallback"]


def test_a_failing_cancel_notification_does_not_half_delete_a_queue(
    vhost: VirtualHost, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting a queue notifies its consumers' channels last, each on its own: one channel
    raising (a bug, or a client's odd state) is logged, and the delete is still complete for
    the client that asked and for the other consumers."""

    class BrokenSink(FakeSink):
        def consumer_cancelled(self, consumer: Any) -> None:
            raise AttributeError("'str' object has no attribute 'get'")

    queue = vhost.declare_queue("doomed", None)
    vhost.bind("amq.direct", "doomed", "k", {})
    vhost.publish(vhost.exchanges["amq.direct"], make_message("k", b"m"))
    healthy = FakeSink()
    add_consumer(queue, BrokenSink(), "broken")
    add_consumer(queue, healthy, "healthy")
    assert vhost.delete_queue("doomed", None) == 1
    assert "doomed" not in vhost.queues and queue.deleted
    assert not queue.consumers and not vhost.exchanges["amq.direct"].bindings
    assert healthy.cancelled == ["healthy"]
    assert "queue.cancel_notify_failed" in caplog.text
