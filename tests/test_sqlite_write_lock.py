"""SQLite beside another writer (the CLI's ``db prune``, ``import`` or ``chats delete`` next
to a serving proxy): an ORM write transaction that reads before it writes is not refused when
the other commits in between (it holds the write lock from its start); a request whose first
write finds the lock taken waits for it off the event loop and is stored once it is free."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from chatproxy.store.models import Chat, User
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import StartProxy


async def test_a_read_then_write_transaction_survives_a_commit_from_another_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = Store(f"sqlite://{path}")
    await store.open()
    other = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
    try:
        read = asyncio.Event()
        committed = threading.Event()

        def other_writes() -> None:
            other.execute(
                "INSERT INTO users (id, name, created_at) VALUES ('b', 'b', ?)",
                [str(datetime.now(UTC))],
            )
            committed.set()

        async def read_then_write() -> int:
            before = await User.all().count()  # the transaction's snapshot
            read.set()
            await asyncio.sleep(0.3)  # the other connection tries to commit meanwhile
            # It could not: this transaction holds the write lock from its start.
            assert not committed.is_set()
            await User.create(id="a", name="a", created_at=datetime.now(UTC))
            return before

        writing = asyncio.ensure_future(store.write(read_then_write))
        await read.wait()
        other_thread = asyncio.ensure_future(asyncio.to_thread(other_writes))
        assert await writing == 0
        await other_thread  # went in after the transaction's commit
        names = sorted(await store.read(lambda: User.all().values_list("id", flat=True)))
        assert names == ["a", "b"]
    finally:
        other.close()
        await store.close()


async def test_a_request_whose_first_write_finds_the_lock_taken_waits_off_the_loop(
    tmp_path: Path, start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    path = tmp_path / "served.db"
    proxy = await start_proxy(**{"storage.url": f"sqlite://{path}"})
    other = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's batch holds the write lock
        upstream.enqueue(Reply(content="Stored after the wait."))
        body = {"model": "m", "messages": [{"role": "user", "content": "Wait for it"}]}
        async with aiohttp.ClientSession() as http:
            sent = asyncio.ensure_future(http.post(f"{proxy.url}/chat/completions", json=body))
            await asyncio.sleep(0.3)
            assert not sent.done()  # its first write waits for the lock...
            async with http.get(f"{proxy.url.removesuffix('/v1')}/healthz") as health:
                assert health.status == 200  # ...and the event loop serves others meanwhile
            other.execute("COMMIT")
            async with await sent as resp:
                assert resp.status == 200, await resp.text()
                chat_id = resp.headers["X-Chat-Id"]
        store = Store(f"sqlite://{path}")
        await store.open(migrate=False)
        try:
            assert await store.read(lambda: Chat.filter(id=chat_id).exists())
        finally:
            await store.close()
    finally:
        other.close()
