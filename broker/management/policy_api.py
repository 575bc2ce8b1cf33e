"""/api/policies: list, read, set and clear policies (policymakers, in vhosts they may use)."""

from __future__ import annotations

from aiohttp import web

from broker.core.vhost import VirtualHost
from broker.management.context import (
    Context,
    caller,
    json_body,
    listing,
    no_content,
    respond,
    vhost_of,
)
from broker.management.errors import bad_request, not_found, vhost_not_found
from broker.policies import PolicyError, parse_policy


class PolicyApi:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.policies = context.broker.policies

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/policies", self.list),
            web.get("/api/policies/{vhost}", self.list),
            web.get("/api/policies/{vhost}/{name}", self.get),
            web.put("/api/policies/{vhost}/{name}", self.put),
            web.delete("/api/policies/{vhost}/{name}", self.delete),
            web.get("/api/operator-policies", self.none),
            web.get("/api/operator-policies/{vhost}", self.none),
            web.get("/api/parameters", self.none),
            web.get("/api/global-parameters", self.none),
            web.get("/api/vhost-limits", self.none),
        ]

    def _writable_vhost(self, request: web.Request) -> VirtualHost:
        """The path's vhost, for a policymaker with permissions there (RabbitMQ refuses the
        others with "not authorised to access object")."""
        name = request.match_info["vhost"]
        vhost = self.context.broker.vhosts.get(name)
        if vhost is None:
            raise vhost_not_found()
        caller(request).require_policymaker(name)
        return vhost

    async def list(self, request: web.Request) -> web.Response:
        who = caller(request)
        wanted = vhost_of(request, self.context).name if "vhost" in request.match_info else None
        return listing(
            request,
            [
                policy.row()
                for policy in self.policies.all()
                if (wanted is None or policy.vhost == wanted) and who.may_see_vhost(policy.vhost)
            ],
        )

    async def get(self, request: web.Request) -> web.Response:
        vhost = vhost_of(request, self.context)
        policy = self.policies.get(vhost.name, request.match_info["name"])
        if policy is None:
            raise not_found()
        return respond(policy.row())

    async def put(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        vhost = self._writable_vhost(request)
        try:
            policy = parse_policy(vhost.name, request.match_info["name"], body)
        except PolicyError as error:
            raise bad_request(str(error)) from None
        created = self.policies.put(policy)
        return no_content(201 if created else 204)

    async def delete(self, request: web.Request) -> web.Response:
        vhost = self._writable_vhost(request)
        if not self.policies.delete(vhost.name, request.match_info["name"]):
            raise not_found()
        return no_content()

    async def none(self, request: web.Request) -> web.Response:
        """Operator policies, runtime parameters and vhost limits: Warren has none, and says so
        with the empty listing rabbitmqadmin expects."""
        return listing(request, [])
