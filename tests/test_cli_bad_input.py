"""Every CLI command refuses bad input with one line on stderr and exit 1 or 2, never a
traceback (SPEC §10; issue 13, item 7).

Exit 1 is a runtime failure (nothing has that id, a file that cannot be read or holds no
export); exit 2 a usage error (bad flag values, dates, durations, configuration). Most cases
run through click's ``CliRunner`` (in a worker thread: the CLI runs its own event loop), on
every store of ``db_url``; a few run the installed ``chatproxy`` script in a subprocess, for
the real exit status and stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from chatproxy.auth import hash_key
from chatproxy.cli import main
from chatproxy.store.history import create_chat
from chatproxy.store.store import Store

SCRIPT = Path(sys.executable).parent / "chatproxy"
FULL_KEY_UNKNOWN = "cp-" + "Z" * 43  # shaped like a key, stored nowhere

# Ids: malformed, long (65..200 characters, the lengths that broke the columns), unknown.
MALFORMED_IDS = ["bad id!", "../../etc/passwd", "chat;DROP TABLE chats", "é" * 10, " ", ""]
LONG_IDS = ["a" * 65, "a" * 128, "a" * 129, "k" * 200, "chat_" + "x" * 195]
UNKNOWN_IDS = ["chat_doesnotexist", "key_doesnotexist", "x"]
BAD_USERS = ["bad user", "u" * 129, "u" * 200, "", "a/b"]
BAD_DATES = ["2024-13-45", "yesterday", "", "2024-01-01T25:00:00", "99999-01-01", "1" * 300]
BAD_AGES = ["", "abc", "0d", "-5d", "5x", "5 days", "99999999999d", "9" * 5000 + "d"]
BAD_LIMITS = ["0", "-1", "abc", "10001", "1.5", "9" * 30]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str | None]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CHATPROXY_")}
    env.update(extra or {})
    return env


async def cli(*args: str, env: Mapping[str, str] | None = None) -> Result:
    return await asyncio.to_thread(
        CliRunner().invoke, main, list(args), env=clean_env(env), catch_exceptions=True
    )


def assert_one_line(result: Result, code: int, *needles: str) -> str:
    """Exit ``code`` by ``sys.exit``, nothing on stdout, one ``chatproxy:`` line on stderr."""
    what = (result.exit_code, result.output, result.exception)
    assert result.exit_code == code, what
    assert isinstance(result.exception, SystemExit), what
    assert "Traceback" not in result.output, what
    assert result.stdout == "", what
    lines = result.stderr.splitlines()
    assert len(lines) == 1, what
    assert lines[0].startswith("chatproxy: "), what
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


async def expect(cases: Sequence[tuple[Sequence[str], int]], *common: str) -> None:
    """Run each case ``(args, exit code)`` (with ``common`` appended): one line each."""
    for args, code in cases:
        result = await cli(*args, *common)
        try:
            assert_one_line(result, code)
        except AssertionError as exc:
            raise AssertionError(f"chatproxy {' '.join(args)[:120]}: {exc}") from None


@dataclass
class Seeded:
    db: str  # storage URL
    chat_id: str
    key_id: str
    key: str


@pytest.fixture
async def seeded(db_url: str) -> Seeded:
    """A database with one chat and one key (and two keys sharing a prefix's start)."""
    store = Store(db_url)
    await store.open()
    try:
        await store.ensure_user("alice", "alice")
        view = await create_chat(
            store,
            "alice",
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            title="Seeded",
        )
        key = "cp-" + "K" * 43
        await store.add_api_key("key_alice", ("alice", "alice", None), hash_key(key), key[:11])
        for n in ("1", "2"):  # "cp-SAME" starts both prefixes
            twin = "cp-SAME" + n * 39
            await store.add_api_key(f"key_twin{n}", ("bob", "bob", None), hash_key(twin), twin[:11])
    finally:
        await store.close()
    return Seeded(db_url, view.chat.id, "key_alice", key)


async def chat_exists(db: str, chat_id: str) -> bool:
    store = Store(db)
    await store.open(migrate=False)
    try:
        return await store.get_chat(chat_id) is not None
    finally:
        await store.close()


async def revoked_keys(db: str) -> set[str]:
    store = Store(db)
    await store.open(migrate=False)
    try:
        return {k.id for k, _ in await store.api_keys() if k.revoked_at is not None}
    finally:
        await store.close()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Bad files of every kind, by name."""
    out = {
        "missing": tmp_path / "missing.jsonl",
        "directory": tmp_path / "a-directory",
        "not_json": tmp_path / "notes.txt",
        "binary": tmp_path / "random.bin",
        "truncated": tmp_path / "truncated.jsonl",
        "not_an_export": tmp_path / "other.json",
        "array": tmp_path / "array.json",
    }
    out["directory"].mkdir()
    out["not_json"].write_text("these are my notes, not an export\n")
    out["binary"].write_bytes(bytes(range(256)) * 4)
    doc = {"format": "chatproxy.chat", "version": 1, "chat": {"id": "c", "owner": "u"}}
    out["truncated"].write_bytes(orjson.dumps(doc) + b"\n" + orjson.dumps(doc)[:25])
    out["not_an_export"].write_text('{"messages": [{"role": "user", "content": "hi"}]}')
    out["array"].write_text("[1, 2, 3]")
    return out


@pytest.fixture
def configs(tmp_path: Path) -> list[Path]:
    """Configuration files that must each stop a command with exit 2."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage" * 10)
    truncated = tmp_path / "truncated.toml"
    truncated.write_text("[server\nport = ")
    bad_value = tmp_path / "bad-value.toml"
    bad_value.write_text('[server]\nport = "eighty"\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[server]\nprot = 8080\n")
    directory = tmp_path / "conf.d"
    directory.mkdir()
    return [binary, truncated, bad_value, unknown, directory, tmp_path / "missing.toml"]


# -- every command ------------------------------------------------------------------------------


async def test_serve_refuses_bad_flags_and_configuration_with_exit_2(
    tmp_path: Path, configs: list[Path]
) -> None:
    db = f"sqlite://{tmp_path / 'serve.db'}"
    cases = [
        (["--port", "abc"], 2),
        (["--port", "99999"], 2),
        (["--port", "-1"], 2),
        (["--port", "9" * 40], 2),
        (["--upstream", "not a url"], 2),
        (["--upstream", "ftp://example.com"], 2),
        (["--redis", "garbage"], 2),
        (["--db", "nonsense://x"], 2),
        (["--db", ""], 2),
        (["--log-level", "loud"], 2),
        (["--log-format", "xml"], 2),
        (["--no-such-flag"], 2),
        *[(["-c", str(path)], 2) for path in configs],
    ]
    await expect(
        [
            (["serve", *args, *(["--db", db] if "--db" not in args else [])], code)
            for args, code in cases
        ]
    )
    assert not (tmp_path / "serve.db").exists()  # refused before opening anything


async def test_serve_with_a_database_it_cannot_open_exits_1(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'no-such-dir' / 'x.db'}"
    assert_one_line(await cli("serve", "--port", "0", "--db", db), 1, "cannot open the database")


async def test_export_refuses_bad_ids_dates_users_formats_and_outputs(
    seeded: Seeded, tmp_path: Path
) -> None:
    cases: list[tuple[Sequence[str], int]] = [
        *[(["export", bad], 1) for bad in [*MALFORMED_IDS, *LONG_IDS, *UNKNOWN_IDS]],
        *[(["export", "--all", "--since", bad], 2) for bad in BAD_DATES],
        *[(["export", "--all", "--user", bad], 2) for bad in BAD_USERS],
        (["export", seeded.chat_id, "--format", "xml"], 2),
        (["export", seeded.chat_id, "-o", str(tmp_path)], 1),  # a directory
        (["export", seeded.chat_id, "-o", str(tmp_path / "no-dir" / "x.json")], 1),
        (["export", "--all", "-o", str(tmp_path)], 1),
        (["export"], 2),
    ]
    await expect(cases, "--db", seeded.db)
    line = assert_one_line(await cli("export", "k" * 200, "--db", seeded.db), 1)
    assert "k" * 200 not in line and "200 characters" in line  # long input is cut short


async def test_export_takes_dates_at_the_ends_of_the_calendar(
    seeded: Seeded, tmp_path: Path
) -> None:
    for since, count in (("0001-01-01", 1), ("9999-12-31T23:59:59", 0)):
        out = tmp_path / "all.jsonl"
        result = await cli("export", "--all", "--since", since, "--db", seeded.db, "-o", str(out))
        assert result.exit_code == 0, (result.output, result.exception)
        assert result.stderr == f"exported {count} chat(s)\n"
        assert len(out.read_bytes().splitlines()) == count


async def test_import_refuses_every_kind_of_bad_file_with_exit_1(
    seeded: Seeded, files: dict[str, Path]
) -> None:
    expected = {
        "missing": "No such file or directory",
        "directory": "Is a directory",
        "not_json": "not a json or jsonl export",
        "binary": "not a json or jsonl export",
        "truncated": "line 2: not a json or jsonl export",
        "not_an_export": "not a chatproxy chat export",
        "array": "not a chatproxy chat export",
    }
    for name, needle in expected.items():
        result = await cli("import", str(files[name]), "--db", seeded.db)
        line = assert_one_line(result, 1, needle)
        assert str(files[name]) in line, (name, line)
        if name == "truncated":
            assert "the 1 chat(s) and 0 message(s) before it are imported" in line, line
    # The truncated file's first, complete document stays imported (documents go in whole,
    # in file order: the README's rule); nothing of the broken line is.
    assert await chat_exists(seeded.db, "c")


async def test_import_of_an_empty_file_imports_nothing(seeded: Seeded, tmp_path: Path) -> None:
    # `export --all` of an empty database writes an empty file: restoring it is no error.
    for content in (b"", b"\n\n  \n"):
        empty = tmp_path / "empty.jsonl"
        empty.write_bytes(content)
        result = await cli("import", str(empty), "--db", seeded.db)
        assert result.exit_code == 0, (result.output, result.exception)
        assert result.stdout == f"imported 0 chat(s) and 0 message(s) from {empty}\n"


async def test_db_upgrade_refuses_bad_databases_and_configuration(
    tmp_path: Path, files: dict[str, Path], configs: list[Path]
) -> None:
    not_a_db = tmp_path / "text.db"
    not_a_db.write_text("hello\n")
    cases = [
        (["db", "upgrade", "--db", "nonsense://x"], 2),
        (["db", "upgrade", "--db", f"sqlite://{tmp_path / 'no-dir' / 'x.db'}"], 1),
        (["db", "upgrade", "--db", f"sqlite://{files['directory']}"], 1),
        (["db", "upgrade", "--db", f"sqlite://{files['binary']}"], 1),
        (["db", "upgrade", "--db", f"sqlite://{not_a_db}"], 1),
        (["db", "upgrade", "--db", "postgres://postgres@127.0.0.1:1/x"], 1),
        *[(["db", "upgrade", "-c", str(path)], 2) for path in configs],
    ]
    await expect(cases)


async def test_db_prune_refuses_bad_ages_and_users_and_deletes_nothing(seeded: Seeded) -> None:
    cases = [
        *[(["db", "prune", "--older-than", bad], 2) for bad in BAD_AGES],
        *[(["db", "prune", "--older-than", "1d", "--user", bad], 2) for bad in BAD_USERS],
        (["db", "prune"], 2),
    ]
    await expect(cases, "--db", seeded.db)
    line = assert_one_line(
        await cli("db", "prune", "--older-than", "99999999999d", "--db", seeded.db), 2
    )
    assert "--older-than" in line
    assert await chat_exists(seeded.db, seeded.chat_id)


async def test_keys_create_and_list_refuse_bad_users_and_tiers(seeded: Seeded) -> None:
    cases = [
        (["keys", "create"], 2),
        *[(["keys", "create", "--user", bad], 2) for bad in BAD_USERS],
        (["keys", "create", "--user", "carol", "--tier", "gold"], 2),
        (["keys", "create", "--user", "carol", "--tier", "t" * 200], 2),
        *[(["keys", "list", "--user", bad], 2) for bad in BAD_USERS],
    ]
    await expect(cases, "--db", seeded.db)
    result = await cli("keys", "list", "--user", "nobody", "--db", seeded.db)
    assert (result.exit_code, result.output) == (0, "")


async def test_keys_revoke_refuses_what_names_no_key_with_exit_1(seeded: Seeded) -> None:
    handles = [*MALFORMED_IDS, *LONG_IDS, *UNKNOWN_IDS, FULL_KEY_UNKNOWN, "cp-", "cp-K"]
    for handle in handles:
        result = await cli("keys", "revoke", handle, "--db", seeded.db)
        line = assert_one_line(result, 1, "no key matches")
        assert FULL_KEY_UNKNOWN not in result.output
        assert len(line) < 300, line
    # A start of a prefix that two keys share names both, and revokes neither.
    line = assert_one_line(await cli("keys", "revoke", "cp-SAME", "--db", seeded.db), 1)
    assert "key_twin1" in line and "key_twin2" in line
    assert await revoked_keys(seeded.db) == set()


@pytest.mark.parametrize("form", ["id", "key", "prefix", "printed prefix", "start of prefix"])
async def test_keys_revoke_takes_the_id_the_key_or_its_prefix(seeded: Seeded, form: str) -> None:
    handle = {
        "id": seeded.key_id,
        "key": seeded.key,
        "prefix": seeded.key[:11],
        "printed prefix": seeded.key[:11] + "...",  # as `keys create` prints it
        "start of prefix": seeded.key[:7],
    }[form]
    result = await cli("keys", "revoke", handle, "--db", seeded.db)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.startswith(f"Revoked {seeded.key_id} ({seeded.key[:11]}...).\n")
    assert seeded.key not in result.output  # the key is never repeated
    assert await revoked_keys(seeded.db) == {seeded.key_id}
    again = await cli("keys", "revoke", handle, "--db", seeded.db)
    assert_one_line(again, 1, "already revoked", seeded.key_id)


async def test_chats_commands_refuse_bad_ids_limits_and_users(seeded: Seeded) -> None:
    bad_ids = [*MALFORMED_IDS, *LONG_IDS, *UNKNOWN_IDS]
    cases = [
        *[(["chats", "show", bad], 1) for bad in bad_ids],
        *[(["chats", "rm", bad], 1) for bad in bad_ids],
        *[
            (["chats", command, *query, "--limit", bad], 2)
            for command, query in (("list", []), ("search", ["q"]))
            for bad in BAD_LIMITS
        ],
        *[
            (["chats", command, *query, "--user", bad], 2)
            for command, query in (("list", []), ("search", ["q"]))
            for bad in BAD_USERS
        ],
        (["chats", "show"], 2),
        (["chats", "search"], 2),
        (["chats", "list", "--no-such-flag"], 2),
    ]
    await expect(cases, "--db", seeded.db)
    assert await chat_exists(seeded.db, seeded.chat_id)


async def test_chats_search_takes_any_text_as_a_query(seeded: Seeded) -> None:
    for query in ["%", "_", "\\", "'; DROP TABLE chats; --", "é" * 50, "x" * 10_000, "hello"]:
        result = await cli("chats", "search", query, "--json", "--db", seeded.db)
        assert result.exit_code == 0, (query[:20], result.output, result.exception)
        found = [orjson.loads(line)["id"] for line in result.stdout.splitlines()]
        assert found == ([seeded.chat_id] if query == "hello" else []), query[:20]
    assert await chat_exists(seeded.db, seeded.chat_id)


async def test_stats_refuses_bad_periods_and_users(seeded: Seeded) -> None:
    cases = [
        *[(["stats", "--since", bad], 2) for bad in BAD_AGES],
        *[(["stats", "--user", bad], 2) for bad in BAD_USERS],
    ]
    await expect(cases, "--db", seeded.db)


async def test_unknown_commands_and_options_are_one_line_usage_errors() -> None:
    await expect(
        [
            (["nonsense"], 2),
            (["--no-such-flag"], 2),
            (["keys", "nonsense"], 2),
            (["db", "nonsense"], 2),
            (["chats", "list", "extra-argument"], 2),
        ]
    )


# -- the real process ---------------------------------------------------------------------------


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["keys", "revoke", FULL_KEY_UNKNOWN], 1, "no key matches the key given"),
        (["keys", "revoke", "k" * 200], 1, "no key matches"),
        (["chats", "show", "x" * 200], 1, "no chat with id"),
        (["chats", "rm", "bad id!"], 1, "no chat with id"),
        (["export", "--all", "--since", "2024-13-45"], 2, "--since"),
        (["db", "prune", "--older-than", "99999999999d"], 2, "--older-than"),
        (["stats", "--since", "9" * 5000 + "d"], 2, "--since"),
        (["keys", "list", "--user", "u" * 200], 2, "--user"),
        (["chats", "list", "--limit", "0"], 2, "--limit"),
        (["serve", "--port", "99999"], 2, "server.port"),
    ],
)
async def test_the_installed_script_exits_with_one_line_and_no_traceback(
    tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    db = f"sqlite://{tmp_path / 'script.db'}"
    proc = await asyncio.to_thread(run_script, *args, "--db", db)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatproxy: "), proc.stderr
    assert needle in lines[0]
    assert FULL_KEY_UNKNOWN not in proc.stderr


async def test_the_installed_script_refuses_bad_import_files(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    db = f"sqlite://{tmp_path / 'script.db'}"
    for name in ("missing", "directory", "binary", "truncated", "not_an_export"):
        proc = await asyncio.to_thread(run_script, "import", str(files[name]), "--db", db)
        assert proc.returncode == 1, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, name
        assert len(proc.stderr.splitlines()) == 1, (name, proc.stderr)
        assert proc.stderr.startswith("chatproxy: "), (name, proc.stderr)


async def test_the_installed_script_refuses_a_database_of_another_program(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE messages (x)")
        conn.commit()
    for args in (["stats"], ["serve", "--port", "0"]):
        proc = await asyncio.to_thread(run_script, *args, "--db", f"sqlite://{other}")
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith("chatproxy: cannot upgrade the database"), proc.stderr


async def test_serve_on_a_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        db = f"sqlite://{tmp_path / 'busy.db'}"
        proc = await asyncio.to_thread(run_script, "serve", "--demo", "--port", port, "--db", db)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("chatproxy: ")]
    assert len(lines) == 1 and "address already in use" in lines[0], proc.stderr
