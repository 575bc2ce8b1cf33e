"""AMQP field-table value types, as RabbitMQ names them in its reply texts."""

from __future__ import annotations

import datetime
import decimal
from typing import Any


class Float32(float):
    """A value that arrived as a 32-bit float ('f'): it names its type in reply texts and is
    written back as it came."""


class Long(int):
    """An integer RabbitMQ holds as a 64-bit 'long' whatever its size: a JSON number from the
    management API, as RabbitMQ's plugin converts them, so reply texts name the same type."""


def field_type_name(value: Any) -> str:
    """The field type a client most likely sent for a decoded value (pamqp does not keep it)."""
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Long):
        return "long"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, Float32):
        return "float"
    if isinstance(value, float):
        return "double"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, bytearray):
        return "binary"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return "longstr"
