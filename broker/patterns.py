"""Regular expressions from users (policy patterns, permission regexes, the API's name filter),
matched in bounded time.

Python's `re` has no time limit and holds the GIL: a pattern such as `(a|aa)+$` against a
61-character queue name backtracks for minutes, and the broker's event loop (every client) stops
with it. The `regex` module takes a timeout per match, so a hostile or careless pattern costs at
most MATCH_TIMEOUT per name; what happens then is the caller's choice (a filter refuses, a
policy stops applying, a permission denies). Its syntax is `re`'s (and PCRE's for what RabbitMQ
users write).
"""

from __future__ import annotations

import regex

MATCH_TIMEOUT = 0.02  # seconds per match: names are at most 255 bytes


class PatternTooSlow(Exception):
    """The pattern did not finish matching a name within MATCH_TIMEOUT."""


class PatternError(ValueError):
    """Not a valid regular expression; `message` and `position` say why and where (as PCRE
    reports it, which RabbitMQ's errors quote)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


class BoundedPattern:
    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        try:
            self._compiled = regex.compile(pattern)
        except regex.error as error:
            raise PatternError(str(error.msg), error.pos or 0) from None

    def search(self, name: str) -> bool:
        """Whether the pattern occurs anywhere in `name` (RabbitMQ searches, never anchors)."""
        try:
            return self._compiled.search(name, timeout=MATCH_TIMEOUT) is not None
        except TimeoutError:
            raise PatternTooSlow(self.pattern) from None
