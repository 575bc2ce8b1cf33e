"""Queue.Declare argument validation (x-message-ttl, x-expires, x-max-length, x-overflow,
x-dead-letter-*, x-max-priority, x-single-active-consumer, x-queue-mode...) as RabbitMQ 3.10
does it for a classic queue.

RabbitMQ checks the arguments of a non-passive declare that creates a queue, and answers an
invalid one with 406 "invalid arg 'A' for queue 'Q' in vhost '/': WHY", where WHY is an Erlang
term: `{value_negative,-1}`, `{value_zero,0}`, `{value_too_large,N}`, `{max_value_exceeded,N}`,
`{unacceptable_type,T}`, a bare atom such as `invalid_overflow`, or a quoted string such as
`"expected integer, got longstr"`. T is RabbitMQ's name for the field-table type the client sent
(signedint for 'I', long for 'l', longstr for 'S', bool for 't', double for 'd'...).
"""

from __future__ import annotations

import datetime
import decimal
import re
import struct
from typing import Any

import pytest
from pamqp import commands, constants, encode
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.compat.helpers import (
    Cleanup,
    cleanup_fixture,  # noqa: F401  (fixture)
    expect_channel_close,
    queue_exists,
)
from tests.compat.rawamqp import RawAMQP, assert_reply, raw_connection

pytestmark = pytest.mark.timeout(30)

PF = "PRECONDITION_FAILED - "
# RabbitMQ's largest x-message-ttl / x-expires / expiration: ten years in milliseconds.
MAX_TTL = 315_360_000_000
# Queue.Declare is synchronous: its Channel.Close raises inside the block or never comes (so a
# broker that accepts the declare fails fast instead of after the default 5 s).
SYNC = 0.5


def _invalid(arg: str, queue: str, why: str) -> str:
    return f"{PF}invalid arg '{arg}' for queue '{queue}' in vhost '/': {why}"


def _inequivalent(arg: str, queue: str, detail: str) -> str:
    return f"{PF}inequivalent arg '{arg}' for queue '{queue}' in vhost '/': {detail}"


# --- invalid values -------------------------------------------------------------------------------

INVALID: list[Any] = [
    # x-message-ttl: a non-negative integer of at most 315360000000 (ms)
    pytest.param({"x-message-ttl": -1}, "x-message-ttl", "{value_negative,-1}", id="ttl-negative"),
    pytest.param(
        {"x-message-ttl": MAX_TTL + 1},
        "x-message-ttl",
        "{value_too_large,315360000001}",
        id="ttl-too-large",
    ),
    pytest.param(
        {"x-message-ttl": 2**63 - 1},
        "x-message-ttl",
        "{value_too_large,9223372036854775807}",
        id="ttl-int64-max",
    ),
    pytest.param(
        {"x-message-ttl": "100"},
        "x-message-ttl",
        '"expected integer, got longstr"',
        id="ttl-string",
    ),
    pytest.param(
        {"x-message-ttl": True}, "x-message-ttl", '"expected integer, got bool"', id="ttl-bool"
    ),
    pytest.param(
        {"x-message-ttl": decimal.Decimal("1.5")},
        "x-message-ttl",
        '"expected integer, got decimal"',
        id="ttl-decimal",
    ),
    pytest.param(
        {"x-message-ttl": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)},
        "x-message-ttl",
        '"expected integer, got timestamp"',
        id="ttl-timestamp",
    ),
    pytest.param(
        {"x-message-ttl": None}, "x-message-ttl", '"expected integer, got void"', id="ttl-void"
    ),
    pytest.param(
        {"x-message-ttl": {"a": 1}},
        "x-message-ttl",
        '"expected integer, got table"',
        id="ttl-table",
    ),
    pytest.param(
        {"x-message-ttl": [100]}, "x-message-ttl", '"expected integer, got array"', id="ttl-array"
    ),
    # x-expires: a positive integer of at most 315360000000 (ms)
    pytest.param({"x-expires": 0}, "x-expires", "{value_zero,0}", id="expires-zero"),
    pytest.param({"x-expires": -1}, "x-expires", "{value_negative,-1}", id="expires-negative"),
    pytest.param(
        {"x-expires": MAX_TTL + 1},
        "x-expires",
        "{value_too_large,315360000001}",
        id="expires-too-large",
    ),
    pytest.param(
        {"x-expires": "100"}, "x-expires", '"expected integer, got longstr"', id="expires-string"
    ),
    # x-max-length / x-max-length-bytes: a non-negative integer (no upper bound)
    pytest.param(
        {"x-max-length": -1}, "x-max-length", "{value_negative,-1}", id="max-length-negative"
    ),
    pytest.param(
        {"x-max-length": "10"},
        "x-max-length",
        '"expected integer, got longstr"',
        id="max-length-string",
    ),
    pytest.param(
        {"x-max-length-bytes": -1},
        "x-max-length-bytes",
        "{value_negative,-1}",
        id="max-length-bytes-negative",
    ),
    pytest.param(
        {"x-max-length-bytes": "10"},
        "x-max-length-bytes",
        '"expected integer, got longstr"',
        id="max-length-bytes-string",
    ),
    # x-overflow: one of three longstr values
    pytest.param({"x-overflow": "bogus"}, "x-overflow", "invalid_overflow", id="overflow-bogus"),
    pytest.param(
        {"x-overflow": 1}, "x-overflow", "{unacceptable_type,signedint}", id="overflow-int"
    ),
    pytest.param(
        {"x-overflow": True}, "x-overflow", "{unacceptable_type,bool}", id="overflow-bool"
    ),
    # x-dead-letter-routing-key: a longstr, and only together with x-dead-letter-exchange
    pytest.param(
        {"x-dead-letter-routing-key": "rk"},
        "x-dead-letter-routing-key",
        "routing_key_but_no_dlx_defined",
        id="dlrk-without-dlx",
    ),
    pytest.param(
        {"x-dead-letter-exchange": "amq.direct", "x-dead-letter-routing-key": 5},
        "x-dead-letter-routing-key",
        "{unacceptable_type,signedint}",
        id="dlrk-int",
    ),
    # x-max-priority: an integer 0..255
    pytest.param(
        {"x-max-priority": 256}, "x-max-priority", "{max_value_exceeded,256}", id="priority-256"
    ),
    pytest.param(
        {"x-max-priority": -1}, "x-max-priority", "{value_negative,-1}", id="priority-negative"
    ),
    pytest.param(
        {"x-max-priority": "5"},
        "x-max-priority",
        '"expected integer, got longstr"',
        id="priority-string",
    ),
    # x-single-active-consumer: a bool, nothing else (not even 0/1)
    pytest.param(
        {"x-single-active-consumer": "yes"},
        "x-single-active-consumer",
        "{unacceptable_type,longstr}",
        id="sac-string",
    ),
    pytest.param(
        {"x-single-active-consumer": 1},
        "x-single-active-consumer",
        "{unacceptable_type,signedint}",
        id="sac-int",
    ),
    pytest.param(
        {"x-single-active-consumer": 2**40},
        "x-single-active-consumer",
        "{unacceptable_type,long}",
        id="sac-long",
    ),
    # x-queue-mode: "default" or "lazy"; x-queue-type: "classic" here ("quorum"/"stream" need
    # durable queues)
    pytest.param(
        {"x-queue-mode": "bogus"},
        "x-queue-mode",
        "\"unsupported queue mode 'bogus'\"",
        id="queue-mode-bogus",
    ),
    pytest.param(
        {"x-queue-mode": 1}, "x-queue-mode", "{unacceptable_type,signedint}", id="queue-mode-int"
    ),
    pytest.param(
        {"x-queue-type": "bogus"},
        "x-queue-type",
        "\"unsupported queue type 'bogus'\"",
        id="queue-type-bogus",
    ),
    pytest.param(
        {"x-queue-type": 5}, "x-queue-type", "{unacceptable_type,signedint}", id="queue-type-int"
    ),
]


@pytest.mark.parametrize(("arguments", "arg", "why"), INVALID)
def test_invalid_argument_is_406(
    connection: BlockingConnection,
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    arguments: dict[str, Any],
    arg: str,
    why: str,
) -> None:
    """An invalid queue argument: 406 "invalid arg 'A' for queue 'Q' in vhost '/': WHY" (the
    exact WHY per case above); the queue is not created."""
    with expect_channel_close(channel, 406, f"invalid arg '{arg}'", timeout=SYNC) as close:
        channel.queue_declare(cleanup.queue(name), arguments=arguments)
    assert close.text == _invalid(arg, name, why)
    assert not queue_exists(connection, name)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(1, "signedint"), (True, "bool"), (2**40, "long"), ({"a": "b"}, "table")],
)
def test_dead_letter_exchange_of_wrong_type_is_406(
    channel: BlockingChannel, name: str, cleanup: Cleanup, value: Any, type_name: str
) -> None:
    """x-dead-letter-exchange must be a longstr. Its check has its own wording: 406 "invalid type
    'T' for arg 'x-dead-letter-exchange' in queue 'Q' in vhost '/'"."""
    with expect_channel_close(channel, 406, "x-dead-letter-exchange", timeout=SYNC) as close:
        channel.queue_declare(cleanup.queue(name), arguments={"x-dead-letter-exchange": value})
    assert close.text == (
        f"{PF}invalid type '{type_name}' for arg 'x-dead-letter-exchange' in queue '{name}'"
        " in vhost '/'"
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-max-in-memory-length": 5},
        {"x-max-in-memory-bytes": 5},
        {"x-quorum-initial-group-size": 3},
        {"x-dead-letter-strategy": "at-least-once"},
        {"x-queue-leader-locator": "balanced"},
        {"x-max-age": "1D"},
        {"x-initial-cluster-size": 3},
    ],
    ids=lambda args: next(iter(args)),
)
def test_quorum_or_stream_only_argument_on_classic_queue_is_406(
    channel: BlockingChannel, name: str, cleanup: Cleanup, arguments: dict[str, Any]
) -> None:
    """Arguments that only quorum queues or streams know are refused for a classic queue, with
    no reason term: 406 "invalid arg 'A' for queue 'Q' in vhost '/' of queue type
    rabbit_classic_queue"."""
    (arg,) = arguments
    with expect_channel_close(channel, 406, f"invalid arg '{arg}'", timeout=SYNC) as close:
        channel.queue_declare(cleanup.queue(name), arguments=arguments)
    assert close.text == (
        f"{PF}invalid arg '{arg}' for queue '{name}' in vhost '/' of queue type"
        " rabbit_classic_queue"
    )


def test_delivery_limit_on_a_classic_queue(
    channel: BlockingChannel, name: str, cleanup: Cleanup, target_is_warren: bool
) -> None:
    """x-delivery-limit is a quorum-queue argument in RabbitMQ 3.10, refused on a classic queue
    like the others above. Warren gives every queue type a delivery limit (a deliberate
    difference, in README), so it accepts it there."""
    queue = cleanup.queue(name)
    if target_is_warren:
        channel.queue_declare(queue, arguments={"x-delivery-limit": 5})
        return
    with expect_channel_close(
        channel, 406, "invalid arg 'x-delivery-limit'", timeout=SYNC
    ) as close:
        channel.queue_declare(queue, arguments={"x-delivery-limit": 5})
    assert close.text == (
        f"{PF}invalid arg 'x-delivery-limit' for queue '{name}' in vhost '/' of queue type"
        " rabbit_classic_queue"
    )


def test_invalid_argument_names_the_generated_queue_name(channel: BlockingChannel) -> None:
    """Declaring '' with a bad argument: the reply text names the amq.gen- name the queue would
    have had."""
    with expect_channel_close(channel, 406, "invalid arg 'x-message-ttl'", timeout=SYNC) as close:
        channel.queue_declare("", exclusive=True, arguments={"x-message-ttl": -1})
    pattern = r"invalid arg 'x-message-ttl' for queue 'amq\.gen-[^']+' in vhost '/': "
    assert re.fullmatch(re.escape(PF) + pattern + re.escape("{value_negative,-1}"), close.text)


@pytest.mark.parametrize(
    ("arguments", "arg", "why"),
    [
        # x-expires is checked before x-message-ttl whatever the table's order.
        ({"x-message-ttl": -1, "x-expires": 0}, "x-expires", "{value_zero,0}"),
        ({"x-expires": 0, "x-message-ttl": -1}, "x-expires", "{value_zero,0}"),
        ({"x-max-priority": 256, "x-message-ttl": -1}, "x-message-ttl", "{value_negative,-1}"),
        ({"x-overflow": "bogus", "x-max-length": -1}, "x-max-length", "{value_negative,-1}"),
        (
            {"x-dead-letter-routing-key": "k", "x-message-ttl": -1},
            "x-message-ttl",
            "{value_negative,-1}",
        ),
    ],
)
def test_first_invalid_argument_in_rabbitmq_order_is_reported(
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    arguments: dict[str, Any],
    arg: str,
    why: str,
) -> None:
    """With several bad arguments RabbitMQ reports one, in its own fixed order (x-expires,
    x-message-ttl, x-dead-letter-exchange, x-dead-letter-routing-key, x-max-length,
    x-max-length-bytes, x-max-priority, x-overflow, x-queue-mode, x-single-active-consumer...),
    not in the order the client's table lists them."""
    with expect_channel_close(channel, 406, f"invalid arg '{arg}'", timeout=SYNC) as close:
        channel.queue_declare(cleanup.queue(name), arguments=arguments)
    assert close.text == _invalid(arg, name, why)


def test_dead_letter_exchange_type_is_checked_before_the_other_arguments(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """The x-dead-letter-exchange type check comes before all other argument checks."""
    with expect_channel_close(channel, 406, "x-dead-letter-exchange", timeout=SYNC) as close:
        channel.queue_declare(
            cleanup.queue(name), arguments={"x-expires": 0, "x-dead-letter-exchange": 5}
        )
    assert close.text == (
        f"{PF}invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{name}'"
        " in vhost '/'"
    )


# --- valid values ---------------------------------------------------------------------------------

VALID: list[Any] = [
    pytest.param({"x-message-ttl": 0}, id="ttl-zero"),
    pytest.param({"x-message-ttl": 4_294_967_295}, id="ttl-uint32-max"),
    pytest.param({"x-message-ttl": 4_294_967_296}, id="ttl-above-uint32"),
    pytest.param({"x-message-ttl": MAX_TTL}, id="ttl-max"),
    pytest.param({"x-expires": 1}, id="expires-one"),
    pytest.param({"x-expires": MAX_TTL}, id="expires-max"),
    pytest.param({"x-max-length": 0}, id="max-length-zero"),
    pytest.param({"x-max-length": 2**63 - 1}, id="max-length-int64-max"),
    pytest.param({"x-max-length-bytes": 0}, id="max-length-bytes-zero"),
    pytest.param({"x-max-priority": 0}, id="priority-zero"),
    pytest.param({"x-max-priority": 1}, id="priority-one"),
    pytest.param({"x-max-priority": 255}, id="priority-255"),
    pytest.param({"x-overflow": "drop-head"}, id="overflow-drop-head"),
    pytest.param({"x-overflow": "reject-publish"}, id="overflow-reject-publish"),
    pytest.param({"x-overflow": "reject-publish-dlx"}, id="overflow-reject-publish-dlx"),
    pytest.param({"x-dead-letter-exchange": ""}, id="dlx-default-exchange"),
    pytest.param(
        {"x-dead-letter-exchange": "no-such-exchange", "x-dead-letter-routing-key": "k"},
        id="dlx-missing-exchange",
    ),
    pytest.param({"x-single-active-consumer": True}, id="sac-true"),
    pytest.param({"x-single-active-consumer": False}, id="sac-false"),
    pytest.param({"x-queue-mode": "lazy"}, id="queue-mode-lazy"),
    pytest.param({"x-queue-mode": "default"}, id="queue-mode-default"),
    pytest.param({"x-queue-type": "classic"}, id="queue-type-classic"),
    pytest.param({"x-queue-master-locator": "client-local"}, id="master-locator"),
    pytest.param({"x-custom": "anything", "plain": {"nested": [1, "a"]}}, id="unknown-args"),
    pytest.param(
        {
            "x-message-ttl": 100,
            "x-expires": 60_000,
            "x-max-length": 10,
            "x-max-length-bytes": 1000,
            "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "amq.direct",
            "x-dead-letter-routing-key": "dead",
            "x-max-priority": 10,
            "x-single-active-consumer": True,
            "x-queue-mode": "lazy",
        },
        id="all-together",
    ),
]


@pytest.mark.parametrize("arguments", VALID)
def test_valid_arguments_are_accepted(
    channel: BlockingChannel, name: str, cleanup: Cleanup, arguments: dict[str, Any]
) -> None:
    """Valid values (boundaries included: x-message-ttl 0 and 315360000000, x-expires 1,
    x-max-priority 0..255, any x-max-length >= 0) declare; the same declare again is
    equivalent. A missing dead-letter exchange is fine at declare time; unknown arguments and
    x-queue-mode are accepted."""
    ok = channel.queue_declare(cleanup.queue(name), arguments=arguments)
    assert ok.method.queue == name
    channel.queue_declare(name, arguments=arguments)


# --- field-table types only a raw client sends ----------------------------------------------------


def _declare_frame(queue: str, key: str, value: bytes) -> bytes:
    """Queue.Declare's payload with a one-entry argument table holding `value` (type letter and
    encoded value) under `key`."""
    table = encode.short_string(key) + value
    return b"".join(
        [
            struct.pack(">IH", commands.Queue.Declare.index, 0),
            encode.short_string(queue),
            b"\x00",  # passive, durable, exclusive, auto-delete, no-wait all off
            struct.pack(">I", len(table)) + table,
        ]
    )


def _raw_declare(client: RawAMQP, queue: str, key: str, value: bytes) -> object:
    client.send_raw(constants.FRAME_METHOD, 1, _declare_frame(queue, key, value))
    _, reply = client.read_frame()
    return reply


INTEGER_WIDTHS = [
    pytest.param(b"b" + struct.pack(">b", 5), id="b-byte"),
    pytest.param(b"B" + struct.pack(">B", 5), id="B-unsignedbyte"),
    pytest.param(b"s" + struct.pack(">h", 5), id="s-short"),
    pytest.param(b"u" + struct.pack(">H", 5), id="u-unsignedshort"),
    pytest.param(b"I" + struct.pack(">i", 5), id="I-signedint"),
    pytest.param(b"i" + struct.pack(">I", 5), id="i-unsignedint"),
    pytest.param(b"l" + struct.pack(">q", 5), id="l-long"),
]


@pytest.mark.parametrize("arg", ["x-message-ttl", "x-max-priority"])
@pytest.mark.parametrize("value", INTEGER_WIDTHS)
def test_integer_arguments_accept_every_integer_width(
    amqp_url: str, name: str, cleanup: Cleanup, arg: str, value: bytes
) -> None:
    """Integer arguments accept every integer field type (byte, short, signedint, long and their
    unsigned forms); a redeclare with the same number in another width ('I' here) is
    equivalent: RabbitMQ compares integer values, not their types."""
    cleanup.queue(name)
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        assert isinstance(_raw_declare(client, name, arg, value), commands.Queue.DeclareOk)
        signedint = b"I" + struct.pack(">i", 5)
        assert isinstance(_raw_declare(client, name, arg, signedint), commands.Queue.DeclareOk)


@pytest.mark.parametrize(
    ("arg", "value", "type_name"),
    [
        ("x-message-ttl", b"d" + struct.pack(">d", 100.0), "double"),
        ("x-message-ttl", b"f" + struct.pack(">f", 1.5), "float"),
        ("x-expires", b"d" + struct.pack(">d", 1.5), "double"),
        ("x-max-priority", b"d" + struct.pack(">d", 5.0), "double"),
        ("x-max-length", b"f" + struct.pack(">f", 10.0), "float"),
    ],
    ids=[
        "ttl-double-100.0",
        "ttl-float-1.5",
        "expires-double-1.5",
        "priority-double-5.0",
        "max-length-float-10.0",
    ],
)
def test_float_for_integer_argument_is_406(
    amqp_url: str, name: str, arg: str, value: bytes, type_name: str
) -> None:
    """A float ('f') or double ('d'), even a whole one such as 100.0, is not an integer:
    406 "... \"expected integer, got float\"" / "... got double\""."""
    with raw_connection(amqp_url) as client:
        client.open_channel(1)
        close = _raw_declare(client, name, arg, value)
        assert isinstance(close, commands.Channel.Close), close
        assert_reply(close, 406, _invalid(arg, name, f'"expected integer, got {type_name}"'))


# --- redeclare equivalence ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "arg", "detail"),
    [
        pytest.param(
            {"x-message-ttl": 100},
            {"x-message-ttl": 200},
            "x-message-ttl",
            "received '200' but current is '100'",
            id="ttl-changed",
        ),
        pytest.param(
            {"x-message-ttl": 100},
            {},
            "x-message-ttl",
            "received none but current is the value '100' of type 'signedint'",
            id="ttl-dropped",
        ),
        pytest.param(
            {},
            {"x-expires": 2**33},
            "x-expires",
            "received the value '8589934592' of type 'long' but current is none",
            id="expires-added-long",
        ),
        pytest.param(
            {"x-message-ttl": 100},
            {"x-message-ttl": "100"},
            "x-message-ttl",
            "received '100' but current is '100'",
            id="ttl-same-digits-as-string",
        ),
        pytest.param(
            {"x-message-ttl": 100, "x-expires": 1000},
            {"x-message-ttl": 200, "x-expires": 2000},
            "x-expires",
            "received '2000' but current is '1000'",
            id="expires-compared-before-ttl",
        ),
        pytest.param(
            {"x-message-ttl": 100},
            {"x-message-ttl": 100, "x-expires": -1},
            "x-expires",
            "received the value '-1' of type 'signedint' but current is none",
            id="equivalence-before-validation",
        ),
        pytest.param(
            {"x-max-priority": 10},
            {"x-max-priority": 5},
            "x-max-priority",
            "received '5' but current is '10'",
            id="priority-changed",
        ),
        pytest.param(
            {"x-dead-letter-exchange": "a"},
            {"x-dead-letter-exchange": "b"},
            "x-dead-letter-exchange",
            "received 'b' but current is 'a'",
            id="dlx-changed",
        ),
        pytest.param(
            {"x-dead-letter-exchange": "a", "x-dead-letter-routing-key": "k"},
            {"x-dead-letter-exchange": "a"},
            "x-dead-letter-routing-key",
            "received none but current is the value 'k' of type 'longstr'",
            id="dlrk-dropped",
        ),
        pytest.param(
            {"x-single-active-consumer": True},
            {"x-single-active-consumer": False},
            "x-single-active-consumer",
            "received 'false' but current is 'true'",
            id="sac-changed",
        ),
        pytest.param(
            {"x-overflow": "drop-head"},
            {"x-overflow": "reject-publish"},
            "x-overflow",
            "received 'reject-publish' but current is 'drop-head'",
            id="overflow-changed",
        ),
        pytest.param(
            {"x-queue-mode": "lazy"},
            {},
            "x-queue-mode",
            "received none but current is the value 'lazy' of type 'longstr'",
            id="queue-mode-dropped",
        ),
    ],
)
def test_redeclare_with_different_argument_is_406(
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    first: dict[str, Any],
    second: dict[str, Any],
    arg: str,
    detail: str,
) -> None:
    """A redeclare must repeat every argument RabbitMQ knows: 406 "inequivalent arg 'A' for
    queue 'Q' in vhost '/': received X but current is Y", with X/Y as 'V' when both are set (even
    when the types differ, so 100 vs "100" reads "received '100' but current is '100'"), or
    "none" / "the value 'V' of type 'T'" when one side lacks it. The equivalence check runs
    before validation, so an invalid new argument reads as inequivalent."""
    channel.queue_declare(cleanup.queue(name), arguments=first)
    with expect_channel_close(channel, 406, f"inequivalent arg '{arg}'", timeout=SYNC) as close:
        channel.queue_declare(name, arguments=second)
    assert close.text == _inequivalent(arg, name, detail)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param({"x-custom": "a"}, {"x-custom": "b"}, id="unknown-arg-changed"),
        pytest.param({"x-custom": "a"}, {}, id="unknown-arg-dropped"),
        pytest.param({"x-queue-type": "classic"}, {}, id="queue-type-classic-dropped"),
        pytest.param({}, {"x-queue-type": "classic"}, id="queue-type-classic-added"),
    ],
)
def test_redeclare_ignores_unknown_arguments_and_default_queue_type(
    channel: BlockingChannel,
    name: str,
    cleanup: Cleanup,
    first: dict[str, Any],
    second: dict[str, Any],
) -> None:
    """Arguments RabbitMQ does not know are not compared, and an explicit x-queue-type 'classic'
    is equivalent to none."""
    channel.queue_declare(cleanup.queue(name), arguments=first)
    channel.queue_declare(name, arguments=second)


def test_passive_declare_does_not_validate_arguments(
    channel: BlockingChannel, name: str, cleanup: Cleanup
) -> None:
    """A passive declare of an existing queue ignores its arguments, even invalid ones."""
    channel.queue_declare(cleanup.queue(name))
    ok = channel.queue_declare(
        name,
        passive=True,
        arguments={"x-message-ttl": -1, "x-dead-letter-exchange": 5, "x-overflow": "bogus"},
    )
    assert ok.method.queue == name
