"""AMQP errors raised by the model and the wire layer.

Each error carries the reply code the peer must see. A `ChannelException` closes only the channel
it happened on; a `ConnectionException` closes the whole connection (the spec's names). The text
follows RabbitMQ's style, "NOT_FOUND - no queue 'q' in vhost '/'", so that client logs read the
same on either broker.
"""

from __future__ import annotations

from typing import ClassVar, Final

REPLY_NAMES = {
    200: "OK",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}

ACCESS_REFUSED: Final = 403
NOT_FOUND: Final = 404
RESOURCE_LOCKED: Final = 405
PRECONDITION_FAILED: Final = 406
FRAME_ERROR: Final = 501
SYNTAX_ERROR: Final = 502
COMMAND_INVALID: Final = 503
CHANNEL_ERROR: Final = 504
UNEXPECTED_FRAME: Final = 505
RESOURCE_ERROR: Final = 506
NOT_ALLOWED: Final = 530
NOT_IMPLEMENTED: Final = 540
INTERNAL_ERROR: Final = 541


class AMQPError(Exception):
    """An error with an AMQP reply code; `reply_text` is what goes on the wire."""

    closes_connection: ClassVar[bool] = False

    def __init__(self, code: int, text: str, blame_method: bool = True) -> None:
        super().__init__(f"{REPLY_NAMES.get(code, str(code))} - {text}")
        self.code = code
        self.text = text  # without the reply name, as RabbitMQ's management API reports it
        # A short string: at most 255 bytes of UTF-8, cut at a character boundary (names in
        # the text may be any UTF-8; cutting characters instead could leave 700 bytes).
        self.reply_text = str(self).encode("utf-8")[:255].decode("utf-8", "ignore")
        self.class_id = 0
        self.method_id = 0
        # Whether the Close names the method that failed; RabbitMQ names none for some errors.
        self.blame_method = blame_method

    def blame(self, index: int) -> None:
        """Name the method (class id << 16 | method id) that caused the error, once."""
        if self.blame_method and not self.class_id:
            self.class_id, self.method_id = index >> 16, index & 0xFFFF


class ChannelException(AMQPError):
    """A soft error: the broker closes the channel and the connection carries on."""


class ConnectionException(AMQPError):
    """A hard error: the broker closes the connection."""

    closes_connection: ClassVar[bool] = True


def describe(kind: str, name: str, vhost: str) -> str:
    """RabbitMQ's way of naming a resource in reply texts: "queue 'q' in vhost '/'"."""
    return f"{kind} '{name}' in vhost '{vhost}'"
