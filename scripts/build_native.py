"""Compile the broker's hot modules with mypyc, in place (broker/native.py says which and why).

    scripts/build_native.py                 build when the sources changed since the last build
    scripts/build_native.py --force         build anyway
    scripts/build_native.py --force --python-executable PY --copy-to DIR
                                            build, then install into a copy of the package
                                            (the Docker image's, in a venv's site-packages)

The extensions land beside their sources. The digest of the sources is written last, once every
extension is there: a build that fails or is killed half way leaves the sources running (the
broker logs why), never stale or partial compiled code. Needs mypy (the `native` extra) and a C
compiler with the Python headers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_native(package_dir: Path) -> ModuleType:
    """broker/native.py by its path: importing the package would already choose a mode."""
    spec = importlib.util.spec_from_file_location("warren_native", package_dir / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def side_by_side(compile_serially: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """A compiler's `compile` that runs one gcc per source in threads, objects in source
    order. A source that fails to compile raises its error once every gcc has finished, so
    the build fails as a serial one would (and writes no digest)."""

    def compile_each(sources: list[str], *args: Any, **kwargs: Any) -> list[str]:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            parts = pool.map(lambda source: compile_serially([source], *args, **kwargs), sources)
            return [obj for part in parts for obj in part]

    return compile_each


def parallel_build_ext() -> type:
    """setuptools' build_ext, compiling the C files of one extension side by side: the shared
    library is one extension of some forty files, which build_ext compiles one after another
    (its --parallel spreads whole extensions only), and gcc is most of a build."""
    from setuptools.command.build_ext import build_ext

    class ParallelBuildExt(build_ext):
        def build_extension(self, ext: Any) -> None:
            compile_serially = self.compiler.compile
            self.compiler.compile = side_by_side(compile_serially)
            try:
                super().build_extension(ext)
            finally:
                self.compiler.compile = compile_serially

    return ParallelBuildExt


def build(native: ModuleType, package_dir: Path, python_executable: str | None) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    (package_dir / native.DIGEST_FILE).unlink(missing_ok=True)  # first: the sources run
    for old in package_dir.rglob("*.so"):
        old.unlink()
    work = ROOT / "build" / "native"  # kept: an unchanged module's C is not compiled again
    work.mkdir(parents=True, exist_ok=True)
    # yaml and regex ship no type stubs; the compiled modules do not call them.
    flags = ["--ignore-missing-imports"]
    if python_executable:
        flags.append(f"--python-executable={python_executable}")
    here = Path.cwd()
    os.chdir(package_dir.parent)  # module names come from the paths: broker/amqp/channel.py
    try:
        extensions = mypycify(
            flags + [f"{package_dir.name}/{path}" for path in native.COMPILED],
            opt_level="3",
            group_name=native.GROUP,
            target_dir=str(work / "c"),
            multi_file=True,  # a C file per module, compiled side by side (parallel_build_ext)
        )
        for extension in extensions:  # mypyc puts a dotted group's headers one level down
            extension.include_dirs.append(str(work / "c" / package_dir.name))
        setup(
            name="warren-native",
            ext_modules=extensions,
            cmdclass={"build_ext": parallel_build_ext()},
            script_args=[
                "--quiet",
                "build_ext",
                "--inplace",
                f"--build-temp={work / 'objects'}",
            ],
        )
    finally:
        os.chdir(here)
    missing = [str(path) for path in native.extension_files(package_dir) if not path.is_file()]
    if missing:
        raise SystemExit(f"[native] the build left no {', '.join(missing)}")
    (package_dir / native.DIGEST_FILE).write_text(native.sources_digest(package_dir) + "\n")


def copy_build(native: ModuleType, package_dir: Path, target: Path) -> None:
    """The extensions and the digest into an installed copy of the package (mypy cannot build
    in site-packages, whose other modules it would take for the project's). The guard then
    checks the digest against the copy's own sources: a copy of other sources runs them."""
    for path in [*native.extension_files(package_dir), package_dir / native.DIGEST_FILE]:
        destination = target / path.relative_to(package_dir)
        shutil.copyfile(path, destination)
    reason = native.why_pure(target, {})
    if reason is not None:
        raise SystemExit(f"[native] {target} would not run compiled: {reason}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    parser.add_argument(
        "--copy-to", type=Path, help="an installed broker package to copy the build into"
    )
    parser.add_argument(
        "--python-executable", help="the Python whose packages mypy checks the imports against"
    )
    args = parser.parse_args()
    package_dir = ROOT / "broker"
    native = load_native(package_dir)
    stale = native.why_pure(package_dir, {})
    try:
        if stale is not None or args.force:
            print(
                f"[native] compiling {len(native.COMPILED)} modules with mypyc "
                f"(a minute or two): {stale or 'forced'}",
                file=sys.stderr,
                flush=True,
            )
            started = time.monotonic()
            build(native, package_dir, args.python_executable)
            print(f"[native] compiled in {time.monotonic() - started:.0f} s", file=sys.stderr)
        if args.copy_to is not None:
            copy_build(native, package_dir, args.copy_to.resolve())
    except (Exception, SystemExit) as error:
        print(
            f"[native] build failed ({error}): the broker runs its Python sources until a build "
            "succeeds",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
