"""Deduplication, with the arguments of the rabbitmq-message-deduplication plugin.

- Exchange type `x-message-deduplication` (routes as fanout), `x-cache-size` (required),
  `x-cache-ttl` (ms, optional; a message's own `x-cache-ttl` header overrides it),
  `x-cache-persistence` (`memory`, the default, or `disk`): a message whose
  `x-deduplication-header` value was routed before, within the TTL, is not routed again (a
  mandatory publish is returned, as the plugin's route returns nothing). The cache is bounded:
  when full, the entry closest to expiring (or the oldest) makes room.
- Queue argument `x-message-deduplication: true`: a message is not enqueued while another with
  the same `x-deduplication-header` value is in the queue (ready or unacknowledged); the set is
  what the queue holds, so it survives a restart with the queue's messages.

A value enters an exchange's cache only once the message was routed somewhere, and, with disk
persistence on a durable exchange, its log record comes after the message's: a crash can forget
a key (a retry is then routed again: at least once) but never keep the key of a message that was
not kept, so deduplication never drops a message that was never routed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from broker.core.errors import PRECONDITION_FAILED, ChannelException
from broker.core.exchange import FanoutExchange
from broker.core.message import Message

DEDUP_TYPE = "x-message-deduplication"
HEADER = "x-deduplication-header"
HEADERS_FLAG = 0x20
_HEADER_BYTES = HEADER.encode()


def dedup_key(message: Message) -> str | None:
    """The message's deduplication value (a string form of any header type), or None."""
    header = message.header
    if not header[12] & HEADERS_FLAG or _HEADER_BYTES not in header:
        return None
    value = message.headers.get(HEADER)
    if value is None:
        return None
    return value if isinstance(value, str) else repr(value)


def _positive(arguments: dict[str, Any], key: str, where: str, required: bool) -> int | None:
    value = arguments.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ChannelException(
            PRECONDITION_FAILED,
            f"invalid arg '{key}' for {where}: a positive integer is required"
            + (" (it is mandatory for x-message-deduplication exchanges)" if required else ""),
        )
    return value


class DedupExchange(FanoutExchange):
    """Routes as fanout, except a value already routed within its TTL."""

    type_name = DEDUP_TYPE

    def __init__(
        self,
        name: str,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, durable, auto_delete, internal, arguments)
        where = f"exchange '{name}'"
        self.cache_size = _positive(self.arguments, "x-cache-size", where, required=True) or 1
        self.cache_ttl = _positive(self.arguments, "x-cache-ttl", where, required=False)
        persistence = self.arguments.get("x-cache-persistence", "memory")
        if persistence not in ("memory", "disk"):
            raise ChannelException(
                PRECONDITION_FAILED,
                f"invalid arg 'x-cache-persistence' for {where}: 'memory' or 'disk' expected",
            )
        self.persistent_cache = persistence == "disk" and durable
        # value -> wall-clock expiry (inf without a TTL), in insertion order
        self.cache: OrderedDict[str, float] = OrderedDict()

    def seen(self, key: str, now: float) -> bool:
        expires = self.cache.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self.cache[key]
            return False
        return True

    def ttl_of(self, message: Message) -> int | None:
        """The message's own x-cache-ttl header, else the exchange's."""
        value = message.headers.get("x-cache-ttl")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return self.cache_ttl

    def remember(self, key: str, expires: float, now: float) -> None:
        """Record a routed value; a full cache drops expired entries, then the oldest."""
        cache = self.cache
        cache.pop(key, None)
        if len(cache) >= self.cache_size:
            for old in [k for k, at in cache.items() if at <= now]:
                del cache[old]
            while len(cache) >= self.cache_size:
                cache.popitem(last=False)
        cache[key] = expires
