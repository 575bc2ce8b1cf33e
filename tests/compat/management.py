"""A small client of a broker's management HTTP API (RabbitMQ's, or Warren's), for compat tests.

It sends what rabbitmqadmin and monitoring scripts send (Basic auth, JSON bodies, vhosts
percent-encoded in paths) and hands back the status and decoded JSON, so a test compares shapes
and codes with the same code on both brokers.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

RABBITMQADMIN = "/usr/bin/rabbitmqadmin"
TIMEOUT = 20.0

# A loopback API: never route it, or the credentials, through an HTTP proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def vhost_path(vhost: str) -> str:
    """A vhost as a path segment: '/' is '%2F'."""
    return urllib.parse.quote(vhost, safe="")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # decoded JSON, or the raw text when the body is not JSON, None when empty
    headers: dict[str, str]  # names lower-cased


class Management:
    """One management API endpoint, from a URL `http://user:password@host:port`."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 15672
        self.user = user if user is not None else urllib.parse.unquote(parts.username or "guest")
        self.password = (
            password if password is not None else urllib.parse.unquote(parts.password or "guest")
        )
        self.base = f"http://{self.host}:{self.port}"

    def as_user(self, user: str, password: str) -> Management:
        return Management(self.base, user, password)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Reply:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        if auth:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        sent.update(headers or {})
        request = urllib.request.Request(self.base + path, data, sent, method=method)
        try:
            with _DIRECT.open(request, timeout=TIMEOUT) as response:
                return _reply(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as error:
            return _reply(error.code, error.read(), dict(error.headers))

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("PUT", path, body if body is not None else {}, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, body if body is not None else {}, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", path, **kwargs)

    def rabbitmqadmin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the stock rabbitmqadmin (v1, from Debian's rabbitmq-server) against this API."""
        command = [RABBITMQADMIN, "-H", self.host, "-P", str(self.port)]
        command += ["-u", self.user, "-p", self.password, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(
                f"rabbitmqadmin {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result


def _reply(status: int, data: bytes, headers: dict[str, str]) -> Reply:
    headers = {name.lower(): value for name, value in headers.items()}  # names are case-blind
    if not data:
        return Reply(status, None, headers)
    try:
        return Reply(status, json.loads(data), headers)
    except ValueError:
        return Reply(status, data.decode("utf-8", "replace"), headers)
