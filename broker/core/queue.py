"""A queue: its ready messages (in a swappable store), the messages out with consumers, and the
choice of the consumer that gets the next one.

The ready store decides the order (FIFO, priority); the queue decides when a message leaves it
and why: delivered, expired, dropped by a length limit, rejected. A message that leaves for a
reason other than an ack goes through `_discard`, which dead-letters it when the queue has a
dead-letter exchange. A requeued message goes back to its original place, flagged redelivered,
keeping its original expiry. Time comes from an injectable clock, and a queue keeps one timer,
for its next deadline (a message's TTL or the queue's own expiry), never one per message.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from broker.core.arguments import QueueSettings
from broker.core.clock import SYSTEM_CLOCK, Clock, Timer
from broker.core.consumer import Consumer
from broker.core.dedup import dedup_key
from broker.core.delivery_count import with_delivery_count
from broker.core.message import ENTRY_OVERHEAD, Message, QueuedMessage
from broker.core.paging import TAIL_RECORD_BYTES, RecoveredRecords
from broker.core.persistence import LogUnavailable, MessageStore, PagedBatch
from broker.core.ready import FifoStore, ReadyStore
from broker.logs import fields

if TYPE_CHECKING:
    from broker.core.dead_letter import DeadLetters

log = logging.getLogger("warren.queue")

MEMORY_STORE = MessageStore()
DEFAULT_SETTINGS = QueueSettings()
NEVER = float("inf")
# A timer is set at least this far ahead: a queue whose messages come due one after another
# expires them in batches, not with one timer per message. Nothing expired is delivered
# meanwhile (the head is checked at each delivery).
TIMER_SLACK = 0.002
# Delayed messages routed per timer pass: a backlog that came due while the broker was down
# goes out over several turns of the loop, not in one.
DUE_BATCH = 1000

# Why a message left a queue without an ack: x-death's reasons.
REJECTED, EXPIRED, MAXLEN, DELIVERY_LIMIT = "rejected", "expired", "maxlen", "delivery_limit"


class Queue:
    def __init__(
        self,
        name: str,
        vhost_name: str,
        durable: bool = False,
        exclusive_owner: object | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        store: MessageStore = MEMORY_STORE,
        settings: QueueSettings = DEFAULT_SETTINGS,
        ready: ReadyStore | None = None,
        clock: Clock = SYSTEM_CLOCK,
        dead_letters: DeadLetters | None = None,
        on_expired: Callable[[Queue], object] | None = None,
        due_of: Callable[[Message], float] | None = None,
        on_due: Callable[[Queue, list[QueuedMessage]], None] | None = None,
    ) -> None:
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.declared_settings = settings  # from the arguments; a policy may add to them
        self.queue_type = str(self.arguments.get("x-queue-type") or "classic")
        # x-message-deduplication: how many held messages carry each x-deduplication-header
        # value (None: the queue does not deduplicate).
        self._held_keys: dict[str, int] | None = {} if settings.deduplicate else None
        self._use_settings(settings)
        # Durable, non-exclusive, non-auto-delete queues survive a restart (as in RabbitMQ);
        # only they log persistent messages. The store assigns store_id when it logs the queue.
        self.survives_restart = durable and exclusive_owner is None and not auto_delete
        self.store = store
        self.store_id = 0
        self.holds_for: str | None = None  # a delayed exchange's holding queue: its exchange
        self._ready = ready if ready is not None else FifoStore()
        self._ready.on_refill = self.dispatch  # a store reading messages back calls when done
        self._outstanding: set[QueuedMessage] = set()  # delivered, waiting for ack/reject
        self._clock = clock
        self._dead_letters = dead_letters
        self._on_expired = on_expired
        # A delayed exchange's holding queue: each message's deadline is when it comes due
        # (`due_of`), and then it is handed to `on_due` (routed) instead of expiring.
        self._due_of = due_of
        self._on_due = on_due
        # Totals for metrics, plain integers read at scrape time.
        self.published_total = 0
        self.delivered_total = 0
        self.acked_total = 0
        self.consumer_timeouts = 0  # channels closed for holding this queue's deliveries
        # Estimated memory of what this queue holds (ready and unacked), for the memory alarm.
        self.memory_bytes = 0
        self.consumers: list[Consumer] = []
        self._exclusive_consumer: Consumer | None = None
        # x-single-active-consumer: the one consumer that receives; the others wait.
        self.active_consumer: Consumer | None = None
        self.had_consumer = False
        self.deleted = False
        self._next_seq = 0
        self._round_robin: dict[int, int] = {}  # consumer priority -> next turn in that group
        self._dispatching = False
        # Bindings that lead here, kept so deleting the queue removes them without a scan.
        self.incoming: dict[tuple, Any] = {}
        # The one timer and the deadline it is set for; the queue's own expiry (x-expires).
        self._timer: Timer | None = None
        self._timer_at = NEVER
        self._unused_until = NEVER
        self.touch()

    def _use_settings(self, settings: QueueSettings) -> None:
        self.settings = settings
        # x-overflow reject-publish(-dlx) with a limit: publishes must ask `admits` first.
        self.may_refuse = settings.limited and settings.overflow != "drop-head"
        # Neither a message TTL nor a length limit nor deduplication: a publish without an
        # expiration property takes the short path.
        self._plain = (
            settings.message_ttl is None and not settings.limited and not settings.deduplicate
        )
        # Quorum queues count deliveries (x-delivery-count), as RabbitMQ's do; any queue with a
        # delivery limit does too. Their every delivery and return is logged, so a restart,
        # even after kill -9, keeps the count.
        self.counts_deliveries = self.queue_type == "quorum" or settings.delivery_limit is not None

    def apply_settings(self, settings: QueueSettings) -> None:
        """New effective settings (a policy was set, changed or cleared): a new limit trims
        the queue now if it was or becomes drop-head (RabbitMQ applies the limit before the
        new overflow mode), a new expiry restarts its clock; a new message TTL applies to
        messages published from now on, as in RabbitMQ."""
        previous = self.settings.overflow
        self._use_settings(settings)
        if settings.limited and "drop-head" in (previous, settings.overflow):
            self.enforce_limits("drop-head")
        if settings.expires is None:
            self._unused_until = NEVER
            self._arm()
        else:
            self.touch()

    # ------------------------------------------------------------------ what it holds
    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        """Ready messages."""
        return len(self._ready)

    @property
    def unacked_count(self) -> int:
        return len(self._outstanding)

    @property
    def ready_bytes(self) -> int:
        """Body bytes of the ready messages (what x-max-length-bytes counts)."""
        return self._ready.body_bytes

    def ready_entries(self) -> Iterator[QueuedMessage]:
        """Ready messages that are objects, in delivery order (a long queue keeps the rest as
        compact records: `paged`)."""
        return iter(self._ready)

    @property
    def paged_count(self) -> int:
        """Ready messages kept as compact records, their objects and bodies left in the log."""
        return self._ready.paged_count

    @property
    def paged_bytes(self) -> int:
        return self._ready.paged_bytes

    def paged(self, unreadable: bool = False) -> Iterator[PagedBatch]:
        return self._ready.paged(unreadable)

    def paged_in_segment(self, segment: int) -> list[tuple[int, int, int, int]]:
        return self._ready.paged_in_segment(segment)

    def relocated_paged(self, seq: int, segment: int, offset: int) -> None:
        self._ready.relocated(seq, segment, offset)

    @property
    def resident_bytes(self) -> int:
        """Estimated memory of what the queue holds: what its messages cost as objects, less
        what compact records save."""
        return self.memory_bytes - self._ready.paged_savings

    def ready_unordered(self) -> Iterator[QueuedMessage]:
        """Ready messages in no particular order (cheaper where the store is not a list)."""
        return self._ready.unordered()

    def unacked_entries(self) -> list[QueuedMessage]:
        return list(self._outstanding)

    def is_unacked(self, entry: QueuedMessage) -> bool:
        return entry in self._outstanding

    @property
    def exclusive_consumer(self) -> Consumer | None:
        """The consumer that holds the queue exclusively, kept rather than searched for: a
        scan of the consumers at every Basic.Consume made adding n of them cost n squared."""
        return self._exclusive_consumer

    # ------------------------------------------------------------------ messages in
    def admits(self, message: Message) -> bool:
        """False when x-overflow refuses this publish (reject-publish*, queue at its limit)."""
        if not self.may_refuse:
            return True
        settings = self.settings
        ready = self._ready
        if settings.max_length is not None and len(ready) >= settings.max_length:
            return False
        limit = settings.max_length_bytes
        return limit is None or ready.body_bytes + message.body_size <= limit

    def refuse(self, message: Message) -> None:
        """A publish this queue did not admit: reject-publish-dlx dead-letters it."""
        if (
            self.settings.overflow == "reject-publish-dlx"
            and self._dead_letters is not None
            and self.settings.dead_letter_exchange is not None
        ):
            entry = QueuedMessage(message, 0)
            self._dead_letters.publish(self, [entry], MAXLEN, logged=False)

    def publish(self, message: Message, redelivered: bool = False) -> None:
        """Append a message and hand it to a consumer if one has room; `redelivered` when it
        may have reached a consumer already (moved again after an unclean restart)."""
        self.published_total += 1
        self.memory_bytes += message.footprint
        self._next_seq += 1
        entry = QueuedMessage(message, self._next_seq)
        if redelivered:
            entry.redelivered = True
        if self._due_of is not None:
            self._hold(entry)
            return
        if self._plain and message.ttl < 0:
            self._ready.push(entry)
            if self.consumers:
                self.dispatch()
            return
        if self._held_keys is not None:
            self._hold_key(message, 1)
        ttl = self._ttl_of(message)
        if ttl >= 0:
            if not message.published_at:  # the first queue with a TTL that takes it
                message.published_at = self._clock.now()
            if ttl == 0:  # deliver only if a consumer can take it now (RabbitMQ's TTL 0)
                entry.expires_at = message.published_at  # expired if it is ever requeued
                if not self._ready and self._deliver_now(entry):
                    return
                self._discard([entry], EXPIRED)
                return
            entry.expires_at = message.published_at + ttl / 1000
        self._ready.push(entry)
        if self.consumers:
            self.dispatch()  # first: a consumer with room takes it even at x-max-length 0
        if self.settings.limited:
            self.enforce_limits()
        if entry.expires_at and entry.expires_at < self._timer_at:
            self._arm()

    def _ttl_of(self, message: Message) -> int:
        """The message's TTL here in ms: the lower of the queue's and its own (-1: none)."""
        return self._ttl(message.ttl)

    def _ttl(self, own: int) -> int:
        queue_ttl = self.settings.message_ttl
        if queue_ttl is None:
            return own
        if own < 0:
            return queue_ttl
        return min(queue_ttl, own)

    def restore(self, entry: QueuedMessage) -> None:
        """Append a message recovered from the log, keeping its redelivered flag; its deadline
        counts from when it was first published, so one that expired while the broker was down
        expires (and is dead-lettered) as soon as the loop runs."""
        self.memory_bytes += entry.message.footprint
        self._next_seq += 1
        entry.seq = self._next_seq
        if self._due_of is not None:
            self._hold(entry)
            return
        if self._held_keys is not None:
            self._hold_key(entry.message, 1)
        ttl = self._ttl_of(entry.message)
        if ttl >= 0 and entry.message.published_at:
            entry.expires_at = entry.message.published_at + ttl / 1000
        self._ready.push(entry)
        if entry.expires_at and entry.expires_at < self._timer_at:
            self._arm()

    @property
    def takes_records(self) -> bool:
        """Whether recovery hands this queue its next message as a compact record
        (`restore_records`) rather than an object (`restore`)."""
        return self._ready.takes_records

    @property
    def pages(self) -> bool:
        """Whether the queue keeps messages past its window as compact records at all."""
        return self._ready.pages

    def restore_records(self, records: RecoveredRecords) -> None:
        """`restore` for messages recovery indexed without objects: they become compact
        records at once, in bulk (no body read, no header decoded; `ttls` are their
        expiration properties)."""
        count = len(records.msg_ids)
        header_lens = records.header_lens
        if header_lens.count(header_lens[0]) == count:  # one publisher's headers: in C
            each = ENTRY_OVERHEAD + header_lens[0]
            footprints = array("I", [each]) * count
            footprint = each * count
        else:
            footprints = array("I", [ENTRY_OVERHEAD + length for length in header_lens])
            footprint = sum(footprints)
        self.memory_bytes += footprint
        seqs = range(self._next_seq + 1, self._next_seq + 1 + count)
        self._next_seq += count
        if self.settings.message_ttl is None and max(records.ttls) < 0:
            expires = array("d", bytes(8 * count))
        else:
            expires = array(
                "d",
                [
                    published_at + ttl / 1000
                    if (ttl := self._ttl(own)) >= 0 and published_at
                    else 0.0
                    for published_at, own in zip(records.published_at, records.ttls, strict=True)
                ],
            )
        self._ready.push_records(seqs, records, footprints, expires, footprint)
        if expires.count(0.0) != count:
            earliest = min(when for when in expires if when)
            if earliest < self._timer_at:
                self._arm()

    def holds_duplicate(self, message: Message) -> bool:
        """x-message-deduplication: a message with this x-deduplication-header value is held."""
        if self._held_keys is None:
            return False
        key = dedup_key(message)
        return key is not None and key in self._held_keys

    def _hold_key(self, message: Message, change: int) -> None:
        key = dedup_key(message)
        if key is None:
            return
        held = self._held_keys
        assert held is not None
        count = held.get(key, 0) + change
        if count > 0:
            held[key] = count
        else:
            held.pop(key, None)

    def _forget_keys(self, entries: Iterable[QueuedMessage]) -> None:
        for entry in entries:
            self._hold_key(entry.message, -1)

    def _hold(self, entry: QueuedMessage) -> None:
        """A delayed message waits for its deadline (a holding queue has no consumers)."""
        entry.expires_at = self._due_of(entry.message)  # type: ignore[misc]
        self._ready.push(entry)
        if entry.expires_at < self._timer_at:
            self._arm()

    def enforce_limits(self, overflow: str | None = None) -> None:
        """drop-head: the oldest ready messages go (dead-lettered as maxlen) until within the
        limits; the other modes refused the publish instead (see `admits`). `overflow` says
        which mode decides, when not the queue's own."""
        settings = self.settings
        if (overflow or settings.overflow) != "drop-head" or not settings.limited:
            return
        max_length = settings.max_length if settings.max_length is not None else NEVER
        max_bytes = settings.max_length_bytes if settings.max_length_bytes is not None else NEVER
        ready = self._ready
        dropped = ready.drop_while(
            lambda _: len(ready) > max_length or ready.body_bytes > max_bytes
        )
        if dropped:
            self._discard(dropped, MAXLEN)

    # ------------------------------------------------------------------ messages out
    def get(self, ack_required: bool) -> QueuedMessage | None:
        """Take the head message for Basic.Get."""
        if self.settings.expires is not None:
            self.touch()
        entry = self._next_ready()
        if entry is not None:
            self._hand_out(entry, ack_required)
        return entry

    def _next_ready(self) -> QueuedMessage | None:
        """Pop the head that can be handed out (see `_usable`)."""
        ready = self._ready
        while (entry := ready.pop()) is not None:
            if (entry.expires_at or entry.message.body is None) and not self._usable(entry):
                continue
            return entry
        return None

    def _usable(self, entry: QueuedMessage) -> bool:
        """A head just popped: expired (and dead-lettered) when past its deadline, as
        RabbitMQ expires at the head; its body read from the log when it lives there. False
        when it cannot be handed out."""
        if entry.expires_at and entry.expires_at <= self._clock.now():
            self._discard([entry], EXPIRED)
            return False
        return entry.message.body is not None or self._load_body(entry)

    def _load_body(self, entry: QueuedMessage) -> bool:
        """Read a body that lives only in the log, before the message is handed out. If the log
        cannot give it back (a disk error), the message is parked as if unacked: not delivered,
        not settled, so it is neither lost nor retried in a loop; a restart brings it back."""
        message = entry.message
        try:
            message.body = self.store.read_body(message)
        except Exception as error:
            log.error(
                "message.unreadable",
                extra=fields(queue=self.name, vhost=self.vhost_name, msg_id=message.msg_id,
                             error=error),
            )  # fmt: skip
            self._outstanding.add(entry)
            return False
        return True

    def _hand_out(self, entry: QueuedMessage, ack_required: bool) -> None:
        """A message left the ready list: either it awaits an ack or it is settled now."""
        self.delivered_total += 1
        if ack_required:
            self._outstanding.add(entry)
            if (
                entry.message.msg_id
                and self.store_id
                and (not entry.redelivered or self.counts_deliveries)
            ):
                self.store.delivered(self, entry)
        else:
            self.memory_bytes -= entry.message.footprint
            if self._held_keys is not None:
                self._hold_key(entry.message, -1)
            if entry.message.msg_id and self.store_id:
                self.store.settled(self, (entry,))

    def settle(self, entries: list[QueuedMessage]) -> None:
        """Acked: the messages leave this queue for good."""
        self.acked_total += len(entries)
        freed = 0
        for entry in entries:
            freed += entry.message.footprint
        self.memory_bytes -= freed
        self._outstanding.difference_update(entries)
        if self._held_keys is not None:
            self._forget_keys(entries)
        if self.store_id:
            logged = [entry for entry in entries if entry.message.msg_id]
            if logged:
                self.store.settled(self, logged)
        if self.consumers:
            self.dispatch()

    def reject(self, entries: list[QueuedMessage]) -> None:
        """Rejected or nacked without requeue: dead-lettered (reason rejected) or dropped."""
        self._outstanding.difference_update(entries)
        self._discard(entries, REJECTED)
        if self.consumers:
            self.dispatch()

    def _discard(self, entries: list[QueuedMessage], reason: str) -> None:
        """Messages that left without an ack: to the dead-letter exchange when there is one, in
        the same log record that takes them out of this queue, else settled and dropped."""
        self.memory_bytes -= sum(entry.message.footprint for entry in entries)
        if self._held_keys is not None:
            self._forget_keys(entries)
        logged = bool(self.store_id)
        dead_letters = self._dead_letters
        if dead_letters is not None and self.settings.dead_letter_exchange is not None:
            dead_letters.publish(self, entries, reason, logged=logged)
            return
        if dead_letters is not None:
            dead_letters.count(self, reason, len(entries), dropped=True)
        if logged:
            settled = [entry for entry in entries if entry.message.msg_id]
            if settled:
                self.store.settled(self, settled)

    def requeue(self, entries: Iterable[QueuedMessage]) -> None:
        """Put unacked messages back at their original positions, flagged redelivered."""
        returned = sorted(entries, key=lambda e: e.seq)
        if not returned:
            return
        self._outstanding.difference_update(returned)
        for entry in returned:
            entry.redelivered = True
        if self.counts_deliveries:
            returned, over = self._count_returns(returned)
            if over:
                self._discard(over, DELIVERY_LIMIT)
        self._ready.requeue(returned)
        if self.settings.limited:
            self.enforce_limits()  # drop-head drops the requeued ones first, as RabbitMQ
        if self._ready.next_due() < self._timer_at:
            self._arm()
        if self.consumers:
            self.dispatch()

    def _count_returns(
        self, returned: list[QueuedMessage]
    ) -> tuple[list[QueuedMessage], list[QueuedMessage]]:
        """Count a return for each entry (logged); split them into those that may go back and
        those returned more often than the delivery limit (dead-lettered: delivery_limit)."""
        if self.store_id:
            logged = [entry for entry in returned if entry.message.msg_id]
            if logged:
                self.store.returned(self, logged)
        for entry in returned:
            entry.returns += 1
        limit = self.settings.delivery_limit
        if limit is None:
            return returned, []
        over = [entry for entry in returned if entry.returns > limit]
        if not over:
            return returned, []
        return [entry for entry in returned if entry.returns <= limit], over

    def returned_by_restart(self, returned: list[QueuedMessage], over: list[QueuedMessage]) -> None:
        """Entries out with a consumer when the broker stopped: the restart returned them, and
        that counts, so a poison message that brings the broker down cannot get a fresh
        budget. Recovery counted the return before restoring them (a restored entry may be a
        compact record by now) and left out those `over` the delivery limit; the returns are
        logged here, and those are dead-lettered now."""
        logged = [entry for entry in (*returned, *over) if entry.message.msg_id]
        if logged and self.store_id:
            self.store.returned(self, logged)
        if over:
            self.memory_bytes += sum(entry.message.footprint for entry in over)
            self._discard(over, DELIVERY_LIMIT)

    def delivery_header(self, entry: QueuedMessage, get: bool = False) -> bytes:
        """The content header a delivery carries: in a queue that counts deliveries, with
        x-delivery-count once the message came back, and on every Basic.Get-Ok (as RabbitMQ's
        quorum queues write it)."""
        header = entry.message.header
        if not self.counts_deliveries or not (entry.returns or get):
            return header
        return with_delivery_count(header, entry.returns)

    def purge(self) -> int:
        """Drop the ready messages (not the unacked ones), as Queue.Purge does: not
        dead-lettered."""
        ready = self._ready
        paged = ready.paged_count
        if paged:
            self.memory_bytes -= ready.paged_savings + paged * TAIL_RECORD_BYTES
            self.store.settled_paged(self, ready.paged())
        dropped = ready.purge()
        self.memory_bytes -= sum(entry.message.footprint for entry in dropped)
        if self._held_keys is not None:
            self._forget_keys(dropped)
        if self.store_id:
            logged = [entry for entry in dropped if entry.message.msg_id]
            if logged:
                self.store.settled(self, logged)
        return len(dropped) + paged

    def take_everything(self) -> list[QueuedMessage]:
        """The queue is being deleted: every message it holds, ready and unacked, now gone."""
        held = [*self._ready.purge(), *self._outstanding]
        self._outstanding.clear()
        if self._held_keys is not None:
            self._held_keys.clear()
        self.memory_bytes = 0
        self.stop_timer()
        return held

    # ------------------------------------------------------------------ time
    def touch(self) -> None:
        """Used (declared, read with Get, or left by its last consumer): an x-expires queue's
        clock starts again."""
        expires = self.settings.expires
        if expires is None or self.deleted:
            return
        self._unused_until = self._clock.now() + expires / 1000 if not self.consumers else NEVER
        self._arm()

    def _arm(self) -> None:
        """Set the one timer for the earliest deadline: a message's TTL or the queue's expiry."""
        due = min(self._ready.next_due(), self._unused_until)
        if due == self._timer_at:
            return
        self.stop_timer()
        if due != NEVER and not self.deleted:
            self._timer_at = due
            delay = max(due - self._clock.now(), TIMER_SLACK)
            self._timer = self._clock.call_later(delay, self._on_timer)

    def stop_timer(self) -> None:
        """No timer until something arms it again (deleted, or the broker stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = NEVER

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = NEVER
        if self.deleted:
            return
        now = self._clock.now()
        if self._unused_until <= now and not self.consumers:
            if self._on_expired is not None:
                try:
                    self._on_expired(self)  # deleted: its messages are not dead-lettered
                except LogUnavailable as error:  # the log failed: the queue stays
                    log.error(
                        "queue.expiry_not_logged",
                        extra=fields(queue=self.name, vhost=self.vhost_name, error=error),
                    )
            return
        try:
            if self._on_due is not None:
                came_due = self._ready.due(now, DUE_BATCH)
                if came_due:
                    self.memory_bytes -= sum(entry.message.footprint for entry in came_due)
                    self._on_due(self, came_due)
            else:
                expired = self._ready.due(now)
                if expired:
                    self._discard(expired, EXPIRED)
        finally:
            self._arm()  # whatever happened, the next deadline keeps its timer

    # ------------------------------------------------------------------ consumers
    def add_consumer(self, consumer: Consumer) -> None:
        """Consumers stay sorted by priority, highest first; equal ones in arrival order."""
        consumers = self.consumers
        position = len(consumers)
        while position and consumers[position - 1].priority < consumer.priority:
            position -= 1
        consumers.insert(position, consumer)
        if consumer.exclusive:
            self._exclusive_consumer = consumer
        if self.settings.single_active_consumer and self.active_consumer is None:
            self.active_consumer = consumer  # a newcomer never displaces the active one
        self.had_consumer = True
        if self._unused_until != NEVER:
            self._unused_until = NEVER
            self._arm()
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if consumer is self._exclusive_consumer:
            self._exclusive_consumer = None
        if consumer is self.active_consumer:
            # The waiting consumer with the highest priority takes over, the earliest of
            # equals (the list's order). It gets the ready messages on the next turn of the
            # loop: a closing channel requeues the old one's unacked messages first, and they
            # go to the new one ahead of the rest, as in RabbitMQ.
            self.active_consumer = self.consumers[0] if self.consumers else None
            if self.active_consumer is not None:
                self._clock.call_later(0, self.dispatch)
        if not self.consumers:
            self.touch()

    @property
    def unused_auto_delete(self) -> bool:
        """An auto-delete queue goes once it had a consumer and the last one left."""
        return self.auto_delete and self.had_consumer and not self.consumers and not self.deleted

    def _pick_consumer(self) -> Consumer | None:
        """The next consumer with room: highest priority first, round robin among equals (or
        the single active consumer)."""
        active = self.active_consumer
        if active is not None:
            return active if active.sink.can_deliver(active) else None
        consumers = self.consumers
        count = len(consumers)
        if count == 1:  # the common case, without the priority bookkeeping
            only = consumers[0]
            return only if only.sink.can_deliver(only) else None
        first = 0
        while first < count:
            priority = consumers[first].priority
            end = first + 1
            while end < count and consumers[end].priority == priority:
                end += 1
            size = end - first
            start = self._round_robin.get(priority, 0)
            for offset in range(size):
                turn = (start + offset) % size
                consumer = consumers[first + turn]
                if consumer.sink.can_deliver(consumer):
                    self._round_robin[priority] = turn + 1
                    return consumer
            first = end
        return None

    def _deliver_now(self, entry: QueuedMessage) -> bool:
        """Hand a message that never entered the ready store to a consumer with room, if any
        (TTL 0)."""
        consumer = self._pick_consumer() if self.consumers else None
        if consumer is None:
            return False
        self._hand_out(entry, not consumer.no_ack)
        consumer.sink.deliver(consumer, self, entry)
        return True

    def dispatch(self) -> None:
        """Deliver ready messages to consumers that have room, until none has."""
        if self._dispatching:
            return
        self._dispatching = True
        ready = self._ready
        try:
            while ready.count and self.consumers:
                consumer = self._pick_consumer()
                if consumer is None:
                    return
                entry = ready.pop_for_consumer()
                if entry is None:
                    return  # nothing ready, or a read-ahead under way calls back
                if (entry.expires_at or entry.message.body is None) and not self._usable(entry):
                    continue
                self._hand_out(entry, not consumer.no_ack)
                consumer.sink.deliver(consumer, self, entry)
        finally:
            self._dispatching = False
