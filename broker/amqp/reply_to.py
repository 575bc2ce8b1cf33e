"""Direct reply-to (`amq.rabbitmq.reply-to`), as RabbitMQ offers it for RPC.

A client consumes from the pseudo-queue `amq.rabbitmq.reply-to` (no-ack) and publishes requests
with that name as their reply-to property; the broker rewrites it to an address naming the
requester's channel, and a reply published to that address through the default exchange goes
straight to the channel's reply consumer, with no queue in between.
"""

from __future__ import annotations

import base64
import os

from pamqp.header import ContentHeader

PSEUDO_QUEUE = "amq.rabbitmq.reply-to"
ADDRESS_PREFIX = PSEUDO_QUEUE + "."
REPLY_TO_FLAG = 0x02  # reply-to's bit in the high byte of the property flags


def new_address() -> str:
    """A reply address nobody can guess: the pseudo-queue name and a random token."""
    return ADDRESS_PREFIX + base64.urlsafe_b64encode(os.urandom(18)).decode()


def with_reply_to(header: bytes, address: str) -> bytes:
    """The content header with its reply-to property replaced (the one re-encode we do)."""
    content = ContentHeader()
    content.unmarshal(header)
    content.properties.reply_to = address
    return content.marshal()
