"""`chatproxy stats` and `chatproxy db prune` (SPEC §12)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from chatproxy.cli import main
from chatproxy.server import ProxyServer
from chatproxy.store.maintenance import parse_age
from chatproxy.store.models import Chat, Message
from chatproxy.store.store import Store, utcnow
from chatproxy.testing import FakeUpstream, Reply

HEADER_AUTH = {"auth.mode": "header", "server.trusted_proxies": ["127.0.0.0/8"]}


async def ask(proxy: ProxyServer, user: str, text: str, model: str = "m") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/chat/completions", json=body, headers={"X-User-Id": user}) as r,
    ):
        await r.read()
        return r.headers["X-Chat-Id"]


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


async def test_stats_count_answers_tokens_and_errors_per_user_and_model(
    start_proxy, upstream: FakeUpstream, db_url: str
) -> None:
    proxy = await start_proxy(**HEADER_AUTH)
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    upstream.enqueue(Reply(usage=usage), Reply(usage=usage), Reply(status=500), Reply(usage=usage))
    await ask(proxy, "alice", "one", "small")
    await ask(proxy, "alice", "two", "small")
    await ask(proxy, "alice", "three", "small")  # the upstream fails
    await ask(proxy, "bob", "four", "big")
    await proxy.stop()
    code, out, err = await asyncio.to_thread(cli, "stats", "--json", "--db", db_url)
    assert code == 0, err
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert rows == [
        {
            "user": "alice",
            "model": "small",
            "messages": 3,
            "prompt_tokens": 10,
            "completion_tokens": 14,
            "errors": 1,
        },
        {
            "user": "bob",
            "model": "big",
            "messages": 1,
            "prompt_tokens": 5,
            "completion_tokens": 7,
            "errors": 0,
        },
    ]
    code, out, _ = await asyncio.to_thread(cli, "stats", "--user", "bob", "--db", db_url)
    assert code == 0 and "bob" in out and "alice" not in out


async def test_prune_deletes_exactly_the_old_chats_and_nothing_else(
    start_proxy, upstream: FakeUpstream, db_url: str
) -> None:
    proxy = await start_proxy(**HEADER_AUTH)
    old_alice = await ask(proxy, "alice", "old")
    old_bob = await ask(proxy, "bob", "old too")
    new_alice = await ask(proxy, "alice", "new")
    await proxy.stop()
    store = Store(db_url)
    await store.open()
    try:
        long_ago = utcnow() - timedelta(days=100)
        await store.write(
            lambda: Chat.filter(id__in=[old_alice, old_bob]).update(updated_at=long_ago)
        )
    finally:
        await store.close()

    code, out, _ = await asyncio.to_thread(
        cli, "db", "prune", "--older-than", "90d", "--user", "bob", "--db", db_url
    )
    assert (code, out.strip()) == (0, "deleted 1 chat(s) not updated for 90d")
    code, out, _ = await asyncio.to_thread(
        cli, "db", "prune", "--older-than", "90d", "--db", db_url
    )
    assert (code, out.strip()) == (0, "deleted 1 chat(s) not updated for 90d")

    store = Store(db_url)
    await store.open()
    try:
        chats = await store.read(lambda: Chat.all().values_list("id", flat=True))
        messages = await store.read(lambda: Message.all().values_list("chat_id", flat=True))
    finally:
        await store.close()
    assert list(chats) == [new_alice]
    assert set(messages) == {new_alice}
    assert (await asyncio.to_thread(cli, "db", "prune", "--older-than", "soon", "--db", db_url))[
        0
    ] == 2


@pytest.mark.parametrize(("text", "days"), [("90d", 90), ("4w", 28), ("6m", 180), ("12h", 0.5)])
def test_ages(text: str, days: float) -> None:
    assert parse_age(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["", "90", "d", "0d", "-1d", "1y"])
def test_bad_ages(text: str) -> None:
    with pytest.raises(ValueError):
        parse_age(text)
