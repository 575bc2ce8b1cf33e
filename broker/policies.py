"""Policies, as `rabbitmqctl set_policy` defines them: per vhost, a name, a regex searched in
queue or exchange names, what they apply to, a priority, and a definition of settings.

At most one policy applies to an object: the matching one with the highest priority (the
definitions of several matching policies never merge). A policy's setting fills in for a
queue argument the queue was not declared with; where both exist, RabbitMQ's rule decides:
the smaller value for limits and TTLs, the argument for everything else. Setting, changing or
clearing a policy re-applies it at once to every queue and exchange in the vhost, so a length
limit trims a queue that is already too long.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from broker.core.arguments import QueueSettings
from broker.core.exchange import Exchange
from broker.core.queue import Queue
from broker.logs import fields

if TYPE_CHECKING:
    from broker.core.vhost import VirtualHost

log = logging.getLogger("warren.policy")

APPLY_TO = ("queues", "exchanges", "all")
OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")


def _non_negative(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else f"{value!r} is not a non-negative integer"


def _positive(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else f"{value!r} is not a positive integer"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"{value!r} is not a string"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"

    return check


# Policy key -> (QueueSettings field, the smaller of argument and policy wins?, value check).
QUEUE_KEYS: dict[str, tuple[str, bool, Callable[[Any], str | None]]] = {
    "message-ttl": ("message_ttl", True, _non_negative),
    "expires": ("expires", True, _positive),
    "max-length": ("max_length", True, _non_negative),
    "max-length-bytes": ("max_length_bytes", True, _non_negative),
    "overflow": ("overflow", False, _one_of(OVERFLOW)),
    "dead-letter-exchange": ("dead_letter_exchange", False, _string),
    "dead-letter-routing-key": ("dead_letter_routing_key", False, _string),
    "delivery-limit": ("delivery_limit", True, _non_negative),
}
# The queue argument each policy key stands for.
ARGUMENT_OF = {key: f"x-{key}" for key in QUEUE_KEYS}
EXCHANGE_KEYS: dict[str, Callable[[Any], str | None]] = {"alternate-exchange": _string}
# Keys RabbitMQ accepts that Warren has nothing to do with (mirroring, federation, streams,
# lazy mode which RabbitMQ 3.12+ ignores too): accepted, listed, logged, not acted on.
IGNORED_KEYS = frozenset(
    (
        "queue-mode",
        "ha-mode",
        "ha-params",
        "ha-sync-mode",
        "ha-sync-batch-size",
        "ha-promote-on-shutdown",
        "ha-promote-on-failure",
        "queue-master-locator",
        "federation-upstream",
        "federation-upstream-set",
        "max-age",
        "stream-max-segment-size-bytes",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "dead-letter-strategy",
        "single-active-consumer",
    )
)


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse; the message says what to fix."""


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def matches(self, name: str, kind: str) -> bool:
        if self.apply_to not in ("all", kind):
            return False
        return self._regex.search(name) is not None  # type: ignore[attr-defined]

    def row(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to,
            "definition": self.definition,
            "priority": self.priority,
        }


def parse_policy(vhost: str, name: str, body: dict[str, Any]) -> Policy:
    """A policy from the API's JSON (or a definitions file's entry); PolicyError if invalid."""
    pattern = body.get("pattern")
    if not isinstance(pattern, str):
        raise PolicyError("pattern is missing: a regular expression over object names")
    try:
        re.compile(pattern)
    except re.error as error:
        raise PolicyError(
            f"pattern {pattern!r} is not a valid regular expression: {error}"
        ) from None
    apply_to = body.get("apply-to", "all")
    if apply_to not in APPLY_TO:
        raise PolicyError(f"apply-to {apply_to!r} is not one of {', '.join(APPLY_TO)}")
    priority = body.get("priority", 0)
    if isinstance(priority, str) and priority.lstrip("-").isdigit():
        priority = int(priority)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise PolicyError(f"priority {priority!r} is not an integer")
    definition = body.get("definition")
    if not isinstance(definition, dict) or not definition:
        raise PolicyError("definition must be a non-empty JSON object of policy settings")
    unknown = [key for key in definition if key not in _ALL_KEYS]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise PolicyError(f"{names} are not recognised policy settings")
    for key, value in definition.items():
        check = QUEUE_KEYS[key][2] if key in QUEUE_KEYS else EXCHANGE_KEYS.get(key)
        problem = check(value) if check is not None else None
        if problem is not None:
            raise PolicyError(f"{key}: {problem}")
    if "dead-letter-routing-key" in definition and "dead-letter-exchange" not in definition:
        raise PolicyError("dead-letter-routing-key requires dead-letter-exchange in the policy")
    return Policy(vhost, name, pattern, apply_to, priority, dict(definition))


_ALL_KEYS = frozenset(QUEUE_KEYS) | frozenset(EXCHANGE_KEYS) | IGNORED_KEYS


def effective_settings(queue: Queue, policy: Policy | None) -> QueueSettings:
    """The queue's declared settings with the policy's filled in, by RabbitMQ's precedence."""
    settings = queue.declared_settings
    if policy is None:
        return settings
    changes: dict[str, Any] = {}
    for key, value in policy.definition.items():
        if key not in QUEUE_KEYS:
            continue
        field_name, smaller_wins, _ = QUEUE_KEYS[key]
        if key == "delivery-limit" and queue.queue_type != "quorum":
            continue  # classic queues have no delivery limit in RabbitMQ 3.10
        declared = ARGUMENT_OF[key] in queue.arguments
        current = getattr(settings, field_name)
        if not declared:
            changes[field_name] = value
        elif smaller_wins and current is not None:
            changes[field_name] = min(current, value)
    return replace(settings, **changes) if changes else settings


class Policies:
    """Every vhost's policies; `changed` is told when they change (the log keeps them)."""

    def __init__(
        self, vhosts: Callable[[], dict[str, VirtualHost]], changed: Callable[[], None]
    ) -> None:
        self._vhosts = vhosts
        self._changed = changed
        self.by_vhost: dict[str, dict[str, Policy]] = {}

    def all(self) -> list[Policy]:
        return [
            policy
            for vhost in sorted(self.by_vhost)
            for _, policy in sorted(self.by_vhost[vhost].items())
        ]

    def get(self, vhost: str, name: str) -> Policy | None:
        return self.by_vhost.get(vhost, {}).get(name)

    def put(self, policy: Policy) -> bool:
        """Set (or replace) a policy and apply it; True when it is new."""
        policies = self.by_vhost.setdefault(policy.vhost, {})
        created = policy.name not in policies
        policies[policy.name] = policy
        ignored = sorted(key for key in policy.definition if key in IGNORED_KEYS)
        if ignored:
            log.info(
                "policy.settings_ignored",
                extra=fields(vhost=policy.vhost, policy=policy.name, keys=",".join(ignored)),
            )
        self._changed()
        self.apply(policy.vhost)
        return created

    def delete(self, vhost: str, name: str) -> bool:
        if self.by_vhost.get(vhost, {}).pop(name, None) is None:
            return False
        self._changed()
        self.apply(vhost)
        return True

    def forget_vhost(self, vhost: str) -> None:
        self.by_vhost.pop(vhost, None)

    def replace_all(self, policies: Iterable[Policy]) -> None:
        """At start, from the log (not logged again)."""
        self.by_vhost = {}
        for policy in policies:
            self.by_vhost.setdefault(policy.vhost, {})[policy.name] = policy

    def for_object(self, vhost: str, name: str, kind: str) -> Policy | None:
        """The one policy that applies: the highest priority, then the first by name."""
        best: Policy | None = None
        for _, policy in sorted(self.by_vhost.get(vhost, {}).items()):
            if policy.matches(name, kind) and (best is None or policy.priority > best.priority):
                best = policy
        return best

    def row_for_queue(self, queue: Queue) -> dict[str, Any] | None:
        policy = self.for_object(queue.vhost_name, queue.name, "queues")
        return policy.row() if policy is not None else None

    def row_for_exchange(self, vhost: VirtualHost, exchange: Exchange) -> dict[str, Any] | None:
        if not exchange.name:
            return None
        policy = self.for_object(vhost.name, exchange.name, "exchanges")
        return policy.row() if policy is not None else None

    # ------------------------------------------------------------------ applying
    def apply(self, vhost_name: str) -> None:
        """Re-apply the vhost's policies to each of its queues and exchanges."""
        vhost = self._vhosts().get(vhost_name)
        if vhost is None:
            return
        for queue in list(vhost.queues.values()):
            self.apply_to_queue(vhost, queue)
        for exchange in vhost.exchanges.values():
            self.apply_to_exchange(vhost, exchange)

    def apply_to_queue(self, vhost: VirtualHost, queue: Queue) -> None:
        policy = self.for_object(vhost.name, queue.name, "queues")
        settings = effective_settings(queue, policy)
        if settings != queue.settings:
            vhost.resettle(queue, settings)

    def apply_to_exchange(self, vhost: VirtualHost, exchange: Exchange) -> None:
        if not exchange.name:
            return
        policy = self.for_object(vhost.name, exchange.name, "exchanges")
        value = policy.definition.get("alternate-exchange") if policy is not None else None
        exchange.policy_alternate_exchange = value
