"""`warren ctl`: rabbitmqctl's list_* and policy commands against a running broker, through its
management API.

    warren ctl list_queues [-p VHOST]
    warren ctl set_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] \
        NAME PATTERN DEFINITION
    warren ctl clear_policy [-p VHOST] NAME

Listings print as rabbitmqctl's do: a header line of column names, then one tab-separated row per
object, booleans as true/false. Exit codes follow sysexits, as rabbitmqctl's do: 64 for a usage
error, 69 when the broker's API cannot be reached, 77 when it refuses the credentials, 1 for
other errors (the API's reason is printed).
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
EX_USAGE = 64
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
    "list_policies": (
        "/api/policies",
        ("vhost", "name", "pattern", "apply-to", "definition", "priority"),
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

COMMANDS = [*LISTINGS, "set_policy", "clear_policy"]

# The admin API is on loopback: never route it, or the credentials, through an HTTP proxy.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CtlError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_parser(commands: argparse._SubParsersAction) -> None:
    ctl = commands.add_parser(
        "ctl",
        help="list objects of a running broker, set and clear policies (as rabbitmqctl)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument("ctl_command", metavar="command", choices=COMMANDS)
    # Options may come before or after the command's own arguments, as rabbitmqctl takes them.
    ctl.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    _add_options(ctl)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--vhost",
        help="the vhost (listings: default every vhost the user may open; policies: /)",
    )
    parser.add_argument("--priority", type=int, default=0, help="set_policy: its priority")
    parser.add_argument(
        "--apply-to",
        default="all",
        choices=("queues", "exchanges", "all"),
        help="set_policy: what it applies to",
    )
    parser.add_argument(
        "--host", dest="api_host", default="127.0.0.1", help="the management API's host"
    )
    parser.add_argument(
        "--management-port",
        dest="api_port",
        type=int,
        default=DEFAULT_MANAGEMENT_PORT,
        help=f"the broker's management.listener.port (default {DEFAULT_MANAGEMENT_PORT})",
    )
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")


def _parse_rest(args: argparse.Namespace) -> argparse.Namespace:
    """The options and arguments after the command, over the ones given before it."""
    parser = argparse.ArgumentParser(prog=f"warren ctl {args.ctl_command}")
    _add_options(parser)
    parser.add_argument("arguments", nargs="*")
    parser.set_defaults(**{k: v for k, v in vars(args).items() if k not in ("rest",)})
    try:
        parsed = parser.parse_intermixed_args(args.rest)
    except SystemExit as exit_:
        raise CtlError("see the usage above", EX_USAGE) from exit_
    parsed.ctl_command = args.ctl_command
    return parsed


def run(args: argparse.Namespace) -> int:
    try:
        args = _parse_rest(args)
        if args.ctl_command == "set_policy":
            return _set_policy(args)
        if args.ctl_command == "clear_policy":
            return _clear_policy(args)
        if args.arguments:
            raise CtlError(f"{args.ctl_command} takes no arguments", EX_USAGE)
        path, columns = LISTINGS[args.ctl_command]
        if args.vhost is not None:
            path += "/" + _segment(args.vhost)
        rows = call(args, "GET", path)
    except CtlError as error:
        print(f"warren ctl: {error}", file=sys.stderr)
        return error.exit_code
    print("\t".join(columns))
    for row in rows:
        print("\t".join(_cell(row.get(column)) for column in columns))
    return 0


def _set_policy(args: argparse.Namespace) -> int:
    if len(args.arguments) != 3:
        raise CtlError("set_policy takes NAME PATTERN DEFINITION", EX_USAGE)
    name, pattern, text = args.arguments
    try:
        definition = json.loads(text)
    except ValueError:
        raise CtlError(f"DEFINITION is not JSON: {text}", EX_USAGE) from None
    vhost = args.vhost or "/"
    body = {"pattern": pattern, "definition": definition, "priority": args.priority}
    body["apply-to"] = args.apply_to
    call(args, "PUT", f"/api/policies/{_segment(vhost)}/{_segment(name)}", body)
    print(f'Setting policy "{name}" for pattern "{pattern}" to "{text}" with priority'
          f' "{args.priority}" for vhost "{vhost}" ...')  # fmt: skip
    return 0


def _clear_policy(args: argparse.Namespace) -> int:
    if len(args.arguments) != 1:
        raise CtlError("clear_policy takes NAME", EX_USAGE)
    [name] = args.arguments
    vhost = args.vhost or "/"
    call(args, "DELETE", f"/api/policies/{_segment(vhost)}/{_segment(name)}")
    print(f'Clearing policy "{name}" on vhost "{vhost}" ...')
    return 0


def _segment(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One management API request; CtlError says what went wrong in words."""
    user = args.user
    url = f"http://{_url_host(args.api_host)}:{args.api_port}{path}"
    token = base64.b64encode(f"{user}:{args.password}".encode()).decode("ascii")
    headers = {"Authorization": f"Basic {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with DIRECT.open(request, timeout=TIMEOUT) as response:
            raw = response.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        reason = _reason(error)
        if error.code == 401 and reason in ("Login failed", "Unauthorized"):
            raise CtlError(
                f"access refused for user '{user}': wrong user name or password", EX_NOPERM
            ) from None
        if error.code in (401, 403):
            raise CtlError(f"access refused: {reason}", EX_NOPERM) from None
        if error.code == 404:
            raise CtlError(f"{reason}: {path}", 1) from None
        raise CtlError(f"the management API answered {error.code}: {reason}", 1) from None
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
