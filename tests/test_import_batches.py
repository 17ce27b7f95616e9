"""`import` sizes its batches on the write transaction as the database times it (what a proxy
waits for), not on the whole call (staging rows, waiting for a checkpoint): a database that
stages slowly but commits fast gets batches of its transaction aim: 30 ms here while a proxy
serves the store (one of its instances heartbeated within the timeout), 60 ms while none does."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from chatproxy import importing
from chatproxy.bulk import BulkDB, ImportBatch, Written
from chatproxy.importing import import_file

SECONDS_PER_MESSAGE = 1e-5  # the transaction's time: 100,000 messages a second


class SlowStaging(BulkDB):
    """Stores nothing; each write sleeps (its staging) and reports a short transaction."""

    postgres = False
    transaction_seconds = 0.03  # the aim the import sizes batches on, beside a proxy
    alone_seconds = 0.06  # and with none

    def __init__(self, heartbeats: list[datetime]) -> None:
        self.batches: list[int] = []
        self.heartbeats = heartbeats

    async def fetch(self, query: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        assert query == "SELECT heartbeat_at FROM instances"
        return [(at,) for at in self.heartbeats]

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


@pytest.mark.parametrize(
    ("heartbeats", "size"),
    [
        pytest.param([timedelta(seconds=-2)], 3000, id="served"),
        pytest.param([], 6000, id="no-instance"),
        pytest.param([timedelta(seconds=-60)], 6000, id="silent-instance"),
    ],
)
async def test_batches_are_sized_on_the_transaction_the_database_reports(
    monkeypatch: pytest.MonkeyPatch, heartbeats: list[timedelta], size: int
) -> None:
    db = SlowStaging([datetime.now(UTC) + ago for ago in heartbeats])

    @contextlib.asynccontextmanager
    async def fake(store: Any) -> AsyncIterator[BulkDB]:
        yield db

    monkeypatch.setattr(importing, "bulk_db", fake)
    observed: list[float] = []
    source = io.BytesIO(b"".join(orjson.dumps(doc(n)) + b"\n" for n in range(4000)))
    stats = await import_file(
        None,  # type: ignore[arg-type]
        source,
        batch_messages=500,
        observe=lambda seconds, wal, size: observed.append(seconds),
    )
    assert (stats.chats, stats.messages) == (4000, 40_000)
    assert sum(db.batches) == 40_000
    # 500 first (and the one read while it is written), then 30 ms (served) or 60 ms at
    # 100,000 messages a second (3,000 or 6,000: documents of ten), the last what is left.
    assert db.batches[0] == 500 and db.batches[1] in (500, size)
    assert set(db.batches[2:-1]) == {size} and db.batches[-1] <= size
    assert observed == [n * SECONDS_PER_MESSAGE for n in db.batches]  # the caller's hook
