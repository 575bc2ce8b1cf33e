"""Queue arguments: checked as RabbitMQ checks them, then kept as typed settings.

RabbitMQ validates each `x-` argument it knows at declare (rabbit_amqqueue:declare_args) and
answers a bad one with 406 and a reply text that prints the Erlang reason, e.g.
`invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}`. Warren gives the
same texts, so code that matches on them keeps working. What a queue does with its settings
lives in the modules that act on them (expiry, limits, dead-lettering).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.core.errors import PRECONDITION_FAILED, ChannelException
from broker.core.fields import field_type_name
from broker.core.properties import MAX_EXPIRY_MS

MAX_PRIORITY = 255
OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_MODES = ("default", "lazy")
# Arguments of quorum and stream queues that RabbitMQ refuses on a classic queue.
# x-delivery-limit is not among them: Warren gives every queue type a delivery limit.
NOT_FOR_CLASSIC_QUEUES = (
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-quorum-initial-group-size",
    "x-dead-letter-strategy",
    "x-queue-leader-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
)
# Arguments RabbitMQ accepts that Warren accepts without acting on them; declaring one logs it.
# x-queue-mode: every classic queue keeps the bodies of persistent messages in the log already
# (RabbitMQ 3.12+ ignores it too); the others place replicas in a cluster or tune quorum queues.
IGNORED_QUEUE_ARGS = frozenset(
    (
        "x-queue-mode",
        "x-queue-master-locator",
        "x-ha-policy",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-quorum-initial-group-size",
        "x-initial-cluster-size",
        "x-queue-leader-locator",
        "x-dead-letter-strategy",
    )
)


class InvalidArgument(Exception):
    """One argument's Erlang-style reason, e.g. `{value_negative,-1}`."""


class InvalidType(Exception):
    """An argument of the wrong type where RabbitMQ words it as "invalid type 'T' for arg"."""


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What a queue's arguments ask for; None where the argument is absent."""

    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_priority: int | None = None
    single_active_consumer: bool = False
    delivery_limit: int | None = None
    consumer_timeout: int | None = None  # ms
    deduplicate: bool = False  # x-message-deduplication (the deduplication plugin's)

    @property
    def limited(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None


def _unacceptable(value: Any) -> InvalidArgument:
    return InvalidArgument(f"{{unacceptable_type,{field_type_name(value)}}}")


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f'"expected integer, got {field_type_name(value)}"')
    return value


def _non_negative(value: Any) -> int:
    number = _integer(value)
    if number < 0:
        raise InvalidArgument(f"{{value_negative,{number}}}")
    return number


def _expiry(value: Any) -> int:
    number = _integer(value)
    if number < 0:
        raise InvalidArgument(f"{{value_negative,{number}}}")
    if number > MAX_EXPIRY_MS:
        raise InvalidArgument(f"{{value_too_large,{number}}}")
    return number


def _expires(value: Any) -> int:
    if _integer(value) == 0:
        raise InvalidArgument("{value_zero,0}")
    return _expiry(value)


def _max_priority(value: Any) -> int:
    number = _non_negative(value)
    if number > MAX_PRIORITY:
        raise InvalidArgument(f"{{max_value_exceeded,{number}}}")
    return number


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise _unacceptable(value)
    return value


def _exchange_name(value: Any) -> str:
    if not isinstance(value, str | bytes):
        raise InvalidType(field_type_name(value))
    return _text(value)


def _overflow(value: Any) -> str:
    mode = _text(value)
    if mode not in OVERFLOW_MODES:
        raise InvalidArgument("invalid_overflow")
    return mode


def _queue_mode(value: Any) -> str:
    mode = _text(value)
    if mode not in QUEUE_MODES:
        raise InvalidArgument(f"\"unsupported queue mode '{mode}'\"")
    return mode


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _unacceptable(value)
    return value


# Argument -> (settings field or "" when only checked, parser), in RabbitMQ's checking order.
_PARSERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "x-expires": ("expires", _expires),
    "x-message-ttl": ("message_ttl", _expiry),
    "x-dead-letter-exchange": ("dead_letter_exchange", _exchange_name),
    "x-dead-letter-routing-key": ("dead_letter_routing_key", _text),
    "x-max-length": ("max_length", _non_negative),
    "x-max-length-bytes": ("max_length_bytes", _non_negative),
    "x-max-priority": ("max_priority", _max_priority),
    "x-overflow": ("overflow", _overflow),
    "x-queue-mode": ("", _queue_mode),
    "x-single-active-consumer": ("single_active_consumer", _boolean),
    "x-delivery-limit": ("delivery_limit", _non_negative),
    "x-consumer-timeout": ("consumer_timeout", _expires),
    "x-message-deduplication": ("deduplicate", _boolean),
}


def invalid_type(key: str, kind: object, where: str) -> ChannelException:
    """RabbitMQ's wording for an exchange name argument that is not a string."""
    return ChannelException(
        PRECONDITION_FAILED, f"invalid type '{kind}' for arg '{key}' in {where}"
    )


def check_alternate_exchange(arguments: dict[str, Any], where: str) -> None:
    """An exchange's `alternate-exchange` must name an exchange (a string)."""
    value = arguments.get("alternate-exchange")
    if value is not None and not isinstance(value, str | bytes):
        raise invalid_type("alternate-exchange", field_type_name(value), where)


def _quorum_delivery_limit(value: Any) -> int | None:
    """RabbitMQ's quorum queues take any x-delivery-limit: a negative integer acts as 0, and
    anything that is not an integer sets no limit (it compares above every count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return max(value, 0)


def queue_settings(
    arguments: dict[str, Any], where: str, queue_type: str = "classic"
) -> QueueSettings:
    """Check a declare's arguments; raise RabbitMQ's 406 for the first bad one, in RabbitMQ's
    order (the dead-letter exchange's type first, then its declare_args list).

    `where` is how the queue is named in errors ("queue 'q' in vhost '/'")."""
    if "x-dead-letter-exchange" in arguments:
        try:
            _exchange_name(arguments["x-dead-letter-exchange"])
        except InvalidType as kind:
            raise invalid_type("x-dead-letter-exchange", kind, where) from None
    if queue_type == "classic":
        for key in NOT_FOR_CLASSIC_QUEUES:
            if key in arguments:
                raise ChannelException(
                    PRECONDITION_FAILED,
                    f"invalid arg '{key}' for {where} of queue type rabbit_classic_queue",
                )
    values: dict[str, Any] = {}
    for key, (field, parse) in _PARSERS.items():
        if key not in arguments or (key == "x-delivery-limit" and queue_type == "quorum"):
            continue
        value = arguments[key]
        try:
            parsed = parse(value)
            if key == "x-dead-letter-routing-key" and "x-dead-letter-exchange" not in arguments:
                raise InvalidArgument("routing_key_but_no_dlx_defined")
        except InvalidArgument as reason:
            raise ChannelException(
                PRECONDITION_FAILED, f"invalid arg '{key}' for {where}: {reason}"
            ) from None
        if field:
            values[field] = parsed
    if queue_type == "quorum" and "x-delivery-limit" in arguments:
        values["delivery_limit"] = _quorum_delivery_limit(arguments["x-delivery-limit"])
    return QueueSettings(**values)
