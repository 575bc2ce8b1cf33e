"""Which modules run compiled, and the guard that never lets a stale build run.

The hot path (the wire, the model, the log) is compiled to C extensions by mypyc from these
same typed sources (scripts/build_native.py): pure Python cannot reach twice RabbitMQ's transient
throughput, the compiled modules do. The sources stay the fallback and are tested as such.

A compiled module is used only when it was built from exactly the source beside it. The build
records a digest of the sources it compiled; at import, before any module of the set loads,
`select` checks it. A source edited since the build, an incomplete build, or
WARREN_PURE_PYTHON=1 makes every module of the set load from its .py. Never a mix: the compiled
modules share one library and call each other's classes natively, so one module loaded from its
.py beside compiled ones would make two classes of one name.

This module is never compiled itself (it decides whether the others are) and imports only the
standard library, so the build can read it without importing the broker.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
# Paths in the package. Not compiled: fields.py and store/recovery.py subclass builtins (float,
# int, RuntimeError) that mypyc cannot; store/summary.py meets a mypyc bug with memoryview fields
# in a NamedTuple; wal_errors.py holds the log's OSError subclass for the same reason.
COMPILED = (
    "amqp/ack_timeout.py",
    "amqp/channel.py",
    "amqp/connection.py",
    "amqp/flow.py",
    "amqp/frames.py",
    "amqp/reply_to.py",
    "amqp/unacked.py",
    "core/arguments.py",
    "core/clock.py",
    "core/consumer.py",
    "core/dead_letter.py",
    "core/dedup.py",
    "core/delayed.py",
    "core/delivery_count.py",
    "core/errors.py",
    "core/exchange.py",
    "core/footprint.py",
    "core/header_edit.py",
    "core/message.py",
    "core/paging.py",
    "core/persistence.py",
    "core/properties.py",
    "core/queue.py",
    "core/queue_factory.py",
    "core/read_ahead.py",
    "core/ready.py",
    "core/sender_selected.py",
    "core/stats.py",
    "core/tables.py",
    "core/transfer.py",
    "core/vhost.py",
    "store/durable.py",
    "store/message_index.py",
    "store/records.py",
    "store/spill.py",
    "store/wal.py",
)
# The library the compiled modules share (broker/_compiled__mypyc.<abi>.so).
GROUP = "broker._compiled"
DIGEST_FILE = "compiled.digest"
PURE_ENV = "WARREN_PURE_PYTHON"
REQUESTED = f"{PURE_ENV} is set"  # the one reason that is a choice, not a problem
EXTENSION_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def module_name(relative: str) -> str:
    return "broker." + relative.removesuffix(".py").replace("/", ".")


def sources_digest(package_dir: Path) -> str:
    """What the build compiled: every source of the set, each with its path."""
    digest = hashlib.sha256()
    for relative in COMPILED:
        digest.update(relative.encode() + b"\0" + (package_dir / relative).read_bytes() + b"\0")
    return digest.hexdigest()


def extension_files(package_dir: Path) -> list[Path]:
    """The files a complete build leaves: one per module of the set and the shared library."""
    shared = package_dir / (GROUP.rpartition(".")[2] + "__mypyc" + EXTENSION_SUFFIX)
    return [shared] + [(package_dir / path).with_suffix(EXTENSION_SUFFIX) for path in COMPILED]


def why_pure(package_dir: Path, environ: Mapping[str, str]) -> str | None:
    """None when the compiled modules may run; else why the sources run instead."""
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return REQUESTED
    try:
        recorded = (package_dir / DIGEST_FILE).read_text().strip()
    except FileNotFoundError:
        return "not compiled (scripts/build_native.py compiles the hot modules)"
    except OSError as error:
        return f"{DIGEST_FILE} is unreadable ({error})"
    missing = [path.name for path in extension_files(package_dir) if not path.is_file()]
    if missing:
        return f"the build is incomplete ({missing[0]} is missing): run scripts/build_native.py"
    if recorded != sources_digest(package_dir):
        return "the sources changed since the build: run scripts/build_native.py"
    return None


class SourcesOnly(importlib.abc.MetaPathFinder):
    """Finds the modules of the set as their .py files, ahead of any extension beside them."""

    def __init__(self, package_dir: Path) -> None:
        self._paths = {module_name(path): package_dir / path for path in COMPILED}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._paths.get(fullname)
        return importlib.util.spec_from_file_location(fullname, source) if source else None


def select(package_dir: Path, environ: Mapping[str, str]) -> str | None:
    """Run at the package's import: keep the compiled modules, or make the sources load in
    their place. Returns why the sources run, or None when the compiled modules do."""
    reason = why_pure(package_dir, environ)
    if reason is not None and not any(isinstance(f, SourcesOnly) for f in sys.meta_path):
        sys.meta_path.insert(0, SourcesOnly(package_dir))
    return reason
