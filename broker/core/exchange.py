"""Exchanges and their routing: direct, fanout, topic and headers.

An exchange holds its outgoing bindings and an index built for its type, so routing a message is a
dictionary lookup (direct), a copy-free view (fanout), a cached match (topic) or a scan of bindings
with arguments (headers). Destinations are queues or, for exchange-to-exchange bindings, other
exchanges; the vhost expands those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from broker.core.fields import field_type_name
from broker.core.message import Message

if TYPE_CHECKING:
    from broker.core.queue import Queue

EMPTY: tuple = ()


def freeze(value: Any) -> Any:
    """A hashable, order-independent form of a field-table value (binding identity)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


class Binding:
    __slots__ = ("arguments", "destination", "key", "routing_key", "source")

    def __init__(
        self, source: Exchange, destination: Any, routing_key: str, arguments: dict[str, Any]
    ) -> None:
        self.source = source
        self.destination = destination
        self.routing_key = routing_key
        self.arguments = arguments
        self.key = (id(destination), routing_key, freeze(arguments))


class Exchange(ABC):
    """Base exchange: bindings bookkeeping shared by every type."""

    type_name = ""

    def __init__(
        self,
        name: str,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.bindings: dict[tuple, Binding] = {}
        # Bindings where this exchange is the destination (exchange-to-exchange), for cleanup.
        self.incoming: dict[tuple, Binding] = {}
        # How many bindings lead to another exchange: zero means routing needs no expansion.
        self.exchange_destinations = 0

    @property
    def alternate_exchange(self) -> str | None:
        value = self.arguments.get("alternate-exchange")
        return value if isinstance(value, str) else None

    def add_binding(self, binding: Binding) -> bool:
        """Add a binding; False when an identical one exists (binding is idempotent)."""
        if binding.key in self.bindings:
            return False
        self.bindings[binding.key] = binding
        if isinstance(binding.destination, Exchange):
            self.exchange_destinations += 1
        self._index_add(binding)
        return True

    def remove_binding(self, key: tuple) -> Binding | None:
        binding = self.bindings.pop(key, None)
        if binding is not None:
            if isinstance(binding.destination, Exchange):
                self.exchange_destinations -= 1
            self._index_remove(binding)
        return binding

    @abstractmethod
    def route(self, message: Message) -> Collection[Any]:
        """The destinations a message goes to, without duplicates."""

    @abstractmethod
    def _index_add(self, binding: Binding) -> None:
        """Keep the type's routing index in step with a new binding."""

    @abstractmethod
    def _index_remove(self, binding: Binding) -> None:
        """Keep the type's routing index in step with a removed binding."""


def _count_add(index: dict[Any, int], destination: Any) -> None:
    index[destination] = index.get(destination, 0) + 1


def _count_remove(index: dict[Any, int], destination: Any) -> None:
    left = index[destination] - 1
    if left:
        index[destination] = left
    else:
        del index[destination]


class DirectExchange(Exchange):
    type_name = "direct"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # routing key -> {destination: number of bindings with that key}
        self._by_key: dict[str, dict[Any, int]] = {}

    def route(self, message: Message) -> Collection[Any]:
        return self._by_key.get(message.routing_key, EMPTY)

    def _index_add(self, binding: Binding) -> None:
        _count_add(self._by_key.setdefault(binding.routing_key, {}), binding.destination)

    def _index_remove(self, binding: Binding) -> None:
        index = self._by_key[binding.routing_key]
        _count_remove(index, binding.destination)
        if not index:
            del self._by_key[binding.routing_key]


class FanoutExchange(Exchange):
    type_name = "fanout"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._all: dict[Any, int] = {}

    def route(self, message: Message) -> Collection[Any]:
        return self._all

    def _index_add(self, binding: Binding) -> None:
        _count_add(self._all, binding.destination)

    def _index_remove(self, binding: Binding) -> None:
        _count_remove(self._all, binding.destination)


def split_words(key: str) -> tuple[str, ...]:
    """RabbitMQ splits topic keys on '.'; the empty key has no words at all."""
    return tuple(key.split(".")) if key else ()


def topic_matches(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """Match as RabbitMQ does: '*' is exactly one word, '#' is zero or more words."""
    # reachable[j]: the pattern prefix seen so far can consume exactly words[:j]
    reachable = [True] + [False] * len(words)
    for token in pattern:
        if token == "#":
            for j in range(1, len(words) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            for j in range(len(words), 0, -1):
                reachable[j] = reachable[j - 1] and (token == "*" or token == words[j - 1])
            reachable[0] = False
    return reachable[-1]


class TopicExchange(Exchange):
    type_name = "topic"
    CACHE_LIMIT = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # pattern words -> {destination: count}
        self._patterns: dict[tuple[str, ...], dict[Any, int]] = {}
        self._cache: dict[str, tuple] = {}

    def route(self, message: Message) -> Collection[Any]:
        key = message.routing_key
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        words = split_words(key)
        found: dict[Any, None] = {}
        for pattern, destinations in self._patterns.items():
            if topic_matches(pattern, words):
                found.update(dict.fromkeys(destinations))
        result = tuple(found)
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _index_add(self, binding: Binding) -> None:
        pattern = split_words(binding.routing_key)
        _count_add(self._patterns.setdefault(pattern, {}), binding.destination)
        self._cache.clear()

    def _index_remove(self, binding: Binding) -> None:
        pattern = split_words(binding.routing_key)
        index = self._patterns[pattern]
        _count_remove(index, binding.destination)
        if not index:
            del self._patterns[pattern]
        self._cache.clear()


# RabbitMQ compares header values only within a type class (rabbit_misc:type_class).
_TYPE_CLASSES = {"signedint": "int", "long": "int", "double": "float", "longstr": "binary"}


def _type_class(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "binary"
    name = field_type_name(value)
    return _TYPE_CLASSES.get(name, name)


def _values_equal(expected: Any, actual: Any) -> bool:
    if _type_class(expected) != _type_class(actual):
        return False
    if isinstance(expected, bytes | bytearray) or isinstance(actual, bytes | bytearray):
        as_bytes = [v.encode() if isinstance(v, str) else bytes(v) for v in (expected, actual)]
        return as_bytes[0] == as_bytes[1]
    return expected == actual


def headers_match(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    """RabbitMQ's x-match semantics: all/any ignore x- keys, all-with-x/any-with-x consider them."""
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode.endswith("-with-x")
    want_all = not mode.startswith("any")
    matched_any = False
    for key, expected in arguments.items():
        if key == "x-match" or (not with_x and key.startswith("x-")):
            continue
        ok = key in headers and (expected is None or _values_equal(expected, headers[key]))
        if ok:
            matched_any = True
            if not want_all:
                return True
        elif want_all:
            return False
    return want_all or matched_any


class HeadersExchange(Exchange):
    type_name = "headers"

    def _index_add(self, binding: Binding) -> None:
        """Headers routing tests every binding's arguments, so there is no index to keep."""

    def _index_remove(self, binding: Binding) -> None:
        """Headers routing tests every binding's arguments, so there is no index to keep."""

    def route(self, message: Message) -> Collection[Any]:
        headers = message.headers
        found: dict[Any, None] = {}
        for binding in self.bindings.values():
            if binding.destination not in found and headers_match(binding.arguments, headers):
                found[binding.destination] = None
        return found


class DefaultExchange(DirectExchange):
    """The nameless direct exchange every queue is implicitly bound to by its own name."""

    def __init__(self, queues: dict[str, Queue]) -> None:
        super().__init__("", durable=True)
        self._queues = queues

    def route(self, message: Message) -> Collection[Any]:
        queue = self._queues.get(message.routing_key)
        return (queue,) if queue is not None else EMPTY


EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    cls.type_name: cls for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange)
}


def validate_headers_binding(arguments: dict[str, Any]) -> str | None:
    """An error text for a bad x-match value, as RabbitMQ refuses it, or None."""
    mode = arguments.get("x-match")
    if mode is None:
        return None
    if isinstance(mode, bytes):
        mode = mode.decode(errors="replace")
    if mode not in ("all", "any", "all-with-x", "any-with-x"):
        return (
            f'Invalid x-match field value <<"{mode}">>;'
            " expected all, any, all-with-x, or any-with-x"
        )
    return None
