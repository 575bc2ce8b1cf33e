"""`warren ctl list_*`: what rabbitmqctl list_* shows, read from a running broker's admin API.

Output is rabbitmqctl's: a header line of column names, then one tab-separated row per object,
booleans as true/false. Exit codes follow sysexits, as rabbitmqctl's do: 69 when the broker's
admin API cannot be reached, 77 when it refuses the credentials, 1 for other errors.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_MANAGEMENT_PORT = 15672
EX_UNAVAILABLE = 69
EX_NOPERM = 77
TIMEOUT = 10.0

# command -> (admin API path, columns printed)
LISTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "list_queues": (
        "/api/queues",
        ("name", "vhost", "durable", "messages_ready", "messages_unacknowledged", "consumers"),
    ),
    "list_exchanges": (
        "/api/exchanges",
        ("name", "vhost", "type", "durable", "auto_delete", "internal"),
    ),
    "list_bindings": (
        "/api/bindings",
        ("vhost", "source", "destination", "destination_type", "routing_key", "arguments"),
    ),
    "list_connections": (
        "/api/connections",
        ("peer_host", "peer_port", "user", "vhost", "channels"),
    ),
    "list_channels": (
        "/api/channels",
        (
            "name",
            "number",
            "user",
            "vhost",
            "consumer_count",
            "messages_unacknowledged",
            "prefetch_count",
            "global_prefetch_count",
            "confirm",
        ),
    ),
}

# The admin API is on loopback: never route it, or the credentials, through an HTTP proxy.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CtlError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_parser(commands: argparse._SubParsersAction) -> None:
    ctl = commands.add_parser(
        "ctl",
        help="list queues, exchanges, bindings, connections or channels of a running broker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument("listing", choices=list(LISTINGS))
    ctl.add_argument("--vhost", help="only this vhost (default: every vhost the user may open)")
    ctl.add_argument(
        "--host", dest="api_host", default="127.0.0.1", help="admin API host (loopback)"
    )
    ctl.add_argument(
        "--management-port",
        dest="api_port",
        type=int,
        default=DEFAULT_MANAGEMENT_PORT,
        help=f"the broker's management.listener.port (default {DEFAULT_MANAGEMENT_PORT})",
    )
    ctl.add_argument("--user", default="guest")
    ctl.add_argument("--password", default="guest")


def run(args: argparse.Namespace) -> int:
    path, columns = LISTINGS[args.listing]
    try:
        rows = fetch(args.api_host, args.api_port, path, args.vhost, args.user, args.password)
    except CtlError as error:
        print(f"warren ctl: {error}", file=sys.stderr)
        return error.exit_code
    print("\t".join(columns))
    for row in rows:
        print("\t".join(_cell(row.get(column)) for column in columns))
    return 0


def fetch(
    host: str, port: int, path: str, vhost: str | None, user: str, password: str
) -> list[dict[str, Any]]:
    """The rows of one admin API listing; CtlError says what went wrong in words."""
    url = f"http://{_url_host(host)}:{port}{path}"
    if vhost is not None:
        url += "/" + urllib.parse.quote(vhost, safe="")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with DIRECT.open(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        reason = _reason(error)
        if error.code == 401:
            raise CtlError(
                f"access refused for user '{user}': wrong user name or password", EX_NOPERM
            ) from None
        if error.code == 403:
            raise CtlError(f"access refused: {reason}", EX_NOPERM) from None
        if error.code == 404:
            raise CtlError(reason, 1) from None
        raise CtlError(f"the admin API answered {error.code}: {reason}", 1) from None
    except (urllib.error.URLError, OSError) as error:
        cause = getattr(error, "reason", error)
        raise CtlError(
            f"cannot reach the broker's admin API at {url}: {cause}."
            " Is the broker running, with management.listener.port set to this port?",
            EX_UNAVAILABLE,
        ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["reason"])
    except (ValueError, KeyError, TypeError):
        return error.reason


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return "" if value is None else str(value)
