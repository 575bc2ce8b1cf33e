"""AMQP field-table value types, as RabbitMQ names them in its reply texts."""

from __future__ import annotations

from typing import Any


def field_type_name(value: Any) -> str:
    """The field type a client most likely sent for a decoded value (pamqp does not keep it)."""
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return "longstr"
