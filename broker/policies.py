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

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from broker.core.arguments import QueueSettings
from broker.core.exchange import Exchange
from broker.core.queue import Queue
from broker.logs import fields
from broker.patterns import BoundedPattern, PatternError, PatternTooSlow

if TYPE_CHECKING:
    from broker.core.vhost import VirtualHost

log = logging.getLogger("warren.policy")

APPLY_TO = ("queues", "exchanges", "all")
TOO_SLOW_LIMIT = 3  # slow matches after which a pattern stops applying
# A definition is a few settings; these bound what a policymaker can make the broker keep (and
# rewrite into the log at every change).
MAX_DEFINITION_BYTES = 64 * 1024
MAX_DEFINITION_DEPTH = 8
OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")


def erlang_term(value: Any) -> str:
    """A JSON value as RabbitMQ prints it in validation errors (strings are Erlang binaries)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'<<"{value}">>'
    if isinstance(value, list):
        return "[" + ",".join(erlang_term(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "[" + ",".join(f"{{{erlang_term(k)},{erlang_term(v)}}}" for k, v in value.items()) + "]"
        )
    return repr(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(test: Callable[[Any], bool], what: str) -> Callable[[Any], str | None]:
    """A check that words a refusal as RabbitMQ does: "<value> is not a valid <what>"."""

    def check(value: Any) -> str | None:
        return None if test(value) else f"{erlang_term(value)} is not a valid {what}"

    return check


_non_negative = lambda value: _is_integer(value) and value >= 0  # noqa: E731
_is_string = lambda value: isinstance(value, str)  # noqa: E731

# Policy key -> (QueueSettings field, the smaller of argument and policy wins?, value check).
QUEUE_KEYS: dict[str, tuple[str, bool, Callable[[Any], str | None]]] = {
    "message-ttl": ("message_ttl", True, _check(_non_negative, "message TTL")),
    "expires": ("expires", True, _check(lambda v: _is_integer(v) and v >= 1, "queue expiry")),
    "max-length": ("max_length", True, _check(_non_negative, "maximum length")),
    "max-length-bytes": (
        "max_length_bytes", True, _check(_non_negative, "maximum length in bytes")
    ),
    "overflow": ("overflow", False, _check(lambda v: v in OVERFLOW, "overflow value")),
    "dead-letter-exchange": (
        "dead_letter_exchange", False, _check(_is_string, "dead letter exchange name")
    ),
    "dead-letter-routing-key": (
        "dead_letter_routing_key", False, _check(_is_string, "dead letter routing key")
    ),
    "delivery-limit": ("delivery_limit", True, _check(_non_negative, "delivery limit")),
}  # fmt: skip
# The queue argument each policy key stands for.
ARGUMENT_OF = {key: f"x-{key}" for key in QUEUE_KEYS}
EXCHANGE_KEYS: dict[str, Callable[[Any], str | None]] = {
    "alternate-exchange": _check(_is_string, "alternate exchange name")
}
# Keys RabbitMQ accepts that Warren has nothing to do with (mirroring, federation, streams,
# lazy mode which RabbitMQ 3.12+ ignores too): accepted, listed, logged, not acted on.
IGNORED_KEYS: dict[str, Callable[[Any], str | None]] = {
    "queue-mode": _check(lambda v: v in ("default", "lazy"), "queue-mode value"),
    **dict.fromkeys(
        (
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
        ),
        lambda _: None,
    ),
}


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse; the message says what to fix."""


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    priority: int | float  # RabbitMQ takes any number
    definition: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", BoundedPattern(self.pattern))
        object.__setattr__(self, "slow_matches", 0)

    def matches(self, name: str, kind: str) -> bool:
        """A match that takes too long (catastrophic backtracking) counts as no match, with a
        warning; a pattern that does it TOO_SLOW_LIMIT times stops matching anything, rather
        than cost every declare its time budget. (One slow match can be a pause of the
        process, not the pattern.)"""
        slow = self.slow_matches  # type: ignore[attr-defined]
        if self.apply_to not in ("all", kind) or slow >= TOO_SLOW_LIMIT:
            return False
        try:
            return self._pattern.search(name)  # type: ignore[attr-defined]
        except PatternTooSlow:
            object.__setattr__(self, "slow_matches", slow + 1)
            log.warning(
                "policy.pattern_too_slow",
                extra=fields(
                    vhost=self.vhost,
                    policy=self.name,
                    pattern=self.pattern,
                    name=name,
                    disabled=slow + 1 >= TOO_SLOW_LIMIT,
                ),
            )
            return False

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
    """A policy from the API's JSON (or a definitions file's entry); PolicyError, worded as
    RabbitMQ words it, when it is invalid."""
    missing = [key for key in ("pattern", "definition") if body.get(key) is None]
    if missing:
        raise PolicyError("[" + ",".join(f"{{key_missing,{key}}}" for key in missing) + "]")
    pattern, definition = body["pattern"], body["definition"]
    apply_to = body.get("apply-to", "all")
    priority = body.get("priority", 0)
    problems = [
        _definition_problem(definition),
        None
        if apply_to in APPLY_TO
        else f"apply-to '{erlang_term(apply_to) if not isinstance(apply_to, str) else apply_to}'"
        " unrecognised; should be 'queues', 'exchanges' or 'all'",
        _pattern_problem(pattern),
        None
        if isinstance(priority, int | float) and not isinstance(priority, bool)
        else f"priority should be a number, actually was {erlang_term(priority)}",
    ]
    found = [problem for problem in problems if problem is not None]
    if found:
        text = "".join(f"{problem}\n" for problem in found)
        raise PolicyError("Validation failed\n\n" + text.replace("<", "&lt;").replace(">", "&gt;"))
    return Policy(vhost, name, pattern, apply_to, priority, dict(definition))


def _definition_problem(definition: Any) -> str | None:
    """The first bad known setting (in key order), then the unknown ones."""
    if not isinstance(definition, dict) or not definition:
        return "no policy provided"
    size = len(json.dumps(definition))
    if size > MAX_DEFINITION_BYTES:
        return f"definition is {size} bytes; at most {MAX_DEFINITION_BYTES}"
    if _depth(definition) > MAX_DEFINITION_DEPTH:
        return f"definition is nested deeper than {MAX_DEFINITION_DEPTH} levels"
    unknown = []
    for key in sorted(definition, key=lambda k: k.encode()):
        check = QUEUE_KEYS[key][2] if key in QUEUE_KEYS else _OTHER_KEYS.get(key)
        if check is None:
            unknown.append(key)
            continue
        problem = check(definition[key])
        if problem is not None:
            return problem
    if unknown:
        pairs = ",".join(
            f"{{{erlang_term(key)},{erlang_term(definition[key])}}}" for key in unknown
        )
        return f"[{pairs}] are not recognised policy settings"
    return None


def _depth(value: Any) -> int:
    """How deep JSON data nests, without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            pending += ((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending += ((child, depth + 1) for child in item)
    return deepest


def _pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return f"pattern should be a binary but was {erlang_term(pattern)}"
    try:
        BoundedPattern(pattern)
    except PatternError as error:
        return (
            "pattern should be regular expression but is invalid:"
            f' {{"{error.message}",{error.position}}}'
        )
    return None


_OTHER_KEYS = {**EXCHANGE_KEYS, **IGNORED_KEYS}


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
        """By priority, then name, as RabbitMQ lists them."""
        policies = [policy for by_name in self.by_vhost.values() for policy in by_name.values()]
        return sorted(policies, key=lambda p: (p.priority, p.name.encode(), p.vhost))

    def get(self, vhost: str, name: str) -> Policy | None:
        return self.by_vhost.get(vhost, {}).get(name)

    def _change(self, vhost: str, policies: dict[str, Policy]) -> None:
        """Adopt the vhost's new policies once the log has them; if it refuses, nothing
        changes (and nothing is re-applied)."""
        previous = self.by_vhost.get(vhost, {})
        self.by_vhost[vhost] = policies
        try:
            self._changed()
        except BaseException:
            self.by_vhost[vhost] = previous
            raise

    def put(self, policy: Policy) -> bool:
        """Set (or replace) a policy and apply it; True when it is new."""
        current = self.by_vhost.get(policy.vhost, {})
        created = policy.name not in current
        self._change(policy.vhost, {**current, policy.name: policy})
        ignored = sorted(key for key in policy.definition if key in IGNORED_KEYS)
        if ignored:
            log.info(
                "policy.settings_ignored",
                extra=fields(vhost=policy.vhost, policy=policy.name, keys=",".join(ignored)),
            )
        self.apply(policy.vhost)
        return created

    def delete(self, vhost: str, name: str) -> bool:
        current = self.by_vhost.get(vhost, {})
        if name not in current:
            return False
        self._change(vhost, {n: p for n, p in current.items() if n != name})
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
