"""Server-side history (X-Chat-History: server), X-Chat-Parent branches, and incognito
requests (X-Chat-Store: false)."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_chats, all_messages, message

U1 = {"role": "user", "content": "What is the capital of France?"}


async def post(
    http: aiohttp.ClientSession, proxy: ProxyServer, messages: list, **headers: str
) -> tuple[int, dict, CIMultiDict[str]]:
    body = {"model": "m", "messages": messages}
    async with http.post(f"{proxy.url}/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.copy()


async def two_turns(
    http: aiohttp.ClientSession, proxy: ProxyServer, upstream: FakeUpstream
) -> tuple[str, list[str]]:
    """A chat u1, a1, u2, a2 made the usual way; its id and the four message ids."""
    upstream.enqueue(Reply(content="Paris."), Reply(content="Berlin."))
    _, _, h1 = await post(http, proxy, [U1])
    u2 = {"role": "user", "content": "And of Germany?"}
    history = [U1, {"role": "assistant", "content": "Paris."}, u2]
    _, _, h2 = await post(http, proxy, history)
    store = proxy.app[STORE]
    a2 = await message(store, h2["X-Message-Id"])
    u2_row = await message(store, a2.parent_id or "")
    a1 = await message(store, u2_row.parent_id or "")
    return h1["X-Chat-Id"], [a1.parent_id or "", a1.id, u2_row.id, a2.id]


async def test_server_history_sends_the_stored_branch_plus_the_new_message(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat_id, (_, _, _, a2) = await two_turns(http, proxy, upstream)
    u3 = {"role": "user", "content": "And of Italy?"}
    status, body, headers = await post(
        http, proxy, [u3], **{"X-Chat-History": "server", "X-Chat-Id": chat_id}
    )
    assert status == 200
    assert headers["X-Chat-Id"] == chat_id
    assert upstream.chat_requests[-1].json["messages"] == [
        U1,
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
        {"role": "assistant", "content": "Berlin."},
        u3,
    ]
    new_user = await message(
        proxy.app[STORE], (await message(proxy.app[STORE], headers["X-Message-Id"])).parent_id or ""
    )
    assert (new_user.text, new_user.parent_id) == ("And of Italy?", a2)
    # The stored history threads as usual: a client resending it all lands in the same chat.
    full = [
        *upstream.chat_requests[-1].json["messages"],
        {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
        {"role": "user", "content": "ok"},
    ]
    _, _, again = await post(http, proxy, full)
    assert again["X-Chat-Id"] == chat_id


async def test_x_chat_parent_branches_from_an_earlier_message(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat_id, (_, a1, u2, _) = await two_turns(http, proxy, upstream)
    edited = {"role": "user", "content": "And of Spain?"}
    headers = {"X-Chat-History": "server", "X-Chat-Parent": a1}
    status, _, resp_headers = await post(http, proxy, [edited], **headers)
    assert status == 200
    assert resp_headers["X-Chat-Id"] == chat_id  # found from the message
    assert upstream.chat_requests[-1].json["messages"] == [
        U1,
        {"role": "assistant", "content": "Paris."},
        edited,
    ]
    store = proxy.app[STORE]
    siblings = [m for m in await all_messages(store) if m.parent_id == a1]
    assert sorted(m.text for m in siblings) == ["And of Germany?", "And of Spain?"]
    assert u2 in {m.id for m in siblings}


async def test_no_new_message_with_x_chat_parent_regenerates_a_sibling_answer(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat_id, (_, _, u2, a2) = await two_turns(http, proxy, upstream)
    upstream.enqueue(Reply(content="Berlin, again."))
    headers = {"X-Chat-History": "server", "X-Chat-Id": chat_id, "X-Chat-Parent": u2}
    status, _, resp_headers = await post(http, proxy, [], **headers)
    assert status == 200
    assert upstream.chat_requests[-1].json["messages"][-1] == {
        "role": "user",
        "content": "And of Germany?",
    }
    again = await message(proxy.app[STORE], resp_headers["X-Message-Id"])
    assert (again.parent_id, again.text) == (u2, "Berlin, again.")
    assert again.id != a2


async def test_history_server_can_be_the_default(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"chats.history": "server"})
    _, _, h = await post(http, proxy, [U1])
    await post(http, proxy, [{"role": "user", "content": "more"}], **{"X-Chat-Id": h["X-Chat-Id"]})
    assert len(upstream.chat_requests[-1].json["messages"]) == 3
    assert len(await all_chats(proxy.app[STORE])) == 1


async def test_x_chat_store_false_forwards_and_leaves_no_row(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="secret answer"))
    status, body, headers = await post(http, proxy, [U1], **{"X-Chat-Store": "false"})
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "secret answer"
    assert "X-Chat-Id" not in headers and "X-Message-Id" not in headers
    assert headers["X-Request-Id"].startswith("req_")
    body = {"model": "m", "messages": [U1], "stream": True}
    async with http.post(
        f"{proxy.url}/chat/completions", json=body, headers={"X-Chat-Store": "0"}
    ) as resp:
        raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert await all_messages(proxy.app[STORE]) == []
    assert await all_chats(proxy.app[STORE]) == []


async def test_a_different_x_chat_parent_branch_may_run_side_by_side(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat_id, (_, a1, u2, _) = await two_turns(http, proxy, upstream)
    upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(20)], chunk_delay=0.03))
    body = {"model": "m", "messages": [], "stream": True}
    slow = {"X-Chat-History": "server", "X-Chat-Id": chat_id, "X-Chat-Parent": u2}
    async with http.post(f"{proxy.url}/chat/completions", json=body, headers=slow) as running:
        await running.content.readuntil(b"w1 ")
        same = await post(http, proxy, [], **slow)
        assert (same[0], same[1]["error"]["code"]) == (409, "chat_busy")
        other = {**slow, "X-Chat-Parent": a1}
        status, _, _ = await post(http, proxy, [{"role": "user", "content": "other"}], **other)
        assert status == 200
        await running.read()


@pytest.mark.parametrize(
    ("headers", "messages", "code"),
    [
        ({"X-Chat-History": "sometimes"}, [U1], "invalid_value"),
        ({"X-Chat-Parent": "msg_x"}, [U1], "invalid_request"),
        ({"X-Chat-History": "server", "X-Chat-Parent": "msg_unknown"}, [U1], "invalid_parent"),
        ({"X-Chat-History": "server", "X-Chat-Parent": "bad id"}, [U1], "invalid_parent"),
        ({"X-Chat-History": "server"}, [], "empty_array"),
        ({"X-Chat-Store": "maybe"}, [U1], "invalid_value"),
    ],
)
async def test_bad_history_headers_are_400_and_store_nothing(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    headers: dict,
    messages: list,
    code: str,
) -> None:
    status, body, _ = await post(http, proxy, messages, **headers)
    assert (status, body["error"]["code"]) == (400, code)
    assert await all_messages(proxy.app[STORE]) == []
    assert upstream.chat_requests == []


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_server_history_sends_stored_answers_without_their_reasoning(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, field: str
) -> None:
    upstream.enqueue(Reply(content="Paris.", reasoning="A capital city.", reasoning_field=field))
    _, _, first = await post(http, proxy, [U1])
    stored = await message(proxy.app[STORE], first["X-Message-Id"])
    assert stored.data["reasoning_content"] == "A capital city."  # kept in the store
    u2 = {"role": "user", "content": "And of Germany?"}
    headers = {"X-Chat-History": "server", "X-Chat-Id": first["X-Chat-Id"]}
    status, _, _ = await post(http, proxy, [u2], **headers)
    assert status == 200
    # Some servers (DeepSeek) refuse reasoning in input messages: it is not sent back.
    assert upstream.chat_requests[-1].json["messages"] == [
        U1,
        {"role": "assistant", "content": "Paris."},
        u2,
    ]
