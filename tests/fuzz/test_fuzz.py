"""Property-based fuzzing of the wire (issue 7, "Keep hunting").

One broker process for the module, a canary connection on the side. Each example opens a fresh
connection and sends fuzzed bytes: the handshake with random values and mutated frames, random
and mutated frames of every class and method, every method that carries a field table with
random (deep, odd, malformed) tables, and random method sequences with content across channels.
The broker must answer with a spec reply code or close that one connection (never 541, never a
traceback in its log), must send only what a stock client decodes (every method and content
header through pamqp, bodies matching their header, no frame above frame_max), must not hang,
must keep serving the canary within a second, and after
each test holds nothing the fuzz connections left behind (connections, channels, consumers,
unacked messages, exclusive queues, file descriptors; RSS within a generous bound). Finally it
must stop cleanly and start again on whatever the fuzz made durable (the broker runs with 64 KiB
log segments, so rolls, snapshots and segment GC happen during the fuzz).

What earlier runs found is replayed first in every run (`strategies.FOUND`, hypothesis's explicit
examples), so a fixed finding stays fixed.

The seed (WARREN_FUZZ_SEED replays a run), the example counts and what was found are printed in
the "warren fuzz" section of the terminal summary. Findings are collected over the whole run and
reported together at the end of each test, deduplicated, each with its smallest reproduction and a
`python -m tests.fuzz.replay` command line. WARREN_FUZZ_SCALE multiplies the example counts
(a longer hunt); WARREN_FUZZ_SHRINK=1 stops at the first finding and lets hypothesis shrink it.
"""

from __future__ import annotations

import pytest
from hypothesis import (
    HealthCheck,
    Phase,
    Verbosity,
    example,
    given,
    seed,
    settings,
    strategies as st,
)

from tests.fuzz import strategies
from tests.fuzz.harness import (
    REPORT,
    SCALE,
    SEED,
    SHRINK,
    Canary,
    FuzzBroker,
    examples,
    findings_of,
    timed,
)

pytestmark = [pytest.mark.warren_only, pytest.mark.timeout(int(150 * max(1.0, SCALE)))]

PHASES = (
    (Phase.explicit, Phase.generate, Phase.shrink) if SHRINK else (Phase.explicit, Phase.generate)
)


def fuzz(broker: FuzzBroker, test: str, cases: st.SearchStrategy, count: int) -> None:
    def body(case: strategies.Case) -> None:
        problems = broker.run(test, case)
        if SHRINK and problems:
            raise AssertionError("\n".join(problems))

    run = given(cases)(body)
    for case in strategies.FOUND.get(test, []):  # what earlier runs found, every time
        run = example(case)(run)
    run = seed(SEED)(
        settings(
            max_examples=examples(count),
            deadline=None,
            derandomize=False,
            database=None,
            phases=PHASES,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
            verbosity=Verbosity.quiet if not SHRINK else Verbosity.normal,
        )(run)
    )

    with timed(test):
        run()
        broker.leaks(test)
    REPORT.save()
    found = findings_of(test)
    assert not found, f"{len(found)} findings (seed {SEED}):\n\n" + "\n\n".join(
        finding.describe() for finding in found
    )


def test_fuzz_handshake(fuzz_broker: FuzzBroker) -> None:
    fuzz(fuzz_broker, "handshake", strategies.handshake_cases(), 350)


def test_fuzz_frames(fuzz_broker: FuzzBroker) -> None:
    fuzz(fuzz_broker, "frames", strategies.frame_cases(), 700)


def test_fuzz_field_tables(fuzz_broker: FuzzBroker) -> None:
    fuzz(fuzz_broker, "tables", strategies.table_cases(), 400)


def test_fuzz_method_sequences(fuzz_broker: FuzzBroker) -> None:
    fuzz(fuzz_broker, "sequences", strategies.sequence_cases(), 550)


def test_fuzzed_broker_stops_and_restarts_cleanly(fuzz_broker: FuzzBroker) -> None:
    """SIGTERM exits 0, and the broker starts again on whatever the fuzz made durable."""
    code = fuzz_broker.stop()
    log_path = fuzz_broker.data_dir / "broker.log"
    assert code == 0, f"broker exited with {code} on SIGTERM:\n{log_path.read_text()[-3000:]}"
    try:
        fuzz_broker.start()
    except RuntimeError as error:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise AssertionError(f"broker does not start on the fuzzed data: {error}\n{tail}") from None
    canary = Canary(fuzz_broker.process.url)
    try:
        canary.round_trip()
    finally:
        canary.close()
