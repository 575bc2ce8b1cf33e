"""Delayed messages: the `x-delayed-message` exchange of RabbitMQ's delayed-message plugin.

A client declares an exchange of type `x-delayed-message` with `x-delayed-type` naming how it
routes (direct, fanout, topic, headers) and publishes with an `x-delay` header in milliseconds.
The message waits, then is routed by the exchange's bindings as the delayed type routes. As the
plugin documents: without a positive integer `x-delay` (up to 2^32-1) a message is routed at
once; a delayed one is not routed at publish, so a mandatory publish gets Basic.Return
NO_ROUTE (the plugin does not support mandatory); the delivered message keeps its headers, and
its exchange is the delayed exchange.

Unlike the plugin, pending messages live in the write-ahead log like queued ones: each
exchange holds them in a holding queue of its own (invisible to clients) whose ready store is
time-ordered and whose one timer is set for the next message due. A persistent message on a
durable exchange is logged before the publisher's confirm and kept there, body included, while
memory keeps only its index entry; when it comes due it moves, unchanged, to the queues it
routes to with one REROUTE record (its message record stays, and deliveries read the body from
it), so kill -9 neither loses it nor routes it twice. One that came due while the
broker was down is routed at recovery.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from broker.core.errors import PRECONDITION_FAILED, ChannelException
from broker.core.exchange import EMPTY, EXCHANGE_TYPES, Binding, Exchange
from broker.core.header_edit import header_entries, split_properties
from broker.core.message import Message, QueuedMessage
from broker.core.persistence import LogUnavailable
from broker.logs import fields

if TYPE_CHECKING:
    from broker.core.queue import Queue
    from broker.core.vhost import VirtualHost

log = logging.getLogger("warren.delayed")

DELAYED_TYPE = "x-delayed-message"
MAX_DELAY_MS = 2**32 - 1  # the plugin's bound (an Erlang timer); longer ones are not delayed
HEADERS_FLAG = 0x20
_X_DELAY = b"\x07x-delay"


def check_delayed_type(arguments: dict[str, Any]) -> str:
    """The routing type an x-delayed-message exchange declares, refused as the plugin does."""
    delayed_type = arguments.get("x-delayed-type")
    if delayed_type == DELAYED_TYPE:
        raise ChannelException(
            PRECONDITION_FAILED, "Invalid argument, 'x-delayed-type' can't be 'x-delayed-message'"
        )
    if not isinstance(delayed_type, str) or delayed_type not in EXCHANGE_TYPES:
        raise ChannelException(
            PRECONDITION_FAILED,
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    return delayed_type


# Integer field types (letter -> struct) an x-delay may come in; other types mean no delay.
_INTEGERS = {
    ord(letter): struct.Struct(">" + code)
    for letter, code in (("b", "b"), ("B", "B"), ("s", "h"), ("u", "H"), ("I", "i"),
                         ("i", "I"), ("l", "q"), ("L", "q"))
}  # fmt: skip


def delay_of(message: Message) -> int:
    """The message's x-delay in milliseconds, or 0 when it is routed at once. Read from the
    raw headers table (recovery reads it for every pending message)."""
    header = message.header
    if not header[12] & HEADERS_FLAG or _X_DELAY not in header:
        return 0
    raw = dict(header_entries(split_properties(header)[1])).get("x-delay")
    unpack = _INTEGERS.get(raw[0]) if raw else None
    if unpack is None:
        return 0
    delay = unpack.unpack_from(raw, 1)[0]  # type: ignore[arg-type]
    return delay if 0 < delay <= MAX_DELAY_MS else 0


def due_time(message: Message) -> float:
    """When a held message comes due: its routing time (logged with it) plus its delay."""
    return message.published_at + delay_of(message) / 1000


class DelayedExchange(Exchange):
    """Routes as its x-delayed-type does; what waits is held by `holding` (set by the vhost)."""

    type_name = DELAYED_TYPE

    def __init__(
        self,
        name: str,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, durable, auto_delete, internal, arguments)
        router_class = EXCHANGE_TYPES[check_delayed_type(self.arguments)]
        self._router = router_class(name, durable, auto_delete, internal, self.arguments)
        self._router.bindings = self.bindings  # headers routing walks the bindings
        self.routes_by_key = self._router.routes_by_key
        self.holding: Queue | None = None

    def route(self, message: Message, key: str) -> Collection[Any]:
        return self._router.route(message, key) if self.bindings else EMPTY

    def _index_reset(self) -> None:
        """The router of the delayed type keeps the index (it is made after this call)."""

    def _index_add(self, binding: Binding) -> None:
        self._router._index_add(binding)

    def _index_remove(self, binding: Binding) -> None:
        self._router._index_remove(binding)


def release(vhost: VirtualHost, holding: Queue, entries: list[QueuedMessage]) -> None:
    """Messages of `holding` came due: each is routed through its exchange now, unchanged (a
    message whose exchange is gone is dropped, as the plugin drops them with the exchange)."""
    exchange = vhost.exchanges.get(holding.holds_for or "")
    logged = bool(holding.store_id)
    now = vhost.clock.now()
    for entry in entries:
        message = entry.message
        try:
            targets: list[Queue] = []
            if isinstance(exchange, DelayedExchange):
                routed = vhost.route(exchange, message)
                targets = [queue for queue in routed if not queue.deleted and queue.admits(message)]
                for queue in routed:
                    if queue not in targets and not queue.deleted:
                        queue.refuse(message)
            _reroute(vhost, holding, entry, targets, logged, now)
        except LogUnavailable as error:
            # The log failed: the message stays in the holding queue's log for a restart.
            log.error(
                "delayed.not_logged",
                extra=fields(exchange=holding.holds_for, vhost=vhost.name, error=error),
            )


def _reroute(
    vhost: VirtualHost,
    holding: Queue,
    entry: QueuedMessage,
    targets: list[Queue],
    logged: bool,
    now: float,
) -> None:
    """Move one message from the holding queue to its targets without copying it: where it
    is logged and goes to surviving queues, one REROUTE record (its message record stays and
    its body is read from there on delivery, as for any recovered message)."""
    message = entry.message
    store = vhost.store
    in_log = logged and message.msg_id != 0
    surviving = [target for target in targets if target.store_id]
    if surviving and message.persistent and not in_log:
        message.published_at = now
        store.persist(message, surviving)  # held in memory only (a transient exchange)
    elif surviving and message.persistent:
        if len(surviving) < len(targets) and message.body is None:
            message.keep_body(store.read_body(message))  # a transient queue holds it too
        store.rerouted(holding, entry, surviving, now)
    elif in_log:
        if targets and message.body is None:
            message.keep_body(store.read_body(message))  # its record is settled below
        store.settled(holding, (entry,))
    # After an unclean restart, the release before the crash may have reached a consumer.
    again = store.uncertain(message)
    message.published_at = now  # TTLs in its new queues count from here
    for target in targets:
        target.publish(message, again)
