"""Structured logs: one line per event, logfmt, so operators can grep and ship them.

    ts=2026-11-27T12:00:00.123Z level=info logger=warren.connection event=connection.opened
        peer=127.0.0.1:50412 user=guest vhost=/

Call sites name the event and pass its fields: `log.info("connection.opened",
extra=fields(peer=..., user=...))`; the formatter quotes values that need it. Values can come
from clients (a user name is logged before it is authenticated), so a value can never break out
of its field: inside quotes, `"` and `\\` are backslash-escaped and every non-printable character
(CR, LF, other control characters, Unicode line separators, bidi overrides) is written as a JSON
escape (`\\r`, `\\n`, `\\t`, `\\u001b`), so each event is exactly one line and a quoted value
reads back with a JSON string parser.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The `extra` argument that attaches key=value fields to a log event."""
    return {"fields": values}


_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code > 0xFFFF:  # a UTF-16 surrogate pair, as JSON writes it
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _quote(value: Any) -> str:
    """The value as it is when that is unambiguous, else in quotes with everything that could
    end the value, the field or the line escaped."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    escaped = "".join(_escape(c) if c in '"\\' or not c.isprintable() else c for c in text)
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
