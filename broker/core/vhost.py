"""A virtual host: exchanges, queues and bindings, and the rules for declaring and deleting them.

Every rule a client can trip over lives here, with RabbitMQ's reply codes and texts: reserved
`amq.` names, equivalence checks on redeclare, exclusive ownership, if-unused/if-empty deletes,
auto-delete cascades. Owners of exclusive queues are opaque objects (the AMQP connection).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Collection
from typing import Any

from broker.core import sender_selected
from broker.core.arguments import IGNORED_QUEUE_ARGS, QueueSettings, check_alternate_exchange
from broker.core.clock import SYSTEM_CLOCK, Clock
from broker.core.dead_letter import DeadLetters
from broker.core.dedup import DEDUP_TYPE, DedupExchange, dedup_key
from broker.core.delayed import DELAYED_TYPE, DelayedExchange, delay_of
from broker.core.errors import (
    ACCESS_REFUSED,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    ChannelException,
    describe,
)
from broker.core.exchange import (
    EXCHANGE_TYPES,
    Binding,
    DefaultExchange,
    Exchange,
    HeadersExchange,
    validate_headers_binding,
)
from broker.core.fields import field_type_name
from broker.core.message import Message
from broker.core.persistence import MessageStore
from broker.core.queue import MEMORY_STORE, Queue
from broker.core.queue_factory import build_holding_queue, build_queue
from broker.core.sender_selected import HEADERS_FLAG
from broker.core.tables import encode_table
from broker.logs import fields

log = logging.getLogger("warren.vhost")

STANDARD_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
    ("amq.rabbitmq.trace", "topic"),  # internal: RabbitMQ's firehose tracer publishes to it
)
ALL_EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    **EXCHANGE_TYPES,
    DELAYED_TYPE: DelayedExchange,
    DEDUP_TYPE: DedupExchange,
}
# The exchange types of RabbitMQ plugins that a publish treats specially.
PLUGIN_TYPES = frozenset((DELAYED_TYPE, DEDUP_TYPE))
# Encoded size of one declare's or binding's arguments: every log snapshot repeats them.
MAX_ARGUMENTS_BYTES = 16 * 1024
BUILTIN_EXCHANGES = frozenset(["", *(name for name, _ in STANDARD_EXCHANGES)])
QUEUE_TYPES = ("classic", "quorum", "stream")
# Queue arguments RabbitMQ compares when a queue is declared again, in its order (the first
# difference is the one reported).
EQUIVALENT_QUEUE_ARGS = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-delivery-limit",
)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _arg_text(value: Any, typed: bool) -> str:
    """How RabbitMQ prints an argument in an equivalence failure (rabbit_misc:val/1)."""
    if value is None:
        return "none"
    if typed:
        return f"the value '{_value_text(value)}' of type '{field_type_name(value)}'"
    return f"'{_value_text(value)}'"


def inequivalent(field: str, where: str, received: Any, current: Any) -> ChannelException:
    """RabbitMQ's 406 for a redeclare that differs: types are shown only when one side is unset."""
    typed = received is None or current is None
    return ChannelException(
        PRECONDITION_FAILED,
        f"inequivalent arg '{field}' for {where}: received {_arg_text(received, typed)}"
        f" but current is {_arg_text(current, typed)}",
    )


def _both_classic(field: str, received: Any, current: Any) -> bool:
    """x-queue-type "classic" and no x-queue-type are the same queue to RabbitMQ."""
    return (
        field == "x-queue-type" and received in (None, "classic") and current in (None, "classic")
    )


def server_generated_name(prefix: str) -> str:
    """RabbitMQ-style random names: 'amq.gen-' + 22 url-safe base64 characters."""
    return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def _nothing(_: object) -> None:
    return None


class VirtualHost:
    def __init__(
        self, name: str, store: MessageStore = MEMORY_STORE, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.name = name
        self.store = store
        self.clock = clock
        self._now = clock.now
        # Queues with x-overflow reject-publish(-dlx) and a limit, and queues that deduplicate:
        # while there are none, a publish does not ask each queue about the message.
        self.refusing_queues = 0
        self.deduplicating_queues = 0
        self.dead_letters = DeadLetters(self)
        # Told of every new queue and exchange, so the broker's policies apply to them.
        self.on_queue_added: Callable[[Queue], None] = _nothing
        self.on_exchange_added: Callable[[Exchange], None] = _nothing
        self.queues: dict[str, Queue] = {}
        self.default_exchange = DefaultExchange(self.queues)
        self.exchanges: dict[str, Exchange] = {"": self.default_exchange}
        for exchange_name, kind in STANDARD_EXCHANGES:
            self.exchanges[exchange_name] = EXCHANGE_TYPES[kind](
                exchange_name, durable=True, internal=exchange_name == "amq.rabbitmq.trace"
            )

    # ----------------------------------------------------------------------------- lookups
    def _describe(self, kind: str, name: str) -> str:
        return describe(kind, name, self.name)

    def get_exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise ChannelException(NOT_FOUND, f"no {self._describe('exchange', name)}")
        return exchange

    def get_queue(self, name: str, owner: object | None = None) -> Queue:
        """The queue, refusing access to an exclusive queue of another connection."""
        queue = self.queues.get(name)
        if queue is None:
            raise ChannelException(NOT_FOUND, f"no {self._describe('queue', name)}")
        self.check_exclusive(queue, owner)
        return queue

    def check_exclusive(self, queue: Queue, owner: object | None) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not owner:
            raise self._locked(queue)

    def _locked(self, queue: Queue) -> ChannelException:
        return ChannelException(
            RESOURCE_LOCKED,
            f"cannot obtain exclusive access to locked {self._describe('queue', queue.name)}."
            " It could be originally declared on another connection or the exclusive"
            " property value does not match that of the original declaration.",
        )

    def _check_reserved(self, kind: str, name: str) -> None:
        if name.startswith("amq."):
            raise ChannelException(
                ACCESS_REFUSED, f"{kind} name '{name}' contains reserved prefix 'amq.*'"
            )

    def _check_arguments(self, where: str, arguments: dict[str, Any]) -> None:
        """Arguments are kept in every log snapshot: refuse what the log could not hold well.

        Tables from the wire are already depth-limited; this also bounds their encoded size, so
        a handful of declares cannot make every segment's snapshot huge."""
        if self.store.replaying:
            return
        try:
            size = len(encode_table(arguments))
        except (ValueError, TypeError) as error:
            raise ChannelException(
                PRECONDITION_FAILED, f"invalid arguments for {where}: {error}"
            ) from None
        if size > MAX_ARGUMENTS_BYTES:
            raise ChannelException(
                PRECONDITION_FAILED,
                f"arguments for {where} take {size} bytes; at most {MAX_ARGUMENTS_BYTES}"
                " are accepted",
            )

    def _check_not_default(self, name: str) -> None:
        if name == "":
            raise ChannelException(
                ACCESS_REFUSED, "operation not permitted on the default exchange"
            )

    # ----------------------------------------------------------------------------- exchanges
    def declare_exchange(
        self,
        name: str,
        kind: str,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
        declared_by: str = "rmq-internal",
    ) -> Exchange:
        self._check_not_default(name)
        if passive:
            return self.get_exchange(name)
        arguments = arguments or {}
        existing = self.exchanges.get(name)
        if existing is None:
            self._check_reserved("exchange", name)
        cls = ALL_EXCHANGE_TYPES.get(kind)
        if cls is None:
            # RabbitMQ 3.10 closes the connection with 503 here; newer releases close only the
            # channel with 406, which is kinder to the other channels: Warren does that.
            raise ChannelException(
                PRECONDITION_FAILED, f"invalid exchange type '{kind}' for exchange '{name}'"
            )
        if existing is not None:
            self._check_exchange_equivalent(
                existing, kind, durable, auto_delete, internal, arguments
            )
            return existing
        check_alternate_exchange(arguments, self._describe("exchange", name))
        self._check_arguments(self._describe("exchange", name), arguments)
        exchange = cls(name, durable, auto_delete, internal, arguments)
        exchange.declared_by = declared_by
        if durable:
            self.store.exchange_declared(self.name, exchange)  # first, as for queues
        if isinstance(exchange, DelayedExchange):
            exchange.holding = build_holding_queue(self, exchange)
            if exchange.holding.survives_restart:
                self.store.queue_declared(exchange.holding)
        self.exchanges[name] = exchange
        self.on_exchange_added(exchange)
        return exchange

    def _check_exchange_equivalent(
        self,
        existing: Exchange,
        kind: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        where = self._describe("exchange", existing.name)
        checks = (
            ("type", kind, existing.type_name),
            ("durable", durable, existing.durable),
            ("auto_delete", auto_delete, existing.auto_delete),
            ("internal", internal, existing.internal),
            (
                "alternate-exchange",
                arguments.get("alternate-exchange"),
                existing.arguments.get("alternate-exchange"),
            ),
        )
        for field, received, current in checks:
            if received != current:
                raise inequivalent(field, where, received, current)

    def delete_exchange(self, name: str, if_unused: bool = False) -> None:
        self._check_not_default(name)
        if name.startswith("amq."):
            raise ChannelException(
                ACCESS_REFUSED,
                f"deletion of system {self._describe('exchange', name)} not allowed",
            )
        exchange = self.exchanges.get(name)
        if exchange is None:
            return  # RabbitMQ treats deleting a missing exchange as done
        if if_unused and exchange.bindings:
            raise ChannelException(
                PRECONDITION_FAILED, f"{self._describe('exchange', name)} in use"
            )
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        if exchange.durable:
            self.store.exchange_deleted(self.name, exchange)  # first, as for every change
        del self.exchanges[exchange.name]
        if isinstance(exchange, DelayedExchange) and exchange.holding is not None:
            self.remove_queue(exchange.holding)  # its pending messages go with it
        for binding in list(exchange.bindings.values()):
            self._drop_binding(binding, cascade=False)
        for binding in list(exchange.incoming.values()):
            self._drop_binding(binding)

    # ----------------------------------------------------------------------------- queues
    def declare_queue(
        self,
        name: str,
        owner: object | None,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        server_named: bool = False,
    ) -> Queue:
        """Declare a queue; `server_named` marks a name the broker generated (amq.gen-...)."""
        if passive:
            if name == "":
                raise ChannelException(NOT_FOUND, f"no {self._describe('queue', name)}")
            queue = self.get_queue(name, owner)
            queue.touch()  # RabbitMQ's stat restarts an unused queue's expiry too
            return queue
        arguments = arguments or {}
        if name == "":
            name = server_generated_name("amq.gen-")
        elif not server_named:
            self._check_reserved("queue", name)
        existing = self.queues.get(name)
        if existing is not None:
            # A declare must match exclusivity too; RabbitMQ answers a mismatch with 405.
            if exclusive != existing.exclusive:
                raise self._locked(existing)
            self.check_exclusive(existing, owner)
            self._check_queue_equivalent(existing, durable, auto_delete, arguments)
            existing.touch()
            return existing
        self._validate_queue_arguments(name, durable, exclusive, auto_delete, arguments)
        self._check_arguments(self._describe("queue", name), arguments)
        queue = build_queue(
            self,
            name,
            durable=durable,
            exclusive_owner=owner if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        if queue.survives_restart:
            self.store.queue_declared(queue)  # first: a refused log write leaves no queue behind
        self._add_queue(queue)
        ignored = sorted(IGNORED_QUEUE_ARGS.intersection(arguments))
        if ignored:
            log.warning(
                "queue.arguments_ignored",
                extra=fields(queue=name, vhost=self.name, arguments=",".join(ignored)),
            )
        return queue

    def restore_holding(self, exchange_name: str, store_id: int) -> Queue | None:
        """The holding queue of a durable delayed exchange restored from the log, given the
        id its messages are logged under (None, logged, if the exchange is not there)."""
        exchange = self.exchanges.get(exchange_name)
        if not isinstance(exchange, DelayedExchange) or exchange.holding is None:
            log.warning(
                "recovery.delayed_without_exchange",
                extra=fields(vhost=self.name, exchange=exchange_name),
            )
            return None
        exchange.holding.store_id = store_id
        return exchange.holding

    def _add_queue(self, queue: Queue) -> None:
        self.queues[queue.name] = queue
        self.refusing_queues += queue.may_refuse
        self.deduplicating_queues += queue.settings.deduplicate
        self.on_queue_added(queue)

    def resettle(self, queue: Queue, settings: QueueSettings) -> None:
        """Give a queue new effective settings (a policy changed), keeping the vhost's count
        of queues that may refuse publishes true."""
        self.refusing_queues -= queue.may_refuse
        queue.apply_settings(settings)
        self.refusing_queues += queue.may_refuse

    def restore_queue(self, name: str, arguments: dict[str, Any], store_id: int) -> Queue:
        """Recreate a durable queue from the log: no reserved-name check (a server-named
        amq.gen- queue may be durable) and nothing logged again."""
        queue = build_queue(self, name, durable=True, arguments=arguments, restoring=True)
        queue.store_id = store_id
        self._add_queue(queue)
        return queue

    def _validate_queue_arguments(
        self, name: str, durable: bool, exclusive: bool, auto_delete: bool, args: dict[str, Any]
    ) -> None:
        where = self._describe("queue", name)
        queue_type = args.get("x-queue-type")
        if queue_type is None:
            return
        if isinstance(queue_type, bytes):
            queue_type = queue_type.decode(errors="replace")
        if not isinstance(queue_type, str):
            raise ChannelException(
                PRECONDITION_FAILED,
                f"invalid arg 'x-queue-type' for {where}:"
                f" {{unacceptable_type,{field_type_name(queue_type)}}}",
            )
        if queue_type not in QUEUE_TYPES:
            raise ChannelException(
                PRECONDITION_FAILED,
                f"invalid arg 'x-queue-type' for {where}:"
                f" \"unsupported queue type '{queue_type}'\"",
            )
        if queue_type == "stream":
            raise ChannelException(
                PRECONDITION_FAILED,
                f"invalid arg 'x-queue-type' for {where}: stream queues are not supported by"
                " Warren yet; declare a classic or quorum queue",
            )
        if queue_type == "quorum":
            # RabbitMQ reports the first of these that applies, in this order.
            for bad, prop in (
                (auto_delete, "auto-delete"),
                (exclusive, "exclusive-owner"),
                (not durable, "non-durable"),
            ):
                if bad:
                    raise ChannelException(
                        PRECONDITION_FAILED, f"invalid property '{prop}' for {where}"
                    )

    def _check_queue_equivalent(
        self,
        existing: Queue,
        durable: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None:
        where = self._describe("queue", existing.name)
        checks: list[tuple[str, Any, Any]] = [
            ("durable", durable, existing.durable),
            ("auto_delete", auto_delete, existing.auto_delete),
        ]
        checks += [
            (key, arguments.get(key), existing.arguments.get(key)) for key in EQUIVALENT_QUEUE_ARGS
        ]
        for field, received, current in checks:
            if received != current and not _both_classic(field, received, current):
                raise inequivalent(field, where, received, current)

    def delete_queue(
        self, name: str, owner: object | None, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns the number of ready messages it held."""
        queue = self.queues.get(name)
        if queue is None:
            return 0  # RabbitMQ answers delete-ok for a queue that does not exist
        self.check_exclusive(queue, owner)
        where = self._describe("queue", name)
        if if_unused and queue.consumers:
            raise ChannelException(PRECONDITION_FAILED, f"{where} in use")
        if if_empty and queue.message_count:
            raise ChannelException(PRECONDITION_FAILED, f"{where} not empty")
        return self.remove_queue(queue)

    def remove_queue(self, queue: Queue) -> int:
        """Unconditionally remove a queue: its bindings, consumers and ready messages."""
        if queue.deleted:
            return 0
        if queue.store_id:  # first: a refused log write leaves the queue as it was
            held = [*queue.ready_entries(), *queue.unacked_entries()]
            self.store.queue_deleted(queue, held, queue.paged(unreadable=True))
        queue.deleted = True
        self.queues.pop(queue.name, None)
        self.refusing_queues -= queue.may_refuse
        self.deduplicating_queues -= queue.settings.deduplicate
        for binding in list(queue.incoming.values()):
            self._drop_binding(binding)
        count = queue.message_count
        queue.take_everything()
        consumers, queue.consumers = queue.consumers, []
        for consumer in consumers:  # last, once the queue is gone whatever a sink does
            try:
                consumer.sink.consumer_cancelled(consumer)
            except Exception:  # one consumer's channel must not fail another client's delete
                log.exception(
                    "queue.cancel_notify_failed",
                    extra=fields(queue=queue.name, vhost=self.name, consumer=consumer.tag),
                )
        return count

    def stop_timers(self) -> None:
        """The broker is stopping: TTL and queue expiry stop with it (they resume, from the
        deadlines in the log, at the next start)."""
        for queue in self.queues.values():
            queue.stop_timer()

    def purge_queue(self, name: str, owner: object | None) -> int:
        return self.get_queue(name, owner).purge()

    def maybe_auto_delete(self, queue: Queue) -> None:
        if queue.unused_auto_delete:
            self.remove_queue(queue)

    # ----------------------------------------------------------------------------- bindings
    def _binding_ends(
        self, source_name: str, destination_name: str, to_exchange: bool, owner: object | None
    ) -> tuple[Exchange, Queue | Exchange]:
        self._check_not_default(source_name)
        if to_exchange:
            self._check_not_default(destination_name)
            destination: Queue | Exchange = self.get_exchange(destination_name)
        else:
            destination = self.get_queue(destination_name, owner)
        return self.get_exchange(source_name), destination

    def bind(
        self,
        source_name: str,
        destination_name: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
        to_exchange: bool = False,
        owner: object | None = None,
    ) -> None:
        arguments = arguments or {}
        source, destination = self._binding_ends(source_name, destination_name, to_exchange, owner)
        if isinstance(source, HeadersExchange):
            problem = validate_headers_binding(arguments)
            if problem:
                raise ChannelException(PRECONDITION_FAILED, problem)
        self._check_arguments(f"binding of {self._describe('exchange', source_name)}", arguments)
        binding = Binding(source, destination, routing_key, arguments)
        if binding.key in source.bindings:
            return  # binding is idempotent
        # Logged first: a refused log write must leave no binding behind in memory.
        self.store.binding_changed(self.name, binding, True)
        source.add_binding(binding)
        destination.incoming[(id(source), *binding.key)] = binding

    def unbind(
        self,
        source_name: str,
        destination_name: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
        to_exchange: bool = False,
        owner: object | None = None,
    ) -> None:
        self._check_not_default(source_name)
        if to_exchange:
            self._check_not_default(destination_name)
        source = self.exchanges.get(source_name)
        destination = (self.exchanges if to_exchange else self.queues).get(destination_name)
        if source is None or destination is None:
            return  # RabbitMQ answers unbind-ok when there is nothing to unbind
        probe = Binding(source, destination, routing_key, arguments or {})
        binding = source.bindings.get(probe.key)
        if binding is None:
            return
        if isinstance(destination, Queue):
            self.check_exclusive(destination, owner)
        self._drop_binding(binding)

    def _drop_binding(self, binding: Binding, cascade: bool = True) -> None:
        source = binding.source
        self.store.binding_changed(self.name, binding, False)  # first, as for every change
        source.remove_binding(binding.key)
        binding.destination.incoming.pop((id(source), *binding.key), None)
        if (
            cascade
            and source.auto_delete
            and not source.bindings
            and self.exchanges.get(source.name) is source
        ):
            self._remove_exchange(source)

    # ----------------------------------------------------------------------------- routing
    def publish(self, exchange: Exchange, message: Message) -> Publication:
        """Route a message published to `exchange` and put it into the queues that admit it
        (x-overflow reject-publish* refuses it where a queue is full; those dead-letter it
        with reject-publish-dlx), after logging it for the surviving ones."""
        header = message.header
        dedup: str | None = None
        if exchange.type_name in PLUGIN_TYPES:
            if exchange.type_name == DELAYED_TYPE and delay_of(message):
                return self._hold(exchange, message)  # type: ignore[arg-type]
            if exchange.type_name == DEDUP_TYPE:
                dedup = dedup_key(message)
                if dedup is not None and exchange.seen(dedup, self._now()):  # type: ignore[attr-defined]
                    return False, False, False  # routed before, within its TTL
        if header[12] & HEADERS_FLAG and sender_selected.may_select(header):
            keys, bcc = sender_selected.routing_keys(message)
            if bcc is not None:
                message = sender_selected.without_bcc(message, bcc)
            routed = self.route(exchange, message, keys)
        else:
            routed = self.route(exchange, message)
        queues: Collection[Queue] = routed
        refused = False
        if self.refusing_queues:
            for queue in routed:
                if queue.may_refuse and not queue.admits(message):
                    refused = True
        if refused:
            queues = [queue for queue in routed if queue.admits(message)]
        if self.deduplicating_queues:
            queues = [queue for queue in queues if not queue.holds_duplicate(message)]
        logged = False
        if queues and message.persistent:
            surviving = [queue for queue in queues if queue.store_id]
            if surviving:
                message.published_at = self._now()  # logged with it: deadlines count from it
                self.store.persist(message, surviving)
                logged = True
        if refused:
            for queue in routed:
                if queue not in queues:
                    queue.refuse(message)
        for queue in queues:
            queue.publish(message)
        if dedup is not None and routed:
            self._remember(exchange, message, dedup)  # type: ignore[arg-type]
        return bool(routed), logged, refused

    def _remember(self, exchange: DedupExchange, message: Message, key: str) -> None:
        """A value routed through a deduplication exchange; with disk persistence its record
        follows the message's, so a crash never keeps the key without the message."""
        now = self._now()
        ttl = exchange.ttl_of(message)
        expires = now + ttl / 1000 if ttl is not None else float("inf")
        if exchange.persistent_cache:
            self.store.dedup_remembered(self.name, exchange.name, key, expires)
        exchange.remember(key, expires, now)

    def _hold(self, exchange: DelayedExchange, message: Message) -> Publication:
        """A delayed message waits in its exchange's holding queue, logged first when it is
        persistent and the exchange durable. Not routed now: a mandatory publish is returned,
        as the delayed-message plugin does."""
        holding = exchange.holding
        assert holding is not None
        message.published_at = self._now()
        logged = False
        if message.persistent and holding.store_id:
            self.store.persist(message, [holding])
            message.evict_body()  # it waits in the log: memory keeps the index entry
            logged = True
        holding.publish(message)
        return False, logged, False

    def all_queues(self) -> list[Queue]:
        """Every queue, with the delayed exchanges' holding queues that clients do not see."""
        holding = [
            exchange.holding
            for exchange in self.exchanges.values()
            if isinstance(exchange, DelayedExchange) and exchange.holding is not None
        ]
        return [*self.queues.values(), *holding]

    def route(
        self, exchange: Exchange, message: Message, keys: list[str] | None = None
    ) -> Collection[Queue]:
        """The queues a message published to `exchange` lands in, each once; `keys` when it
        is routed by more than its routing key (CC / BCC)."""
        if keys:
            return self._route_through(set(), exchange, message, keys)
        destinations = exchange.route(message, message.routing_key)
        if not destinations and exchange.alternate_exchange:
            alternate = self.exchanges.get(exchange.alternate_exchange)
            if alternate is not None:
                return self._route_through({exchange.name}, alternate, message)
        if not exchange.exchange_destinations:
            return destinations
        return self._route_through(set(), exchange, message)

    def _route_through(
        self,
        visited: set[str],
        exchange: Exchange,
        message: Message,
        keys: list[str] | None = None,
    ) -> Collection[Queue]:
        queues: dict[Queue, None] = {}
        pending = [exchange]
        route_keys = keys or [message.routing_key]
        while pending:
            current = pending.pop()
            if current.name in visited:
                continue
            visited.add(current.name)
            found: dict[Any, None] = {}
            for key in route_keys if current.routes_by_key else route_keys[:1]:
                found.update(dict.fromkeys(current.route(message, key)))
            if not found and current.alternate_exchange:
                alternate = self.exchanges.get(current.alternate_exchange)
                if alternate is not None:
                    pending.append(alternate)
            for destination in found:
                if isinstance(destination, Exchange):
                    pending.append(destination)
                else:
                    queues[destination] = None
        return queues


# What became of a publish: routed anywhere, logged (a confirm waits for the fsync), refused by
# a full queue (a confirm becomes a nack). A plain tuple: one is made per publish.
Publication = tuple[bool, bool, bool]
