"""What the model asks of durable storage, and the store to use when nothing is durable.

The model calls these hooks as things happen (a durable queue declared, a persistent message
routed to durable queues, deliveries settled); the implementation decides how to log them. Keeping
the interface this small lets the model run in unit tests with `MemoryStore`, and lets the
write-ahead log batch and order records however it likes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from broker.core.exchange import Binding, Exchange
    from broker.core.message import Message, QueuedMessage
    from broker.core.queue import Queue

SyncCallback = Callable[[BaseException | None], None]


class MessageStore(Protocol):
    def exchange_declared(self, vhost: str, exchange: Exchange) -> None:
        """A durable exchange was created."""

    def exchange_deleted(self, vhost: str, exchange: Exchange) -> None:
        """A durable exchange was deleted."""

    def queue_declared(self, queue: Queue) -> None:
        """A queue that survives restarts was created; the store gives it `queue.store_id`."""

    def queue_deleted(self, queue: Queue, held: Iterable[QueuedMessage]) -> None:
        """A surviving queue was deleted with the messages it still held (ready or unacked)."""

    def binding_changed(self, vhost: str, binding: Binding, added: bool) -> None:
        """A binding between two durable ends was added or removed."""

    def persist(self, message: Message, queues: list[Queue]) -> None:
        """Log a persistent message routed to these surviving queues."""

    def delivered(self, queue: Queue, entry: QueuedMessage) -> None:
        """A logged message was handed to a consumer that must ack it (for redelivered flags)."""

    def settled(self, queue: Queue, entries: Iterable[QueuedMessage]) -> None:
        """Logged messages left the queue for good (ack, reject, purge, no-ack delivery)."""

    def sync(self, callback: SyncCallback) -> None:
        """Call back once everything logged so far is on disk (or failed to get there)."""

    def read_body(self, message: Message) -> bytes:
        """Load the body of a message whose body is not in memory."""


class MemoryStore:
    """Nothing survives a restart: every hook is a no-op and sync succeeds at once."""

    def exchange_declared(self, vhost: str, exchange: Exchange) -> None:
        """Nothing to log."""

    def exchange_deleted(self, vhost: str, exchange: Exchange) -> None:
        """Nothing to log."""

    def queue_declared(self, queue: Queue) -> None:
        """Nothing to log."""

    def queue_deleted(self, queue: Queue, held: Iterable[QueuedMessage]) -> None:
        """Nothing to log."""

    def binding_changed(self, vhost: str, binding: Binding, added: bool) -> None:
        """Nothing to log."""

    def persist(self, message: Message, queues: list[Queue]) -> None:
        """Nothing to log."""

    def delivered(self, queue: Queue, entry: QueuedMessage) -> None:
        """Nothing to log."""

    def settled(self, queue: Queue, entries: Iterable[QueuedMessage]) -> None:
        """Nothing to log."""

    def sync(self, callback: SyncCallback) -> None:
        callback(None)

    def read_body(self, message: Message) -> bytes:
        raise LookupError("a memory store keeps every body in memory")
