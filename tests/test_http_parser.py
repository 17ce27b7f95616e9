"""What aiohttp's HTTP parser refuses (before any middleware) is answered in OpenAI's shape and
echoes nothing of the request, in the response or in the log; with the C parser and the
pure-Python one."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp.http_parser
import orjson
import pytest
from aiohttp import web

from chatproxy.http_edge import MAX_FIELD_SIZE, MAX_HEADERS, ProxyRunner
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream

PARSERS = ["python"]
if aiohttp.http_parser.HttpRequestParser is not aiohttp.http_parser.HttpRequestParserPy:
    PARSERS.insert(0, "c")


async def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is on a new connection; the status, headers (names lower-cased)
    and body of the answer, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def error(status: int, code: str, message: str) -> tuple[int, str, dict]:
    body = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return status, "application/json", {"error": body}


def answered(status: int, headers: dict[str, str], body: bytes) -> tuple[int, str, dict]:
    return status, headers.get("content-type", "").split(";")[0], orjson.loads(body)


TOO_LARGE = f"a request header or the request line is longer than {MAX_FIELD_SIZE} bytes"
TOO_LARGE_431 = error(431, "request_header_fields_too_large", TOO_LARGE)
TOO_MANY_431 = error(
    431, "request_header_fields_too_large", f"the request has more than {MAX_HEADERS} headers"
)
BAD_LINE_400 = error(400, "malformed_request", "the request line is not valid HTTP/1.1")
BAD_HEADER_400 = error(400, "malformed_request", "the request headers are not valid HTTP/1.1")


@pytest.fixture
def db_url(db_path: Path) -> str:
    """No store is involved here: SQLite only, whatever CHATPROXY_TEST_POSTGRES_URL says."""
    return f"sqlite://{db_path}"


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with aiohttp's C parser (when built) and with its pure-Python one."""
    if request.param == "python":
        monkeypatch.setattr(
            "aiohttp.web_protocol.HttpRequestParser", aiohttp.http_parser.HttpRequestParserPy
        )
    return request.param


@pytest.fixture
def secret() -> str:
    """A proxy key long enough to push its header over the limit; random, so any 6
    consecutive characters of it found in an answer or a log were echoed."""
    return "cp-" + secrets.token_urlsafe(7000)


def echoed(secret: str, text: str) -> list[str]:
    """The 6-character pieces of ``secret`` that appear in ``text``."""
    pieces = {secret[i : i + 6] for i in range(len(secret) - 5)}
    return sorted({text[i : i + 6] for i in range(len(text) - 5)} & pieces)


def request(*headers: bytes, line: bytes = b"GET /v1/models HTTP/1.1") -> bytes:
    return b"\r\n".join([line, b"Host: proxy", *headers, b"", b""])


async def test_an_oversized_authorization_header_is_431_json_with_no_byte_of_the_key(
    parser: str,
    proxy: ProxyServer,
    upstream: FakeUpstream,
    secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = request(b"Authorization: Bearer " + secret.encode())
    status, headers, body = await raw_exchange(proxy.port, raw)
    assert answered(status, headers, body) == TOO_LARGE_431
    assert headers["x-request-id"].startswith("req_")
    assert echoed(secret, body.decode() + "".join(headers.values())) == []
    assert echoed(secret, caplog.text) == []
    # The refusal is logged, as one line that names the status and the code.
    refusals = [r for r in caplog.records if "refused an unparsable request" in r.getMessage()]
    assert len(refusals) == 1
    assert "status=431 code=request_header_fields_too_large" in refusals[0].getMessage()
    assert refusals[0].exc_info is None
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            request(*(b"X-Header-%d: v" % i for i in range(MAX_HEADERS + 10))),
            TOO_MANY_431,
            id="too-many-headers",
        ),
        pytest.param(request(b"X-Filler: " + b"f" * 9000), TOO_LARGE_431, id="long-value"),
        pytest.param(request(b"X-" + b"n" * 9000 + b": v"), TOO_LARGE_431, id="long-name"),
        pytest.param(
            request(line=b"GET /v1/models?q=" + b"q" * 9000 + b" HTTP/1.1"),
            TOO_LARGE_431,
            id="long-request-line",
        ),
        pytest.param(request(line=b"GET /v1/models HTTP/9.Z"), BAD_LINE_400, id="bad-version"),
        pytest.param(request(line=b"G(T /v1/models HTTP/1.1"), BAD_LINE_400, id="bad-method"),
        pytest.param(request(line=b"GET /v1/models HTTP/1.1 x"), BAD_LINE_400, id="extra-word"),
        pytest.param(request(line=b"/v1/models HTTP/1.1"), BAD_LINE_400, id="no-method"),
        pytest.param(request(line=b"GET /v1/a\x01b HTTP/1.1"), BAD_LINE_400, id="ctl-in-path"),
        pytest.param(request(b"X-Chat-Id: a\x01b"), BAD_HEADER_400, id="ctl-in-value"),
        pytest.param(request(b"X-Chat-Id: a\x00b"), BAD_HEADER_400, id="nul-in-value"),
        pytest.param(request(b"X Chat: a"), BAD_HEADER_400, id="space-in-name"),
        pytest.param(request(b"no colon here"), BAD_HEADER_400, id="no-colon"),
    ],
)
async def test_what_the_parser_refuses_is_openai_shaped_json(
    parser: str, proxy: ProxyServer, upstream: FakeUpstream, raw: bytes, expected: tuple
) -> None:
    status, headers, body = await raw_exchange(proxy.port, raw)
    assert answered(status, headers, body) == expected
    assert upstream.requests == []


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"Authorization: Bearer %s\x01", id="ctl-after-the-key"),
        pytest.param(b"Authorization: Bearer %s\x7f", id="del-after-the-key"),
        pytest.param(b"Authorization: Bearer %s\rX", id="bare-cr"),
        pytest.param(b"Authorization : Bearer %s", id="space-before-colon"),
    ],
)
async def test_a_malformed_authorization_header_echoes_nothing_of_the_key(
    parser: str,
    proxy: ProxyServer,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    header: bytes,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "cp-" + secrets.token_urlsafe(24)
    status, headers, body = await raw_exchange(proxy.port, request(header % key.encode()))
    assert answered(status, headers, body) == BAD_HEADER_400
    assert echoed(key, body.decode()) == []
    assert echoed(key, caplog.text) == []
    assert upstream.requests == []


async def test_a_key_in_a_malformed_request_line_is_not_echoed(
    parser: str, proxy: ProxyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "cp-" + secrets.token_urlsafe(24)
    line = b"GET /v1/models?api_key=%s HTTP/1.1 trailing" % key.encode()
    status, headers, body = await raw_exchange(proxy.port, request(line=line))
    assert answered(status, headers, body) == BAD_LINE_400
    assert echoed(key, body.decode()) == []
    assert echoed(key, caplog.text) == []


async def test_headers_just_under_the_limits_are_served(
    parser: str, proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    filler = "f" * (MAX_FIELD_SIZE - len("X-Filler") - 100)
    headers = {"X-Filler": filler} | {f"X-Header-{i}": "v" for i in range(MAX_HEADERS - 10)}
    async with http.get(f"{proxy.url}/models", headers=headers) as resp:
        assert resp.status == 200
        assert [m["id"] for m in (await resp.json())["data"]] == ["fake-model", "fake-reasoner"]
    assert upstream.requests[-1].headers["X-Filler"] == filler


@pytest.fixture
async def crashing_app() -> AsyncIterator[int]:
    """A bare application on the proxy's runner whose handlers fail in unexpected ways."""

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def hang(request: web.Request) -> web.Response:
        raise TimeoutError

    app = web.Application()
    app.router.add_get("/crash", crash)
    app.router.add_get("/hang", hang)
    runner = ProxyRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "status", "code", "message"),
    [
        ("/crash", 500, "internal_error", "internal error in the proxy"),
        ("/hang", 504, "timeout", "the request took too long"),
    ],
)
async def test_an_exception_escaping_a_handler_is_a_json_error(
    crashing_app: int,
    caplog: pytest.LogCaptureFixture,
    path: str,
    status: int,
    code: str,
    message: str,
) -> None:
    raw = request(line=b"GET %s HTTP/1.1" % path.encode())
    got_status, headers, body = await raw_exchange(crashing_app, raw)
    body_error = {"message": message, "type": "server_error", "param": None, "code": code}
    assert answered(got_status, headers, body) == (
        status,
        "application/json",
        {"error": body_error},
    )
    if status == 500:
        assert "RuntimeError: a bug" in caplog.text  # the bug stays visible to the operator
