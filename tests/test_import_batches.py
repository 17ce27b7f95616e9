"""`import` sizes its batches on the write transaction as the database times it (what a proxy
waits for), not on the whole call (staging rows, waiting for a checkpoint): a database that
stages slowly but commits fast gets batches of its transaction aim (30 ms here)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import orjson
import pytest

from chatproxy import export
from chatproxy.bulk import BulkDB, ImportBatch, Written
from chatproxy.export import import_file

SECONDS_PER_MESSAGE = 1e-5  # the transaction's time: 100,000 messages a second


class SlowStaging(BulkDB):
    """Stores nothing; each write sleeps (its staging) and reports a short transaction."""

    postgres = False
    transaction_seconds = 0.03  # the aim the import sizes batches on

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def fetch(self, query: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return []

    async def write(self, batch: ImportBatch) -> Written:
        await asyncio.sleep(0.02)
        self.batches.append(len(batch))
        if self.observe is not None:
            self.observe(len(batch) * SECONDS_PER_MESSAGE, 0, 0)
        return Written(chats=len(batch.docs), messages=len(batch), kept_docs=len(batch.docs))

    async def delete_rows(self, chat_id: str | None, message_ids: list[str]) -> None:
        return None

    def ts(self, value: datetime | None) -> Any:
        return value

    def when(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]


def doc(n: int) -> dict[str, Any]:
    messages = [
        {
            "id": f"b{n}x{i}",
            "parent_id": f"b{n}x{i - 1}" if i else None,
            "role": "user" if i % 2 == 0 else "assistant",
            "message": {"role": "user" if i % 2 == 0 else "assistant", "content": f"text {i}"},
            "created_at": "2025-03-01T00:00:00+00:00",
        }
        for i in range(10)
    ]
    chat = {"id": f"chat_b{n}", "owner": "local", "title": f"chat {n}"}
    return {"format": "chatproxy.chat", "version": 1, "chat": chat, "messages": messages}


async def test_batches_are_sized_on_the_transaction_the_database_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = SlowStaging()

    @contextlib.asynccontextmanager
    async def fake(store: Any) -> AsyncIterator[BulkDB]:
        yield db

    monkeypatch.setattr(export, "bulk_db", fake)
    observed: list[float] = []
    source = io.BytesIO(b"".join(orjson.dumps(doc(n)) + b"\n" for n in range(2000)))
    stats = await import_file(
        None,  # type: ignore[arg-type]
        source,
        batch_messages=500,
        observe=lambda seconds, wal, size: observed.append(seconds),
    )
    assert (stats.chats, stats.messages) == (2000, 20_000)
    assert sum(db.batches) == 20_000
    # 500 first (and the one read while it is written), then 30 ms at 100,000 messages a
    # second (3,000: documents of ten), the last one what is left.
    assert db.batches[0] == 500 and db.batches[1] in (500, 3000)
    assert set(db.batches[2:-1]) == {3000} and db.batches[-1] <= 3000
    assert observed == [n * SECONDS_PER_MESSAGE for n in db.batches]  # the caller's hook
