"""Exchange routing in the model: topic matching and its cache, headers matching, the refcounted
direct/fanout indexes and binding identity."""

from __future__ import annotations

import functools
import random
import time
from typing import Any

import pytest

from broker.core.exchange import (
    Binding,
    DirectExchange,
    Exchange,
    FanoutExchange,
    HeadersExchange,
    TopicExchange,
    freeze,
    headers_match,
    split_words,
)
from broker.core.message import Message
from broker.core.queue import Queue
from tests.unit.helpers import make_message


def _queue(name: str) -> Queue:
    return Queue(name, "/")


def _bind(
    exchange: Exchange, queue: Queue, key: str, arguments: dict[str, Any] | None = None
) -> Binding:
    binding = Binding(exchange, queue, key, arguments or {})
    exchange.add_binding(binding)
    return binding


def _published(key: str = "", **kwargs: Any) -> tuple[Message, str]:
    """What an exchange routes: the message and the key it is routed by."""
    message = make_message(key, **kwargs)
    return message, message.routing_key


def _routed(exchange: Exchange, key: str = "", **kwargs: Any) -> set[str]:
    return {queue.name for queue in exchange.route(*_published(key, **kwargs))}


# ------------------------------------------------------------------------------------ topic

TOPIC_CASES = [
    # '*' is exactly one word
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", "", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    # '#' is zero or more words
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.b.c", False),
    ("a.#.b", "a", False),
    ("#.b.#", "b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "a.c", False),
    ("*.#", "", False),
    ("*.#", "a", True),
    ("#.*", "a.b", True),
    # the empty key has zero words; 'a..b' has an empty middle word
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    ("a.*.b", "a..b", True),
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a.b", "a..b", False),
    ("*", ".", False),
    ("*.*", ".", True),
    ("a.", "a.", True),
    ("a.", "a", False),
    # literal words are exact and case-sensitive
    ("a.b", "a.b", True),
    ("a.b", "A.b", False),
    ("a.b", "a.bc", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), TOPIC_CASES)
def test_topic_exchange_matches_rabbitmq_semantics(pattern: str, key: str, expected: bool) -> None:
    """The trie routes exactly as RabbitMQ's on '*', '#', empty keys and empty words, from a
    cold and from a warm cache."""
    exchange = TopicExchange("t")
    _bind(exchange, _queue("q"), pattern)
    want = {"q"} if expected else set()
    assert _routed(exchange, key) == want
    assert _routed(exchange, key) == want


def test_split_words_empty_key_has_no_words() -> None:
    """'' splits to no words, '.' to two empty words, 'a..b' keeps its empty middle word."""
    assert split_words("") == ()
    assert split_words(".") == ("", "")
    assert split_words("a..b") == ("a", "", "b")


def test_topic_routes_each_destination_once() -> None:
    """A queue matched by several patterns is routed to once."""
    exchange = TopicExchange("t")
    q1, q2 = _queue("q1"), _queue("q2")
    for pattern in ("a.*", "#", "a.b", "*.b"):
        _bind(exchange, q1, pattern)
    _bind(exchange, q2, "x.#")
    result = exchange.route(*_published("a.b"))
    assert list(result) == [q1]


def test_topic_cache_invalidated_on_bind() -> None:
    """A cached miss is forgotten when a matching binding is added."""
    exchange = TopicExchange("t")
    q1, q2 = _queue("q1"), _queue("q2")
    _bind(exchange, q1, "a.*")
    assert _routed(exchange, "b.c") == set()
    _bind(exchange, q2, "b.*")
    assert _routed(exchange, "b.c") == {"q2"}
    assert _routed(exchange, "a.c") == {"q1"}


def test_topic_cache_invalidated_on_unbind() -> None:
    """A cached hit is forgotten when its binding is removed."""
    exchange = TopicExchange("t")
    queue = _queue("q")
    binding = _bind(exchange, queue, "a.#")
    assert _routed(exchange, "a.b") == {"q"}
    assert exchange.remove_binding(binding.key) is binding
    assert _routed(exchange, "a.b") == set()
    assert exchange._root.children == {}


def test_topic_same_pattern_refcounted() -> None:
    """Two bindings with the same pattern (different args) keep routing until both are gone."""
    exchange = TopicExchange("t")
    queue = _queue("q")
    first = _bind(exchange, queue, "a.*", {"x": 1})
    second = _bind(exchange, queue, "a.*", {"x": 2})
    exchange.remove_binding(first.key)
    assert _routed(exchange, "a.b") == {"q"}
    exchange.remove_binding(second.key)
    assert _routed(exchange, "a.b") == set()


def test_topic_cache_limit_clears_cache() -> None:
    """The route cache never grows past CACHE_LIMIT entries; routing stays correct after a clear."""
    exchange = TopicExchange("t")
    exchange.CACHE_LIMIT = 3
    _bind(exchange, _queue("q"), "k.*")
    for i in range(3):
        assert _routed(exchange, f"k.{i}") == {"q"}
    assert len(exchange._cache) == 3
    assert _routed(exchange, "k.3") == {"q"}
    assert len(exchange._cache) == 1
    assert "k.3" in exchange._cache
    for i in range(20):
        _routed(exchange, f"z.{i}")
        assert len(exchange._cache) <= 3
    assert _routed(exchange, "k.0") == {"q"}


# ------------------------------------------------------------------------------------ headers


@pytest.mark.parametrize(
    ("arguments", "headers", "expected"),
    [
        # all (the default): every non-x- binding key must be present and equal
        ({"a": 1, "b": "x"}, {"a": 1, "b": "x"}, True),
        ({"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}, True),
        ({"a": 1, "b": "x"}, {"a": 1}, False),
        ({"a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
        ({"x-match": "all", "a": 1}, {"a": 1}, True),
        ({"x-match": "all", "a": 1}, {"a": 2}, False),
        # any: one non-x- binding key present and equal is enough
        ({"x-match": "any", "a": 1, "b": 2}, {"b": 2}, True),
        ({"x-match": "any", "a": 1, "b": 2}, {"a": 9, "b": 9}, False),
        ({"x-match": "any", "a": 1, "b": 2}, {}, False),
        # void (None) binding values mean "present, any value"
        ({"a": None}, {"a": "anything"}, True),
        ({"a": None}, {"a": None}, True),
        ({"a": None}, {"b": 1}, False),
        ({"x-match": "any", "a": None, "b": 1}, {"a": 0}, True),
        # x- keys are ignored by all / any ...
        ({"x-match": "all", "x-k": 1, "a": 1}, {"a": 1}, True),
        ({"x-match": "all", "x-k": 1}, {}, True),
        ({"x-match": "any", "x-k": 1}, {"x-k": 1}, False),
        ({"x-match": "any", "x-k": 1, "a": 1}, {"x-k": 1}, False),
        # ... and considered by all-with-x / any-with-x
        ({"x-match": "all-with-x", "x-k": 1, "a": 1}, {"a": 1}, False),
        ({"x-match": "all-with-x", "x-k": 1, "a": 1}, {"a": 1, "x-k": 1}, True),
        ({"x-match": "any-with-x", "x-k": 1}, {"x-k": 1}, True),
        ({"x-match": "any-with-x", "x-k": 1}, {"x-k": 2}, False),
        ({"x-match": "any-with-x", "x-k": None, "a": 1}, {"x-k": 5}, True),
        # no keys to compare: all matches everything, any matches nothing
        ({}, {}, True),
        ({}, {"a": 1}, True),
        ({"x-match": "all"}, {"a": 1}, True),
        ({"x-match": "any"}, {"a": 1}, False),
        ({"x-match": "any"}, {}, False),
        # strings compare equal whether a decoder produced str or bytes
        ({"a": "v"}, {"a": b"v"}, True),
        ({"a": b"v"}, {"a": "v"}, True),
        ({"x-match": b"any", "a": 1, "b": 2}, {"b": 2}, True),
    ],
)
def test_headers_match(arguments: dict[str, Any], headers: dict[str, Any], expected: bool) -> None:
    """headers_match implements RabbitMQ's x-match all/any/all-with-x/any-with-x rules."""
    assert headers_match(arguments, headers) is expected


def test_headers_match_distinguishes_bool_from_int() -> None:
    """A binding value 1 (int) does not match a header true (bool), as in RabbitMQ."""
    assert headers_match({"a": 1}, {"a": True}) is False


def test_headers_exchange_routes_by_message_headers() -> None:
    """The headers exchange decodes the message's headers and routes each queue once."""
    exchange = HeadersExchange("h")
    q1, q2 = _queue("q1"), _queue("q2")
    _bind(exchange, q1, "", {"x-match": "any", "a": 1})
    _bind(exchange, q1, "", {"x-match": "any", "b": 2})
    _bind(exchange, q2, "", {"a": 1, "b": 2})
    assert list(exchange.route(*_published(headers={"a": 1, "b": 2}))) == [q1, q2]
    assert _routed(exchange, headers={"b": 2}) == {"q1"}
    assert _routed(exchange) == set()


# ------------------------------------------------------------------------------------ direct/fanout


def test_direct_index_refcounts_same_queue_bound_twice() -> None:
    """Same queue, same key, two argument sets: routes once; stays routed until both unbind."""
    exchange = DirectExchange("d")
    queue = _queue("q")
    first = _bind(exchange, queue, "k", {"v": 1})
    second = _bind(exchange, queue, "k", {"v": 2})
    assert len(exchange.bindings) == 2
    assert list(exchange.route(*_published("k"))) == [queue]
    exchange.remove_binding(first.key)
    assert list(exchange.route(*_published("k"))) == [queue]
    exchange.remove_binding(second.key)
    assert list(exchange.route(*_published("k"))) == []
    assert exchange._by_key == {}


def test_direct_index_different_keys_same_queue() -> None:
    """One queue bound with two keys routes on both; unbinding one leaves the other."""
    exchange = DirectExchange("d")
    queue, other = _queue("q"), _queue("other")
    first = _bind(exchange, queue, "a")
    _bind(exchange, queue, "b")
    _bind(exchange, other, "a")
    assert _routed(exchange, "a") == {"q", "other"}
    assert _routed(exchange, "b") == {"q"}
    assert _routed(exchange, "c") == set()
    exchange.remove_binding(first.key)
    assert _routed(exchange, "a") == {"other"}
    assert _routed(exchange, "b") == {"q"}


def test_fanout_index_refcounts_same_queue_bound_twice() -> None:
    """Fanout ignores keys; a queue bound twice gets one copy until both bindings go."""
    exchange = FanoutExchange("f")
    queue = _queue("q")
    first = _bind(exchange, queue, "a")
    second = _bind(exchange, queue, "b", {"z": 1})
    assert list(exchange.route(*_published("anything"))) == [queue]
    exchange.remove_binding(second.key)
    assert list(exchange.route(*_published(""))) == [queue]
    exchange.remove_binding(first.key)
    assert list(exchange.route(*_published(""))) == []
    assert exchange._all == {}


def test_remove_missing_binding_is_none() -> None:
    """Removing a binding that does not exist leaves the index untouched."""
    exchange = DirectExchange("d")
    queue = _queue("q")
    _bind(exchange, queue, "k")
    assert exchange.remove_binding((id(queue), "other", ())) is None
    assert _routed(exchange, "k") == {"q"}


# ------------------------------------------------------------------------------------ identity


def test_binding_identity_same_key_and_args_is_idempotent() -> None:
    """Adding an identical binding again is refused and does not double the refcount."""
    exchange = DirectExchange("d")
    queue = _queue("q")
    assert exchange.add_binding(Binding(exchange, queue, "k", {"a": 1})) is True
    assert exchange.add_binding(Binding(exchange, queue, "k", {"a": 1})) is False
    assert len(exchange.bindings) == 1
    assert exchange._by_key["k"][queue] == 1
    exchange.remove_binding(Binding(exchange, queue, "k", {"a": 1}).key)
    assert _routed(exchange, "k") == set()


def test_binding_identity_ignores_argument_order() -> None:
    """Arguments in a different order (also nested) are the same binding, via freeze."""
    exchange = HeadersExchange("h")
    queue = _queue("q")
    first = Binding(exchange, queue, "", {"a": 1, "b": {"c": 2, "d": [1, {"e": 3, "f": 4}]}})
    second = Binding(exchange, queue, "", {"b": {"d": [1, {"f": 4, "e": 3}], "c": 2}, "a": 1})
    assert first.key == second.key
    assert exchange.add_binding(first) is True
    assert exchange.add_binding(second) is False


def test_binding_identity_distinguishes_key_args_and_destination() -> None:
    """Different key, arguments or destination make a different binding."""
    exchange = DirectExchange("d")
    q1, q2 = _queue("q1"), _queue("q2")
    keys = {
        Binding(exchange, q1, "k", {}).key,
        Binding(exchange, q1, "k2", {}).key,
        Binding(exchange, q1, "k", {"a": 1}).key,
        Binding(exchange, q1, "k", {"a": 2}).key,
        Binding(exchange, q2, "k", {}).key,
    }
    assert len(keys) == 5


def test_freeze_is_hashable_and_order_independent() -> None:
    """freeze turns tables, arrays and bytearrays into hashable, order-independent values."""
    frozen = freeze({"b": [1, bytearray(b"x")], "a": {"y": 1, "x": 2}})
    assert frozen == (("a", (("x", 2), ("y", 1))), ("b", (1, b"x")))
    hash(frozen)
    assert freeze({"a": 1, "b": 2}) == freeze({"b": 2, "a": 1})
    assert freeze([1, 2]) != freeze([2, 1])


def test_topic_trie_prunes_on_unbind_and_matches_many_patterns() -> None:
    """Unbinding removes the pattern's now-empty branch; with many patterns bound, each key
    reaches exactly the queues whose pattern matches."""
    exchange = TopicExchange("t")
    queues = [_queue(f"q{i}") for i in range(50)]
    for i, queue in enumerate(queues):
        _bind(exchange, queue, f"orders.{i}.#")
        _bind(exchange, queue, f"*.{i}.paid")
    assert _routed(exchange, "orders.7.paid") == {"q7"}
    assert _routed(exchange, "refunds.7.paid") == {"q7"}
    assert _routed(exchange, "refunds.7.open") == set()
    for binding in list(exchange.bindings.values()):
        exchange.remove_binding(binding.key)
    assert exchange._root.children == {}


# ------------------------------------------------------- topic: '#' runs, memo, adversarial keys


def reference_topic_match(pattern: str, key: str) -> bool:
    """A matcher written from the rule alone, independent of the trie: '*' takes exactly one
    word, '#' zero or more, any other pattern word must equal the key word."""
    p, k = split_words(pattern), split_words(key)

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return match(i + 1, j) or (j < len(k) and match(i, j + 1))
        return j < len(k) and p[i] in ("*", k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def _random_words(rng: random.Random, alphabet: tuple[str, ...], most: int) -> str:
    return ".".join(rng.choice(alphabet) for _ in range(rng.randint(0, most)))


def test_topic_matches_reference_on_random_patterns_and_keys() -> None:
    """Against the reference matcher: many random patterns (runs of '#', '*', empty words) bound
    at once, random keys (with literal '*' and '#' words too), before and after unbinding half.
    Each queue has one pattern, so the routed set says which patterns matched."""
    rng = random.Random(20240607)
    for _round in range(40):
        exchange = TopicExchange("t")
        patterns = {
            f"q{i}": _random_words(rng, ("a", "b", "", "*", "#", "#"), 7) for i in range(25)
        }
        bindings = {name: _bind(exchange, _queue(name), p) for name, p in patterns.items()}
        keys = [_random_words(rng, ("a", "b", "", "*", "#"), 9) for _ in range(60)]
        for key in keys:
            want = {name for name, p in patterns.items() if reference_topic_match(p, key)}
            assert _routed(exchange, key) == want, (key, patterns)
        for name in rng.sample(sorted(patterns), 12):
            exchange.remove_binding(bindings[name].key)
            del patterns[name]
        for key in keys:
            want = {name for name, p in patterns.items() if reference_topic_match(p, key)}
            assert _routed(exchange, key) == want, (key, patterns)
        for binding in list(exchange.bindings.values()):
            exchange.remove_binding(binding.key)
        assert exchange._root.children == {}


def test_topic_hash_runs_collapse_in_the_trie_only() -> None:
    """'#.#' and '#' share one trie path, yet stay two bindings with their keys as given:
    unbinding either leaves the other routing, and the trie is empty once both are gone."""
    exchange = TopicExchange("t")
    queue = _queue("q")
    double = _bind(exchange, queue, "a.#.#.b.#.#")
    single = _bind(exchange, queue, "a.#.b.#")
    assert double.key != single.key
    assert {b.routing_key for b in exchange.bindings.values()} == {"a.#.#.b.#.#", "a.#.b.#"}
    assert _routed(exchange, "a.b") == {"q"}
    assert exchange.remove_binding(single.key) is single
    assert _routed(exchange, "a.x.b.y") == {"q"}
    assert exchange.remove_binding(double.key) is double
    assert _routed(exchange, "a.x.b.y") == set()
    assert exchange._root.children == {}


# The longest keys AMQP allows (short strings: 255 bytes), with as many words as fit.
LONG_KEYS = [
    ".".join(["a"] * 128),  # 128 words, 255 bytes
    ".".join(["a"] * 127 + ["b"]),
    ".".join(["ab"] * 85),  # 85 words, 254 bytes
    "." * 127,  # 128 empty words
]

ADVERSARIAL_PATTERNS = [
    "#.#.#.#.#.#.#.#",
    "#.#.#.#.#.#.#.#.c",  # never matches: every split of the key is a dead end
    "#.*.#.*.#",
    "#.*.#.*.#.*.#.*.#.*.#.*.#.c",
    "*.#.*.#.*.#.*.#.*.#.*",
    "#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.b",
    "#..#..#..#..#",
    "#.#.*.#.#.*.#.#.*.#.#",
    ".".join(["#", "*"] * 63) + ".#",  # a 255-byte pattern
]


def _timed_route(exchange: TopicExchange, key: str) -> tuple[set[str], float]:
    """The queues `key` routes to and the best of three uncached routings, in seconds (a busy
    machine may pause any one run; an exponential matcher is slow in all three)."""
    best = float("inf")
    for _attempt in range(3):
        exchange._cache.clear()
        started = time.perf_counter()
        routed = _routed(exchange, key)
        best = min(best, time.perf_counter() - started)
    return routed, best


def test_topic_adversarial_patterns_route_long_keys_in_milliseconds() -> None:
    """Runs of '#' and '#'/'*' mixes once made matching exponential in the words of the key
    (`#.#.#.#.#.#.#.#` and a 128-word key blocked the loop for days): now each (trie node,
    position) is visited once, so a 255-byte key routes in well under 50 ms, and correctly."""
    exchange = TopicExchange("t")
    for i, pattern in enumerate(ADVERSARIAL_PATTERNS):
        _bind(exchange, _queue(f"q{i}"), pattern)
    for key in LONG_KEYS:
        want = {
            f"q{i}"
            for i, pattern in enumerate(ADVERSARIAL_PATTERNS)
            if reference_topic_match(pattern, key)
        }
        routed, best = _timed_route(exchange, key)
        assert routed == want, key
        assert best < 0.05, f"{key[:20]}...: {best * 1000:.1f} ms"


@pytest.mark.parametrize("pattern", ADVERSARIAL_PATTERNS)
def test_topic_each_adversarial_pattern_alone_is_fast(pattern: str) -> None:
    """One binding per exchange, so no other pattern's trie nodes can hide a slow one."""
    exchange = TopicExchange("t")
    _bind(exchange, _queue("q"), pattern)
    for key in LONG_KEYS:
        routed, best = _timed_route(exchange, key)
        assert routed == ({"q"} if reference_topic_match(pattern, key) else set())
        assert best < 0.05, f"{pattern} / {key[:20]}...: {best * 1000:.1f} ms"
