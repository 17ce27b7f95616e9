"""What every face reads of an HTTP request's headers, and how a face registers its routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from chatproxy.errors import InvalidRequest
from chatproxy.ids import check_id
from chatproxy.settings import Settings

__all__ = ["Handler", "add_route_table", "chat_id_header", "flag_header", "header_value"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def header_value(request: web.Request, names: list[str]) -> str | None:
    """The first of ``names`` present in the request headers."""
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            return value
    return None


def chat_id_header(request: web.Request, settings: Settings) -> str | None:
    """The chat the request names (``X-Chat-Id`` or its configured aliases), checked."""
    chat_id = header_value(request, settings.headers.chat_id)
    return None if chat_id is None else check_id(chat_id, what="chat", param="X-Chat-Id")


def flag_header(request: web.Request, name: str, default: bool) -> bool:
    """A true/false header (``true``/``1``/``yes``, ``false``/``0``/``no``)."""
    value = request.headers.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidRequest(f"{name} must be true or false", code="invalid_value", param=name)


def add_route_table(router: web.UrlDispatcher, routes: Mapping[str, Mapping[str, Handler]]) -> None:
    """Register each path's handlers by method; another method on the path is ``405`` here,
    not forwarded upstream by the pass-through catch-all."""
    for path, handlers in routes.items():
        for method, handler in handlers.items():
            router.add_route(method, path, handler)
        router.add_route("*", path, _method_not_allowed)


async def _method_not_allowed(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, [])
