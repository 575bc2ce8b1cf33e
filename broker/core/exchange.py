"""Exchanges and their routing: direct, fanout, topic and headers.

An exchange holds its outgoing bindings and an index built for its type, so routing a message is a
dictionary lookup (direct), a copy-free view (fanout), a cached match (topic) or a scan of bindings
with arguments (headers). Destinations are queues or, for exchange-to-exchange bindings, other
exchanges; the vhost expands those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, ClassVar

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

    type_name: ClassVar[str] = ""
    # False where routing ignores the routing key: a publish with CC / BCC keys is routed
    # once, not once per key.
    routes_by_key = True

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
        self.policy_alternate_exchange: str | None = None  # set by a policy
        self.declared_by = "rmq-internal"  # the user who declared it (RabbitMQ's name for none)
        self._index_reset()

    @property
    def alternate_exchange(self) -> str | None:
        """The argument's, else a policy's (RabbitMQ: the argument wins)."""
        value = self.arguments.get("alternate-exchange")
        return value if isinstance(value, str) else self.policy_alternate_exchange

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
    def route(self, message: Message, key: str) -> Collection[Any]:
        """The destinations a message with this routing key goes to, without duplicates (the
        key is the publish's, or one of its CC / BCC keys)."""

    @abstractmethod
    def _index_reset(self) -> None:
        """Start the type's routing index empty (a hook of __init__, so that subclasses keep
        its signature without restating it)."""

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

    # routing key -> {destination: number of bindings with that key}
    _by_key: dict[str, dict[Any, int]]

    def _index_reset(self) -> None:
        self._by_key = {}

    def route(self, message: Message, key: str) -> Collection[Any]:
        return self._by_key.get(key, EMPTY)

    def _index_add(self, binding: Binding) -> None:
        _count_add(self._by_key.setdefault(binding.routing_key, {}), binding.destination)

    def _index_remove(self, binding: Binding) -> None:
        index = self._by_key[binding.routing_key]
        _count_remove(index, binding.destination)
        if not index:
            del self._by_key[binding.routing_key]


class FanoutExchange(Exchange):
    type_name = "fanout"
    routes_by_key = False

    _all: dict[Any, int]

    def _index_reset(self) -> None:
        self._all = {}

    def route(self, message: Message, key: str) -> Collection[Any]:
        return self._all

    def _index_add(self, binding: Binding) -> None:
        _count_add(self._all, binding.destination)

    def _index_remove(self, binding: Binding) -> None:
        _count_remove(self._all, binding.destination)


def split_words(key: str) -> tuple[str, ...]:
    """RabbitMQ splits topic keys on '.'; the empty key has no words at all."""
    return tuple(key.split(".")) if key else ()


def topic_path(key: str) -> tuple[str, ...]:
    """The trie path of a binding pattern: its words, with each run of '#' collapsed to one.

    '#.#' matches exactly what '#' matches (zero or more words), so the run adds nothing but
    ways to match the same words; collapsed, no '#' node has a '#' child. Only the trie uses this
    path: the binding keeps the routing key as given (identity, unbind, listings)."""
    words = split_words(key)
    if "#" not in words:
        return words
    path: list[str] = []
    for word in words:
        if word != "#" or not path or path[-1] != "#":
            path.append(word)
    return tuple(path)


class _TopicNode:
    """One word position of the binding-pattern trie: children by word ('*' and '#' included)
    and the destinations of patterns that end here, with binding counts."""

    __slots__ = ("children", "destinations")

    def __init__(self) -> None:
        self.children: dict[str, _TopicNode] = {}
        self.destinations: dict[Any, int] = {}


def _trie_match(
    node: _TopicNode,
    words: tuple[str, ...],
    at: int,
    found: dict[Any, None],
    hash_done: dict[_TopicNode, int] | None = None,
) -> None:
    """RabbitMQ's semantics: '*' is exactly one word, '#' zero or more.

    Without '#' every node is reached by one path, at one position. Through '#' a node could be
    reached at the same position in many ways (exponentially many for '#.*.#.*.#' and a long
    key), so `hash_done` remembers, per '#' node, the lowest position it was entered at: entered
    at p, the node has matched every position from p to the end, and a later entry at p' >= p
    has nothing left to do. Each (node, position) pair is thus visited at most once: routing
    costs O(words x trie nodes). The memo is made at the first '#' met (a '#' node with no '#'
    above it is entered once), so keys that meet no '#' pay nothing for it."""
    hash_node = node.children.get("#")
    if hash_node is not None:
        if hash_done is None:
            hash_done = {}
        _hash_match(hash_node, words, at, found, hash_done)
    if at == len(words):
        if node.destinations:
            found.update(dict.fromkeys(node.destinations))
        return
    word = words[at]
    if word != "*" and word != "#":  # those key words only match the wildcards, below
        child = node.children.get(word)
        if child is not None:
            _trie_match(child, words, at + 1, found, hash_done)
    star = node.children.get("*")
    if star is not None:
        _trie_match(star, words, at + 1, found, hash_done)


def _hash_match(
    hash_node: _TopicNode,
    words: tuple[str, ...],
    at: int,
    found: dict[Any, None],
    hash_done: dict[_TopicNode, int],
) -> None:
    """A '#' node entered at `at`: the '#' takes words[at:start] for every start not yet done.
    Its children are never '#' (runs are collapsed), and no descendant leads back to it."""
    end = hash_done.get(hash_node)
    if end is None:
        end = len(words) + 1
    elif at >= end:
        return
    hash_done[hash_node] = at
    children = hash_node.children
    star = children.get("*")
    for start in range(at, end):
        if start == len(words):
            if hash_node.destinations:
                found.update(dict.fromkeys(hash_node.destinations))
            break
        word = words[start]
        if word != "*" and word != "#":
            child = children.get(word)
            if child is not None:
                _trie_match(child, words, start + 1, found, hash_done)
        if star is not None:
            _trie_match(star, words, start + 1, found, hash_done)


class TopicExchange(Exchange):
    """Patterns live in a word trie, as in RabbitMQ, so routing costs the words of the key, not
    the number of bindings; recent keys are cached until a binding changes."""

    type_name = "topic"
    CACHE_LIMIT = 4096  # keys
    # Destinations held by all cached results together: a key that routes to thousands of
    # destinations must not make the cache hold millions of references.
    CACHE_DESTINATIONS_LIMIT = 65_536

    _root: _TopicNode
    _cache: dict[str, tuple]
    _cached_destinations: int

    def _index_reset(self) -> None:
        self._root = _TopicNode()
        self._cache = {}
        self._cached_destinations = 0

    def route(self, message: Message, key: str) -> Collection[Any]:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found: dict[Any, None] = {}
        _trie_match(self._root, split_words(key), 0, found)
        result = tuple(found)
        self._cached_destinations += len(result)
        if (
            len(self._cache) >= self.CACHE_LIMIT
            or self._cached_destinations > self.CACHE_DESTINATIONS_LIMIT
        ):
            self._cache.clear()
            self._cached_destinations = len(result)
        self._cache[key] = result
        return result

    def _forget_routes(self) -> None:
        self._cache.clear()
        self._cached_destinations = 0

    def _index_add(self, binding: Binding) -> None:
        node = self._root
        for word in topic_path(binding.routing_key):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _TopicNode()
            node = child
        _count_add(node.destinations, binding.destination)
        self._forget_routes()

    def _index_remove(self, binding: Binding) -> None:
        # Patterns that collapse to one path ('#.#' and '#') share its node; the destination
        # count there keeps the others routing.
        path = [self._root]
        words = topic_path(binding.routing_key)
        for word in words:
            path.append(path[-1].children[word])
        _count_remove(path[-1].destinations, binding.destination)
        for depth in range(len(words), 0, -1):  # prune the branch nodes left empty
            node = path[depth]
            if node.children or node.destinations:
                break
            del path[depth - 1].children[words[depth - 1]]
        self._forget_routes()


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
    routes_by_key = False

    def _index_reset(self) -> None:
        """Headers routing tests every binding's arguments, so there is no index to keep."""

    def _index_add(self, binding: Binding) -> None:
        """Headers routing tests every binding's arguments, so there is no index to keep."""

    def _index_remove(self, binding: Binding) -> None:
        """Headers routing tests every binding's arguments, so there is no index to keep."""

    def route(self, message: Message, key: str) -> Collection[Any]:
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

    def route(self, message: Message, key: str) -> Collection[Any]:
        queue = self._queues.get(key)
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
