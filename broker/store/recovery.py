"""Replay the write-ahead log into what the broker needs to start: definitions and messages.

Metadata records are applied in log order (a snapshot replaces everything before it); message
records are indexed by id with the queues that still hold them, and SETTLE / DELIVERED records
update that. What is left is every confirmed message that no queue settled, in publish order
(message ids grow with publishing), each flagged redelivered if it may have been handed out.

DELIVERED marks are logged lazily (a delivery goes out at once, its mark with the next group
commit), so they are complete only after a clean shutdown, whose last record says so. After an
unclean one (kill -9, power loss) every recovered message may have been delivered without a mark
on disk: all of them come back redelivered=true, and the snapshot remembers that ("redelivered_upto"
message id) so a later clean restart does not forget it. A consumer that checks for duplicates
when redelivered is set never misses one; the price is a check for messages that had not been
delivered after all.

Bodies stay in the log: recovered messages keep only their location and header in memory.
A sealed segment with a summary (broker/store/summary.py) is not scanned: its rows (messages for
one queue) arrive in runs at `apply_rows` and go into the index by array slices, and only its
other records are read and applied one by one, in log order.
"""

from __future__ import annotations

import json
import logging
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.core.dedup import DedupExchange
from broker.core.errors import AMQPError
from broker.core.message import Message, QueuedMessage
from broker.core.paging import RecoveredRecords, segment_counts
from broker.core.persistence import OFFSET_BITS, pack_location, pack_locations, unpack_location
from broker.core.properties import timing
from broker.core.queue import Queue
from broker.core.vhost import VirtualHost
from broker.logs import fields
from broker.store import records
from broker.store.durable import DurableStore
from broker.store.message_index import MessageIndex
from broker.store.records import HEADER_LEN, TIMED_ONE_HEAD
from broker.store.wal import RecoveryReport, WriteAheadLog

log = logging.getLogger("warren.recovery")


@dataclass
class RecoveredState:
    exchanges: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    queues: dict[int, dict[str, Any]] = field(default_factory=dict)  # store id -> definition
    bindings: dict[tuple, dict[str, Any]] = field(default_factory=dict)
    # (vhost, exchange) -> {value: expiry} of deduplication exchanges with disk persistence
    dedup: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    # (vhost, "source" | "exchange" | "queue", name) -> keys of the bindings with that end, so a
    # delete drops its bindings without scanning them all (that made recovery quadratic).
    _binding_ends: dict[tuple[str, str, str], set[tuple]] = field(default_factory=dict)
    # message id -> (message, ids of the queues that still hold it), for messages that are
    # not in `index`: held by several queues, or by one that keeps every message an object.
    messages: dict[int, tuple[Message, tuple[int, ...]]] = field(default_factory=dict)
    # Messages one paging queue holds, as slots in arrays (no object per message).
    index: MessageIndex = field(default_factory=MessageIndex)
    # (message id, queue id) -> deliveries logged (queues that count deliveries log each one;
    # others only the first) and returns logged (RETURNED).
    delivered: dict[tuple[int, int], int] = field(default_factory=dict)
    returned: dict[tuple[int, int], int] = field(default_factory=dict)
    next_queue_id: int = 1
    next_msg_id: int = 1
    last_msg_id: dict[int, int] = field(default_factory=dict)  # segment -> highest id logged there
    redelivered_upto: int = 0  # messages up to this id may have been delivered
    clean: bool = False  # the log ends with a clean shutdown's record
    # Users, vhosts, permissions and policies (broker/runtime.py); None in a log older than
    # them, whose users and vhosts come from the config.
    runtime: dict[str, Any] | None = None
    report: RecoveryReport | None = None
    # Messages of one publisher mostly share route and header bytes: keep one copy of each.
    _routes: dict[bytes, tuple[bytes, str, str]] = field(default_factory=dict)
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    # Ids of the queues whose messages are indexed (they keep compact records once restored:
    # FIFO, not a delayed exchange's, not deduplicating); restore checks again.
    _paging: set[int] = field(default_factory=set)

    def apply(self, segment: int, offset: int, record_type: int, payload: memoryview) -> None:
        if record_type == records.MESSAGE_AT and len(payload) >= TIMED_ONE_HEAD.size:
            # The common record, first: a message for one queue that pages.
            published_at, msg_id, count, queue_id, route_len = TIMED_ONE_HEAD.unpack_from(payload)
            if count == 1 and queue_id in self._paging:
                self.clean = False
                header_len_at = TIMED_ONE_HEAD.size + route_len
                self._index(segment, offset, payload, published_at, msg_id, queue_id, header_len_at)
                return
        self.clean = record_type == records.CLEAN_SHUTDOWN
        if record_type in records.MESSAGE_TYPES:
            if record_type == records.MOVE:
                queue_id, msg_id = records.decode_move(payload)
                self._settle(queue_id, (msg_id,))
            published_at, message_payload = records.message_part(record_type, payload)
            self._apply_message(segment, offset, message_payload, published_at)
        elif record_type == records.SETTLE:
            self._settle(*records.decode_ids(payload))
        elif record_type == records.REROUTE:
            queue_id, msg_id, routed_at, targets = records.decode_reroute(payload)
            held = self.messages.get(msg_id)
            self._settle(queue_id, (msg_id,))
            if held is not None:
                message, queue_ids = self.messages.get(msg_id, (held[0], ()))
                message.published_at = routed_at  # TTLs in its new queues count from here
                self.messages[msg_id] = (message, (*queue_ids, *targets))
        elif record_type == records.DELIVERED or record_type == records.RETURNED:
            queue_id, msg_ids = records.decode_ids(payload)
            counts = self.delivered if record_type == records.DELIVERED else self.returned
            for msg_id in msg_ids:
                key = (msg_id, queue_id)
                counts[key] = counts.get(key, 0) + 1
        elif record_type in records.METADATA_TYPES:
            self._apply_metadata(record_type, records.decode_table(payload))
        elif record_type != records.CLEAN_SHUTDOWN:
            log.warning(
                "recovery.unknown_record",
                extra=fields(record_type=record_type, segment=segment, offset=offset),
            )

    def apply_rows(
        self,
        segment: int,
        offsets: array[int],
        rows: memoryview,
        read: Callable[[int], tuple[int, bytes]],
    ) -> None:
        """A run of a segment summary's rows (MESSAGE_AT records for one queue), in bulk: into
        the index with array slices, no record read. A row whose queue is still declared but
        keeps objects (its definition says it does not page) is read and applied whole."""
        self.clean = False
        msg_ids, queue_ids, published_at, body_sizes, header_lens, ttls = records.summary_columns(
            rows
        )
        declared, paging = self.queues, self._paging
        whole = {queue for queue in set(queue_ids) if queue in declared and queue not in paging}
        if whole:
            size, start = records.SUMMARY_ROW.size, 0
            for index, queue_id in enumerate(queue_ids):
                if queue_id in whole:
                    if index > start:
                        part = rows[start * size : index * size]
                        self.apply_rows(segment, offsets[start:index], part, read)
                    record_type, payload = read(offsets[index])
                    self.apply(segment, offsets[index], record_type, memoryview(payload))
                    start = index + 1
            if start < len(queue_ids):
                self.apply_rows(segment, offsets[start:], rows[start * size :], read)
            return
        locations = pack_locations(segment, offsets)
        self._superseded_by(msg_ids, queue_ids)
        self.index.add_rows(
            msg_ids, queue_ids, locations, published_at, body_sizes, header_lens, ttls
        )
        top = max(msg_ids)
        if top >= self.next_msg_id:
            self.next_msg_id = top + 1
        if top > self.last_msg_id.get(segment, 0):
            self.last_msg_id[segment] = top

    def _superseded_by(self, msg_ids: array[int], queue_ids: array[int]) -> None:
        """`_saw_message` and `_index`'s dropping of what these records supersede (objects of
        the same ids, marks logged before a relocated copy), looking at whichever is fewer:
        the rows, or the objects and marks."""
        if not (self.messages or self.delivered or self.returned):
            return
        holders = dict(zip(msg_ids, queue_ids, strict=True))
        messages = self.messages
        if len(messages) < len(holders):
            for msg_id in [msg_id for msg_id in messages if msg_id in holders]:
                del messages[msg_id]
        else:
            for msg_id in holders:
                messages.pop(msg_id, None)
        for marks in (self.delivered, self.returned):
            if len(marks) < len(holders):
                for key in [key for key in marks if holders.get(key[0]) == key[1]]:
                    del marks[key]
            else:
                for key in holders.items():
                    marks.pop(key, None)

    def _settle(self, queue_id: int, msg_ids: tuple[int, ...]) -> None:
        messages = self.messages
        delivered = self.delivered
        returned = self.returned
        settle_indexed = self.index.settle
        for msg_id in msg_ids:
            if delivered:
                delivered.pop((msg_id, queue_id), None)
            if returned:
                returned.pop((msg_id, queue_id), None)
            if settle_indexed(msg_id, queue_id):
                continue
            held = messages.get(msg_id)
            if held is not None:
                remaining = tuple(q for q in held[1] if q != queue_id)
                if remaining:
                    messages[msg_id] = (held[0], remaining)
                else:
                    del messages[msg_id]

    def _apply_message(
        self, segment: int, offset: int, payload: memoryview, published_at: float
    ) -> None:
        """The records `apply`'s fast path leaves: several queues, an older MESSAGE record, a
        MOVE (rare enough that copying the route and header does not matter)."""
        msg_id, queue_ids, route, header, body_offset = records.decode_message(payload)
        if len(queue_ids) == 1 and queue_ids[0] in self._paging:
            header_len_at = body_offset - len(header) - HEADER_LEN.size
            self._index(segment, offset, payload, published_at, msg_id, queue_ids[0], header_len_at)
            return
        self._saw_message(segment, msg_id, queue_ids)
        self.index.discard(msg_id)  # a copy for several queues supersedes an indexed one
        shared = self._routes.get(route)
        if shared is None:
            shared = self._routes[route] = (route, *records.split_route(route))
        header = self._headers.setdefault(header, header)
        message = Message(shared[1], shared[2], shared[0], header, None)
        message.body_size = len(payload) - body_offset
        message.published_at = published_at
        message.msg_id = msg_id
        message.location = (segment, offset)
        self.messages[msg_id] = (message, queue_ids)

    def _index(self, segment: int, offset: int, payload: memoryview, published_at: float,
               msg_id: int, queue_id: int, header_len_at: int) -> None:  # fmt: skip
        """A message one paging queue holds, into the index: no object, no copy; its header
        is decoded only for an expiration (its TTL), and its body is what follows."""
        (header_len,) = HEADER_LEN.unpack_from(payload, header_len_at)
        header_at = header_len_at + HEADER_LEN.size
        ttl = -1
        if payload[header_at + 12] & 0x09:  # priority or expiration: decode the header
            ttl = timing(bytes(payload[header_at : header_at + header_len]))[1]
        self._saw_message(segment, msg_id, (queue_id,))
        if self.messages:
            self.messages.pop(msg_id, None)  # a copy for one queue supersedes an object
        body_size = len(payload) - header_at - header_len
        location = segment << OFFSET_BITS | offset
        self.index.add(msg_id, queue_id, location, published_at, body_size, header_len, ttl)

    def _saw_message(self, segment: int, msg_id: int, queue_ids: tuple[int, ...]) -> None:
        """Bookkeeping of every message record: ids, and marks a relocated copy supersedes.
        A relocated copy (compaction) is followed by marks that say everything the queues
        did with the message, so the marks logged before it are superseded, including those
        written just before the copy while the original's segment is already gone. (A
        message's first record has no marks before it: nothing to drop.)"""
        if self.delivered or self.returned:
            for queue_id in queue_ids:
                self.delivered.pop((msg_id, queue_id), None)
                self.returned.pop((msg_id, queue_id), None)
        if msg_id >= self.next_msg_id:
            self.next_msg_id = msg_id + 1
        last = self.last_msg_id
        if msg_id > last.get(segment, 0):
            last[segment] = msg_id

    def _apply_metadata(self, record_type: int, table: dict[str, Any]) -> None:
        if record_type == records.SNAPSHOT:
            self.exchanges = {(e["vhost"], e["name"]): e for e in table.get("exchanges", [])}
            self.dedup = {
                (d["vhost"], d["exchange"]): {key: expires for key, expires in d["cache"]}
                for d in table.get("dedup", [])
            }
            self.queues = {q["id"]: q for q in table.get("queues", [])}
            self._paging = {queue_id for queue_id, q in self.queues.items() if _pages(q)}
            self.bindings = {}
            self._binding_ends = {}
            for binding in table.get("bindings", []):
                self._add_binding(binding)
            self.next_queue_id = max(self.next_queue_id, table.get("next_queue_id", 1))
            self.next_msg_id = max(self.next_msg_id, table.get("next_msg_id", 1))
            self.redelivered_upto = max(self.redelivered_upto, table.get("redelivered_upto", 0))
            if "runtime_json" in table:
                self.runtime = json.loads(table["runtime_json"])
        elif record_type == records.RUNTIME:
            self.runtime = json.loads(table["json"])
        elif record_type == records.EXCHANGE_DECLARE:
            self.exchanges[(table["vhost"], table["name"])] = table
        elif record_type == records.DEDUP:
            cache = self.dedup.setdefault((table["vhost"], table["exchange"]), {})
            cache.pop(table["key"], None)  # re-inserted last: the cache keeps insertion order
            cache[table["key"]] = table["expires"]
        elif record_type == records.EXCHANGE_DELETE:
            self.exchanges.pop((table["vhost"], table["name"]), None)
            self.dedup.pop((table["vhost"], table["name"]), None)
            self._drop_bindings(table["vhost"], table["name"], to_exchange=True)
        elif record_type == records.QUEUE_DECLARE:
            self.queues[table["id"]] = table
            if _pages(table):
                self._paging.add(table["id"])
            self.next_queue_id = max(self.next_queue_id, table["id"] + 1)
        elif record_type == records.QUEUE_DELETE:
            queue = self.queues.pop(table["id"], None)
            self._paging.discard(table["id"])
            if queue is not None:
                self._drop_bindings(queue["vhost"], queue["name"], to_exchange=False)
        elif record_type == records.BIND:
            self._add_binding(table)
        elif record_type == records.UNBIND:
            self._remove_binding(_binding_key(table))

    def _add_binding(self, binding: dict[str, Any]) -> None:
        key = _binding_key(binding)
        self.bindings[key] = binding
        for end in _ends(binding):
            self._binding_ends.setdefault(end, set()).add(key)

    def _remove_binding(self, key: tuple) -> None:
        binding = self.bindings.pop(key, None)
        if binding is None:
            return
        for end in _ends(binding):
            keys = self._binding_ends.get(end)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._binding_ends[end]

    def _drop_bindings(self, vhost: str, name: str, to_exchange: bool) -> None:
        """Forget bindings that lead to (or, for an exchange, come from) a deleted resource."""
        ends = [(vhost, "exchange" if to_exchange else "queue", name)]
        if to_exchange:
            ends.append((vhost, "source", name))
        for end in ends:
            for key in list(self._binding_ends.get(end, ())):
                self._remove_binding(key)


def _pages(table: dict[str, Any]) -> bool:
    """Whether a queue (its logged definition) keeps compact records: queue_factory's rule."""
    arguments = table.get("arguments") or {}
    return (
        "holds_for" not in table
        and not arguments.get("x-max-priority")
        and not arguments.get("x-message-deduplication")
    )


def _ends(binding: dict[str, Any]) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    kind = "exchange" if binding["to_exchange"] else "queue"
    vhost = binding["vhost"]
    return (vhost, "source", binding["source"]), (vhost, kind, binding["destination"])


def _binding_key(binding: dict[str, Any]) -> tuple:
    return (
        binding["vhost"],
        binding["source"],
        binding["destination"],
        binding["to_exchange"],
        binding["routing_key"],
        repr(sorted(binding["arguments"].items())),
    )


def recover(wal: WriteAheadLog) -> RecoveredState:
    """Replay the whole log, logging progress for long recoveries."""
    state = RecoveredState()
    started = time.monotonic()
    last_report = [started]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last_report[0] >= 1.0:
            last_report[0] = now
            log.info(
                "recovery.progress",
                extra=fields(
                    percent=100 * done // max(total, 1), done_mib=done >> 20, total_mib=total >> 20
                ),
            )

    state.report = wal.replay(state.apply, progress, state.apply_rows, records.SUMMARY_ROW.size)
    if not state.clean and (state.messages or state.index.count):
        state.redelivered_upto = max(state.redelivered_upto, state.next_msg_id - 1)
        log.warning(
            "recovery.unclean_shutdown",
            extra=fields(
                messages=len(state.messages) + state.index.count,
                consequence="every recovered message is delivered with redelivered=true,"
                " since a delivery may have gone out before its mark reached the log",
            ),
        )
    log.info(
        "recovery.replayed",
        extra=fields(
            records=state.report.records,
            mib=state.report.bytes >> 20,
            segments=state.report.segments,
            seconds=round(time.monotonic() - started, 3),
        ),
    )
    return state


def restore(
    state: RecoveredState, vhosts: dict[str, VirtualHost], store: DurableStore
) -> tuple[int, int]:
    """Recreate durable definitions and queued messages; returns (queues, messages) restored."""
    store.replaying = True  # what is restored is already in the log: do not log it again
    # Per queue counting deliveries: entries out with a consumer at the stop, restored and
    # left out past the delivery limit.
    out_at_stop: dict[Queue, tuple[list[QueuedMessage], list[QueuedMessage]]] = {}
    try:
        queues = _restore_definitions(state, vhosts)
        restored = _Restorer(state, queues, store, out_at_stop).run()
    finally:
        store.replaying = False
    store.next_msg_id = max(store.next_msg_id, state.next_msg_id)
    store.next_queue_id = max(store.next_queue_id, state.next_queue_id)
    store.redelivered_upto = max(store.redelivered_upto, state.redelivered_upto)
    store.last_msg_id.update(state.last_msg_id)
    for queue, (returned, over) in out_at_stop.items():
        # Delivered more often than returned: out with a consumer when the broker stopped, so
        # the restart returned it. Logged as such, so a poison message that brings the broker
        # down cannot get a fresh budget: past the delivery limit it is dead-lettered now.
        queue.returned_by_restart(returned, over)
    for queue in queues.values():
        # Drops past a length limit are logged lazily, like acks: a crash can leave a queue
        # over its limit, and drop-head trims it now (logging what it drops).
        queue.enforce_limits()
    return len(queues), restored


class UnknownVhostError(RuntimeError):
    """The log holds durable definitions for vhosts the config no longer lists. Starting
    anyway would drop them (and their messages) from the log for good, so Warren refuses."""


def _check_vhosts(state: RecoveredState, vhosts: dict[str, VirtualHost]) -> None:
    tables = [*state.exchanges.values(), *state.queues.values(), *state.bindings.values()]
    missing = sorted({table["vhost"] for table in tables} - set(vhosts))
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        raise UnknownVhostError(
            f"the data directory holds durable queues or exchanges in vhost {names}, which the"
            " config does not list; add the vhost back to `vhosts` (delete its queues there if"
            " they are no longer wanted) before starting, so no confirmed message is lost"
        )


def _restore_definitions(state: RecoveredState, vhosts: dict[str, VirtualHost]) -> dict[int, Queue]:
    _check_vhosts(state, vhosts)

    for table in state.exchanges.values():
        vhosts[table["vhost"]].declare_exchange(
            table["name"],
            table["type"],
            durable=True,
            auto_delete=table["auto_delete"],
            internal=table["internal"],
            arguments=table["arguments"],
        )
    for (vhost_name, exchange_name), cache in state.dedup.items():
        exchange = vhosts[vhost_name].exchanges.get(exchange_name)
        if isinstance(exchange, DedupExchange):
            for key, expires in cache.items():
                exchange.cache[key] = expires
    queues: dict[int, Queue] = {}
    for queue_id, table in state.queues.items():
        vhost = vhosts[table["vhost"]]
        if "holds_for" in table:  # a delayed exchange's pending messages (restored above)
            holding = vhost.restore_holding(table["holds_for"], queue_id)
            if holding is not None:
                queues[queue_id] = holding
            continue
        queues[queue_id] = vhost.restore_queue(table["name"], table["arguments"], queue_id)
    for table in state.bindings.values():
        try:
            vhosts[table["vhost"]].bind(
                table["source"],
                table["destination"],
                table["routing_key"],
                table["arguments"],
                to_exchange=table["to_exchange"],
            )
        except AMQPError as error:
            log.warning(
                "recovery.skipped",
                extra=fields(kind="binding", source=table["source"], reason=error.reply_text),
            )
    return queues


class _Restorer:
    """Puts recovered messages back in their queues, in message id order: objects from
    `state.messages`, compact records from `state.index`."""

    def __init__(
        self,
        state: RecoveredState,
        queues: dict[int, Queue],
        store: DurableStore,
        out_at_stop: dict[Queue, tuple[list[QueuedMessage], list[QueuedMessage]]],
    ) -> None:
        self.state = state
        self.queues = queues
        self.store = store
        self.out_at_stop = out_at_stop
        self.restored = 0
        self._delivered: dict[int, set[int]] = {}

    def run(self) -> int:
        messages = self.state.messages
        objects = sorted(messages)
        position = 0
        for queue_id, run in self.state.index.drain_runs():
            ids = run.msg_ids
            while position < len(objects) and objects[position] < ids[0]:
                self._restore_object(objects[position], *messages[objects[position]])
                position += 1
            if position == len(objects) or objects[position] > ids[-1]:
                self._restore_run(queue_id, run)
                continue
            for index, msg_id in enumerate(ids):  # object messages among these: in id order
                while position < len(objects) and objects[position] < msg_id:
                    self._restore_object(objects[position], *messages[objects[position]])
                    position += 1
                self._restore_run(queue_id, run.part(index, index + 1))
        for msg_id in objects[position:]:
            self._restore_object(msg_id, *messages[msg_id])
        return self.restored

    def _restore_object(self, msg_id: int, message: Message, queue_ids: tuple[int, ...]) -> None:
        holders = [self.queues[queue_id] for queue_id in queue_ids if queue_id in self.queues]
        if not holders:
            return
        message.refs = len(holders)
        live = self.store.live
        live[message.location[0]] = live.get(message.location[0], 0) + 1
        for queue in holders:
            self._restore_entry(queue, QueuedMessage(message, 0))
        self.restored += 1

    def _restore_run(self, queue_id: int, run: RecoveredRecords) -> None:
        """Messages one queue holds, consecutive: as compact records in bulk, but one by one
        while the queue wants objects (its window has room; or it counts deliveries and a
        message was out with a consumer at the stop, whose return is counted)."""
        queue = self.queues.get(queue_id)
        if queue is None:
            return  # deleted: its messages go with it
        live = self.store.live
        for segment, count in segment_counts(run.locations).items():
            live[segment] = live.get(segment, 0) + count
        self.restored += len(run.msg_ids)
        start = 0
        while start < len(run.msg_ids) and (queue.counts_deliveries or not queue.takes_records):
            self._restore_one(queue, run, start)
            start += 1
        if start < len(run.msg_ids):
            rest = run.part(start)
            delivered = self._delivered_to(queue_id)
            upto = self.state.redelivered_upto
            ids = rest.msg_ids  # ascending
            if ids[-1] <= upto:  # after a crash: every one
                rest.flags = array("i", [1]) * len(ids)
            elif not delivered and ids[0] > upto:
                rest.flags = array("i", bytes(4 * len(ids)))
            else:
                rest.flags = [int(msg_id <= upto or msg_id in delivered) for msg_id in ids]
            queue.restore_records(rest)

    def _restore_one(self, queue: Queue, run: RecoveredRecords, index: int) -> None:
        msg_id = run.msg_ids[index]
        key = (msg_id, queue.store_id)
        state = self.state
        returns = state.returned.get(key, 0) if queue.counts_deliveries else 0
        out = queue.counts_deliveries and state.delivered.get(key, 0) > returns
        if out or not queue.takes_records:
            message = self._read(queue, msg_id, *unpack_location(run.locations[index]))
            if message is not None:
                self._restore_entry(queue, QueuedMessage(message, 0))
                return
            returns += out  # the restart returned it (not logged: it cannot be dead-lettered)
        one = run.part(index, index + 1)
        redelivered = msg_id <= state.redelivered_upto or key in state.delivered
        one.flags = [int(redelivered) | returns << 1]
        queue.restore_records(one)

    def _delivered_to(self, queue_id: int) -> set[int]:
        """Ids of the messages with a DELIVERED mark in this queue (made once per queue)."""
        found = self._delivered.get(queue_id)
        if found is None:
            marks = self.state.delivered
            found = self._delivered[queue_id] = {m for m, q in marks if q == queue_id}
        return found

    def _read(self, queue: Queue, msg_id: int, segment: int, offset: int) -> Message | None:
        """An indexed message as an object, its body left in the log; None when the log
        cannot give it back (a segment summary stood for it, so nothing had read it yet) and
        the queue keeps compact records: it stays one, and is set aside (logged, kept in the
        log) when its turn comes. A queue that keeps only objects cannot hold it: the start
        stops, naming it, rather than start without it."""
        (message,) = self.store.load([msg_id], [pack_location(segment, offset)])
        if isinstance(message, Message):
            message.evict_body()
            return message
        if not queue.pages:
            raise RuntimeError(
                f"message {msg_id} in segment {segment} at offset {offset} could not be read"
                f" back during recovery: {message}"
            )
        log.error(
            "recovery.unreadable",
            extra=fields(
                queue=queue.name,
                msg_id=msg_id,
                segment=segment,
                offset=offset,
                error=message,
                consequence="kept as a record in the log; set aside when its turn comes",
            ),
        )
        return None

    def _restore_entry(self, queue: Queue, entry: QueuedMessage) -> None:
        state = self.state
        msg_id = entry.message.msg_id
        key = (msg_id, queue.store_id)
        entry.redelivered = msg_id <= state.redelivered_upto or key in state.delivered
        if queue.counts_deliveries:
            entry.returns = state.returned.get(key, 0)
            if state.delivered.get(key, 0) > entry.returns:
                entry.returns += 1  # the restart returned it (logged once restored)
                limit = queue.settings.delivery_limit
                over = limit is not None and entry.returns > limit
                self.out_at_stop.setdefault(queue, ([], []))[over].append(entry)
                if over:
                    return  # dead-lettered once restoring is done
        queue.restore(entry)
