"""The threading rule real clients agree with (SPEC §3.4): a shared setup is not a shared
conversation, a regenerate is a sibling within the regenerate window, and the differences
clients introduce when they send history back (re-serialised tool-call arguments, trimmed
answers) do not split a conversation."""

from __future__ import annotations

import openai
import orjson
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.store.threading import canonical
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.util import all_chats, all_messages

SYSTEM = {"role": "system", "content": "You are a terse agent. Use the tools."}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def _ask(client: openai.AsyncOpenAI, messages: list[dict], **kw: object) -> tuple[str, str]:
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=messages, **kw
    )
    parsed = raw.parse()
    if kw.get("stream"):  # read the stream to its end, as a client does before the next turn
        async for _ in parsed:
            pass
    return raw.headers["x-chat-id"], raw.headers["x-message-id"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_two_conversations_sharing_only_their_setup_are_two_chats(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store, stream: bool
) -> None:
    upstream.enqueue(Reply(content="A."), Reply(content="B."))
    a, _ = await _ask(client, [SYSTEM, {"role": "user", "content": "task a"}], stream=stream)
    b, _ = await _ask(client, [SYSTEM, {"role": "user", "content": "task b"}], stream=stream)
    assert a != b
    chats = {c.id: c for c in await all_chats(store)}
    assert set(chats) == {a, b}
    assert (chats[a].title, chats[b].title) == ("task a", "task b")
    for chat_id, task, answer in ((a, "task a", "A."), (b, "task b", "B.")):
        rows = [m for m in await all_messages(store) if m.chat_id == chat_id]
        assert [(m.role, m.text) for m in rows] == [
            ("system", SYSTEM["content"]),
            ("user", task),
            ("assistant", answer),
        ]


async def test_a_second_turn_after_a_shared_setup_continues_its_own_chat(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="A1."), Reply(content="B1."), Reply(content="A2."))
    history_a = [SYSTEM, {"role": "user", "content": "task a"}]
    a, _ = await _ask(client, history_a)
    b, _ = await _ask(client, [SYSTEM, {"role": "user", "content": "task b"}])
    history_a += [{"role": "assistant", "content": "A1."}, {"role": "user", "content": "more"}]
    a2, _ = await _ask(client, history_a)
    assert a2 == a != b
    rows = [m for m in await all_messages(store) if m.chat_id == a]
    assert [m.text for m in rows] == [SYSTEM["content"], "task a", "A1.", "more", "A2."]


async def test_an_exact_resend_within_the_window_is_a_regenerate(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="One."), Reply(content="Two."))
    history = [SYSTEM, {"role": "user", "content": "the same task"}]
    first, first_answer = await _ask(client, history)
    second, second_answer = await _ask(client, history)
    assert first == second
    a = next(m for m in await all_messages(store) if m.id == first_answer)
    b = next(m for m in await all_messages(store) if m.id == second_answer)
    assert a.parent_id == b.parent_id is not None
    assert len(await all_messages(store)) == 4


async def test_an_exact_resend_after_the_window_is_the_task_run_again_in_a_new_chat(
    start_proxy, upstream: FakeUpstream
) -> None:
    proxy: ProxyServer = await start_proxy(**{"chats.regenerate_window": 0})
    from chatproxy.appkeys import STORE

    store = proxy.app[STORE]
    upstream.enqueue(Reply(content="One."), Reply(content="Two."))
    history = [SYSTEM, {"role": "user", "content": "the same task"}]
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="x", max_retries=0) as client:
        first, _ = await _ask(client, history)
        second, _ = await _ask(client, history)
    assert first != second
    for chat_id in (first, second):
        rows = [m for m in await all_messages(store) if m.chat_id == chat_id]
        assert [m.role for m in rows] == ["system", "user", "assistant"]


async def test_a_regenerate_after_an_exchange_stays_a_sibling_whatever_the_window(
    start_proxy, upstream: FakeUpstream
) -> None:
    proxy: ProxyServer = await start_proxy(**{"chats.regenerate_window": 0})
    from chatproxy.appkeys import STORE

    store = proxy.app[STORE]
    upstream.enqueue(Reply(content="One."), Reply(content="Two."), Reply(content="Three."))
    history = [{"role": "user", "content": "first"}]
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="x", max_retries=0) as client:
        chat, _ = await _ask(client, history)
        history += [{"role": "assistant", "content": "One."}, {"role": "user", "content": "2nd"}]
        again, answer = await _ask(client, history)
        regen, regen_answer = await _ask(client, history)
    assert chat == again == regen
    rows = {m.id: m for m in await all_messages(store)}
    assert rows[answer].parent_id == rows[regen_answer].parent_id
    assert len(rows) == 5


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "re-serialised"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_tool_round_trip_with_resent_arguments_is_stored_once(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store, spaced: bool, stream: bool
) -> None:
    upstream.enqueue(
        Reply(tool_calls=[ToolCall("weather", '{"city":"Paris","unit":"C"}', id="call_1")]),
        Reply(content="It is sunny in Paris."),
    )
    history = [SYSTEM, {"role": "user", "content": "Weather in Paris?"}]
    chat, _ = await _ask(client, history, tools=[WEATHER_TOOL], stream=stream)
    # The client sends the call back as Python re-serialised it (LangChain, llm) or as it came.
    arguments = '{"unit": "C", "city": "Paris"}' if spaced else '{"city":"Paris","unit":"C"}'
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": arguments},
    }
    history += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    again, _ = await _ask(client, history, tools=[WEATHER_TOOL], stream=stream)
    assert again == chat
    assert len(await all_chats(store)) == 1
    rows = await all_messages(store)
    assert [m.role for m in rows] == ["system", "user", "assistant", "tool", "assistant"]
    assert [m.parent_id for m in rows] == [None] + [m.id for m in rows[:-1]]
    stored_call = rows[2].data["tool_calls"][0]["function"]
    assert orjson.loads(stored_call["arguments"]) == {"city": "Paris", "unit": "C"}


async def test_an_answer_resent_trimmed_continues_the_chat(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="  Paris, of course.\n\n"), Reply(content="Berlin."))
    history = [{"role": "user", "content": "Capital of France?"}]
    chat, _ = await _ask(client, history)
    history += [
        {"role": "assistant", "content": "Paris, of course."},
        {"role": "user", "content": "And Germany?"},
    ]
    again, _ = await _ask(client, history)
    assert again == chat
    assert [m.role for m in await all_messages(store)] == ["user", "assistant"] * 2


async def test_a_named_chat_takes_a_new_task_under_its_shared_setup_without_copying_it(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="A."), Reply(content="B."))
    headers = {"X-Chat-Id": "agent-session-1"}
    await _ask(client, [SYSTEM, {"role": "user", "content": "a"}], extra_headers=headers)
    await _ask(client, [SYSTEM, {"role": "user", "content": "b"}], extra_headers=headers)
    rows = await all_messages(store)
    assert {m.chat_id for m in rows} == {"agent-session-1"}
    assert [m.role for m in rows] == ["system", "user", "assistant", "user", "assistant"]
    assert rows[1].parent_id == rows[3].parent_id == rows[0].id


def test_canonical_form_irons_out_argument_spelling_and_answer_whitespace() -> None:
    def call(arguments: str) -> dict:
        fn = {"name": "f", "arguments": arguments}
        return {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": fn}]}

    assert canonical(call('{"a":1,"b":[1,2]}')) == canonical(call('{ "b": [1, 2], "a": 1 }'))
    assert canonical(call('{"a":1}')) != canonical(call('{"a":2}'))
    assert canonical(call("not json")) == canonical(call("not json"))
    assert canonical(call("not json")) != canonical(call("not  json"))
    answer = {"role": "assistant", "content": "Hi.\n"}
    assert canonical(answer) == canonical({"role": "assistant", "content": "Hi."})
    # A user's own whitespace is theirs: never ironed out.
    assert canonical({"role": "user", "content": "Hi.\n"}) != canonical(
        {"role": "user", "content": "Hi."}
    )
