"""chatproxy's overhead benchmark: the proxy against a direct connection, in one run.

    python benchmarks/bench.py [--tiny] [--json PATH]

Three kinds of process: a fake upstream (``chatproxy.testing.FakeUpstream`` in fast mode), the
proxy (``chatproxy serve`` on a fresh SQLite file, pinned to CPU 0 where the machine has more
than one), and a load generator (asyncio + aiohttp, this process, on the other CPUs). Each
scenario runs against the upstream directly and through the proxy; the table gives each figure
with its ratio to direct. Afterwards every request made through the proxy must be in the store,
``completed`` with the full answer: a run that lost a row is void (exit 1).

The rows marked ``redact+webhook`` are measured in the same run through a third proxy, on a
store of its own, configured as a user would (a TOML file): the built-in ``redact`` plugin with
its defaults, and ``webhook`` posting to a receiver the benchmark runs (``--receiver PORT``, a
process of its own on the load generator's CPUs, answering 200). Its CPU figure runs until the
outbox is delivered. The run is void too unless the receiver got every event of that proxy's
outbox (one per answer at least) and every user message was stored redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = 20
ROUNDS = 3
WARM_UP = 40  # requests each way before a scenario measures


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


async def wait_http(url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def start_upstream(port: int, chunk_delay: float) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio, uvloop\n"
        "from chatproxy.testing import FakeUpstream, Reply\n"
        "async def main():\n"
        f"    fake = FakeUpstream(fast=True, default=Reply(chunks=[f'tok{{i}} ' for i in "
        f"range({CHUNKS})], chunk_delay={chunk_delay}))\n"
        f"    await fake.start(port={port})\n"
        "    await asyncio.Event().wait()\n"
        "uvloop.run(main())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def start_proxy(
    port: int,
    upstream: str,
    db: str,
    pin: int | None,
    redis: str | None = None,
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "chatproxy", "serve", "--port", str(port)]
    argv += ["--upstream", upstream, "--db", db, "--log-level", "warning"]
    if redis:
        argv += ["--redis", redis]
    if config is not None:
        argv += ["--config", str(config)]
    if pin is not None:
        argv = ["taskset", "-c", str(pin), *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["OPENAI_API_KEY"] = "sk-bench"
    # The IP limit stays on (its check is part of the cost measured) but far above this load;
    # the daily quota is off: one user making tens of thousands of requests a minute is what
    # it exists to stop (its cost is bounded by the quota: it counts at most that many rows).
    env["CHATPROXY_LIMITS__IP_RATE"] = "1000000/second"
    env["CHATPROXY_LIMITS__IP_BURST"] = "1000000"
    env["CHATPROXY_LIMITS__TIERS__FREE__MESSAGES_PER_DAY"] = "0"
    env["CHATPROXY_REDIS__PREFIX"] = "chatproxy-bench:"
    env["PYTHONPATH"] = str(ROOT)
    env.update(environ or {})
    return subprocess.Popen(argv, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


@contextlib.asynccontextmanager
async def serving(
    upstream: str,
    db: str,
    pin: int | None,
    redis: str | None,
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """A proxy in front of ``upstream`` while the block runs: its ``/v1`` URL and its pid."""
    port = free_port()
    proc = start_proxy(port, upstream, db, pin, redis, config, environ)
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        stop(proc)


async def serve_receiver(port: int) -> None:
    """The webhook receiver (``bench.py --receiver PORT``): answers every POST to ``/hook``
    with 200 and keeps its ``Idempotency-Key``; ``GET /deliveries`` lists them all."""
    keys: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        keys.append(request.headers.get("Idempotency-Key", ""))
        return web.Response()

    async def deliveries(request: web.Request) -> web.Response:
        return web.json_response({"keys": keys})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/deliveries", deliveries)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    """The webhook receiver (:func:`serve_receiver`) in a process of its own."""
    return subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])


async def received(url: str) -> list[str]:
    """The ``Idempotency-Key`` of every delivery the receiver at ``url`` got, duplicates too."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/deliveries") as resp:
        return list((await resp.json())["keys"])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- load -----------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def body(messages: list[dict[str, Any]], stream: bool) -> bytes:
    return json.dumps({"model": "bench", "messages": messages, "stream": stream}).encode()


async def one_request(
    http: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    stream: bool,
    result: Result,
    chat_id: str | None = None,
) -> str:
    headers = {"Content-Type": "application/json"}
    if chat_id is not None:
        headers["X-Chat-Id"] = chat_id
    t0 = time.perf_counter()
    async with http.post(url, data=payload, headers=headers) as resp:
        if resp.status != 200:
            result.errors += 1
            await resp.read()
            return ""
        first = True
        last = 0.0
        parts = []
        while True:
            data = await resp.content.readany()
            if not data:
                break
            now = time.perf_counter()
            if first:
                result.ttft.append(now - t0)
                first = False
            elif stream:
                result.gaps.append(now - last)
            last = now
            parts.append(data)
    result.requests += 1
    return b"".join(parts).decode()


async def run_load(
    base: str,
    *,
    clients: int,
    requests: int,
    stream: bool = True,
    conversations: list[list[dict[str, Any]]] | None = None,
    chat_ids: bool = False,
    extra: str = "",
) -> Result:
    """``clients`` concurrent clients make ``requests`` requests in all (``chat_ids``: each
    in a new chat named by its ``X-Chat-Id``; ``extra`` ends each new chat's message)."""
    result = Result()
    url = f"{base}/chat/completions"
    remaining = requests
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(n: int) -> None:
            nonlocal remaining
            i = 0
            while remaining > 0:
                remaining -= 1
                if conversations is None:
                    content = f"client {n} request {i} {time.time()}{extra}"
                    msgs = [{"role": "user", "content": content}]
                else:
                    msgs = conversations[n % len(conversations)]
                chat_id = f"bench-{os.getpid()}-{n}-{i}-{time.time_ns()}" if chat_ids else None
                text = await one_request(http, url, body(msgs, stream), stream, result, chat_id)
                if conversations is not None and text:
                    answer = json.loads(text)["choices"][0]["message"]["content"]
                    msgs.append({"role": "assistant", "content": answer})
                    msgs.append({"role": "user", "content": f"next {i}"})
                i += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(clients)))
        result.seconds = time.perf_counter() - t0
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    direct: float | None
    proxy: float
    unit: str
    target: str
    ok: bool

    def row(self) -> str:
        direct = "" if self.direct is None else f"{self.direct:10.2f}"
        ratio = ""
        if self.direct:
            ratio = f"{self.proxy / self.direct:6.2f}x"
        status = "ok" if self.ok else "MISSED"
        return (
            f"{self.name:<44} {direct:>10} {self.proxy:10.2f} {ratio:>8} "
            f"{self.unit:<10} {self.target:<10} {status}"
        )


def first_byte(
    d: Result, p: Result, targets: Sequence[tuple[int, float | None]], label: str = ""
) -> list[Figure]:
    """The added time to first byte at each ``(percentile, target ms or None)``."""
    figures = []
    for q, target in targets:
        added = (pct(p.ttft, q) - pct(d.ttft, q)) * 1000
        figures.append(
            Figure(
                f"added time to first byte, unloaded, p{q}{label} (+{added:.2f} ms)",
                pct(d.ttft, q) * 1000,
                pct(p.ttft, q) * 1000,
                "ms",
                "(report)" if target is None else f"+<= {target:g} ms",
                target is None or added <= target,
            )
        )
    return figures


def throughput(name: str, d: Result, p: Result, at_least: float | None, ok: bool = True) -> Figure:
    """Requests a second each way; ``at_least``: the target ratio (None: reported)."""
    target = "(report)" if at_least is None else f">= {at_least:g}x"
    met = at_least is None or p.rps >= at_least * d.rps
    return Figure(name, d.rps, p.rps, "req/s", target, met and p.errors == 0 and ok)


def cpu_per_request(name: str, cpu_ms: float, at_most: float | None, ok: bool = True) -> Figure:
    """The proxy's CPU per request; ``at_most``: the target in ms (None: reported)."""
    target = "-" if at_most is None else f"<= {at_most:g} ms"
    return Figure(name, None, cpu_ms, "ms", target, (at_most is None or cpu_ms <= at_most) and ok)


async def proxied(
    proxy: str, pid: int, settle: Callable[[], Awaitable[object]] | None = None, **load: Any
) -> tuple[Result, float]:
    """:func:`run_load` through the proxy, and the proxy's CPU ms per request it took (until
    ``settle`` returns, when given: work the requests left behind counts too)."""
    c0 = cpu_seconds(pid)
    p = await run_load(proxy, **load)
    if settle is not None:
        await settle()
    return p, (cpu_seconds(pid) - c0) * 1000 / max(1, p.requests)


async def side_by_side(
    direct: str,
    proxy: str,
    pid: int,
    settle: Callable[[], Awaitable[object]] | None = None,
    **load: Any,
) -> tuple[Result, Result, float]:
    """The same load direct, then through the proxy (see :func:`proxied`)."""
    d = await run_load(direct, **load)
    p, cpu_ms = await proxied(proxy, pid, settle, **load)
    return d, p, cpu_ms


async def warm_up(direct: str, proxy: str, extra: str = "") -> None:
    """Imports, connection pools, SQLite pages."""
    await run_load(direct, clients=4, requests=WARM_UP, extra=extra)
    await run_load(proxy, clients=4, requests=WARM_UP, extra=extra)


async def scenario_fast(direct: str, proxy: str, pid: int, sizes: dict[str, int]) -> list[Figure]:
    await warm_up(direct, proxy)
    d, p, _ = await side_by_side(direct, proxy, pid, clients=1, requests=sizes["unloaded"])
    figures = first_byte(d, p, ((50, 1.0), (99, 3.0)))

    n = sizes["loaded"]
    d, p, cpu_ms = await side_by_side(direct, proxy, pid, clients=50, requests=n)
    figures.append(throughput("throughput, 50 clients, streamed", d, p, 0.5))
    figures.append(cpu_per_request("proxy CPU per streamed request, stored", cpu_ms, 1.5))

    # The shape of an outside harness: a new X-Chat-Id on every request.
    d, p, cpu_ms = await side_by_side(direct, proxy, pid, clients=50, requests=n, chat_ids=True)
    figures.append(throughput("throughput, 50 clients, streamed, X-Chat-Id", d, p, 0.7))
    figures.append(cpu_per_request("proxy CPU per streamed request, X-Chat-Id", cpu_ms, 0.8))

    d, p, plain = await side_by_side(direct, proxy, pid, clients=50, requests=n, stream=False)
    figures.append(throughput("throughput, 50 clients, non-streamed", d, p, None))
    figures.append(cpu_per_request("proxy CPU per non-streamed request", plain, None))

    # Long histories: 10 conversations of 200 messages, each turn resending everything.
    convs = [
        [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"conv {c} msg {i} " * 8}
            for i in range(199)
        ]
        for c in range(10)
    ]
    await run_load(proxy, clients=10, requests=10, stream=False, conversations=convs)
    p, cpu_long = await proxied(
        proxy, pid, clients=10, requests=sizes["history"], stream=False, conversations=convs
    )
    added = cpu_long - plain
    figures.append(
        Figure(
            f"threading a 200-message history (CPU {cpu_long:.2f} ms/req)",
            None,
            added,
            "ms CPU",
            "<= 2 ms",
            added <= 2.0 and p.errors == 0,
        )
    )
    return figures


class Outbox:
    """The plugin proxy's store, as the benchmark reads it (its own short reads)."""

    def __init__(self, db_file: Path, within: float = 300.0) -> None:
        self.db_file = db_file
        self.within = within  # seconds a drain may take
        self.late = False  # a drain took longer

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.db_file)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    async def drain(self) -> bool:
        """Wait until no answer is running and every event of the outbox is delivered (an
        answer's event is written with its final write)."""
        deadline = time.monotonic() + self.within
        while time.monotonic() < deadline:
            [(running, undelivered)] = self.query(
                "SELECT (SELECT COUNT(*) FROM messages WHERE role = 'assistant' "
                "AND status = 'in_progress'), "
                "(SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL)"
            )
            if running == 0 and undelivered == 0:
                return True
            await asyncio.sleep(0.02)
        self.late = True
        return False


PLUGINS = ", redact+webhook"  # the rows' label
PLUGINS_CONFIG = """\
plugins = ["chatproxy.plugins.redact", "chatproxy.plugins.webhook"]

[plugin."chatproxy.plugins.webhook"]
urls = ["{url}/hook"]
secret_env = "BENCH_WEBHOOK_SECRET"
"""
# In every message of the plugin rows, direct too: something for redact to find.
PLUGINS_EXTRA = " (reply to bench@example.com)"


async def scenario_plugins(
    direct: str, proxy: str, pid: int, sizes: dict[str, int], outbox: Outbox
) -> list[Figure]:
    """The hot path through a proxy running redact and webhook: what they add. The CPU figure
    includes delivering the events the requests made (measured until the outbox is empty)."""
    extra = PLUGINS_EXTRA
    await warm_up(direct, proxy, extra)
    await outbox.drain()
    d, p, _ = await side_by_side(
        direct, proxy, pid, clients=1, requests=sizes["unloaded"], extra=extra
    )
    figures = first_byte(d, p, ((50, None), (99, None)), PLUGINS)
    await outbox.drain()
    d, p, cpu_ms = await side_by_side(
        direct, proxy, pid, outbox.drain, clients=50, requests=sizes["loaded"], extra=extra
    )
    done = not outbox.late
    figures.append(throughput(f"throughput, 50 clients, streamed{PLUGINS}", d, p, None, done))
    figures.append(cpu_per_request(f"proxy CPU per streamed request{PLUGINS}", cpu_ms, None, done))
    return figures


def check_plugins(outbox: Outbox, keys: list[str], answers: int) -> tuple[bool, str]:
    """Whether the receiver got every event of the outbox (``keys``: its deliveries), one per
    answer at least, and every user message was stored redacted."""
    events = dict(outbox.query("SELECT id, type FROM outbox"))
    [(undelivered,)] = outbox.query("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
    [(users, redacted, plain)] = outbox.query(
        "SELECT COUNT(*), COALESCE(SUM(text LIKE '%[redacted:email]%'), 0), "
        "COALESCE(SUM(text LIKE '%@example.com%'), 0) FROM messages WHERE role = 'user'"
    )
    answer_events = sum(1 for t in events.values() if t.startswith("answer."))
    got = set(keys)
    ok = (
        got == set(events)
        and undelivered == 0
        and answer_events >= answers
        and 0 < users == redacted
        and plain == 0
    )
    return (
        ok,
        f"{len(keys)} deliveries of {len(got)} events; the outbox holds {len(events)} "
        f"({answer_events} for {answers} answers, {undelivered} undelivered, "
        f"{len(set(events) - got)} never received); {redacted} of {users} user messages "
        f"stored redacted",
    )


async def scenario_slow(direct: str, proxy: str, pid: int, sizes: dict[str, int]) -> list[Figure]:
    """200 streams of 20 chunks 10 ms apart. This machine's noise is larger than the effect,
    so direct and proxied runs alternate for ``ROUNDS`` rounds and the median round counts."""
    n = sizes["slow"]
    await run_load(proxy, clients=4, requests=8)
    peak = 0.0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    rounds: list[tuple[float, float]] = []
    errors = 0
    sampler = asyncio.create_task(sample())
    for _ in range(ROUNDS):
        d = await run_load(direct, clients=200, requests=n)
        p = await run_load(proxy, clients=200, requests=n)
        errors += p.errors
        rounds.append((pct(d.gaps, 99) * 1000, pct(p.gaps, 99) * 1000))
    stop.set()
    await sampler
    rounds.sort(key=lambda r: r[1] - r[0])
    d99, p99 = rounds[len(rounds) // 2]
    added = p99 - d99
    spread = ", ".join(f"+{pr - dr:.1f}" for dr, pr in rounds)
    return [
        Figure(
            f"inter-chunk gap p99, 200 slow streams (+{added:.2f} ms; rounds {spread})",
            d99,
            p99,
            "ms",
            "+<= 15 ms",
            added <= 15 and errors == 0,
        ),
        Figure("peak RSS, 200 concurrent streams", None, peak, "MB", "<= 150 MB", peak <= 150),
    ]


def check_store(db_file: Path, expected_requests: int) -> tuple[bool, str]:
    con = sqlite3.connect(db_file)
    try:
        rows = con.execute(
            "SELECT status, COUNT(*) FROM messages WHERE role = 'assistant' "
            "AND instance_id IS NOT NULL GROUP BY status"
        ).fetchall()
        by_status = dict(rows)
        texts = con.execute(
            "SELECT COUNT(*) FROM messages WHERE role = 'assistant' AND status = 'completed' "
            "AND instance_id IS NOT NULL "
            "AND text NOT LIKE 'tok0 %tok" + str(CHUNKS - 1) + " '"
        ).fetchone()[0]
    finally:
        con.close()
    completed = by_status.get("completed", 0)
    ok = completed == expected_requests and len(by_status) == 1 and texts == 0
    return (
        ok,
        f"{completed} of {expected_requests} answers stored completed {by_status}; "
        f"{texts} with a wrong text",
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few requests (smoke test)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/latest.json")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="run the proxy with this Redis (the scale-out set-up: limits, claims and event "
        "streams shared); the benchmark deletes nothing there but its own expiring keys",
    )
    parser.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        await serve_receiver(args.receiver)
        return 0
    sizes = (
        {"unloaded": 20, "loaded": 100, "history": 20, "slow": 200}
        if args.tiny
        else {"unloaded": 1000, "loaded": 5000, "history": 300, "slow": 2000}
    )
    cores = cpus()
    pin = cores[0] if len(cores) > 1 else None
    if pin is not None:
        os.sched_setaffinity(0, cores[1:])  # load generator (and upstreams) off the proxy's CPU

    tmp = Path(tempfile.mkdtemp(prefix="chatproxy-bench-"))
    db_file, plugins_db = tmp / "bench.db", tmp / "plugins.db"
    db = f"sqlite://{db_file}"
    procs: list[subprocess.Popen[bytes]] = []
    figures: list[Figure] = []
    try:
        fast_port, slow_port, receiver_port = free_port(), free_port(), free_port()
        procs.append(start_upstream(fast_port, 0.0))
        procs.append(start_upstream(slow_port, 0.01))
        procs.append(start_receiver(receiver_port))
        fast, slow = f"http://127.0.0.1:{fast_port}/v1", f"http://127.0.0.1:{slow_port}/v1"
        receiver = f"http://127.0.0.1:{receiver_port}"
        await wait_http(f"{fast}/models")
        await wait_http(f"{slow}/models")
        await wait_http(f"{receiver}/deliveries")
        config = tmp / "plugins.toml"
        config.write_text(PLUGINS_CONFIG.format(url=receiver))
        hook_env = {"BENCH_WEBHOOK_SECRET": secrets.token_hex(16)}

        async with serving(fast, db, pin, args.redis) as (proxy, pid):
            figures += await scenario_fast(fast, proxy, pid, sizes)
        outbox = Outbox(plugins_db)
        async with serving(fast, f"sqlite://{plugins_db}", pin, args.redis, config, hook_env) as (
            proxy,
            pid,
        ):
            figures += await scenario_plugins(fast, proxy, pid, sizes, outbox)
        async with serving(slow, db, pin, args.redis) as (proxy, pid):
            figures += await scenario_slow(slow, proxy, pid, sizes)
        s = sizes
        proxied = (
            WARM_UP + s["unloaded"] + 3 * s["loaded"] + 10 + s["history"] + 8 + ROUNDS * s["slow"]
        )
        with_plugins = WARM_UP + s["unloaded"] + s["loaded"]
        stored_ok, stored_msg = check_store(db_file, proxied)
        plugins_stored_ok, plugins_stored_msg = check_store(plugins_db, with_plugins)
        stored_ok = stored_ok and plugins_stored_ok
        stored_msg += f"; {PLUGINS.removeprefix(', ')}: {plugins_stored_msg}"
        plugins_ok, plugins_msg = check_plugins(outbox, await received(receiver), with_plugins)
    finally:
        for proc in procs:
            stop(proc)

    print(
        f"\nchatproxy benchmark — {platform.node()}, {os.cpu_count()} CPUs, "
        f"proxy pinned to CPU {pin}, Python {platform.python_version()}"
        + (" (tiny run)" if args.tiny else "")
        + (f", Redis {args.redis}" if args.redis else "")
    )
    print(
        f"{'figure':<44} {'direct':>10} {'proxy':>10} {'ratio':>8} {'unit':<10} "
        f"{'target':<10} status"
    )
    for f in figures:
        print(f.row())
    print(f"store check: {'ok' if stored_ok else 'VOID'}: {stored_msg}")
    print(f"plugin check: {'ok' if plugins_ok else 'VOID'}: {plugins_msg}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": {
                    "node": platform.node(),
                    "cpus": os.cpu_count(),
                    "pinned": pin,
                    "python": platform.python_version(),
                },
                "tiny": args.tiny,
                "redis": args.redis,
                "figures": [f.__dict__ for f in figures],
                "store_ok": stored_ok,
                "store": stored_msg,
                "plugins_ok": plugins_ok,
                "plugins": plugins_msg,
            },
            indent=2,
        )
    )
    if not (stored_ok and plugins_ok):
        return 1
    return 0 if args.tiny or all(f.ok for f in figures) else 2


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        uvloop = None
    # The load generator and the upstreams share a CPU: the faster loop keeps them from being
    # the bottleneck of what is measured.
    if uvloop is not None:
        sys.exit(uvloop.run(main()))
    sys.exit(asyncio.run(main()))
