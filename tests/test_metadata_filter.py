"""`GET /v1/conversations?metadata[key]=value` on an index (issue 15): both plans give the
listing's exact pages, the index follows every change of a chat's metadata and its delete,
and migration 0009 indexes a store written before it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store import history, metadata_index
from chatproxy.store.models import Chat, User
from chatproxy.store.store import Store
from tests.util import store_at

TEAM = {"auth.mode": "header", "server.trusted_proxies": ["127.0.0.0/8"]}


async def _listed(
    http: aiohttp.ClientSession, proxy: ProxyServer, user: str, query: str, limit: int = 100
) -> list[str]:
    """Every chat id of the listing, page by page with ``after``."""
    ids: list[str] = []
    after = ""
    while True:
        url = f"{proxy.url}/conversations?limit={limit}&{query}{after}"
        async with http.get(url, headers={"X-User-Id": user}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        ids += [c["id"] for c in body["data"]]
        if not body["has_more"]:
            return ids
        after = f"&after={ids[-1]}"


async def _team(start_proxy) -> tuple[ProxyServer, Store]:
    proxy = await start_proxy(**TEAM)
    store = proxy.app[STORE]
    await store.ensure_user("alice", "alice")
    await store.ensure_user("bob", "bob")
    return proxy, store


async def _chat(store: Store, owner: str, metadata: dict[str, str]) -> str:
    view = await history.create_chat(store, owner, [{"role": "user", "content": "hi"}])
    await history.update_chat(store, view.chat.id, {"metadata": metadata})
    return view.chat.id


@pytest.mark.parametrize("bound", [0, 1000], ids=["walk", "hits"])
async def test_both_plans_list_exactly_the_owners_chats_holding_every_pair_newest_first(
    start_proxy, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    proxy, store = await _team(start_proxy)
    monkeypatch.setattr(metadata_index, "HITS_BOUND", bound)
    made: list[tuple[str, dict[str, str]]] = []
    for i in range(30):
        metadata = {"project": f"p{i % 3}", "stage": "draft" if i % 2 else "final"}
        made.append((await _chat(store, "alice", metadata), metadata))
    await _chat(store, "bob", {"project": "p0", "stage": "draft"})  # never alice's
    newest_first = [chat_id for chat_id, _ in reversed(made)]

    def holding(**pairs: str) -> list[str]:
        keep = {c for c, m in made if all(m.get(k) == v for k, v in pairs.items())}
        return [c for c in newest_first if c in keep]

    assert await _listed(http, proxy, "alice", "metadata[project]=p0", 3) == holding(project="p0")
    both = "metadata[project]=p1&metadata[stage]=draft"
    assert await _listed(http, proxy, "alice", both, 2) == holding(project="p1", stage="draft")
    assert await _listed(http, proxy, "alice", "metadata[project]=p9") == []
    assert await _listed(http, proxy, "alice", "metadata[stage]=p0") == []  # key and value
    bobs = await _listed(http, proxy, "bob", "metadata[project]=p0")
    assert len(bobs) == 1 and bobs[0] not in newest_first


async def test_the_index_follows_a_change_of_metadata_and_a_delete(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy, store = await _team(start_proxy)
    chat_id = await _chat(store, "alice", {"project": "apollo"})
    other = await _chat(store, "alice", {"project": "apollo"})
    await history.update_chat(store, chat_id, {"metadata": {"project": "gemini"}})
    assert await _listed(http, proxy, "alice", "metadata[project]=apollo") == [other]
    assert await _listed(http, proxy, "alice", "metadata[project]=gemini") == [chat_id]
    assert await history.delete_chat(store, chat_id)
    assert await _listed(http, proxy, "alice", "metadata[project]=gemini") == []
    if store.conn.capabilities.dialect == "sqlite":
        rows = await _index_rows(store)
        assert rows == [(other, "project", "apollo")]


async def _index_rows(store: Store) -> list[Any]:
    _, rows = await store.read(
        lambda: store.conn.execute_query("SELECT chat_id, key, value FROM chat_metadata")
    )
    return [tuple(r) for r in rows]


async def test_the_migration_indexes_a_store_written_before_it(
    db_url: str, start_proxy, http: aiohttp.ClientSession
) -> None:
    async with store_at(db_url, "0008_search"):
        now = datetime.now(UTC) - timedelta(days=1)
        await User.create(id="alice", name="alice", created_at=now)
        for i, metadata in enumerate([{"project": "apollo"}, {"project": "gemini"}, {}]):
            at = now + timedelta(minutes=i)
            await Chat.create(
                id=f"chat_old{i}", owner_id="alice", metadata=metadata, created_at=at, updated_at=at
            )

    proxy = await start_proxy(**TEAM)  # opens the store: 0009 runs on the populated store
    assert await _listed(http, proxy, "alice", "metadata[project]=apollo") == ["chat_old0"]
    assert await _listed(http, proxy, "alice", "metadata[project]=gemini") == ["chat_old1"]
    store = proxy.app[STORE]
    if store.conn.capabilities.dialect == "sqlite":
        assert sorted(await _index_rows(store)) == [
            ("chat_old0", "project", "apollo"),
            ("chat_old1", "project", "gemini"),
        ]
