"""Management API: conversations (being written in this session)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["add_routes"]


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's routes (before the pass-through catch-all)."""
