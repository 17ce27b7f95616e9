"""`export --all` and `import` at bulk: a round trip into a fresh store of the same kind gives
the same rows (depths, prefix hashes, votes), export reads in pages, progress only on a
terminal, and a refused document (bad JSON, an id used twice in the file, a large document
cut off in a later part) leaves nothing of itself and keeps what came before."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from click.testing import CliRunner, Result

from chatproxy.cli import main
from chatproxy.export import export_all
from chatproxy.store.models import Chat, Message, Vote
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import StartProxy

START = datetime(2025, 3, 1, tzinfo=UTC)
OWNERS = ("user0", "local", "user2")  # "local": the proxy's one user (auth mode none)


def chat_doc(n: int, size: int, *, prefix: str = "m", votes: bool = True) -> dict[str, Any]:
    """Chat ``n``: a chain of ``size`` messages (user, assistant, ...) and, from its second
    message on, a sibling answer (a branch); a vote on the first answer. No prefix hashes,
    depths or title: the import derives them."""
    chat_id = f"chat_{prefix}{n:05d}"
    messages = []
    for i in range(size):
        role = "user" if i % 2 == 0 else "assistant"
        text = f"question {n} {i}" if role == "user" else f"answer {n} {i}"
        at = (START + timedelta(minutes=n, seconds=i)).isoformat()
        messages.append(
            {
                "id": f"{prefix}{n:05d}x{i:05d}",
                "parent_id": f"{prefix}{n:05d}x{i - 1:05d}" if i else None,
                "role": role,
                "message": {"role": role, "content": text},
                "created_at": at,
                "completed_at": at,
            }
        )
    if size >= 2:
        messages.append(
            {
                "id": f"{prefix}{n:05d}sib",
                "parent_id": messages[0]["id"],
                "role": "assistant",
                "message": {"role": "assistant", "content": f"another answer {n}"},
                "created_at": (START + timedelta(minutes=n, seconds=size)).isoformat(),
            }
        )
    doc: dict[str, Any] = {
        "format": "chatproxy.chat",
        "version": 1,
        "chat": {"id": chat_id, "owner": OWNERS[n % 3], "metadata": {"project": f"p{n % 4}"}},
        "messages": messages,
        # The chain's end is the head (the sibling would be the newest leaf).
        "votes": [],
    }
    doc["chat"]["head_id"] = messages[size - 1]["id"] if size else None
    if votes and size >= 2:
        doc["votes"] = [
            {"message_id": messages[1]["id"], "user_id": OWNERS[n % 3], "up": True},
            {"message_id": messages[1]["id"], "user_id": "reviewer", "up": False},
        ]
    return doc


def write_jsonl(path: Path, docs: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


async def cli(*args: str) -> Result:
    """The CLI, off the event loop (it runs its own)."""
    return await asyncio.to_thread(invoke, *args)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


async def rows(db: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every chat, message and vote row of the store at ``db`` (ids, not surrogate keys)."""
    store = Store(db)
    await store.open(migrate=False)
    try:
        chats = await store.read(
            lambda: (
                Chat.all()
                .order_by("id")
                .values_list("id", "owner_id", "title", "visibility", "metadata", "head_id")
            )
        )
        messages = await store.read(
            lambda: (
                Message.all()
                .order_by("id")
                .values_list(
                    "id",
                    "chat_id",
                    "parent_id",
                    "user_id",
                    "role",
                    "text",
                    "depth",
                    "prefix_hash",
                    "status",
                    "data",
                    "created_at",
                )
            )
        )
        votes = await store.read(
            lambda: (
                Vote.all()
                .order_by("message_id", "user_id")
                .values_list("message_id", "chat_id", "user_id", "up")
            )
        )
        return {"chats": list(chats), "messages": list(messages), "votes": list(votes)}
    finally:
        await store.close()


async def test_a_round_trip_into_a_fresh_store_gives_the_same_rows_and_resends_thread(
    db_url: str, fresh_db: str, tmp_path: Path, start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    docs = [chat_doc(n, 2 + n % 7) for n in range(40)]
    source = write_jsonl(tmp_path / "source.jsonl", docs)
    assert (await cli("import", str(source), "--db", db_url)).exit_code == 0
    backup = tmp_path / "backup.jsonl"
    result = await cli("export", "--all", "--db", db_url, "-o", str(backup))
    assert result.exit_code == 0, result.output
    assert result.stderr == "exported 40 chat(s)\n"
    result = await cli("import", str(backup), "--db", fresh_db)
    assert result.exit_code == 0, result.output
    total = sum(len(d["messages"]) for d in docs)
    assert result.stdout.startswith(f"imported 40 chat(s) and {total} message(s)")

    before, after = await rows(db_url), await rows(fresh_db)
    assert after == before
    assert len(after["messages"]) == total and len(after["votes"]) == 80
    by_id = {m[0]: m for m in after["messages"]}
    for m in after["messages"]:  # depth: the place on the branch; every message hashed
        assert m[6] == (by_id[m[2]][6] + 1 if m[2] else 1)
        assert len(m[7]) == 32
    assert after["chats"][3][2] == "question 3 0"  # the derived title
    again = tmp_path / "again.jsonl"
    assert (await cli("export", "--all", "--db", fresh_db, "-o", str(again))).exit_code == 0
    assert again.read_bytes() == backup.read_bytes()

    # A client resending an imported chat's history threads into it: no new chat.
    doc = docs[4]  # the local user's, six messages on its chain, the last an answer
    branch = [m["message"] for m in doc["messages"][:6]]
    proxy = await start_proxy(**{"storage.url": fresh_db})
    upstream.enqueue(Reply(content="More."))
    body = {"model": "m", "messages": [*branch, {"role": "user", "content": "And then?"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Chat-Id"] == doc["chat"]["id"]
    await proxy.stop()
    stored = await rows(fresh_db)
    assert len(stored["chats"]) == 40
    added = [m for m in stored["messages"] if m[1] == doc["chat"]["id"] and m[0] not in by_id]
    assert sorted((m[4], m[6]) for m in added) == [("assistant", 8), ("user", 7)]


async def test_export_all_reads_in_pages_and_writes_the_same_lines(
    db_url: str, tmp_path: Path
) -> None:
    docs = [chat_doc(n, 9, votes=False) for n in range(300)]  # 10 messages each
    source = write_jsonl(tmp_path / "source.jsonl", docs)
    assert (await cli("import", str(source), "--db", db_url)).exit_code == 0
    whole = tmp_path / "whole.jsonl"
    assert (await cli("export", "--all", "--db", db_url, "-o", str(whole))).exit_code == 0

    store = Store(db_url)
    await store.open(migrate=False)
    try:
        out = io.BytesIO()
        seen: list[tuple[int, int, int]] = []
        stats = await export_all(store, out, page_messages=500, progress=lambda *a: seen.append(a))
    finally:
        await store.close()
    assert (stats.chats, stats.messages, stats.pages) == (300, 3000, 6)
    assert stats.largest_page == 500
    assert seen == [(50 * i, 300, 500 * i) for i in range(1, 7)]
    assert out.getvalue() == whole.read_bytes()
    assert [orjson.loads(line)["chat"]["id"] for line in out.getvalue().splitlines()] == [
        d["chat"]["id"] for d in docs
    ]


async def test_import_shows_progress_on_a_terminal_and_nothing_when_piped(
    db_url: str, fresh_db: str, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "source.jsonl", [chat_doc(n, 4) for n in range(20)])
    argv = [sys.executable, "-m", "chatproxy", "import", str(source)]
    leader, follower = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            "--db",
            db_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=follower,
            env={**os.environ, "COLUMNS": "80"},
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        terminal = os.read(leader, 65536)
    finally:
        os.close(leader)
        os.close(follower)
    assert b"importing" in terminal and b"\x1b[" in terminal
    assert out.startswith(b"imported 20 chat(s) and 100 message(s)")

    proc = await asyncio.create_subprocess_exec(
        *argv, "--db", fresh_db, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0 and err == b""
    assert out.startswith(b"imported 20 chat(s) and 100 message(s)")
    assert await rows(fresh_db) == await rows(db_url)


async def test_importing_the_same_file_again_adds_nothing(db_url: str, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "source.jsonl", [chat_doc(n, 5) for n in range(30)])
    assert (await cli("import", str(source), "--db", db_url)).exit_code == 0
    first = await rows(db_url)
    result = await cli("import", str(source), "--db", db_url)
    assert result.exit_code == 0
    assert result.stdout.startswith("imported 0 chat(s) and 0 message(s)")
    assert await rows(db_url) == first


async def test_a_line_that_is_not_json_keeps_the_documents_before_it(
    db_url: str, tmp_path: Path
) -> None:
    good = chat_doc(1, 4)
    path = tmp_path / "broken.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + b'{"format": "chatproxy.chat", \n')
    line = one_line_error(await cli("import", str(path), "--db", db_url))
    assert f"{path}: line 2: not a json or jsonl export" in line
    assert line.endswith("(the 1 chat(s) and 5 message(s) before it are imported)")
    assert [c[0] for c in (await rows(db_url))["chats"]] == [good["chat"]["id"]]


async def test_a_message_id_used_by_an_earlier_document_of_the_file_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    first, second = chat_doc(1, 4), chat_doc(2, 4)
    second["messages"][2]["id"] = first["messages"][0]["id"]
    second["messages"][3]["parent_id"] = first["messages"][0]["id"]
    path = write_jsonl(tmp_path / "dup.jsonl", [first, second])
    line = one_line_error(await cli("import", str(path), "--db", db_url))
    assert f"line 2: message {first['messages'][0]['id']!r} of chat 'chat_m00002'" in line
    stored = await rows(db_url)
    assert [c[0] for c in stored["chats"]] == ["chat_m00001"]
    assert {m[1] for m in stored["messages"]} == {"chat_m00001"}
    assert len(stored["messages"]) == 5 and len(stored["votes"]) == 2


async def test_a_document_larger_than_a_transaction_refused_in_a_later_part_leaves_nothing(
    db_url: str, tmp_path: Path
) -> None:
    owner = chat_doc(1, 2)
    assert (
        await cli("import", str(write_jsonl(tmp_path / "a.jsonl", [owner])), "--db", db_url)
    ).exit_code == 0
    small, large = chat_doc(2, 3), chat_doc(3, 6000, votes=False)
    taken = owner["messages"][1]["id"]
    large["messages"][-2]["id"] = taken  # near the end: in the last part written
    large["chat"]["head_id"] = taken
    path = write_jsonl(tmp_path / "b.jsonl", [small, large])
    line = one_line_error(await cli("import", str(path), "--db", db_url))
    assert f"line 2: message {taken!r} of chat 'chat_m00003' is already in chat" in line
    stored = await rows(db_url)
    assert [c[0] for c in stored["chats"]] == ["chat_m00001", "chat_m00002"]
    assert {m[1] for m in stored["messages"]} == {"chat_m00001", "chat_m00002"}
    assert len(stored["messages"]) == 3 + 4
