"""Users, vhosts and permissions through the API (administrators; anyone may ask `whoami`).

Changes go to the broker's Authenticator and vhost table, which the log keeps (see
`broker.runtime`), so what an operator sets here survives a restart.
"""

from __future__ import annotations

from aiohttp import web

from broker.auth import User, hash_password
from broker.config import Permission, parse_tags
from broker.management import rows
from broker.management.context import (
    Context,
    caller,
    json_body,
    listing,
    no_content,
    require,
    respond,
    vhost_of,
)
from broker.management.errors import bad_request, not_found
from broker.patterns import BoundedPattern, PatternError

PASSWORD_HASH_LENGTH = 48


class Accounts:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.broker = context.broker

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/whoami", self.whoami),
            web.get("/api/users", self.users),
            web.get("/api/users/{user}", self.user),
            web.put("/api/users/{user}", self.put_user),
            web.delete("/api/users/{user}", self.delete_user),
            web.get("/api/users/{user}/permissions", self.user_permissions),
            web.get("/api/vhosts", self.vhosts),
            web.get("/api/vhosts/{vhost}", self.vhost),
            web.put("/api/vhosts/{vhost}", self.put_vhost),
            web.delete("/api/vhosts/{vhost}", self.delete_vhost),
            web.get("/api/vhosts/{vhost}/permissions", self.vhost_permissions),
            web.get("/api/permissions", self.permissions),
            web.get("/api/permissions/{vhost}/{user}", self.permission),
            web.put("/api/permissions/{vhost}/{user}", self.put_permission),
            web.delete("/api/permissions/{vhost}/{user}", self.delete_permission),
            web.get("/api/aliveness-test/{vhost}", self.aliveness),
            web.get("/api/healthchecks/node", self.healthy),
            web.get("/api/health/checks/alarms", self.alarms),
            web.get("/api/health/checks/local-alarms", self.alarms),
            web.get("/api/health/checks/virtual-hosts", self.healthy),
            web.get("/api/health/checks/port-listener/{port}", self.port_listener),
            web.get("/api/health/checks/protocol-listener/{protocol}", self.protocol_listener),
        ]

    async def whoami(self, request: web.Request) -> web.Response:
        user = caller(request).user
        return respond({"name": user.name, "tags": list(user.tags)})

    # ---------------------------------------------------------------------------- users
    async def users(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        users = sorted(self.broker.auth.users.values(), key=lambda u: u.name)
        return listing(request, [rows.user_row(user) for user in users])

    def _user(self, request: web.Request) -> User:
        caller(request).require_admin()
        user = self.broker.auth.users.get(request.match_info["user"])
        if user is None:
            raise not_found()
        return user

    async def user(self, request: web.Request) -> web.Response:
        return respond(rows.user_row(self._user(request)))

    async def put_user(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        name = request.match_info["user"]
        body = await json_body(request)
        existing = self.broker.auth.users.get(name)
        if "tags" not in body:
            raise bad_request("tags_not_present")
        password_hash = _password_hash(body, existing)
        tags = _tags(body["tags"])
        permissions = existing.permissions if existing else {}
        loopback_only = existing.loopback_only if existing else False
        self.broker.auth.put_user(User(name, password_hash, permissions, loopback_only, tags))
        return no_content(204 if existing else 201)

    async def delete_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        self.broker.auth.delete_user(user.name)
        for connection in list(self.broker.connections):
            if connection.user == user.name and connection.vhost is not None:
                connection.force_close(320, f"user '{user.name}' was deleted")
        return no_content()

    async def user_permissions(self, request: web.Request) -> web.Response:
        user = self._user(request)
        return listing(
            request,
            [rows.permission_row(user.name, v, p) for v, p in sorted(user.permissions.items())],
        )

    # ---------------------------------------------------------------------------- vhosts
    def _vhost_row(self, name: str) -> rows.Row:
        vhost = self.broker.vhosts[name]
        meta = self.broker.vhost_metadata.get(name, {})
        ready = sum(queue.message_count for queue in vhost.queues.values())
        unacked = sum(queue.unacked_count for queue in vhost.queues.values())
        return {
            "name": name,
            "description": meta.get("description", ""),
            "tags": list(meta.get("tags", ())),
            "metadata": {
                "description": meta.get("description", ""),
                "tags": list(meta.get("tags", ())),
            },
            "tracing": False,
            "cluster_state": {self.context.node: "running"},
            "default_queue_type": "classic",
            **rows.message_totals(ready, unacked),
        }

    async def vhosts(self, request: web.Request) -> web.Response:
        who = caller(request)
        names = [name for name in sorted(self.broker.vhosts) if who.may_list_vhost(name)]
        return listing(request, [self._vhost_row(name) for name in names])

    async def vhost(self, request: web.Request) -> web.Response:
        name = request.match_info["vhost"]
        if name not in self.broker.vhosts or not caller(request).may_list_vhost(name):
            raise not_found()
        return respond(self._vhost_row(name))

    async def put_vhost(self, request: web.Request) -> web.Response:
        who = caller(request)
        who.require_admin()
        name = request.match_info["vhost"]
        body = await json_body(request)
        description = body.get("description", "")
        if not isinstance(description, str):
            raise bad_request(["not_string", "description"])
        created = self.broker.add_vhost(name, description, _tags(body.get("tags", "")))
        if created:  # as RabbitMQ, the creator may use what it made
            self.broker.auth.set_permission(who.name, name, Permission())
        return no_content(201 if created else 204)

    async def delete_vhost(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        if not self.broker.delete_vhost(request.match_info["vhost"]):
            raise not_found()
        return no_content()

    async def vhost_permissions(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        vhost = vhost_of(request, self.context).name
        return listing(
            request,
            [
                rows.permission_row(user.name, vhost, user.permissions[vhost])
                for user in sorted(self.broker.auth.users.values(), key=lambda u: u.name)
                if vhost in user.permissions
            ],
        )

    # ---------------------------------------------------------------------------- permissions
    async def permissions(self, request: web.Request) -> web.Response:
        caller(request).require_admin()
        return listing(
            request,
            [
                rows.permission_row(user.name, vhost, permission)
                for user in sorted(self.broker.auth.users.values(), key=lambda u: u.name)
                for vhost, permission in sorted(user.permissions.items())
            ],
        )

    def _ends(self, request: web.Request, writing: bool = False) -> tuple[str, str]:
        caller(request).require_admin()
        vhost, user = request.match_info["vhost"], request.match_info["user"]
        if vhost not in self.broker.vhosts or user not in self.broker.auth.users:
            raise bad_request("vhost_or_user_not_found") if writing else not_found()
        return vhost, user

    async def permission(self, request: web.Request) -> web.Response:
        vhost, user = self._ends(request)
        permission = self.broker.auth.users[user].permissions.get(vhost)
        if permission is None:
            raise not_found()
        return respond(rows.permission_row(user, vhost, permission))

    async def put_permission(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        require(body, "configure", "write", "read")
        vhost, user = self._ends(request, writing=True)
        patterns = {}
        for kind in ("configure", "write", "read"):
            value = body[kind]
            if not isinstance(value, str):
                raise bad_request(["not_string", kind])
            try:
                BoundedPattern(value)
            except PatternError as error:
                raise bad_request(f"{kind}: not a valid regular expression: {error}") from None
            patterns[kind] = value
        existed = vhost in self.broker.auth.users[user].permissions
        self.broker.auth.set_permission(user, vhost, Permission(**patterns))
        return no_content(204 if existed else 201)

    async def delete_permission(self, request: web.Request) -> web.Response:
        vhost, user = self._ends(request)
        if not self.broker.auth.clear_permission(user, vhost):
            raise not_found()
        return no_content()

    # ---------------------------------------------------------------------------- health
    async def aliveness(self, request: web.Request) -> web.Response:
        vhost_of(request, self.context)
        return respond({"status": "ok"})

    async def healthy(self, request: web.Request) -> web.Response:
        return respond({"status": "ok"})

    async def port_listener(self, request: web.Request) -> web.Response:
        port = request.match_info["port"]
        if not port.isdigit() or int(port) not in self.broker.listening_ports():
            return respond(
                {"status": "failed", "reason": f"No active listener on port {port}",
                 "missing": port},
                status=503,
            )  # fmt: skip
        return respond({"status": "ok", "port": int(port)})

    async def protocol_listener(self, request: web.Request) -> web.Response:
        protocol = request.match_info["protocol"]
        known = {"amqp", "amqp091", "amqp0-9-1", "http"}
        if self.broker.config.tls_listener is not None:
            known |= {"amqps", "amqp/ssl"}
        if protocol not in known:
            return respond(
                {"status": "failed", "reason": f"No active listener for protocol {protocol}",
                 "missing": protocol},
                status=503,
            )  # fmt: skip
        return respond({"status": "ok", "protocol": protocol})

    async def alarms(self, request: web.Request) -> web.Response:
        if self.broker.memory_alarm:
            return respond(
                {"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                 "alarms": [{"node": self.context.node, "resource": "memory"}]},
                status=503,
            )  # fmt: skip
        return respond({"status": "ok"})


def _password_hash(body: dict, existing: User | None) -> str:
    if "password" in body:
        password = body["password"]
        if not isinstance(password, str):
            raise bad_request("password must be a string")
        return hash_password(password)
    if "password_hash" in body:
        value = body["password_hash"]
        if not isinstance(value, str) or (value and len(value) != PASSWORD_HASH_LENGTH):
            raise bad_request(
                "password_hash must be a rabbit_password_hashing_sha256 hash (base64, 48 chars)"
            )
        algorithm = body.get("hashing_algorithm", rows.HASHING_ALGORITHM)
        if algorithm != rows.HASHING_ALGORITHM:
            raise bad_request(f"hashing_algorithm {algorithm!r} is not supported; use sha256")
        return value
    if existing is not None:
        return existing.password_hash
    raise bad_request("Must specify password or password_hash")


def _tags(value: object) -> tuple[str, ...]:
    tags = parse_tags(value)
    if tags is None:
        raise bad_request(["not_tags", value])
    return tags
