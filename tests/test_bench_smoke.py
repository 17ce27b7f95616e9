"""The benchmark runs end to end on a tiny load (timings are never asserted here)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


async def test_benchmark_runs_on_a_tiny_load_and_loses_no_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "benchmarks" / "bench.py"),
        "--tiny",
        "--json",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, output.decode()
    result = orjson.loads(out.read_bytes())
    assert result["store_ok"] is True, result["store"]
    names = [f["name"] for f in result["figures"]]
    assert len(names) == 11
    assert "throughput, 50 clients, streamed, X-Chat-Id" in names
    assert "proxy CPU per streamed request, X-Chat-Id" in names
    assert all(f["proxy"] > 0 for f in result["figures"])
    assert b"store check: ok" in output
