"""Who is calling the management API, and what their tags let them see and do.

RabbitMQ's model, kept as is so operators' users work unchanged:
- no management tag: no API at all (401 "Not management user");
- `management`: the vhosts the user has permissions in, and the user's own connections;
- `policymaker`: also policies in those vhosts;
- `monitoring`: also every vhost, connection and channel, read-only, and node figures;
- `administrator`: everything, including users, vhosts, permissions and definitions.
What a call touches (declare, publish, get, purge) is further checked against the user's AMQP
permissions in that vhost, exactly as a client connection's operations are.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass

from aiohttp import web

from broker.auth import Authenticator, User, VhostAccess, is_loopback
from broker.logs import fields
from broker.management.errors import ApiError

log = logging.getLogger("warren.management")

MANAGEMENT_TAGS = frozenset({"administrator", "monitoring", "policymaker", "management"})
REALM = 'Basic realm="RabbitMQ Management"'
NO_VHOST_ACCESS = "User not authorised to access virtual host"
NO_OBJECT_ACCESS = "User not authorised to access object"


@dataclass(frozen=True)
class Caller:
    user: User
    auth: Authenticator

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def is_admin(self) -> bool:
        return "administrator" in self.user.tags

    @property
    def is_monitor(self) -> bool:
        """Sees every vhost and every user's connections (monitoring and administrator)."""
        return self.is_admin or "monitoring" in self.user.tags

    @property
    def is_policymaker(self) -> bool:
        return self.is_admin or "policymaker" in self.user.tags

    def may_list_vhost(self, vhost: str) -> bool:
        """In /api/vhosts: monitoring users see every vhost."""
        return self.is_monitor or vhost in self.user.permissions

    def may_see_vhost(self, vhost: str) -> bool:
        """Its queues, exchanges and bindings: administrators everywhere, the others where
        they have permissions (monitoring included, as in RabbitMQ)."""
        return self.is_admin or vhost in self.user.permissions

    def may_see_connection(self, owner: str) -> bool:
        return self.is_monitor or owner == self.user.name

    def vhost_access(self, vhost: str) -> VhostAccess:
        """The caller's AMQP permissions in `vhost`, for an operation on its resources; 401
        when it has none, as RabbitMQ answers."""
        access = self.auth.vhost_access(self.user.name, vhost)
        if access is None:
            raise not_authorised(NO_VHOST_ACCESS)
        return access

    def require_admin(self) -> None:
        if not self.is_admin:
            raise not_authorised("Not administrator user")

    def require_monitor(self) -> None:
        if not self.is_monitor:
            raise not_authorised("Not monitor user")

    def require_policymaker(self, vhost: str) -> None:
        if not self.is_policymaker or (not self.is_admin and vhost not in self.user.permissions):
            raise not_authorised(NO_OBJECT_ACCESS)


def not_authorised(reason: str) -> ApiError:
    return ApiError(401, "not_authorised", reason)


def login_failed() -> ApiError:
    """RabbitMQ spells this one with a z, unlike its other refusals."""
    return ApiError(401, "not_authorized", "Login failed", {"WWW-Authenticate": REALM})


def authenticate(request: web.Request, auth: Authenticator) -> Caller:
    """The caller named by valid HTTP Basic credentials with a management tag, else 401 (with
    an empty body when no credentials came at all, as RabbitMQ answers)."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        log.info("management.credentials_missing", extra=fields(peer=request.remote or ""))
        raise ApiError(401, "", "", {"WWW-Authenticate": REALM})
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise login_failed() from None
    name, _, password = decoded.partition(":")
    if auth.authenticate(name, password, request.remote or "", "PLAIN") is not None:
        log.warning("management.login_refused", extra=fields(peer=request.remote or "", user=name))
        raise login_failed()
    user = auth.users[name]
    if not MANAGEMENT_TAGS.intersection(user.tags):
        raise not_authorised("Not management user")
    return Caller(user, auth)


def loopback_host_header(value: str) -> bool:
    """Host: localhost, 127.0.0.1, [::1] (with or without a port). A listener on loopback
    answers only these, so a web page in a local browser cannot reach the API through DNS
    rebinding (with the well-known guest credentials)."""
    host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    host = host.split("]")[0].lstrip("[") if host.startswith("[") else host
    return host == "localhost" or is_loopback(host)
