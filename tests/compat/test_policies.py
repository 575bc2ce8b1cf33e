"""Policies (`rabbitmqctl set_policy`, PUT /api/policies/{vhost}/{name}) as RabbitMQ 3.10 applies
them to queues and exchanges.

A policy is a regex `pattern` searched (not anchored) in queue/exchange names of one vhost, an
`apply-to` ('queues', 'exchanges' or 'all'), a `priority` and a `definition` of queue/exchange
settings. Of the policies that match an object and apply to its kind, only the one with the highest
priority applies, whole (definitions never merge). Setting, updating or clearing a policy re-applies
at once to queues and exchanges that already exist - with two RabbitMQ details kept here: a
message's TTL is fixed when it is enqueued (a TTL policy never expires messages already queued, and
clearing it does not save those enqueued under it), and a new length limit trims an existing queue
only if its overflow was drop-head before the change (max-length is applied before overflow).

Where a queue argument and the policy both set something, RabbitMQ takes the smaller value for the
numeric limits (message-ttl, expires, max-length, max-length-bytes, delivery-limit) and the argument
for everything else (dead-letter-exchange, dead-letter-routing-key, overflow, alternate-exchange),
key by key.

Every test gets a unique prefix: queues and exchanges that policies should touch are named
`{prefix}-p-*`, helpers (dead-letter targets, alternate exchanges) `{prefix}-aux-*`, and each
policy's pattern matches only the test's own names. Policies are deleted in the fixture's teardown.
The same broker serves the whole compat session.

Queue listings (GET /api/queues/...) come from RabbitMQ's statistics, emitted every 5 s, so
the listing checks poll for up to 15 s; AMQP behaviour is checked right after the PUT (polling
with a deadline where RabbitMQ applies the change asynchronously).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    get_all,
    message_count,
    pump,
    routed,
    wait_message_count,
    wait_until,
)
from tests.compat.management import Management, Reply, vhost_path

pytestmark = pytest.mark.timeout(60)

# Timing slack for lower bounds: the broker's clock and ours tick differently by a few ms.
EARLY = 0.02
# RabbitMQ's queue listings follow its statistics, emitted every 5 s.
LISTING_TIMEOUT = 15.0
QUORUM = {"x-queue-type": "quorum"}
NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


# --- fixtures and helpers -------------------------------------------------------------------------


@dataclass
class Policies:
    """Sets policies named `{prefix}-{name}` whose default pattern matches only `subject()` names,
    and deletes all of them afterwards."""

    api: Management
    vhost: str
    prefix: str
    created: list[tuple[str, str]] = field(default_factory=list)

    def subject(self, suffix: str) -> str:
        """A queue/exchange name the default pattern matches."""
        return f"{self.prefix}-p-{suffix}"

    def aux(self, suffix: str) -> str:
        """A queue/exchange name no policy of this test matches."""
        return f"{self.prefix}-aux-{suffix}"

    @property
    def pattern(self) -> str:
        return "^" + re.escape(f"{self.prefix}-p-")

    def name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def path(self, name: str, vhost: str | None = None) -> str:
        return f"/api/policies/{vhost_path(vhost or self.vhost)}/{self.name(name)}"

    def put(self, name: str, body: Any, vhost: str | None = None) -> Reply:
        """PUT `body` as it is (remembering the policy for deletion)."""
        self.created.append((vhost or self.vhost, self.name(name)))
        return self.api.put(self.path(name, vhost), body)

    def set(
        self,
        name: str,
        definition: dict[str, Any],
        *,
        pattern: str | None = None,
        priority: float = 0,
        apply_to: str = "queues",
        vhost: str | None = None,
    ) -> None:
        body = {
            "pattern": self.pattern if pattern is None else pattern,
            "definition": definition,
            "priority": priority,
            "apply-to": apply_to,
        }
        reply = self.put(name, body, vhost)
        assert reply.status in (201, 204), (reply.status, reply.body)

    def clear(self, name: str) -> None:
        reply = self.api.delete(self.path(name))
        assert reply.status == 204, (reply.status, reply.body)

    def remove_all(self) -> None:
        for vhost, name in self.created:
            self.api.delete(f"/api/policies/{vhost_path(vhost)}/{name}")


@pytest.fixture
def api(management_url: str) -> Management:
    return Management(management_url)


@pytest.fixture
def policies(api: Management, params: pika.URLParameters, name: str) -> Iterator[Policies]:
    policies = Policies(api, params.virtual_host, name)
    yield policies
    policies.remove_all()


def _queue(
    channel: BlockingChannel, cleanup: Cleanup, name: str, durable: bool = False, **arguments: Any
) -> str:
    channel.queue_declare(cleanup.queue(name), durable=durable, arguments=arguments or None)
    return name


def _exchange(
    channel: BlockingChannel, cleanup: Cleanup, name: str, kind: str = "direct", **arguments: Any
) -> str:
    channel.exchange_declare(cleanup.exchange(name), kind, arguments=arguments or None)
    return name


def _fanout_to_queue(
    channel: BlockingChannel, cleanup: Cleanup, policies: Policies, tag: str
) -> str:
    """An aux fanout exchange bound to an aux queue of the same name; returns the name."""
    target = _exchange(channel, cleanup, policies.aux(tag), "fanout")
    _queue(channel, cleanup, target)
    channel.queue_bind(target, target)
    return target


def _publish(
    connection: BlockingConnection,
    routing_key: str,
    bodies: list[bytes],
    properties: pika.BasicProperties | None = None,
) -> list[bool]:
    """Publish mandatory via the default exchange on a confirm channel: acked (True) or nacked."""
    channel = connection.channel()
    channel.confirm_delivery()
    acked = []
    for body in bodies:
        try:
            channel.basic_publish("", routing_key, body, properties, mandatory=True)
            acked.append(True)
        except pika.exceptions.NackError:
            acked.append(False)
    channel.close()
    return acked


def _numbered(count: int) -> list[bytes]:
    return [f"m{i}".encode() for i in range(count)]


def _bodies(channel: BlockingChannel, queue: str) -> list[bytes]:
    return [d.body for d in get_all(channel, queue)]


def _deaths(channel: BlockingChannel, queue: str) -> list[tuple[bytes, str, str]]:
    """(body, reason, queue) of the newest x-death entry of every message in `queue`."""
    out = []
    for delivery in get_all(channel, queue):
        death = delivery.properties.headers["x-death"][0]
        out.append((delivery.body, death["reason"], death["queue"]))
    return out


def _reject_one(channel: BlockingChannel, queue: str) -> bytes:
    """Basic.Get one message and reject it without requeue (dead-letters it, if there is a DLX)."""
    method, _, body = channel.basic_get(queue, auto_ack=False)
    assert method is not None, f"{queue} is empty"
    channel.basic_reject(method.delivery_tag, requeue=False)
    return body


def _wait_count(
    connection: BlockingConnection, queue: str, count: int, timeout: float = 3.0
) -> None:
    wait_message_count(connection, queue, count, timeout)


def _exists(connection: BlockingConnection, queue: str) -> bool:
    """Whether `queue` exists, by a mandatory publish: unlike a passive declare it does not count
    as a use, so it does not restart the queue's expiry timer."""
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        return routed(channel, "", queue)
    finally:
        channel.close()


def _wait_gone(connection: BlockingConnection, queue: str, timeout: float = 3.0) -> float:
    """Wait until `queue` no longer exists; return the time (monotonic) it was seen gone."""
    wait_until(connection, lambda: not _exists(connection, queue), timeout, f"{queue} deleted")
    return time.monotonic()


def _exchange_routes(connection: BlockingConnection, exchange: str, routing_key: str) -> bool:
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        return routed(channel, exchange, routing_key)
    finally:
        channel.close()


def _deliveries_until_gone(channel: BlockingChannel, queue: str, limit: int = 10) -> int:
    """Basic.Get + Nack(requeue) until the queue has nothing more; how many deliveries."""
    for delivered in range(limit):
        method, _, _ = channel.basic_get(queue, auto_ack=False)
        if method is None:
            return delivered
        channel.basic_nack(method.delivery_tag, requeue=True)
    raise AssertionError(f"message still delivered after {limit} deliveries")


# --- each setting, on a queue or exchange declared after the policy -------------------------------


def test_message_ttl_policy(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """message-ttl: messages expire after the policy's TTL, not before."""
    policies.set("ttl", {"message-ttl": 150})
    queue = _queue(channel, cleanup, policies.subject("q"))
    start = time.monotonic()
    assert _publish(connection, queue, [b"a", b"b"]) == [True, True]
    _wait_count(connection, queue, 0)
    assert time.monotonic() - start >= 0.15 - EARLY
    assert _bodies(channel, queue) == []


def test_expires_policy(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """expires: an unused queue is deleted after the policy's expiry, not before."""
    policies.set("expires", {"expires": 200})
    start = time.monotonic()
    queue = _queue(channel, cleanup, policies.subject("q"))
    assert _wait_gone(connection, queue) - start >= 0.2 - EARLY


def test_max_length_policy(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """max-length: every publish is accepted and the oldest messages are dropped."""
    policies.set("len", {"max-length": 2})
    queue = _queue(channel, cleanup, policies.subject("q"))
    assert _publish(connection, queue, _numbered(5)) == [True] * 5
    assert _bodies(channel, queue) == [b"m3", b"m4"]


def test_max_length_bytes_policy(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """max-length-bytes: bodies above the limit in total drop the oldest messages."""
    policies.set("bytes", {"max-length-bytes": 10})
    queue = _queue(channel, cleanup, policies.subject("q"))
    _publish(connection, queue, [b"aaaa", b"bbbb", b"cccc", b"dd"])
    assert _bodies(channel, queue) == [b"bbbb", b"cccc", b"dd"]


@pytest.mark.parametrize(
    ("overflow", "acked", "kept", "dead"),
    [
        ("drop-head", [True, True, True], [b"m2"], [b"m0", b"m1"]),
        ("reject-publish", [True, False, False], [b"m0"], []),
        ("reject-publish-dlx", [True, False, False], [b"m0"], [b"m1", b"m2"]),
    ],
)
def test_overflow_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    overflow: str,
    acked: list[bool],
    kept: list[bytes],
    dead: list[bytes],
) -> None:
    """overflow with max-length 1 and a DLX from the same policy: drop-head dead-letters the
    dropped oldest, reject-publish nacks the new ones (not dead-lettered), reject-publish-dlx nacks
    and dead-letters them; all with reason 'maxlen'."""
    dead_queue = _queue(channel, cleanup, policies.aux("dead"))
    policies.set(
        "overflow",
        {
            "max-length": 1,
            "overflow": overflow,
            "dead-letter-exchange": "",
            "dead-letter-routing-key": dead_queue,
        },
    )
    queue = _queue(channel, cleanup, policies.subject("q"))
    assert _publish(connection, queue, _numbered(3)) == acked
    assert _bodies(channel, queue) == kept
    _wait_count(connection, dead_queue, len(dead))
    assert _deaths(channel, dead_queue) == [(body, "maxlen", queue) for body in dead]


@pytest.mark.parametrize("how", ["exchange", "routing-key"])
def test_dead_letter_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    how: str,
) -> None:
    """dead-letter-exchange (a fanout here), or the default exchange with a
    dead-letter-routing-key: a rejected message is dead-lettered with reason 'rejected'."""
    if how == "exchange":
        target = _fanout_to_queue(channel, cleanup, policies, "dlx")
        policies.set("dlx", {"dead-letter-exchange": target})
    else:
        target = _queue(channel, cleanup, policies.aux("dead"))
        policies.set("dlx", {"dead-letter-exchange": "", "dead-letter-routing-key": target})
    queue = _queue(channel, cleanup, policies.subject("q"))
    _publish(connection, queue, [b"m"])
    _reject_one(channel, queue)
    _wait_count(connection, target, 1)
    [delivery] = get_all(channel, target)
    death = delivery.properties.headers["x-death"][0]
    assert (delivery.body, death["reason"], death["queue"]) == (b"m", "rejected", queue)
    assert death["routing-keys"] == [queue]


def test_delivery_limit_policy_on_quorum_queue(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """delivery-limit on a quorum queue: with limit 1 a message is delivered twice, and the
    return after the second delivery dead-letters it (policy DLX) with reason 'delivery_limit'."""
    dead_queue = _queue(channel, cleanup, policies.aux("dead"))
    policies.set(
        "limit",
        {"delivery-limit": 1, "dead-letter-exchange": "", "dead-letter-routing-key": dead_queue},
    )
    queue = _queue(channel, cleanup, policies.subject("qq"), durable=True, **QUORUM)
    _publish(connection, queue, [b"m"])
    assert _deliveries_until_gone(channel, queue) == 2
    _wait_count(connection, dead_queue, 1)
    assert _deaths(channel, dead_queue) == [(b"m", "delivery_limit", queue)]


def test_alternate_exchange_policy(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """alternate-exchange (apply-to exchanges): what the exchange cannot route goes there."""
    ae = _fanout_to_queue(channel, cleanup, policies, "ae")
    policies.set("ae", {"alternate-exchange": ae}, apply_to="exchanges")
    exchange = _exchange(channel, cleanup, policies.subject("x"))
    assert _exchange_routes(connection, exchange, "nowhere")
    [delivery] = get_all(channel, ae)
    assert (delivery.body, delivery.method.exchange) == (b"probe", exchange)


def test_queue_mode_is_accepted_and_changes_nothing(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """queue-mode ('lazy' or 'default') is a valid policy key; a classic queue behaves the same
    (FIFO, limits from the same policy apply)."""
    policies.set("mode", {"queue-mode": "lazy", "max-length": 3})
    queue = _queue(channel, cleanup, policies.subject("q"))
    assert _publish(connection, queue, _numbered(5)) == [True] * 5
    assert message_count(channel, queue) == 3
    assert _bodies(channel, queue) == [b"m2", b"m3", b"m4"]
    policies.set("mode", {"queue-mode": "default"})
    _publish(connection, queue, _numbered(5))
    assert _bodies(channel, queue) == _numbered(5)


# --- queues and exchanges that existed before the policy ------------------------------------------


@pytest.mark.parametrize(
    ("overflow_policy", "overflow_argument", "trimmed"),
    [(None, None, True), ("reject-publish", None, True), (None, "reject-publish", False)],
    ids=["drop-head", "policy-reject-publish", "argument-reject-publish"],
)
def test_max_length_policy_on_an_existing_queue(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    overflow_policy: str | None,
    overflow_argument: str | None,
    trimmed: bool,
) -> None:
    """A max-length policy set on a queue holding 5 messages trims it at once, dropping (and
    dead-lettering, 'maxlen') the oldest, when the queue's overflow was drop-head before the
    change: even when the same policy sets overflow reject-publish (RabbitMQ applies max-length
    before overflow). A queue declared with x-overflow reject-publish is not trimmed. Either way,
    new publishes are then refused while the queue is over the limit, unless drop-head."""
    dead_queue = _queue(channel, cleanup, policies.aux("dead"))
    arguments = {"x-overflow": overflow_argument} if overflow_argument else {}
    queue = _queue(channel, cleanup, policies.subject("q"), **arguments)
    _publish(connection, queue, _numbered(5))
    definition: dict[str, Any] = {
        "max-length": 2,
        "dead-letter-exchange": "",
        "dead-letter-routing-key": dead_queue,
    }
    if overflow_policy:
        definition["overflow"] = overflow_policy
    policies.set("len", definition)
    if trimmed:
        _wait_count(connection, queue, 2)
        _wait_count(connection, dead_queue, 3)
        assert _deaths(channel, dead_queue) == [(body, "maxlen", queue) for body in _numbered(3)]
    else:
        pump(connection, 0.3)
        assert message_count(channel, queue) == 5
        assert message_count(channel, dead_queue) == 0
    drop_head = overflow_policy is None and overflow_argument is None
    assert _publish(connection, queue, [b"new"]) == [drop_head]
    expected = [b"m4", b"new"] if drop_head else _numbered(5)[3 if trimmed else 0 :]
    assert _bodies(channel, queue) == expected


def test_lowering_a_reject_publish_limit_does_not_trim(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """Once a queue's overflow is reject-publish, lowering max-length by updating the policy keeps
    the messages above the new limit; switching the policy back to drop-head trims them."""
    policies.set("len", {"max-length": 3, "overflow": "reject-publish"})
    queue = _queue(channel, cleanup, policies.subject("q"))
    assert _publish(connection, queue, _numbered(5)) == [True, True, True, False, False]
    policies.set("len", {"max-length": 1, "overflow": "reject-publish"})
    pump(connection, 0.3)
    assert message_count(channel, queue) == 3
    policies.set("len", {"max-length": 1})
    _wait_count(connection, queue, 1)
    assert _bodies(channel, queue) == [b"m2"]


def test_message_ttl_policy_does_not_expire_messages_already_queued(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """A message's expiry is fixed when it is enqueued: one queued before a message-ttl policy
    never expires; messages published after it do."""
    queue = _queue(channel, cleanup, policies.subject("q"))
    _publish(connection, queue, [b"old"])
    policies.set("ttl", {"message-ttl": 100})
    pump(connection, 0.4)
    assert message_count(channel, queue) == 1
    assert _bodies(channel, queue) == [b"old"]
    start = time.monotonic()
    _publish(connection, queue, [b"new"])
    _wait_count(connection, queue, 0)
    assert time.monotonic() - start >= 0.1 - EARLY


def test_message_keeps_the_ttl_it_was_enqueued_with(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """Clearing a message-ttl policy does not save messages enqueued under it (they expire on
    time), and shortening the TTL does not shorten theirs."""
    queue = _queue(channel, cleanup, policies.subject("q"))
    policies.set("ttl", {"message-ttl": 200})
    _publish(connection, queue, [b"probe"])  # the policy is in force once this has expired
    _wait_count(connection, queue, 0)
    start = time.monotonic()
    _publish(connection, queue, [b"under-policy"])
    policies.clear("ttl")
    _wait_count(connection, queue, 0)
    assert time.monotonic() - start >= 0.2 - EARLY

    policies.set("ttl", {"message-ttl": 60000})
    _publish(connection, queue, [b"long"])
    policies.set("ttl", {"message-ttl": 100})
    pump(connection, 0.4)
    assert _bodies(channel, queue) == [b"long"]
    _publish(connection, queue, [b"short"])
    _wait_count(connection, queue, 0)


def test_expires_policy_on_an_existing_queue_counts_from_when_it_applies(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """A queue unused for 0.5 s is not deleted at once by a 300 ms expires policy: the expiry
    timer starts when the policy applies."""
    queue = _queue(channel, cleanup, policies.subject("q"))
    pump(connection, 0.5)
    start = time.monotonic()
    policies.set("expires", {"expires": 300})
    assert _wait_gone(connection, queue) - start >= 0.3 - EARLY


def test_dead_letter_policy_on_an_existing_queue(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """A DLX policy set after a message was queued dead-letters it when it is rejected."""
    target = _fanout_to_queue(channel, cleanup, policies, "dlx")
    queue = _queue(channel, cleanup, policies.subject("q"))
    _publish(connection, queue, [b"m"])
    policies.set("dlx", {"dead-letter-exchange": target})
    _reject_one(channel, queue)
    _wait_count(connection, target, 1)
    assert _deaths(channel, target) == [(b"m", "rejected", queue)]


def test_alternate_exchange_policy_on_an_existing_exchange(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """An alternate-exchange policy applies to an exchange declared before it, and clearing it
    makes the exchange drop unroutable messages again."""
    ae = _fanout_to_queue(channel, cleanup, policies, "ae")
    exchange = _exchange(channel, cleanup, policies.subject("x"))
    assert not _exchange_routes(connection, exchange, "nowhere")
    policies.set("ae", {"alternate-exchange": ae}, apply_to="exchanges")
    assert _exchange_routes(connection, exchange, "nowhere")
    assert message_count(channel, ae) == 1
    policies.clear("ae")
    assert not _exchange_routes(connection, exchange, "nowhere")


# --- queue arguments versus policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "argument", "policy", "bodies", "kept"),
    [
        ("max-length", 4, 2, _numbered(6), 2),
        ("max-length", 1, 2, _numbered(6), 1),
        ("max-length-bytes", 30, 10, [b"12345"] * 6, 2),
        ("max-length-bytes", 5, 10, [b"12345"] * 6, 1),
    ],
    ids=[
        "length-policy-smaller",
        "length-argument-smaller",
        "bytes-policy-smaller",
        "bytes-argument-smaller",
    ],
)
def test_length_limits_use_the_smaller_of_argument_and_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    key: str,
    argument: int,
    policy: int,
    bodies: list[bytes],
    kept: int,
) -> None:
    """x-max-length / x-max-length-bytes and the policy's value: the smaller limit applies."""
    policies.set("len", {key: policy})
    queue = _queue(channel, cleanup, policies.subject("q"), **{f"x-{key}": argument})
    assert _publish(connection, queue, bodies) == [True] * len(bodies)
    assert message_count(channel, queue) == kept


@pytest.mark.parametrize(("argument", "policy"), [(5000, 150), (150, 5000)])
def test_message_ttl_uses_the_smaller_of_argument_and_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    argument: int,
    policy: int,
) -> None:
    """x-message-ttl and the policy's message-ttl: messages expire after the smaller (150 ms)."""
    policies.set("ttl", {"message-ttl": policy})
    queue = _queue(channel, cleanup, policies.subject("q"), **{"x-message-ttl": argument})
    start = time.monotonic()
    _publish(connection, queue, [b"m"])
    _wait_count(connection, queue, 0, timeout=2.0)
    assert time.monotonic() - start >= 0.15 - EARLY


@pytest.mark.parametrize(("argument", "policy"), [(5000, 200), (200, 5000)])
def test_expires_uses_the_smaller_of_argument_and_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    argument: int,
    policy: int,
) -> None:
    """x-expires and the policy's expires: the queue is deleted after the smaller (200 ms)."""
    policies.set("expires", {"expires": policy})
    start = time.monotonic()
    queue = _queue(channel, cleanup, policies.subject("q"), **{"x-expires": argument})
    gone = _wait_gone(connection, queue, timeout=2.0)
    assert gone - start >= 0.2 - EARLY


@pytest.mark.parametrize(("argument", "policy"), [(3, 1), (1, 3)])
def test_delivery_limit_uses_the_smaller_of_argument_and_policy(
    channel: BlockingChannel,
    connection: BlockingConnection,
    policies: Policies,
    cleanup: Cleanup,
    argument: int,
    policy: int,
) -> None:
    """x-delivery-limit and the policy's delivery-limit on a quorum queue: the smaller (1) applies,
    so the message is delivered twice."""
    policies.set("limit", {"delivery-limit": policy})
    queue = _queue(
        channel,
        cleanup,
        policies.subject("qq"),
        durable=True,
        **QUORUM,
        **{"x-delivery-limit": argument},
    )
    _publish(connection, queue, [b"m"])
    assert _deliveries_until_gone(channel, queue) == 2


@pytest.mark.parametrize("case", ["exchange", "routing-key", "key-by-key"])
def test_dead_letter_arguments_win_over_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    case: str,
) -> None:
    """x-dead-letter-exchange and x-dead-letter-routing-key win over the policy's, each key on its
    own: a queue with only x-dead-letter-exchange '' under a policy with another DLX and a routing
    key dead-letters through '' with the policy's routing key."""
    first = _fanout_to_queue(channel, cleanup, policies, "first")
    second = _fanout_to_queue(channel, cleanup, policies, "second")
    if case == "exchange":
        policies.set("dlx", {"dead-letter-exchange": first})
        arguments = {"x-dead-letter-exchange": second}
    elif case == "routing-key":
        policies.set("dlx", {"dead-letter-exchange": "", "dead-letter-routing-key": first})
        arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": second}
    else:
        policies.set("dlx", {"dead-letter-exchange": first, "dead-letter-routing-key": second})
        arguments = {"x-dead-letter-exchange": ""}
    queue = _queue(channel, cleanup, policies.subject("q"), **arguments)
    _publish(connection, queue, [b"m"])
    _reject_one(channel, queue)
    _wait_count(connection, second, 1)
    pump(connection, 0.1)
    assert (message_count(channel, first), message_count(channel, queue)) == (0, 0)
    assert _deaths(channel, second) == [(b"m", "rejected", queue)]


@pytest.mark.parametrize(
    ("argument", "policy", "acked", "kept"),
    [
        ("drop-head", "reject-publish", [True, True, True], [b"m2"]),
        ("reject-publish", "drop-head", [True, False, False], [b"m0"]),
    ],
)
def test_overflow_argument_wins_over_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    argument: str,
    policy: str,
    acked: list[bool],
    kept: list[bytes],
) -> None:
    """x-overflow wins over the policy's overflow (max-length 1 from the policy)."""
    policies.set("overflow", {"max-length": 1, "overflow": policy})
    queue = _queue(channel, cleanup, policies.subject("q"), **{"x-overflow": argument})
    assert _publish(connection, queue, _numbered(3)) == acked
    assert _bodies(channel, queue) == kept


def test_alternate_exchange_argument_wins_over_policy(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """An exchange's alternate-exchange argument wins over the policy's."""
    from_policy = _fanout_to_queue(channel, cleanup, policies, "policy-ae")
    from_argument = _fanout_to_queue(channel, cleanup, policies, "argument-ae")
    policies.set("ae", {"alternate-exchange": from_policy}, apply_to="exchanges")
    exchange = policies.subject("x")
    _exchange(channel, cleanup, exchange, **{"alternate-exchange": from_argument})
    assert _exchange_routes(connection, exchange, "nowhere")
    assert (message_count(channel, from_argument), message_count(channel, from_policy)) == (1, 0)


def test_policy_does_not_change_queue_equivalence(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """Redeclaring compares the declared arguments only: without arguments it succeeds under a
    max-length policy, and with the policy's x-max-length it fails 406 ("current is none")."""
    policies.set("len", {"max-length": 1})
    queue = _queue(channel, cleanup, policies.subject("q"))
    channel.queue_declare(queue)
    with expect_channel_close(channel, 406) as close:
        channel.queue_declare(queue, arguments={"x-max-length": 1})
    assert close.text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{queue}' in vhost "
        f"'{policies.vhost}': received the value '1' of type 'signedint' but current is none"
    )


# --- priority, apply-to, pattern, vhost -----------------------------------------------------------


def test_only_the_highest_priority_policy_applies(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """Two matching policies: the higher priority's definition applies alone (the lower one's
    max-length is ignored); deleting it applies the other to the existing queue at once; setting
    it again lifts the limit."""
    policies.set("low", {"max-length": 1}, priority=1)
    policies.set("high", {"message-ttl": 60000}, priority=2)
    queue = _queue(channel, cleanup, policies.subject("q"))
    _publish(connection, queue, _numbered(3))
    assert message_count(channel, queue) == 3
    policies.clear("high")
    _wait_count(connection, queue, 1)
    policies.set("high", {"message-ttl": 60000}, priority=2)
    # Wait for the high-priority policy to be in force again (the limit lifted).
    wait_until(
        connection,
        lambda: _publish(connection, queue, [b"more"]) and message_count(channel, queue) > 1,
        what="max-length lifted",
    )


def test_negative_and_fractional_priorities_are_ordered_numerically(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """priority may be negative or fractional: -1 loses to 0, 0.5 wins over 0."""
    policies.set("zero", {"max-length": 1}, priority=0)
    policies.set("other", {"max-length": 2}, priority=-1)
    lower = _queue(channel, cleanup, policies.subject("negative"))
    _publish(connection, lower, _numbered(3))
    assert message_count(channel, lower) == 1
    policies.set("other", {"max-length": 2}, priority=0.5)
    higher = _queue(channel, cleanup, policies.subject("fractional"))
    _publish(connection, higher, _numbered(3))
    assert message_count(channel, higher) == 2


def test_equal_priority_policies_do_not_merge(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """Two matching policies of equal priority: one of them applies, whole. (Which one is not
    decided by name or creation order in RabbitMQ, so only that is checked.) With max-length 1 from
    one and message-ttl 300 from the other, two publishes leave either 1 message for good, or 2
    that expire - never the merge (1 that expires)."""
    policies.set("a", {"max-length": 1}, priority=7)
    policies.set("b", {"message-ttl": 300}, priority=7)
    queue = _queue(channel, cleanup, policies.subject("q"))
    start = time.monotonic()
    _publish(connection, queue, [b"first", b"second"])
    first = message_count(channel, queue)
    elapsed = time.monotonic() - start
    pump(connection, 0.6)
    later = message_count(channel, queue)
    if first == 1:
        assert later == 1, "max-length and message-ttl both applied: definitions were merged"
        assert _bodies(channel, queue) == [b"second"]
    else:  # message-ttl alone: both stay until they expire together
        assert first == 2 or elapsed >= 0.3 - EARLY
        assert later == 0


def test_policy_priority_is_among_policies_for_the_object_kind(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """A higher-priority policy for exchanges only does not hide a queue policy from queues; one
    that applies to 'all' does (though it sets nothing queues use)."""
    ae = _fanout_to_queue(channel, cleanup, policies, "ae")
    policies.set("queues", {"max-length": 1}, priority=0, apply_to="queues")
    policies.set("both", {"alternate-exchange": ae}, priority=10, apply_to="exchanges")
    limited = _queue(channel, cleanup, policies.subject("q1"))
    _publish(connection, limited, _numbered(2))
    assert message_count(channel, limited) == 1
    policies.set("both", {"alternate-exchange": ae}, priority=10, apply_to="all")
    unlimited = _queue(channel, cleanup, policies.subject("q2"))
    _publish(connection, unlimited, _numbered(2))
    assert message_count(channel, unlimited) == 2


@pytest.mark.parametrize(
    ("apply_to", "queue_limited", "exchange_has_ae"),
    [("queues", True, False), ("exchanges", False, True), ("all", True, True)],
)
def test_apply_to(
    connection: BlockingConnection,
    channel: BlockingChannel,
    policies: Policies,
    cleanup: Cleanup,
    apply_to: str,
    queue_limited: bool,
    exchange_has_ae: bool,
) -> None:
    """apply-to: 'queues' policies touch only queues, 'exchanges' only exchanges, 'all' both (each
    using the keys that concern it)."""
    ae = _fanout_to_queue(channel, cleanup, policies, "ae")
    policies.set("kind", {"max-length": 1, "alternate-exchange": ae}, apply_to=apply_to)
    queue = _queue(channel, cleanup, policies.subject("q"))
    exchange = _exchange(channel, cleanup, policies.subject("x"))
    _publish(connection, queue, _numbered(2))
    assert message_count(channel, queue) == (1 if queue_limited else 2)
    assert _exchange_routes(connection, exchange, "nowhere") is exchange_has_ae


def test_pattern_is_a_regex_searched_in_the_name(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """The pattern is searched anywhere in the name (not anchored) unless it says ^ or $ itself,
    and is a regular expression ('.' matches any character)."""
    token = re.escape(policies.prefix)
    policies.set("search", {"max-length": 1}, pattern=f"{token}-s.arch")
    policies.set("anchored", {"max-length": 1}, pattern=f"^{token}-anchored$")
    matched = [f"x-{policies.prefix}-search-y", f"{policies.prefix}-sXarch"]
    matched.append(f"{policies.prefix}-anchored")
    unmatched = [f"x-{policies.prefix}-anchored", f"{policies.prefix}-anchored-y"]
    unmatched.append(f"{policies.prefix}-s-arc")
    for queue in matched + unmatched:
        _queue(channel, cleanup, queue)
        _publish(connection, queue, _numbered(2))
    counts = {queue: message_count(channel, queue) for queue in matched + unmatched}
    assert counts == {**dict.fromkeys(matched, 1), **dict.fromkeys(unmatched, 2)}


def test_policy_applies_only_in_its_vhost(
    connection: BlockingConnection,
    channel: BlockingChannel,
    api: Management,
    params: pika.URLParameters,
    policies: Policies,
    cleanup: Cleanup,
) -> None:
    """A policy set in another vhost does not touch a same-named queue in this one; GET
    /api/policies/{vhost} lists only that vhost's policies, GET /api/policies all of them."""
    vhost = f"{policies.prefix}-vhost"
    reply = api.put(f"/api/vhosts/{vhost_path(vhost)}")
    assert reply.status in (201, 204), (reply.status, reply.body)
    try:
        permission = {"configure": ".*", "write": ".*", "read": ".*"}
        reply = api.put(f"/api/permissions/{vhost_path(vhost)}/{api.user}", permission)
        assert reply.status in (201, 204), (reply.status, reply.body)
        queue = policies.subject("q")
        _queue(channel, cleanup, queue)
        other_params = pika.URLParameters(f"amqp://{params.host}:{params.port}/")
        other_params.credentials = params.credentials
        other_params.virtual_host = vhost
        other = pika.BlockingConnection(other_params)
        try:
            other.channel().queue_declare(queue)
            policies.set("elsewhere", {"max-length": 1}, vhost=vhost)
            _publish(connection, queue, _numbered(3))
            _publish(other, queue, _numbered(3))
            assert message_count(channel, queue) == 3
            assert message_count(other.channel(), queue) == 1
        finally:
            other.close()
        ours = [p["name"] for p in api.get(f"/api/policies/{vhost_path(policies.vhost)}").body]
        theirs = [p["name"] for p in api.get(f"/api/policies/{vhost_path(vhost)}").body]
        everywhere = [(p["vhost"], p["name"]) for p in api.get("/api/policies").body]
        assert policies.name("elsewhere") not in ours
        assert theirs == [policies.name("elsewhere")]
        assert (vhost, policies.name("elsewhere")) in everywhere
    finally:
        api.delete(f"/api/vhosts/{vhost_path(vhost)}")


def test_exclusive_and_server_named_queues_are_matched(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies
) -> None:
    """Policies apply to exclusive queues and to server-named (amq.gen-*) ones like any other."""
    exclusive = policies.subject("exclusive")
    policies.set("exclusive", {"max-length": 1})
    channel.queue_declare(exclusive, exclusive=True)
    server_named = channel.queue_declare("", exclusive=True).method.queue
    assert server_named.startswith("amq.gen-")
    policies.set("server-named", {"max-length": 1}, pattern=f"^{re.escape(server_named)}$")
    _publish(connection, exclusive, _numbered(2))
    assert message_count(channel, exclusive) == 1
    # The policy was set after the queue existed: it applies asynchronously.
    wait_until(
        connection,
        lambda: (
            _publish(connection, server_named, [b"m"]) and message_count(channel, server_named) == 1
        ),
        what="max-length on the server-named queue",
    )


# --- clearing and updating ------------------------------------------------------------------------


def test_clearing_a_policy_restores_the_queue_behaviour(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """After DELETE the queue has its own settings again: new messages do not expire, max-length
    no longer drops, rejected messages are no longer dead-lettered."""
    dead_queue = _queue(channel, cleanup, policies.aux("dead"))
    definition = {
        "message-ttl": 150,
        "max-length": 2,
        "dead-letter-exchange": "",
        "dead-letter-routing-key": dead_queue,
    }
    policies.set("all", definition)
    queue = _queue(channel, cleanup, policies.subject("q"))
    _publish(connection, queue, _numbered(3))
    _wait_count(connection, queue, 0)
    _wait_count(connection, dead_queue, 3)
    assert sorted(_deaths(channel, dead_queue)) == [
        (b"m0", "maxlen", queue),
        (b"m1", "expired", queue),
        (b"m2", "expired", queue),
    ]

    policies.clear("all")
    _publish(connection, queue, _numbered(4))
    pump(connection, 0.4)
    assert message_count(channel, queue) == 4
    _reject_one(channel, queue)
    pump(connection, 0.2)
    assert message_count(channel, dead_queue) == 0
    assert _bodies(channel, queue) == [b"m1", b"m2", b"m3"]


def test_updating_a_policy_reapplies_at_once(
    connection: BlockingConnection, channel: BlockingChannel, policies: Policies, cleanup: Cleanup
) -> None:
    """PUT over an existing policy replaces it and re-applies it to existing queues: a lower
    max-length trims at once; a definition without max-length lifts the limit; a pattern that no
    longer matches takes the policy off the queue; matching again applies it again."""
    policies.set("len", {"max-length": 3})
    queue = _queue(channel, cleanup, policies.subject("q"))
    _publish(connection, queue, _numbered(5))
    assert message_count(channel, queue) == 3
    policies.set("len", {"max-length": 1})
    _wait_count(connection, queue, 1)
    assert _bodies(channel, queue) == [b"m4"]

    policies.set("len", {"message-ttl": 60000})
    _publish(connection, queue, _numbered(3))
    assert message_count(channel, queue) == 3

    policies.set("len", {"max-length": 1}, pattern="^" + re.escape(policies.aux("none")))
    _publish(connection, queue, [b"m3"])
    assert message_count(channel, queue) == 4
    policies.set("len", {"max-length": 1})
    _wait_count(connection, queue, 1)
    assert _bodies(channel, queue) == [b"m3"]


# --- the management API ---------------------------------------------------------------------------


def test_policy_resource_shape_and_status_codes(api: Management, policies: Policies) -> None:
    """PUT creates (201, no body) or replaces (204); GET gives exactly vhost, name, pattern,
    apply-to, definition, priority, with apply-to 'all' and priority 0 when left out; extra body
    keys (even vhost and name) are ignored; DELETE is 204, then GET and DELETE are 404."""
    path = policies.path("shape")
    name = policies.name("shape")
    reply = policies.put("shape", {"pattern": policies.pattern, "definition": {"max-length": 1}})
    assert (reply.status, reply.body) == (201, None)
    reply = api.get(path)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.body == {
        "vhost": policies.vhost,
        "name": name,
        "pattern": policies.pattern,
        "apply-to": "all",
        "definition": {"max-length": 1},
        "priority": 0,
    }

    body = {
        "pattern": policies.pattern,
        "definition": {"message-ttl": 1000, "max-length": 2},
        "priority": 3,
        "apply-to": "queues",
        "vhost": "elsewhere",
        "name": "other",
        "extra": True,
    }
    reply = policies.put("shape", body)
    assert (reply.status, reply.body) == (204, None)
    expected = {
        "vhost": policies.vhost,
        "name": name,
        "pattern": policies.pattern,
        "apply-to": "queues",
        "definition": {"message-ttl": 1000, "max-length": 2},
        "priority": 3,
    }
    assert api.get(path).body == expected
    assert expected in api.get(f"/api/policies/{vhost_path(policies.vhost)}").body
    assert expected in api.get("/api/policies").body


def test_policy_delete_and_not_found(api: Management, policies: Policies) -> None:
    """DELETE answers 204 without a body; a missing policy is 404 on GET and on DELETE."""
    policies.set("gone", {"max-length": 1})
    path = policies.path("gone")
    reply = api.delete(path)
    assert (reply.status, reply.body) == (204, None)
    for reply in (api.get(path), api.delete(path)):
        assert (reply.status, reply.body) == (404, NOT_FOUND)


def test_policies_are_listed_by_ascending_priority(api: Management, policies: Policies) -> None:
    """GET /api/policies/{vhost} lists policies by priority, lowest first, then by name."""
    for name, priority in [("c", 1), ("a", 5), ("b", 0), ("B", 0), ("z", -2)]:
        policies.set(name, {"max-length": 1}, priority=priority)
    listed = api.get(f"/api/policies/{vhost_path(policies.vhost)}").body
    ours = [p["name"] for p in listed if p["name"].startswith(policies.prefix + "-")]
    assert ours == [policies.name(n) for n in ["z", "B", "b", "c", "a"]]


def _queue_listing(api: Management, vhost: str, queue: str) -> dict[str, Any]:
    reply = api.get(f"/api/queues/{vhost_path(vhost)}/{queue}")
    assert reply.status == 200, (reply.status, reply.body)
    return reply.body


def _wait_listing(
    connection: BlockingConnection,
    api: Management,
    vhost: str,
    queue: str,
    predicate: Any,
    what: str,
) -> dict[str, Any]:
    """Poll the queue's listing until `predicate(listing)`; return it."""
    seen: dict[str, Any] = {}

    def ready() -> bool:
        seen.update(_queue_listing(api, vhost, queue))
        if predicate(seen):
            return True
        pump(connection, 0.2)
        return False

    wait_until(connection, ready, LISTING_TIMEOUT, what)
    return seen


def test_queue_and_exchange_listings_show_the_policy(
    connection: BlockingConnection,
    channel: BlockingChannel,
    api: Management,
    policies: Policies,
    cleanup: Cleanup,
) -> None:
    """GET /api/queues/{vhost}/{q} (and the list) show `policy` (the applied policy's name) and
    `effective_policy_definition` (its definition, queue-mode included); a queue under no policy
    shows policy null and effective_policy_definition {}; after DELETE the queue shows null/{}
    again. Exchanges show `policy` only while one applies (no key otherwise) and never an
    effective_policy_definition."""
    definition = {"max-length": 5, "message-ttl": 60000, "queue-mode": "lazy"}
    policies.set("listed", definition, apply_to="all")
    vhost = policies.vhost
    queue = _queue(channel, cleanup, policies.subject("q"))
    bare = _queue(channel, cleanup, policies.aux("q"))
    exchange = _exchange(channel, cleanup, policies.subject("x"))
    bare_exchange = _exchange(channel, cleanup, policies.aux("x"))

    listing = _wait_listing(
        connection, api, vhost, queue, lambda q: q.get("policy"), "the policy in the listing"
    )
    assert listing["policy"] == policies.name("listed")
    assert listing["effective_policy_definition"] == definition
    assert listing["arguments"] == {}
    listing = _wait_listing(connection, api, vhost, bare, lambda q: "policy" in q, "stats")
    assert listing["policy"] is None
    assert listing["effective_policy_definition"] == {}
    listed = {q["name"]: q for q in api.get(f"/api/queues/{vhost_path(vhost)}").body}
    assert listed[queue]["policy"] == policies.name("listed")
    assert listed[queue]["effective_policy_definition"] == definition

    exchange_listing = api.get(f"/api/exchanges/{vhost_path(vhost)}/{exchange}").body
    assert exchange_listing["policy"] == policies.name("listed")
    assert "effective_policy_definition" not in exchange_listing
    bare_listing = api.get(f"/api/exchanges/{vhost_path(vhost)}/{bare_exchange}").body
    assert "policy" not in bare_listing
    assert "effective_policy_definition" not in bare_listing

    policies.clear("listed")
    listing = _wait_listing(
        connection, api, vhost, queue, lambda q: q.get("policy") is None, "the policy gone"
    )
    assert listing["effective_policy_definition"] == {}
    assert "policy" not in api.get(f"/api/exchanges/{vhost_path(vhost)}/{exchange}").body


def _escaped(text: str) -> str:
    """RabbitMQ HTML-escapes < and > in the error reason (Erlang binaries print as <<"...">>)."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _failed(*lines: str) -> dict[str, str]:
    return {
        "error": "bad_request",
        "reason": "Validation failed\n\n" + "".join(f"{line}\n" for line in lines),
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"definition": {"bogus-key": 1}},
            _failed(_escaped('[{<<"bogus-key">>,1}] are not recognised policy settings')),
        ),
        (
            {"definition": {"max-length": 2, "zz": 1, "aa": "x"}},
            _failed(
                _escaped('[{<<"aa">>,<<"x">>},{<<"zz">>,1}] are not recognised policy settings')
            ),
        ),
        (
            {"definition": {"max-priority": 5}},
            _failed(_escaped('[{<<"max-priority">>,5}] are not recognised policy settings')),
        ),
        ({"definition": {}}, _failed("no policy provided")),
        ({"definition": {"message-ttl": -1}}, _failed("-1 is not a valid message TTL")),
        (
            {"definition": {"message-ttl": "100"}},
            _failed(_escaped('<<"100">> is not a valid message TTL')),
        ),
        ({"definition": {"message-ttl": 1.5}}, _failed("1.5 is not a valid message TTL")),
        ({"definition": {"message-ttl": None}}, _failed("null is not a valid message TTL")),
        ({"definition": {"max-length": -1}}, _failed("-1 is not a valid maximum length")),
        ({"definition": {"max-length": True}}, _failed("true is not a valid maximum length")),
        ({"definition": {"max-length": 1.0}}, _failed("1.0 is not a valid maximum length")),
        (
            {"definition": {"max-length-bytes": -1}},
            _failed("-1 is not a valid maximum length in bytes"),
        ),
        ({"definition": {"expires": 0}}, _failed("0 is not a valid queue expiry")),
        ({"definition": {"expires": -5}}, _failed("-5 is not a valid queue expiry")),
        (
            {"definition": {"expires": "1"}},
            _failed(_escaped('<<"1">> is not a valid queue expiry')),
        ),
        ({"definition": {"delivery-limit": -1}}, _failed("-1 is not a valid delivery limit")),
        (
            {"definition": {"overflow": "bogus"}},
            _failed(_escaped('<<"bogus">> is not a valid overflow value')),
        ),
        ({"definition": {"overflow": 1}}, _failed("1 is not a valid overflow value")),
        (
            {"definition": {"dead-letter-exchange": 5}},
            _failed("5 is not a valid dead letter exchange name"),
        ),
        (
            {"definition": {"dead-letter-exchange": "", "dead-letter-routing-key": 5}},
            _failed("5 is not a valid dead letter routing key"),
        ),
        (
            {"definition": {"alternate-exchange": 5}},
            _failed("5 is not a valid alternate exchange name"),
        ),
        (
            {"definition": {"queue-mode": "bogus"}},
            _failed(_escaped('<<"bogus">> is not a valid queue-mode value')),
        ),
        ({"definition": {"queue-mode": 1}}, _failed("1 is not a valid queue-mode value")),
        (
            {"definition": {"max-length": -1, "message-ttl": -1}},
            _failed("-1 is not a valid maximum length"),
        ),
        ({"definition": {"zz": 1, "max-length": -1}}, _failed("-1 is not a valid maximum length")),
        (
            {"pattern": "("},
            _failed('pattern should be regular expression but is invalid: {"missing )",1}'),
        ),
        ({"pattern": 5}, _failed("pattern should be a binary but was 5")),
        (
            {"apply-to": "bogus"},
            _failed("apply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'"),
        ),
        (
            {"apply-to": "Queues"},
            _failed("apply-to 'Queues' unrecognised; should be 'queues', 'exchanges' or 'all'"),
        ),
        (
            {"apply-to": None},
            _failed("apply-to 'null' unrecognised; should be 'queues', 'exchanges' or 'all'"),
        ),
        (
            {"priority": "high"},
            _failed(_escaped('priority should be a number, actually was <<"high">>')),
        ),
        (
            {"priority": "5"},
            _failed(_escaped('priority should be a number, actually was <<"5">>')),
        ),
        ({"priority": None}, _failed("priority should be a number, actually was null")),
        ({"priority": True}, _failed("priority should be a number, actually was true")),
        (
            {"pattern": "(", "definition": {"max-length": -1}, "apply-to": "x", "priority": "y"},
            _failed(
                "-1 is not a valid maximum length",
                "apply-to 'x' unrecognised; should be 'queues', 'exchanges' or 'all'",
                'pattern should be regular expression but is invalid: {"missing )",1}',
                _escaped('priority should be a number, actually was <<"y">>'),
            ),
        ),
        ({"pattern": None}, {"error": "bad_request", "reason": "[{key_missing,pattern}]"}),
        ({"definition": None}, {"error": "bad_request", "reason": "[{key_missing,definition}]"}),
    ],
)
def test_invalid_policy_is_rejected(
    api: Management, policies: Policies, change: dict[str, Any], reason: dict[str, str]
) -> None:
    """An invalid policy is 400 with RabbitMQ's error JSON and is not stored. Definition values
    are checked first (only the first bad known key, keys in byte order, is reported; unknown keys
    only once the known ones are valid, all listed sorted), then apply-to, pattern and priority,
    one line each. A missing pattern or definition (`None` here drops the key) is reported alone,
    in another format."""
    body: dict[str, Any] = {
        "pattern": policies.pattern,
        "definition": {"max-length": 1},
        "priority": 0,
        "apply-to": "queues",
    }
    for key, value in change.items():
        if value is None and key in ("pattern", "definition"):
            del body[key]
        else:
            body[key] = value
    reply = policies.put("invalid", body)
    assert (reply.status, reply.body) == (400, reason)
    assert api.get(policies.path("invalid")).status == 404


def test_invalid_regex_is_rejected(api: Management, policies: Policies) -> None:
    """Any pattern that is not a valid (PCRE) regular expression is 400 "pattern should be regular
    expression but is invalid: ..." (the rest is PCRE's message)."""
    body = {"pattern": "[a-", "definition": {"max-length": 1}, "apply-to": "queues"}
    reply = policies.put("regex", body)
    assert reply.status == 400
    assert reply.body["error"] == "bad_request"
    assert reply.body["reason"].startswith(
        "Validation failed\n\npattern should be regular expression but is invalid: "
    )
    assert api.get(policies.path("regex")).status == 404


def test_malformed_bodies_are_rejected(api: Management, policies: Policies) -> None:
    """A body that is not JSON is 400 'not_json'; a policy in a vhost that does not exist is 404
    'vhost_not_found'."""
    reply = api.request("PUT", policies.path("bad"), raw=b"{not json")
    assert (reply.status, reply.body) == (400, {"error": "bad_request", "reason": "not_json"})
    missing = f"{policies.prefix}-no-such-vhost"
    body = {"pattern": policies.pattern, "definition": {"max-length": 1}}
    reply = policies.put("bad", body, vhost=missing)
    assert (reply.status, reply.body) == (404, {"error": "not_found", "reason": "vhost_not_found"})


@pytest.mark.parametrize(
    "definition",
    [
        {"message-ttl": 0},
        {"max-length": 0},
        {"delivery-limit": 0},
        {"dead-letter-routing-key": "rk"},
        {"queue-mode": "default"},
    ],
)
def test_edge_values_are_accepted(policies: Policies, definition: dict[str, Any]) -> None:
    """Zero TTL, length and delivery limits are valid, and so is a dead-letter-routing-key without
    a dead-letter-exchange (unlike the queue argument, which needs x-dead-letter-exchange)."""
    policies.set("edge", definition)
