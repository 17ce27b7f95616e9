"""Backups: `export --all` as JSON lines, and `import` restoring them exactly, idempotently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from chatproxy.cli import main
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply

QUESTION = {"role": "user", "content": "Name a colour."}


async def make_chats(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    """Three chats; one with a branch (a regenerate) and a failed answer."""
    upstream.enqueue(
        Reply(content="Blue."), Reply(content="Green."), Reply(status=500), Reply(content="Red.")
    )
    async with aiohttp.ClientSession() as http:
        for messages, headers in (
            ([QUESTION], {"X-Chat-Id": "colours"}),
            ([QUESTION], {"X-Chat-Id": "colours"}),  # a sibling answer
            ([{"role": "user", "content": "fail please"}], {}),
            ([{"role": "user", "content": "Another one?"}], {"X-Chat-Id": "more"}),
        ):
            body = {"model": "m", "messages": messages}
            async with http.post(f"{proxy.url}/chat/completions", json=body, headers=headers) as r:
                await r.read()


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


async def run(*args: str) -> tuple[int, str, str]:
    """The CLI, off the event loop (it runs its own)."""
    return await asyncio.to_thread(cli, *args)


@pytest.fixture
async def db(proxy: ProxyServer, upstream: FakeUpstream, db_url: str) -> str:
    """The storage URL of a database holding the chats of :func:`make_chats`, proxy stopped."""
    await make_chats(proxy, upstream)
    await proxy.stop()
    return db_url


async def test_export_all_then_import_into_an_empty_database_is_identical_and_idempotent(
    db: str, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.jsonl"
    code, _, err = await run("export", "--all", "--db", db, "-o", str(backup))
    assert code == 0, err
    assert "exported 3 chat(s)" in err
    lines = backup.read_bytes().splitlines()
    assert len(lines) == 3
    docs = [orjson.loads(line) for line in lines]
    # colours: a question and two sibling answers; the failed chat and "more": two each.
    assert sum(len(d["messages"]) for d in docs) == 3 + 2 + 2
    statuses = {m["status"] for d in docs for m in d["messages"]}
    assert statuses == {"completed", "failed"}

    fresh = f"sqlite://{tmp_path / 'restored.db'}"
    code, out, err = await run("import", str(backup), "--db", fresh)
    assert code == 0, err
    assert out.startswith("imported 3 chat(s)")
    again = tmp_path / "again.jsonl"
    await run("export", "--all", "--db", fresh, "-o", str(again))
    assert again.read_bytes() == backup.read_bytes()

    code, out, _ = await run("import", str(backup), "--db", fresh)
    assert (code, out.split(" from ")[0]) == (0, "imported 0 chat(s) and 0 message(s)")
    third = tmp_path / "third.jsonl"
    await run("export", "--all", "--db", fresh, "-o", str(third))
    assert third.read_bytes() == backup.read_bytes()


async def test_a_single_json_export_imports_back(db: str, tmp_path: Path) -> None:
    one = tmp_path / "colours.json"
    await run("export", "colours", "--db", db, "-o", str(one))
    fresh = f"sqlite://{tmp_path / 'one.db'}"
    code, out, _ = await run("import", str(one), "--db", fresh)
    assert (code, out.split(" from ")[0]) == (0, "imported 1 chat(s) and 3 message(s)")
    back = tmp_path / "back.json"
    await run("export", "colours", "--db", fresh, "-o", str(back))
    assert back.read_bytes() == one.read_bytes()


async def test_export_all_filters_by_user_and_date(db: str, tmp_path: Path) -> None:
    for args, expected in (
        (["--user", "local"], 3),
        (["--user", "nobody"], 0),
        (["--since", "2000-01-01"], 3),
        (["--since", "2999-01-01"], 0),
    ):
        out = tmp_path / "x.jsonl"
        code, _, err = await asyncio.to_thread(
            cli, "export", "--all", *args, "--db", db, "-o", str(out)
        )
        assert code == 0, err
        assert len(out.read_bytes().splitlines()) == expected, args


def test_bad_import_files_and_arguments_exit_with_one_line(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'x.db'}"
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"not": "an export"}\n')
    code, _, err = cli("import", str(junk), "--db", db)
    assert code == 1 and err.count("\n") == 1 and "not a chatproxy chat export" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{nope\n")
    code, _, err = cli("import", str(broken), "--db", db)
    assert code == 1 and "not a json or jsonl export" in err
    assert cli("export", "--db", db)[0] == 2  # neither CHAT_ID nor --all
    assert cli("export", "x", "--all", "--db", db)[0] == 2
    assert cli("export", "x", "--user", "u", "--db", db)[0] == 2
    assert cli("export", "--all", "-f", "markdown", "--db", db)[0] == 2


async def test_chats_cli_lists_searches_shows_and_removes(db: str) -> None:
    code, out, _ = await run("chats", "list", "--json", "--db", db)
    assert code == 0
    listed = [orjson.loads(line) for line in out.splitlines()]
    assert {c["id"] for c in listed} >= {"colours", "more"} and len(listed) == 3
    assert listed[0]["id"] == "more"  # newest first
    colours = next(c for c in listed if c["id"] == "colours")
    assert (colours["user"], colours["messages"], colours["title"]) == (
        "local",
        2,
        "Name a colour.",
    )
    _, out, _ = await run("chats", "list", "--user", "nobody", "--db", db)
    assert out == ""
    # "Green" only occurs in an answer's body.
    _, out, _ = await run("chats", "search", "green", "--json", "--db", db)
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == ["colours"]
    code, out, _ = await run("chats", "show", "colours", "--db", db)
    assert code == 0 and out.startswith("# Name a colour.") and "Green." in out
    code, out, _ = await run("chats", "rm", "colours", "--db", db)
    assert (code, out.strip()) == (0, "Deleted colours.")
    code, _, err = await run("chats", "rm", "colours", "--db", db)
    assert code == 1 and "no chat with id 'colours'" in err
    code, _, _ = await run("export", "colours", "--db", db)
    assert code == 1


async def test_export_rm_import_export_gives_back_the_same_chat(db: str, tmp_path: Path) -> None:
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    await run("export", "colours", "--db", db, "-o", str(before))
    assert (await run("chats", "rm", "colours", "--db", db))[0] == 0
    code, out, _ = await run("import", str(before), "--db", db)
    assert (code, out.split(" from ")[0]) == (0, "imported 1 chat(s) and 3 message(s)")
    await run("export", "colours", "--db", db, "-o", str(after))
    assert after.read_bytes() == before.read_bytes()
    code, out, _ = await run("import", str(before), "--db", db)
    assert out.split(" from ")[0] == "imported 0 chat(s) and 0 message(s)"


async def test_export_all_draws_a_progress_bar_on_a_terminal_only(db: str, tmp_path: Path) -> None:
    import os
    import pty
    import sys

    out = tmp_path / "b.jsonl"
    argv = [sys.executable, "-m", "chatproxy", "export", "--all", "--db", db]
    leader, follower = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, "-o", str(out), stderr=follower, env={**os.environ, "COLUMNS": "80"}
        )
        assert await proc.wait() == 0
        terminal = os.read(leader, 65536)
    finally:
        os.close(leader)
        os.close(follower)
    assert b"exporting" in terminal and b"\x1b[" in terminal  # rich drew (and cleared) a bar
    assert len(out.read_bytes().splitlines()) == 3
    # Not a terminal: no bar, just the count.
    proc = await asyncio.create_subprocess_exec(
        *argv, "-o", str(out), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert err == b"exported 3 chat(s)\n"
