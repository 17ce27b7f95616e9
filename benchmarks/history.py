"""chatproxy's history benchmark: every history operation on a store of a million messages.

    python benchmarks/history.py [--messages N] [--db sqlite|postgres|both] [--json PATH]
                                 [--docs docs/performance.md]

It builds a store (100,000 chats of about ten messages for a million, realistic text drawn
from a Zipf-shaped vocabulary, a project in each chat's metadata, and a few very long chats)
after chatproxy's own migrations, so every index and full-text index is kept as the product
keeps it: rows written with SQL in transactions of 50,000 messages (``executemany`` on SQLite,
``COPY`` on PostgreSQL), prefix hashes and depths included. Then a real ``chatproxy serve`` on
that store (bench.py's: pinned to a CPU, warnings only), in front of bench.py's fake upstream,
is asked each history operation of issue 15 several times; bench.py's hot-path scenario runs
through it and through a proxy on an empty store, side by side; and the CLI runs ``stats``,
``export --all``, ``import`` (into an empty store) and ``db prune`` on it. Each figure is a p50
(or a rate); the table names the target beside it, and ``--docs`` writes the tables into that
file's "History at volume" section. PostgreSQL needs ``CHATPROXY_TEST_POSTGRES_URL`` (a server
where databases may be created); fresh databases are made and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import random
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench  # noqa: E402
from benchmarks.bench import rss_mb  # noqa: E402
from chatproxy.store.db import sqlite_path  # noqa: E402
from chatproxy.store.store import Store  # noqa: E402
from chatproxy.store.threading import default_title, prefix_hashes  # noqa: E402

USER = "local"  # the caller: auth mode "none"
INSTANCE = "bench-build"  # the instance that "produced" the stored answers
OTHER_USERS = ("ada", "bob", "cyd")
LONG_CHATS = 3  # chats of LONG_CHAT messages each
LONG_CHAT = 10_000
REPEAT = 20
HOT_ROUNDS = 3  # rounds of the hot-path scenario on each store
T = TypeVar("T")
RARE_WORD = "quixotically"  # in about one chat in 2,000
COMMON_WORD = "python"  # in about one message in ten


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str
    empty: float | None = None  # the same figure on an empty store (the hot path's rows)
    error: str | None = None  # what failed, when it did


# -- building the store --------------------------------------------------------------------------


def _vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["the", "a", "to", "of", "and", "is", "in", "it", "you", "that", COMMON_WORD]
    while len(words) < 5000:
        words.append("".join(rng.choice(letters) for _ in range(rng.randint(3, 10))))
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    return words, weights


class TextMaker:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.words, weights = _vocabulary(self.rng)
        # Cumulative once: choices() with plain weights sums all 5,000 on every call.
        self.cumulative = list(itertools.accumulate(weights))

    def sentence(self, n: int) -> str:
        words = self.rng.choices(self.words, cum_weights=self.cumulative, k=n)
        return " ".join(words).capitalize() + "."


def _long_chats(total: int) -> tuple[int, int]:
    """How many very long chats a store of ``total`` messages has, and their size."""
    return LONG_CHATS if total >= 10 * LONG_CHAT else 1, min(LONG_CHAT, max(20, total // 100))


def _chat_sizes(total: int, rng: random.Random) -> list[int]:
    long, size = _long_chats(total)
    sizes = [size] * long
    left = total - size * long
    while left > 0:
        n = min(left, rng.choice((2, 4, 6, 8, 10, 10, 12, 14, 16, 18)))
        sizes.append(n)
        left -= n
    return sizes


def _rows(total: int) -> Any:
    """Yield ``(chat row, message rows)`` for each chat."""
    rng = random.Random(11)
    text = TextMaker()
    start = datetime.now(UTC) - timedelta(days=200)
    for c, size in enumerate(_chat_sizes(total, rng)):
        chat_id = f"chat_bench{c:012d}"
        owner = USER if c % 2 == 0 else OTHER_USERS[c % len(OTHER_USERS)]
        created = start + timedelta(seconds=c * 150)
        messages: list[dict[str, Any]] = []
        for i in range(size):
            words = text.sentence(rng.randint(8, 60))
            if i == 0 and rng.random() < 0.0005 * 2:
                words += f" {RARE_WORD}"
            role = "user" if i % 2 == 0 else "assistant"
            messages.append({"role": role, "content": words})
        hashes = prefix_hashes(messages)
        ids = [f"msg_b{c:09d}x{i:06d}" for i in range(size)]
        # One of 100 projects for each owner's chats alike (c // 2: the caller owns the even
        # chats, so c % 100 would give the caller only even projects); each answer's request
        # carried its chat's project as metadata.
        project = f"p{(c // 2) % 100}"
        params = orjson.dumps({"metadata": {"project": project}}).decode()
        rows = []
        for i, (m, h) in enumerate(zip(messages, hashes, strict=True)):
            when = created + timedelta(seconds=i * 5)
            answer = m["role"] == "assistant"
            rows.append(
                (
                    ids[i],
                    chat_id,
                    ids[i - 1] if i else None,
                    owner,
                    m["role"],
                    m["content"],
                    i + 1,  # depth: one branch, the root is 1
                    orjson.dumps(m).decode(),
                    h,
                    "completed",
                    "fake-model" if answer else None,
                    "stop" if answer else None,
                    10 if answer else None,
                    20 if answer else None,
                    30 if answer else None,
                    INSTANCE if answer else None,  # answers the proxy produced
                    params if answer else None,
                    when,
                    when if answer else None,
                    False,  # client_disconnected
                )
            )
        updated = created + timedelta(seconds=size * 5)
        chat = (
            chat_id,
            owner,
            default_title(messages),
            "private",
            orjson.dumps({"project": project}).decode(),
            ids[-1],
            created,
            updated,
        )
        yield chat, rows


CHAT_COLUMNS = (
    "id", "owner_id", "title", "visibility", "metadata", "head_id", "created_at", "updated_at",
)  # fmt: skip
MESSAGE_COLUMNS = (
    "id", "chat_id", "parent_id", "user_id", "role", "text", "depth", "data", "prefix_hash",
    "status", "model", "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens",
    "instance_id", "params", "created_at", "completed_at", "client_disconnected",
)  # fmt: skip
BATCH = 50_000  # messages per transaction


def _insert(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


async def build(url: str, total: int) -> int:
    """Write the store (after chatproxy's migrations, so every index and full-text index is
    kept as the product keeps it) in transactions of :data:`BATCH` messages: ``executemany``
    on SQLite, ``COPY`` on PostgreSQL. Returns the number of messages written."""
    store = Store(url)
    await store.open()
    await store.close()  # migrated
    postgres = sqlite_path(url) is None
    now = datetime.now(UTC)
    users = [(u, u, now) for u in (USER, *OTHER_USERS)]
    if postgres:
        import asyncpg

        conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))

        async def write(chats: list[Any], messages: list[Any]) -> None:
            async with conn.transaction():
                await conn.copy_records_to_table("chats", records=chats, columns=CHAT_COLUMNS)
                await conn.copy_records_to_table(
                    "messages", records=messages, columns=MESSAGE_COLUMNS
                )

        await conn.executemany(
            "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)", users
        )
    else:
        path = sqlite_path(url)
        assert path is not None
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA foreign_keys=ON")

        def text(row: tuple[Any, ...]) -> tuple[Any, ...]:
            # Timestamps as Tortoise stores them on SQLite (ISO text).
            return tuple(str(v) if isinstance(v, datetime) else v for v in row)

        def write_sqlite(chats: list[Any], messages: list[Any]) -> None:
            db.execute("BEGIN")
            db.executemany(_insert("chats", CHAT_COLUMNS), map(text, chats))
            db.executemany(_insert("messages", MESSAGE_COLUMNS), map(text, messages))
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as the store's checkpointer does

        async def write(chats: list[Any], messages: list[Any]) -> None:
            await asyncio.to_thread(write_sqlite, chats, messages)  # SQLite lets go of the GIL

        db.executemany(_insert("users", ("id", "name", "created_at")), map(text, users))
    written = 0
    started = time.perf_counter()
    batches = _batches(total)
    writing: asyncio.Task[None] | None = None
    try:
        # The next batch is made (in a thread) while the database writes the last one.
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            if writing is not None:
                await writing
                rate = written / (time.perf_counter() - started)
                print(f"  {written:,} messages ({rate:,.0f}/s)", end="\r", flush=True)
            writing = asyncio.create_task(write(*batch))
            written += len(batch[1])
        if writing is not None:
            await writing
        if postgres:
            await analyze(url)  # as autovacuum would, within a minute of a bulk load
        else:
            # The full-text indexes, as an import leaves them (the triggers only listed the rows).
            store = Store(url)
            await store.open()
            try:
                await store.index_search()
            finally:
                await store.close()
    finally:
        if postgres:
            await conn.close()
        else:
            db.close()
    print(f"  {written:,} messages written in {time.perf_counter() - started:.0f} s")
    return written


def _batches(total: int) -> Iterator[tuple[list[Any], list[Any]]]:
    """``(chat rows, message rows)`` of about :data:`BATCH` messages each."""
    chats: list[Any] = []
    messages: list[Any] = []
    for chat, rows in _rows(total):
        chats.append(chat)
        messages.extend(rows)
        if len(messages) >= BATCH:
            yield chats, messages
            chats, messages = [], []
    if messages:
        yield chats, messages


# -- measuring -----------------------------------------------------------------------------------


class HttpError(RuntimeError):
    """A history request answered with an error status."""


async def timed(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> float:
    started = time.perf_counter()
    async with http.request(method, url, **kw) as resp:
        body = await resp.read()
        if resp.status >= 400:
            raise HttpError(
                f"{method} {url}: HTTP {resp.status} {body[:200].decode(errors='replace')}"
            )
    return (time.perf_counter() - started) * 1000


async def p50(http: aiohttp.ClientSession, url: str, n: int = REPEAT, **kw: Any) -> float:
    await timed(http, "GET", url, **kw)  # warm
    return statistics.median([await timed(http, "GET", url, **kw) for _ in range(n)])


async def measure_http(base: str, total: int, figures: list[Figure]) -> None:
    v1 = f"{base}/v1"
    async with aiohttp.ClientSession() as http:

        async def get(name: str, url: str, target: str, n: int = REPEAT, **kw: Any) -> None:
            print(f"  {name}", flush=True)
            figures.append(Figure(name, await p50(http, url, n, **kw), "ms", target))

        await get("list, first page", f"{v1}/conversations", "<= 10")
        after = None
        for _ in range(50):  # 5,000 chats deep
            params = {"limit": "100", **({"after": after} if after else {})}
            async with http.get(f"{v1}/conversations", params=params) as resp:
                page = await resp.json()
            after = page["last_id"] if page["has_more"] else after
        await get(
            "list, a page 5,000 chats deep", f"{v1}/conversations", "<= 10", params={"after": after}
        )
        meta = {"metadata[project]": "p7"}
        await get("list, metadata filter", f"{v1}/conversations", "<= 10", params=meta)
        # No chat matches: every one of the caller's chats is looked at.
        meta = {"metadata[project]": "p-none"}
        await get("list, metadata filter, no match", f"{v1}/conversations", "<= 10", params=meta)
        limit = {"limit": "20"}
        await get("stored completions, limit 20", f"{v1}/chat/completions", "<= 10", params=limit)
        for label, project in (("", "p7"), (", no match", "p-none")):
            await get(
                f"stored completions, metadata filter{label}",
                f"{v1}/chat/completions",
                "<= 10",
                params={"limit": "20", "metadata[project]": project},
            )
        for label, word, target in (
            ("rare word", RARE_WORD, "<= 50"),
            ("common word", COMMON_WORD, "<= 100"),
            ("no match", "zzzqqqxxx", "<= 50"),
        ):
            await get(f"search, {label}", f"{v1}/conversations", target, n=5, params={"q": word})
        chat = "chat_bench000000000010"
        answer = "msg_b000000010x000001"
        for api, url in (
            ("/v1/conversations/{id}/messages", f"{v1}/conversations/{chat}/messages"),
            ("/v1/conversations/{id}/items", f"{v1}/conversations/{chat}/items"),
            ("/api/chat/{id}/messages", f"{base}/api/chat/{chat}/messages"),
            ("/v1/chat/completions/{id}/messages", f"{v1}/chat/completions/{answer}/messages"),
        ):
            await get(f"one chat's messages, {api}", url, "<= 5")
        unloaded = await unloaded_first_byte(http, v1)
        figures.append(
            Figure("first byte of a request, nothing else running", unloaded, "ms", "(reported)")
        )
        await measure_delete(
            http, base, "chat_bench000000000012", "delete a short chat", unloaded, figures
        )
        long_chat = "chat_bench000000000000"
        label = f"delete the longest chat ({_long_chats(total)[1]:,} messages)"
        await measure_delete(http, base, long_chat, label, unloaded, figures)


# -- requests beside a long operation ----------------------------------------------------------


async def first_byte(http: aiohttp.ClientSession, v1: str) -> float:
    """A new streamed request (a new chat: the store's first write comes before the first
    byte): its time to first byte, in ms."""
    content = secrets.token_hex(8)
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}
    started = time.perf_counter()
    async with http.post(f"{v1}/chat/completions", json=body) as resp:
        await resp.content.readany()
        ms = (time.perf_counter() - started) * 1000
        await resp.read()
        if resp.status != 200:
            raise HttpError(f"POST {v1}/chat/completions: HTTP {resp.status}")
    return ms


async def unloaded_first_byte(http: aiohttp.ClientSession, v1: str) -> float:
    await first_byte(http, v1)  # warm
    return statistics.median([await first_byte(http, v1) for _ in range(REPEAT)])


async def during(http: aiohttp.ClientSession, v1: str, op: Awaitable[T]) -> tuple[T, list[float]]:
    """Run ``op`` while new requests are made through the proxy one after another (the first
    as ``op`` starts): ``op``'s result and every request's time to first byte."""
    task = asyncio.ensure_future(op)
    times = []
    try:
        while True:
            times.append(await first_byte(http, v1))
            if task.done():
                return await task, times
    finally:
        if not task.done():
            task.cancel()


async def write_buckets(http: aiohttp.ClientSession, base: str) -> dict[float, float]:
    """The proxy's histogram of store write transactions (``/metrics``): count per bound."""
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    buckets = {}
    for line in text.splitlines():
        if line.startswith('chatproxy_store_write_seconds_bucket{le="'):
            bound, count = line.split('le="', 1)[1].split('"}')
            buckets[float(bound)] = float(count)
    return buckets


def longest(before: dict[float, float], after: dict[float, float]) -> float:
    """The bound (ms) of the histogram's smallest bucket holding every transaction between
    two readings; NaN when there was none."""
    total = after[math.inf] - before.get(math.inf, 0.0)
    for bound in sorted(after):
        if total and after[bound] - before.get(bound, 0.0) == total:
            return bound * 1000
    return float("nan")


def beside(label: str, times: list[float], unloaded: float) -> list[Figure]:
    """The requests' times to first byte beside an operation: the 99th percentile and the
    slowest, against the time with nothing else running plus 50 ms."""
    target = f"<= {unloaded + 50:.0f} (nothing running + 50)"
    ranked = sorted(times)
    p99 = ranked[min(len(ranked) - 1, int(len(ranked) * 0.99))]
    return [
        Figure(f"first byte during: {label}, p99 of {len(times)}", p99, "ms", target),
        Figure(f"first byte during: {label}, slowest of {len(times)}", ranked[-1], "ms", target),
    ]


async def measure_delete(
    http: aiohttp.ClientSession,
    base: str,
    chat_id: str,
    label: str,
    unloaded: float,
    figures: list[Figure],
) -> None:
    """Delete a chat while new requests are made: the delete's time, the longest store
    transaction meanwhile (the proxy's histogram), and the slowest request's time to first
    byte. A delete that fails is a figure with its error, and the run goes on."""
    print(f"  {label}", flush=True)
    v1 = f"{base}/v1"
    before = await write_buckets(http, base)
    try:
        ms, times = await during(http, v1, timed(http, "DELETE", f"{v1}/conversations/{chat_id}"))
    except HttpError as exc:
        figures.append(Figure(label, float("nan"), "ms", "(reported)", error=str(exc)))
        return
    after = await write_buckets(http, base)
    figures.append(Figure(label, ms, "ms", "(reported)"))
    figures.append(
        Figure(
            f"{label}: longest store transaction (bucket)", longest(before, after), "ms", "<= 50"
        )
    )
    figures.extend(beside(label, times, unloaded))


def cli(db: str, *args: str) -> tuple[float, str, float]:
    """Run ``chatproxy ARGS`` on the store: seconds, stdout, peak RSS in MB."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatproxy", *args, "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak = 0.0
    while proc.poll() is None:
        with contextlib.suppress(OSError):  # the peak so far, as the kernel counts it
            peak = max(peak, rss_mb(proc.pid, "VmHWM"))
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"chatproxy {' '.join(args)}: {err.decode()[-500:]}")
    return time.perf_counter() - started, out.decode(), peak


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


async def peak_wal(path: str) -> float:
    """The SQLite store's largest write-ahead log, sampled until cancelled (see
    :func:`_stop`), in bytes."""
    peak = 0
    try:
        while True:
            peak = max(peak, _size(path + "-wal"))
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        return float(peak)


async def _stop(task: asyncio.Future[float]) -> float:
    task.cancel()
    return await task


async def measure_cli(
    big: Proxy, restore: Proxy, alone: str, total: int, figures: list[Figure], work: Path
) -> None:
    """``stats`` and ``export --all`` on the store; ``import`` of that export into ``alone``
    (an empty store no proxy serves: a restore), then into ``restore`` (an empty store) and
    ``db prune`` of the store while new requests are made through a proxy serving it."""
    db = big.db
    print("  chatproxy stats", flush=True)
    seconds, _, _ = await asyncio.to_thread(cli, db, "stats")
    figures.append(Figure("chatproxy stats", seconds * 1000, "ms", "(reported)"))
    print("  chatproxy export --all", flush=True)
    backup = work / "backup.jsonl"
    seconds, _, peak = await asyncio.to_thread(cli, db, "export", "--all", "-o", str(backup))
    figures.append(Figure("export --all", total / seconds, "messages/s", ">= 20,000"))
    figures.append(Figure("export --all, peak RSS", peak, "MB", "flat"))
    print("  chatproxy import, into a store no proxy serves", flush=True)
    restored = sqlite_path(alone)
    wal = asyncio.ensure_future(peak_wal(restored)) if restored else None
    try:
        seconds, _, _ = await asyncio.to_thread(cli, alone, "import", str(backup))
    finally:
        largest = await _stop(wal) if wal is not None else None
    figures.append(Figure("import of the backup", total / seconds, "messages/s", ">= 20,000"))
    if restored is not None and largest is not None:
        ratio = largest / max(1, _size(restored))
        figures.append(Figure("import: largest WAL / database size", ratio, "x", "<= 2"))
    async with aiohttp.ClientSession() as http:
        print("  chatproxy import, beside a proxy serving the store it writes", flush=True)
        unloaded = await unloaded_first_byte(http, restore.v1)
        importing = asyncio.to_thread(cli, restore.db, "import", str(backup))
        (seconds, _, _), times = await during(http, restore.v1, importing)
        name = "import beside a proxy serving the store"
        figures.append(Figure(name, total / seconds, "messages/s", "(reported)"))
        figures.extend(beside("import", times, unloaded))
        await asyncio.to_thread(backup.unlink)
        print("  chatproxy db prune, beside a proxy serving the store", flush=True)
        unloaded = await unloaded_first_byte(http, big.v1)
        pruning = asyncio.to_thread(cli, db, "db", "prune", "--older-than", "150d")
        (seconds, _, _), times = await during(http, big.v1, pruning)
        figures.append(Figure("db prune --older-than 150d", seconds, "s", "(reported)"))
        figures.extend(beside("db prune", times, unloaded))


# -- the hot path on this store: benchmarks/bench.py's figures ----------------------------------


def _hot_sizes(total: int) -> dict[str, int]:
    if total < 50_000:  # a smoke run
        return {"unloaded": 20, "loaded": 100, "history": 10}
    return {"unloaded": 500, "loaded": 2000, "history": 100}


async def measure_hot_path(
    upstream: str, big: Proxy, empty: Proxy, total: int, figures: list[Figure]
) -> None:
    """``make bench``'s hot-path scenario (proxied request against a direct connection: time
    to first byte, throughput, CPU per request, threading a long history) through the proxy
    on this store and through one on an empty store. Both are warmed alike first (50 clients:
    every pooled connection opened, the empty store's planner statistics taken as autovacuum
    would); then the two alternate for :data:`HOT_ROUNDS` rounds, and each figure is the
    median of its rounds, side by side."""
    sizes = _hot_sizes(total)
    for proxy in (empty, big):
        await bench.run_load(proxy.v1, clients=50, requests=4 * sizes["history"])
        await analyze(proxy.db)
    runs: dict[str, list[list[bench.Figure]]] = {"big": [], "empty": []}
    for r in range(HOT_ROUNDS):
        for key, proxy in (("empty", empty), ("big", big)):
            print(f"  make bench figures, round {r + 1}, {key} store", flush=True)
            runs[key].append(await bench.scenario_fast(upstream, proxy.v1, proxy.pid, sizes))
    for i, first in enumerate(runs["big"][0]):
        # bench.py's names say "added" (to direct); these rows compare the proxied values.
        name = first.name.split(" (")[0].removeprefix("added ")
        on_big = statistics.median(run[i].proxy for run in runs["big"])
        on_empty = statistics.median(run[i].proxy for run in runs["empty"])
        higher_is_better = first.unit == "req/s"
        target = ">= 0.9x the empty store" if higher_is_better else "<= 1.1x the empty store"
        figures.append(Figure(f"bench: {name}", on_big, first.unit, target, empty=on_empty))


async def analyze(url: str) -> None:
    """Planner statistics on PostgreSQL (what autovacuum takes within a minute of many
    writes); nothing on SQLite, which chatproxy never asks to ``ANALYZE``."""
    if sqlite_path(url) is not None:
        return
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


@dataclass
class Proxy:
    """A ``chatproxy serve`` of this benchmark (bench.py's: pinned, warnings only)."""

    proc: subprocess.Popen[bytes]
    base: str
    db: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def v1(self) -> str:
        return f"{self.base}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


async def start_proxy(upstream: str, db: str, pin: int | None) -> Proxy:
    port = bench.free_port()
    proxy = Proxy(bench.start_proxy(port, upstream, db, pin), f"http://127.0.0.1:{port}", db)
    try:
        await bench.wait_http(f"{proxy.base}/readyz", within=300)
    except BaseException:
        proxy.stop()
        raise
    return proxy


async def run(
    db: str, empty: str, restore: str, alone: str, total: int, work: Path
) -> list[Figure]:
    """Build ``db``, measure everything on it; ``empty``, ``restore`` and ``alone`` are empty
    stores (the hot path's reference, the imports' targets beside a proxy and alone)."""
    print(f"building {total:,} messages on {db.split('://')[0]} ...", flush=True)
    started = time.perf_counter()
    written = await build(db, total)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    figures: list[Figure] = []
    cores = bench.cpus()
    pin = cores[0] if len(cores) > 1 else None
    upstream_port = bench.free_port()
    upstream_proc = bench.start_upstream(upstream_port, 0.0)
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    proxies: list[Proxy] = []
    try:
        await bench.wait_http(f"{upstream}/models")
        big = await start_proxy(upstream, db, pin)
        proxies.append(big)
        print("measuring the history API", flush=True)
        await measure_http(big.base, total, figures)
        proxies.append(await start_proxy(upstream, empty, pin))
        mine = os.sched_getaffinity(0)
        if pin is not None:  # the load generator off the proxy's CPU, as bench.py runs it
            os.sched_setaffinity(0, set(cores[1:]))
        try:
            await measure_hot_path(upstream, big, proxies[-1], total, figures)
        finally:
            os.sched_setaffinity(0, mine)
        print("measuring the CLI", flush=True)
        proxies.append(await start_proxy(upstream, restore, pin))
        await measure_cli(big, proxies[-1], alone, written, figures, work)
    finally:
        for proxy in proxies:
            proxy.stop()
        upstream_proc.terminate()
        upstream_proc.wait(30)
    return figures


async def fresh_postgres(admin_url: str) -> tuple[str, str]:
    import asyncpg

    name = f"chatproxy_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name, urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


async def drop_postgres(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def _value(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def table(db: str, figures: list[Figure]) -> str:
    """The figures of one database as Markdown: history operations, then the hot path."""
    lines = [f"### {db}", "", "| operation | measured | target |", "| --- | --- | --- |"]
    for f in figures:
        if f.empty is None:
            measured = f"**failed**: {f.error}" if f.error else f"{_value(f.value)} {f.unit}"
            lines.append(f"| {f.name} | {measured} | {f.target} |")
    lines += [
        "",
        "| `make bench` figure (proxied) | empty store | this store | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        if f.empty is not None:
            ratio = f.value / f.empty if f.empty else float("nan")
            lines.append(
                f"| {f.name.removeprefix('bench: ')} | {_value(f.empty)} {f.unit} |"
                f" {_value(f.value)} {f.unit} | {ratio:.2f}x | {f.target} |"
            )
    return "\n".join(lines)


def _machine(postgres_version: str | None) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [
        f"{platform.node()}, {os.cpu_count()} CPUs, {memory:.0f} GiB",
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if postgres_version:
        parts.append(f"PostgreSQL {postgres_version}")
    return ", ".join(parts)


async def _postgres_version(admin_url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def write_docs(path: Path, section: str) -> None:
    """Put ``section`` in ``path`` as its "History at volume" section (replacing the one there,
    up to the next second-level heading)."""
    text = path.read_text() if path.exists() else ""
    start = text.find(f"\n{DOCS_HEADING}\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


DOCS_HEADING = "## History at volume"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--docs", type=Path, default=None, help=f"write the tables as {DOCS_HEADING!r} there"
    )
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    admin = os.environ.get("CHATPROXY_TEST_POSTGRES_URL", "")
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    if "postgres" in kinds and not admin:
        print("PostgreSQL skipped: set CHATPROXY_TEST_POSTGRES_URL", file=sys.stderr)
        kinds.remove("postgres")
    pg_version = await _postgres_version(admin) if "postgres" in kinds else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chatproxy-history-") as tmp:
        work = Path(tmp)
        for kind in kinds:
            if kind == "sqlite":
                urls = [
                    f"sqlite://{work / name}"
                    for name in ("history.db", "empty.db", "restored.db", "alone.db")
                ]
                figures = await run(*urls, args.messages, work)
            else:
                made = [await fresh_postgres(admin) for _ in range(4)]
                try:
                    figures = await run(*(url for _, url in made), args.messages, work)
                finally:
                    for name, _ in made:
                        await drop_postgres(admin, name)
            print(table("SQLite" if kind == "sqlite" else "PostgreSQL", figures), flush=True)
            results[kind] = [asdict(f) for f in figures]
    report = {
        "messages": args.messages,
        "command": f"python benchmarks/history.py --messages {args.messages} --db {args.db}",
        "machine": _machine(pg_version),
        "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "results": results,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report))
    if args.docs is not None:
        write_docs(args.docs, docs_section(report))
    return 0


def docs_section(report: dict[str, Any]) -> str:
    """The "History at volume" section of docs/performance.md for a run's JSON report."""
    messages = report["messages"]
    count, size = _long_chats(messages)
    chats = len(_chat_sizes(messages, random.Random(11)))
    intro = (
        f"`make bench-history` (`{report['command']}`) builds a store of {messages:,} messages"
        f" ({chats:,} chats, {count} of {size:,} messages, one of 100 projects in each chat's"
        " metadata, text from a Zipf-shaped vocabulary) with every index and full-text index in"
        " place, then asks a real `chatproxy serve` on it every history operation (p50 of 20"
        " requests, search 5) and runs the CLI on it. The `make bench` rows run bench.py's"
        " hot-path scenario through a proxy on this store and through one on an empty store"
        f" (both warmed alike), alternating: the median of {HOT_ROUNDS} rounds, the proxied"
        " figures side by side. Targets are issue 15's, for 1,000,000 messages. The figures"
        " as JSON: `benchmarks/results/history.json`; a 2,000-message run is the test suite's"
        " smoke test (`tests/test_bench_history_smoke.py`, no timing asserted)."
    )
    when = (
        f"Machine: {report['machine']}. {report['date']}; the run took"
        f" {report['minutes']:.0f} minutes."
    )
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    tables = [
        table(names[kind], [Figure(**f) for f in figures])
        for kind, figures in report["results"].items()
    ]
    return "\n\n".join([DOCS_HEADING, intro, when, *tables]) + "\n"


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
