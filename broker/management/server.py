"""The management listener: RabbitMQ's HTTP API under /api and the web console at /.

Middlewares, outermost first: every refusal becomes RabbitMQ's JSON error; on a loopback
listener the Host header must name a loopback address (no DNS rebinding from a local browser);
/api calls need HTTP Basic credentials of a user with a management tag. The console's files are
public (they hold no data); the console itself logs in to the API like any client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.parse
from pathlib import Path

from aiohttp import web

from broker.auth import is_loopback
from broker.core.errors import AMQPError
from broker.core.persistence import MessageStore
from broker.http import MAX_BODY, Handler, HttpEndpoint
from broker.logs import fields
from broker.management.access import authenticate, loopback_host_header
from broker.management.accounts import Accounts
from broker.management.context import CALLER, Context, ManagedBroker
from broker.management.definitions import Definitions
from broker.management.errors import ApiError, from_model, not_found
from broker.management.listings import Listings
from broker.management.messages import Messages
from broker.management.objects import Objects
from broker.management.policy_api import PolicyApi
from broker.management.rates import RateSampler
from broker.management.rows import queue_counts

log = logging.getLogger("warren.management")

CONSOLE = Path(__file__).resolve().parent / "console"


class ManagementServer(HttpEndpoint):
    def __init__(
        self,
        broker: ManagedBroker,
        host: str,
        port: int,
        node: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.broker = broker
        self.rates = RateSampler(self._counts)
        self.context = Context(broker, node, self.rates)
        self.loopback_only = host == "localhost" or is_loopback(host)
        app = web.Application(
            client_max_size=MAX_BODY,
            middlewares=[
                self._errors,
                self._host_check,
                self._same_origin,
                self._authenticate,
                self._durable,
            ],
        )
        for part in (
            Listings(self.context),
            Objects(self.context),
            Messages(self.context),
            Accounts(self.context),
            Definitions(self.context),
            PolicyApi(self.context),
        ):
            app.add_routes(part.routes())
        app.router.add_get("/", self._console)
        app.router.add_static("/console/", CONSOLE, append_version=True)
        super().__init__(app, host, port, "management", ssl_context)

    async def start(self) -> None:
        await super().start()
        self.rates.start()

    async def stop(self) -> None:
        await self.rates.stop()
        await super().stop()

    def _counts(self):
        from broker.management.listings import node_counts

        yield "node", node_counts(self.broker.counters)
        for vhost in self.broker.vhosts.values():
            for queue in vhost.queues.values():
                yield queue, queue_counts(queue)

    async def _console(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE / "index.html")

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except AMQPError as error:  # the model refused (the log failed, say)
            if error.code >= 500:
                log.error("management.failed", extra=fields(path=request.path, reason=error.text))
                return ApiError(500, "internal_error", error.text).response()
            return from_model(error).response()
        except ApiError as error:
            if error.status >= 500:
                log.error("management.failed", extra=fields(path=request.path, reason=error.reason))
            return error.response()
        except web.HTTPNotFound:
            return not_found().response()
        except web.HTTPMethodNotAllowed as error:
            # RabbitMQ's order: HEAD, then what the resource takes, then OPTIONS; no body.
            methods = [m for m in ("GET", "PUT", "DELETE", "POST") if m in error.allowed_methods]
            allowed = ", ".join(["HEAD", *methods, "OPTIONS"])
            return ApiError(405, "", "", {"Allow": allowed}).response()
        except web.HTTPRequestEntityTooLarge:
            return ApiError(413, "Request Entity Too Large", "request body too large").response()

    @web.middleware
    async def _durable(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A change answers only once the log has it on disk, as a publisher confirm does: a
        user, vhost, policy or durable queue the API said it made survives a crash, and so
        does a persistent message it published. Refusals wait too: a definitions import
        refused half way keeps (and has logged) the entries before the bad one."""
        if request.method not in ("PUT", "POST", "DELETE"):
            return await handler(request)
        try:
            return await handler(request)
        finally:
            await _log_synced(self.broker.store)

    @web.middleware
    async def _host_check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.loopback_only and not loopback_host_header(request.headers.get("Host", "")):
            raise ApiError(403, "access_refused", "the Host header must name a loopback address")
        return await handler(request)

    @web.middleware
    async def _same_origin(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A browser names the page that sent a request in Origin: a page of another site
        (a form posting to the API with the well-known guest credentials cached) is refused.
        Clients that are not browsers send no Origin; the console is of this origin."""
        origin = request.headers.get("Origin")
        if origin is not None and request.path.startswith("/api"):
            parts = urllib.parse.urlsplit(origin)
            if parts.netloc.lower() != request.headers.get("Host", "").lower():
                raise ApiError(403, "access_refused", "cross-origin requests are refused")
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/") or request.path == "/api":
            request[CALLER] = authenticate(request, self.broker.auth)
        return await handler(request)


async def _log_synced(store: MessageStore) -> None:
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def synced(error: BaseException | None) -> None:
        if not done.done():
            done.set_result(error)

    store.sync(synced)
    error = await done
    if error is not None:
        raise ApiError(500, "internal_error", f"the log failed to store the change: {error}")
