"""``create_app(settings)``: routes, middlewares, and every resource in a ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from chatproxy import logfilter
from chatproxy.appkeys import (
    AUTH,
    CALLER,
    CHAT_ID,
    CORS,
    GENERATIONS,
    HTTP_SESSION,
    LEFT_EARLY,
    LIMITS,
    METRICS,
    PLUGIN_ROUTES,
    PLUGINS,
    RATE_EXTRA,
    RATE_LIMIT,
    REQUEST_ID,
    SENT_STATUS,
    SETTINGS,
    STORE,
    TITLER,
    UPSTREAM,
)
from chatproxy.auth import Authenticator
from chatproxy.cors import Cors
from chatproxy.engine.registry import Generations
from chatproxy.engine.shared import SharedGenerations
from chatproxy.engine.titles import Titler
from chatproxy.errors import APIError, InvalidRequest, PayloadTooLarge, error_response
from chatproxy.faces import ui
from chatproxy.faces.aisdk import routes as aisdk
from chatproxy.faces.chat_completions import handle_chat_completions
from chatproxy.faces.health import healthz, readyz
from chatproxy.faces.history import completions, conversations
from chatproxy.faces.history.resume import handle_resume
from chatproxy.faces.passthrough import handle_passthrough
from chatproxy.faces.responses import routes as responses
from chatproxy.faces.responses.dialect import UPSTREAM_DIALECT, UpstreamDialect
from chatproxy.heartbeat import Heartbeat
from chatproxy.ids import new_request_id
from chatproxy.limits.buckets import Buckets, LocalBuckets, RedisBuckets
from chatproxy.limits.policy import Limits
from chatproxy.metrics import Metrics, metrics_handler
from chatproxy.plugins.manager import PluginFailed, PluginLoadError, Plugins, load_plugins
from chatproxy.settings import Settings
from chatproxy.store.store import Store
from chatproxy.upstream.client import Upstream

__all__ = ["create_app", "instance_id"]

log = logging.getLogger("chatproxy.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def instance_id(settings: Settings) -> str:
    """This instance's stable name: configured, or ``<hostname>:<port>``."""
    return settings.server.instance_id or f"{socket.gethostname()}:{settings.server.port}"


def _http_error(exc: web.HTTPException) -> APIError:
    """aiohttp's own errors (unknown route, wrong method, body too large) in OpenAI's shape."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("the request body is too large")
    error = APIError(exc.reason, code=exc.reason.lower().replace(" ", "_"))
    error.status = exc.status
    error.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return error


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, errors in OpenAI's shape, and one access-log line per request (also for a
    client that left before its response was complete: ``left_early``)."""
    request[REQUEST_ID] = new_request_id()
    started = time.perf_counter()
    try:
        resp = await _respond(request, handler)
    except asyncio.CancelledError:  # the client went away while the handler waited
        request[LEFT_EARLY] = True
        # 499, as nginx logs it, when the client left before the response head.
        _account(request, request.get(SENT_STATUS, 499), started)
        raise
    _account(request, resp.status, started)
    return resp


async def _respond(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        guarded = _guards(request)
        cors = request.app.get(CORS)
        preflight = cors.preflight(request) if cors is not None and guarded else None
        if preflight is not None:
            return preflight
        if guarded:
            await _admit(request)
        return await handler(request)
    except APIError as exc:
        if exc.status == 429:
            request.app[METRICS].refusals.labels(exc.code or "").inc()
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_http_error(exc))
    except UnicodeDecodeError:
        return error_response(InvalidRequest("the request is not valid UTF-8", code="invalid_utf8"))
    except Exception as exc:
        # Only a plugin's route is answered here (its crash is the plugin's, named); anything
        # else is aiohttp's to report, as before.
        plugin = request.app[PLUGIN_ROUTES].get(request.match_info.route)
        if plugin is None or SENT_STATUS in request:
            raise
        request.app[PLUGINS].failed(plugin, "route", exc)
        return error_response(PluginFailed(plugin, "route"))


def _account(request: web.Request, status: int, started: float) -> None:
    """The request's metric and its access-log line."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS].request(route, status)
    if log.isEnabledFor(logging.INFO):
        caller = request.get(CALLER)
        fields = {
            "request_id": request[REQUEST_ID],
            "method": request.method,
            # As sent, still percent-encoded: a decoded "%0d%0a" would forge a log line.
            "path": request.rel_url.raw_path.encode("ascii", "backslashreplace").decode(),
            "status": status,
            "user": caller.user_id if caller else None,
            "chat": request.get(CHAT_ID),
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "left_early": request.get(LEFT_EARLY, False),
        }
        log.info(
            "%(request_id)s %(method)s %(path)s status=%(status)d user=%(user)s chat=%(chat)s "
            "ms=%(ms).1f left_early=%(left_early)s",
            fields,
            extra={"fields": fields},
        )


def _guarded(path: str) -> bool:
    """Whether a path is behind the IP limit and authentication: the OpenAI API and the AI SDK
    chat route."""
    return path.startswith("/v1/") or path == "/api/chat" or path.startswith("/api/chat/")


def _guards(request: web.Request) -> bool:
    """Whether ``request`` is behind the IP limit and authentication: a guarded path, or a
    plugin's route (wherever it is)."""
    return _guarded(request.path) or request.match_info.route in request.app[PLUGIN_ROUTES]


async def _admit(request: web.Request) -> None:
    """The client IP's limit first (it also guards against guessing keys), then identity."""
    state = await request.app[LIMITS].check_ip(request)
    if state is not None:
        request[RATE_LIMIT] = state
    request[CALLER] = await request.app[AUTH].authenticate(request)


async def _add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare runs right before the head is sent, streams included.
    request[SENT_STATUS] = response.status
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
    cors = request.app.get(CORS)
    if cors is not None and _guards(request):
        cors.decorate(request, response)
    state = request.get(RATE_LIMIT)
    if state is not None and "x-ratelimit-limit-requests" not in response.headers:
        response.headers.update(state.headers())
        response.headers.update(request.get(RATE_EXTRA) or {})


def create_app(settings: Settings) -> web.Application:
    """The chatproxy application for ``settings``."""
    logfilter.install()
    app = web.Application(
        middlewares=[request_context], client_max_size=settings.server.max_body_bytes
    )
    app[SETTINGS] = settings
    app[UPSTREAM_DIALECT] = UpstreamDialect(settings.upstream.responses)
    app[METRICS] = Metrics(instance_id(settings))
    app[PLUGINS] = load_plugins(settings, app[METRICS])
    if settings.server.cors_origins:
        app[CORS] = Cors(settings.server.cors_origins)
    app.cleanup_ctx.extend([_store_ctx, _access_ctx, _upstream_ctx, _generations_ctx])
    app.on_response_prepare.append(_add_response_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/v1/chat/completions", handle_chat_completions)
    app.router.add_get("/v1/conversations/{chat_id}/stream", handle_resume)
    conversations.add_routes(app.router)
    completions.add_routes(app.router)
    ui.add_routes(app.router)
    aisdk.add_routes(app.router)
    responses.add_routes(app.router)
    # Before the /v1 catch-all, after the built-in routes: a built-in route wins over a
    # plugin's on the same path and method, a plugin's wins over the pass-through.
    app[PLUGIN_ROUTES] = _plugin_routes(app.router, app[PLUGINS])
    # Every other /v1 path, even one with an encoded newline: the pass-through refuses what
    # it must not forward, in one place.
    app.router.add_route("*", "/v1/{tail:(?s:.*)}", handle_passthrough)
    return app


def _plugin_routes(router: web.UrlDispatcher, plugins: Plugins) -> dict[web.AbstractRoute, str]:
    """Let each plugin add its routes; the routes each added, with its name."""
    owners: dict[web.AbstractRoute, str] = {}
    for name, add_routes in plugins.implementations("register_routes"):
        before = len(router.routes())
        try:
            add_routes(router=router)
        except Exception as exc:
            raise PluginLoadError(name, "failed in register_routes", exc) from None
        for route in list(router.routes())[before:]:
            owners[route] = name
    return owners


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = Store(settings.storage.url, instance_id=instance_id(settings))
    store.observe_write = app[METRICS].store_writes.observe
    await store.open()
    store.attach_plugins(app[PLUGINS], app[METRICS])
    interrupted = await store.recover_interrupted()
    if interrupted:
        logging.getLogger("chatproxy").warning(
            "marked %d unfinished message(s) of this instance as interrupted", interrupted
        )
    app[STORE] = store
    server = settings.server
    heartbeat = Heartbeat(
        store,
        interval=server.heartbeat_interval,
        timeout=server.heartbeat_timeout,
        on_reaped=app[METRICS].reaped.inc,
    )
    await heartbeat.start()
    yield
    await heartbeat.stop()
    await store.close()  # stops delivering events to the plugins
    await app[PLUGINS].aclose()


async def _access_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    auth = Authenticator(settings, app[STORE], app[PLUGINS])
    await auth.start()
    app[AUTH] = auth
    buckets: Buckets = (
        RedisBuckets(settings.redis.url, prefix=settings.redis.prefix)
        if settings.redis.url
        else LocalBuckets()
    )
    app[LIMITS] = Limits(settings, buckets, app[STORE])
    yield
    await auth.close()
    await buckets.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
    )
    app[HTTP_SESSION] = session
    app[UPSTREAM] = Upstream(app[SETTINGS].upstream, session, on_retry=app[METRICS].retries.inc)
    if app[SETTINGS].chats.title == "upstream":
        app[TITLER] = Titler(app[STORE], app[UPSTREAM])
    yield
    if TITLER in app:  # titles under way finish before the client they use is closed
        await app[TITLER].close()
    await session.close()


async def _generations_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    shared = None
    if settings.redis.url:
        shared = SharedGenerations(
            settings.redis.url,
            prefix=settings.redis.prefix,
            instance_id=instance_id(settings),
            maxlen=settings.redis.stream_maxlen,
            ttl=settings.server.heartbeat_timeout,
            refresh=settings.server.heartbeat_interval,
            grace=settings.chats.resume_grace,
        )
    generations = Generations(settings.chats.resume_grace, shared=shared)
    app[GENERATIONS] = generations
    yield
    await generations.drain(settings.chats.drain_timeout)
    await generations.close()
