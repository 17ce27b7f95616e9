"""``/ui`` over plain HTTP: the page and its files, the headers that protect them, and request
paths that try to reach anything else."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from chatproxy.faces.ui import STATIC_DIR
from chatproxy.server import ProxyServer

CSP_DIRECTIVES = {
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
}
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def origin(proxy: ProxyServer) -> str:
    return f"http://127.0.0.1:{proxy.port}"


def assert_protected(headers: aiohttp.typedefs.LooseHeaders) -> None:
    directives = {d.strip() for d in headers["Content-Security-Policy"].split(";")}
    assert directives >= CSP_DIRECTIVES
    assert not any("unsafe" in d or "*" in d for d in directives)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
async def test_the_page_is_served_with_a_strict_content_security_policy(
    proxy: ProxyServer, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(origin(proxy) + path) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html" and resp.charset == "utf-8"
        assert_protected(resp.headers)
        page = await resp.text()
    assert "<title>" in page and 'src="/ui/static/app.js"' in page


async def test_every_file_is_served_with_its_type_and_revalidated_by_etag(
    proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    files = sorted(STATIC_DIR.iterdir())
    assert {f.suffix for f in files} == set(TYPES)
    for file in files:
        url = f"{origin(proxy)}/ui/static/{file.name}"
        async with http.get(url) as resp:
            assert resp.status == 200, file.name
            assert resp.content_type == TYPES[file.suffix]
            assert_protected(resp.headers)
            assert await resp.read() == file.read_bytes()
            etag = resp.headers["ETag"]
        async with http.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
            assert await resp.read() == b""


async def test_the_page_needs_no_key_while_the_api_does(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"auth.mode": "keys"})
    async with http.get(f"{origin(proxy)}/ui") as resp:
        assert resp.status == 200
    async with http.get(f"{origin(proxy)}/ui/static/app.js") as resp:
        assert resp.status == 200
    async with http.get(f"{proxy.url}/conversations") as resp:
        assert resp.status == 401


def test_the_page_loads_nothing_from_elsewhere_and_never_parses_html() -> None:
    """Works offline: every file the page names is one of the package's own; and no script
    turns text into markup."""
    files = {p.name for p in STATIC_DIR.iterdir()}
    page = (STATIC_DIR / "index.html").read_text()
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert referenced and all(r.removeprefix("/ui/static/") in files for r in referenced)
    assert "style=" not in page and "<script>" not in page  # nothing inline
    for script in STATIC_DIR.glob("*.js"):
        source = script.read_text()
        imports = re.findall(r'from "([^"]+)"', source)
        assert all(i.startswith("./") and i[2:] in files for i in imports), script.name
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, f"{script.name} uses {sink}"
        assert "http://" not in source and "https://" not in source


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client normalises it): the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/ui/static/nothing.js",
        "/ui/static/../../../pyproject.toml",
        "/ui/static/..%2f..%2f..%2fpyproject.toml",
        "/ui/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/ui/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/ui/static/%252e%252e%252f%252e%252e%252fpyproject.toml",
        "/ui/static/..%5c..%5c..%5cpyproject.toml",
        "/ui/static/....//....//pyproject.toml",
        "/ui/static/.%2e/.%2e/api/ui.py",
        "/ui/static/%2fetc%2fpasswd",
        "/ui/static//etc/passwd",
        "/ui/static/app.js%00.css",
        "/ui/../pyproject.toml",
        "/ui/static/",
        "/ui/static/.",
        "/ui/app.js",
    ],
)
async def test_no_path_reaches_a_file_outside_the_page(proxy: ProxyServer, target: str) -> None:
    status, body = await raw_get(proxy.port, target)
    assert status in (400, 403, 404), (target, status)
    assert b"[project]" not in body and b"root:" not in body and b"import" not in body
