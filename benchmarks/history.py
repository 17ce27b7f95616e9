"""chatproxy's history benchmark: every history operation on a store of a million messages.

    python benchmarks/history.py [--messages N] [--db sqlite|postgres|both] [--json PATH]

It builds a store (100,000 chats of about ten messages for a million, realistic text drawn
from a Zipf-shaped vocabulary, a project in each chat's metadata, and a few very long chats),
written straight with SQL in large transactions after chatproxy's own migrations, prefix hashes
included. Then a real ``chatproxy serve`` on that store, in front of a fake upstream, is asked
each history operation of issue 15 several times, and the CLI runs ``stats``, ``export --all``,
``import`` and ``db prune`` on it. Each figure is a p50 (or a rate); the table names the target
beside it. PostgreSQL needs ``CHATPROXY_TEST_POSTGRES_URL`` (a server where databases may be
created); a fresh database is made and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from tortoise.transactions import in_transaction

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import free_port, rss_mb, wait_http  # noqa: E402
from chatproxy.store.store import Store  # noqa: E402
from chatproxy.store.threading import default_title, prefix_hashes  # noqa: E402
from chatproxy.testing import FakeUpstream  # noqa: E402

USER = "local"  # the caller: auth mode "none"
OTHER_USERS = ("ada", "bob", "cyd")
LONG_CHATS = 3  # chats of LONG_CHAT messages each
LONG_CHAT = 10_000
REPEAT = 20
RARE_WORD = "quixotically"  # in about one chat in 2,000
COMMON_WORD = "python"  # in about one message in ten


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str


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
        self.words, self.weights = _vocabulary(self.rng)

    def sentence(self, n: int) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=n)).capitalize() + "."


def _chat_sizes(total: int, rng: random.Random) -> list[int]:
    long = LONG_CHATS if total >= 10 * LONG_CHAT else 1
    size = min(LONG_CHAT, max(20, total // 100))
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
                    orjson.dumps(m).decode(),
                    h,
                    "completed",
                    "fake-model" if answer else None,
                    "stop" if answer else None,
                    10 if answer else None,
                    20 if answer else None,
                    30 if answer else None,
                    when,
                    when if answer else None,
                )
            )
        updated = created + timedelta(seconds=size * 5)
        chat = (
            chat_id,
            owner,
            default_title(messages),
            "private",
            orjson.dumps({"project": f"p{c % 100}"}).decode(),
            ids[-1],
            created,
            updated,
        )
        yield chat, rows


CHAT_SQL = (
    "INSERT INTO chats (id, owner_id, title, visibility, metadata, head_id, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
MESSAGE_SQL = (
    "INSERT INTO messages (id, chat_id, parent_id, user_id, role, text, data, prefix_hash,"
    " status, model, finish_reason, prompt_tokens, completion_tokens, total_tokens, created_at,"
    " completed_at, client_disconnected) VALUES"
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE)"
)


async def build(url: str, total: int) -> int:
    """Write the store; the number of messages written."""
    store = Store(url)
    await store.open()
    conn = store.conn
    postgres = not url.startswith("sqlite")

    def sql(query: str) -> str:
        if not postgres:
            return query
        parts = query.split("?")
        return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))

    def ts(value: Any) -> Any:
        return value if postgres or not isinstance(value, datetime) else str(value)

    now = datetime.now(UTC)
    users = [(u, u, now if postgres else str(now)) for u in (USER, *OTHER_USERS)]
    await conn.execute_many(sql("INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)"), users)
    chats: list[Any] = []
    messages: list[Any] = []
    written = 0

    async def flush() -> None:
        nonlocal written
        chat_rows = [tuple(ts(v) for v in c) for c in chats]
        message_rows = [tuple(ts(v) for v in m) for m in messages]
        with store.active():
            async with in_transaction() as tx:
                await tx.execute_many(sql(CHAT_SQL), chat_rows)
                await tx.execute_many(sql(MESSAGE_SQL), message_rows)
        written += len(messages)
        chats.clear()
        messages.clear()

    for chat, rows in _rows(total):
        chats.append(chat)
        messages.extend(rows)
        if len(messages) >= 50_000:
            await flush()
            print(f"  {written:,} messages", end="\r", flush=True)
    if messages:
        await flush()
    await store.close()
    print(f"  {written:,} messages written")
    return written


# -- measuring -----------------------------------------------------------------------------------


async def timed(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> float:
    started = time.perf_counter()
    async with http.request(method, url, **kw) as resp:
        await resp.read()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status}")
    return (time.perf_counter() - started) * 1000


async def p50(http: aiohttp.ClientSession, url: str, n: int = REPEAT, **kw: Any) -> float:
    await timed(http, "GET", url, **kw)  # warm
    return statistics.median([await timed(http, "GET", url, **kw) for _ in range(n)])


async def measure_http(base: str, figures: list[Figure]) -> None:
    v1 = f"{base}/v1"
    async with aiohttp.ClientSession() as http:
        figures.append(
            Figure("list, first page", await p50(http, f"{v1}/conversations"), "ms", "<= 10")
        )
        after = None
        for _ in range(50):  # 5,000 chats deep
            params = {"limit": "100", **({"after": after} if after else {})}
            async with http.get(f"{v1}/conversations", params=params) as resp:
                after = (await resp.json())["last_id"]
        deep = await p50(http, f"{v1}/conversations", params={"after": after})
        figures.append(Figure("list, a page 5,000 chats deep", deep, "ms", "<= 10"))
        figures.append(
            Figure(
                "list, metadata filter",
                await p50(http, f"{v1}/conversations", params={"metadata[project]": "p7"}),
                "ms",
                "<= 10",
            )
        )
        figures.append(
            Figure(
                "stored completions, limit 20",
                await p50(http, f"{v1}/chat/completions", params={"limit": "20"}),
                "ms",
                "<= 10",
            )
        )
        for label, word, target in (
            ("rare word", RARE_WORD, "<= 50"),
            ("common word", COMMON_WORD, "<= 100"),
            ("no match", "zzzqqqxxx", "<= 50"),
        ):
            value = await p50(http, f"{v1}/conversations", n=5, params={"q": word})
            figures.append(Figure(f"search, {label}", value, "ms", target))
        chat = "chat_bench000000000010"
        figures.append(
            Figure(
                "one chat's messages (/v1)",
                await p50(http, f"{v1}/conversations/{chat}/messages"),
                "ms",
                "<= 5",
            )
        )
        figures.append(
            Figure(
                "one chat's messages (/api/chat)",
                await p50(http, f"{base}/api/chat/{chat}/messages"),
                "ms",
                "<= 5",
            )
        )
        long_chat = "chat_bench000000000000"
        await measure_delete(http, v1, "chat_bench000000000012", "delete a short chat", figures)
        await measure_delete(http, v1, long_chat, "delete a 10,000-message chat", figures)


async def measure_delete(
    http: aiohttp.ClientSession, v1: str, chat_id: str, label: str, figures: list[Figure]
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": secrets.token_hex(8)}]}
    delete = asyncio.create_task(timed(http, "DELETE", f"{v1}/conversations/{chat_id}"))
    await asyncio.sleep(0.005)
    started = time.perf_counter()
    async with http.post(f"{v1}/chat/completions", json={**body, "stream": True}) as resp:
        await resp.content.readany()
        first_byte = (time.perf_counter() - started) * 1000
        await resp.read()
    figures.append(Figure(label, await delete, "ms", "<= 50 per batch"))
    figures.append(Figure(f"first byte of a request during: {label}", first_byte, "ms", "+<= 50"))


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
        peak = max(peak, rss_mb(proc.pid))
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"chatproxy {' '.join(args)}: {err.decode()[-500:]}")
    return time.perf_counter() - started, out.decode(), peak


def measure_cli(db: str, total: int, figures: list[Figure], work: Path) -> None:
    seconds, _, _ = cli(db, "stats")
    figures.append(Figure("chatproxy stats", seconds * 1000, "ms", "(reported)"))
    backup = work / "backup.jsonl"
    seconds, _, peak = cli(db, "export", "--all", "-o", str(backup))
    figures.append(Figure("export --all", total / seconds, "messages/s", ">= 20,000"))
    figures.append(Figure("export --all, peak RSS", peak, "MB", "flat"))
    seconds, _, _ = cli(db, "db", "prune", "--older-than", "150d")
    figures.append(Figure("db prune --older-than 150d", seconds, "s", "(reported)"))
    if db.startswith("sqlite"):
        fresh = f"sqlite://{work / 'restored.db'}"
        seconds, _, _ = cli(fresh, "import", str(backup))
        figures.append(Figure("import of the backup", total / seconds, "messages/s", ">= 20,000"))
        wal = work / "restored.db-wal"
        size = (work / "restored.db").stat().st_size
        ratio = (wal.stat().st_size if wal.exists() else 0) / max(1, size)
        figures.append(Figure("import: WAL size / database size", ratio, "x", "<= 2"))


async def run(db: str, total: int, work: Path) -> list[Figure]:
    print(f"building {total:,} messages on {db.split('://')[0]} ...")
    started = time.perf_counter()
    written = await build(db, total)
    print(f"  built in {time.perf_counter() - started:.0f} s")
    figures: list[Figure] = []
    async with FakeUpstream(fast=True) as upstream:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
        env["CHATPROXY_LIMITS__IP_RATE"] = "0"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatproxy",
            "serve",
            "--port",
            str(port),
            "--db",
            db,
            "--upstream",
            upstream.url,
            env=env,
        )
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", within=120)
            await measure_http(f"http://127.0.0.1:{port}", figures)
        finally:
            proc.terminate()
            await proc.wait()
    await asyncio.to_thread(measure_cli, db, written, figures, work)
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


def table(db: str, figures: list[Figure]) -> str:
    lines = [f"### {db}", "", "| operation | measured | target |", "| --- | --- | --- |"]
    for f in figures:
        value = f"{f.value:,.0f}" if f.value >= 100 else f"{f.value:.1f}"
        lines.append(f"| {f.name} | {value} {f.unit} | {f.target} |")
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    admin = os.environ.get("CHATPROXY_TEST_POSTGRES_URL", "")
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    if "postgres" in kinds and not admin:
        print("PostgreSQL skipped: set CHATPROXY_TEST_POSTGRES_URL", file=sys.stderr)
        kinds.remove("postgres")
    with tempfile.TemporaryDirectory(prefix="chatproxy-history-") as tmp:
        work = Path(tmp)
        for kind in kinds:
            if kind == "sqlite":
                figures = await run(f"sqlite://{work / 'history.db'}", args.messages, work)
            else:
                name, url = await fresh_postgres(admin)
                try:
                    figures = await run(url, args.messages, work)
                finally:
                    await drop_postgres(admin, name)
            print(table(kind, figures))
            results[kind] = [asdict(f) for f in figures]
    if args.json is not None:
        args.json.write_bytes(orjson.dumps({"messages": args.messages, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
