"""What one store accepts, the other does too: PostgreSQL refuses a NUL character (U+0000) in
text and JSON and a value wider than its column, which SQLite stores. On both stores:

- what a client sends that would be stored as given (the model, request parameters, titles,
  metadata, conversation items, query filters) with a NUL, or a model name over its column,
  is a 400 before the upstream is called, and nothing is stored;
- the messages of a chat-completions request go upstream exactly as sent and are stored with
  any NUL as U+FFFD (they may carry what the upstream answered before);
- what the upstream answers is stored, complete, whatever it holds (a NUL becomes U+FFFD, an
  over-long model name is cut to its column, a huge token count is held to its column), and
  the client gets the upstream's bytes;
- an answer whose final write fails for a moment is stored all the same (retried).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store import store as store_module
from chatproxy.store.batch import Batch
from chatproxy.store.models import MODEL_LENGTH
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.aisdk import full, post_chat, user
from tests.util import all_chats, all_messages, settled

NUL = "\x00"
FFFD = "\ufffd"
HI = {"role": "user", "content": "hi"}


@pytest.fixture
async def proxy(start_proxy) -> ProxyServer:
    return await start_proxy(**{"limits.ip_rate": "0"})


async def snapshot(store: Store) -> tuple[list[Any], list[Any]]:
    messages = [(m.id, m.status, m.text, m.data, m.metadata) for m in await all_messages(store)]
    chats = [(c.id, c.title, c.metadata, c.head_id) for c in await all_chats(store)]
    return messages, chats


async def refused(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> dict[str, Any]:
    """The error of a request that must be a 400 in OpenAI's exact shape."""
    async with http.request(method, url, **kwargs) as resp:
        assert resp.status == 400, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


# -- what a client sends --------------------------------------------------------------------

# (body, param): chat-completions bodies whose NUL or model is refused before the upstream.
REFUSED_CHAT_BODIES: list[tuple[dict[str, Any], str | None]] = [
    ({"model": f"gpt{NUL}4", "messages": [HI]}, "model"),
    ({"model": "m" * (MODEL_LENGTH + 1), "messages": [HI]}, "model"),
    ({"model": "m" * 5000, "messages": [HI]}, "model"),
    ({"model": "m", "messages": [HI], f"temp{NUL}erature": 1}, None),
    ({"model": "m", "messages": [HI], "metadata": {f"k{NUL}": "v"}}, "metadata"),
    ({"model": "m", "messages": [HI], "metadata": {"k": f"v{NUL}"}}, "metadata.k"),
    ({"model": "m", "messages": [HI], "user": f"u{NUL}"}, "user"),
    ({"model": "m", "messages": [HI], "stop": ["a", NUL]}, "stop[1]"),
    (
        {
            "model": "m",
            "messages": [HI],
            "tools": [{"type": "function", "function": {"name": "f", "description": NUL}}],
        },
        "tools[0].function.description",
    ),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("body", "param"), REFUSED_CHAT_BODIES)
async def test_a_nul_outside_the_messages_or_a_too_long_model_is_refused_before_the_upstream(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    body: dict[str, Any],
    param: str | None,
    stream: bool,
) -> None:
    error = await refused(
        http, "POST", f"{proxy.url}/chat/completions", json=body | {"stream": stream}
    )
    assert (error["code"], error["param"]) == ("invalid_value", param)
    assert NUL not in error["message"] and "m" * 200 not in error["message"]
    assert upstream.chat_requests == []
    assert await snapshot(store) == ([], [])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"model": f"m{NUL}"}, "model"),
        ({"model": "m" * (MODEL_LENGTH + 1)}, "model"),
        ({"user": f"u{NUL}"}, "user"),
        ({"temperature": 1, "stop": [f"{NUL}"]}, "stop[0]"),
    ],
)
async def test_the_ai_sdk_route_refuses_the_same_values_before_the_upstream(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    extra: dict[str, Any],
    param: str,
) -> None:
    status, _, raw = await post_chat(http, proxy, full("c1", user("u1", "hi"), **extra))
    error = orjson.loads(raw)["error"]
    assert (status, error["code"], error["param"]) == (400, "invalid_value", param)
    assert set(error) == {"message", "type", "param", "code"}
    assert upstream.chat_requests == []
    assert await snapshot(store) == ([], [])


# (method, path, body, param): history API writes; ``{chat}`` is an existing conversation.
REFUSED_WRITES: list[tuple[str, str, Any, str | None]] = [
    ("POST", "/conversations", {"title": f"a{NUL}b"}, "title"),
    ("POST", "/conversations", {"metadata": {"k": f"v{NUL}"}}, "metadata.k"),
    ("POST", "/conversations", {"metadata": {f"k{NUL}": "v"}}, "metadata"),
    ("POST", "/conversations", {"items": [{"role": "user", "content": NUL}]}, "items[0].content"),
    (
        "POST",
        "/conversations",
        {"items": [{"role": "user", "content": [{"type": "input_text", "text": NUL}]}]},
        "items[0].content[0].text",
    ),
    (
        "POST",
        "/conversations",
        {"items": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": NUL}]},
        "items[0].arguments",
    ),
    (
        "POST",
        "/conversations/{chat}/items",
        {"items": [HI, {"role": "user", "content": NUL}]},
        "items[1].content",
    ),
    ("POST", "/conversations/{chat}", {"title": NUL}, "title"),
    ("POST", "/conversations/{chat}", {"metadata": {"a": "b", "k": NUL}}, "metadata.k"),
    ("POST", "/chat/completions/{done}", {"metadata": {"k": NUL}}, "metadata.k"),
    ("GET", "/conversations?q=a%00b", None, "q"),
    ("GET", "/conversations?metadata[k]=%00", None, "metadata[k]"),
    ("GET", "/chat/completions?model=m%00", None, "model"),
    ("GET", "/chat/completions?metadata[k]=v%00", None, "metadata[k]"),
]


@pytest.mark.parametrize(("method", "path", "body", "param"), REFUSED_WRITES)
async def test_a_nul_in_a_title_metadata_items_or_a_filter_is_a_400_and_changes_nothing(
    client: openai.AsyncOpenAI,
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    param: str | None,
) -> None:
    conv = await client.conversations.create(items=[HI], metadata={"a": "b"})
    done = await client.chat.completions.create(model="m", messages=[HI])
    completion_id = (await client.chat.completions.list()).data[0].id
    assert done.choices[0].message.content
    before, sent = await snapshot(store), len(upstream.chat_requests)
    url = proxy.url + path.format(chat=conv.id, done=completion_id)
    error = await refused(http, method, url, json=body)
    assert (error["code"], error["param"]) == ("invalid_value", param)
    assert NUL not in error["message"]
    assert await snapshot(store) == before
    assert len(upstream.chat_requests) == sent


# -- the messages of a request --------------------------------------------------------------

HISTORY_WITH_NUL: list[dict[str, Any]] = [
    {"role": "system", "content": f"be{NUL}brief", "name": f"set{NUL}up"},
    {"role": "user", "content": [{"type": "text", "text": f"look{NUL}here"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call{NUL}1",
                "type": "function",
                "function": {"name": "f", "arguments": f'{{"q": "a{NUL}b"}}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": f"call{NUL}1", "content": f"out{NUL}put"},
]


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_with_nul_go_upstream_as_sent_and_are_stored_with_fffd_and_thread(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream: bool,
) -> None:
    upstream.enqueue(Reply(content="first answer"), Reply(content="second answer"))
    body = {"model": "m", "messages": HISTORY_WITH_NUL, "stream": stream}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 200
        await resp.read()
        chat_id, answer_id = resp.headers["X-Chat-Id"], resp.headers["X-Message-Id"]
    assert upstream.chat_requests[0].json["messages"] == HISTORY_WITH_NUL
    answer = await settled(store, answer_id)
    assert (answer.status, answer.text) == ("completed", "first answer")

    stored = [m for m in await all_messages(store) if m.id != answer_id]
    expected = orjson.loads(orjson.dumps(HISTORY_WITH_NUL).replace(b"\\u0000", FFFD.encode()))
    assert [m.data for m in stored] == expected
    assert [m.text for m in stored] == [f"be{FFFD}brief", f"look{FFFD}here", "", f"out{FFFD}put"]
    assert (await all_chats(store))[0].title == f"look{FFFD}here"

    # The client sends the conversation back with its answer: it threads into the same chat.
    again = [*HISTORY_WITH_NUL, {"role": "assistant", "content": "first answer"}, HI]
    async with http.post(f"{proxy.url}/chat/completions", json=body | {"messages": again}) as resp:
        assert resp.status == 200
        await resp.read()
        assert resp.headers["X-Chat-Id"] == chat_id
    assert upstream.chat_requests[1].json["messages"] == again
    assert len(await all_chats(store)) == 1
    assert len(await all_messages(store)) == len(HISTORY_WITH_NUL) + 3


async def test_an_ai_sdk_message_with_nul_is_stored_with_fffd(
    proxy: ProxyServer, store: Store, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    status, headers, _ = await post_chat(http, proxy, full("c1", user(f"u{NUL}1", f"hi{NUL}")))
    assert status == 200
    assert upstream.chat_requests[0].json["messages"][-1]["content"] == f"hi{NUL}"
    await settled(store, headers["X-Message-Id"])
    first = (await all_messages(store))[0]
    assert (first.text, first.metadata) == (f"hi{FFFD}", {"ui_id": f"u{FFFD}1"})


# -- what the upstream answers --------------------------------------------------------------

LONG_MODEL = "vendor/" + "m" * 293  # 300 characters
HUGE_USAGE = {"prompt_tokens": 2**40, "completion_tokens": 3, "total_tokens": 2**40 + 3}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_with_nul_and_a_long_model_name_is_stored_complete_and_sent_as_is(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream: bool,
) -> None:
    upstream.enqueue(
        Reply(
            content=f"zero{NUL}byte and a literal \\u0000",
            reasoning=f"think{NUL}",
            tool_calls=[ToolCall("lookup", f'{{"q": "x{NUL}"}}', id=f"call_{NUL}")],
            model=LONG_MODEL,
            usage=HUGE_USAGE,
        )
    )
    body = {"model": "m", "messages": [HI], "stream": stream}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 200
        raw = await resp.read()
        answer_id = resp.headers["X-Message-Id"]
    # The client gets the upstream's bytes: the NUL escapes and the whole model name.
    assert b"zero\\u0000byte" in raw and b"think\\u0000" in raw
    assert LONG_MODEL.encode() in raw
    answer = await settled(store, answer_id)
    assert answer.status == "completed"
    assert answer.text == f"zero{FFFD}byte and a literal \\u0000"
    assert answer.model == LONG_MODEL[:MODEL_LENGTH]
    assert answer.data["content"] == answer.text
    assert answer.data["reasoning_content"] == f"think{FFFD}"
    call = answer.data["tool_calls"][0]
    assert (call["id"], call["function"]["arguments"]) == (f"call_{FFFD}", f'{{"q": "x{FFFD}"}}')
    assert answer.finish_reason == "tool_calls"
    # Token counts beyond an integer column are held to it; the usage itself is kept whole.
    assert (answer.prompt_tokens, answer.completion_tokens) == (2**31 - 1, 3)
    assert answer.total_tokens == 2**31 - 1 and answer.usage == HUGE_USAGE


# -- a store that fails for a moment ----------------------------------------------------------


class FailingFinishes:
    """Makes the store's writes of answers fail ``times`` times (both the SQLite and the
    PostgreSQL way of writing a batch)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
        self.left = times
        self.failed = 0
        for name in ("apply", "apply_sqlite"):
            original = getattr(Batch, name)
            monkeypatch.setattr(Batch, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        def fail_or_apply(batch: Batch, *args: Any) -> Any:
            if batch.finishes and self.left:
                self.left -= 1
                self.failed += 1
                raise OSError("the database connection was reset")
            return original(batch, *args)

        return fail_or_apply


@pytest.fixture
def waits(store: Store) -> list[float]:
    """The store's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []

    async def sleep(seconds: float) -> None:
        recorded.append(seconds)

    store.sleep = sleep
    return recorded


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_whose_write_fails_for_a_moment_is_stored_all_the_same(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    client: openai.AsyncOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    waits: list[float],
    stream: bool,
) -> None:
    failing = FailingFinishes(monkeypatch, times=3)
    upstream.enqueue(Reply(content="kept despite the database"))
    response = await client.chat.completions.with_raw_response.create(
        model="m", messages=[HI], stream=stream
    )
    if stream:
        text = "".join(
            [c.choices[0].delta.content or "" async for c in response.parse() if c.choices]
        )
    else:
        text = response.parse().choices[0].message.content
    assert text == "kept despite the database"
    answer = await settled(store, response.headers["X-Message-Id"])
    assert (answer.status, answer.text) == ("completed", "kept despite the database")
    assert failing.failed == 3 and waits  # it was retried, after a wait
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_answer_whose_write_keeps_failing_is_logged_once_and_left_interrupted(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    client: openai.AsyncOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    waits: list[float],
) -> None:
    failing = FailingFinishes(monkeypatch, times=10_000)
    upstream.enqueue(Reply(content="the client has it"))
    response = await client.chat.completions.with_raw_response.create(model="m", messages=[HI])
    assert response.parse().choices[0].message.content == "the client has it"
    answer = await settled(store, response.headers["X-Message-Id"])
    # What start-up recovery would have done: not left in progress, the checkpoint kept.
    assert answer.status == "interrupted" and answer.completed_at is not None
    # Every attempt failed (a batch that fails is tried once more alone), after bounded,
    # growing waits.
    assert failing.failed == 2 * store_module.FINISH_ATTEMPTS
    assert len(waits) == store_module.FINISH_ATTEMPTS - 1
    first, longest = store_module.FINISH_BACKOFF
    assert all(first <= w <= longest + first for w in waits)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(" request_id=")[0] for r in errors] == [
        "could not store the answer"
    ]
