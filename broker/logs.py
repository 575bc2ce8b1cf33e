"""Structured logs: one line per event, logfmt, so operators can grep and ship them.

    ts=2026-11-27T12:00:00.123Z level=info logger=warren.connection event=connection.opened
        peer=127.0.0.1:50412 user=guest vhost=/

Call sites name the event and pass its fields: `log.info("connection.opened",
extra=fields(peer=..., user=...))`; the formatter quotes values that need it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The `extra` argument that attaches key=value fields to a log event."""
    return {"fields": values}


def _quote(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
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
