"""A queue: ready messages in order, its consumers, and the round robin between them.

Ready messages sit in a deque ordered by their sequence number in this queue. A message that is
requeued goes back to its original place, as RabbitMQ's classic queues do, and is marked
redelivered. The channel holding an unacked message tracks its delivery tag; the queue only keeps
the set of entries out with consumers, so deleting it can settle them in the store.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from broker.core.consumer import Consumer
from broker.core.message import Message, QueuedMessage
from broker.core.persistence import MessageStore
from broker.logs import fields

log = logging.getLogger("warren.queue")

MEMORY_STORE = MessageStore()


def _seq_of(entry: QueuedMessage) -> int:
    return entry.seq


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
    ) -> None:
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.queue_type = str(self.arguments.get("x-queue-type") or "classic")
        # Durable, non-exclusive, non-auto-delete queues survive a restart (as in RabbitMQ);
        # only they log persistent messages. The store assigns store_id when it logs the queue.
        self.survives_restart = durable and exclusive_owner is None and not auto_delete
        self.store = store
        self.store_id = 0
        self.ready: deque[QueuedMessage] = deque()
        self.outstanding: set[QueuedMessage] = set()  # delivered, waiting for ack/reject
        # Totals for metrics, plain integers read at scrape time.
        self.published_total = 0
        # Estimated memory of what this queue holds (ready and unacked), for the memory alarm.
        self.memory_bytes = 0
        self.delivered_total = 0
        self.acked_total = 0
        self.consumers: list[Consumer] = []
        self._exclusive_consumer: Consumer | None = None
        self.had_consumer = False
        self.deleted = False
        self._next_seq = 0
        self._round_robin: dict[int, int] = {}  # consumer priority -> next turn in that group
        self._dispatching = False
        # Bindings that lead here, kept so deleting the queue removes them without a scan.
        self.incoming: dict[tuple, Any] = {}

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        return len(self.ready)

    @property
    def exclusive_consumer(self) -> Consumer | None:
        """The consumer that holds the queue exclusively, kept rather than searched for: a
        scan of the consumers at every Basic.Consume made adding n of them cost n squared."""
        return self._exclusive_consumer

    def publish(self, message: Message) -> None:
        """Append a message and hand it to a consumer if one has room."""
        self.published_total += 1
        self.memory_bytes += message.footprint
        self._next_seq += 1
        self.ready.append(QueuedMessage(message, self._next_seq))
        if self.consumers:
            self.dispatch()

    def restore(self, entry: QueuedMessage) -> None:
        """Append a message recovered from the log, keeping its redelivered flag."""
        self.memory_bytes += entry.message.footprint
        self._next_seq += 1
        entry.seq = self._next_seq
        self.ready.append(entry)

    def get(self, ack_required: bool) -> QueuedMessage | None:
        """Take the head message for Basic.Get."""
        while self.ready:
            entry = self.ready.popleft()
            if entry.message.body is None and not self._load_body(entry):
                continue
            self._hand_out(entry, ack_required)
            return entry
        return None

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
            self.outstanding.add(entry)
            return False
        return True

    def _hand_out(self, entry: QueuedMessage, ack_required: bool) -> None:
        """A message left the ready list: either it awaits an ack or it is settled now."""
        self.delivered_total += 1
        if ack_required:
            self.outstanding.add(entry)
            if entry.message.msg_id and self.store_id and not entry.redelivered:
                self.store.delivered(self, entry)
        else:
            self.memory_bytes -= entry.message.footprint
            if entry.message.msg_id and self.store_id:
                self.store.settled(self, (entry,))

    def settle(self, entries: list[QueuedMessage]) -> None:
        """Acked (or rejected without requeue): the messages leave this queue for good."""
        self.acked_total += len(entries)
        freed = 0
        for entry in entries:
            freed += entry.message.footprint
        self.memory_bytes -= freed
        self.outstanding.difference_update(entries)
        if self.store_id:
            logged = [entry for entry in entries if entry.message.msg_id]
            if logged:
                self.store.settled(self, logged)
        if self.consumers:
            self.dispatch()

    def requeue(self, entries: Iterable[QueuedMessage]) -> None:
        """Put unacked messages back at their original positions, flagged redelivered."""
        returned = sorted(entries, key=lambda e: e.seq)
        if not returned:
            return
        self.outstanding.difference_update(returned)
        for entry in returned:
            entry.redelivered = True
        ready = self.ready
        if not ready or returned[-1].seq < ready[0].seq:
            ready.extendleft(reversed(returned))
        else:
            # Each returned message goes back to its place, found by binary search on the
            # sequence numbers (a Python walk to it cost seconds for rejects deep in a long
            # queue); the insert itself moves entries in C.
            for entry in returned:
                ready.insert(bisect.bisect_left(ready, entry.seq, key=_seq_of), entry)
        if self.consumers:
            self.dispatch()

    def purge(self) -> int:
        """Drop the ready messages (not the unacked ones), as Queue.Purge does."""
        count = len(self.ready)
        self.memory_bytes -= sum(entry.message.footprint for entry in self.ready)
        if self.store_id:
            logged = [entry for entry in self.ready if entry.message.msg_id]
            if logged:
                self.store.settled(self, logged)
        self.ready.clear()
        return count

    def add_consumer(self, consumer: Consumer) -> None:
        """Consumers stay sorted by priority, highest first; equal ones in arrival order."""
        consumers = self.consumers
        position = len(consumers)
        while position and consumers[position - 1].priority < consumer.priority:
            position -= 1
        consumers.insert(position, consumer)
        if consumer.exclusive:
            self._exclusive_consumer = consumer
        self.had_consumer = True
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if consumer is self._exclusive_consumer:
            self._exclusive_consumer = None

    @property
    def unused_auto_delete(self) -> bool:
        """An auto-delete queue goes once it had a consumer and the last one left."""
        return self.auto_delete and self.had_consumer and not self.consumers and not self.deleted

    def _pick_consumer(self) -> Consumer | None:
        """The next consumer with room: highest priority first, round robin among equals."""
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

    def dispatch(self) -> None:
        """Deliver ready messages to consumers that have room, until none has."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.ready and self.consumers:
                consumer = self._pick_consumer()
                if consumer is None:
                    return
                entry = self.ready.popleft()
                if entry.message.body is None and not self._load_body(entry):
                    continue
                self._hand_out(entry, not consumer.no_ack)
                consumer.sink.deliver(consumer, self, entry)
        finally:
            self._dispatching = False
