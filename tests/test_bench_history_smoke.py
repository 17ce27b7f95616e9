"""The history benchmark runs end to end on a small store, on both stores (timings are never
asserted here)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from tests.conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parent.parent


async def test_history_benchmark_runs_on_a_small_store(tmp_path: Path) -> None:
    out = tmp_path / "history.json"
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\n## History at volume\n\nan older run\n\n## After\n\nkept\n")
    env = dict(os.environ, CHATPROXY_TEST_POSTGRES_URL=POSTGRES_URL)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "benchmarks" / "history.py"),
        "--messages",
        "2000",
        "--db",
        "both" if POSTGRES_URL else "sqlite",
        "--json",
        str(out),
        "--docs",
        str(docs),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, output.decode()[-3000:]
    result = orjson.loads(out.read_bytes())
    assert set(result["results"]) == ({"sqlite", "postgres"} if POSTGRES_URL else {"sqlite"})
    for figures in result["results"].values():
        names = {f["name"] for f in figures}
        assert {
            "list, first page",
            "search, rare word",
            "one chat's messages, /api/chat/{id}/messages",
            "delete the longest chat (20 messages)",
            "export --all",
            "import of the backup",
            "import beside a proxy serving the store",
            "db prune --older-than 150d",
            "bench: time to first byte, unloaded, p50",
            "bench: throughput, 50 clients, streamed",
        } <= names
        # Requests beside each long operation, and the store's longest transaction meanwhile.
        for op in ("delete a short chat", "delete the longest chat", "import", "db prune"):
            assert any(n.startswith(f"first byte during: {op}") for n in names), op
        assert {"delete a short chat: longest store transaction (bucket)"} <= names
        assert [f for f in figures if f["error"]] == []
        assert all(f["value"] >= 0 for f in figures)
        # make bench's figures are measured on an empty store too, side by side.
        hot = [f for f in figures if f["name"].startswith("bench: ")]
        assert hot and all(f["empty"] is not None and f["empty"] > 0 for f in hot)
    # The docs section is replaced in place, the rest of the file kept.
    text = docs.read_text()
    assert text.count("## History at volume") == 1 and "an older run" not in text
    assert "| list, first page |" in text and text.endswith("## After\n\nkept\n")
