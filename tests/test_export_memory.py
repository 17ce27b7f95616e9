"""`export --all` holds a bounded number of rows whatever the size of the store or of its chats:
no read returns more than a page, a chat longer than a page is read in parts (ties on
``created_at`` included) and written as the same line, and the peak of Python memory is the
same for a store eight times larger with chats eight times longer."""

from __future__ import annotations

import contextlib
import io
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from chatproxy import export
from chatproxy.bulk import BulkDB
from chatproxy.export import export_all, export_chat
from chatproxy.importing import import_file
from chatproxy.store.store import Store

START = datetime(2025, 3, 1, tzinfo=UTC)
VOTERS = ("local", "ada", "bob")


def chat_doc(n: int, size: int, *, voted: int = 0, ties: bool = False) -> dict[str, Any]:
    """Chat ``n``: a chain of ``size`` messages of some text; ``voted`` of them voted on by
    every one of :data:`VOTERS`; with ``ties``, messages three at a time share a time."""
    messages = []
    for i in range(size):
        role = "user" if i % 2 == 0 else "assistant"
        at = START + timedelta(minutes=n, seconds=i // 3 if ties else i)
        messages.append(
            {
                "id": f"m{n:04d}x{i:05d}",
                "parent_id": f"m{n:04d}x{i - 1:05d}" if i else None,
                "role": role,
                "message": {"role": role, "content": f"message {i} of chat {n} " * 8},
                "created_at": at.isoformat(),
            }
        )
    votes = [
        {
            "message_id": messages[i]["id"],
            "user_id": voter,
            "up": i % 2 == 0,
            "created_at": START.isoformat(),  # one time for all: ties broken by id
        }
        for i in range(voted)
        for voter in VOTERS
    ]
    chat = {"id": f"chat_{n:04d}", "owner": "local", "title": f"chat {n}"}
    return {
        "format": "chatproxy.chat",
        "version": 1,
        "chat": chat,
        "messages": messages,
        "votes": votes,
    }


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = Store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def fill(store: Store, docs: list[dict[str, Any]]) -> None:
    source = io.BytesIO(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    await import_file(store, source)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every read ``export_all`` makes: its query and how many rows it returned."""
    seen: list[tuple[str, int]] = []
    bulk_db = export.bulk_db

    @contextlib.asynccontextmanager
    async def counted(store: Store) -> AsyncIterator[BulkDB]:
        async with bulk_db(store) as db:
            fetch = db.fetch

            async def counting(query: str, params: Sequence[Any]) -> list[Sequence[Any]]:
                rows = await fetch(query, params)
                seen.append((query, len(rows)))
                return rows

            db.fetch = counting  # type: ignore[method-assign]
            yield db

    monkeypatch.setattr(export, "bulk_db", counted)
    return seen


async def test_a_chat_longer_than_a_page_is_read_in_parts_and_written_as_one_line(
    db_url: str, reads: list[tuple[str, int]]
) -> None:
    docs = [chat_doc(n, 2 + n % 5) for n in range(30)]
    docs[3] = chat_doc(3, 0)  # no messages
    docs[7] = chat_doc(7, 260, voted=40, ties=True)  # 260 messages, 120 votes
    docs[20] = chat_doc(20, 45, voted=2)  # no page holds it with the chats around it
    async with opened(db_url) as store:
        await fill(store, docs)
        out = io.BytesIO()
        stats = await export_all(store, out, page_messages=50)
        expected = [await export_chat(store, d["chat"]["id"], "jsonl") for d in docs]
    assert out.getvalue() == b"".join(expected)
    assert stats.chats == 30 and stats.messages == sum(len(d["messages"]) for d in docs)
    assert stats.largest_page <= 51
    message_reads = [n for query, n in reads if "FROM messages" in query]
    vote_reads = [n for query, n in reads if "FROM votes" in query]
    assert max(message_reads) == 51 and max(vote_reads) <= 51
    assert len(message_reads) >= 260 // 50
    long = orjson.loads(out.getvalue().splitlines()[7])
    assert [m["id"] for m in long["messages"]] == [m["id"] for m in docs[7]["messages"]]
    assert len(long["votes"]) == 120


async def peak(url: str, chats: int, long_chat: int) -> int:
    """The peak of Python memory while ``export_all`` writes a store of ``chats`` chats of ten
    messages and one of ``long_chat`` (a second run: the first one's caches are made)."""
    docs = [chat_doc(n, 10) for n in range(chats)]
    docs.append(chat_doc(chats, long_chat, voted=long_chat // 10))
    async with opened(url) as store:
        await fill(store, docs)
        await export_all(store, io.BytesIO(), page_messages=100)
        tracemalloc.start()
        try:
            await export_all(store, _Discard(), page_messages=100)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


class _Discard(io.RawIOBase):
    """An output that keeps nothing (the peak is the export's, not the written bytes')."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


async def test_the_peak_of_memory_does_not_grow_with_the_store_or_its_longest_chat(
    db_url: str, fresh_db: str
) -> None:
    small = await peak(db_url, 40, 400)
    large = await peak(fresh_db, 320, 3200)
    assert large < small * 1.5, (small, large)
