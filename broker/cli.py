"""Command line: `warren` (serve) and `warren hash-password`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from pathlib import Path

from broker.auth import hash_password
from broker.config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config).with_overrides(
            port=args.port, host=args.host, data_dir=args.data_dir, metrics_port=args.metrics_port
        )
    except ConfigError as error:
        print(f"warren: invalid configuration: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    from broker.server import Broker

    try:
        import uvloop
    except ImportError:  # pure asyncio still works, only slower
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        runner(Broker(config).serve_forever())
    except OSError as error:
        print(f"warren: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    password = args.password if args.password is not None else getpass.getpass("Password: ")
    print(hash_password(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warren", description="Warren AMQP 0-9-1 broker")
    parser.add_argument("--config", type=Path, help="config file (default: config/broker.yaml)")
    parser.add_argument("--host", help="override listener.host")
    parser.add_argument("--port", type=int, help="override listener.port")
    parser.add_argument("--data-dir", type=Path, help="override data_dir")
    parser.add_argument("--metrics-port", type=int, help="override metrics_port (0 disables)")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the broker (the default)")
    hasher = commands.add_parser("hash-password", help="print a password hash for the config")
    hasher.add_argument("password", nargs="?", help="read from the terminal when omitted")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-password":
        return _hash_password(args)
    return _serve(args)
