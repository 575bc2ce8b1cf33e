"""Command line: `warren` (serve), `warren hash-password` and `warren ctl list_*`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import sys
from pathlib import Path

from broker import ctl
from broker.auth import hash_password
from broker.config import ConfigError, load_config
from broker.logs import configure_logging


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config).with_overrides(
            port=args.port,
            host=args.host,
            data_dir=args.data_dir,
            metrics_port=args.metrics_port,
            management_port=args.management_port,
        )
    except ConfigError as error:
        print(f"warren: invalid configuration: {error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    from broker.server import Broker, DefinitionsFileError

    _tune_garbage_collection()
    from broker.store.recovery import UnknownVhostError
    from broker.store.wal import CorruptLogError

    try:
        import uvloop
    except ImportError:  # pure asyncio still works, only slower
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        if not runner(Broker(config).serve_forever()):
            print("warren: the write-ahead log failed; see the log above", file=sys.stderr)
            return 1
    except (CorruptLogError, UnknownVhostError, DefinitionsFileError) as error:
        print(f"warren: cannot start: {error}", file=sys.stderr)
        return 3
    except OSError as error:
        print(f"warren: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


# Allocations between young-generation collections (CPython's default is 700). Every message
# allocates a handful of tracked objects (the message, its queue entry, tuples), so the default
# collects every hundred or so messages; the broker makes few reference cycles, and a larger
# young generation cut the transient path's CPU per message by about a tenth here.
GC_YOUNG_THRESHOLD = 20_000


def _tune_garbage_collection() -> None:
    """Collect young objects less often, and leave what import and config built (never
    garbage) out of every later full collection."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 50)


def _hash_password(args: argparse.Namespace) -> int:
    password = args.password if args.password is not None else getpass.getpass("Password: ")
    print(hash_password(password))
    return 0


def _serving_options(default: object) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False, argument_default=default)
    options.add_argument("--config", type=Path, help="config file (default: config/broker.yaml)")
    options.add_argument("--host", help="override listeners.amqp.host")
    options.add_argument("--port", type=int, help="override listeners.amqp.port")
    options.add_argument("--data-dir", type=Path, help="override data_dir")
    options.add_argument("--metrics-port", type=int, help="override metrics_port (0 disables)")
    options.add_argument(
        "--management-port",
        type=int,
        help="override management.listener.port (the HTTP API and console; 0 disables)",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warren", description="Warren AMQP 0-9-1 broker", parents=[_serving_options(None)]
    )
    commands = parser.add_subparsers(dest="command")
    # `warren serve --port 1` works like `warren --port 1`; SUPPRESS keeps the subcommand's
    # unset options from overwriting ones given before it.
    commands.add_parser(
        "serve", help="run the broker (the default)", parents=[_serving_options(argparse.SUPPRESS)]
    )
    hasher = commands.add_parser("hash-password", help="print a password hash for the config")
    hasher.add_argument("password", nargs="?", help="read from the terminal when omitted")
    ctl.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-password":
        return _hash_password(args)
    if args.command == "ctl":
        return ctl.run(args)
    return _serve(args)
