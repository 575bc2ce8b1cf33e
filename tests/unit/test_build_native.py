"""scripts/build_native.py's failure paths, on a fake package: a build that fails half way
leaves the sources running, and a build copied into a package of other sources is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import mypyc.build
import pytest

from broker import native
from scripts import build_native
from tests.unit.test_native import fake_build


def test_a_build_that_fails_half_way_leaves_the_sources_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiler fails after the old build was taken away: no digest, no extension, so the
    guard runs the sources (never the old extensions beside new sources)."""
    package = tmp_path / "broker"
    fake_build(package)
    here = Path.cwd()

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("gcc: internal compiler error")

    monkeypatch.setattr(mypyc.build, "mypycify", failing)
    with pytest.raises(RuntimeError, match="internal compiler error"):
        build_native.build(native, package, None)
    assert Path.cwd() == here
    assert not list(package.rglob("*.so"))
    reason = native.why_pure(package, {})
    assert reason is not None and reason.startswith("not compiled")


def test_one_c_file_that_fails_to_compile_fails_the_parallel_compile() -> None:
    """Sources compile side by side; one that fails raises its own error (the build then
    writes no digest, as above), after every gcc started has finished, none left running."""
    compiled: list[str] = []

    def compile_one(sources: list[str], output_dir: str) -> list[str]:
        [source] = sources
        if source == "broken.c":
            raise RuntimeError("broken.c:1: error: expected ';'")
        compiled.append(source)
        return [f"{output_dir}/{source[:-2]}.o"]

    with pytest.raises(RuntimeError, match=r"broken\.c:1: error"):
        build_native.side_by_side(compile_one)(["a.c", "broken.c", "c.c"], output_dir="obj")
    assert sorted(compiled) == ["a.c", "c.c"]
    sources = [f"m{number}.c" for number in range(20)]
    objects = build_native.side_by_side(compile_one)(sources, output_dir="obj")
    assert objects == [f"obj/m{number}.o" for number in range(20)]  # in source order


def copy_sources(source: Path, target: Path) -> None:
    for relative in native.COMPILED:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target / relative)


def test_a_build_copied_into_the_same_sources_runs_compiled(tmp_path: Path) -> None:
    built, installed = tmp_path / "src" / "broker", tmp_path / "site" / "broker"
    fake_build(built)
    copy_sources(built, installed)
    build_native.copy_build(native, built, installed)
    assert native.why_pure(installed, {}) is None


def test_a_build_copied_into_other_sources_is_refused(tmp_path: Path) -> None:
    """The Docker image copies /src's build into site-packages: if they ever differ, the image
    build fails rather than ship extensions that the guard would then refuse at every start."""
    built, installed = tmp_path / "src" / "broker", tmp_path / "site" / "broker"
    fake_build(built)
    copy_sources(built, installed)
    with (installed / "core" / "queue.py").open("a") as source:
        source.write("\n# another version\n")
    with pytest.raises(SystemExit, match="would not run compiled: the sources changed"):
        build_native.copy_build(native, built, installed)
