"""Warren's pytest plugin as another project uses it: a test file with no conftest, in an empty
directory, gets a broker from the `amqp_url` / `amqp_broker` fixtures (the `pytest11` entry
point), session-scoped by default and per test with `warren_scope = function`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT

SAMPLE = Path(__file__).parent.parent / "plugin_sample" / "orders_check.py"


def _run_pytest(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=0", "-vv"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_project_gets_a_session_broker_from_the_plugin(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "test_orders.py")
    result = _run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    total = re.search(r"2 passed in ([\d.]+)s", result.stdout)
    print("the whole run, broker start included:", total.group(1) if total else "?", "s")


def test_warren_scope_function_gives_each_test_its_own_broker(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nwarren_scope = function\n")
    (tmp_path / "test_fresh.py").write_text(
        "import pika, pika.exceptions, pytest\n\n\n"
        "def test_one(amqp_url):\n"
        "    channel = pika.BlockingConnection(pika.URLParameters(amqp_url)).channel()\n"
        "    channel.queue_declare('only-here')\n\n\n"
        "def test_two(amqp_url):\n"
        "    channel = pika.BlockingConnection(pika.URLParameters(amqp_url)).channel()\n"
        "    with pytest.raises(pika.exceptions.ChannelClosedByBroker):\n"
        "        channel.queue_declare('only-here', passive=True)  # a new broker: 404\n"
    )
    result = _run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_a_broker_that_cannot_start_says_why_instead_of_hanging() -> None:
    """The failure path: the port is taken, so the fixture's broker cannot listen; start()
    raises with the reason (the test using it errors at once) and leaves no thread behind."""
    import dataclasses
    import socket
    import threading

    from broker.config import Listener
    from broker.pytest_plugin import EmbeddedBroker, embedded_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = dataclasses.replace(embedded_config(), listener=Listener("127.0.0.1", port))
        embedded = EmbeddedBroker(config)
        try:
            embedded.start()
        except RuntimeError as error:
            assert "failed to start" in str(error)
        else:
            raise AssertionError("a broker on a taken port started")
    embedded.stop()
    assert not any(thread.name == "warren-broker" for thread in threading.enumerate())


@pytest.mark.timeout(600)
def test_the_sample_passes_with_only_the_built_package_installed(tmp_path: Path) -> None:
    """What a project gets from `pip install warren-broker`: the package built as a wheel and
    installed into a fresh virtualenv (with pytest and pika, what the sample itself imports),
    nothing from this checkout on the path. The console's files and the plugin's entry point
    must be in the wheel for this to pass."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
         str(PROJECT_ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = wheels.glob("warren_broker-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel), "pytest", "pika"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(SAMPLE, project / "test_orders.py")
    result = subprocess.run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    console = subprocess.run(
        [str(python), "-c", "import broker.management.server as s; print(s.CONSOLE)"],
        cwd=project, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert str(venv) in console
    assert (Path(console) / "index.html").is_file()
