"""``GET /ui``: the history browser, a static page that talks to the public ``/v1`` API only.

The page and its assets ship in the package (``chatproxy/ui/static``) and are read once, at
start-up, into memory; only those files can be served, by name, so no request path ever
reaches the file system. Every response carries a strict Content-Security-Policy: scripts
and styles come from this origin only, nothing inline, no frames, no form posts; with
Trusted Types required, even an accidental ``innerHTML`` assignment in the page throws.

The page itself needs no credentials (it holds no data); the API calls it makes carry the
proxy key the user typed, so ``/ui`` sits outside the ``/v1`` authentication and limits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "add_routes"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "ui" / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Asset names carry no version: the browser may keep a copy but asks (ETag) before use.
    "Cache-Control": "no-cache",
}

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load(directory: Path) -> dict[str, _Asset]:
    """Every servable file of ``directory`` by name (one level, known types only)."""
    assets = {}
    for path in sorted(directory.iterdir()):
        content_type = _TYPES.get(path.suffix)
        if content_type is not None and path.is_file():
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[path.name] = _Asset(body, content_type, etag)
    return assets


def _respond(request: web.Request, asset: _Asset) -> web.Response:
    headers = {**_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers=headers | {"Content-Type": asset.content_type})


def add_routes(router: web.UrlDispatcher, directory: Path = STATIC_DIR) -> None:
    """Serve the page at ``/ui`` and ``/ui/``, its files under ``/ui/static/``."""
    assets = _load(directory)

    async def index(request: web.Request) -> web.Response:
        return _respond(request, assets["index.html"])

    async def static(request: web.Request) -> web.Response:
        asset = assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        return _respond(request, asset)

    router.add_get("/ui", index)
    router.add_get("/ui/", index)
    router.add_get("/ui/static/{name}", static)
