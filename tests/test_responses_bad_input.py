"""Malformed, oversized and hostile requests to ``/v1/responses`` and the stored-response
endpoints (``GET``/``DELETE /v1/responses/{id}``, ``/input_items``, ``/cancel``): each gets its
exact status and OpenAI's error shape, quotes no secret, logs no traceback, stores nothing and
sends nothing upstream, in every way the proxy reaches the upstream (``native`` in front of a
stateful or a stateless upstream, ``translate`` to chat completions). One user probing
another's responses learns what the access rule lets them, and no more; the limits hold for
``/v1/responses`` as for chat completions."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from multidict import CIMultiDictProxy

from chatproxy.appkeys import STORE
from chatproxy.offload import LARGE_BODY
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.store.models import MODEL_LENGTH
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.test_identity import bearer, make_key
from tests.util import all_chats, all_messages, eventually

StartProxy = Callable[..., Awaitable[ProxyServer]]
Body = bytes | dict[str, Any] | None

UPSTREAM_KEY = "sk-upstream-secret"  # conftest's make_settings
# (the proxy's [upstream] responses, the fake upstream's Responses API)
MODES = {
    "native": ("native", "stateful"),
    "native-stateless": ("native", "stateless"),
    "translate": ("translate", "none"),
}
NO_IP_LIMIT = {"limits.ip_rate": "0"}
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def mode_settings(mode: str, upstream: FakeUpstream) -> dict[str, Any]:
    """The proxy's settings for ``mode``, the fake upstream set to match."""
    setting, fake = MODES[mode]
    upstream.responses = fake
    return {"upstream.responses": setting, **NO_IP_LIMIT}


@pytest.fixture
async def rproxy(mode: str, upstream: FakeUpstream, start_proxy: StartProxy) -> ProxyServer:
    return await start_proxy(**mode_settings(mode, upstream))


@pytest.fixture
async def native_proxy(upstream: FakeUpstream, start_proxy: StartProxy) -> ProxyServer:
    return await start_proxy(**mode_settings("native", upstream))


def body(**fields: Any) -> dict[str, Any]:
    """A good request body with ``fields`` changed."""
    return {"model": "m", "input": "hi", **fields}


def items(*input_items: Any, **fields: Any) -> dict[str, Any]:
    """A request body whose input is ``input_items``."""
    return {"model": "m", "input": list(input_items), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    content: Body = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One request, its URL sent exactly as written (percent-escapes and dot segments
    included); a dict body as JSON. Its status, headers and body."""
    data: Any = orjson.dumps(content) if isinstance(content, dict) else content
    if data is not None and len(data) > 1 << 20:
        data = io.BytesIO(data)  # aiohttp warns of a large body given as bytes
    sent = {"Content-Type": "application/json", **(headers or {})}
    async with http.request(method, yarl.URL(url, encoded=True), data=data, headers=sent) as resp:
        return resp.status, resp.headers, await resp.read()


def error_of(
    status: int, headers: CIMultiDictProxy[str], raw: bytes, secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The error of an answer, checked: JSON in OpenAI's shape with the type of its status, a
    request id, and neither the upstream key nor any of ``secrets`` quoted."""
    assert headers["Content-Type"].startswith("application/json"), raw[:200]
    assert headers["X-Request-Id"].startswith("req_")
    parsed = orjson.loads(raw)
    assert set(parsed) == {"error"}, parsed
    error = parsed["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == STATUS_TYPES[status], (status, error)
    assert isinstance(error["message"], str) and error["message"]
    text = raw.decode("utf-8", "replace")
    for secret in (UPSTREAM_KEY, *secrets):
        assert secret not in text
    return error


async def refused(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    content: Body = None,
    headers: dict[str, str] | None = None,
    secrets: tuple[str, ...] = (),
) -> tuple[int, str | None, str | None]:
    """Send a request that must be refused: its status, error code and param (the error's
    shape checked by :func:`error_of`)."""
    status, got_headers, raw = await send(http, method, url, content, headers)
    assert 400 <= status < 500, (status, raw[:300])
    error = error_of(status, got_headers, raw, secrets)
    return status, error["code"], error["param"]


async def refusal(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    content: Body = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Send a request that must be refused: its status and whole (checked) error."""
    status, got_headers, raw = await send(http, method, url, content, headers)
    assert 400 <= status < 500, (status, raw[:300])
    return status, error_of(status, got_headers, raw)


async def assert_nothing_stored_or_sent(store: Store, upstream: FakeUpstream) -> None:
    assert await all_messages(store) == []
    assert await all_chats(store) == []
    assert upstream.requests == []


def assert_clean_log(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No error and no traceback was logged, and no secret."""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text
    for secret in (UPSTREAM_KEY, *secrets):
        assert secret not in caplog.text


def label(content: Body) -> str:
    """A short name of a request body, for a table's diff."""
    raw = orjson.dumps(content) if isinstance(content, dict) else content or b""
    return raw[:90].decode("utf-8", "backslashreplace")


async def create(
    http: aiohttp.ClientSession,
    proxy: ProxyServer,
    content: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[dict[str, Any], CIMultiDictProxy[str]]:
    """POST a good request: the response object and the headers."""
    status, got, raw = await send(http, "POST", f"{proxy.url}/responses", content, headers)
    assert status == 200, raw[:300]
    return orjson.loads(raw), got


async def create_get(
    http: aiohttp.ClientSession, proxy: ProxyServer, response_id: str
) -> dict[str, Any]:
    """``GET /v1/responses/{response_id}``, which must answer 200."""
    status, _, raw = await send(http, "GET", f"{proxy.url}/responses/{response_id}")
    assert status == 200, raw[:300]
    return orjson.loads(raw)


# -- POST /v1/responses: the body and the headers --------------------------------------------

LONG = "a" * 129
# (headers, body, status, code, param)
HOSTILE_POSTS: list[tuple[dict[str, str], Body, int, str, str | None]] = [
    # not a JSON object
    ({}, b"{nope", 400, "invalid_json", None),
    ({}, b"", 400, "invalid_json", None),
    ({}, b"\xff\xfe", 400, "invalid_json", None),
    ({}, b"[" * 5000 + b"]" * 5000, 400, "invalid_json", None),  # deeper than the parser goes
    ({}, b'{"model": "m", "input": "hi", "temperature": 1e999}', 400, "invalid_json", None),
    ({}, b"[]", 400, "invalid_type", None),
    ({}, b"null", 400, "invalid_type", None),
    ({}, b'"hi"', 400, "invalid_type", None),
    ({}, b"42", 400, "invalid_type", None),
    # model
    ({}, {"input": "hi"}, 400, "missing_required_parameter", "model"),
    ({}, body(model=None), 400, "missing_required_parameter", "model"),
    ({}, body(model=7), 400, "invalid_type", "model"),
    ({}, body(model=["m"]), 400, "invalid_type", "model"),
    ({}, body(model="m" * (MODEL_LENGTH + 1)), 400, "invalid_value", "model"),
    # input
    ({}, {"model": "m"}, 400, "missing_required_parameter", "input"),
    ({}, body(input=None), 400, "missing_required_parameter", "input"),
    ({}, body(input=5), 400, "invalid_type", "input"),
    ({}, body(input=True), 400, "invalid_type", "input"),
    ({}, body(input=user("hi")), 400, "invalid_type", "input"),
    ({}, items(5), 400, "invalid_type", "input[0]"),
    ({}, items("hi"), 400, "invalid_type", "input[0]"),
    ({}, items(None), 400, "invalid_type", "input[0]"),
    # items of an unknown type or role
    ({}, items({"type": "banana"}), 400, "invalid_value", "input[0].type"),
    ({}, items({"type": "web_search_call", "id": "x"}), 400, "invalid_value", "input[0].type"),
    ({}, items({"type": 5}), 400, "invalid_value", "input[0].type"),
    ({}, items({"role": "wizard", "content": "x"}), 400, "invalid_value", "input[0].role"),
    ({}, items({"role": "tool", "content": "x"}), 400, "invalid_value", "input[0].role"),
    ({}, items({"role": 5, "content": "x"}), 400, "invalid_value", "input[0].role"),
    ({}, items({"content": "x"}), 400, "invalid_value", "input[0].role"),
    # content of the wrong type
    ({}, items(user(5)), 400, "invalid_type", "input[0].content"),
    ({}, items({"role": "user"}), 400, "missing_required_parameter", "input[0].content"),
    ({}, items(user({"type": "input_text"})), 400, "invalid_type", "input[0].content"),
    ({}, items(user("ok"), user(5)), 400, "invalid_type", "input[1].content"),
    ({}, items(user([5])), 400, "invalid_type", "input[0].content[0]"),
    (
        {},
        items(user([{"type": "input_text"}])),
        400,
        "missing_required_parameter",
        "input[0].content[0].text",
    ),
    (
        {},
        items(user([{"type": "input_text", "text": 5}])),
        400,
        "invalid_type",
        "input[0].content[0].text",
    ),
    (
        {},
        items(user([{"type": "input_audio", "text": "x"}])),
        400,
        "invalid_value",
        "input[0].content[0].type",
    ),
    (
        {},
        items({"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]}),
        400,
        "invalid_value",
        "input[0].content[0].type",
    ),
    (
        {},
        items(user([{"type": "input_image", "file_id": "file_1"}])),
        400,
        "unsupported_parameter",
        "input[0].content[0].file_id",
    ),
    (
        {},
        items(user([{"type": "input_image", "image_url": "x", "detail": "ultra"}])),
        400,
        "invalid_value",
        "input[0].content[0].detail",
    ),
    (
        {},
        items(user([{"type": "input_file", "file_url": "https://example.com/a.pdf"}])),
        400,
        "unsupported_parameter",
        "input[0].content[0].file_url",
    ),
    (
        {},
        items(user([{"type": "input_file", "filename": "a.pdf"}])),
        400,
        "missing_required_parameter",
        "input[0].content[0].file_data",
    ),
    # function calls and their outputs
    (
        {},
        items({"type": "function_call", "name": "f", "arguments": "{}"}),
        400,
        "missing_required_parameter",
        "input[0].call_id",
    ),
    (
        {},
        items({"type": "function_call", "call_id": 5, "name": "f", "arguments": "{}"}),
        400,
        "invalid_type",
        "input[0].call_id",
    ),
    (
        {},
        items({"type": "function_call", "call_id": "c", "arguments": "{}"}),
        400,
        "missing_required_parameter",
        "input[0].name",
    ),
    (
        {},
        items({"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}),
        400,
        "invalid_type",
        "input[0].arguments",
    ),
    (
        {},
        items({"type": "function_call_output", "output": "x"}),
        400,
        "missing_required_parameter",
        "input[0].call_id",
    ),
    (
        {},
        items({"type": "function_call_output", "call_id": "c"}),
        400,
        "missing_required_parameter",
        "input[0].output",
    ),
    (
        {},
        items({"type": "function_call_output", "call_id": "c", "output": 5}),
        400,
        "invalid_type",
        "input[0].output",
    ),
    (
        {},
        items(
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_image", "image_url": "x"}],
            }
        ),
        400,
        "invalid_value",
        "input[0].output[0].type",
    ),
    # reasoning with no answer to belong to
    ({}, items({"type": "reasoning"}), 400, "missing_required_parameter", "input[0].summary"),
    ({}, items({"type": "reasoning", "summary": []}), 400, "invalid_value", "input[0].type"),
    (
        {},
        items({"type": "reasoning", "summary": []}, user("x")),
        400,
        "invalid_value",
        "input[0].type",
    ),
    # the flags
    ({}, body(stream="true"), 400, "invalid_type", "stream"),
    ({}, body(stream=1), 400, "invalid_type", "stream"),
    ({}, body(store="false"), 400, "invalid_type", "store"),
    ({}, body(store=0), 400, "invalid_type", "store"),
    ({}, body(background="yes"), 400, "invalid_type", "background"),
    ({}, body(background=1), 400, "invalid_type", "background"),
    ({}, body(parallel_tool_calls="x"), 400, "invalid_type", "parallel_tool_calls"),
    ({}, body(background=True, store=False), 400, "invalid_value", "background"),
    ({}, body(background=True, store=False, stream=True), 400, "invalid_value", "background"),
    # bad input on every path: streamed, in the background, not stored
    ({}, items({"type": "banana"}, stream=True), 400, "invalid_value", "input[0].type"),
    ({}, items({"type": "banana"}, background=True), 400, "invalid_value", "input[0].type"),
    ({}, items({"type": "banana"}, store=False), 400, "invalid_value", "input[0].type"),
    # previous_response_id: malformed, then unknown
    *(
        ({}, body(previous_response_id=bad), 400, "invalid_response_id", "previous_response_id")
        for bad in (
            "../etc/passwd",
            "%2e%2e",
            LONG,
            "a" * 200,
            "rëspönse",
            "resp\x00x",
            "",
            " ",
            f"{UPSTREAM_KEY}/../x",
            5,
            ["resp_1"],
            {"id": "resp_1"},
        )
    ),
    (
        {},
        body(previous_response_id="resp_unknown"),
        404,
        "response_not_found",
        "previous_response_id",
    ),
    ({}, body(previous_response_id="a" * 65), 404, "response_not_found", "previous_response_id"),
    (
        {},
        body(previous_response_id="resp_unknown", stream=True, background=True),
        404,
        "response_not_found",
        "previous_response_id",
    ),
    (
        {},
        body(previous_response_id="resp_unknown", store=False),
        404,
        "response_not_found",
        "previous_response_id",
    ),
    # conversation: malformed, unknown, combined with previous_response_id
    ({}, body(conversation="../x"), 400, "invalid_chat_id", "conversation"),
    ({}, body(conversation=""), 400, "invalid_chat_id", "conversation"),
    ({}, body(conversation=LONG), 400, "invalid_chat_id", "conversation"),
    ({}, body(conversation="conv\x00x"), 400, "invalid_chat_id", "conversation"),
    ({}, body(conversation={"id": "../x"}), 400, "invalid_chat_id", "conversation.id"),
    ({}, body(conversation={"id": 5}), 400, "invalid_chat_id", "conversation.id"),
    ({}, body(conversation={}), 400, "missing_required_parameter", "conversation.id"),
    ({}, body(conversation=5), 400, "invalid_type", "conversation"),
    ({}, body(conversation=["c"]), 400, "invalid_type", "conversation"),
    ({}, body(conversation="conv_unknown"), 404, "chat_not_found", "conversation"),
    ({}, body(conversation={"id": "conv_unknown"}), 404, "chat_not_found", "conversation"),
    (
        {},
        body(conversation="conv_1", previous_response_id="resp_1"),
        400,
        "mutually_exclusive_parameters",
        None,
    ),
    (
        {},
        body(conversation={"id": "conv_1"}, previous_response_id="resp_1"),
        400,
        "mutually_exclusive_parameters",
        None,
    ),
    # a NUL character outside the input cannot be stored
    ({}, body(model="m\x00"), 400, "invalid_value", "model"),
    ({}, body(instructions="be\x00brief"), 400, "invalid_value", "instructions"),
    ({}, body(metadata={"k": "v\x00"}), 400, "invalid_value", "metadata.k"),
    ({}, body(metadata={"k\x00": "v"}), 400, "invalid_value", "metadata"),
    ({}, body(user="u\x00"), 400, "invalid_value", "user"),
    ({}, body(**{"extra\x00": 1}), 400, "invalid_value", None),
    (
        {},
        body(tools=[{"type": "function", "name": "f\x00"}]),
        400,
        "invalid_value",
        "tools[0].name",
    ),
    # the other parameters
    ({}, body(instructions=5), 400, "invalid_type", "instructions"),
    ({}, body(tools="x"), 400, "invalid_type", "tools"),
    ({}, body(tools=[5]), 400, "invalid_type", "tools[0]"),
    ({}, body(tools=[{"type": "function"}]), 400, "missing_required_parameter", "tools[0].name"),
    ({}, body(tool_choice="sometimes"), 400, "invalid_value", "tool_choice"),
    ({}, body(text={"format": {"type": "yaml"}}), 400, "invalid_value", "text.format.type"),
    ({}, body(max_output_tokens=0), 400, "invalid_value", "max_output_tokens"),
    ({}, body(max_output_tokens="10"), 400, "invalid_type", "max_output_tokens"),
    (
        {},
        b'{"model": "m", "input": "hi", "max_output_tokens": 100000000000000000000000}',
        400,
        "invalid_type",
        "max_output_tokens",
    ),
    ({}, body(top_logprobs=21), 400, "invalid_value", "top_logprobs"),
    ({}, body(reasoning="high"), 400, "invalid_type", "reasoning"),
    ({}, body(metadata={"k": 5}), 400, "invalid_type", "metadata"),
    ({}, body(metadata={f"k{i}": "v" for i in range(17)}), 400, "invalid_value", "metadata"),
    # a large body (parsed off the event loop) is checked as closely
    (
        {},
        items(*[user("x" * 100)] * (LARGE_BODY // 100), {"type": "banana"}),
        400,
        "invalid_value",
        f"input[{LARGE_BODY // 100}].type",
    ),
    ({}, body(input="x" * LARGE_BODY, model="m\x00"), 400, "invalid_value", "model"),
    # X-Chat-Id
    *(
        ({"X-Chat-Id": bad}, body(), 400, "invalid_chat_id", "X-Chat-Id")
        for bad in (
            "",
            " ",
            "has space",
            "../etc",
            "%2e%2e",
            "a/b",
            LONG,
            "a%00b",
            "semi;colon",
            f"{UPSTREAM_KEY} x",
        )
    ),
    ({"X-Chat-Id": "../etc"}, body(stream=True), 400, "invalid_chat_id", "X-Chat-Id"),
    ({"X-Chat-Id": "../etc"}, body(background=True), 400, "invalid_chat_id", "X-Chat-Id"),
    # X-Chat-Store
    ({"X-Chat-Store": "maybe"}, body(), 400, "invalid_value", "X-Chat-Store"),
    ({"X-Chat-Store": ""}, body(), 400, "invalid_value", "X-Chat-Store"),
    ({"X-Chat-Store": "false"}, body(background=True), 400, "invalid_value", "background"),
    # the body is checked before the header
    ({"X-Chat-Id": "../etc"}, body(input=5), 400, "invalid_type", "input"),
]


async def test_a_hostile_post_gets_its_exact_error_and_stores_and_sends_nothing(
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"{rproxy.url}/responses"
    got, want = [], []
    with caplog.at_level(logging.INFO):
        for headers, content, status, code, param in HOSTILE_POSTS:
            name = f"{headers} {label(content)}"
            got.append((name, *await refused(http, "POST", url, content, headers)))
            want.append((name, status, code, param))
    assert got == want
    await assert_nothing_stored_or_sent(rproxy.app[STORE], upstream)
    assert_clean_log(caplog)


# What an upstream without /v1/responses cannot do: refused when translating, before anything
# is stored (in native mode, the upstream's to judge).
CHAT_CANNOT = [
    (body(tools=[{"type": "web_search"}]), "unsupported_value", "tools[0].type"),
    (body(tools=[{"type": "web_search"}], stream=True), "unsupported_value", "tools[0].type"),
    (body(tools=[{"type": "mcp"}], background=True), "unsupported_value", "tools[0].type"),
    (body(tools=[{"type": "web_search"}], store=False), "unsupported_value", "tools[0].type"),
    (
        body(tools=[{"type": "function", "name": "f"}], tool_choice={"type": "web_search"}),
        "unsupported_value",
        "tool_choice.type",
    ),
    (
        body(
            tools=[{"type": "function", "name": "f"}],
            tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [{"type": "mcp"}]},
        ),
        "unsupported_value",
        "tool_choice.tools[0].type",
    ),
    (body(prompt={"id": "pmpt_1"}), "unsupported_parameter", "prompt"),
]


async def test_what_a_chat_completion_cannot_do_is_refused_when_translating_storing_nothing(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**mode_settings("translate", upstream))
    url = f"{proxy.url}/responses"
    got = [(label(c), *await refused(http, "POST", url, c)) for c, _, _ in CHAT_CANNOT]
    assert got == [(label(c), 400, code, param) for c, code, param in CHAT_CANNOT]
    await assert_nothing_stored_or_sent(proxy.app[STORE], upstream)


async def test_unsupported_tools_when_continuing_a_response_store_nothing_more(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**mode_settings("translate", upstream))
    first, _ = await create(http, proxy, body(input="first"))
    store = proxy.app[STORE]
    before = await all_messages(store)
    for extra in ({"previous_response_id": first["id"]}, {"conversation": first["conversation"]}):
        content = body(tools=[{"type": "web_search"}], **extra)
        got = await refused(http, "POST", f"{proxy.url}/responses", content)
        assert got == (400, "unsupported_value", "tools[0].type")
    assert [m.id for m in await all_messages(store)] == [m.id for m in before]
    assert len(upstream.chat_requests) == 1


async def test_an_empty_input_array_is_a_400_not_a_crash(
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        for extra in ({}, {"stream": True}, {"background": True}):
            got = await refused(http, "POST", f"{rproxy.url}/responses", items(**extra))
            assert got == (400, "empty_array", "input")
    await assert_nothing_stored_or_sent(rproxy.app[STORE], upstream)
    assert_clean_log(caplog)


async def test_a_nul_in_the_input_is_stored_as_a_replacement_character(
    rproxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # As the chat-completions face does with messages: the input may quote what the upstream
    # itself answered, so it is made storable (on PostgreSQL too) rather than refused.
    inputs: list[Any] = ["a\x00b", [user([{"type": "input_text", "text": "c\x00d"}])]]
    for value in inputs:
        await create(http, rproxy, body(input=value))
    stored = [m.data["content"] for m in await all_messages(rproxy.app[STORE]) if m.role == "user"]
    assert sorted(stored) == ["a\ufffdb", "c\ufffdd"]


async def test_a_body_over_max_body_bytes_is_413_and_stores_and_sends_nothing(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        **mode_settings("native", upstream), **{"server.max_body_bytes": 1000}
    )
    url = f"{proxy.url}/responses"
    for content in (body(input="x" * 2000), body(input="x" * 2000, stream=True)):
        assert await refused(http, "POST", url, content) == (413, "payload_too_large", None)
    assert await refused(http, "POST", url, b"{" * 5000) == (413, "payload_too_large", None)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds as read
        yield b'{"model": "m", "input": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    async with http.post(url, data=chunks()) as resp:
        assert resp.status == 413
        assert error_of(resp.status, resp.headers, await resp.read())["code"] == "payload_too_large"
    await assert_nothing_stored_or_sent(proxy.app[STORE], upstream)


async def test_the_default_body_limit_holds_for_responses(
    native_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    limit = load_settings(None, env={}, overrides={}).server.max_body_bytes
    content = body(input="x" * limit)
    got = await refused(http, "POST", f"{native_proxy.url}/responses", content)
    assert got == (413, "payload_too_large", None)
    await assert_nothing_stored_or_sent(native_proxy.app[STORE], upstream)


async def raw_request(proxy: ProxyServer, head: bytes, content: bytes) -> bytes:
    """Send ``head`` (the request line and headers) and ``content`` on a socket of its own;
    the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(content))
        writer.write(content)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (b"X-Chat-Id: caf\xc3\xa9\r\n", b'"invalid_chat_id"'),
        (b"X-Chat-Id: abc\rdef\r\n", b'"malformed_request"'),
        (b"X-Chat-Id: ab\x00c\r\n", b'"malformed_request"'),
    ],
    ids=["utf-8", "bare-cr", "nul"],
)
async def test_a_raw_malformed_x_chat_id_is_refused_and_stores_nothing(
    native_proxy: ProxyServer, upstream: FakeUpstream, header: bytes, code: bytes
) -> None:
    head = b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + header
    answer = await raw_request(native_proxy, head, orjson.dumps(body()))
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 400 " in status_line and code in rest
    await assert_nothing_stored_or_sent(native_proxy.app[STORE], upstream)


# -- the stored-response endpoints -----------------------------------------------------------

ENDPOINTS = [
    ("GET", "/responses/{}"),
    ("GET", "/responses/{}?stream=true"),
    ("DELETE", "/responses/{}"),
    ("GET", "/responses/{}/input_items"),
    ("POST", "/responses/{}/cancel"),
]
MALFORMED_IDS = [
    "%2e%2e",
    "%2E%2E%2Fmodels",
    "..%2Fx",
    "%2Fetc%2Fpasswd",
    LONG,
    "a" * 200,
    "%C3%BCn%C3%AFcode",
    "a%00b",
    "a%20b",
    "a%0D%0Ab",
    "a;b",
    "a.b",
]


async def test_a_malformed_path_id_is_a_400_on_every_endpoint_and_changes_nothing(
    native_proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    response, _ = await create(http, native_proxy, body())
    store = native_proxy.app[STORE]
    before = await all_messages(store)
    got, want = [], []
    with caplog.at_level(logging.INFO):
        for method, path in ENDPOINTS:
            for bad in MALFORMED_IDS:
                url = native_proxy.url + path.format(bad)
                got.append((method, url, *await refused(http, method, url)))
                want.append((method, url, 400, "invalid_response_id", "response_id"))
    assert got == want
    assert_clean_log(caplog)
    assert [(m.id, m.status) for m in await all_messages(store)] == [
        (m.id, m.status) for m in before
    ]
    assert (await create_get(http, native_proxy, response["id"]))["id"] == response["id"]
    assert len(upstream.requests) == 1


DOT_PATHS = [
    "/v1/responses/../x",
    "/v1/responses/../../etc/passwd",
    "/v1/responses/../models",
    "/v1/responses/./../models/cancel",
    "/v1/responses/resp_1/../../models",
]


async def test_dot_segments_leaving_the_responses_path_are_404_and_never_forwarded(
    native_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = native_proxy.url.removesuffix("/v1")
    for path in DOT_PATHS:
        for method in ("GET", "DELETE", "POST"):
            got = await refused(http, method, base + path)
            assert got == (404, "not_found", None), (method, path)
    await assert_nothing_stored_or_sent(native_proxy.app[STORE], upstream)


async def test_an_id_that_names_no_response_is_a_404_on_every_endpoint(
    native_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    response, headers = await create(http, native_proxy, body())
    unstored, _ = await create(http, native_proxy, body(input="hush", store=False))
    messages = await all_messages(native_proxy.app[STORE])
    question = next(m.id for m in messages if m.role == "user")
    # Well-formed, but no response: unknown, longer than a message id can be, one never
    # stored, the question, the chat.
    unknowns = ("resp_unknown", "a" * 65, "a" * 128, unstored["id"], question, headers["X-Chat-Id"])
    for unknown in unknowns:
        for method, path in ENDPOINTS:
            status, error = await refusal(http, method, native_proxy.url + path.format(unknown))
            assert (status, error["code"], error["param"]) == (
                404,
                "response_not_found",
                "response_id",
            )
            assert error["message"] == f"no response with id {unknown!r}"
        continuing = body(previous_response_id=unknown)
        got = await refused(http, "POST", f"{native_proxy.url}/responses", continuing)
        assert got == (404, "response_not_found", "previous_response_id")
    assert (await create_get(http, native_proxy, response["id"]))["status"] == "completed"
    assert len(await all_messages(native_proxy.app[STORE])) == 2
    assert len(upstream.requests) == 2


async def test_a_chat_completion_answer_is_no_stored_response(
    native_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat = {"model": "m", "messages": [user("hi")]}
    status, headers, _ = await send(http, "POST", f"{native_proxy.url}/chat/completions", chat)
    assert status == 200
    answer = headers["X-Message-Id"]
    for method, path in ENDPOINTS:
        got = await refused(http, method, native_proxy.url + path.format(answer))
        assert got == (404, "response_not_found", "response_id")
    assert len(await all_messages(native_proxy.app[STORE])) == 2


# (query, code, param) of GET /v1/responses/{id}/input_items
BAD_LIST_QUERIES = [
    *(
        (f"limit={v}", "invalid_value", "limit")
        for v in ("0", "101", "-1", "abc", "", "1.5", "1e2", "0100", "%00", "%EF%BC%91", "9" * 40)
    ),
    *((f"order={v}", "invalid_value", "order") for v in ("up", "", "ASC", "%00", "desc%00")),
    *(
        (f"after={v}", "invalid_cursor", "after")
        for v in ("", "..%2Fx", LONG, "%00", "%C3%BC", "a%20b", "msg_nope")
    ),
]
# (query, code, param) of GET /v1/responses/{id}
BAD_GET_QUERIES = [
    *((f"stream={v}", "invalid_value", "stream") for v in ("yes", "", "1", "TRUE", "true%00")),
    *(
        (f"stream=true&starting_after={v}", "invalid_value", "starting_after")
        for v in ("-2", "abc", "1e3", "", "9" * 13, "%00", "%EF%BC%91", "%2B1", "%201", "1.0")
    ),
]


async def test_bad_list_and_stream_parameters_are_400_naming_the_parameter(
    native_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    first, _ = await create(http, native_proxy, body(input="one"))
    second, _ = await create(
        http, native_proxy, body(input="two", previous_response_id=first["id"])
    )
    one = f"{native_proxy.url}/responses/{second['id']}"
    got, want = [], []
    for path, queries in (("/input_items", BAD_LIST_QUERIES), ("", BAD_GET_QUERIES)):
        for query, code, param in queries:
            url = f"{one}{path}?{query}"
            got.append((url, *await refused(http, "GET", url)))
            want.append((url, 400, code, param))
    assert got == want
    # The good forms still answer.
    status, _, raw = await send(http, "GET", f"{one}/input_items?limit=100&order=asc")
    assert status == 200 and len(orjson.loads(raw)["data"]) == 3
    assert len(upstream.requests) == 2


async def test_cancelling_a_response_that_is_not_in_the_background_is_a_400(
    rproxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    response, _ = await create(http, rproxy, body())
    url = f"{rproxy.url}/responses/{response['id']}/cancel"
    assert await refused(http, "POST", url) == (400, "invalid_request", None)
    assert (await create_get(http, rproxy, response["id"]))["status"] == "completed"


NOT_SERVED = [
    ("GET", "/responses"),
    ("DELETE", "/responses"),
    ("PUT", "/responses/resp_1"),
    ("PATCH", "/responses/resp_1"),
    ("POST", "/responses/resp_1"),
    ("GET", "/responses/resp_1/cancel"),
    ("DELETE", "/responses/resp_1/cancel"),
    ("POST", "/responses/resp_1/input_items"),
]


async def test_a_method_the_endpoint_does_not_serve_is_405_and_never_forwarded(
    native_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for method, path in NOT_SERVED:
        got = await refused(http, method, native_proxy.url + path, body())
        assert got == (405, "method_not_allowed", None), (method, path)
    await assert_nothing_stored_or_sent(native_proxy.app[STORE], upstream)


# -- one user probing another's ----------------------------------------------------------------


@pytest.fixture
async def keys_proxy(mode: str, upstream: FakeUpstream, start_proxy: StartProxy) -> ProxyServer:
    return await start_proxy(**mode_settings(mode, upstream), **{"auth.mode": "keys"})


async def alices_responses(
    http: aiohttp.ClientSession, proxy: ProxyServer
) -> tuple[dict[str, str], dict[str, str], dict[str, Any], dict[str, Any]]:
    """Alice's and Bob's auth headers, and two finished responses of Alice's: one answered at
    once, one in the background."""
    store = proxy.app[STORE]
    alice = bearer((await make_key(store, "alice"))[1])
    bob = bearer((await make_key(store, "bob"))[1])
    response, _ = await create(http, proxy, body(input="Alice's secret plan"), alice)
    queued, _ = await create(http, proxy, body(input="Alice's other plan", background=True), alice)

    async def finished() -> bool:
        url = f"{proxy.url}/responses/{queued['id']}"
        status, _, raw = await send(http, "GET", url, headers=alice)
        return status == 200 and orjson.loads(raw)["status"] == "completed"

    await eventually(finished)
    return alice, bob, response, queued


def output_text(response: dict[str, Any]) -> str:
    """The text of a response object's messages."""
    return "".join(
        part.get("text", "")
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


def as_unknown(error: dict[str, Any], real: str, unknown: str) -> dict[str, Any]:
    """``error`` as an id that names nothing would have it."""
    return {**error, "message": error["message"].replace(real, unknown)}


async def assert_alice_unchanged(
    http: aiohttp.ClientSession,
    proxy: ProxyServer,
    upstream: FakeUpstream,
    alice: dict[str, str],
    response: dict[str, Any],
) -> None:
    """Bob stored nothing and sent nothing upstream; Alice's response is as it was."""
    messages = await all_messages(proxy.app[STORE])
    assert {m.user_id for m in messages} == {"alice"} and len(messages) == 4
    assert len(await all_chats(proxy.app[STORE])) == 2
    assert len(upstream.responses_requests) + len(upstream.chat_requests) == 2
    url = f"{proxy.url}/responses/{response['id']}"
    status, _, raw = await send(http, "GET", url, headers=alice)
    assert status == 200
    again = orjson.loads(raw)
    assert (again["id"], again["status"]) == (response["id"], "completed")
    assert output_text(again) == output_text(response)


async def test_another_users_private_response_is_404_on_every_endpoint_as_an_unknown_id(
    keys_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    alice, bob, response, queued = await alices_responses(http, keys_proxy)
    unknown = "msg_" + "x" * 24
    for target in (response["id"], queued["id"]):
        for method, path in ENDPOINTS:
            got = await refusal(http, method, keys_proxy.url + path.format(target), headers=bob)
            nothing = await refusal(
                http, method, keys_proxy.url + path.format(unknown), headers=bob
            )
            assert got[0] == nothing[0] == 404
            assert as_unknown(got[1], target, unknown) == nothing[1]
            assert got[1]["code"] == "response_not_found"
    await assert_alice_unchanged(http, keys_proxy, upstream, alice, response)


async def test_another_users_chat_named_in_x_chat_id_is_403_chat_forbidden(
    keys_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # README: an X-Chat-Id naming another user's chat is 403 chat_forbidden (it would create
    # a chat of that id otherwise), private or public.
    alice, bob, response, _ = await alices_responses(http, keys_proxy)
    url = f"{keys_proxy.url}/responses"
    for content in (body(), body(stream=True), body(background=True)):
        headers = {**bob, "X-Chat-Id": response["conversation"]["id"]}
        assert await refused(http, "POST", url, content, headers) == (403, "chat_forbidden", None)
    await assert_alice_unchanged(http, keys_proxy, upstream, alice, response)


async def test_another_users_private_response_cannot_be_continued_and_is_not_revealed(
    keys_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # previous_response_id and conversation create nothing (an unknown one is a 404): another
    # user's private chat must read as one that does not exist (README, "Your chats").
    alice, bob, response, _ = await alices_responses(http, keys_proxy)
    url = f"{keys_proxy.url}/responses"
    chat_id, unknown = response["conversation"]["id"], "x" * 28
    naming: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = [
        ("previous_response_id", response["id"], lambda v: {"previous_response_id": v}),
        ("conversation", chat_id, lambda v: {"conversation": v}),
        ("conversation.id", chat_id, lambda v: {"conversation": {"id": v}}),
    ]
    got, want = [], []
    for name, real, fields in naming:
        for extra in ({}, {"stream": True}, {"background": True}):
            status, error = await refusal(http, "POST", url, body(**fields(real), **extra), bob)
            got.append((name, extra, status, as_unknown(error, real, unknown)))
            nothing = await refusal(http, "POST", url, body(**fields(unknown), **extra), bob)
            want.append((name, extra, *nothing))
    assert got == want
    assert {status for _, _, status, _ in want} == {404}
    await assert_alice_unchanged(http, keys_proxy, upstream, alice, response)


async def test_another_users_public_response_is_readable_but_not_writable_or_continuable(
    keys_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    alice, bob, response, queued = await alices_responses(http, keys_proxy)
    for shared in (response, queued):
        chat_url = f"{keys_proxy.url}/conversations/{shared['conversation']['id']}"
        status, _, _ = await send(http, "POST", chat_url, {"visibility": "public"}, alice)
        assert status == 200
    one = f"{keys_proxy.url}/responses/{response['id']}"
    status, _, raw = await send(http, "GET", one, headers=bob)
    assert status == 200 and orjson.loads(raw)["id"] == response["id"]
    status, _, raw = await send(http, "GET", f"{one}/input_items", headers=bob)
    assert status == 200 and len(orjson.loads(raw)["data"]) == 1
    for method, path in (("DELETE", ""), ("POST", "/cancel")):
        got = await refused(http, method, one + path, headers=bob)
        assert got == (403, "permission_denied", None)
    cancel = f"{keys_proxy.url}/responses/{queued['id']}/cancel"
    assert await refused(http, "POST", cancel, headers=bob) == (403, "permission_denied", None)
    url = f"{keys_proxy.url}/responses"
    chat_id = response["conversation"]["id"]
    for content in (
        body(previous_response_id=response["id"]),
        body(previous_response_id=response["id"], background=True),
        body(conversation=chat_id),
        body(conversation={"id": chat_id}),
    ):
        assert await refused(http, "POST", url, content, bob) == (403, "chat_forbidden", None)
    named = {**bob, "X-Chat-Id": chat_id}
    assert await refused(http, "POST", url, body(), named) == (403, "chat_forbidden", None)
    await assert_alice_unchanged(http, keys_proxy, upstream, alice, response)


async def test_a_missing_or_wrong_key_is_401_everywhere_and_never_quoted(
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start_proxy(**mode_settings("native", upstream), **{"auth.mode": "keys"})
    _, key = await make_key(proxy.app[STORE], "alice")
    wrong = "cp-wrong-secret-0123456789"
    with caplog.at_level(logging.DEBUG):
        response, _ = await create(http, proxy, body(), bearer(key))
        for headers in ({}, bearer(wrong), {"Authorization": wrong}, bearer(UPSTREAM_KEY)):
            calls = [("POST", "/responses")] + [(m, p.format(response["id"])) for m, p in ENDPOINTS]
            for method, path in calls:
                status, got, raw = await send(http, method, proxy.url + path, body(), headers)
                error = error_of(status, got, raw, (wrong, key))
                assert (status, error["code"]) == (401, "invalid_api_key")
    assert_clean_log(caplog, wrong, key)
    assert len(upstream.requests) == 1
    assert len(await all_messages(proxy.app[STORE])) == 2


# -- limits ------------------------------------------------------------------------------------


async def test_the_ip_limit_counts_responses_requests_with_the_same_429(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    settings = mode_settings("native", upstream)
    proxy = await start_proxy(**{**settings, "limits.ip_rate": "1/minute", "limits.ip_burst": 2})
    status, headers, raw = await send(http, "POST", f"{proxy.url}/responses", body())
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "1"  # 1/minute, burst 2
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["RateLimit-Policy"] == '"ip";q=1;w=60'
    response_id = orjson.loads(raw)["id"]
    status, headers, _ = await send(http, "GET", f"{proxy.url}/responses/{response_id}")
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
    calls = [("POST", "/responses")] + [(m, p.format(response_id)) for m, p in ENDPOINTS]
    for method, path in calls:
        status, headers, raw = await send(http, method, proxy.url + path, body(input="more"))
        error = error_of(status, headers, raw)
        assert (status, error["code"]) == (429, "rate_limit_exceeded")
        assert int(headers["Retry-After"]) >= 1
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert headers["RateLimit"].startswith('"ip";r=0;t=')
    # The DELETE was refused too: the response is still stored, and nothing more was asked.
    assert [m.role for m in await all_messages(proxy.app[STORE])] == ["user", "assistant"]
    assert len(upstream.requests) == 1


async def test_the_daily_quota_counts_answers_of_every_face_and_refuses_a_response(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    settings = mode_settings("native", upstream)
    proxy = await start_proxy(**settings, **{"limits.tiers.free.messages_per_day": 1})
    chat = {"model": "m", "messages": [user("hi")]}
    status, _, _ = await send(http, "POST", f"{proxy.url}/chat/completions", chat)
    assert status == 200
    store = proxy.app[STORE]
    before = [m.id for m in await all_messages(store)]
    for content in (body(input="more"), body(input="more", stream=True), body(background=True)):
        status, headers, raw = await send(http, "POST", f"{proxy.url}/responses", content)
        error = error_of(status, headers, raw)
        assert (status, error["code"]) == (429, "daily_limit_exceeded")
        assert headers["x-should-retry"] == "false"
        assert int(headers["Retry-After"]) > 0
        assert headers["RateLimit-Policy"] == '"daily";q=1;w=86400'
    assert [m.id for m in await all_messages(store)] == before
    assert len(upstream.requests) == 1


# -- the headers of a good request -------------------------------------------------------------


async def test_a_good_request_names_its_request_chat_and_message_in_headers(
    rproxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    url = f"{rproxy.url}/responses"
    store = rproxy.app[STORE]
    request_ids = set()
    whole, headers = await create(http, rproxy, body(input="whole"))
    assert headers["X-Message-Id"] == whole["id"]
    assert headers["X-Chat-Id"] == whole["conversation"]["id"]
    request_ids.add(headers["X-Request-Id"])

    status, headers, raw = await send(http, "POST", url, body(input="streamed", stream=True))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    created = orjson.loads(raw.split(b"data: ", 1)[1].split(b"\n", 1)[0])["response"]
    assert headers["X-Message-Id"] == created["id"]
    assert headers["X-Chat-Id"] == created["conversation"]["id"]
    request_ids.add(headers["X-Request-Id"])

    queued, headers = await create(http, rproxy, body(input="later", background=True))
    assert headers["X-Message-Id"] == queued["id"]
    assert headers["X-Chat-Id"] == queued["conversation"]["id"]
    request_ids.add(headers["X-Request-Id"])

    named, headers = await create(http, rproxy, body(input="named"), {"X-Chat-Id": "my-chat_1"})
    assert headers["X-Chat-Id"] == named["conversation"]["id"] == "my-chat_1"
    assert headers["X-Message-Id"] == named["id"]
    request_ids.add(headers["X-Request-Id"])

    unstored, headers = await create(http, rproxy, body(input="hush", store=False))
    assert "X-Chat-Id" not in headers and "X-Message-Id" not in headers
    request_ids.add(headers["X-Request-Id"])

    assert len(request_ids) == 5 and all(r.startswith("req_") for r in request_ids)
    assert unstored["id"] not in {m.id for m in await all_messages(store)}

    async def all_completed() -> bool:
        answers = [await store.get_message(r["id"]) for r in (whole, created, queued, named)]
        return all(m is not None and m.status == "completed" for m in answers)

    await eventually(all_completed)
