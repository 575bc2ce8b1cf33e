"""The compiled broker and its Python sources, side by side: each says in its log which one
runs, and each reads the other's log after a crash (one format, whichever code wrote it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import native
from tests.support import BrokerProcess, drain, publish_persistent

pytestmark = pytest.mark.warren_only

COMPILED = "event=broker.code mode=compiled"
PYTHON = "event=broker.code mode=python"


def start(data_dir: Path, pure: bool, monkeypatch: pytest.MonkeyPatch) -> BrokerProcess:
    if pure:
        monkeypatch.setenv(native.PURE_ENV, "1")
    else:
        monkeypatch.delenv(native.PURE_ENV, raising=False)
    return BrokerProcess(data_dir)


def test_the_python_sources_say_so_and_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = start(tmp_path, True, monkeypatch)
    try:
        publish_persistent(broker.url, "orders", [b"one", b"two"])
        assert drain(broker.url, "orders") == [b"one", b"two"]
    finally:
        broker.stop()
    assert f'{PYTHON} reason="{native.PURE_ENV} is set"' in broker.log_text()


def test_each_mode_recovers_what_the_other_confirmed_before_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = native.why_pure(native.PACKAGE_DIR, {})
    if reason is not None:
        pytest.skip(f"no usable build here: {reason}")
    compiled = start(tmp_path, False, monkeypatch)
    publish_persistent(compiled.url, "orders", [b"compiled-%d" % n for n in range(50)])
    compiled.kill()
    assert COMPILED in compiled.log_text()

    pure = start(tmp_path, True, monkeypatch)
    publish_persistent(pure.url, "orders", [b"python-%d" % n for n in range(50)])
    pure.kill()
    assert PYTHON in pure.log_text()

    again = start(tmp_path, False, monkeypatch)
    try:
        bodies = drain(again.url, "orders")
    finally:
        again.stop()
    assert bodies == [b"compiled-%d" % n for n in range(50)] + [b"python-%d" % n for n in range(50)]
