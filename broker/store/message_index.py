"""Recovery's index of queued messages that one paging queue holds: arrays by message id.

Replaying a log of ten million queued messages must not build ten million objects: a message
that one queue holds, where that queue keeps compact records (a FIFO queue that survives
restarts), is indexed by its id in fixed-size slots (queue, where its record is, when it was
routed, its sizes and TTL), and restore turns each slot into a compact record of the queue
without reading the body or decoding the header. Message ids are dense (only logged messages
take one), so slots come in chunks of consecutive ids, and a chunk is freed as restore passes
it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from broker.core.paging import RecoveredRecords

CHUNK_SLOTS = 4096
_SHIFT = 12  # log2(CHUNK_SLOTS)


class _Slots:
    __slots__ = ("body_size", "header_len", "location", "published_at", "queue_id", "ttl")

    def __init__(self) -> None:
        self.queue_id = array("q", bytes(8 * CHUNK_SLOTS))  # 0: no message in the slot
        self.location = array("Q", bytes(8 * CHUNK_SLOTS))  # persistence.pack_location's
        self.published_at = array("d", bytes(8 * CHUNK_SLOTS))
        self.body_size = array("I", bytes(4 * CHUNK_SLOTS))
        self.header_len = array("I", bytes(4 * CHUNK_SLOTS))
        self.ttl = array("q", bytes(8 * CHUNK_SLOTS))  # the expiration property, ms; -1: none


class MessageIndex:
    """Message id -> the one queue holding it and its record's facts, in chunked arrays."""

    __slots__ = ("_chunks", "count")

    def __init__(self) -> None:
        self._chunks: dict[int, _Slots] = {}
        self.count = 0

    def add(self, msg_id: int, queue_id: int, location: int, published_at: float,
            body_size: int, header_len: int, ttl: int) -> None:  # fmt: skip
        """Index a message record (a later record of the same id, a relocated copy, wins)."""
        chunk = self._chunks.get(msg_id >> _SHIFT)
        if chunk is None:
            chunk = self._chunks[msg_id >> _SHIFT] = _Slots()
        slot = msg_id & (CHUNK_SLOTS - 1)
        if not chunk.queue_id[slot]:
            self.count += 1
        chunk.queue_id[slot] = queue_id
        chunk.location[slot] = location
        chunk.published_at[slot] = published_at
        chunk.body_size[slot] = body_size
        chunk.header_len[slot] = header_len
        chunk.ttl[slot] = ttl

    def add_rows(self, msg_ids: array[int], queue_ids: array[int], locations: array[int],
                 published_at: array[float], body_sizes: array[int], header_lens: array[int],
                 ttls: array[int]) -> None:  # fmt: skip
        """`add` of many records in log order (a segment summary's rows). A stretch of
        consecutive ids within one chunk (a backlog's usual shape) is copied in by array slices;
        anything else goes one by one."""
        count = len(msg_ids)
        start = 0
        while start < count:
            first = msg_ids[start]
            slot = first & (CHUNK_SLOTS - 1)
            stop = min(count, start + CHUNK_SLOTS - slot)
            if msg_ids[start:stop] != array("q", range(first, first + stop - start)):
                for index in range(start, stop):
                    self.add(msg_ids[index], queue_ids[index], locations[index],
                             published_at[index], body_sizes[index], header_lens[index],
                             ttls[index])  # fmt: skip
                start = stop
                continue
            chunk = self._chunks.get(first >> _SHIFT)
            if chunk is None:
                chunk = self._chunks[first >> _SHIFT] = _Slots()
            end = slot + stop - start
            self.count += chunk.queue_id[slot:end].count(0)
            chunk.queue_id[slot:end] = queue_ids[start:stop]
            chunk.location[slot:end] = locations[start:stop]
            chunk.published_at[slot:end] = published_at[start:stop]
            chunk.body_size[slot:end] = body_sizes[start:stop]
            chunk.header_len[slot:end] = header_lens[start:stop]
            chunk.ttl[slot:end] = ttls[start:stop]
            start = stop

    def settle(self, msg_id: int, queue_id: int) -> bool:
        """The queue let the message go; False when the index does not hold it there."""
        chunk = self._chunks.get(msg_id >> _SHIFT)
        slot = msg_id & (CHUNK_SLOTS - 1)
        if chunk is None or chunk.queue_id[slot] != queue_id:
            return False
        chunk.queue_id[slot] = 0
        self.count -= 1
        return True

    def discard(self, msg_id: int) -> None:
        """Forget a message: a later record of it (for several queues) supersedes this."""
        chunk = self._chunks.get(msg_id >> _SHIFT)
        slot = msg_id & (CHUNK_SLOTS - 1)
        if chunk is not None and chunk.queue_id[slot]:
            chunk.queue_id[slot] = 0
            self.count -= 1

    def drain_runs(self) -> Iterator[tuple[int, RecoveredRecords]]:
        """Every message in id order, as runs of consecutive messages one queue holds
        (queue id, their records; flags left empty), each chunk freed once passed."""
        for key in sorted(self._chunks):
            chunk = self._chunks.pop(key)
            queue_ids = chunk.queue_id
            base = key << _SHIFT
            run = _one_run(queue_ids)
            if run is not None:  # one queue's messages, together: slices, no step per slot
                start, stop = run
                if start == stop:
                    continue
                yield (
                    queue_ids[start],
                    RecoveredRecords(
                        array("q", range(base + start, base + stop)),
                        chunk.location[start:stop],
                        chunk.published_at[start:stop],
                        chunk.body_size[start:stop],
                        chunk.header_len[start:stop],
                        chunk.ttl[start:stop],
                    ),
                )
                continue
            live = [slot for slot in range(CHUNK_SLOTS) if queue_ids[slot]]
            start = 0
            while start < len(live):
                queue_id = queue_ids[live[start]]
                stop = start + 1
                while stop < len(live) and queue_ids[live[stop]] == queue_id:
                    stop += 1
                slots = live[start:stop]
                yield (
                    queue_id,
                    RecoveredRecords(
                        [base | slot for slot in slots],
                        [chunk.location[slot] for slot in slots],
                        [chunk.published_at[slot] for slot in slots],
                        [chunk.body_size[slot] for slot in slots],
                        [chunk.header_len[slot] for slot in slots],
                        [chunk.ttl[slot] for slot in slots],
                    ),
                )
                start = stop
        self.count = 0


def _one_run(queue_ids: array[int]) -> tuple[int, int] | None:
    """(start, stop) when the chunk's messages are one queue's and fill consecutive slots
    (ends empty at most; (0, 0) when it holds none), found with counts and searches in C;
    None otherwise."""
    held = CHUNK_SLOTS - queue_ids.count(0)
    if not held:
        return 0, 0
    queue_id = max(queue_ids)
    if queue_ids.count(queue_id) != held:
        return None
    start = queue_ids.index(queue_id)
    if queue_ids[start : start + held].count(queue_id) != held:
        return None
    return start, start + held
