"""The fuzz tests' broker, canary and judge.

`FuzzBroker` runs one Warren process (with /metrics and the admin API on), keeps a canary
connection on it, runs fuzzed `Case`s against it and records what broke the rules as findings:
a reply code outside the spec, an internal error (541), an error in the broker's log, a hang, a
connection dropped without Connection.Close, malformed bytes from the broker, a canary not served
within CANARY_TIMEOUT, a dead process. When the broker dies or stalls it is restarted (on the same
data directory: recovery is tested too), so one finding does not hide the next.

Findings are deduplicated by a signature (the problem with numbers and quoted values blanked, plus
the exception an internal error logged); each keeps its smallest reproduction.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import socket
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pamqp import commands, frame, header
from pamqp.body import ContentBody
from prometheus_client.parser import text_string_to_metric_families

from tests.compat.rawamqp import REPLY_NAMES, RawAMQP
from tests.fuzz import wire
from tests.fuzz.strategies import Case
from tests.support import BrokerProcess, free_port, shipped_config, write_config

# The run's seed: WARREN_FUZZ_SEED to replay a run, else a fresh one (printed in the summary).
SEED = int(os.environ.get("WARREN_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
# WARREN_FUZZ_SCALE=10 runs ten times the examples (a longer hunt outside the suite).
SCALE = float(os.environ.get("WARREN_FUZZ_SCALE") or 1.0)
# WARREN_FUZZ_SHRINK=1: fail at the first finding and let hypothesis shrink it.
SHRINK = os.environ.get("WARREN_FUZZ_SHRINK", "") not in ("", "0")
CANARY_TIMEOUT = float(os.environ.get("WARREN_FUZZ_CANARY_TIMEOUT") or 1.0)
RSS_GROWTH_LIMIT = 256 * 1024 * 1024  # generous: a leak per example still shows
FD_SLACK = 6  # log segments opened by rolls, the metrics/admin sockets in use
SEGMENT_SIZE = 1 << 16  # the smallest the config allows


def examples(base: int) -> int:
    return max(1, int(base * SCALE))


@dataclass
class Finding:
    signature: str
    test: str
    problems: list[str]
    case_kind: str
    in_header: bool
    data: bytes
    outcome: str
    log: list[str]
    count: int = 1
    second: bytes = b""
    frame_max: int = wire.FRAME_MAX

    def describe(self, limit: int = 600) -> str:
        hexdata = self.data.hex()
        shown = (
            hexdata if len(hexdata) <= limit else hexdata[:limit] + f"... ({len(self.data)} bytes)"
        )
        mode = "--in-header " if self.in_header else ""
        if self.second:
            mode += f"--second {self.second.hex()} "
        if self.frame_max != wire.FRAME_MAX:
            mode += f"--frame-max {self.frame_max} "
        lines = [
            f"[{self.test}] x{self.count}: {self.signature}",
            *(f"    problem: {p}" for p in self.problems),
            f"    outcome: {self.outcome[:400]}",
            *(f"    log: {line[:600]}" for line in self.log[:4]),
            f"    replay: python -m tests.fuzz.replay --start {mode}{shown}",
        ]
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "signature": self.signature,
            "test": self.test,
            "count": self.count,
            "problems": self.problems,
            "kind": self.case_kind,
            "in_header": self.in_header,
            "hex": self.data.hex(),
            "second": self.second.hex(),
            "frame_max": self.frame_max,
            "outcome": self.outcome,
            "log": self.log,
        }


@dataclass
class Report:
    """What the session's fuzz tests did, for the terminal summary."""

    seed: int = SEED
    examples: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    texts: Counter[str] = field(default_factory=Counter)  # reply texts, in the findings file
    canary: list[float] = field(default_factory=list)  # round-trip seconds after each case
    slowest: list[tuple[float, str, int]] = field(default_factory=list)  # (s, test, bytes)
    findings: dict[str, Finding] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    findings_path: Path | None = None

    def record(self, finding: Finding) -> None:
        key = f"{finding.test}: {finding.signature}"
        known = self.findings.get(key)
        if known is None:
            self.findings[key] = finding
            return
        known.count += 1
        if len(finding.data) < len(known.data):
            finding.count = known.count
            self.findings[key] = finding

    def save(self) -> None:
        if self.findings_path is not None:
            rows = [finding.as_json() for finding in self.findings.values()]
            texts = dict(self.texts.most_common())
            self.findings_path.write_text(
                json.dumps({"findings": rows, "reply_texts": texts}, indent=1)
            )

    def slow(self, seconds: float, test: str, size: int) -> None:
        self.slowest = sorted([*self.slowest, (seconds, test, size)], reverse=True)[:3]

    def _timing(self) -> str:
        times = sorted(self.canary)
        if not times:
            return "canary: no round trips"
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        slowest = ", ".join(f"{t:.2f}s ({test}, {size} bytes)" for t, test, size in self.slowest)
        return (
            f"canary round trips: {len(times)}, p99 {p99 * 1000:.0f} ms, max"
            f" {times[-1] * 1000:.0f} ms; slowest exchanges: {slowest}"
        )

    def lines(self) -> list[str]:
        total = sum(self.examples.values())
        out = [
            f"seed {self.seed} (WARREN_FUZZ_SEED={self.seed} replays this run),"
            f" scale {SCALE:g}, {total} examples: "
            + ", ".join(
                f"{name} {count} in {self.durations.get(name, 0):.1f}s"
                for name, count in self.examples.items()
            ),
            "broker answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.replies.items())),
            self._timing(),
            *self.notes,
        ]
        if self.findings:
            out.append(f"{len(self.findings)} distinct findings (all in {self.findings_path}):")
            out += [finding.describe() for finding in self.findings.values()]
        else:
            out.append("no findings")
        return out


REPORT = Report()

_DIGITS = re.compile(r"\d+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|<<[^>]*>>")


_DETAIL = re.compile(r"\([^()]*\)")


def signature_of(problem: str) -> str:
    """What identifies a kind of problem: numbers, quoted values and details blanked."""
    problem = problem.removeprefix("second connection: ")
    return _DIGITS.sub("N", _DETAIL.sub("(…)", _QUOTED.sub("'…'", problem)))[:200]


def error_summary(line: str) -> str:
    """The last lines of the traceback a log line carries (error="...\\n..."), else the event."""
    match = re.search(r'error="(.*)"', line)
    if match:
        parts = [p.strip() for p in match.group(1).split("\\n") if p.strip()]
        where = [p for p in parts if p.startswith("File ")]
        tail = parts[-1] if parts else ""
        return f"{tail} at {where[-1] if where else '?'}"
    match = re.search(r"event=(\S+)", line)
    return match.group(1) if match else line[:120]


class Canary:
    """A connection on the side that must be served throughout: publish + get round trips."""

    def __init__(self, url: str) -> None:
        self.raw = RawAMQP(url, timeout=max(CANARY_TIMEOUT, 1.0) * 5)
        self.raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw.handshake()
        self.raw.open_channel(1)
        self.raw.send(commands.Queue.Declare(queue="", exclusive=True), 1)
        self.queue = self.raw.expect(commands.Queue.DeclareOk, channel=1).queue
        self.raw.timeout = CANARY_TIMEOUT
        self.count = 0

    def round_trip(self) -> float:
        self.count += 1
        body = f"canary-{self.count}".encode()
        started = time.monotonic()
        # One write: Basic.Publish, its content header and body (Nagle would add 40 ms).
        self.raw.send_bytes(
            frame.marshal(commands.Basic.Publish(exchange="", routing_key=self.queue), 1)
            + frame.marshal(header.ContentHeader(0, len(body), commands.Basic.Properties()), 1)
            + frame.marshal(ContentBody(body), 1)
        )
        got = self.raw.basic_get(1, self.queue)
        if got is None or got[2] != body:
            raise AssertionError(f"canary got {got!r} instead of {body!r}")
        return time.monotonic() - started

    def close(self) -> None:
        self.raw.close()


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class FuzzBroker:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.generation = 0
        self.data_dir = base / "broker"
        self.process: BrokerProcess | None = None
        self.canary: Canary | None = None
        self._log_offset = 0
        self._previous: tuple[str, Case] | None = None
        self.start()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.metrics_port, self.management_port = free_port(), free_port()
        # The smallest log segments: rolls, snapshots and segment GC happen during the fuzz.
        config = shipped_config()
        config["store"]["segment_size"] = SEGMENT_SIZE
        self.process = BrokerProcess(
            self.data_dir,
            write_config(self.base, config, "fuzz-broker.yaml"),
            "--metrics-port",
            str(self.metrics_port),
            "--management-port",
            str(self.management_port),
        )
        self._log_offset = self.log_size()
        self.canary = Canary(self.process.url)
        self.canary.round_trip()
        pid = self.process.proc.pid
        self.baseline_fds = _fd_count(pid)
        self.baseline_rss = _proc_status(pid, "VmRSS")

    def stop(self) -> int:
        if self.canary is not None:
            self.canary.close()
            self.canary = None
        assert self.process is not None
        return self.process.stop()

    @property
    def port(self) -> int:
        assert self.process is not None
        return self.process.port

    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def restart(self, test: str) -> None:
        """After a crash or a stall: kill, then start again on the same data (recovery must
        cope with whatever the fuzz made durable); on a fresh directory if that fails."""
        assert self.process is not None
        if self.canary is not None:
            self.canary.close()
            self.canary = None
        if self.alive():
            self.process.kill()
        self.generation += 1
        try:
            self.start()
            REPORT.notes.append(f"[{test}] broker restarted (generation {self.generation})")
        except Exception as error:  # the restart itself is a finding
            log = self._new_log_lines(all_levels=True)[-6:]
            REPORT.record(
                Finding(
                    signature=f"broker does not restart on the fuzzed data: {error}"[:200],
                    test=test,
                    problems=[f"restart on {self.data_dir} failed: {error}"],
                    case_kind="restart",
                    in_header=False,
                    data=b"",
                    outcome="",
                    log=log,
                )
            )
            self.data_dir = self.base / f"broker-fresh-{self.generation}"
            self.start()

    # -- logs -------------------------------------------------------------------------------------
    def log_size(self) -> int:
        assert self.process is not None
        try:
            return self.process.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _new_log_lines(self, all_levels: bool = False) -> list[str]:
        assert self.process is not None
        with self.process.log_path.open("rb") as log:
            log.seek(self._log_offset)
            data = log.read()
        self._log_offset += len(data)
        lines = data.decode("utf-8", "replace").splitlines()
        if all_levels:
            return lines
        return [
            line
            for line in lines
            if "level=error" in line or "level=critical" in line or "Traceback" in line
        ]

    # -- one example ------------------------------------------------------------------------------
    def run(self, test: str, case: Case) -> list[str]:
        """Run one fuzzed case; record and return its problems (empty when all went well)."""
        REPORT.examples[test] += 1
        if not self.alive() or self.canary is None:
            self.restart(test)
        late = self._new_log_lines()  # logged after the previous case was judged
        if late and self._previous is not None:
            before, previous = self._previous
            problems = [f"broker logged later: {error_summary(line)}" for line in late]
            self._record(before, previous, problems, wire.Outcome(), late)
        self._previous = (test, case)
        problems: list[str] = []
        outcome, second = wire.Outcome(), wire.Outcome()
        connections: list[wire.FuzzConnection] = []
        try:
            first = wire.FuzzConnection("127.0.0.1", self.port)
            connections.append(first)
            if not case.in_header:
                first.handshake(frame_max=case.frame_max)
            other = None
            if case.second:
                other = wire.FuzzConnection("127.0.0.1", self.port)
                connections.append(other)
                other.handshake(frame_max=case.frame_max)
            first.begin(case.data, in_header=case.in_header)
            if other is not None:
                other.begin(case.second)
            outcome = first.collect(in_header=case.in_header)
            if other is not None:
                second = other.collect()
            for connection, result in ((first, outcome), (other, second)):
                if connection is None:
                    continue
                running = not result.eof and not any(
                    close.level == "connection" for close in result.closes
                )
                ended = connection.finish(case.clean_close and running)
                if ended:
                    problems.append(ended)
        except (OSError, ConnectionError) as error:
            problems.append(f"fuzz connection failed: {error!r}")
        finally:
            for connection in connections:
                connection.close()
        REPORT.slow(outcome.elapsed + second.elapsed, test, len(case.data) + len(case.second))
        problems += outcome.problems
        problems += self._judge(case.data, outcome)
        if case.second:
            problems += [f"second connection: {p}" for p in second.problems]
            problems += [f"second connection: {p}" for p in self._judge(case.second, second)]
            outcome.replies += ["|second:", *second.replies]
            outcome.closes += second.closes
        if not self.alive():
            problems.append(f"broker process exited with {self.process.proc.returncode}")
        else:
            try:
                assert self.canary is not None
                took = self.canary.round_trip()
                REPORT.canary.append(took)
                if took > CANARY_TIMEOUT:
                    problems.append(f"canary round trip took {took:.2f}s")
            except Exception as error:
                problems.append(f"canary not served within {CANARY_TIMEOUT}s: {error!r}")
                self.canary.close()
                self.canary = None  # restarted before the next case
        log = self._new_log_lines()
        problems += [f"broker logged: {error_summary(line)}" for line in log]
        if problems:
            self._record(test, case, problems, outcome, log)
        return problems

    def _judge(self, data: bytes, outcome: wire.Outcome) -> list[str]:
        problems = []
        for close in outcome.closes:
            REPORT.replies[f"{close.level} {close.code}"] += 1
            REPORT.texts[f"{close.level} {signature_of(close.text)[:90]}"] += 1
            name = REPLY_NAMES.get(close.code)
            if name is None:
                problems.append(f"reply code outside the spec: {close}")
            elif close.code == wire.INTERNAL_ERROR:
                problems.append(f"internal error: {close}")
            elif close.code != 200 and not close.text.startswith(f"{name} - "):
                problems.append(f"reply text does not start with {name}: {close}")
        if outcome.slow_hang_up:
            REPORT.replies[f"no hang-up {wire.CLOSE_OK_WAIT}s after Close-Ok"] += 1
        if outcome.refused_header is not None:
            REPORT.replies["protocol header refused"] += 1
        elif outcome.probe_answered:
            REPORT.replies["probe answered"] += 1
        elif outcome.eof and not any(c.level == "connection" for c in outcome.closes):
            REPORT.replies["hung up without Connection.Close"] += 1
            client_closed = "Connection.CloseOk" in outcome.replies or any(
                marker in data for marker in (b"\x00\x0a\x00\x32", b"\x00\x0a\x00\x33")
            )
            if not client_closed:
                problems.append("broker hung up without Connection.Close")
        return problems

    def _record(
        self, test: str, case: Case, problems: list[str], outcome: wire.Outcome, log: list[str]
    ) -> None:
        internal = [p for p in problems if p.startswith("broker logged:")]
        key = internal[0] if internal else problems[0]
        REPORT.record(
            Finding(
                signature=signature_of(key),
                test=test,
                problems=problems,
                case_kind=case.kind,
                in_header=case.in_header,
                data=case.data,
                outcome=outcome.summary(),
                log=log,
                second=case.second,
                frame_max=case.frame_max,
            )
        )

    # -- leaks ------------------------------------------------------------------------------------
    def scrape(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        totals: dict[str, float] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] += sample.value
        return totals

    def admin(self, path: str) -> list[dict[str, object]]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.management_port}{path}")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def leaks(self, test: str) -> list[str]:
        """After a test's examples: only the canary's connection, channel and queue remain,
        nothing is held unacked or consumed, file descriptors are back, RSS is bounded."""
        assert self.process is not None
        if not self.alive() or self.canary is None:
            self.restart(test)
            return ["broker was down at the end of the test"]
        expected = {
            "rabbitmq_connections": 1,
            "rabbitmq_channels": 1,
            "rabbitmq_consumers": 0,
            "rabbitmq_channel_messages_unacked": 0,
            "rabbitmq_queue_messages_unacked": 0,
        }
        pid = self.process.proc.pid
        problems: list[str] = []
        deadline = time.monotonic() + 6.0  # metrics are re-rendered once a second
        while True:
            metrics = self.scrape()
            wrong = {k: metrics.get(k) for k, v in expected.items() if metrics.get(k) != v}
            fds = _fd_count(pid)
            exclusive = [
                row["name"]
                for row in self.admin("/api/queues")
                if row.get("exclusive") and row["name"] != self.canary.queue
            ]
            if not wrong and fds <= self.baseline_fds + FD_SLACK and not exclusive:
                break
            if time.monotonic() > deadline:
                if wrong:
                    problems.append(f"leaked after the fuzz: {wrong} (expected {expected})")
                if fds > self.baseline_fds + FD_SLACK:
                    problems.append(f"file descriptors {self.baseline_fds} -> {fds}")
                if exclusive:
                    problems.append(
                        f"exclusive queues of closed connections remain: {exclusive[:5]}"
                    )
                break
            time.sleep(0.5)
        rss = _proc_status(pid, "VmRSS")
        REPORT.notes.append(
            f"[{test}] broker RSS {self.baseline_rss / 2**20:.0f} MiB -> {rss / 2**20:.0f} MiB,"
            f" fds {self.baseline_fds} -> {_fd_count(pid)},"
            f" queues {metrics.get('rabbitmq_queues', 0):.0f}"
        )
        if rss - self.baseline_rss > RSS_GROWTH_LIMIT:
            problems.append(
                f"RSS grew from {self.baseline_rss / 2**20:.0f} MiB to {rss / 2**20:.0f} MiB"
            )
        log = self._new_log_lines()
        problems += [f"broker logged: {error_summary(line)}" for line in log]
        for problem in problems:
            REPORT.record(
                Finding(
                    signature=signature_of(problem),
                    test=test,
                    problems=[problem],
                    case_kind="leak-check",
                    in_header=False,
                    data=b"",
                    outcome="",
                    log=log,
                )
            )
        return problems


def findings_of(test: str) -> list[Finding]:
    return [finding for finding in REPORT.findings.values() if finding.test == test]


@contextlib.contextmanager
def timed(test: str):
    started = time.monotonic()
    try:
        yield
    finally:
        REPORT.durations[test] = REPORT.durations.get(test, 0.0) + time.monotonic() - started
