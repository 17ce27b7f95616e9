"""PostgreSQL: an import keeps the planner's statistics of the tables it grows, so that a proxy
serving the store beside it plans its lookups for the store as it is, not as it was (empty).

Beside an import into an empty database (restoring a backup), a proxy's prefix lookup had been
planned on an empty ``messages``: it took the user's other index and walked all their
messages, 30 ms per request at 100,000 and growing. The test reproduces that plan's cause and
checks the import removes it: with the import's statistics, the lookup prepared the way the
store's asyncpg connection prepares it is answered from ``messages_user_prefix``."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from chatproxy import bulk
from tests.conftest import POSTGRES_URL, fresh_postgres
from tests.test_bulk_import import chat_doc, cli, write_jsonl

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="PostgreSQL only; .ci/run sets it")

LOOKUP = (
    "SELECT id, chat_id, prefix_hash FROM messages WHERE user_id = $1 AND prefix_hash IN ($2) "
    "ORDER BY created_at DESC"
)


async def _state(url: str) -> tuple[float, str]:
    """``messages``' row estimate, and the generic plan of the proxy's prefix lookup."""
    conn = await asyncpg.connect(url)
    try:
        reltuples = await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'messages'")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE lookup (text, text) AS {LOOKUP}")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE lookup ('local', 'x')"))
        return float(reltuples), plan
    finally:
        await conn.close()


async def test_an_import_analyzes_the_tables_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "ANALYZE_AT_LEAST", 500)
    async with fresh_postgres() as url:
        assert (await cli("db", "upgrade", "--db", url)).exit_code == 0
        reltuples, _ = await _state(url)
        assert reltuples <= 0  # never analyzed: the planner knows nothing of the rows to come
        docs = [chat_doc(n, 6) for n in range(400)]  # 2,800 messages
        result = await cli("import", str(write_jsonl(tmp_path / "a.jsonl", docs)), "--db", url)
        assert result.exit_code == 0, result.output
        reltuples, plan = await _state(url)
        assert reltuples == pytest.approx(2800, rel=0.05)
        assert "messages_user_prefix" in plan, plan
        conn = await asyncpg.connect(url)
        try:
            analyzed = await conn.fetch(
                "SELECT attname FROM pg_stats WHERE tablename = 'messages' "
                "AND attname IN ('user_id', 'prefix_hash', 'chat_id')"
            )
        finally:
            await conn.close()
        assert {r[0] for r in analyzed} == {"user_id", "prefix_hash", "chat_id"}
