"""Policies on the model, without a network: precedence, re-applying, validation texts, a log
that refuses the change, and a pattern that would stall the broker."""

from __future__ import annotations

import time

import pytest

from broker.auth import Authenticator, User
from broker.config import Permission
from broker.core.vhost import VirtualHost
from broker.policies import Policies, PolicyError, parse_policy
from tests.unit.helpers import ManualClock, make_message


class LogRefuses(Exception):
    """What the log raises once it has failed."""


def policies_for(vhost: VirtualHost, changed: list[int] | None = None) -> Policies:
    calls = changed if changed is not None else []
    policies = Policies(lambda: {vhost.name: vhost}, lambda: calls.append(1))
    vhost.on_queue_added = lambda queue: policies.apply_to_queue(vhost, queue)
    vhost.on_exchange_added = lambda exchange: policies.apply_to_exchange(vhost, exchange)
    return policies


def policy(name: str, definition: dict, pattern: str = "^q", priority: int = 0, **extra: str):
    body = {"pattern": pattern, "definition": definition, "priority": priority, **extra}
    return parse_policy("/", name, body)


def test_the_smaller_limit_wins_and_the_argument_wins_the_rest() -> None:
    vhost = VirtualHost("/", clock=ManualClock())
    policies = policies_for(vhost)
    queue = vhost.declare_queue(
        "q1",
        None,
        arguments={"x-max-length": 10, "x-message-ttl": 100, "x-dead-letter-exchange": "own"},
    )
    policies.put(
        policy(
            "p",
            {
                "max-length": 3,
                "message-ttl": 5000,
                "dead-letter-exchange": "policy",
                "expires": 9000,
            },
        )
    )
    settings = queue.settings
    assert (settings.max_length, settings.message_ttl) == (3, 100)
    assert settings.dead_letter_exchange == "own"
    assert settings.expires == 9000  # not declared: the policy's
    assert queue.declared_settings.max_length == 10  # what equivalence checks compare
    policies.delete("/", "p")
    assert queue.settings == queue.declared_settings


def test_only_the_highest_priority_policy_applies_whole() -> None:
    vhost = VirtualHost("/")
    policies = policies_for(vhost)
    queue = vhost.declare_queue("q1", None)
    policies.put(policy("low", {"max-length": 1, "message-ttl": 50}, priority=1))
    policies.put(policy("high", {"max-length": 7}, priority=2))
    assert (queue.settings.max_length, queue.settings.message_ttl) == (7, None)
    assert policies.row_for_queue(queue)["name"] == "high"


def test_a_new_limit_trims_a_drop_head_queue_and_the_old_messages_keep_their_ttl() -> None:
    vhost = VirtualHost("/")
    policies = policies_for(vhost)
    queue = vhost.declare_queue("q1", None)
    for n in range(5):
        queue.publish(make_message("q1", str(n).encode()))
    policies.put(policy("ttl-and-cap", {"max-length": 2, "message-ttl": 1}))
    assert [e.message.body for e in queue.ready_entries()] == [b"3", b"4"]
    assert all(not entry.expires_at for entry in queue.ready_entries())


def test_a_log_that_refuses_the_change_leaves_policies_users_and_vhosts_as_they_were() -> None:
    """The change is logged before it shows: when the log refuses it, nothing changed."""
    vhost = VirtualHost("/")
    queue = vhost.declare_queue("q1", None)
    failing = False

    def changed() -> None:
        if failing:
            raise LogRefuses

    policies = Policies(lambda: {"/": vhost}, changed)
    policies.put(policy("kept", {"max-length": 4}))
    failing = True
    with pytest.raises(LogRefuses):
        policies.put(policy("kept", {"max-length": 1}))
    with pytest.raises(LogRefuses):
        policies.delete("/", "kept")
    assert policies.get("/", "kept").definition == {"max-length": 4}
    assert queue.settings.max_length == 4

    auth = Authenticator([User("a", "", {"/": Permission()})], changed)
    with pytest.raises(LogRefuses):
        auth.put_user(User("b", "", {}))
    with pytest.raises(LogRefuses):
        auth.clear_permission("a", "/")
    assert set(auth.users) == {"a"} and "/" in auth.users["a"].permissions


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"pattern": "^q", "definition": {"message-ttl": -1}}, "-1 is not a valid message TTL"),
        (
            {"pattern": "^q", "definition": {"overflow": "x"}},
            '&lt;&lt;"x"&gt;&gt; is not a valid overflow value',
        ),
        ({"pattern": "(", "definition": {"max-length": 1}}, '{"missing )",1}'),
        ({"pattern": "^q"}, "[{key_missing,definition}]"),
    ],
)
def test_invalid_policies_are_refused_with_rabbitmqs_words(body: dict, reason: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy("/", "p", body)
    assert reason in str(refused.value)


def test_a_catastrophic_pattern_stops_matching_instead_of_stalling_the_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(a|aa)+$ against 60 a's and a '!' backtracks for minutes in Python's re; here it gives
    up after its time budget once, warns, and the policy matches nothing from then on."""
    vhost = VirtualHost("/")
    policies = policies_for(vhost)
    policies.put(policy("evil", {"max-length": 1}, pattern="(a|aa)+$"))
    started = time.monotonic()
    for n in range(20):
        vhost.declare_queue("a" * 60 + f"!{n}", None)
    assert time.monotonic() - started < 1.0
    assert all(queue.settings.max_length is None for queue in vhost.queues.values())
    assert "policy.pattern_too_slow" in caplog.text
