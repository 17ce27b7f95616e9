"""The benchmark runs end to end on a tiny load (timings are never asserted here), with its
rows through a proxy running the redact and webhook plugins."""

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
    assert len(names) == 15
    assert "throughput, 50 clients, streamed, X-Chat-Id" in names
    assert "proxy CPU per streamed request, X-Chat-Id" in names
    # The same hot path through a proxy running the redact and webhook plugins.
    assert "throughput, 50 clients, streamed, redact+webhook" in names
    assert "proxy CPU per streamed request, redact+webhook" in names
    assert sum(n.startswith("added time to first byte, unloaded, p") for n in names) == 4
    assert sum(n.endswith(", redact+webhook") or ", redact+webhook (" in n for n in names) == 4
    assert all(f["proxy"] > 0 for f in result["figures"])
    assert b"store check: ok" in output
    # Every event of that proxy's outbox reached the benchmark's receiver, and redact ran.
    assert result["plugins_ok"] is True, result["plugins"]
    assert b"plugin check: ok" in output
    assert "0 undelivered, 0 never received" in result["plugins"]
