"""`chatproxy import` into a store a proxy is serving keeps the full-text indexes exact: every
imported message and title is found, what was stored before is found once, the insert
triggers (SQLite) are in place after the import, also after a refused document, and a later
chat is found as before."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from tests.conftest import StartProxy
from tests.test_bulk_import import chat_doc, cli, one_line_error, write_jsonl
from tests.test_search import TEAM, found, new_chat

pytestmark = pytest.mark.usefixtures("upstream")


def _narwhal_docs(first: int, count: int) -> list[dict]:
    """Chats (of chat_doc's owners in turn) whose second message and title hold words to
    find: ``narwhal`` and ``unicorn`` in every one, ``tusk<n>`` in chat ``n`` only."""
    docs = []
    for n in range(first, first + count):
        doc = chat_doc(n, 4, prefix="i")
        doc["messages"][1]["message"]["content"] = f"The narwhal has one tusk{n}."
        doc["chat"]["title"] = f"Sea unicorn {n}"
        docs.append(doc)
    return docs


async def _fts_integrity(db_url: str) -> None:
    """SQLite: FTS5's own check that each index holds exactly its content table's rows."""
    if not db_url.startswith("sqlite"):
        return
    store = Store(db_url)
    await store.open(migrate=False)
    try:
        for fts in ("messages_fts", "chats_fts"):
            await store.conn.execute_script(
                f"INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)"
            )
        _, rows = await store.conn.execute_query(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%fts_insert'"
        )
        assert sorted(r[0] for r in rows) == ["chats_fts_insert", "messages_fts_insert"]
    finally:
        await store.close()


async def test_an_import_beside_a_serving_proxy_is_found_and_what_was_there_is_found_once(
    db_url: str, tmp_path: Path, start_proxy: StartProxy
) -> None:
    proxy: ProxyServer = await start_proxy(**TEAM)
    async with aiohttp.ClientSession() as http:
        before = await new_chat(http, proxy, "local", "A narwhal question", "A walrus answer.")
        docs = _narwhal_docs(0, 30)
        result = await cli("import", str(write_jsonl(tmp_path / "a.jsonl", docs)), "--db", db_url)
        assert result.exit_code == 0, result.output
        mine = [d["chat"]["id"] for d in docs if d["chat"]["owner"] == "local"]
        assert len(mine) == 10
        # Newest first: the imported chats are dated 2025, the proxy's chat today.
        assert await found(http, proxy, "local", "narwhal") == [before, *reversed(mine)]
        assert await found(http, proxy, "local", "walrus") == [before]
        assert await found(http, proxy, "local", "tusk7") == [docs[7]["chat"]["id"]]
        assert await found(http, proxy, "local", "unicorn") == list(reversed(mine))
        assert await found(http, proxy, "user0", "tusk3") == [docs[3]["chat"]["id"]]
        await _fts_integrity(db_url)

        # After the import, the proxy's own writes are indexed as before.
        after = await new_chat(http, proxy, "local", "What about the dugong?", "It grazes.")
        assert await found(http, proxy, "local", "dugong") == [after]


async def test_a_refused_document_leaves_the_indexes_whole_and_the_documents_before_it_found(
    db_url: str, tmp_path: Path, start_proxy: StartProxy
) -> None:
    proxy: ProxyServer = await start_proxy(**TEAM)
    first = _narwhal_docs(1, 3)
    result = await cli("import", str(write_jsonl(tmp_path / "a.jsonl", first)), "--db", db_url)
    assert result.exit_code == 0, result.output
    # The second file's second document takes a message id of the first file: refused, with
    # what follows it; the one before it goes in.
    second = _narwhal_docs(4, 3)
    taken = first[0]["messages"][3]["id"]  # the end of the first chat's chain
    second[1]["messages"][3]["id"] = second[1]["chat"]["head_id"] = taken
    path = write_jsonl(tmp_path / "b.jsonl", second)
    line = one_line_error(await cli("import", str(path), "--db", db_url))
    assert "line 2: message" in line
    await _fts_integrity(db_url)
    async with aiohttp.ClientSession() as http:
        assert await found(http, proxy, "local", "tusk1") == [first[0]["chat"]["id"]]
        assert await found(http, proxy, "user0", "tusk6") == []  # after the refused one
        assert await found(http, proxy, "local", "tusk4") == [second[0]["chat"]["id"]]
        later = await new_chat(http, proxy, "local", "Any manatee?", "Slowly.", title="Sirenia")
        assert await found(http, proxy, "local", "manatee") == [later]
        assert await found(http, proxy, "local", "sirenia") == [later]
