"""Replay one fuzz finding: send its bytes (after a normal handshake unless --in-header) and show
what the broker answered and logged.

    python -m tests.fuzz.replay --start 0100010000000500140 ...     # a fresh broker of its own
    python -m tests.fuzz.replay --url amqp://guest:guest@127.0.0.1:5672/ HEX
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from tests.fuzz import wire


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hex", help="the bytes to send, in hex (as the finding prints them)")
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--start", action="store_true", help="start a Warren process for it")
    parser.add_argument("--in-header", action="store_true", help="bytes start with the header")
    parser.add_argument("--second", default="", help="bytes for a second connection, in hex")
    parser.add_argument("--frame-max", type=int, default=wire.FRAME_MAX)
    args = parser.parse_args(argv)
    data = bytes.fromhex(args.hex.replace(" ", ""))
    broker = None
    if args.start:
        from tests.support import BrokerProcess

        broker = BrokerProcess(Path(tempfile.mkdtemp(prefix="warren-replay-")))
        host, port = "127.0.0.1", broker.port
    else:
        parts = urlparse(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        second = bytes.fromhex(args.second)
        with (
            wire.FuzzConnection(host, port) as connection,
            wire.FuzzConnection(host, port) as other,
        ):
            if not args.in_header:
                connection.handshake(frame_max=args.frame_max)
            if second:
                other.handshake(frame_max=args.frame_max)
            connection.begin(data, in_header=args.in_header)
            if second:
                other.begin(second)
            outcomes = [connection.collect(in_header=args.in_header)]
            if second:
                outcomes.append(other.collect())
            for number, outcome in enumerate(outcomes, start=1):
                print(f"connection {number}:", outcome.summary())
                for problem in outcome.problems:
                    print("problem:", problem)
        if broker is not None:
            time.sleep(0.3)
            alive = broker.proc.poll() is None
            print("broker alive" if alive else f"broker exited with {broker.proc.returncode}")
            print("---- broker log")
            print(broker.log_text())
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
