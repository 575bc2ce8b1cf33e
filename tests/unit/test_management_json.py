"""The management API's JSON: strict whatever a client put in its tables, fast when nothing
needs converting."""

from __future__ import annotations

import datetime
import decimal
import json

from broker.management.context import to_json
from broker.management.rows import TOO_DEEP


def strict(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_client_values_json_cannot_write_become_text() -> None:
    document = {
        "bytes": b"\xffraw",
        "decimal": decimal.Decimal("1.5"),
        "when": datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC),
        "nested": [{"b": bytearray(b"ok")}],
    }
    assert strict(to_json(document)) == {
        "bytes": "\ufffdraw",
        "decimal": "1.5",
        "when": "2026-12-02 00:00:00+00:00",
        "nested": [{"b": "ok"}],
    }


def test_what_the_fast_path_refuses_goes_through_the_careful_one() -> None:
    """NaN and infinities, keys that are not strings, and tables nested past the stack."""
    assert strict(to_json({"x": float("nan"), "y": [float("inf")]})) == {"x": "nan", "y": ["inf"]}
    assert strict(to_json({b"key": 1})) == {"b'key'": 1}
    deep: object = "bottom"
    for _ in range(5000):
        deep = {"d": deep}
    text = to_json(deep)
    assert TOO_DEEP in text
    strict(text)
