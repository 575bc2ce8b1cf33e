"""The one place queues are built, for declares and for recovery alike.

The arguments decide the variant: the ready store (FIFO, or one FIFO per priority level for
x-max-priority) and the pieces a queue calls at its named points (dead-lettering when it has a
dead-letter exchange). Later, policies feed the same settings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from broker.core.arguments import QueueSettings, queue_settings
from broker.core.delayed import DelayedExchange, due_time, release
from broker.core.errors import ChannelException
from broker.core.paging import PagedFifoStore
from broker.core.persistence import MessageStore
from broker.core.queue import Queue
from broker.core.ready import FifoStore, PriorityStore, ReadyStore, TimeOrderedStore
from broker.logs import fields

if TYPE_CHECKING:
    from broker.core.vhost import VirtualHost

log = logging.getLogger("warren.queue")


def ready_store(settings: QueueSettings, store: MessageStore, survives: bool) -> ReadyStore:
    """FIFO, or a FIFO per level. With a store that pages, a FIFO queue that survives
    restarts keeps its logged messages past a short window as compact records, and any FIFO
    queue writes the transient messages past its window to the spill files while memory is
    short; not one that deduplicates (its held keys are read from message headers as messages
    leave)."""
    if settings.max_priority:
        return PriorityStore(settings.max_priority)
    if store.pages and not settings.deduplicate:
        return PagedFifoStore(store, logged=survives)
    return FifoStore()


def build_queue(
    vhost: VirtualHost,
    name: str,
    *,
    durable: bool = False,
    exclusive_owner: object | None = None,
    auto_delete: bool = False,
    arguments: dict[str, Any] | None = None,
    restoring: bool = False,
) -> Queue:
    """A queue of `vhost` as its arguments describe it; raises 406 for a bad argument, except
    for a queue `restoring` from the log: an older Warren accepted arguments it did not check,
    and refusing them now would keep the broker from starting on its data (and its messages
    out of reach). Such a queue acts on none of its arguments, and the log says so."""
    arguments = arguments or {}
    queue_type = str(arguments.get("x-queue-type") or "classic")
    where = f"queue '{name}' in vhost '{vhost.name}'"
    try:
        settings = queue_settings(arguments, where, queue_type)
    except ChannelException as error:
        if not restoring:
            raise
        log.warning(
            "recovery.queue_arguments_ignored",
            extra=fields(queue=name, vhost=vhost.name, reason=error.reply_text),
        )
        settings = QueueSettings()
    return Queue(
        name,
        vhost.name,
        durable=durable,
        exclusive_owner=exclusive_owner,
        auto_delete=auto_delete,
        arguments=arguments,
        store=vhost.store,
        settings=settings,
        ready=ready_store(
            settings, vhost.store, durable and exclusive_owner is None and not auto_delete
        ),
        clock=vhost.clock,
        dead_letters=vhost.dead_letters,
        on_expired=vhost.remove_queue,
    )


def build_holding_queue(vhost: VirtualHost, exchange: DelayedExchange) -> Queue:
    """The queue a delayed exchange keeps its waiting messages in: invisible to clients,
    time-ordered, durable with its exchange; what comes due is routed by the exchange."""
    queue = Queue(
        f"amq.delayed.{exchange.name}",
        vhost.name,
        durable=exchange.durable,
        auto_delete=False,
        store=vhost.store,
        ready=TimeOrderedStore(),
        clock=vhost.clock,
        due_of=due_time,
        on_due=lambda holding, entries: release(vhost, holding, entries),
    )
    queue.holds_for = exchange.name
    return queue
