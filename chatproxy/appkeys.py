"""Typed keys for what the application holds (``app[STORE]``), shared by every module."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from chatproxy.proxy.generation import Generations
from chatproxy.proxy.upstream import Upstream
from chatproxy.settings import Settings
from chatproxy.store.store import Store

__all__ = [
    "CHAT_ID",
    "GENERATIONS",
    "HTTP_SESSION",
    "REQUEST_ID",
    "SETTINGS",
    "STORE",
    "UPSTREAM",
]

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", Upstream)
GENERATIONS = web.AppKey("generations", Generations)

# Per request.
REQUEST_ID = web.RequestKey("request_id", str)
CHAT_ID = web.RequestKey("chat_id", str)
