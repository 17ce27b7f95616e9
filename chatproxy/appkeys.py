"""Typed keys for what the application holds (``app[STORE]``), shared by every module."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from chatproxy.auth import Authenticator, Caller
from chatproxy.cors import Cors
from chatproxy.engine.registry import Generations
from chatproxy.engine.titles import Titler
from chatproxy.limits.policy import Limits, LimitState
from chatproxy.metrics import Metrics
from chatproxy.plugins.manager import Plugins
from chatproxy.settings import Settings
from chatproxy.store.store import Store
from chatproxy.upstream.client import Upstream

__all__ = [
    "AUTH",
    "CALLER",
    "CHAT_ID",
    "CORS",
    "GENERATIONS",
    "HTTP_SESSION",
    "LEFT_EARLY",
    "LIMITS",
    "METRICS",
    "PLUGINS",
    "PLUGIN_ROUTES",
    "RATE_EXTRA",
    "RATE_LIMIT",
    "REQUEST_ID",
    "SENT_STATUS",
    "SETTINGS",
    "STORE",
    "TITLER",
    "UPSTREAM",
]

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", Upstream)
GENERATIONS = web.AppKey("generations", Generations)
AUTH = web.AppKey("auth", Authenticator)
LIMITS = web.AppKey("limits", Limits)
TITLER = web.AppKey("titler", Titler)  # only with [chats] title = "upstream"
METRICS = web.AppKey("metrics", Metrics)
CORS = web.AppKey("cors", Cors)  # only with server.cors_origins set
PLUGINS = web.AppKey("plugins", Plugins)
# The routes plugins added (register_routes), each with its plugin's name: guarded like /v1.
PLUGIN_ROUTES = web.AppKey("plugin_routes", dict)

# Per request.
REQUEST_ID = web.RequestKey("request_id", str)
CHAT_ID = web.RequestKey("chat_id", str)
CALLER = web.RequestKey("caller", Caller)
# The tightest limit this request is under, and any token-quota headers, for the response head.
RATE_LIMIT = web.RequestKey("rate_limit", LimitState)
RATE_EXTRA = web.RequestKey("rate_extra", dict)
# Set when the client went away before its response was complete (for the access log).
LEFT_EARLY = web.RequestKey("left_early", bool)
# The status of the response head once it is sent (the access log's, if the handler is then
# cancelled).
SENT_STATUS = web.RequestKey("sent_status", int)
