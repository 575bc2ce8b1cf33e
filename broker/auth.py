"""Users, password hashes, SASL response parsing and per-vhost permissions.

Password hashes use RabbitMQ's `rabbit_password_hashing_sha256` format: base64 of a 4-byte salt
followed by SHA-256(salt + password). Hashes made by `rabbitmqctl` work here and the other way
round, and a config file never holds a password in plain text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from broker.config import Permission
from broker.core.errors import ACCESS_REFUSED, ChannelException
from broker.core.tables import decode_table
from broker.logs import fields
from broker.patterns import BoundedPattern, PatternTooSlow

log = logging.getLogger("warren.auth")


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    if len(raw) != 36:
        return False
    expected = hash_password(password, raw[:4])
    return hmac.compare_digest(expected, password_hash)


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # a dual-stack socket's view of 127.0.0.1
    return address.is_loopback


# RabbitMQ's user tags, each granting more of the management API (see broker/management).
KNOWN_TAGS = ("administrator", "monitoring", "policymaker", "management", "impersonator")


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str  # "" for a user that cannot log in with a password
    permissions: Mapping[str, Permission]  # vhost -> configure/write/read regexes
    loopback_only: bool = False
    tags: tuple[str, ...] = ()


def _matcher(pattern: str) -> Callable[[str], bool]:
    """RabbitMQ searches the regex anywhere in the name; '' grants nothing, '.*' everything. A
    pattern that takes too long on a name (catastrophic backtracking) denies, with a warning,
    rather than stall the broker."""
    if pattern == ".*":
        return lambda name: True
    if pattern == "":
        return lambda name: False
    bounded = BoundedPattern(pattern)

    def matches(name: str) -> bool:
        try:
            return bounded.search(name)
        except PatternTooSlow:
            log.warning("auth.permission_pattern_too_slow", extra=fields(pattern=pattern))
            return False

    return matches


class VhostAccess:
    """One user's permissions in one vhost, compiled once at Connection.Open."""

    def __init__(self, user: str, vhost: str, permission: Permission) -> None:
        self.user = user
        self.vhost = vhost
        self._matchers = {
            "configure": _matcher(permission.configure),
            "write": _matcher(permission.write),
            "read": _matcher(permission.read),
        }

    def check_forwarding(self, kind: str, name: str, target: Any) -> None:
        """An alternate or dead-letter exchange moves messages out of `name` into `target`:
        as in RabbitMQ, that needs read on the source and write on the target (so no one can
        publish, through a queue of their own, into an exchange they may not write to)."""
        if isinstance(target, str):
            self.check("read", kind, name)
            self.check("write", "exchange", target)

    def check_binding(self, kind: str, destination: str, source: str) -> None:
        """RabbitMQ: binding needs write on the destination and read on the source exchange."""
        self.check("write", kind, destination)
        self.check("read", "exchange", source)

    def check(self, operation: str, kind: str, name: str) -> None:
        """Raise 403 ACCESS_REFUSED unless `operation` is allowed on the exchange/queue `name`."""
        resource = name or "amq.default"  # RabbitMQ checks the default exchange by this name
        if not self._matchers[operation](resource):
            raise ChannelException(
                ACCESS_REFUSED,
                f"access to {kind} '{resource}' in vhost '{self.vhost}'"
                f" refused for user '{self.user}'",
            )


class Authenticator:
    """The broker's users. The management API changes them (`put_user`, `set_permission`...);
    `on_change` is told of each change so the log can keep it."""

    def __init__(self, users: list[User], on_change: Callable[[], None] | None = None) -> None:
        self.users = {user.name: user for user in users}
        self.on_change = on_change or (lambda: None)

    def _change(self, users: dict[str, User]) -> None:
        """Adopt `users` once `on_change` (the log) has taken them; if it refuses (the log has
        failed), nothing changes and its error goes up: a user that cannot be saved must not
        look saved."""
        previous, self.users = self.users, users
        try:
            self.on_change()
        except BaseException:
            self.users = previous
            raise

    def put_user(self, user: User) -> None:
        self._change({**self.users, user.name: user})

    def delete_user(self, name: str) -> bool:
        if name not in self.users:
            return False
        self._change({n: u for n, u in self.users.items() if n != name})
        return True

    def set_permission(self, name: str, vhost: str, permission: Permission) -> None:
        user = self.users[name]
        changed = replace(user, permissions={**user.permissions, vhost: permission})
        self._change({**self.users, name: changed})

    def clear_permission(self, name: str, vhost: str) -> bool:
        user = self.users.get(name)
        if user is None or vhost not in user.permissions:
            return False
        remaining = {v: p for v, p in user.permissions.items() if v != vhost}
        self._change({**self.users, name: replace(user, permissions=remaining)})
        return True

    def forget_vhost(self, vhost: str) -> None:
        """A deleted vhost takes every permission in it along."""
        for name, user in list(self.users.items()):
            if vhost in user.permissions:
                remaining = {v: p for v, p in user.permissions.items() if v != vhost}
                self.users[name] = replace(user, permissions=remaining)

    @staticmethod
    def parse_response(mechanism: str, response: str | bytes | None) -> tuple[str, str] | None:
        """(username, password) from a PLAIN or AMQPLAIN response; None for other mechanisms.

        Raises ValueError for a response that does not parse (RabbitMQ's 502 syntax error)."""
        raw = response.encode("utf-8") if isinstance(response, str) else bytes(response or b"")
        if mechanism == "PLAIN":
            parts = raw.split(b"\x00")
            if len(parts) != 3:
                raise ValueError("PLAIN response is not authzid NUL user NUL password")
            return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
        if mechanism == "AMQPLAIN":
            try:
                _, table = decode_table(len(raw).to_bytes(4, "big") + raw)
            except (ValueError, IndexError, TypeError, struct.error) as error:
                raise ValueError("AMQPLAIN response is not a field table") from error
            values = [table.get("LOGIN"), table.get("PASSWORD")]
            if not all(isinstance(v, str | bytes) for v in values):
                raise ValueError("AMQPLAIN LOGIN and PASSWORD must be strings")
            login, password = (
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values
            )
            return login, password
        return None

    def authenticate(
        self, username: str, password: str, peer_host: str, mechanism: str
    ) -> str | None:
        """None when the login is accepted, else the refusal text RabbitMQ would give."""
        user = self.users.get(username)
        if (
            user is None
            or not user.password_hash
            or not check_password(password, user.password_hash)
        ):
            return (
                f"Login was refused using authentication mechanism {mechanism}."
                " For details see the broker logfile."
            )
        if user.loopback_only and not is_loopback(peer_host):
            return f"User '{username}' can only connect via localhost"
        return None

    def vhost_access(self, username: str, vhost: str) -> VhostAccess | None:
        """The user's permissions in `vhost`, or None when the user may not open it."""
        user = self.users.get(username)
        if user is None or vhost not in user.permissions:
            return None
        return VhostAccess(username, vhost, user.permissions[vhost])
