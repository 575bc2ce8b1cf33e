"""The `crash` stress scenario of scripts/bench (Warren only): kill -9 under load, many times.

Exists because the suite's crash test (tests/integration/test_crash_recovery.py) runs a few
cycles; this one runs --crash-cycles of them with a small store.segment_size, so segment rolls,
snapshots, garbage collection and compaction happen inside the killed window. After each
restart it applies the suite's ledger check (tests/crash_support.py): every confirmed, unacked
order is back, no acked one, no duplicates, order kept, and every order a consumer had received
comes back redelivered=true.
"""

from __future__ import annotations

import argparse
import collections
import random
import threading
import time
from pathlib import Path

from scripts.bench_support import stress_config
from tests.support import BrokerProcess

CRASH_QUEUE = "crash-orders"
CRASH_PARKED = "crash-parked"
CRASH_CHECKPOINTS = "crash-checkpoints"


def wal_segments(data_dir: Path) -> list[int]:
    return sorted(int(path.stem) for path in (data_dir / "wal").glob("*.wal"))


def compactions(broker: BrokerProcess) -> int:
    return broker.log_text().count("wal.segment_compacted")


def crash_cycles(data_dir: Path, args: argparse.Namespace, rng: random.Random) -> int:
    """kill -9 the broker `args.crash_cycles` times under load, with a small segment size so that
    segment rolls, snapshots, garbage collection and compaction all happen inside the killed
    window; after each restart the ledger check of tests/crash_support.py, per queue."""
    # Imported here: it needs pika, which the other scenarios do not.
    from tests.crash_support import Ledger, check_recovery, consumer, declare, drain, publisher

    config_path = stress_config(data_dir, args.crash_segment_size)
    print(
        f"scenario crash: {args.crash_cycles} kill -9 cycles, kill 0.2-2 s after the load starts;"
        f" store.segment_size {args.crash_segment_size} B; {args.crash_publishers} publishers of"
        f" {args.crash_body_bytes} B persistent orders with confirms to {CRASH_QUEUE}; consumers:"
        f" one acking, slower than the publishers (5% nacked back), one holding 5 deliveries"
        f" unacked; {CRASH_PARKED} gets"
        f" orders nobody consumes, taken every {args.crash_park_cycles} cycles, only looked at"
        " otherwise",
        flush=True,
    )
    broker = BrokerProcess(data_dir, config_path)
    declare(broker.url, CRASH_QUEUE, CRASH_PARKED, CRASH_CHECKPOINTS)
    orders = Ledger(CRASH_QUEUE)
    parked = Ledger(CRASH_PARKED)
    totals: collections.Counter[str] = collections.Counter()
    failed_cycles = []
    try:
        for cycle in range(1, args.crash_cycles + 1):
            first_segment = max(wal_segments(data_dir), default=0)
            compacted_before = compactions(broker)
            published_before = orders.next_id + parked.next_id
            stop = threading.Event()
            url = broker.url
            workers = [
                threading.Thread(
                    target=publisher, args=(url, orders, stop, number, args.crash_body_bytes)
                )
                for number in range(1, args.crash_publishers + 1)
            ]
            workers.append(
                threading.Thread(
                    target=publisher, args=(url, parked, stop, 0, args.crash_body_bytes, 0.01)
                )
            )
            for options in (
                {"prefetch": 50, "requeue": 0.05, "pause": 0.001},  # slower: orders queue up
                {"prefetch": 5, "hold": 5},
            ):
                options["rng"] = random.Random(rng.random())
                workers.append(
                    threading.Thread(
                        target=consumer,
                        args=(url, orders, CRASH_CHECKPOINTS, stop),
                        kwargs=options,
                    )
                )
            for worker in workers:
                worker.start()
            delay = rng.uniform(0.2, 2.0)
            time.sleep(delay)
            broker.kill()
            stop.set()
            for worker in workers:
                worker.join(10)
            last_segment = max(wal_segments(data_dir), default=0)
            compacted = compactions(broker) - compacted_before
            published = orders.next_id + parked.next_id - published_before
            restarted = time.perf_counter()
            broker = BrokerProcess(data_dir, config_path)
            recovery_seconds = time.perf_counter() - restarted
            take_parked = cycle % args.crash_park_cycles == 0
            checks = [
                check_recovery(orders, drain(broker.url, CRASH_QUEUE, CRASH_CHECKPOINTS), True),
                check_recovery(
                    parked,
                    drain(broker.url, CRASH_PARKED, CRASH_CHECKPOINTS, settle=take_parked),
                    take_parked,
                ),
            ]
            failures = [line for check in checks for line in check.failures()]
            rolls = last_segment - first_segment
            totals.update(
                published=published,
                rolls=rolls,
                compactions=compacted,
                must_survive=sum(check.must_survive for check in checks),
                recovered=sum(check.recovered for check in checks),
                delivered_recovered=sum(check.delivered_recovered for check in checks),
                missing=sum(len(check.missing) for check in checks),
                revived=sum(len(check.revived) for check in checks),
                duplicates=sum(len(check.duplicates) for check in checks),
                out_of_order=sum(len(check.out_of_order) for check in checks),
                redelivered_lost=sum(len(check.redelivered_lost) for check in checks),
            )
            print(
                f"cycle {cycle}: killed after {delay:.2f} s, {published} published,"
                f" {rolls} segment rolls, {compacted} compactions,"
                f" restarted in {recovery_seconds:.2f} s; "
                + "; ".join(c.summary() for c in checks)
                + ("" if failures else "; ok"),
                flush=True,
            )
            for line in failures:
                print(f"  FAIL {line}", flush=True)
            if failures:
                failed_cycles.append(cycle)
    finally:
        exit_code = broker.stop()
    print(
        f"\nscenario crash: {args.crash_cycles} kill -9 cycles, seed {args.seed}:"
        f" {totals['published']} orders published, {totals['rolls']} segment rolls and"
        f" {totals['compactions']} compactions inside killed windows;"
        f" {totals['must_survive']} confirmed-unacked orders had to come back,"
        f" {totals['recovered']} came back ({totals['delivered_recovered']} of them delivered"
        " before the kill)"
    )
    print(
        f"  violations: missing {totals['missing']}, revived {totals['revived']},"
        f" duplicates {totals['duplicates']}, out-of-order {totals['out_of_order']},"
        f" redelivered flag lost {totals['redelivered_lost']}"
        f" (in {len(failed_cycles)} of {args.crash_cycles} cycles: {failed_cycles[:30]})"
    )
    print(f"  broker exit code after the last cycle's SIGTERM: {exit_code}")
    return 1 if failed_cycles or exit_code != 0 else 0
