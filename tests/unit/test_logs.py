"""The logfmt formatter: one line per event, and no field value can forge another field or line."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from broker.logs import LogfmtFormatter, fields

# key=bare-value or key="quoted value with JSON escapes"
FIELD = re.compile(r'([A-Za-z_.]+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')


def format_event(event: str = "connection.refused", **values: object) -> str:
    record = logging.LogRecord("warren.connection", logging.WARNING, __file__, 1, event, (), None)
    record.__dict__.update(fields(**values))
    return LogfmtFormatter().format(record)


def parse(line: str) -> dict[str, str]:
    """A strict logfmt reader: the whole line must be key=value fields separated by spaces."""
    parsed: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = FIELD.match(line, position)
        assert match is not None, f"not logfmt at {position}: {line[position:]!r}"
        key, value = match.groups()
        assert key not in parsed, f"field {key} appears twice in {line!r}"
        parsed[key] = json.loads(value) if value.startswith('"') else value
        position = match.end()
    return parsed


def test_forged_line_in_a_user_name_stays_in_its_field() -> None:
    """A user name is logged before it is authenticated; CR LF in it must neither end the line
    nor add a level or msg field."""
    user = "bob\r\nts=2026-01-01T00:00:00.000Z level=error msg=fake"
    line = format_event(peer="127.0.0.1:5000", user=user, reason="login refused")
    assert "\r" not in line and "\n" not in line
    assert len(line.splitlines()) == 1
    assert '"bob\\r\\nts=2026-01-01T00:00:00.000Z level=error msg=fake"' in line
    parsed = parse(line)
    assert parsed["user"] == user
    assert parsed["level"] == "warning"
    assert "msg" not in parsed


@pytest.mark.parametrize(
    "value",
    [
        "a\rb",  # carriage return: a terminal or `less` shows the rest as a new line
        "a\nb",
        "a\x00b",
        "a\x1b[31mred\x1b[0m",  # ANSI escape: recolours or rewrites the operator's terminal
        "a\x0bb\x0cc",  # vertical tab, form feed: str.splitlines breaks on them
        "a\x1cb\x1db\x1eb",  # file/group/record separators: splitlines breaks on them too
        "a\x85b",  # NEL
        "a\u2028b\u2029c",  # Unicode line and paragraph separators
        "a\u202eb",  # right-to-left override: hides what follows
        "a\x7fb",
        "\udcff",  # a lone surrogate (undecodable bytes) would fail the stderr write
        "a\U000e0001b",  # a non-printable astral character: written as a surrogate pair
    ],
)
def test_control_characters_are_escaped(value: str) -> None:
    """Every non-printable character is written as an escape: the line stays one printable
    line, and the value reads back exactly."""
    line = format_event(user=value)
    assert line.isprintable()
    assert len(line.splitlines()) == 1
    assert parse(line)["user"] == value


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("guest", "guest"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ('\\" level=error', '"\\\\\\" level=error"'),  # an escaped quote cannot end the value
        ("tab\there", '"tab\\there"'),
        ("naïve ünïcode", '"naïve ünïcode"'),  # printable non-ASCII stays readable
    ],
)
def test_quoting_and_escaping(value: str, written: str) -> None:
    """Plain values stay bare; spaces, '=', quotes and backslashes are quoted and escaped so
    that the value reads back exactly and no other field appears."""
    line = format_event(user=value, vhost="/")
    assert f" user={written} " in line
    parsed = parse(line)
    assert parsed["user"] == value
    assert parsed["vhost"] == "/"


def test_event_and_traceback_are_one_line() -> None:
    """The event name and an exception's multi-line traceback are escaped the same way."""
    try:
        raise ValueError("bad\r\nlevel=error")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("warren", logging.ERROR, __file__, 1, "odd event\n", (), exc_info)
    line = LogfmtFormatter().format(record)
    assert len(line.splitlines()) == 1
    parsed = parse(line)
    assert parsed["event"] == "odd event\n"
    assert "ValueError: bad\r\nlevel=error" in parsed["error"]
