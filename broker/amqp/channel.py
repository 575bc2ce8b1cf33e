"""One AMQP channel: method dispatch, publish assembly, consumers, unacked tracking, QoS,
publisher confirms and transactions.

The channel is the model's `DeliverySink`: queues ask it whether a consumer has room
(`can_deliver`) and hand it messages (`deliver`), which it frames straight onto the connection's
write buffer. Publish, Ack and Deliver use the hand-written codecs in `frames`; everything else
goes through pamqp.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from pamqp import commands

from broker.amqp import frames, reply_to
from broker.amqp.unacked import RolledBack, Unacked
from broker.core.consumer import Consumer
from broker.core.errors import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    UNEXPECTED_FRAME,
    AMQPError,
    ChannelException,
    ConnectionException,
)
from broker.core.exchange import Exchange
from broker.core.fields import field_type_name
from broker.core.footprint import CONSUMER_BYTES
from broker.core.message import Message, QueuedMessage
from broker.core.persistence import LogUnavailable
from broker.core.properties import PropertyError, check_properties
from broker.core.queue import Queue
from broker.core.vhost import server_generated_name

if TYPE_CHECKING:
    from broker.amqp.connection import AMQPConnection

# What the channel expects next on the wire.
EXPECT_METHOD: Final = 0
EXPECT_HEADER: Final = 1
EXPECT_BODY: Final = 2
BASIC_CLASS: Final = 60
# Bytes of deliveries one connection frames per loop iteration before it waits for its write.
DELIVERY_BATCH_BYTES: Final = 1 << 20
# Deliveries framed in one iteration are written every EARLY_WRITE_BYTES, not only at its end:
# acks for a prefetch's worth arrive together after a long iteration (a read-ahead made a few
# hundred messages), and the deliveries they free, written in one piece at the end, left the
# consumer idle until then and the broker idle while the consumer caught up (lockstep).
EARLY_WRITE_BYTES: Final = 64 * 1024
EXPECTED_METHOD_FRAME: Final = "expected method frame, got non method frame instead"
USER_ID_FLAG: Final = 0x10  # user-id's bit in the low byte of the property flags
# Content headers up to this size are kept for the next publish to share (publishers repeat
# theirs); a larger one is not kept by the channel once its message is gone.
SHARED_HEADER_MAX = 1024


class Transaction:
    """Work a tx channel holds until Tx.Commit: publishes to route, settlements to apply."""

    __slots__ = ("held_bytes", "publishes", "settlements")

    def __init__(self) -> None:
        self.publishes: list[tuple[Exchange, Message, bool]] = []
        self.held_bytes = 0  # what the uncommitted publishes take, for the memory alarm
        # (delivery tag, unacked entry, requeue?) for ack (None), nack/reject
        self.settlements: list[tuple[int, Unacked, bool | None]] = []


class Channel:
    def __init__(self, connection: AMQPConnection, number: int) -> None:
        self.connection = connection
        self.number = number
        self.vhost = connection.vhost
        self.counters = connection.broker.counters
        # Direct reply-to: this channel's reply consumer tag and the address replies use.
        self.reply_consumer: bytes | None = None
        self.reply_address = ""
        self.access = connection.access
        self.expect = EXPECT_METHOD
        self._publish: tuple[str, str, bytes, bool, bool] | None = None
        self._last_publish_frame = b""
        self._last_publish: tuple[str, str, bytes, bool, bool] | None = None
        self._last_header = b""
        self._header = b""
        self._body_parts: list[bytes] = []
        self._body_remaining = 0
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, Unacked] = {}  # in tag order: see broker.amqp.unacked
        self.rolled_back: RolledBack | None = None  # made by the first rollback that needs it
        self._delivery_tag = 0
        self.prefetch_count = 0  # for consumers created from now on (qos global=false)
        self.global_prefetch = 0  # shared by all consumers of the channel (qos global=true)
        self.consumer_unacked = 0
        self.confirm_mode = False
        self._publish_seq = 0
        self._confirmed_upto = 0  # every publish up to this one has been acked or nacked
        self._unsynced: deque[int] = deque()  # logged publishes waiting for the log's fsync
        self._sync_requested = False
        self._nacks: list[int] = []  # publishes the log failed to store
        self.tx: Transaction | None = None
        self.committing = False  # a Tx.Commit waits for the log
        self.last_queue = ""

    # ------------------------------------------------------------------ frame entry points
    def handle_method(self, payload: bytes) -> None:
        index = int.from_bytes(payload[:4], "big")
        if self.expect != EXPECT_METHOD:
            text = (
                f"expected content header for class {BASIC_CLASS},"
                " got non content header frame instead"
                if self.expect == EXPECT_HEADER
                else "expected content body, got non content body frame instead"
            )
            self._fail(ConnectionException(UNEXPECTED_FRAME, text), frames.BASIC_PUBLISH)
        try:
            if index == frames.BASIC_PUBLISH:
                self._on_publish_frame(payload)
            elif index == frames.BASIC_ACK:
                self._ack(*frames.decode_ack(payload))
            else:
                self._dispatch_method(index, payload)
        except frames.MalformedFrame as malformed:  # one name per except: see below
            self._fail(ConnectionException(FRAME_ERROR, str(malformed)), index)
        except AMQPError as error:
            # Its own name: compiled, a name caught twice keeps the first clause's type.
            self._fail(error, index)

    def _dispatch_method(self, index: int, payload: bytes) -> None:
        if index == frames.ACCESS_REQUEST:
            # Access.Request is deprecated; RabbitMQ still grants a dummy ticket, so do we.
            self.connection.send(
                frames.frame(frames.FRAME_METHOD, self.number, frames.ACCESS_REQUEST_OK)
            )
            return
        try:
            method = frames.decode_method(payload)
        except KeyError:
            raise ConnectionException(
                NOT_IMPLEMENTED, f"unknown method {index >> 16}.{index & 0xFFFF}"
            ) from None
        handler = _HANDLERS.get(type(method))
        if handler is None:
            raise ConnectionException(COMMAND_INVALID, "unimplemented method")
        handler(self, method)

    def _fail(self, error: AMQPError, index: int) -> None:
        error.blame(index)
        if error.closes_connection:
            raise error
        self.close_with_error(error)

    def handle_header(self, payload: bytes) -> None:
        if self.expect != EXPECT_HEADER:
            raise ConnectionException(UNEXPECTED_FRAME, EXPECTED_METHOD_FRAME)
        if len(payload) < 14:
            raise ConnectionException(
                FRAME_ERROR, f"cannot decode content header {frames.erlang_binary(payload)}"
            )
        class_id = int.from_bytes(payload[:2], "big")
        if class_id != BASIC_CLASS:
            self._fail(
                ConnectionException(
                    UNEXPECTED_FRAME,
                    f"expected content header for class {BASIC_CLASS},"
                    f" got one for class {class_id} instead",
                ),
                frames.BASIC_PUBLISH,
            )
        size = frames.body_size(payload)
        limit = self.connection.config.limits.max_message_size
        if size > limit:
            self.expect = EXPECT_METHOD
            self._fail(
                ChannelException(
                    PRECONDITION_FAILED,
                    f"message size {size} is larger than configured max size {limit}",
                ),
                frames.BASIC_PUBLISH,
            )
            return
        if payload == self._last_header:
            payload = self._last_header
        else:
            try:
                check_properties(payload)
            except PropertyError as error:
                self._fail(error, frames.BASIC_PUBLISH)
            if len(payload) <= SHARED_HEADER_MAX:
                self._last_header = payload
        self._header = payload
        if size == 0:
            self._complete_publish(b"")
        else:
            self._body_remaining = size
            self._body_parts = []
            self.expect = EXPECT_BODY

    def handle_body(self, payload: bytes) -> None:
        if self.expect != EXPECT_BODY:
            raise ConnectionException(UNEXPECTED_FRAME, EXPECTED_METHOD_FRAME)
        remaining = self._body_remaining - len(payload)
        if remaining < 0:
            raise ConnectionException(
                FRAME_ERROR,
                f"content body on channel {self.number} is {-remaining} bytes longer"
                " than the body size its content header declared",
            )
        self._body_remaining = remaining
        if remaining:
            self._body_parts.append(payload)
            return
        if self._body_parts:
            self._body_parts.append(payload)
            body = b"".join(self._body_parts)
            self._body_parts = []
        else:
            body = payload
        self._complete_publish(body)

    def held_bytes(self) -> int:
        """Memory this channel holds outside queues: its consumers, a body being assembled and
        uncommitted tx publishes (the memory alarm counts it; a client can grow all at will)."""
        held = CONSUMER_BYTES * len(self.consumers)
        if self.expect == EXPECT_BODY:
            held += sum(len(part) for part in self._body_parts)
        return held + (self.tx.held_bytes if self.tx is not None else 0)

    # ------------------------------------------------------------------ publish
    def _on_publish_frame(self, payload: bytes) -> None:
        connection = self.connection
        if connection.blocking or not connection.publisher:
            connection.published()
        # A publisher mostly repeats its exchange, routing key and properties: reuse the decoded
        # strings and byte objects, so a million queued messages share them instead of copying.
        if payload != self._last_publish_frame:
            self._last_publish_frame = payload
            self._last_publish = frames.decode_publish(payload)
        self._publish = self._last_publish
        self.expect = EXPECT_HEADER

    def _complete_publish(self, body: bytes) -> None:
        self.expect = EXPECT_METHOD
        publish = self._publish
        assert publish is not None
        exchange_name, routing_key, route_bytes, mandatory, immediate = publish
        self._publish = None
        header, self._header = self._header, b""  # not kept past its message
        try:
            if immediate:  # RabbitMQ refuses it once the content is complete
                raise ConnectionException(NOT_IMPLEMENTED, "immediate=true")
            self.access.check("write", "exchange", exchange_name)
            exchange = self.vhost.exchanges.get(exchange_name)
            if exchange is None:
                raise ChannelException(
                    NOT_FOUND, f"no exchange '{exchange_name}' in vhost '{self.vhost.name}'"
                )
            if exchange.internal:
                raise ChannelException(
                    ACCESS_REFUSED,
                    f"cannot publish to internal exchange '{exchange_name}'"
                    f" in vhost '{self.vhost.name}'",
                )
            message = Message(exchange_name, routing_key, route_bytes, header, body)
            if message.header[13] & USER_ID_FLAG:
                self._check_user_id(message)
            if message.header[12] & reply_to.REPLY_TO_FLAG:
                message = self._address_reply_to(message)
            self.counters.published += 1
            if self.confirm_mode:
                self._publish_seq += 1
                self.counters.received_confirm += 1
            if self.tx is not None:
                self.tx.publishes.append((exchange, message, mandatory))
                self.tx.held_bytes += message.footprint
                return
            try:
                logged, refused = self._route(exchange, message, mandatory)
            except LogUnavailable:
                if not self.confirm_mode:
                    raise
                logged, refused = False, True  # not enqueued anywhere: say so
            if self.confirm_mode:
                if refused:  # the log failed, or a full queue refused it (x-overflow)
                    self._nacks.append(self._publish_seq)
                    self.connection.want_confirm_flush(self)
                else:
                    self._confirm_when_safe(self._publish_seq, logged)
        except AMQPError as error:
            self._fail(error, frames.BASIC_PUBLISH)

    def _check_user_id(self, message: Message) -> None:
        """RabbitMQ refuses a user-id property that names someone other than the publisher."""
        claimed = message.properties.get("user_id")
        if claimed != self.connection.user:
            raise ChannelException(
                PRECONDITION_FAILED,
                f"user_id property set to '{claimed}' but authenticated user was"
                f" '{self.connection.user}'",
            )

    def _address_reply_to(self, message: Message) -> Message:
        """A request naming the reply-to pseudo-queue gets this channel's reply address."""
        if message.properties.get("reply_to") != reply_to.PSEUDO_QUEUE:
            return message
        if self.reply_consumer is None:
            raise ChannelException(PRECONDITION_FAILED, "fast reply consumer does not exist")
        header = reply_to.with_reply_to(message.header, self.reply_address)
        return Message(
            message.exchange, message.routing_key, message.route_bytes, header, message.body
        )

    def _route(self, exchange: Exchange, message: Message, mandatory: bool) -> tuple[bool, bool]:
        """Route and enqueue: (logged, so its confirm waits for the sync; refused by a full
        queue, so its confirm is a nack)."""
        if not exchange.name and message.routing_key.startswith(reply_to.ADDRESS_PREFIX):
            requester = self.connection.broker.reply_channels.get(message.routing_key)
            # An address reaches only its own vhost; elsewhere it names no queue (unroutable).
            if requester is not None and requester.vhost is self.vhost:
                requester.deliver_reply(message)
                self.counters.routed += 1
                return False, False
        routed, logged, refused = self.vhost.publish(exchange, message)
        counters = self.counters
        if routed:
            counters.routed += 1
        elif not mandatory:
            counters.unroutable_dropped += 1
        else:
            counters.unroutable_returned += 1
            # A delayed message waiting in the log keeps its body only there.
            body = message.body if message.body is not None else self.vhost.store.read_body(message)
            self.connection.count_output(len(body) + 64)
            self.connection.send_parts(
                frames.content_frames(
                    self.number,
                    frames.return_payload(312, "NO_ROUTE", message.route_bytes),
                    message.header,
                    body,
                    self.connection.frame_max,
                )
            )
        return logged, refused

    # ------------------------------------------------------------------ publisher confirms
    # Confirms are a watermark: every publish up to it is confirmed, so one Basic.Ack(multiple)
    # says it. A logged message holds the watermark below it until the log's fsync covers it;
    # all messages logged during one loop iteration share one sync request.
    def _confirm_when_safe(self, seq: int, logged: bool) -> None:
        if logged:
            self._unsynced.append(seq)
            if not self._sync_requested:
                self._sync_requested = True
                self.connection.loop.call_soon(self._request_sync)
        self.connection.want_confirm_flush(self)

    def _request_sync(self) -> None:
        """Runs after the iteration's publishes were logged: one waiter covers them all."""
        self._sync_requested = False
        if not self._unsynced:
            return
        upto = self._unsynced[-1]
        self.vhost.store.sync(lambda error: self._synced(upto, error))

    def _synced(self, upto: int, error: BaseException | None) -> None:
        unsynced = self._unsynced
        while unsynced and unsynced[0] <= upto:
            seq = unsynced.popleft()
            if error is not None:
                self._nacks.append(seq)
        if self.is_open:
            self.connection.want_confirm_flush(self)

    @property
    def is_open(self) -> bool:
        return self.connection.channels.get(self.number) is self

    @property
    def unconfirmed(self) -> int:
        """Publishes not confirmed yet (they wait for the log's fsync); for metrics and ctl."""
        return len(self._unsynced)

    def flush_confirms(self) -> None:
        """Ack everything up to the watermark with as few Basic.Ack(multiple) as possible; a
        nacked publish splits the run, since no ack may cover a tag that was nacked. A nack
        waits until every publish before it is decided: acking the run below it must never
        cover a publish still waiting for the log's fsync."""
        watermark = self._unsynced[0] - 1 if self._unsynced else self._publish_seq
        if watermark <= self._confirmed_upto and not self._nacks:
            return
        frames_out: list[bytes] = []
        decided = sorted(seq for seq in self._nacks if seq <= watermark)
        if decided:
            self._nacks = [seq for seq in self._nacks if seq > watermark]
        for seq in decided:
            self._ack_upto(seq - 1, frames_out)
            # Everything below is decided now: multiple=true, as RabbitMQ coalesces.
            frames_out.append(frames.confirm_frame(self.number, seq, True, ack=False))
            self.counters.nacked += 1
            self._confirmed_upto = seq
        self._ack_upto(watermark, frames_out)
        if frames_out:
            self.connection.send_parts(frames_out)

    def _ack_upto(self, upto: int, frames_out: list[bytes]) -> None:
        newly = upto - self._confirmed_upto
        if newly > 0:
            frames_out.append(frames.confirm_frame(self.number, upto, newly > 1))
            self.counters.confirmed += newly
            self._confirmed_upto = upto

    # ------------------------------------------------------------------ delivery (DeliverySink)
    def can_deliver(self, consumer: Consumer) -> bool:
        if self.connection.write_paused:
            return False
        if consumer.no_ack:
            return True
        if consumer.prefetch and consumer.unacked >= consumer.prefetch:
            return False
        return not (self.global_prefetch and self.consumer_unacked >= self.global_prefetch)

    def deliver(self, consumer: Consumer, queue: Queue, entry: QueuedMessage) -> None:
        self._delivery_tag += 1
        tag = self._delivery_tag
        counters = self.counters
        if consumer.no_ack:
            counters.delivered_no_ack += 1
        else:
            counters.delivered += 1
            self.unacked[tag] = (queue, entry, consumer)
            consumer.unacked += 1
            self.consumer_unacked += 1
        if entry.redelivered:
            counters.redelivered += 1
        message = entry.message
        body = message.body  # the queue loaded it if it lived only in the log
        assert body is not None
        connection = self.connection
        connection.send_parts(
            frames.deliver_frames(
                self.number,
                consumer.wire_tag,
                tag,
                entry.redelivered,
                message.route_bytes,
                queue.delivery_header(entry) if entry.returns else message.header,
                body,
                connection.frame_max,
            )
        )
        if message.lazy:
            message.body = None  # framed: back to living in the log only
        # Bytes framed this loop iteration (framing counts too for tiny messages): past the
        # batch limit the connection takes no more deliveries until its write (see connection).
        connection.batch_bytes += len(body) + 64
        if connection.batch_bytes > DELIVERY_BATCH_BYTES:
            connection.hold_output()
        elif connection.batch_bytes - connection.early_mark > EARLY_WRITE_BYTES:
            connection.write_early()

    def deliver_reply(self, message: Message) -> None:
        """A reply to this channel's direct reply-to address: straight to its consumer."""
        assert self.reply_consumer is not None
        self._delivery_tag += 1
        self.counters.delivered_no_ack += 1
        body = message.body if message.body is not None else b""
        self.connection.count_output(len(body) + 64)
        self.connection.send_parts(
            frames.deliver_frames(
                self.number,
                self.reply_consumer,
                self._delivery_tag,
                False,
                message.route_bytes,
                message.header,
                body,
                self.connection.frame_max,
            )
        )

    def _stop_replies(self) -> None:
        if self.reply_consumer is not None:
            self.connection.broker.reply_channels.pop(self.reply_address, None)
            self.reply_consumer = None

    def consumer_cancelled(self, consumer: Consumer) -> None:
        if self.consumers.pop(consumer.tag, None) is None:
            return
        if self.connection.supports("consumer_cancel_notify"):
            self._send(commands.Basic.Cancel(consumer_tag=consumer.tag, nowait=True))

    def resume_delivery(self) -> None:
        for queue in {consumer.queue for consumer in self.consumers.values()}:
            queue.dispatch()

    # ------------------------------------------------------------------ settlement
    def _take_unacked(self, tag: int, multiple: bool) -> list[tuple[int, Unacked]]:
        unacked = self.unacked
        rolled_back = self.rolled_back
        if multiple:
            if tag == 0:
                taken = list(unacked.items())
            else:
                taken = []
                for key, value in unacked.items():
                    if key > tag:
                        break
                    taken.append((key, value))
            for key, _ in taken:
                del unacked[key]
            if rolled_back is not None and rolled_back.entries:
                earlier = rolled_back.take_all() if tag == 0 else rolled_back.take_through(tag)
                if earlier:  # tags are unique: the merge never compares the entries
                    taken = list(heapq.merge(earlier, taken))
            if not taken and tag:
                raise ChannelException(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
            return taken
        entry = unacked.pop(tag, None)
        if entry is None and rolled_back is not None:
            entry = rolled_back.pop(tag)
        if entry is None:
            raise ChannelException(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        return [(tag, entry)]

    def unacked_count(self) -> int:
        """Deliveries this channel holds unacked, rolled back ones included."""
        rolled_back = self.rolled_back
        return len(self.unacked) + (len(rolled_back) if rolled_back is not None else 0)

    def oldest_unacked(self) -> tuple[int, Unacked] | None:
        """The delivery with the lowest tag still unacked, None when there is none."""
        first = next(iter(self.unacked), None)
        if self.rolled_back is not None:
            earlier = self.rolled_back.oldest()
            if earlier is not None and (first is None or earlier < first):
                return earlier, self.rolled_back.entries[earlier]
        return None if first is None else (first, self.unacked[first])

    def _take_all_unacked(self) -> list[Unacked]:
        """Empty the unacked table (close, recover): everything held, rolled back ones too."""
        held = list(self.unacked.values())
        self.unacked.clear()
        if self.rolled_back is not None:
            held += [entry for _, entry in self.rolled_back.take_all()]
        return held

    def _ack(self, tag: int, multiple: bool) -> None:
        taken = self._take_unacked(tag, multiple)
        if self.tx is not None:
            self.tx.settlements += [(key, entry, None) for key, entry in taken]
            return
        self._settle([entry for _, entry in taken], requeue=None)

    def _reject(self, tag: int, multiple: bool, requeue: bool) -> None:
        taken = self._take_unacked(tag, multiple)
        if self.tx is not None:
            self.tx.settlements += [(key, entry, requeue) for key, entry in taken]
            return
        self._settle([entry for _, entry in taken], requeue=requeue)

    def _settle(self, entries: Iterable[Unacked], requeue: bool | None) -> None:
        """Release credit for settled deliveries; requeue if asked, then refill consumers."""
        touched: dict[Queue, list[QueuedMessage]] = {}
        settled = 0
        last: Queue | None = None  # an ack's entries mostly share one queue: no lookup each
        last_entries: list[QueuedMessage] = []
        for queue, entry, consumer in entries:
            settled += 1
            if consumer is not None:
                consumer.unacked -= 1
                self.consumer_unacked -= 1
            if queue is not last:
                last = queue
                found = touched.get(queue)
                if found is None:
                    found = touched[queue] = []
                last_entries = found
            last_entries.append(entry)
        if requeue is None:
            self.counters.acked += settled
        elif requeue:
            self.counters.requeued += settled
        else:
            self.counters.rejected += settled
        for queue, queue_entries in touched.items():
            if queue.deleted:
                continue
            if requeue:
                queue.requeue(queue_entries)
            elif requeue is None:
                queue.settle(queue_entries)
            else:
                queue.reject(queue_entries)
        if self.global_prefetch:
            self.resume_delivery()

    # ------------------------------------------------------------------ lifetime
    def close_with_error(self, error: AMQPError) -> None:
        self.release()
        self.connection.channel_closed_by_broker(self, error)

    def release(self) -> None:
        """Drop consumers, then requeue everything unacked (what RabbitMQ does on close)."""
        self.drop_consumers()
        self.return_unacked()

    def drop_consumers(self) -> None:
        self._stop_replies()
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for consumer in consumers:
            consumer.queue.remove_consumer(consumer)
            self.vhost.maybe_auto_delete(consumer.queue)

    def return_unacked(self) -> None:
        """Requeue what this channel still holds; the channel is gone after this."""
        self.counters.channels_closed += 1
        held = self._take_all_unacked()
        if self.tx is not None:
            held += [entry for _, entry, _ in self.tx.settlements]
            self.tx = None
        self._settle(held, requeue=True)
        # Confirms already earned go out before the close, as RabbitMQ sends them: dropping them
        # would make publishers send those messages again.
        self.flush_confirms()

    def _send(self, method: Any) -> None:
        self.connection.send(frames.method_frame(self.number, method))

    def _queue_name(self, name: str) -> str:
        """An empty queue name means the queue last declared on this channel."""
        if name:
            return name
        if not self.last_queue:
            raise ChannelException(NOT_FOUND, "no previously declared queue")
        return self.last_queue

    # ------------------------------------------------------------------ channel class
    def _on_channel_open(self, method: commands.Channel.Open) -> None:
        raise ConnectionException(CHANNEL_ERROR, "second 'channel.open' seen")

    def _on_channel_close(self, method: commands.Channel.Close) -> None:
        self.release()
        self.connection.channel_closed_by_client(self)

    def _on_flow(self, method: commands.Channel.Flow) -> None:
        if not method.active:
            raise ConnectionException(NOT_IMPLEMENTED, "active=false")
        self._send(commands.Channel.FlowOk(active=True))

    # ------------------------------------------------------------------ exchange class
    def _on_exchange_declare(self, method: commands.Exchange.Declare) -> None:
        if not method.passive:
            self.access.check("configure", "exchange", method.exchange)
            self.access.check_forwarding(
                "exchange", method.exchange, (method.arguments or {}).get("alternate-exchange")
            )
        self.vhost.declare_exchange(
            method.exchange,
            method.exchange_type,
            passive=method.passive,
            durable=method.durable,
            auto_delete=method.auto_delete,
            internal=method.internal,
            arguments=method.arguments,
            declared_by=self.connection.user,
        )
        if not method.nowait:
            self._send(commands.Exchange.DeclareOk())

    def _on_exchange_delete(self, method: commands.Exchange.Delete) -> None:
        self.access.check("configure", "exchange", method.exchange)
        self.vhost.delete_exchange(method.exchange, if_unused=method.if_unused)
        if not method.nowait:
            self._send(commands.Exchange.DeleteOk())

    def _on_exchange_bind(self, method: commands.Exchange.Bind) -> None:
        self.access.check_binding("exchange", method.destination, method.source)
        self.vhost.bind(
            method.source, method.destination, method.routing_key, method.arguments, True
        )
        if not method.nowait:
            self._send(commands.Exchange.BindOk())

    def _on_exchange_unbind(self, method: commands.Exchange.Unbind) -> None:
        self.access.check_binding("exchange", method.destination, method.source)
        self.vhost.unbind(
            method.source, method.destination, method.routing_key, method.arguments, True
        )
        if not method.nowait:
            self._send(commands.Exchange.UnbindOk())

    # ------------------------------------------------------------------ queue class
    def _on_queue_declare(self, method: commands.Queue.Declare) -> None:
        if method.passive and method.queue == reply_to.PSEUDO_QUEUE:
            # RabbitMQ lets clients check the pseudo-queue exists; it never holds messages.
            payload = frames.declare_ok_payload(method.queue, 0, 0)
            self.connection.send(frames.frame(frames.FRAME_METHOD, self.number, payload))
            return
        name = method.queue
        if method.passive and not name:
            name = self._queue_name(name)
        elif not method.passive:
            # Name a server-named queue first: permissions are checked on the name it gets.
            name = name or server_generated_name("amq.gen-")
            self.access.check("configure", "queue", name)
            self.access.check_forwarding(
                "queue", name, (method.arguments or {}).get("x-dead-letter-exchange")
            )
        queue = self.vhost.declare_queue(
            name,
            self.connection,
            passive=method.passive,
            durable=method.durable,
            exclusive=method.exclusive,
            auto_delete=method.auto_delete,
            arguments=method.arguments,
            server_named=not method.queue,
        )
        if queue.exclusive_owner is self.connection:
            self.connection.exclusive_queues[queue.name] = queue
        self.last_queue = queue.name
        if not method.nowait:
            self.connection.send(
                frames.frame(
                    frames.FRAME_METHOD,
                    self.number,
                    frames.declare_ok_payload(
                        queue.name, queue.message_count, len(queue.consumers)
                    ),
                )
            )

    def _on_queue_bind(self, method: commands.Queue.Bind) -> None:
        queue = self._queue_name(method.queue)
        self.access.check_binding("queue", queue, method.exchange)
        routing_key = method.routing_key or ("" if method.queue else queue)
        self.vhost.bind(
            method.exchange, queue, routing_key, method.arguments, False, self.connection
        )
        if not method.nowait:
            self._send(commands.Queue.BindOk())

    def _on_queue_unbind(self, method: commands.Queue.Unbind) -> None:
        queue = self._queue_name(method.queue)
        self.access.check_binding("queue", queue, method.exchange)
        routing_key = method.routing_key or ("" if method.queue else queue)
        self.vhost.unbind(
            method.exchange, queue, routing_key, method.arguments, False, self.connection
        )
        self._send(commands.Queue.UnbindOk())

    def _on_queue_purge(self, method: commands.Queue.Purge) -> None:
        name = self._queue_name(method.queue)
        self.access.check("read", "queue", name)
        count = self.vhost.purge_queue(name, self.connection)
        if not method.nowait:
            self._send(commands.Queue.PurgeOk(message_count=count))

    def _on_queue_delete(self, method: commands.Queue.Delete) -> None:
        name = self._queue_name(method.queue)
        self.access.check("configure", "queue", name)
        count = self.vhost.delete_queue(
            name, self.connection, if_unused=method.if_unused, if_empty=method.if_empty
        )
        self.connection.exclusive_queues.pop(name, None)
        if not method.nowait:
            self._send(commands.Queue.DeleteOk(message_count=count))

    # ------------------------------------------------------------------ basic class
    def _on_qos(self, method: commands.Basic.Qos) -> None:
        if method.prefetch_size:
            raise ConnectionException(NOT_IMPLEMENTED, f"prefetch_size!=0 ({method.prefetch_size})")
        if method.global_:
            self.global_prefetch = method.prefetch_count
        else:
            self.prefetch_count = method.prefetch_count
        self._send(commands.Basic.QosOk())
        self.resume_delivery()

    def _consume_replies(self, method: commands.Basic.Consume) -> None:
        """Basic.Consume on amq.rabbitmq.reply-to: no queue, just this channel's address."""
        if not method.no_ack:
            raise ChannelException(PRECONDITION_FAILED, "reply consumer cannot acknowledge")
        if self.reply_consumer is not None:
            raise ChannelException(PRECONDITION_FAILED, "reply consumer already set")
        tag = method.consumer_tag or server_generated_name("amq.ctag-")
        self.reply_consumer = frames.short_string(tag)
        self.reply_address = reply_to.new_address()
        self.connection.broker.reply_channels[self.reply_address] = self
        if not method.nowait:
            self._send(commands.Basic.ConsumeOk(consumer_tag=tag))

    def _on_consume(self, method: commands.Basic.Consume) -> None:
        if method.queue == reply_to.PSEUDO_QUEUE:
            self._consume_replies(method)
            return
        name = self._queue_name(method.queue)
        self.access.check("read", "queue", name)
        queue = self.vhost.get_queue(name, self.connection)
        tag = method.consumer_tag or server_generated_name("amq.ctag-")
        if tag in self.consumers:
            raise ConnectionException(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
        priority = (method.arguments or {}).get("x-priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ChannelException(
                PRECONDITION_FAILED,
                f"invalid arg 'x-priority' for queue '{queue.name}' in vhost"
                f" '{self.vhost.name}': \"expected integer, got {field_type_name(priority)}\"",
            )
        if queue.exclusive_consumer is not None or (
            # A single-active-consumer queue refuses exclusive consumers, as RabbitMQ does.
            method.exclusive and (queue.consumers or queue.settings.single_active_consumer)
        ):
            raise ChannelException(
                ACCESS_REFUSED,
                f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use",
            )
        consumer = Consumer(
            tag,
            queue,
            self,
            no_ack=method.no_ack,
            exclusive=method.exclusive,
            prefetch=self.prefetch_count,
            arguments=method.arguments,
        )
        consumer.wire_tag = frames.short_string(tag)
        self.consumers[tag] = consumer
        if not method.nowait:
            self._send(commands.Basic.ConsumeOk(consumer_tag=tag))
        queue.add_consumer(consumer)

    def _on_cancel(self, method: commands.Basic.Cancel) -> None:
        tag = method.consumer_tag or ""  # pamqp's decoding always sets it
        if self.reply_consumer == frames.short_string(tag):
            self._stop_replies()
        consumer = self.consumers.pop(tag, None)
        if not method.nowait:
            self._send(commands.Basic.CancelOk(consumer_tag=method.consumer_tag))
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)
            self.vhost.maybe_auto_delete(consumer.queue)

    def _on_get(self, method: commands.Basic.Get) -> None:
        name = self._queue_name(method.queue)
        self.access.check("read", "queue", name)
        queue = self.vhost.get_queue(name, self.connection)
        entry = queue.get(ack_required=not method.no_ack)
        if entry is None:
            self.counters.get_empty += 1
            self._send(commands.Basic.GetEmpty())
            return
        if method.no_ack:
            self.counters.get_no_ack += 1
        else:
            self.counters.get += 1
        if entry.redelivered:
            self.counters.redelivered += 1
        self._delivery_tag += 1
        tag = self._delivery_tag
        if not method.no_ack:
            self.unacked[tag] = (queue, entry, None)
        message = entry.message
        self.connection.send_parts(
            frames.content_frames(
                self.number,
                frames.get_ok_payload(
                    tag, entry.redelivered, message.route_bytes, queue.message_count
                ),
                queue.delivery_header(entry, get=True),
                message.body or b"",
                self.connection.frame_max,
            )
        )
        self.connection.count_output(len(message.body or b"") + 64)
        if message.lazy:
            message.body = None

    def _on_nack(self, method: commands.Basic.Nack) -> None:
        self._reject(method.delivery_tag or 0, method.multiple, method.requeue)

    def _on_reject(self, method: commands.Basic.Reject) -> None:
        self._reject(method.delivery_tag or 0, False, method.requeue)

    def _on_recover(self, method: commands.Basic.Recover) -> None:
        self._recover(method.requeue)
        self._send(commands.Basic.RecoverOk())

    def _on_recover_async(self, method: commands.Basic.RecoverAsync) -> None:
        self._recover(method.requeue)

    def _recover(self, requeue: bool) -> None:
        if not requeue:
            raise ConnectionException(NOT_IMPLEMENTED, "requeue=false")
        self._settle(self._take_all_unacked(), requeue=True)

    # ------------------------------------------------------------------ confirm and tx
    def _on_confirm_select(self, method: commands.Confirm.Select) -> None:
        if self.tx is not None:
            raise ChannelException(PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
        self.confirm_mode = True
        if not method.nowait:
            self._send(commands.Confirm.SelectOk())

    def _on_tx_select(self, method: commands.Tx.Select) -> None:
        if self.confirm_mode:
            raise ChannelException(PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
        if self.tx is None:
            self.tx = Transaction()
        self._send(commands.Tx.SelectOk())

    def _require_tx(self) -> Transaction:
        if self.tx is None:
            raise ChannelException(PRECONDITION_FAILED, "channel is not transactional")
        return self.tx

    def _on_tx_commit(self, method: commands.Tx.Commit) -> None:
        tx = self._require_tx()
        self.tx = Transaction()
        logged = refused = False
        for exchange, message, mandatory in tx.publishes:
            if self.vhost.exchanges.get(exchange.name) is exchange:
                routed_logged, routed_refused = self._route(exchange, message, mandatory)
                logged = logged or routed_logged
                refused = refused or routed_refused
        for requeue in (None, True, False):
            entries = [entry for _, entry, wanted in tx.settlements if wanted is requeue]
            if entries:
                self._settle(entries, requeue=requeue)
        if refused:  # a full queue refused a publish (x-overflow reject-publish), as RabbitMQ
            raise ChannelException(PRECONDITION_FAILED, "partial tx completion")
        # Committed acks of logged messages must be on disk too before Commit-Ok says so.
        logged = logged or any(entry[1].message.msg_id for _, entry, _ in tx.settlements)
        if not logged:
            self._send(commands.Tx.CommitOk())
            return

        self.committing = True  # until Commit-Ok, nothing else may arrive on this channel

        def synced(error: BaseException | None) -> None:
            self.committing = False
            if not self.is_open:
                return
            if error is None:
                self._send(commands.Tx.CommitOk())
            else:  # the commit's messages are not on disk: say so rather than pretend
                self.close_with_error(
                    ChannelException(INTERNAL_ERROR, f"commit could not be written: {error}")
                )

        self.vhost.store.sync(synced)

    def _on_tx_rollback(self, method: commands.Tx.Rollback) -> None:
        tx = self._require_tx()
        self.tx = Transaction()
        if tx.settlements:
            self._restore(sorted((tag, entry) for tag, entry, _ in tx.settlements))
        self._send(commands.Tx.RollbackOk())

    def _restore(self, restored: list[tuple[int, Unacked]]) -> None:
        """Give rolled-back deliveries back, keeping `unacked` in tag order without rebuilding
        it: tags after its newest are appended, older ones wait in `rolled_back`."""
        unacked = self.unacked
        newest = next(reversed(unacked), 0)
        for tag, entry in restored:
            if tag > newest:
                unacked[tag] = entry
                newest = tag
            else:
                if self.rolled_back is None:
                    self.rolled_back = RolledBack()
                self.rolled_back.add(tag, entry)


_HANDLERS: Final[dict[type, Any]] = {
    commands.Channel.Open: Channel._on_channel_open,
    commands.Channel.Close: Channel._on_channel_close,
    commands.Channel.Flow: Channel._on_flow,
    commands.Exchange.Declare: Channel._on_exchange_declare,
    commands.Exchange.Delete: Channel._on_exchange_delete,
    commands.Exchange.Bind: Channel._on_exchange_bind,
    commands.Exchange.Unbind: Channel._on_exchange_unbind,
    commands.Queue.Declare: Channel._on_queue_declare,
    commands.Queue.Bind: Channel._on_queue_bind,
    commands.Queue.Unbind: Channel._on_queue_unbind,
    commands.Queue.Purge: Channel._on_queue_purge,
    commands.Queue.Delete: Channel._on_queue_delete,
    commands.Basic.Qos: Channel._on_qos,
    commands.Basic.Consume: Channel._on_consume,
    commands.Basic.Cancel: Channel._on_cancel,
    commands.Basic.Get: Channel._on_get,
    commands.Basic.Nack: Channel._on_nack,
    commands.Basic.Reject: Channel._on_reject,
    commands.Basic.Recover: Channel._on_recover,
    commands.Basic.RecoverAsync: Channel._on_recover_async,
    commands.Confirm.Select: Channel._on_confirm_select,
    commands.Tx.Select: Channel._on_tx_select,
    commands.Tx.Commit: Channel._on_tx_commit,
    commands.Tx.Rollback: Channel._on_tx_rollback,
}
