"""Who is calling: the caller's identity, decided once per request."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from chatproxy.settings import Settings

__all__ = ["LOCAL_USER", "Caller", "authenticate"]


@dataclass(slots=True, frozen=True)
class Caller:
    """The authenticated caller of a request."""

    user_id: str
    name: str
    tier: str | None = None
    # The client's own Authorization header, forwarded upstream in mode "passthrough".
    upstream_authorization: str | None = None


LOCAL_USER = Caller(user_id="local", name="local")


def authenticate(request: web.Request, settings: Settings) -> Caller:
    """The caller of ``request`` under ``[auth] mode`` (``none``: the one local user)."""
    return LOCAL_USER
