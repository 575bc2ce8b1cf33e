"""The guard that chooses between the compiled modules and their Python sources
(broker/native.py): a stale, partial or missing build runs the sources, never a mix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import broker
from broker import native

ROOT = Path(__file__).resolve().parents[2]


def fake_build(package_dir: Path) -> None:
    """A package with the sources, a recorded digest, and a file where each extension goes."""
    for relative in native.COMPILED:
        target = package_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(native.PACKAGE_DIR / relative, target)
    for path in native.extension_files(package_dir):
        path.write_bytes(b"")
    (package_dir / native.DIGEST_FILE).write_text(native.sources_digest(package_dir) + "\n")


def test_a_complete_build_of_these_sources_runs_compiled(tmp_path: Path) -> None:
    fake_build(tmp_path)
    assert native.why_pure(tmp_path, {}) is None
    assert native.why_pure(tmp_path, {native.PURE_ENV: "0"}) is None


def test_the_sources_run_when_asked_to(tmp_path: Path) -> None:
    fake_build(tmp_path)
    assert native.why_pure(tmp_path, {native.PURE_ENV: "1"}) == f"{native.PURE_ENV} is set"


def test_a_source_edited_after_the_build_runs_every_source(tmp_path: Path) -> None:
    fake_build(tmp_path)
    with (tmp_path / "core" / "queue.py").open("a") as source:
        source.write("\n# edited\n")
    reason = native.why_pure(tmp_path, {})
    assert reason is not None and "sources changed" in reason
    assert "scripts/build_native.py" in reason  # says how to fix it


def test_a_build_missing_one_extension_runs_every_source(tmp_path: Path) -> None:
    fake_build(tmp_path)
    (tmp_path / "amqp" / "channel.py").with_suffix(native.EXTENSION_SUFFIX).unlink()
    reason = native.why_pure(tmp_path, {})
    assert reason is not None and "incomplete" in reason and "channel" in reason


def test_a_build_that_never_finished_runs_every_source(tmp_path: Path) -> None:
    """The build writes the digest last: killed before that, there is none."""
    fake_build(tmp_path)
    (tmp_path / native.DIGEST_FILE).unlink()
    reason = native.why_pure(tmp_path, {})
    assert reason is not None and reason.startswith("not compiled")


def imported_files(environ: dict[str, str]) -> list[str]:
    """Where a fresh interpreter loads the modules of the set from."""
    names = [native.module_name(path) for path in native.COMPILED]
    code = "import importlib as i, sys; print(*(i.import_module(n).__file__ for n in sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, *names], cwd=ROOT, env=environ, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_with_the_sources_asked_for_no_module_of_the_set_loads_compiled() -> None:
    files = imported_files(dict(os.environ, **{native.PURE_ENV: "1"}))
    assert len(files) == len(native.COMPILED)
    assert all(file.endswith(".py") for file in files)


def test_a_complete_build_loads_every_module_of_the_set_compiled() -> None:
    if native.why_pure(native.PACKAGE_DIR, {}) is not None:
        pytest.skip(f"no usable build here: {native.why_pure(native.PACKAGE_DIR, {})}")
    environ = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    files = imported_files(environ)
    assert all(file.endswith(native.EXTENSION_SUFFIX) for file in files)


def test_the_suite_runs_compiled_where_the_build_is_required() -> None:
    """scripts/test sets WARREN_REQUIRE_COMPILED for its compiled run: a stale or failed build
    must fail CI rather than quietly test the sources twice."""
    if os.environ.get("WARREN_REQUIRE_COMPILED") != "1":
        pytest.skip("WARREN_REQUIRE_COMPILED is not set")
    assert broker.PURE_REASON is None
