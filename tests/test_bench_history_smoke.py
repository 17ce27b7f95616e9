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
        assert {"list, first page", "search, rare word", "export --all"} <= names
        assert all(f["value"] >= 0 for f in figures)
