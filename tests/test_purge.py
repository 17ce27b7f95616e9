"""Deletes of any size in short batches, leaves first (issue 15): a 10,000-message chat goes
whole (no cascade walks its branch), another write gets in between two batches, and a chat's
message count is its head's depth before and after."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store import history, maintenance, purge
from chatproxy.store.models import Chat, Message, Vote
from chatproxy.store.store import Store, utcnow
from chatproxy.testing import FakeUpstream, Reply

LONG = 10_000


def _chain(n: int, word: str = "turn") -> list[dict[str, Any]]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": f"{word} {i}"} for i in range(n)]


async def _counts(store: Store, chat_id: str) -> tuple[int, int, int]:
    async def read() -> tuple[int, int, int]:
        return (
            await Chat.filter(id=chat_id).count(),
            await Message.filter(chat_id=chat_id).count(),
            await Vote.filter(chat_id=chat_id).count(),
        )

    return await store.read(read)


async def test_a_chat_of_ten_thousand_messages_in_one_branch_is_deleted_whole(
    proxy: ProxyServer, store: Store, http: aiohttp.ClientSession
) -> None:
    await store.ensure_user("local", "local")
    long = await history.create_chat(store, "local", _chain(LONG))
    kept = await history.create_chat(store, "local", _chain(3, "other"))
    tree = await history.chat_tree(store, long.chat.id)
    assert long.message_count == LONG
    assert [m.depth for m in tree] == list(range(1, LONG + 1))
    assert await history.set_vote(store, long.chat.id, tree[-1].id, "local", True)

    async with http.delete(f"{proxy.url}/conversations/{long.chat.id}") as resp:
        assert resp.status == 200, await resp.text()
    assert await _counts(store, long.chat.id) == (0, 0, 0)
    view = await history.chat_view(store, kept.chat.id)
    assert view is not None and view.message_count == 3
    assert await _counts(store, kept.chat.id) == (1, 3, 0)


async def test_the_root_of_a_long_branch_is_deleted_with_all_below_it(
    proxy: ProxyServer, store: Store, http: aiohttp.ClientSession
) -> None:
    await store.ensure_user("local", "local")
    view = await history.create_chat(store, "local", _chain(2_000))
    tree = await history.chat_tree(store, view.chat.id)
    cut = tree[1]  # everything but the first message goes
    url = f"{proxy.url}/conversations/{view.chat.id}/items/{cut.id}"
    async with http.delete(url) as resp:
        assert resp.status == 200, await resp.text()
    chat = await store.get_chat(view.chat.id)
    assert chat is not None and chat.head_id == tree[0].id
    assert [m.id for m in await history.chat_tree(store, view.chat.id)] == [tree[0].id]
    after = await history.chat_view(store, view.chat.id)
    assert after is not None and after.message_count == 1


async def test_another_write_gets_in_between_two_batches_of_a_delete(
    proxy: ProxyServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.ensure_user("local", "local")
    view = await history.create_chat(store, "local", _chain(100))
    monkeypatch.setattr(purge, "PURGE_BATCH", 10)
    first_batch, batches = asyncio.Event(), []
    delete = purge._delete

    async def counted(ids: list[str]) -> None:
        batches.append(len(ids))
        first_batch.set()
        await delete(ids)

    monkeypatch.setattr(purge, "_delete", counted)
    deleting = asyncio.ensure_future(history.delete_chat(store, view.chat.id))
    await first_batch.wait()
    # Queued behind one batch only, not behind the whole chat.
    other = await history.create_chat(store, "local", _chain(2, "meanwhile"))
    assert not deleting.done()
    assert await deleting
    assert batches == [10] * 10
    assert await _counts(store, view.chat.id) == (0, 0, 0)
    assert await _counts(store, other.chat.id) == (1, 2, 0)


async def test_a_completion_deleted_mid_chat_takes_what_follows_it_in_batches(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession, monkeypatch
) -> None:
    proxy = await start_proxy()
    store = proxy.app[STORE]
    monkeypatch.setattr(purge, "PURGE_BATCH", 2)
    messages: list[dict[str, Any]] = []
    answers = []
    for i in range(4):
        upstream.enqueue(Reply(content=f"answer {i}"))
        messages.append({"role": "user", "content": f"question {i}"})
        body = {"model": "m", "messages": messages}
        async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
            await resp.read()
            chat_id = resp.headers["X-Chat-Id"]
        answers.append(resp.headers["X-Message-Id"])
        messages.append({"role": "assistant", "content": f"answer {i}"})
    async with http.delete(f"{proxy.url}/chat/completions/{answers[1]}") as resp:
        assert resp.status == 200, await resp.text()
    tree = await history.chat_tree(store, chat_id)
    # question 0, answer 0, question 1 are left; answer 1 and the four after it are gone.
    assert [m.text for m in tree] == ["question 0", "answer 0", "question 1"]
    view = await history.chat_view(store, chat_id)
    assert view is not None and view.message_count == 3
    assert view.chat.head_id == tree[-1].id


async def test_prune_deletes_many_old_chats_in_rounds_and_keeps_the_recent_ones(
    proxy: ProxyServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.ensure_user("local", "local")
    monkeypatch.setattr(maintenance, "PRUNE_BATCH", 7)
    monkeypatch.setattr(purge, "CHATS_PER_ROUND", 3)
    monkeypatch.setattr(purge, "PURGE_BATCH", 5)
    old = [await history.create_chat(store, "local", _chain(4, "old")) for _ in range(20)]
    recent = await history.create_chat(store, "local", _chain(4, "recent"))
    long_ago = utcnow() - timedelta(days=200)

    async def age() -> None:
        await Chat.filter(id__in=[v.chat.id for v in old]).update(updated_at=long_ago)

    await store.write(age)
    assert await maintenance.prune(store, timedelta(days=90)) == 20
    for view in old:
        assert await _counts(store, view.chat.id) == (0, 0, 0)
    assert await _counts(store, recent.chat.id) == (1, 4, 0)


async def _search(store: Store, q: str) -> list[str]:
    views, _ = await history.list_chats(store, "local", limit=100, q=q)
    return [v.chat.id for v in views]


def _pragma(path: str, name: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("older_file", [False, True], ids=["new file", "older file"])
async def test_prune_gives_the_space_back_and_search_still_finds_what_is_left(
    tmp_path: Path, older_file: bool
) -> None:
    path = str(tmp_path / "store.db")
    if older_file:  # a file made before auto_vacuum = INCREMENTAL: the first prune switches it
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE before_us (x)")
        db.close()
    store = Store(f"sqlite://{path}")
    await store.open()
    try:
        await store.ensure_user("local", "local")
        filler = " ".join(["ballast"] * 400)
        old = [
            await history.create_chat(store, "local", _chain(6, f"gone{i} {filler}"))
            for i in range(60)
        ]
        kept = await history.create_chat(store, "local", _chain(2, "survivor"))
        long_ago = utcnow() - timedelta(days=200)

        async def age() -> None:
            await Chat.filter(id__in=[v.chat.id for v in old]).update(updated_at=long_ago)

        await store.write(age)
        size_before = _pragma(path, "page_count")
        assert await maintenance.prune(store, timedelta(days=90)) == 60
        assert _pragma(path, "auto_vacuum") == 2  # INCREMENTAL
        assert _pragma(path, "freelist_count") == 0
        assert _pragma(path, "page_count") < size_before / 2
        assert await _search(store, "survivor") == [kept.chat.id]
        assert await _search(store, "gone7") == []
        assert await _search(store, "ballast") == []
        db = sqlite3.connect(path)
        try:  # the full-text index still matches the rows it points at
            db.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        finally:
            db.close()
    finally:
        await store.close()
