"""The built-in ``redact`` plugin through a real port: personal data and secrets in the
request and in the upstream's answer reach the client (and the upstream) as they were, and
none of them is in the database: its file's bytes (SQLite) or any of its columns
(PostgreSQL). Both stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from chatproxy.appkeys import STORE
from chatproxy.errors import SettingsError
from chatproxy.plugins import load_plugins
from chatproxy.plugins.redact import plugin
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.store.db import sqlite_path
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests import plugin_recorder
from tests.util import all_messages

QUESTION = (
    "I am jane.roe@example.org, call me at +44 20 7946 0958. "
    "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, "
    "my key sk-proj-Q1w2E3r4T5y6U7i8O9p0 and ticket TICKET-99123. "
    "Order 1234567812345678 is no card."
)
ANSWER = "Noted. I write to answer.person@example.net and pay GB82 WEST 1234 5698 7654 32."
ARGUMENTS = '{"to": "bob.smith@corp.example", "card": "5555 5555 5555 4444"}'
PARTS = [
    {"type": "text", "text": "header Authorization: Bearer abcdef0123456789abcdef"},
    {"type": "text", "text": "and (415) 555-2671"},
]
ITEM = "from the API: carol@api.example"
# Every original, and a distinctive part of each: none of them may be stored.
SECRETS = [
    "jane.roe@example.org",
    "example.org",
    "+44 20 7946 0958",
    "7946 0958",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "0532 0130",
    "sk-proj-Q1w2E3r4T5y6U7i8O9p0",
    "Q1w2E3r4T5y6U7i8O9p0",
    "TICKET-99123",
    "answer.person@example.net",
    "GB82 WEST 1234 5698 7654 32",
    "5698 7654",
    "bob.smith@corp.example",
    "5555 5555 5555 4444",
    "abcdef0123456789abcdef",
    "555-2671",
    "carol@api.example",
]
KEPT = "1234567812345678"  # 16 digits that fail the Luhn check: no card number


@pytest.fixture(autouse=True)
def recorder() -> Iterator[None]:
    plugin_recorder.reset()
    yield
    plugin_recorder.reset()


@pytest.fixture
async def proxy(start_proxy: Any) -> ProxyServer:
    # With an on_event plugin too: the outbox's events are in the database as well.
    return await start_proxy(
        plugins=["redact", "tests.plugin_recorder"],
        plugin={"redact": {"patterns": {"ticket": r"TICKET-\d+"}}},
    )


def _store(proxy: ProxyServer) -> Store:
    assert proxy.app is not None
    return proxy.app[STORE]


async def _everything_asked(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(
        Reply(content=ANSWER),
        Reply(tool_calls=[ToolCall(name="pay", arguments=ARGUMENTS)]),
        Reply(content="fine"),
    )
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == ANSWER  # the client gets the upstream's answer as it was
    body = {"model": "m", "messages": [{"role": "user", "content": "pay bob"}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        answer = orjson.loads(await resp.read())
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == ARGUMENTS
    body = {"model": "m", "messages": [{"role": "user", "content": PARTS}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 200
    items = {"items": [{"role": "user", "content": ITEM}]}
    async with http.post(f"{proxy.url}/conversations", json=items) as resp:
        assert resp.status == 200
    # The upstream, too, got what the client sent.
    assert upstream.chat_requests[0].json["messages"][0]["content"] == QUESTION
    assert upstream.chat_requests[2].json["messages"][0]["content"] == PARTS


async def _in_postgres(store: Store, needle: str) -> int:
    queries = [
        "SELECT count(*) AS n FROM messages WHERE strpos(text, $1) > 0 "
        "OR strpos(data::text, $1) > 0 OR strpos(coalesce(params::text, ''), $1) > 0",
        "SELECT count(*) AS n FROM chats WHERE strpos(coalesce(title, ''), $1) > 0",
        "SELECT count(*) AS n FROM outbox WHERE strpos(data, $1) > 0",
    ]
    found = 0
    for query in queries:
        rows = await store.read(lambda q=query: store.conn.execute_query_dict(q, [needle]))
        found += int(rows[0]["n"])
    return found


async def test_nothing_personal_reaches_the_database(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    db_url: str,
) -> None:
    await _everything_asked(proxy, upstream, http)
    store = _store(proxy)
    stored = await all_messages(store)
    question = stored[0]
    assert "[redacted:email]" in question.text and "[redacted:phone]" in question.text
    assert "[redacted:card]" in question.text and "[redacted:iban]" in question.text
    assert "[redacted:secret]" in question.text and "[redacted:ticket]" in question.text
    assert KEPT in question.text and question.data["content"] == question.text
    assert stored[1].text == (
        "Noted. I write to [redacted:email] and pay [redacted:iban]."
    )  # fmt: skip
    call = stored[3].data["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {
        "to": "[redacted:email]",
        "card": "[redacted:card]",
    }
    assert call["function"]["name"] == "pay"
    assert [p["text"] for p in stored[4].data["content"]] == [
        "header Authorization: [redacted:secret]",
        "and [redacted:phone]",
    ]
    assert len(await store.read(lambda: store.conn.execute_query_dict("SELECT id FROM outbox")))

    path = sqlite_path(db_url)
    if path is None:
        for needle in SECRETS:
            assert await _in_postgres(store, needle) == 0, needle
        assert await _in_postgres(store, KEPT) > 0
        return
    await proxy.stop()  # everything written, the log and the file closed
    files = [Path(path), Path(f"{path}-wal")]
    data = b"".join(f.read_bytes() for f in files if f.exists())
    for needle in SECRETS:
        assert needle.encode() not in data, needle
    assert KEPT.encode() in data


async def test_a_resent_conversation_still_threads_into_its_chat(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content=ANSWER), Reply(content="done"))
    first = [{"role": "user", "content": QUESTION}]
    resent = [*first, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": "ok"}]
    chats = []
    for messages in (first, resent):
        body = {"model": "m", "messages": messages}
        async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
            assert resp.status == 200
            await resp.read()
            chats.append(resp.headers["X-Chat-Id"])
    # Threaded by what the client sent, not by what was stored.
    assert chats[0] == chats[1]
    chat_id = chats[0]
    stored = await all_messages(_store(proxy))
    assert len(stored) == 4 and {m.chat_id for m in stored} == {chat_id}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to a.b-c+d@mail.example.co.uk now", "write to [redacted:email] now"),
        ("call +1 415 555 2671 or 415-555-2671", "call [redacted:phone] or [redacted:phone]"),
        ("call 0049 30 12345678", "call [redacted:phone]"),
        ("card 4242-4242-4242-4242!", "card [redacted:card]!"),
        ("not a card 4242 4242 4242 4243", "not a card 4242 4242 4242 4243"),
        ("GB82WEST12345698765432 THANKS", "[redacted:iban] THANKS"),
        ("bad check digits GB00WEST12345698765432", "bad check digits GB00WEST12345698765432"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [redacted:secret]"),
        ('{"password": "hunter2hunter"}', '{"password": "[redacted:secret]"}'),
        ("ghp_" + "a1" * 18, "[redacted:secret]"),
        ("dates 2024-01-15, ip 192.168.100.200, pi 3.14159265", None),
        ("short numbers 12345 and 555 1234", None),
    ],
)
def test_what_the_built_in_detectors_replace(text: str, expected: str | None) -> None:
    assert plugin({}).text(text) == (text if expected is None else expected)


def test_the_placeholder_kinds_and_patterns_are_configurable() -> None:
    redactor = plugin(
        {"placeholder": "<{kind}>", "kinds": ["email"], "patterns": ["ACME-[0-9]{4}", "zz+"]}
    )
    text = "a@b.example ACME-1234 zzz 4111 1111 1111 1111"
    assert redactor.text(text) == "<email> <pattern> <pattern> 4111 1111 1111 1111"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"kinds": ["email", "fax"]}, "plugin.redact.kinds"),
        ({"patterns": ["("]}, "plugin.redact.patterns[0]"),
        ({"patterns": {"ok": "a", "bad": "(?P<x>b)"}}, "plugin.redact.patterns.bad"),
        ({"patterns": ["x*"]}, "plugin.redact.patterns[0]"),
        ({"patterns": "just one"}, "plugin.redact.patterns"),
        ({"placeholder": 3}, "plugin.redact.placeholder"),
        ({"pattern": ["x"]}, "plugin.redact.pattern"),
    ],
)
def test_a_bad_table_is_refused_naming_the_key(table: dict[str, Any], key: str) -> None:
    settings = load_settings(
        None, env={}, overrides={"plugins": ["redact"], "plugin": {"redact": table}}
    )
    with pytest.raises(SettingsError) as refused:
        load_plugins(settings)
    assert refused.value.key == key
