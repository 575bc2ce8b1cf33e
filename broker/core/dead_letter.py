"""Dead-lettering: a message that leaves a queue rejected, expired or over a length limit is
republished to the queue's dead-letter exchange, with the history RabbitMQ writes.

The copy carries an `x-death` array (newest first, one table per (queue, reason), `count` bumped
and the table moved to the front on a repeat) and `x-first-death-*` headers set once; `expiration`
is removed and kept as `original-expiration`. With a dead-letter routing key the copy is routed
by it and CC is removed; otherwise by the original routing key and CC. The bytes are what
RabbitMQ writes (its types: `count` a signed 64-bit long, `time` a timestamp in seconds, strings
long strings, headers sorted by key), since clients decode them by type. A copy that would come
back to a queue it already died in, with no rejection in between, is dropped (RabbitMQ's cycle
rule), so an expiry loop cannot spin forever.

For a logged message moving to surviving queues, leaving the source and entering the targets is
one log record (`MessageStore.moved`): after a crash the message is in exactly one of them,
where RabbitMQ's classic queues can lose it between the two steps.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from typing import TYPE_CHECKING

from broker.core.header_edit import (
    EXPIRATION,
    header_entries,
    join_properties,
    set_header_entries,
    split_properties,
)
from broker.core.message import Message, QueuedMessage, bcc_keys
from broker.core.persistence import LogUnavailable
from broker.core.sender_selected import string_array
from broker.core.tables import (
    decode_table,
    join_array,
    join_entries,
    raw_array_items,
    raw_entries,
)
from broker.core.transfer import transfer
from broker.logs import fields

if TYPE_CHECKING:
    from broker.core.queue import Queue
    from broker.core.vhost import VirtualHost

log = logging.getLogger("warren.dead_letter")

REJECTED = "rejected"
_LONG = struct.Struct(">q")
_TIMESTAMP = struct.Struct(">Q")


def _short(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(1, "big") + raw


def _longstr(text: str) -> bytes:
    raw = text.encode()
    return b"S" + len(raw).to_bytes(4, "big") + raw


def route_bytes(exchange: str, routing_key: str) -> bytes:
    return _short(exchange) + _short(routing_key)


def _text_of(raw: bytes) -> str | None:
    """A long string value's text (None for any other type)."""
    if raw[:1] != b"S":
        return None
    return raw[5:].decode("utf-8", "replace")


def _death_table(
    queue: str, reason: str, now: int, exchange: str, keys: list[str], expiration: str | None
) -> list[tuple[str, bytes]]:
    """A new x-death table in the order RabbitMQ builds it: `count` first, then the event."""
    entries = [
        ("count", b"l" + _LONG.pack(1)),
        ("reason", _longstr(reason)),
        ("queue", _longstr(queue)),
        ("time", b"T" + _TIMESTAMP.pack(now)),
        ("exchange", _longstr(exchange)),
        ("routing-keys", join_array([_longstr(key) for key in keys])),
    ]
    if expiration is not None:
        entries.append(("original-expiration", _longstr(expiration)))
    return entries


def _bumped(table: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A repeat of (queue, reason): the same table, its count one higher (a signed 64-bit
    long whatever type it had), every other field as first recorded, keys sorted."""
    out = []
    for key, raw in table:
        if key == "count":
            count = decode_table(join_entries([(key, raw)]))[1][key]
            raw = b"l" + _LONG.pack((count if isinstance(count, int) else 0) + 1)
        out.append((key, raw))
    return sorted(out)


def _death_key(item: bytes) -> tuple[str | None, str | None] | None:
    """(queue, reason) of an x-death table; None for an item that is not a table."""
    if item[:1] != b"F":
        return None
    values = dict(raw_entries(item, 1)[1])
    return _text_of(values.get("queue", b"")), _text_of(values.get("reason", b""))


def _regrouped(items: list[bytes]) -> list[bytes]:
    """RabbitMQ's group_by_queue_and_reason, applied from two tables on: the first table of
    each (queue, reason) is kept (given a count, as many as there were, if it had none), and
    the fold that builds the list reverses it. Clients walking x-death see this order."""
    if len(items) < 2:
        return items
    keys = [_death_key(item) for item in items]
    grouped: list[bytes] = []
    seen: set[tuple[str | None, str | None]] = set()
    for item, key in zip(items, keys, strict=True):
        if key is None:
            grouped.insert(0, item)  # not a table: RabbitMQ has no rule for it; kept
            continue
        if key in seen:
            continue
        seen.add(key)
        table = raw_entries(item, 1)[1]
        if not any(name == "count" for name, _ in table):
            table = [("count", b"l" + _LONG.pack(keys.count(key))), *table]
            item = b"F" + join_entries(table)
        grouped.insert(0, item)
    return grouped


def dead_letter_header(
    header: bytes, queue: str, reason: str, now: int, exchange: str, routing_key: str,
    new_key: str | None,
) -> tuple[bytes, list[str]]:  # fmt: skip
    """The copy's content header and the routing keys its deaths record (as RabbitMQ's
    rabbit_dead_letter:make_msg builds them)."""
    prefix, props = split_properties(header)
    entries = dict(header_entries(props))
    keys = [routing_key, *string_array(entries.get("CC"))]
    expiration_raw = props.pop(EXPIRATION, None)
    expiration = expiration_raw[1:].decode("utf-8", "replace") if expiration_raw else None
    info = _death_table(queue, reason, now, exchange, keys, expiration)
    deaths_raw = entries.get("x-death")
    if deaths_raw is None:
        # The first death sets x-first-death-*; its table keeps RabbitMQ's build order.
        entries["x-first-death-reason"] = _longstr(reason)
        entries["x-first-death-queue"] = _longstr(queue)
        entries["x-first-death-exchange"] = _longstr(exchange)
        deaths = [b"F" + join_entries(info)]
    elif deaths_raw[:1] != b"A":
        deaths = [b"F" + join_entries(info)]  # a client's x-death that is not an array
    else:
        deaths = []
        match = None
        queue_bytes, reason_bytes = _longstr(queue), _longstr(reason)
        for item in _regrouped(raw_array_items(deaths_raw)):
            # Most tables are another (queue, reason): a byte search skips parsing them.
            maybe = item[:1] == b"F" and queue_bytes in item and reason_bytes in item
            table = raw_entries(item, 1)[1] if maybe else None
            if table is not None and match is None:
                values = dict(table)
                if _text_of(values.get("queue", b"")) == queue and (
                    _text_of(values.get("reason", b"")) == reason
                ):
                    match = table
                    continue
            deaths.append(item)  # other deaths stay byte for byte
        first = _bumped(match) if match is not None else sorted(info)
        deaths.insert(0, b"F" + join_entries(first))
    entries["x-death"] = join_array(deaths)
    if new_key is not None:
        entries.pop("CC", None)
    entries.pop("BCC", None)
    set_header_entries(props, sorted(entries.items()))  # RabbitMQ re-sorts the top level
    return join_properties(prefix, props), keys


def cycle_queues(header: bytes) -> frozenset[str]:
    """The queues a copy with this x-death must not reach again (RabbitMQ's cycle rule): those
    named in the history before its first rejection, including the rejected one; a death that
    is not a table (something a client wrote) ends the automatic part too."""
    _, props = split_properties(header)
    deaths_raw = dict(header_entries(props)).get("x-death")
    if deaths_raw is None or deaths_raw[:1] != b"A":
        return frozenset()
    seen: set[str] = set()
    for item in raw_array_items(deaths_raw):
        if item[:1] != b"F":
            break
        values = dict(raw_entries(item, 1)[1])
        if _text_of(values.get("reason", b"")) == REJECTED:
            break  # a cycle through here had a rejection in it: a client chose, not a loop
        queue = _text_of(values.get("queue", b""))
        if queue is not None:
            seen.add(queue)
    return frozenset(seen)


# rabbitmq_global_messages_dead_lettered_*_total's dead_letter_strategy label: a queue without a
# dead-letter exchange drops ("disabled"); Warren's moves lose nothing ("at_least_once", the name
# RabbitMQ gives its safe strategy).
DROPPED, MOVED = "disabled", "at_least_once"
# Rewritten headers kept for reuse (see DeadLetters._made_header); cleared when full.
MADE_CACHE_SIZE = 256
# Dead letters handled per turn of the event loop; the rest wait for the next turn.
DRAIN_BUDGET = 1000


class DeadLetters:
    """Republishes messages that die in the queues of one virtual host, and counts every message
    that dies (RabbitMQ's dead-lettered counters, by queue type, reason and strategy)."""

    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost
        # (queue type, reason, strategy) -> messages; and copies that reached a queue.
        self.counts: dict[tuple[str, str, str], int] = {}
        self.confirmed: dict[str, int] = {}  # queue type -> messages
        self._made: dict[tuple, tuple[bytes, list[str], frozenset[str], bytes]] = {}
        self._pending: deque[tuple[Queue, QueuedMessage, str, bool]] = deque()
        self._draining = False
        self._drain_scheduled = False

    def count(self, queue: Queue, reason: str, messages: int, dropped: bool) -> None:
        key = (queue.queue_type, reason, DROPPED if dropped else MOVED)
        self.counts[key] = self.counts.get(key, 0) + messages

    def publish(
        self, queue: Queue, entries: list[QueuedMessage], reason: str, logged: bool
    ) -> None:
        """Dead-letter `entries` leaving `queue`; `logged`: the queue's own log holds them
        (their removal goes in the same record as the copies).

        The work goes through one queue per vhost, drained at most DRAIN_BUDGET messages per
        turn of the loop: a copy that dies at once in its target (TTL 0, a full queue, a
        chain of them, or fan-out that multiplies) is queued, not recursed into, so no
        topology can exhaust the stack or hold the loop. A message waiting here is in the
        log of its source queue still, so a crash loses nothing."""
        self.count(queue, reason, len(entries), dropped=False)
        self._pending.extend((queue, entry, reason, logged) for entry in entries)
        if not self._draining:
            self._drain()

    def _drain(self) -> None:
        self._drain_scheduled = False
        self._draining = True
        pending = self._pending
        try:
            for _ in range(DRAIN_BUDGET):
                if not pending:
                    break
                queue, entry, reason, logged = pending.popleft()
                try:
                    self._publish_one(queue, entry, reason, logged)
                except LogUnavailable as error:
                    # The log failed: nothing more is confirmed anyway, and the message is
                    # still in the source queue's log, so a restart brings it back.
                    log.error(
                        "dead_letter.not_logged",
                        extra=fields(queue=queue.name, vhost=queue.vhost_name, error=error),
                    )
                except Exception:  # a bug must not stop the queue's expiry or lose others
                    log.exception(
                        "dead_letter.failed",
                        extra=fields(queue=queue.name, vhost=queue.vhost_name,
                                     consequence="left in the source queue's log"),
                    )  # fmt: skip
        finally:
            self._draining = False
        if pending and not self._drain_scheduled:
            self._drain_scheduled = True
            self.vhost.clock.call_later(0, self._drain)

    def _publish_one(self, queue: Queue, entry: QueuedMessage, reason: str, logged: bool) -> None:
        copy, targets = self._copy(queue, entry.message, reason)
        transfer(self.vhost.store, queue, entry, copy, targets, logged)
        if copy is not None and targets:
            self.confirmed[queue.queue_type] = self.confirmed.get(queue.queue_type, 0) + 1

    def _made_header(
        self,
        queue: Queue,
        source: Message,
        reason: str,
        now: int,
        exchange_name: str,
        new_key: str | None,
    ) -> tuple[bytes, list[str], frozenset[str], bytes]:
        """The copy's header, the keys its death records, the queues it must not reach again
        (cycles) and its route bytes. Messages of one publisher share their header, and a batch that
        expires together shares the second: the rewrite is made once for them all."""
        key = (
            source.header, queue.name, reason, now, source.exchange, source.routing_key,
            exchange_name, new_key,
        )  # fmt: skip
        made = self._made.get(key)
        if made is None:
            header, keys = dead_letter_header(
                source.header, queue.name, reason, now, source.exchange, source.routing_key,
                new_key,
            )  # fmt: skip
            routing_key = new_key if new_key is not None else source.routing_key
            cycles = cycle_queues(header) if reason != REJECTED else frozenset()
            made = (header, keys, cycles, route_bytes(exchange_name, routing_key))
            if len(self._made) >= MADE_CACHE_SIZE:
                self._made.clear()
            self._made[key] = made
        return made

    def _copy(
        self, queue: Queue, source: Message, reason: str
    ) -> tuple[Message | None, list[Queue]]:
        """The dead-lettered copy and the queues that take it (None, [] when it goes nowhere)."""
        settings = queue.settings
        exchange_name = settings.dead_letter_exchange or ""
        vhost = self.vhost
        exchange = vhost.exchanges.get(exchange_name)
        if exchange is None:
            return None, []  # a missing dead-letter exchange drops the message
        new_key = settings.dead_letter_routing_key
        now = vhost.clock.now()
        made = self._made_header(queue, source, reason, int(now), exchange_name, new_key)
        header, keys, cycles, route = made
        routing_key = new_key if new_key is not None else source.routing_key
        body = source.body if source.body is not None else vhost.store.read_body(source)
        copy = Message(exchange_name, routing_key, route, header, body)
        copy.published_at = now
        # Without a dead-letter routing key the copy goes by every key the original was
        # published with: its routing key, CC and (never shown to consumers) BCC.
        route_keys = None
        bcc = bcc_keys(source)
        if new_key is None and (len(keys) > 1 or bcc):
            route_keys = list(dict.fromkeys((*keys, *bcc)))
        targets = list(vhost.route(exchange, copy, route_keys))
        if reason != REJECTED and targets:
            cycling = [target for target in targets if target.name in cycles]
            if cycling:
                log.warning(
                    "dead_letter.cycle_dropped",
                    extra=fields(queue=queue.name, vhost=queue.vhost_name,
                                 targets=",".join(target.name for target in cycling)),
                )  # fmt: skip
                targets = [target for target in targets if target not in cycling]
        targets = [target for target in targets if not target.deleted and target.admits(copy)]
        return copy, targets
