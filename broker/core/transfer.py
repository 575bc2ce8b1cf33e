"""Moving a changed copy of a message out of one queue into others (dead-lettering). Where the
message is logged in its source and the copy goes to surviving queues, leaving and arriving
are one MOVE record, so after a crash it is in exactly one place. (A delayed message moves
unchanged, with a REROUTE record: see delayed.py.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.message import Message, QueuedMessage
from broker.core.persistence import MessageStore

if TYPE_CHECKING:
    from broker.core.queue import Queue


def transfer(
    store: MessageStore,
    source: Queue,
    entry: QueuedMessage,
    copy: Message | None,
    targets: list[Queue],
    logged: bool,
) -> None:
    """`entry` leaves `source` (its log holds it when `logged`); `copy` (None: dropped) enters
    `targets`, which admitted it. Raises LogUnavailable, having changed nothing, when the log
    refuses the record."""
    original = entry.message
    in_log = logged and original.msg_id != 0
    # After an unclean restart, a move before the crash may have reached a consumer.
    again = store.uncertain(original)
    surviving = [target for target in targets if target.store_id]
    if copy is not None and surviving and copy.persistent:
        if in_log:
            store.moved(source, entry, copy, surviving)
        else:
            store.persist(copy, surviving)
        if original.lazy:
            copy.evict_body()  # read back from the log for this: it lives there again
    elif in_log:
        store.settled(source, (entry,))
    if copy is not None:
        for target in targets:
            target.publish(copy, again)
