"""The `warren` command line: config errors, overrides and password hashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from broker.auth import check_password
from tests.support import PROJECT_ROOT


def run_warren(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_invalid_config_stops_the_broker_with_the_key_path(tmp_path: Path) -> None:
    """A bad value stops the start with exit code 2 and names the key and the problem."""
    config = tmp_path / "broker.yaml"
    config.write_text(
        (PROJECT_ROOT / "config" / "broker.yaml")
        .read_text()
        .replace("frame_max: 131072", "frame_max: huge")
    )
    result = run_warren("--config", str(config))
    assert result.returncode == 2
    assert "limits.frame_max" in result.stderr
    assert "'huge'" in result.stderr


def test_plain_text_password_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text("users:\n  - name: alice\n    password: secret\n")
    result = run_warren("--config", str(config))
    assert result.returncode == 2
    assert "users[0].password" in result.stderr


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    result = run_warren("--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr
    assert "cannot read config file" in result.stderr


def test_hash_password_prints_a_usable_hash() -> None:
    result = run_warren("hash-password", "s3cret")
    assert result.returncode == 0
    digest = result.stdout.strip()
    assert check_password("s3cret", digest)
    assert not check_password("other", digest)


def test_console_script_is_installed() -> None:
    warren = Path(sys.executable).parent / "warren"
    result = subprocess.run([str(warren), "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert "--metrics-port" in result.stdout
