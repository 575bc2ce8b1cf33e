"""The durable message store: the model's persistence hooks, written to the write-ahead log.

Every durable change becomes a record. Persistent messages routed to queues that survive restarts
are logged once with the ids of those queues; acks, rejects and purges become batched SETTLE
records. Each message counts how many queues still hold it, each segment how many live messages
it holds; when the oldest segments hold none they are deleted. Every segment starts with a
snapshot of the durable metadata, so deleting old segments never loses a declaration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from broker.core.dedup import DedupExchange
from broker.core.exchange import Binding, Exchange
from broker.core.message import Message, QueuedMessage
from broker.core.persistence import (
    SPILLED,
    Loaded,
    LogUnavailable,
    MessageStore,
    PagedBatch,
    SyncCallback,
    unpack_location,
)
from broker.core.read_ahead import DEFAULT_READ_AHEAD_BYTES, ReadAheadBudget
from broker.core.vhost import BUILTIN_EXCHANGES, VirtualHost
from broker.logs import fields
from broker.store import records
from broker.store.spill import SpillFiles
from broker.store.wal import RecordReader, RecordView, WriteAheadLog

if TYPE_CHECKING:
    from broker.core.queue import Queue

log = logging.getLogger("warren.store")

# Records one reader reads: their places in the batch, their message ids and log places.
_Reading = tuple[Sequence[int], list[int], list[int], RecordReader]


def exchange_table(vhost: str, exchange: Exchange) -> dict[str, Any]:
    return {
        "vhost": vhost,
        "name": exchange.name,
        "type": exchange.type_name,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": exchange.arguments,
    }


def queue_table(queue: Queue) -> dict[str, Any]:
    table = {
        "vhost": queue.vhost_name,
        "name": queue.name,
        "id": queue.store_id,
        "arguments": queue.arguments,
    }
    if queue.holds_for is not None:
        table["holds_for"] = queue.holds_for  # a delayed exchange's pending messages
    return table


def binding_table(vhost: str, binding: Binding) -> dict[str, Any]:
    destination = binding.destination
    return {
        "vhost": vhost,
        "source": binding.source.name,
        "destination": destination.name,
        "to_exchange": isinstance(destination, Exchange),
        "routing_key": binding.routing_key,
        "arguments": binding.arguments,
    }


def durable_definitions(vhosts: Iterable[VirtualHost]) -> dict[str, list[dict[str, Any]]]:
    """Everything that survives a restart, as a snapshot record holds it."""
    exchanges, queues, bindings, dedup = [], [], [], []
    for vhost in vhosts:
        for name, exchange in vhost.exchanges.items():
            if exchange.durable and name not in BUILTIN_EXCHANGES:
                exchanges.append(exchange_table(vhost.name, exchange))
            if isinstance(exchange, DedupExchange) and exchange.persistent_cache:
                cache = [[key, expires] for key, expires in exchange.cache.items()]
                dedup.append({"vhost": vhost.name, "exchange": name, "cache": cache})
            bindings += [
                binding_table(vhost.name, binding)
                for binding in exchange.bindings.values()
                if binding_is_durable(binding)
            ]
        queues += [queue_table(queue) for queue in vhost.all_queues() if queue.store_id]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings, "dedup": dedup}


def binding_is_durable(binding: Binding) -> bool:
    """RabbitMQ keeps a binding across restarts when both of its ends survive."""
    destination = binding.destination
    if not binding.source.durable or binding.source.name == "":
        return False
    if isinstance(destination, Exchange):
        return destination.durable
    return bool(destination.survives_restart)


# A pinned oldest segment is compacted when it holds at most this many live messages, and at
# most this fraction of the messages first logged in it (a backlog is not copied around).
COMPACT_MAX_MESSAGES = 10_000
COMPACT_MAX_LIVE_FRACTION = 0.1
# Messages copied per compaction pass: each is a read and a write on the event loop, so a
# segment with thousands of survivors is compacted over several passes, not in one stall.
RELOCATE_BATCH = 500


class DurableStore(MessageStore):
    """The model's persistence hooks, written to a `WriteAheadLog`."""

    def __init__(
        self,
        wal: WriteAheadLog,
        vhosts: Callable[[], Iterable[VirtualHost]],
        runtime: Callable[[], dict[str, Any]] | None = None,
        spill: SpillFiles | None = None,
        read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES,
    ) -> None:
        self.wal = wal
        self.spill_files = spill  # where transient messages page out (`spilling`)
        self.read_ahead = ReadAheadBudget(read_ahead_bytes)
        self._vhosts = vhosts  # the model: definitions for snapshots, queues for compaction
        self._runtime = runtime  # users, vhosts, permissions and policies, for snapshots
        self.next_msg_id = 1
        self.next_queue_id = 1
        self.live: dict[int, int] = {}  # segment id -> logged messages some queue still holds
        # Segment id -> the highest message id first logged in it, known once it is sealed.
        # Queues hold logged messages in message id order, so a compaction looks at each
        # queue's head only up to this id, not at every queued message.
        self.last_msg_id: dict[int, int] = {}
        # Every message up to this id may have been delivered before an unclean shutdown (its
        # DELIVERED mark was still in memory): it comes back redelivered after any restart.
        self.redelivered_upto = 0
        self.replaying = False
        self._settles: dict[int, list[int]] = {}
        self._deliveries: dict[int, list[int]] = {}
        self._returns: dict[int, list[int]] = {}
        self._ids_scheduled = False
        self._gc_scheduled = False
        # Messages dead-lettered away (MOVE records) whose release waits for the MOVE's write.
        self._moved_sources: list[Message] = []
        self._moves_scheduled = False
        wal.on_segment_roll = self._on_segment_roll

    # ------------------------------------------------------------------ metadata
    def _append_table(self, record_type: int, values: dict[str, Any]) -> None:
        """Log a definition change; refuse it (541 on the channel) when the log has failed,
        since a durable definition that cannot be saved must not look saved."""
        if self.replaying:
            return
        try:
            self.wal.append(record_type, records.encode_table(values))
        except (OSError, ValueError, RuntimeError) as error:
            raise LogUnavailable("durable definitions", error) from error

    def exchange_declared(self, vhost: str, exchange: Exchange) -> None:
        self._append_table(records.EXCHANGE_DECLARE, exchange_table(vhost, exchange))

    def exchange_deleted(self, vhost: str, exchange: Exchange) -> None:
        self._append_table(records.EXCHANGE_DELETE, {"vhost": vhost, "name": exchange.name})

    def queue_declared(self, queue: Queue) -> None:
        if self.replaying:
            return
        queue.store_id = self.next_queue_id
        self.next_queue_id += 1
        self._append_table(records.QUEUE_DECLARE, queue_table(queue))

    def queue_deleted(
        self, queue: Queue, held: Iterable[QueuedMessage], paged: Iterable[PagedBatch] = ()
    ) -> None:
        self._write_ids()  # settles logged before the delete stay in order
        self._append_table(records.QUEUE_DELETE, {"vhost": queue.vhost_name, "id": queue.store_id})
        self._release(entry.message for entry in held if entry.message.msg_id)
        for _, segments in paged:
            self._release_segments(segments)

    def runtime_changed(self, document: dict[str, Any]) -> None:
        """Users, vhosts, permissions or policies changed: log them whole, as JSON text (an
        opaque string: nothing a policy holds can nest past what a record table allows)."""
        self._append_table(records.RUNTIME, {"json": json.dumps(document)})

    def dedup_remembered(self, vhost: str, exchange: str, key: str, expires: float) -> None:
        table = {"vhost": vhost, "exchange": exchange, "key": key, "expires": expires}
        self._append_table(records.DEDUP, table)

    def binding_changed(self, vhost: str, binding: Binding, added: bool) -> None:
        if getattr(binding.destination, "deleted", False):
            return  # its QUEUE_DELETE record already drops the queue's bindings
        if binding_is_durable(binding):
            kind = records.BIND if added else records.UNBIND
            self._append_table(kind, binding_table(vhost, binding))

    def _on_segment_roll(self, segment_id: int) -> None:
        """A new segment starts with the whole durable metadata, so older ones can go."""
        self.last_msg_id[segment_id - 1] = self.next_msg_id - 1
        self.write_snapshot()
        self.live.setdefault(segment_id, 0)
        self._schedule_gc()

    def write_snapshot(self) -> None:
        """Log every durable definition; older segments' metadata records become redundant.

        Called at each segment roll and once after recovery (the log then starts a segment of
        its own without a roll)."""
        snapshot: dict[str, Any] = dict(durable_definitions(self._vhosts()))
        snapshot["next_queue_id"] = self.next_queue_id
        snapshot["next_msg_id"] = self.next_msg_id
        snapshot["redelivered_upto"] = self.redelivered_upto
        if self._runtime is not None:
            snapshot["runtime_json"] = json.dumps(self._runtime())
        self.wal.append(records.SNAPSHOT, records.encode_table(snapshot))

    def shutdown(self) -> None:
        """A clean stop, after the last client is gone: write the pending marks and say that
        they are complete, so the next start trusts them."""
        self._write_ids()
        if self.wal.failed is None:
            self.wal.append(records.CLEAN_SHUTDOWN, b"")

    # ------------------------------------------------------------------ messages
    def persist(self, message: Message, queues: list[Queue]) -> None:
        msg_id = self.next_msg_id
        self.next_msg_id += 1
        message.msg_id = msg_id
        message.refs = len(queues)
        body = message.body if message.body is not None else b""
        header = message.header
        payload = records.encode_message(
            msg_id,
            [queue.store_id for queue in queues],
            message.route_bytes,
            header,
            body,
            records.timed(message.published_at),
        )
        row = None
        if len(queues) == 1:  # what recovery keeps of it, so a restart need not read it
            row = records.SUMMARY_ROW.pack(
                msg_id,
                queues[0].store_id,
                message.published_at,
                len(body),
                len(header),
                message.ttl,
            )
        self._append_message(message, records.MESSAGE_AT, payload, row)

    def _append_message(
        self, message: Message, record_type: int, payload: bytes, row: bytes | None = None
    ) -> None:
        try:
            location = self.wal.append(record_type, payload, row)
        except (OSError, RuntimeError) as error:
            message.msg_id = message.refs = 0
            raise LogUnavailable("persistent messages", error) from error
        message.location = location
        self.live[location[0]] = self.live.get(location[0], 0) + 1

    def moved(
        self, queue: Queue, entry: QueuedMessage, copy: Message, targets: list[Queue]
    ) -> None:
        source = entry.message
        copy.msg_id = self.next_msg_id
        self.next_msg_id += 1
        copy.refs = len(targets)
        payload = records.encode_message(
            copy.msg_id,
            [target.store_id for target in targets],
            copy.route_bytes,
            copy.header,
            copy.body if copy.body is not None else b"",
            records.moved(queue.store_id, source.msg_id, copy.published_at),
        )
        self._append_message(copy, records.MOVE, payload)
        # The source's record may go only once the MOVE is written: a segment deletion whose
        # sync was already under way must not find the source released while the MOVE is
        # still in memory (a crash then would lose both). So the release waits for a sync
        # requested after this append.
        self._defer_release(source)

    def rerouted(
        self, queue: Queue, entry: QueuedMessage, targets: list[Queue], routed_at: float
    ) -> None:
        message = entry.message
        payload = records.encode_reroute(
            queue.store_id, message.msg_id, routed_at, [target.store_id for target in targets]
        )
        try:
            self.wal.append(records.REROUTE, payload)
        except (OSError, RuntimeError) as error:
            raise LogUnavailable("delayed messages", error) from error
        message.refs += len(targets)
        self._defer_release(message)  # the source's hold goes once the record is written

    def _defer_release(self, message: Message) -> None:
        self._moved_sources.append(message)
        if not self._moves_scheduled:
            self._moves_scheduled = True
            asyncio.get_running_loop().call_soon(self._release_moved)

    def _release_moved(self) -> None:
        self._moves_scheduled = False
        batch, self._moved_sources = self._moved_sources, []
        if not batch:
            return
        # A closing log raises: the sources then stay in it, which is always safe.
        with contextlib.suppress(RuntimeError):
            self.wal.sync(lambda error: None if error is not None else self._release(batch))

    def delivered(self, queue: Queue, entry: QueuedMessage) -> None:
        pending = self._deliveries.get(queue.store_id)
        if pending is None:
            self._deliveries[queue.store_id] = pending = []
        pending.append(entry.message.msg_id)
        self._schedule_ids()

    def returned(self, queue: Queue, entries: Iterable[QueuedMessage]) -> None:
        pending = self._returns.get(queue.store_id)
        if pending is None:
            self._returns[queue.store_id] = pending = []
        pending.extend(entry.message.msg_id for entry in entries)
        self._schedule_ids()

    def settled(self, queue: Queue, entries: Iterable[QueuedMessage]) -> None:
        pending = self._settles.get(queue.store_id)
        if pending is None:
            self._settles[queue.store_id] = pending = []
        messages = [entry.message for entry in entries]
        pending.extend(message.msg_id for message in messages)
        self._release(messages)
        self._schedule_ids()

    def settled_paged(self, queue: Queue, paged: Iterable[PagedBatch]) -> None:
        """Compact records settled in bulk (a purge of a long queue), a chunk of them at a
        time: one SETTLE record each, packed from their array of ids."""
        self._write_ids()  # earlier marks first
        for msg_ids, segments in paged:
            if self.wal.failed is None:
                self.wal.append(records.SETTLE, records.encode_ids(queue.store_id, msg_ids))
            self._release_segments(segments)

    def _release(self, messages: Iterable[Message]) -> None:
        """One queue less holds each message; a segment with no live message may go. A run
        of messages in one segment (an ack's usual batch) is counted down at once."""
        segment, count = -1, 0
        for message in messages:
            message.refs -= 1
            if message.refs == 0:
                if message.location[0] != segment:
                    if count:
                        self._release_segment(segment, count)
                    segment, count = message.location[0], 0
                count += 1
        if count:
            self._release_segment(segment, count)

    def _release_segments(self, segments: dict[int, int]) -> None:
        """The last holder of paged messages (one queue) let them go: segment -> how many."""
        for segment, count in segments.items():
            self._release_segment(segment, count)

    def _release_segment(self, segment: int, count: int) -> None:
        live = self.live
        live[segment] -= count
        if live[segment] == 0:
            self._schedule_gc()

    def _schedule_ids(self) -> None:
        if not self._ids_scheduled:
            self._ids_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_ids)

    def _write_ids(self) -> None:
        """Settles and deliveries of one loop iteration go out as one record per queue."""
        self._ids_scheduled = False
        for kind, pending in (
            (records.SETTLE, self._settles),
            (records.DELIVERED, self._deliveries),
            (records.RETURNED, self._returns),
        ):
            if pending and self.wal.failed is None:  # after a failure nothing can be made safe
                for queue_id, msg_ids in pending.items():
                    self.wal.append(kind, records.encode_ids(queue_id, msg_ids))
            pending.clear()

    def uncertain(self, message: Message) -> bool:
        return message.msg_id != 0 and message.msg_id <= self.redelivered_upto

    def sync(self, callback: SyncCallback) -> None:
        self._write_ids()
        self.wal.sync(callback)

    def read_body(self, message: Message) -> bytes:
        record_type, payload = self.wal.read(*message.location)
        return records.unpack_message(record_type, payload, 0, len(payload))[4]

    # ------------------------------------------------------------------ paging
    pages = True

    def load(self, msg_ids: list[int], locations: list[int]) -> list[Message | BaseException]:
        """Read on the loop (the read-ahead was late): neighbouring records in one pread."""
        try:
            readers = self._readers(msg_ids, locations)
        except RuntimeError as error:  # the log is closed
            return [error] * len(msg_ids)
        for _, _, _, reader in readers:
            reader.read()
        return _merged(len(msg_ids), readers)

    def load_ahead(self, msg_ids: list[int], locations: list[int], done: Loaded) -> None:
        """Lone records in the page cache are copied on the loop with reads that never wait
        for the disk (`RecordReader.read_cached`); the rest of the files is read in the loop's
        default executor (preads only: the thread holds the GIL for nothing else, so the loop
        never waits for it). The records are checked and the messages built on the loop, then
        `done` runs, on a later turn of the loop in any case. Whatever fails reaches `done` as
        errors."""
        loop = asyncio.get_running_loop()
        count = len(msg_ids)
        try:
            readers = self._readers(msg_ids, locations)
        except RuntimeError as closed:  # the log is closed: nothing to read any more
            done([closed] * count)
            return

        def read() -> None:
            for reader in unread:
                reader.read()

        def finished(future: asyncio.Future[None] | None) -> None:
            try:
                if future is not None:
                    future.result()
                results = _merged(count, readers)
            except BaseException as error:  # the executor is shutting down
                results = [error] * count
            done(results)

        try:
            unread = [reader for _, _, _, reader in readers if not reader.read_cached()]
        except Exception as unforeseen:  # no memory, say: as a failed read would
            failed: list[Message | BaseException] = [unforeseen] * count
            loop.call_soon(done, failed)
            return
        if not unread:
            loop.call_soon(finished, None)
            return
        try:
            loop.run_in_executor(None, read).add_done_callback(finished)
        except RuntimeError as error:  # the executor is shut down
            done([error] * count)

    def _readers(self, msg_ids: list[int], locations: list[int]) -> list[_Reading]:
        """Readers of these records: one of the log, one of the spill files when some were
        spilled (each with the places of its records in the lists). Nothing spilled waits
        (the usual case, known without looking at each record): one reader, no sorting out."""
        spill_files = self.spill_files
        if spill_files is None or not spill_files.count or SPILLED not in msg_ids:
            return [(range(len(msg_ids)), msg_ids, locations, self.wal.reader(locations))]
        readers: list[_Reading] = []
        for reader_of, spilled in ((self.wal.reader, False), (spill_files.reader, True)):
            indices = [i for i, msg_id in enumerate(msg_ids) if (msg_id == SPILLED) == spilled]
            if indices:
                group = [locations[index] for index in indices]
                ids = [msg_ids[index] for index in indices]
                readers.append((indices, ids, group, reader_of(group)))
        return readers

    def reading_bytes(self) -> int:
        return self.read_ahead.in_flight

    @property
    def spilling(self) -> bool:
        return self.spill_files is not None and self.spill_files.active

    def spill(self, message: Message) -> tuple[int, int] | None:
        return self.spill_files.write(message) if self.spill_files is not None else None

    def unspilled(self, segments: dict[int, int]) -> None:
        if self.spill_files is not None:
            self.spill_files.read_back(segments)

    # ------------------------------------------------------------------ garbage collection
    def recovered(self) -> None:
        """Recovery is done: start the new segment with a snapshot, then drop dead segments."""
        self.write_snapshot()
        self._schedule_gc()

    def _schedule_gc(self) -> None:
        if self._gc_scheduled or self.replaying:
            return
        self._gc_scheduled = True
        # Only segments older than the active one may go, and only once the active segment's
        # snapshot is on disk: the sync requested now covers it, not a later segment's.
        limit = self.wal.active_segment
        self.wal.sync(lambda error: self._collect_garbage(error, limit), durable=True)

    def _collect_garbage(self, error: BaseException | None, limit: int) -> None:
        """Delete the oldest segments below `limit` while they hold no live message."""
        self._gc_scheduled = False
        if error is not None:
            return
        if self.wal.active_segment != limit:
            self._schedule_gc()  # rolled meanwhile: the newer snapshot needs its own sync
        for segment in self.wal.segment_ids():
            if segment >= limit:
                break
            live = self.live.get(segment, 0)
            if live > 0:
                if segment < limit - 1 and self._worth_compacting(segment, live):
                    self._relocate(segment)
                break
            try:
                self.wal.delete_segment(segment)
            except (OSError, ValueError) as failure:  # ValueError: records still being written
                log.error("wal.segment_delete_failed", extra=fields(segment=segment, error=failure))
                break
            self.live.pop(segment, None)
            log.debug("wal.segment_deleted", extra=fields(segment=segment))

    def _worth_compacting(self, segment: int, live: int) -> bool:
        """A few survivors in a segment that is otherwise garbage: not a backlog, which would
        only be copied from segment to segment."""
        if live > COMPACT_MAX_MESSAGES:
            return False
        last = self.last_msg_id.get(segment)
        before = self.last_msg_id.get(segment - 1)
        if last is None or before is None:
            return True
        return live <= (last - before) * COMPACT_MAX_LIVE_FRACTION

    def _relocate(self, segment: int) -> None:
        """Copy the few messages still alive in the oldest segment to the active one, so that
        one long-lived message cannot keep every later segment on disk. The copy keeps the
        message id (recovery orders by it, and takes the latest record of an id), lists only
        the queues still holding the message, and repeats their delivered marks.

        FIFO queues mostly hold logged messages in message id order, so each queue's head up
        to the segment's last id is looked at first (and its unacked ones): the work is what
        the segment holds, not every message queued. Priority queues, and dead-lettered copies
        (new ids) that a queue took ahead of older messages, break that order: when the first
        pass finds fewer messages than the segment holds, every queued message is looked at."""
        self._write_ids()  # marks still pending go first: the copy's counts include them
        upto = self.last_msg_id.get(segment, self.next_msg_id)
        holders = self._holders(segment, lambda queue: _head_upto(queue, upto))
        if len(holders) < self.live.get(segment, 0):
            holders = self._holders(segment, _everything_in)
        unaccounted = len(holders) < self.live.get(segment, 0)
        moving = sorted(holders)[:RELOCATE_BATCH]  # the rest on the next pass
        for msg_id in moving:
            message, held = holders[msg_id]
            body = message.body if message.body is not None else self.read_body(message)
            payload = records.encode_message(
                msg_id,
                [queue.store_id for queue, _ in held],
                message.route_bytes,
                message.header,
                body,
                records.timed(message.published_at),
            )
            message.location = self.wal.append(records.MESSAGE_AT, payload)
            self.live[segment] -= 1
            self.live[message.location[0]] = self.live.get(message.location[0], 0) + 1
            for queue, entry in held:
                self._repeat_marks(queue, entry)
        # Compact records, only when the objects do not account for the segment's messages.
        paged = []
        if unaccounted:
            paged = self._paged_holders(segment, RELOCATE_BATCH - len(moving))
        for queue, seq, msg_id, offset, flags in paged:
            try:
                self._relocate_paged(queue, seq, msg_id, (segment, offset), flags)
            except Exception as error:  # unreadable: the segment stays, nothing is lost
                log.error(
                    "wal.relocate_failed",
                    extra=fields(segment=segment, msg_id=msg_id, error=error),
                )
                break
        log.info(
            "wal.segment_compacted",
            extra=fields(
                segment=segment,
                moved=len(moving) + len(paged),
                left=len(holders) - len(moving),
            ),
        )
        if holders or paged:  # nothing found (a bug elsewhere) must not loop
            self._schedule_gc()

    def _paged_holders(self, segment: int, limit: int) -> list[tuple[Queue, int, int, int, int]]:
        """Up to `limit` compact records of durable queues whose message is in `segment`."""
        found: list[tuple[Queue, int, int, int, int]] = []
        for vhost in self._vhosts():
            for queue in vhost.all_queues():
                if queue.store_id and queue.paged_count and len(found) < limit:
                    in_segment = queue.paged_in_segment(segment)[: limit - len(found)]
                    found += [(queue, *record) for record in in_segment]
        return found

    def _relocate_paged(
        self, queue: Queue, seq: int, msg_id: int, location: tuple[int, int], flags: int
    ) -> None:
        """A compact record's message copied to the active segment, for this queue alone (it
        is the only holder), then the record points at the copy."""
        record_type, payload = self.wal.read(*location)
        found, published_at, route, header, body = records.unpack_message(
            record_type, payload, 0, len(payload)
        )
        if found != msg_id:
            raise ValueError(f"found message {found} where message {msg_id} was logged")
        timed = records.timed(published_at)
        copy = records.encode_message(msg_id, [queue.store_id], route, header, body, timed)
        new_location = self.wal.append(records.MESSAGE_AT, copy)
        self.live[location[0]] -= 1
        self.live[new_location[0]] = self.live.get(new_location[0], 0) + 1
        queue.relocated_paged(seq, *new_location)
        returns = flags >> 1
        deliveries = returns if queue.counts_deliveries else flags & 1
        self._append_marks(queue, msg_id, deliveries, returns if queue.counts_deliveries else 0)

    def _repeat_marks(self, queue: Queue, entry: QueuedMessage) -> None:
        """After a relocated copy (recovery forgets the marks logged before it), the marks
        that say what the queue did with the message: delivered at all (redelivered flag),
        and, where the queue counts deliveries, every return and delivery."""
        out = queue.is_unacked(entry)
        if queue.counts_deliveries:
            returns, deliveries = entry.returns, entry.returns + out
        else:
            returns, deliveries = 0, int(entry.redelivered or out)
        self._append_marks(queue, entry.message.msg_id, deliveries, returns)

    def _append_marks(self, queue: Queue, msg_id: int, deliveries: int, returns: int) -> None:
        if deliveries:
            ids = [msg_id] * deliveries
            self.wal.append(records.DELIVERED, records.encode_ids(queue.store_id, ids))
        if returns:
            ids = [msg_id] * returns
            self.wal.append(records.RETURNED, records.encode_ids(queue.store_id, ids))

    def _holders(
        self, segment: int, entries_of: Callable[[Queue], Iterable[QueuedMessage]]
    ) -> dict[int, tuple[Message, list[tuple[Queue, QueuedMessage]]]]:
        """Message id -> (message, the surviving queues holding it with their entries) for
        the messages logged in `segment`, found among `entries_of` each durable queue."""
        holders: dict[int, tuple[Message, list[tuple[Queue, QueuedMessage]]]] = {}
        for vhost in self._vhosts():
            for queue in vhost.all_queues():
                if not queue.store_id:
                    continue
                for entry in entries_of(queue):
                    message = entry.message
                    if message.msg_id and message.location[0] == segment:
                        holders.setdefault(message.msg_id, (message, []))[1].append((queue, entry))
        return holders


def _everything_in(queue: Queue) -> Iterator[QueuedMessage]:
    yield from queue.unacked_entries()
    yield from queue.ready_unordered()


def _head_upto(queue: Queue, upto: int) -> Iterator[QueuedMessage]:
    """The queue's unacked messages, then its ready ones until a logged message past `upto`
    (transient ones, id 0, may sit in between and are passed over). A delayed exchange's
    holding queue is in due order, not id order: all of it."""
    if queue.holds_for is not None:
        yield from _everything_in(queue)
        return
    yield from queue.unacked_entries()
    for entry in queue.ready_entries():
        msg_id = entry.message.msg_id
        if msg_id > upto:
            return
        yield entry


def _merged(count: int, readers: list[_Reading]) -> list[Message | BaseException]:
    """The messages of every reader, in the order of the records they were made for."""
    if len(readers) == 1 and len(readers[0][0]) == count:
        _, msg_ids, locations, reader = readers[0]
        return _messages_of(msg_ids, locations, reader.records())
    merged: list[Message | BaseException] = [LookupError("not read")] * count
    for indices, msg_ids, locations, reader in readers:
        for index, result in zip(
            indices, _messages_of(msg_ids, locations, reader.records()), strict=True
        ):
            merged[index] = result
    return merged


def _messages_of(
    msg_ids: list[int], locations: list[int], results: list[RecordView | BaseException]
) -> list[Message | BaseException]:
    """Messages (one holder each, bodies in memory) from the records read for these ids and
    places; a record that is not the message asked for (its segment was deleted and another
    file read) is an error."""
    messages: list[Message | BaseException] = []
    # (exchange, routing key, route bytes) by route bytes: neighbours mostly share a route, so
    # the last one is compared first, and the messages share one copy of its bytes.
    routes: dict[bytes, tuple[str, str, bytes]] = {}
    last: tuple[str, str, bytes] = ("", "", b"")
    message_types = records.MESSAGE_TYPES
    for position in range(len(msg_ids)):
        result = results[position]
        if not isinstance(result, tuple):  # an error (tested for natively, not looked up)
            messages.append(result)
            continue
        msg_id = msg_ids[position]
        record_type, data, start, end = result
        try:
            if record_type not in message_types:
                raise ValueError(f"record type {record_type} is not a message")
            found, published_at, route, header, body = records.unpack_message(
                record_type, data, start, end
            )
            if found != msg_id and not (msg_id == SPILLED and found == 0):
                raise ValueError(f"found message {found}, not {msg_id}")
            if route != last[2]:
                found_route = routes.get(route)
                if found_route is None:
                    found_route = routes[route] = (*records.split_route(route), route)
                last = found_route
            message = Message(last[0], last[1], last[2], header, body)
        except Exception as error:  # a record that does not decode as its message
            messages.append(error)
            continue
        message.published_at = published_at
        if msg_id != SPILLED:  # a spilled one is transient again: no id, no place in the log
            message.msg_id = msg_id
            message.location = unpack_location(locations[position])
            message.refs = 1
        messages.append(message)
    return messages
